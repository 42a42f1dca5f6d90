//! A sysfs read the kernel holds does not hold the device watcher: the re-read of every
//! controller's state runs off the runtime with a deadline, and no second read starts while
//! the first is held. The held read is real: the controller's `state` attribute is a file on
//! a FUSE filesystem whose reads are frozen (`rds_testkit::fuse`). Privileged: runs in
//! private mount and network namespaces.

rds_testkit::private_namespaces!();

use std::path::Path;
use std::time::{Duration, Instant};

use rds_devices::{SourceKind, WatchError, WatcherConfig};
use rds_testkit::fuse::HangableFile;

/// Only bounds a broken run.
const WAIT: Duration = Duration::from_secs(60);

/// `<sys>/class/nvme/nvme0` → a controller directory whose `state` is `state_file`.
fn controller_tree(sys: &Path, state_file: &Path) {
    let dir = sys.join("devices/virtual/nvme-fabrics/ctl/nvme0");
    std::fs::create_dir_all(&dir).unwrap();
    for (attr, value) in [
        ("subsysnqn", "nqn.2000-02.com.mikrotik:pvc-stall\n"),
        ("transport", "tcp\n"),
        ("address", "traddr=127.0.0.1,trsvcid=4420\n"),
        ("cntlid", "1\n"),
        ("dev", "240:0\n"),
    ] {
        std::fs::write(dir.join(attr), value).unwrap();
    }
    std::os::unix::fs::symlink(state_file, dir.join("state")).unwrap();
    std::fs::create_dir_all(sys.join("class/nvme")).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/virtual/nvme-fabrics/ctl/nvme0",
        sys.join("class/nvme/nvme0"),
    )
    .unwrap();
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A single-threaded runtime on a thread of its own, as the plugin's notification thread:
/// the watcher runs there, and this test watches it from its own runtime, so a watcher that
/// blocks its thread makes the test fail on a timeout instead of hanging with it.
struct WatcherThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WatcherThread {
    fn start(cfg: WatcherConfig) -> (Self, rds_devices::DeviceWatcherHandle) {
        let (rt, handle, rx) = rds_testkit::devices::spawn_on_own_runtime(cfg);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _rx = rx;
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_background();
        });
        (Self { stop: Some(stop) }, handle)
    }
}

impl Drop for WatcherThread {
    /// Not joined: a watcher that blocked its thread (the failure this test is for) must not
    /// hold the test's end as well.
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

#[tokio::test]
async fn a_held_controller_state_read_neither_blocks_the_watcher_nor_piles_up() {
    rds_testkit::require_private_namespaces();
    let root = tempfile::tempdir().unwrap();
    let fuse_dir = root.path().join("fuse");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    let state = HangableFile::mount(&fuse_dir, "state", 4096).expect("FUSE mount");
    let sys = root.path().join("sys");
    controller_tree(&sys, state.path());
    let run = root.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cfg = WatcherConfig::new(&sys, &run)
        .with_sources(SourceKind::Kernel)
        .with_state_poll(Some(Duration::from_millis(20)));
    let (watcher, handle) = WatcherThread::start(cfg);

    // The next periodic re-read of the controller's state is held by the kernel.
    state.freeze();
    until("a state read parked in FUSE", || state.parked() >= 1).await;

    // The watcher still answers: a resync is refused while the held read runs, rather than
    // starting a second one.
    let r = tokio::time::timeout(WAIT, handle.resync())
        .await
        .expect("the watcher answers while a sysfs read is held");
    assert!(
        matches!(
            r,
            Err(WatchError::Scan(rds_devices::scan::ScanError::Stalled(_)))
        ),
        "a resync while a read is held is refused: {r:?}"
    );
    // Periodic re-reads went on being due meanwhile; none started.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state.parked(), 1, "only the first read is held");
    assert!(handle.is_running());

    // The kernel lets go: the held read finishes, and the next resync runs.
    state.thaw();
    let start = Instant::now();
    loop {
        match handle.resync().await {
            Ok(()) => break,
            Err(WatchError::Scan(rds_devices::scan::ScanError::Stalled(_))) => {
                assert!(
                    start.elapsed() < WAIT,
                    "a resync runs again once the read is done"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("resync after the thaw: {e}"),
        }
    }
    drop(watcher);
}
