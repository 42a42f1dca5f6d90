//! Cluster mode without NVMe hardware, end to end: the real binary `serve --fabric emulated`
//! as the DaemonSet runs it (its own process, Events posted through a kubeconfig to an HTTP
//! server speaking the Kubernetes API), driven over its socket by a kubelet, with every fault
//! played from the command line (`rds-csi-node fabric …`) on the running plugin.
//!
//! Runs in private mount and network namespaces (the emulated uevents stay in this test).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rds_harness::harness::{
    block_capability, mount_capability, nqn_for, publish_request, stage_request, unpublish_request,
    unstage_request, Kubelet, KubeletDirs,
};
use rds_harness::vm::guest::{claim_of, pvc_events, sample, Sample, CLAIM_NS};
use rds_harness::vm::plugin::{kubeconfig_for, PluginDirs, PluginProcess, PluginSettings};
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use rds_testkit::fake_api::FakeApi;

rds_testkit::private_namespaces!();

const BIN: &str = env!("CARGO_BIN_EXE_rds-csi-node");
/// Only bounds a broken run: the plugin answers in milliseconds, recovery takes seconds.
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    api: FakeApi,
    plugin: PluginProcess,
    k: Kubelet,
    emulated: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        rds_testkit::require_private_namespaces();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
        let emulated = root.join("emulated");
        let dirs = PluginDirs {
            root: root.join("plugin"),
        };
        std::fs::create_dir_all(&dirs.root).unwrap();
        let api = FakeApi::start().await;
        std::fs::write(dirs.kubeconfig(), kubeconfig_for(&api.url())).unwrap();
        let settings = PluginSettings {
            fabric: "emulated",
            extra: vec![
                format!("--emulated-backing-dir={}", emulated.display()),
                "--emulated-default-capacity=64Mi".into(),
                // The default `auto` on a node without udevd: the emulated events must be
                // seen anyway.
                "--uevent-source=auto".into(),
            ],
            ..PluginSettings::default()
        };
        let plugin = PluginProcess::start(Path::new(BIN), dirs, settings)
            .await
            .expect("serve --fabric emulated starts");
        let k = plugin.kubelet().await.expect("kubelet connects");
        Self {
            api,
            plugin,
            k,
            emulated,
            _dir: dir,
        }
    }

    fn pv(&self, vol: &str) {
        self.api.add_pv(
            vol,
            &format!("uid-{vol}"),
            Some((CLAIM_NS, &claim_of(vol), &format!("claim-uid-{vol}"))),
        );
    }

    /// `rds-csi-node fabric <verb> [--nqn]` against the running plugin: (success, output).
    fn fabric(&self, verb: &str, vol: Option<&str>) -> (bool, String) {
        let mut c = Command::new(BIN);
        c.arg("fabric").arg(verb).arg(format!(
            "--socket={}",
            self.emulated.join("control.sock").display()
        ));
        if let Some(v) = vol {
            c.arg(format!("--nqn={}", nqn_for(v)));
        }
        let o = c.output().expect("run rds-csi-node fabric");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    fn fabric_ok(&self, verb: &str, vol: Option<&str>) -> String {
        let (ok, text) = self.fabric(verb, vol);
        assert!(ok, "fabric {verb} failed: {text}\n{}", self.plugin.log());
        text
    }

    /// `fabric list`'s line for the volume's target.
    fn listed(&self, vol: &str) -> String {
        let nqn = nqn_for(vol).to_string();
        self.fabric_ok("list", None)
            .lines()
            .find(|l| l.starts_with(&format!("{nqn} ")))
            .unwrap_or_else(|| panic!("{nqn} not listed"))
            .to_owned()
    }

    async fn wait(
        &mut self,
        vol: &str,
        path: &Path,
        what: &str,
        pred: impl Fn(&Sample) -> bool,
    ) -> Sample {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < WAIT {
            match sample(&mut self.k, vol, path).await {
                Ok(s) if pred(&s) => return s,
                Ok(s) => last = Some(format!("{s:?}")),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{vol} at {}: not {what} within {WAIT:?}; last: {last:?}\n{}",
            path.display(),
            self.plugin.log()
        )
    }

    /// Wait until the condition at `path` is abnormal; kubelet's rule: it carries usage.
    async fn abnormal_with_usage(&mut self, vol: &str, path: &Path, what: &str) {
        let s = self.wait(vol, path, what, |s| s.abnormal).await;
        assert!(s.usage, "{vol}: usage with every abnormal condition: {s:?}");
    }

    async fn wait_event(&self, vol: &str, reason: &str) -> (String, String) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Some((t, _, note)) = pvc_events(&self.api, vol)
                .into_iter()
                .find(|(_, r, _)| r == reason)
            {
                return (t, note);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {reason} Event on {vol}'s PVC within {WAIT:?}; got {:?}",
            pvc_events(&self.api, vol)
        )
    }

    fn context(vol: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut c = rds_harness::harness::volume_context(vol);
        c.insert("reconnectDelay".into(), "1".into());
        for (k, v) in extra {
            c.insert((*k).into(), (*v).into());
        }
        c
    }

    async fn stage(&mut self, vol: &str, cap: csi::VolumeCapability, ctx: HashMap<String, String>) {
        let mut r = stage_request(&self.plugin.dirs, vol, cap);
        r.volume_context = ctx;
        if let Err(s) = self.k.node.node_stage_volume(r).await {
            panic!("NodeStage {vol}: {s}\n{}", self.plugin.log());
        }
    }

    async fn publish(&mut self, vol: &str, pod: &str, cap: csi::VolumeCapability, target: &Path) {
        let mut r = publish_request(&self.plugin.dirs, vol, pod, cap, false);
        r.target_path = target.display().to_string();
        if let Err(s) = self.k.node.node_publish_volume(r).await {
            panic!("NodePublish {vol}: {s}\n{}", self.plugin.log());
        }
    }
}

impl Drop for Cluster {
    /// What a failed run left: the plugin, the mounts under the test's directory, and the
    /// loop devices the emulated kernel kept (in cluster mode they outlive the plugin).
    fn drop(&mut self) {
        let _ = self.plugin.stop();
        let root = self.emulated.parent().unwrap_or(&self.emulated).to_owned();
        if let Ok(t) = rds_mounts::mountinfo::read_mountinfo(Path::new("/proc"), "self") {
            for m in t.entries.iter().rev() {
                if m.mount_point.starts_with(&root) {
                    let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let Ok(rd) = std::fs::read_dir("/sys/block") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing =
                std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
            if name.starts_with("loop") && Path::new(backing.trim()).starts_with(&self.emulated) {
                let _ = Command::new("losetup")
                    .arg("-d")
                    .arg(format!("/dev/{name}"))
                    .status();
            }
        }
    }
}

fn ok(s: &Sample) -> bool {
    !s.abnormal && s.usage
}

/// `loopN=`'s value in a `fabric list` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// What a kernel leaves of a deleted namespace's device: nothing readable or writable. The
/// emulation cuts the loop device off (one sector) or unbinds it.
fn cut_off(loop_dev: &str) -> bool {
    let sys = Path::new("/sys/block").join(loop_dev);
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    sectors <= 1 || !sys.join("loop/backing_file").exists()
}

fn sparse(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("backing file");
    (m.len(), m.blocks() * 512)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fabric_emulated_stages_volumes_and_plays_every_fault_from_the_command_line() {
    let mut c = Cluster::start().await;
    let cap = mount_capability("ext4", Mode::SingleNodeWriter);

    // ---- a filesystem volume, its target created on first connect (default size) ----
    let fs = "pvc-cluster-fs";
    c.pv(fs);
    let (ok_, text) = c.fabric("lose", Some(fs));
    assert!(
        !ok_ && text.contains("no emulated target"),
        "a fault on a target nobody created: {text}"
    );
    c.stage(fs, cap.clone(), Cluster::context(fs, &[])).await;
    let backing = c.emulated.join(format!("{}.img", nqn_for(fs)));
    let (len, allocated) = sparse(&backing);
    assert_eq!(len, 64 << 20, "the flag's default size");
    assert!(
        allocated < len,
        "the backing file is sparse ({allocated} of {len} bytes allocated)"
    );
    let target = c.plugin.dirs.target_path("pod-a", fs);
    c.publish(fs, "pod-a", cap.clone(), &target).await;
    {
        // Written and synced: what a pod's fsync puts on the target survives its controller.
        use std::io::Write;
        let mut f = std::fs::File::create(target.join("data")).unwrap();
        f.write_all(b"before the faults").unwrap();
        f.sync_all().unwrap();
    }
    let staging = c.plugin.dirs.staging_path(fs);
    c.wait(fs, &staging, "healthy", ok).await;
    let line = c.listed(fs);
    assert!(line.contains("state=live"), "{line}");

    // lose / restore: the controller reconnects on the same device.
    let first_loop = field(&line, "loop").to_owned();
    c.fabric_ok("lose", Some(fs));
    c.abnormal_with_usage(fs, &staging, "abnormal while the port is gone")
        .await;
    assert!(c.listed(fs).contains("state=connecting"));
    c.fabric_ok("restore", Some(fs));
    c.wait(fs, &staging, "healthy again", ok).await;
    assert_eq!(
        field(&c.listed(fs), "loop"),
        first_loop,
        "a reconnect keeps the device"
    );
    assert_eq!(
        std::fs::read(target.join("data")).unwrap(),
        b"before the faults"
    );

    // lose + expire: the kernel deletes the controller; the plugin reconnects and re-stages.
    c.fabric_ok("lose", Some(fs));
    c.fabric_ok("expire", Some(fs));
    assert!(
        cut_off(&first_loop),
        "the deleted namespace's old device must stop working, as the kernel's does"
    );
    c.abnormal_with_usage(fs, &staging, "abnormal with the controller deleted")
        .await;
    // The target comes back: the plugin's reconnect (it keeps retrying) finds it.
    c.fabric_ok("restore", Some(fs));
    c.wait_event(fs, "RecoverySucceeded").await;
    c.wait(fs, &staging, "healthy on the new device", ok).await;
    let second_loop = field(&c.listed(fs), "loop").to_owned();
    assert_ne!(second_loop, first_loop, "a new incarnation");
    assert_eq!(
        std::fs::read(staging.join("data")).unwrap(),
        b"before the faults",
        "the data is on the healed staging mount"
    );
    // No container holds the old filesystem here, so recovery re-bound the publish.
    c.wait(fs, &target, "healthy at the re-bound publish", ok)
        .await;
    assert_eq!(
        std::fs::read(target.join("data")).unwrap(),
        b"before the faults"
    );

    // A plugin restart (SIGTERM, then SIGKILL): the emulated connection survives, as a kernel's.
    for kill in [false, true] {
        if kill {
            c.plugin.kill();
        } else {
            c.plugin.stop().unwrap();
        }
        c.plugin.restart().await.unwrap();
        c.k = c.plugin.kubelet().await.unwrap();
        let line = c.listed(fs);
        assert_eq!(
            field(&line, "loop"),
            second_loop,
            "restart {kill}: the same device: {line}"
        );
        assert!(line.contains("state=live"), "{line}");
        c.wait(fs, &staging, "healthy after the restart", ok).await;
        assert_eq!(
            std::fs::read(staging.join("data")).unwrap(),
            b"before the faults"
        );
    }

    // kill-path: every I/O through the mount fails; the filesystem says so.
    c.fabric_ok("kill-path", Some(fs));
    let t = target.clone();
    tokio::task::spawn_blocking(move || rds_testkit::pod_writes(&t, "after"))
        .await
        .unwrap();
    c.abnormal_with_usage(fs, &target, "abnormal once the path died")
        .await;

    // replace: another volume behind the NQN, seen at the next reconnect.
    c.fabric_ok("replace", Some(fs));
    c.fabric_ok("lose", Some(fs));
    c.fabric_ok("restore", Some(fs));
    c.abnormal_with_usage(fs, &staging, "abnormal once the namespace was replaced")
        .await;

    // ---- a raw block volume sized by its volume context ----
    let blk = "pvc-cluster-blk";
    c.pv(blk);
    c.stage(
        blk,
        block_capability(),
        Cluster::context(blk, &[("emulatedCapacity", "32Mi")]),
    )
    .await;
    let (len, _) = sparse(&c.emulated.join(format!("{}.img", nqn_for(blk))));
    assert_eq!(len, 32 << 20, "sized by emulatedCapacity");
    let dev_target = c.plugin.dirs.kubelet().join(format!(
        "plugins/kubernetes.io/csi/volumeDevices/publish/{blk}/pod-uid-b"
    ));
    c.publish(blk, "pod-b", block_capability(), &dev_target)
        .await;
    c.wait(blk, &dev_target, "healthy", ok).await;
    c.fabric_ok("lose", Some(blk));
    c.abnormal_with_usage(blk, &dev_target, "abnormal while the port is gone")
        .await;
    c.fabric_ok("restore", Some(blk));
    c.wait(blk, &dev_target, "healthy again", ok).await;
    // disable / enable the namespace.
    c.fabric_ok("disable-namespace", Some(blk));
    c.abnormal_with_usage(blk, &dev_target, "abnormal without its namespace")
        .await;
    c.fabric_ok("enable-namespace", Some(blk));
    // reconnect and unexport act on the live controller.
    c.fabric_ok("reconnect", Some(blk));
    c.fabric_ok("unexport", Some(blk));
    c.fabric_ok("restore", Some(blk));

    // ---- the Events landed on the right PVCs, through the API server ----
    let reasons: Vec<String> = pvc_events(&c.api, fs)
        .into_iter()
        .map(|(_, r, _)| r)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "RecoverySucceeded"),
        "{reasons:?}"
    );
    assert!(
        !pvc_events(&c.api, blk).is_empty(),
        "the block volume's faults were reported"
    );

    // ---- teardown: the kubelet's calls leave nothing behind ----
    let dirs = c.plugin.dirs.clone();
    for (vol, pod, t) in [(fs, "pod-a", &target), (blk, "pod-b", &dev_target)] {
        let mut r = unpublish_request(&dirs, vol, pod);
        r.target_path = t.display().to_string();
        c.k.node
            .node_unpublish_volume(r)
            .await
            .unwrap_or_else(|s| panic!("unpublish {vol}: {s}"));
        c.k.node
            .node_unstage_volume(unstage_request(&dirs, vol))
            .await
            .unwrap_or_else(|s| panic!("unstage {vol}: {s}\n{}", c.plugin.log()));
    }
    for vol in [fs, blk] {
        assert!(
            c.listed(vol).contains("controller=none"),
            "{vol} disconnected on unstage"
        );
    }
    c.plugin.stop().unwrap();
    assert!(
        !c.emulated.join("control.sock").exists(),
        "the control socket goes with the plugin"
    );
}
