//! Shared set-up of the kernel benches: a tmpfs to bind, a holder tmpfs for filler mounts,
//! watchers per strategy. Runs inside the bench process's private mount namespace.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rds_mounts::watch::{spawn, MountEvent, Strategy, WatcherConfig, WatcherHandle};
use rds_types::DevNum;
use tokio::sync::mpsc::Receiver;

pub const DEADLINE: Duration = Duration::from_secs(300);

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub base: PathBuf,
    pub holder: PathBuf,
    pub dev: DevNum,
    pub filler: usize,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = umount2(&self.holder, MntFlags::MNT_DETACH);
        let _ = umount2(&self.base, MntFlags::MNT_DETACH);
    }
}

pub fn tmpfs(src: &str, at: &Path) {
    std::fs::create_dir_all(at).expect("mkdir");
    mount(
        Some(src),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=16m"),
    )
    .expect("mount tmpfs");
}

pub fn bind(from: &Path, at: &Path) {
    mount(Some(from), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind mount");
}

pub fn table_len() -> usize {
    rds_mounts::mountinfo::read_mountinfo(Path::new("/proc"), "self")
        .expect("mountinfo")
        .entries
        .len()
}

impl Fixture {
    pub fn new() -> Self {
        rds_testkit::require_private_namespaces();
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("base");
        let holder = dir.path().join("holder");
        tmpfs("bench base", &base);
        tmpfs("bench holder", &holder);
        let dev = DevNum::from_dev_t(std::fs::metadata(&base).expect("stat").dev());
        Self {
            dir,
            base,
            holder,
            dev,
            filler: 0,
        }
    }

    /// Add bind mounts of `base` under the holder until the table has `n` entries.
    pub fn fill_to(&mut self, n: usize) {
        let have = table_len();
        for _ in have..n {
            let at = self.holder.join(format!("f{}", self.filler));
            std::fs::create_dir(&at).expect("mkdir");
            bind(&self.base, &at);
            self.filler += 1;
        }
    }

    pub fn probe(&self) -> PathBuf {
        let p = self.dir.path().join("probe");
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

pub async fn start(strategy: Strategy) -> (WatcherHandle, Receiver<MountEvent>) {
    let mut cfg = WatcherConfig::new("/proc");
    cfg.strategy = strategy;
    let (h, mut rx) = spawn(cfg).expect("watcher starts");
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(MountEvent::Resynced { .. })) => {}
        other => panic!("expected the initial Resynced, got {other:?}"),
    }
    (h, rx)
}

pub async fn wait_for(rx: &mut Receiver<MountEvent>, mut pred: impl FnMut(&MountEvent) -> bool) {
    let fut = async {
        loop {
            match rx.recv().await {
                Some(ev) if pred(&ev) => return,
                Some(_) => {}
                None => panic!("watcher stopped"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("event within the deadline");
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub const STRATEGIES: [Strategy; 3] = [Strategy::Fanotify, Strategy::ListStat, Strategy::Reread];
