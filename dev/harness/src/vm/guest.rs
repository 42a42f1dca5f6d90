//! The guest side: one kernel with its own NVMe/TCP host and nvmet target, the product binary
//! as a child process, a fake API server for its Events, and what the scenarios share (the
//! target, the CSI calls, the kernel's view, sampled conditions, data checks).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, Kubelet, KubeletDirs};
use crate::vm::nvmet::Nvmet;
use crate::vm::plugin::{kubeconfig_for, PluginDirs, PluginProcess, PluginSettings};
use crate::vm::uevents::{KmsgRecorder, UeventRecorder};
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use rds_testkit::fake_api::FakeApi;

/// A scenario's failure.
pub type Fail = String;

/// Where the guest keeps everything (RAM: `/tmp` is an overlay, `/dev/shm` a tmpfs).
pub const WORK: &str = "/tmp/rds-vm";
/// Namespace backing files (nvmet's file backend).
pub const BACKING: &str = "/dev/shm/rds-vm";
/// Size of every test namespace (sparse; mkfs.xfs wants 300 MiB or more).
pub const SIZE: u64 = 512 << 20;
/// Liveness bound for waits: the kernel and the plugin take milliseconds to seconds here;
/// this only ends a broken run.
pub const WAIT: Duration = Duration::from_secs(60);
/// The two target ports.
pub const PORT_A: (u32, u16) = (1, 4420);
pub const PORT_B: (u32, u16) = (2, 4421);
/// The claim namespace of every test volume.
pub const CLAIM_NS: &str = "default";

pub fn claim_of(vol: &str) -> String {
    format!("claim-{vol}")
}

/// Events the fake API server received on the volume's PVC: (type, reason, note), oldest first.
pub fn pvc_events(api: &FakeApi, vol: &str) -> Vec<(String, String, String)> {
    let claim = claim_of(vol);
    api.requests_matching("POST", "/apis/events.k8s.io/v1/namespaces/")
        .into_iter()
        .filter_map(|r| r.body)
        .filter(|b| b["regarding"]["name"] == claim.as_str())
        .map(|b| {
            (
                b["type"].as_str().unwrap_or("").to_owned(),
                b["reason"].as_str().unwrap_or("").to_owned(),
                b["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// One condition as NodeGetVolumeStats reported it, and what the kernel showed around it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub kind: String,
    pub abnormal: bool,
    pub message: String,
    pub usage: bool,
    /// The kernel's view of the NQN ([`kernel_view`]) just before the call.
    pub kernel: String,
    /// The same just after the reply: a sample belongs to a kernel state only when both agree.
    pub kernel_after: String,
}

/// The kernel's view of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctrl {
    pub name: String,
    pub state: String,
    pub trsvcid: String,
}

pub struct Guest {
    pub nvmet: Nvmet,
    pub api: FakeApi,
    pub plugin: PluginProcess,
    pub kubelet: Kubelet,
    pub binary: PathBuf,
    pub out: PathBuf,
    pub uevents: UeventRecorder,
    pub kmsg: KmsgRecorder,
}

pub fn sh(cmd: &str) -> Result<String, Fail> {
    let o = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("running {cmd}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd}: {} {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Guest {
    pub async fn start(binary: PathBuf, out: PathBuf) -> Result<Self, Fail> {
        super::prepare_guest()?;
        let _ = std::fs::remove_dir_all(WORK);
        let _ = std::fs::remove_dir_all(BACKING);
        std::fs::create_dir_all(BACKING).map_err(|e| e.to_string())?;
        let nvmet = Nvmet::open().map_err(|e| e.to_string())?;
        nvmet
            .add_port(PORT_A.0, PORT_A.1)
            .map_err(|e| e.to_string())?;
        nvmet
            .add_port(PORT_B.0, PORT_B.1)
            .map_err(|e| e.to_string())?;
        let api = FakeApi::start().await;
        let dirs = PluginDirs {
            root: PathBuf::from(WORK).join("plugin"),
        };
        std::fs::create_dir_all(dirs.nvme_config()).map_err(|e| e.to_string())?;
        // The node's identity as nvme-cli keeps it; the plugin must send it on every connect.
        std::fs::write(
            dirs.nvme_config().join("hostnqn"),
            "nqn.2014-08.org.nvmexpress:uuid:5b8f3c1e-9a0d-4c7e-8e21-3d6a1f0b2c44\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dirs.nvme_config().join("hostid"),
            "5b8f3c1e-9a0d-4c7e-8e21-3d6a1f0b2c44\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dirs.kubeconfig(), kubeconfig_for(&api.url())).map_err(|e| e.to_string())?;
        let uevents = UeventRecorder::start().map_err(|e| format!("uevent recorder: {e}"))?;
        let kmsg = KmsgRecorder::start().map_err(|e| format!("kmsg recorder: {e}"))?;
        let plugin = PluginProcess::start(&binary, dirs, PluginSettings::default()).await?;
        let kubelet = plugin.kubelet().await?;
        Ok(Self {
            nvmet,
            api,
            plugin,
            kubelet,
            binary,
            out,
            uevents,
            kmsg,
        })
    }

    pub fn dirs(&self) -> &PluginDirs {
        &self.plugin.dirs
    }

    /// Restart the plugin (SIGTERM or SIGKILL) and reconnect the kubelet.
    pub async fn restart_plugin(&mut self, kill: bool) -> Result<(), Fail> {
        if kill {
            self.plugin.kill();
        } else {
            self.plugin.stop()?;
        }
        self.plugin.restart().await?;
        self.kubelet = self.plugin.kubelet().await?;
        Ok(())
    }

    // ---- the target ----

    pub fn nqn(vol: &str) -> String {
        harness::nqn_for(vol).to_string()
    }

    pub fn backing(name: &str) -> PathBuf {
        Path::new(BACKING).join(format!("{name}.img"))
    }

    /// A subsystem for `vol` on port A, and its PV/PVC in the API server.
    pub fn target(&self, vol: &str) -> Result<(), Fail> {
        let nqn = Self::nqn(vol);
        self.nvmet
            .add_subsystem(&nqn, &Self::backing(vol), SIZE, None)
            .map_err(|e| e.to_string())?;
        self.expose_with_pv(vol)
    }

    /// Like [`Self::target`], with the namespace on block device `device`.
    pub fn target_on_device(&self, vol: &str, device: &Path) -> Result<(), Fail> {
        self.nvmet
            .add_subsystem_on_device(&Self::nqn(vol), device)
            .map_err(|e| e.to_string())?;
        self.expose_with_pv(vol)
    }

    /// The subsystem of `vol` on port A, and its PV/PVC in the API server.
    fn expose_with_pv(&self, vol: &str) -> Result<(), Fail> {
        self.nvmet
            .expose(&Self::nqn(vol), PORT_A.0)
            .map_err(|e| e.to_string())?;
        self.api.add_pv(
            vol,
            &format!("uid-{vol}"),
            Some((CLAIM_NS, &claim_of(vol), &format!("claim-uid-{vol}"))),
        );
        Ok(())
    }

    pub fn context(vol: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut c = harness::volume_context(vol);
        c.insert("reconnectDelay".into(), "1".into());
        for (k, v) in extra {
            c.insert((*k).into(), (*v).into());
        }
        c
    }

    // ---- CSI calls ----

    pub async fn stage(
        &mut self,
        vol: &str,
        cap: csi::VolumeCapability,
        ctx: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        let mut r = harness::stage_request(self.dirs(), vol, cap);
        r.volume_context = ctx;
        self.kubelet.node.node_stage_volume(r).await.map(|_| ())
    }

    pub async fn publish(
        &mut self,
        vol: &str,
        pod: &str,
        cap: csi::VolumeCapability,
        ctx: HashMap<String, String>,
    ) -> Result<PathBuf, tonic::Status> {
        let mut r = harness::publish_request(self.dirs(), vol, pod, cap, false);
        r.volume_context = ctx;
        self.kubelet.node.node_publish_volume(r).await?;
        Ok(self.dirs().target_path(pod, vol))
    }

    pub async fn unpublish(&mut self, vol: &str, pod: &str) -> Result<(), tonic::Status> {
        let r = harness::unpublish_request(self.dirs(), vol, pod);
        self.kubelet.node.node_unpublish_volume(r).await.map(|_| ())
    }

    pub async fn unstage(&mut self, vol: &str) -> Result<(), tonic::Status> {
        let r = harness::unstage_request(self.dirs(), vol);
        self.kubelet.node.node_unstage_volume(r).await.map(|_| ())
    }

    pub fn staging(&self, vol: &str) -> PathBuf {
        self.dirs().staging_path(vol)
    }

    pub async fn sample(&mut self, vol: &str, path: &Path) -> Result<Sample, Fail> {
        sample(&mut self.kubelet, vol, path).await
    }

    /// Poll the condition until `pred` holds (the plugin's own reply, every 50 ms).
    pub async fn wait_condition(
        &mut self,
        vol: &str,
        path: &Path,
        what: &str,
        pred: impl Fn(&Sample) -> bool,
    ) -> Result<Sample, Fail> {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < WAIT {
            let s = self.sample(vol, path).await?;
            if pred(&s) {
                return Ok(s);
            }
            last = Some(s);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{vol} at {}: not {what} within {WAIT:?}; last: {last:?}",
            path.display()
        ))
    }

    /// Events posted on the volume's PVC: (type, reason, note), oldest first.
    pub fn events(&self, vol: &str) -> Vec<(String, String, String)> {
        pvc_events(&self.api, vol)
    }

    /// Wait for an Event with `reason` on the volume's PVC.
    pub async fn wait_event(&self, vol: &str, reason: &str) -> Result<(String, String), Fail> {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Some((t, _, note)) = self.events(vol).into_iter().find(|(_, r, _)| r == reason) {
                return Ok((t, note));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "no {reason} Event on {vol}'s PVC within {WAIT:?}; got {:?}",
            self.events(vol)
        ))
    }

    /// Put the scenario's leftovers away so the next scenario starts clean: the kubelet's
    /// calls first (what a pod deletion does), then whatever remains, by force.
    pub async fn clean(&mut self, vol: &str, pods: &[&str]) {
        for p in pods {
            let _ = self.unpublish(vol, p).await;
        }
        let _ = self.unstage(vol).await;
        let kubelet = self.dirs().kubelet();
        if let Ok(t) = rds_mounts::mountinfo::read_mountinfo(Path::new("/proc"), "self") {
            for m in t.entries.iter().rev() {
                if m.mount_point.starts_with(&kubelet) {
                    let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let nqn = Self::nqn(vol);
        for c in controllers(&nqn) {
            delete_by_hand(&c.name).await;
        }
        let _ = wait_until(Duration::from_secs(20), || controllers(&nqn).is_empty()).await;
        let _ = self.nvmet.remove_subsystem(&nqn);
        let _ = std::fs::remove_file(Self::backing(vol));
    }
}

// ---- the kernel's view ----

fn read_attr(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The host's controllers of `nqn`, by name.
pub fn controllers(nqn: &str) -> Vec<Ctrl> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/nvme") else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if read_attr(dir.join("subsysnqn")).as_deref() != Some(nqn) {
            continue;
        }
        let address = read_attr(dir.join("address")).unwrap_or_default();
        let trsvcid = address
            .split(',')
            .find_map(|kv| kv.strip_prefix("trsvcid="))
            .unwrap_or("")
            .to_owned();
        out.push(Ctrl {
            name: e.file_name().to_string_lossy().into_owned(),
            state: read_attr(dir.join("state")).unwrap_or_else(|| "absent".into()),
            trsvcid,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The kernel's view of a subsystem in one word per object: `nvme0:live,nvme1:connecting
/// ns=nvme0n1`, `absent`, or `nvme0:live ns=-` when the controller has no namespace.
pub fn kernel_view(nqn: &str) -> String {
    let c = controllers(nqn);
    if c.is_empty() {
        return "absent".into();
    }
    let ctrls = c
        .iter()
        .map(|c| format!("{}:{}", c.name, c.state))
        .collect::<Vec<_>>()
        .join(",");
    let hs = heads(nqn);
    let ns = if hs.is_empty() {
        "-".to_owned()
    } else {
        hs.iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{ctrls} ns={ns}")
}

/// A namespace head of `nqn` as the host shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub name: String,
    pub dev: String,
    pub diskseq: String,
    pub uuid: String,
}

pub fn heads(nqn: &str) -> Vec<Head> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/nvme-subsystem") else {
        return out;
    };
    for s in rd.flatten() {
        let dir = s.path();
        if read_attr(dir.join("subsysnqn")).as_deref() != Some(nqn) {
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let d = e.path();
            if name.starts_with("nvme") && d.join("dev").exists() && d.join("nsid").exists() {
                out.push(Head {
                    name,
                    dev: read_attr(d.join("dev")).unwrap_or_default(),
                    diskseq: read_attr(d.join("diskseq")).unwrap_or_default(),
                    uuid: read_attr(d.join("uuid")).unwrap_or_default(),
                });
            }
        }
    }
    out
}

/// The major:minor of the mount at `path` (the topmost), from the mount table.
pub fn mounted_dev(path: &Path) -> Option<String> {
    let t = rds_mounts::mountinfo::read_mountinfo(Path::new("/proc"), "self").ok()?;
    t.entries
        .iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.dev.to_string())
}

pub async fn wait_until(within: Duration, f: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Connect a path by hand, as an operator with nvme-cli would (`/dev/nvme-fabrics`), on a
/// blocking thread: the kernel's write can block for as long as the connect takes, and the
/// scenario's own timeout must still be able to fire.
pub async fn connect_by_hand(nqn: &str, trsvcid: u16, extra: &str) -> Result<String, Fail> {
    let line = format!("transport=tcp,traddr=127.0.0.1,trsvcid={trsvcid},nqn={nqn}{extra}");
    tokio::task::spawn_blocking(move || connect_line(line))
        .await
        .map_err(|e| format!("the connect's thread failed: {e}"))?
}

/// Delete a controller by hand (its sysfs `delete_controller`), on a blocking thread: the
/// write waits for the kernel's teardown.
pub async fn delete_by_hand(controller: &str) {
    let path = format!("/sys/class/nvme/{controller}/delete_controller");
    let _ = tokio::task::spawn_blocking(move || std::fs::write(path, "1")).await;
}

fn connect_line(line: String) -> Result<String, Fail> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/nvme-fabrics")
        .map_err(|e| format!("opening /dev/nvme-fabrics: {e}"))?;
    f.write_all(line.as_bytes())
        .map_err(|e| format!("connecting {line}: {e}"))?;
    let mut reply = String::new();
    let _ = f.read_to_string(&mut reply);
    Ok(reply.trim().to_owned())
}

// ---- conditions ----

pub async fn sample(k: &mut Kubelet, vol: &str, path: &Path) -> Result<Sample, Fail> {
    let kernel = kernel_view(&Guest::nqn(vol));
    let at = Instant::now();
    let r = k
        .node
        .node_get_volume_stats(harness::stats_request(vol, path))
        .await
        .map_err(|s| format!("NodeGetVolumeStats({vol}, {}): {s}", path.display()))?
        .into_inner();
    let kernel_after = kernel_view(&Guest::nqn(vol));
    let c = r.volume_condition.unwrap_or_default();
    let kind = c.message.split(':').next().unwrap_or("").to_owned();
    Ok(Sample {
        at,
        kind,
        abnormal: c.abnormal,
        message: c.message,
        usage: !r.usage.is_empty(),
        kernel,
        kernel_after,
    })
}

/// NodeGetVolumeStats every `period` on a task of its own, until stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Option<Fail>>,
}

impl Sampler {
    pub fn start(k: &Kubelet, vol: &str, path: &Path, period: Duration) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let (mut k, vol, path, s) = (k.clone(), vol.to_owned(), path.to_owned(), samples.clone());
        let task = tokio::spawn(async move {
            loop {
                match sample(&mut k, &vol, &path).await {
                    Ok(x) => s.lock().unwrap_or_else(|p| p.into_inner()).push(x),
                    Err(e) => return Some(e),
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = rx.changed() => return None,
                }
            }
        });
        Self {
            samples,
            stop,
            task,
        }
    }

    pub fn latest(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }

    pub async fn finish(self) -> Result<Vec<Sample>, Fail> {
        let _ = self.stop.send(true);
        if let Some(e) = self.task.await.map_err(|e| e.to_string())? {
            return Err(e);
        }
        let s = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(s)
    }
}

/// The samples as a timeline of changes, relative to `t0`.
pub fn timeline(samples: &[Sample], t0: Instant) -> Vec<String> {
    let mut out = Vec::new();
    let mut last: Option<(&str, &str)> = None;
    for s in samples {
        let key = (s.kind.as_str(), s.kernel.as_str());
        if last != Some(key) {
            let t = s.at.saturating_duration_since(t0).as_secs_f64();
            let sign = if s.at < t0 { "-" } else { "" };
            out.push(format!(
                "{sign}{t:6.2}s  {:<24} kernel {}",
                s.kind, s.kernel
            ));
            last = Some(key);
        }
    }
    out
}

/// From the first abnormal sample until the kernel shows what `until_kernel` accepts (before
/// or after the call), every sample must be abnormal. Returns the first abnormal sample's
/// time.
pub fn abnormal_throughout(
    samples: &[Sample],
    until_kernel: impl Fn(&str) -> bool,
) -> Result<Instant, Fail> {
    let first = samples
        .iter()
        .position(|s| s.abnormal)
        .ok_or("never abnormal during the outage")?;
    for s in &samples[first..] {
        if until_kernel(&s.kernel) || until_kernel(&s.kernel_after) {
            break;
        }
        ensure!(
            s.abnormal,
            "reported {:?} ({}) while the kernel showed {}",
            s.kind,
            s.message,
            s.kernel
        );
    }
    Ok(samples[first].at)
}

// ---- data ----

/// 1 MiB of data that belongs to `tag`.
pub fn pattern(tag: &str) -> Vec<u8> {
    let mut x: u64 = tag.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write_file(path: &Path, tag: &str) -> Result<(), Fail> {
    let mut f =
        std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(&pattern(tag))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

pub fn check_file(path: &Path, tag: &str) -> Result<(), Fail> {
    let got = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    ensure!(
        got == pattern(tag),
        "{} does not hold the data written",
        path.display()
    );
    Ok(())
}

struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size; the pointer is checked and freed in Drop.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Self { ptr, layout }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Write `tag`'s data at the start of a block device node, bypassing the page cache.
pub fn write_block(node: &Path, tag: &str) -> Result<(), Fail> {
    let mut buf = Aligned::new(1 << 20);
    buf.as_mut().copy_from_slice(&pattern(tag));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(node)
        .map_err(|e| format!("opening {}: {e}", node.display()))?;
    f.write_all(buf.as_mut())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", node.display()))
}

pub fn check_block(node: &Path, tag: &str) -> Result<(), Fail> {
    let mut buf = Aligned::new(1 << 20);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(node)
        .map_err(|e| format!("opening {}: {e}", node.display()))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.read_exact(buf.as_mut())
        .map_err(|e| format!("reading {}: {e}", node.display()))?;
    ensure!(
        buf.as_mut() == pattern(tag).as_slice(),
        "{} does not hold the data written",
        node.display()
    );
    Ok(())
}

/// Is every byte of the file zero (never written)?
pub fn all_zero(path: &Path) -> Result<bool, Fail> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

pub fn ext4() -> csi::VolumeCapability {
    harness::mount_capability("ext4", Mode::SingleNodeWriter)
}

pub fn xfs() -> csi::VolumeCapability {
    harness::mount_capability("xfs", Mode::SingleNodeWriter)
}
