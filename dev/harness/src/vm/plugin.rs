//! The product binary as a child process (`rds-csi-node serve --fabric kernel`), as the
//! DaemonSet runs it: its own process, the kernel's sysfs, `/dev` and `/proc`, Events posted
//! through a kubeconfig, and a unix socket a [`Kubelet`](crate::harness::Kubelet) drives.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Kubelet, KubeletDirs, DRIVER, MANAGED_PREFIX, NODE_ID};
use rds_node::csi;

/// Where one plugin instance keeps its files (its state survives restarts).
#[derive(Debug, Clone)]
pub struct PluginDirs {
    pub root: PathBuf,
}

impl PluginDirs {
    pub fn socket(&self) -> PathBuf {
        self.root.join("csi/csi.sock")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    /// `hostnqn` and `hostid`, as `/etc/nvme` holds them.
    pub fn nvme_config(&self) -> PathBuf {
        self.root.join("etc-nvme")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("plugin.log")
    }
}

impl KubeletDirs for PluginDirs {
    fn kubelet_dir(&self) -> PathBuf {
        self.kubelet()
    }
}

/// Settings the scenarios choose.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub gone_grace: Duration,
    pub io_stall_after: Duration,
    pub io_sample_period: Duration,
    /// `--fabric`: `kernel` (the VM tier) or `emulated` (cluster mode on any machine).
    pub fabric: &'static str,
    /// Extra `serve` arguments.
    pub extra: Vec<String>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            gone_grace: Duration::from_secs(2),
            io_stall_after: Duration::from_secs(10),
            io_sample_period: Duration::from_millis(500),
            fabric: "kernel",
            extra: Vec::new(),
        }
    }
}

/// A running plugin process.
pub struct PluginProcess {
    pub dirs: PluginDirs,
    child: Child,
    binary: PathBuf,
    settings: PluginSettings,
}

/// A kubeconfig pointing at `url` (the fake API server), without credentials.
pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
         users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\n"
    )
}

impl PluginProcess {
    /// Start `binary` with `dirs` (created if missing) and wait until Probe says ready.
    pub async fn start(
        binary: &Path,
        dirs: PluginDirs,
        settings: PluginSettings,
    ) -> Result<Self, String> {
        for d in [dirs.state(), dirs.kubelet(), dirs.nvme_config()] {
            std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        if let Some(p) = dirs.socket().parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
        let child = spawn(binary, &dirs, &settings)?;
        let mut me = Self {
            dirs,
            child,
            binary: binary.to_owned(),
            settings,
        };
        me.wait_ready(Duration::from_secs(60)).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the plugin exited with {status} before it was ready: {}",
                    super::tail(&self.log(), 3000)
                ));
            }
            if self.dirs.socket().exists() {
                if let Ok(mut k) = Kubelet::connect(&self.dirs.socket()).await {
                    if let Ok(r) = k.identity.probe(csi::ProbeRequest {}).await {
                        if r.get_ref().ready == Some(true) {
                            return Ok(());
                        }
                    }
                }
            }
            if started.elapsed() > within {
                return Err(format!(
                    "the plugin was not ready within {within:?}: {}",
                    super::tail(&self.log(), 3000)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The plugin's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dirs.log()).unwrap_or_default()
    }

    pub async fn kubelet(&self) -> Result<Kubelet, String> {
        Kubelet::connect(&self.dirs.socket())
            .await
            .map_err(|e| format!("connecting to the plugin: {e}"))
    }

    /// SIGTERM and wait (in-flight RPCs finish): a rollout.
    pub fn stop(&mut self) -> Result<(), String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("the plugin did not stop within 30 s of SIGTERM".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for the plugin: {e}")),
            }
        }
    }

    /// SIGKILL: a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same directories (the kernel state left as it is).
    pub async fn restart(&mut self) -> Result<(), String> {
        self.child = spawn(&self.binary, &self.dirs, &self.settings)?;
        self.wait_ready(Duration::from_secs(60)).await
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

fn spawn(binary: &Path, dirs: &PluginDirs, s: &PluginSettings) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dirs.log())
        .map_err(|e| format!("opening {}: {e}", dirs.log().display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("duplicating the log: {e}"))?;
    let mut cmd = Command::new(binary);
    cmd.arg("serve")
        .arg(format!("--fabric={}", s.fabric))
        .arg(format!("--endpoint=unix://{}", dirs.socket().display()))
        .arg(format!("--node-id={NODE_ID}"))
        .arg(format!("--driver-name={DRIVER}"))
        .arg(format!("--managed-nqn-prefix={MANAGED_PREFIX}"))
        .arg(format!("--state-dir={}", dirs.state().display()))
        .arg(format!("--kubelet-dir={}", dirs.kubelet().display()))
        .arg(format!(
            "--nvme-config-dir={}",
            dirs.nvme_config().display()
        ))
        .arg(format!("--gone-grace={}", humantime(s.gone_grace)))
        .arg(format!("--io-stall-after={}", humantime(s.io_stall_after)))
        .arg(format!(
            "--io-sample-period={}",
            humantime(s.io_sample_period)
        ))
        .arg("--device-wait=60s")
        .arg("--unmount-wait=5s");
    if dirs.kubeconfig().exists() {
        cmd.arg(format!("--kubeconfig={}", dirs.kubeconfig().display()));
    }
    cmd.args(&s.extra)
        .env("RUST_LOG", "info,rds_agent=debug,rds_monitor=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    cmd.spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
