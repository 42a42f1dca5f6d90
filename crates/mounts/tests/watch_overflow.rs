//! More than 16,384 mounts detached at once (a lazy unmount of a subtree holding 17,000 bind
//! mounts): fanotify's queue overflows and the watcher must resync to the exact table; the
//! other strategies must converge to it. The tests of this file are serialised: they compare
//! the watcher's table with a fresh read of the whole namespace.
rds_testkit::private_namespaces!();

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rds_mounts::mountinfo::read_mountinfo;
use rds_mounts::table::MountTable;
use rds_mounts::watch::{spawn, MountEvent, Strategy, WatcherConfig, WatcherHandle};
use rds_types::DevNum;
use tokio::sync::mpsc::Receiver;

const BINDS: usize = 17_000;
const DEADLINE: Duration = Duration::from_secs(300);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        Some("size=16m"),
    )
    .expect("mount tmpfs");
}

fn dev_of(p: &Path) -> DevNum {
    DevNum::from_dev_t(std::fs::metadata(p).expect("stat").dev())
}

fn assert_same_as_fresh_read(table: &MountTable) {
    let fresh = read_mountinfo(Path::new("/proc"), "self").expect("read mountinfo");
    assert!(fresh.errors.is_empty(), "{:?}", fresh.errors);
    assert_eq!(
        table.len(),
        fresh.entries.len(),
        "the watcher's table has as many mounts as a fresh read"
    );
    for m in &fresh.entries {
        let t = table.get(m.id).unwrap_or_else(|| {
            panic!(
                "mount {} at {:?} missing from the watcher's table",
                m.id, m.mount_point
            )
        });
        assert!(t.same_mount_state(m), "watcher {t:?}\n fresh {m:?}");
    }
}

/// Consume events until `done(table)` holds for the published table; returns what was seen.
async fn until(
    h: &WatcherHandle,
    rx: &mut Receiver<MountEvent>,
    what: &str,
    mut done: impl FnMut(&MountTable) -> bool,
) -> (bool, Option<Arc<MountTable>>) {
    let mut overflow = false;
    let mut resynced = None;
    let fut = async {
        while !done(&h.table()) {
            match rx.recv().await {
                Some(MountEvent::Overflow) => overflow = true,
                Some(MountEvent::Resynced { table }) => resynced = Some(table),
                Some(_) => {}
                None => panic!("watcher stopped while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"));
    (overflow, resynced)
}

async fn detaching_17000_mounts_at_once_converges_to_the_exact_table(strategy: Strategy) {
    rds_testkit::require_private_namespaces();
    let _serial = SERIAL.lock().await;
    let mut cfg = WatcherConfig::new("/proc");
    cfg.strategy = strategy;
    let (h, mut rx) = spawn(cfg).expect("watcher starts");
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(MountEvent::Resynced { .. })) => {}
        other => panic!("expected the initial Resynced, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, holder) = (dir.path().join("src"), dir.path().join("holder"));
    let mut guard = Mounts(vec![src.clone(), holder.clone()]);
    tmpfs("overflow src", &src);
    tmpfs("overflow holder", &holder);
    let dev = dev_of(&src);
    let binds = tokio::task::spawn_blocking(move || {
        for i in 0..BINDS {
            let at = holder.join(format!("b{i}"));
            std::fs::create_dir(&at).expect("mkdir");
            mount(
                Some(&src),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind");
        }
    });
    binds.await.expect("binds created");
    until(&h, &mut rx, "all binds in the table", |t| {
        t.device_count(dev) == BINDS + 1
    })
    .await;

    umount2(&guard.0[1], MntFlags::MNT_DETACH).expect("lazy umount of the holder");
    guard.0.pop();
    let (overflow, mut resynced) = until(&h, &mut rx, "the detach of every bind", |t| {
        t.device_count(dev) == 1
    })
    .await;
    if strategy == Strategy::Fanotify && overflow {
        // The queue overflowed: a resync must follow it (the table is published just before
        // its Resynced is sent). Whether 17,001 detach events overflow the 16,384-event queue
        // depends on how much the reader drains while the kernel is still queueing them (on
        // two CPUs it reads concurrently), so either path may be the one taken; both must end
        // in the exact table.
        let fut = async {
            while resynced.is_none() {
                match rx.recv().await {
                    Some(MountEvent::Resynced { table }) => resynced = Some(table),
                    Some(_) => {}
                    None => panic!("watcher stopped before its Resynced"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, fut)
            .await
            .expect("a Resynced follows the Overflow");
    }
    eprintln!(
        "{strategy:?}: overflow {overflow}, resynced {}",
        resynced.is_some()
    );
    assert_same_as_fresh_read(&h.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanotify_overflow_resyncs_to_the_exact_table() {
    detaching_17000_mounts_at_once_converges_to_the_exact_table(Strategy::Fanotify).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liststat_converges_after_17000_detaches() {
    detaching_17000_mounts_at_once_converges_to_the_exact_table(Strategy::ListStat).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reread_converges_after_17000_detaches() {
    detaching_17000_mounts_at_once_converges_to_the_exact_table(Strategy::Reread).await
}
