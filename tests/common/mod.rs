//! Test support shared by the plugin-level integration tests: one plugin on the emulated
//! fabric under a fresh directory, a kubelet over its socket, and the CSI calls kubelet makes.
//! Each test binary uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_harness::harness::*;
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use rds_types::{Health as Condition, VolumeId};

/// One plugin at a time in a test process: every emulated fabric injects udev events into the
/// same network namespace, and a plugin must only see its own.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small volume (ext4 and raw block).
pub const SIZE: u64 = 64 << 20;
/// mkfs.xfs wants at least 300 MiB.
pub const XFS_SIZE: u64 = 320 << 20;
/// Generous: the kernel delivers events in microseconds; this only bounds a broken run.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn ext4() -> csi::VolumeCapability {
    mount_capability("ext4", Mode::SingleNodeWriter)
}

/// Lazily detaches whatever a failed test left mounted under its root.
struct MountSweeper(PathBuf);

impl Drop for MountSweeper {
    fn drop(&mut self) {
        let Ok(table) = rds_mounts::mountinfo::read_mountinfo(Path::new("/proc"), "self") else {
            return;
        };
        for m in table.entries.iter().rev() {
            if m.mount_point.starts_with(&self.0) {
                let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// A plugin under a fresh (canonical) directory and a kubelet connected to it.
pub struct Env {
    _sweeper: MountSweeper,
    pub plugin: Plugin,
    pub k: Kubelet,
    pub root: PathBuf,
    pub dir: tempfile::TempDir,
}

pub async fn env() -> Env {
    Env::start_with(Options::default()).await
}

impl Env {
    pub async fn start_with(opts: Options) -> Env {
        rds_testkit::require_private_namespaces();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
        let plugin = Plugin::start_with(&root, None, opts)
            .await
            .expect("plugin starts");
        let k = plugin.kubelet().await.expect("kubelet connects");
        Env {
            _sweeper: MountSweeper(root.clone()),
            plugin,
            k,
            root,
            dir,
        }
    }

    /// An emulated target for the volume; returns its backing file.
    pub fn target(&self, vol: &str, size: u64) -> PathBuf {
        self.plugin
            .fabric
            .add_target(&nqn_for(vol), size)
            .expect("emulated target")
    }

    pub async fn stage(
        &mut self,
        vol: &str,
        cap: csi::VolumeCapability,
    ) -> Result<(), tonic::Status> {
        let req = stage_request(&self.plugin, vol, cap);
        self.k.node.node_stage_volume(req).await.map(|_| ())
    }

    pub async fn unstage(&mut self, vol: &str) -> Result<(), tonic::Status> {
        let req = unstage_request(&self.plugin, vol);
        self.k.node.node_unstage_volume(req).await.map(|_| ())
    }

    pub async fn publish(
        &mut self,
        vol: &str,
        pod: &str,
        cap: csi::VolumeCapability,
        ro: bool,
    ) -> Result<(), tonic::Status> {
        let req = publish_request(&self.plugin, vol, pod, cap, ro);
        self.k.node.node_publish_volume(req).await.map(|_| ())
    }

    pub async fn unpublish(&mut self, vol: &str, pod: &str) -> Result<(), tonic::Status> {
        let req = unpublish_request(&self.plugin, vol, pod);
        self.k.node.node_unpublish_volume(req).await.map(|_| ())
    }

    pub async fn stats(
        &mut self,
        vol: &str,
        path: &Path,
    ) -> Result<csi::NodeGetVolumeStatsResponse, tonic::Status> {
        self.k
            .node
            .node_get_volume_stats(stats_request(vol, path))
            .await
            .map(|r| r.into_inner())
    }

    /// Target, stage and publish an ext4 volume in "pod", and wait until the monitor calls
    /// it healthy.
    pub async fn stage_and_publish(&mut self, vol: &str) {
        self.target(vol, SIZE);
        self.stage(vol, ext4()).await.expect("stage");
        self.publish(vol, "pod", ext4(), false)
            .await
            .expect("publish");
        self.wait(vol, |c| !c.abnormal())
            .await
            .expect("healthy after stage");
    }

    /// Wait until the monitor's condition of `vol` satisfies `pred` (woken by the change).
    pub async fn wait(
        &self,
        vol: &str,
        pred: impl Fn(&Condition) -> bool,
    ) -> Result<Condition, Option<Condition>> {
        self.plugin
            .running
            .monitor
            .wait_for(&vid(vol), None, WAIT, pred)
            .await
    }

    /// Wait until the monitor's condition of `vol` at `path` (a publish target, or the
    /// staging path) satisfies `pred`: a test waits on exactly what it asserts.
    pub async fn wait_at(
        &self,
        vol: &str,
        path: &Path,
        pred: impl Fn(&Condition) -> bool,
    ) -> Result<Condition, Option<Condition>> {
        self.plugin
            .running
            .monitor
            .wait_for(&vid(vol), Some(path), WAIT, pred)
            .await
    }

    /// NodeGetVolumeStats at the volume's target in "pod": its condition and how many usage
    /// entries were measured.
    pub async fn stats_condition(&mut self, vol: &str) -> (csi::VolumeCondition, usize) {
        let target = self.plugin.target_path("pod", vol);
        let r = self.stats(vol, &target).await.expect("stats");
        (
            r.volume_condition.expect("a condition is always reported"),
            r.usage.len(),
        )
    }

    pub async fn finish(self) {
        self.plugin.stop().await.expect("plugin stops cleanly");
    }
}

/// The target restarts past its `ctrl_loss_tmo`: the kernel deletes the controller, and
/// someone connects it again at once (the namespace comes back as a new incarnation: new
/// `diskseq`, and with `renamed` a new name, because another volume's controller took the
/// number in between).
pub fn reconnect(fabric: &rds_fabric::EmulatedFabric, nqn: &rds_types::Nqn, renamed: bool) {
    use rds_fabric::Fabric;
    let req = fabric.request_of(nqn).expect("connected");
    fabric.lose_controller(nqn).expect("controller deleted");
    if renamed {
        let n = FILLERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let filler = nqn_for(&format!("pvc-filler-{n}"));
        fabric.add_target(&filler, 1 << 20).expect("filler target");
        fabric
            .connect(&rds_fabric::ConnectRequest::tcp(
                filler,
                "127.0.0.1".parse().unwrap(),
                4420,
            ))
            .expect("filler connects");
    }
    fabric.restore_port(nqn).expect("port back");
    fabric.connect(&req).expect("reconnected");
}

static FILLERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn vid(vol: &str) -> VolumeId {
    VolumeId::parse(vol).expect("test volume ids are valid")
}

/// The visible (topmost) mount at `path`, from this process's mount table.
pub fn top(path: &Path) -> Option<rds_mounts::mountinfo::MountInfo> {
    rds_mounts::MountView::read_now(Path::new("/proc"), "self")
        .expect("mountinfo")
        .top_at(path)
        .cloned()
}
