//! The watcher against real mounts in the test's private mount namespace, for each strategy.
//! Other tests of this binary mount concurrently, so every assertion filters on its own
//! temporary directory.
rds_testkit::private_namespaces!();

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rds_mounts::mountinfo::MountInfo;
use rds_mounts::storm::{StormConfig, StormKey};
use rds_mounts::watch::{spawn, MountEvent, Strategy, WatcherConfig, WatcherHandle};
use rds_types::DevNum;
use tokio::sync::mpsc::Receiver;

const DEADLINE: Duration = Duration::from_secs(60);

/// Lazily unmounts what the test mounted, even when it fails.
struct Mounts(Vec<PathBuf>);
impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
    }
}

fn tmpfs(src: &str, at: &Path) {
    std::fs::create_dir_all(at).expect("mkdir");
    mount(
        Some(src),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount tmpfs");
}

fn bind(from: &Path, at: &Path) {
    std::fs::create_dir_all(at).expect("mkdir");
    mount(Some(from), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind mount");
}

fn dev_of(p: &Path) -> DevNum {
    DevNum::from_dev_t(std::fs::metadata(p).expect("stat").dev())
}

async fn start(strategy: Strategy, storm: StormConfig) -> (WatcherHandle, Receiver<MountEvent>) {
    let mut cfg = WatcherConfig::new("/proc");
    cfg.strategy = strategy;
    cfg.storm = storm;
    let (h, mut rx) = spawn(cfg).expect("watcher starts");
    assert_eq!(h.strategy(), strategy);
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(MountEvent::Resynced { table })) => {
            assert!(!table.is_empty(), "the initial scan sees the namespace")
        }
        other => panic!("the first event must be the initial scan (Resynced), got {other:?}"),
    }
    (h, rx)
}

/// The next event satisfying `pred`, or a panic naming `what` after the deadline.
async fn expect(
    rx: &mut Receiver<MountEvent>,
    what: &str,
    mut pred: impl FnMut(&MountEvent) -> bool,
) -> MountEvent {
    let fut = async {
        loop {
            match rx.recv().await {
                Some(ev) if pred(&ev) => return ev,
                Some(_) => {}
                None => panic!("watcher stopped while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

async fn attached_at(rx: &mut Receiver<MountEvent>, at: &Path) -> MountInfo {
    match expect(
        rx,
        &format!("Attached at {at:?}"),
        |e| matches!(e, MountEvent::Attached(m) if m.mount_point == at),
    )
    .await
    {
        MountEvent::Attached(m) => m,
        _ => unreachable!(),
    }
}

async fn detached_id(rx: &mut Receiver<MountEvent>, id: u32) -> MountInfo {
    match expect(
        rx,
        &format!("Detached of mount {id}"),
        |e| matches!(e, MountEvent::Detached(m) if m.id == id),
    )
    .await
    {
        MountEvent::Detached(m) => m,
        _ => unreachable!(),
    }
}

async fn changed_id(rx: &mut Receiver<MountEvent>, id: u32) -> (MountInfo, MountInfo) {
    match expect(
        rx,
        &format!("Changed of mount {id}"),
        |e| matches!(e, MountEvent::Changed { new, .. } if new.id == id),
    )
    .await
    {
        MountEvent::Changed { old, new } => (old, new),
        _ => unreachable!(),
    }
}

async fn attach_then_detach_report_ids_devices_and_options(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let (_h, mut rx) = start(strategy, StormConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("vol a");
    let mut guard = Mounts(vec![]);
    tmpfs("attach src", &at);
    guard.0.push(at.clone());
    let m = attached_at(&mut rx, &at).await;
    assert_eq!(m.dev, dev_of(&at), "device of the attached mount");
    assert_eq!(m.fs_type, "tmpfs");
    assert_eq!(m.source.as_deref(), Some("attach src"));
    assert_eq!(m.super_option("size").as_deref(), Some("1024k"));
    assert!(!m.is_read_only());
    umount2(&at, MntFlags::empty()).expect("umount");
    let d = detached_id(&mut rx, m.id).await;
    assert_eq!(d.mount_point, at);
    assert_eq!(d.dev, m.dev);
}

async fn remount_read_only_is_a_change_of_the_tracked_mount(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let (h, mut rx) = start(strategy, StormConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("ro");
    let _guard = Mounts(vec![at.clone()]);
    tmpfs("ro src", &at);
    let m = attached_at(&mut rx, &at).await;
    h.track(m.id);
    mount(
        None::<&str>,
        &at,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("remount ro");
    let (old, new) = changed_id(&mut rx, m.id).await;
    assert!(
        !old.is_read_only() && new.is_read_only(),
        "rw -> ro expected: {} -> {}",
        old.mount_options,
        new.mount_options
    );
    assert_eq!(new.mount_point, at);
    assert!(
        h.table().get(m.id).is_some_and(MountInfo::is_read_only),
        "the published table follows"
    );
}

async fn move_is_a_change_of_mount_point(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let (h, mut rx) = start(strategy, StormConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::create_dir(&b).unwrap();
    let _guard = Mounts(vec![a.clone(), b.clone()]);
    tmpfs("move src", &a);
    let m = attached_at(&mut rx, &a).await;
    h.track(m.id);
    mount(Some(&a), &b, None::<&str>, MsFlags::MS_MOVE, None::<&str>).expect("move mount");
    let (old, new) = changed_id(&mut rx, m.id).await;
    assert_eq!(
        (old.mount_point, new.mount_point.clone()),
        (a, b.clone()),
        "moved from -> to"
    );
    assert_eq!(new.dev, m.dev);
}

async fn bind_mount_reports_the_shared_device_and_root(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let (_h, mut rx) = start(strategy, StormConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (src, at) = (dir.path().join("src"), dir.path().join("bind"));
    let mut guard = Mounts(vec![src.clone()]);
    tmpfs("bind src", &src);
    let s = attached_at(&mut rx, &src).await;
    std::fs::create_dir(src.join("sub dir")).unwrap();
    bind(&src.join("sub dir"), &at);
    guard.0.push(at.clone());
    let b = attached_at(&mut rx, &at).await;
    assert_eq!(b.dev, s.dev, "a bind mount reports the superblock's device");
    assert_eq!(b.root, Path::new("/sub dir"));
    assert_ne!(b.id, s.id);
}

async fn lazy_unmount_of_a_subtree_detaches_every_mount_in_it(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let (_h, mut rx) = start(strategy, StormConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top");
    let _guard = Mounts(vec![top.clone()]);
    tmpfs("lazy top", &top);
    let t = attached_at(&mut rx, &top).await;
    tmpfs("lazy x", &top.join("x"));
    let x = attached_at(&mut rx, &top.join("x")).await;
    tmpfs("lazy y", &top.join("x/y"));
    let y = attached_at(&mut rx, &top.join("x/y")).await;
    assert_eq!(
        (x.parent_id, y.parent_id),
        (t.id, x.id),
        "parents as mounted"
    );
    umount2(&top, MntFlags::MNT_DETACH).expect("lazy umount");
    let mut gone = vec![];
    for _ in 0..3 {
        let ids = [t.id, x.id, y.id];
        match expect(&mut rx, "Detached of the subtree", |e| matches!(e, MountEvent::Detached(m) if ids.contains(&m.id) && m.mount_point.starts_with(&top))).await {
            MountEvent::Detached(m) => gone.push(m.id),
            _ => unreachable!(),
        }
    }
    gone.sort();
    let mut want = vec![t.id, x.id, y.id];
    want.sort();
    assert_eq!(gone, want, "each mount of the subtree detached once");
}

async fn many_binds_of_one_tmpfs_are_a_storm_until_unmounted(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let (_h, mut rx) = start(strategy, StormConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storm src");
    let mut guard = Mounts(vec![src.clone()]);
    tmpfs("storm src", &src);
    let dev = dev_of(&src);
    for i in 0..150 {
        let at = dir.path().join(format!("b{i}"));
        bind(&src, &at);
        guard.0.push(at);
    }
    let key = StormKey::Device(dev);
    match expect(
        &mut rx,
        "Storm on the tmpfs device",
        |e| matches!(e, MountEvent::Storm(r) if r.key == key),
    )
    .await
    {
        MountEvent::Storm(r) => {
            assert!(r.count >= 50, "reported with {} mounts", r.count);
            assert!(
                r.message.contains(&dev.to_string()),
                "the message names the device: {}",
                r.message
            );
        }
        _ => unreachable!(),
    }
    for p in guard.0.drain(..).rev() {
        umount2(&p, MntFlags::empty()).expect("umount bind");
    }
    match expect(
        &mut rx,
        "StormCleared on the tmpfs device",
        |e| matches!(e, MountEvent::StormCleared(c) if c.key == key),
    )
    .await
    {
        MountEvent::StormCleared(c) => {
            assert!(
                c.count < 80,
                "cleared below the hysteresis mark, at {}",
                c.count
            );
            assert!(c.peak >= 100, "peak {} recorded", c.peak);
        }
        _ => unreachable!(),
    }
}

macro_rules! for_each_strategy {
    ($($strategy:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn attach_then_detach_report_ids_devices_and_options() {
                super::attach_then_detach_report_ids_devices_and_options(Strategy::$strategy).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn remount_read_only_is_a_change_of_the_tracked_mount() {
                super::remount_read_only_is_a_change_of_the_tracked_mount(Strategy::$strategy).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn move_is_a_change_of_mount_point() {
                super::move_is_a_change_of_mount_point(Strategy::$strategy).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bind_mount_reports_the_shared_device_and_root() {
                super::bind_mount_reports_the_shared_device_and_root(Strategy::$strategy).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lazy_unmount_of_a_subtree_detaches_every_mount_in_it() {
                super::lazy_unmount_of_a_subtree_detaches_every_mount_in_it(Strategy::$strategy).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn many_binds_of_one_tmpfs_are_a_storm_until_unmounted() {
                super::many_binds_of_one_tmpfs_are_a_storm_until_unmounted(Strategy::$strategy).await
            }
        }
    )*};
}

for_each_strategy!(Fanotify => fanotify, ListStat => liststat, Reread => reread);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_fanotify_on_this_kernel() {
    rds_testkit::require_private_namespaces();
    let (h, _rx) = spawn(WatcherConfig::new("/proc")).expect("watcher starts");
    assert_eq!(
        h.strategy(),
        Strategy::Fanotify,
        "Linux 6.15+ as root: fanotify mount events"
    );
}
