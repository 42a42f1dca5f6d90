//! Real kernel uevents of loop devices reach the model with the right number and diskseq.
//! Privileged: runs in private mount and network namespaces.

rds_testkit::private_namespaces!();

use std::path::Path;

use rds_devices::{spawn, DeviceEvent, SourceKind, WatcherConfig};
use rds_testkit::devices::{expect_event, skip_replay};
use rds_testkit::loopdev::LoopDev;
use rds_types::{DevNum, DiskSeq};

fn sysfs_diskseq(name: &str) -> DiskSeq {
    let s = std::fs::read_to_string(format!("/sys/block/{name}/diskseq"))
        .unwrap_or_else(|e| panic!("reading {name}'s diskseq: {e}"));
    DiskSeq(s.trim().parse().expect("numeric diskseq"))
}

#[tokio::test]
async fn loop_lifecycle_is_seen_with_its_device_number_and_every_new_diskseq() {
    rds_testkit::require_private_namespaces();
    let run = tempfile::tempdir().unwrap();
    let cfg = WatcherConfig::new("/sys", run.path()).with_sources(SourceKind::Kernel);
    let (handle, mut rx) = spawn(cfg).expect("watcher starts");
    skip_replay(&mut rx).await;

    let dev_root = Path::new("/dev");
    let backing = tempfile::NamedTempFile::new().unwrap();
    backing.as_file().set_len(1 << 20).unwrap();
    let mut lo = LoopDev::add(dev_root, 300).expect("LOOP_CTL_ADD");
    let name = lo.name();
    let dev = DevNum::new(7, lo.num);

    // add
    let ev = expect_event(
        &mut rx,
        "BlockAdded for the new loop device",
        |e| matches!(e, DeviceEvent::BlockAdded(b) if b.name == name),
    )
    .await;
    let DeviceEvent::BlockAdded(added) = ev else {
        unreachable!()
    };
    assert_eq!(added.identity.dev, dev, "loop devices are major 7");
    assert_eq!(added.identity.diskseq, Some(sysfs_diskseq(&name)));
    assert_eq!(
        handle.block(dev).map(|b| b.name),
        Some(name.clone()),
        "the resolver knows the device by number"
    );

    // configure: a new diskseq is a new device (removed, then added)
    lo.configure(dev_root, backing.path())
        .expect("LOOP_CONFIGURE");
    let seq_attached = sysfs_diskseq(&name);
    let ev = expect_event(
        &mut rx,
        "re-add of the attached loop device",
        |e| matches!(e, DeviceEvent::BlockAdded(b) if b.name == name),
    )
    .await;
    let DeviceEvent::BlockAdded(attached) = ev else {
        unreachable!()
    };
    assert_eq!(attached.identity.diskseq, Some(seq_attached));
    assert_ne!(attached.identity.diskseq, added.identity.diskseq);

    // detach: the kernel bumps diskseq again; wait until the model has caught up
    lo.detach().expect("LOOP_CLR_FD");
    let seq_detached = sysfs_diskseq(&name);
    handle
        .wait_until(rds_testkit::devices::DEADLINE, |m| {
            m.block(dev)
                .filter(|b| b.identity.diskseq == Some(seq_detached))
                .map(|_| ())
        })
        .await
        .unwrap_or_else(|_| panic!("model should reach diskseq {seq_detached} after detach"));

    // remove
    lo.remove().expect("LOOP_CTL_REMOVE");
    expect_event(&mut rx, "BlockRemoved of the detached incarnation", |e| {
        matches!(e, DeviceEvent::BlockRemoved(b)
            if b.name == name && b.identity.diskseq == Some(seq_detached))
    })
    .await;
    assert!(
        handle.block_by_name(&name).is_none(),
        "a removed loop device is gone from the model"
    );
}

#[tokio::test]
async fn start_up_scan_of_real_sysfs_lists_existing_loop_devices() {
    rds_testkit::require_private_namespaces();
    let mut lo = LoopDev::add(Path::new("/dev"), 340).expect("LOOP_CTL_ADD");
    let backing = tempfile::NamedTempFile::new().unwrap();
    backing.as_file().set_len(1 << 20).unwrap();
    lo.configure(Path::new("/dev"), backing.path())
        .expect("LOOP_CONFIGURE");
    let name = lo.name();
    let run = tempfile::tempdir().unwrap();
    let (handle, mut rx) =
        spawn(WatcherConfig::new("/sys", run.path()).with_sources(SourceKind::Kernel)).unwrap();
    expect_event(
        &mut rx,
        "the loop device in the start-up replay",
        |e| matches!(e, DeviceEvent::BlockAdded(b) if b.name == name),
    )
    .await;
    let b = handle.block_by_name(&name).expect("scanned");
    assert_eq!(b.identity.dev, DevNum::new(7, lo.num));
    assert_eq!(b.identity.diskseq, Some(sysfs_diskseq(&name)));
    assert_eq!(
        b.size_sectors,
        Some(2048),
        "1 MiB backing file = 2048 sectors"
    );
    drop(lo);
}

/// The watcher's task dropped with its runtime (as when the plugin's notification thread
/// stops): a handle that outlives it says so, and a waiter gets `Stopped` at once rather than
/// sitting out its deadline.
#[test]
fn a_watcher_dropped_with_its_runtime_reports_stopped_to_its_handles() {
    rds_testkit::require_private_namespaces();
    let run = tempfile::tempdir().unwrap();
    let (rt, handle, rx) = rds_testkit::devices::spawn_on_own_runtime(
        WatcherConfig::new("/sys", run.path()).with_sources(SourceKind::Kernel),
    );
    // Let the task start its loop.
    rt.block_on(async { tokio::task::yield_now().await });
    assert!(handle.is_running());
    drop(rt);
    drop(rx);
    assert!(!handle.is_running(), "the handle still says running");
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A waiter that is not told sits out the deadline and gets `Err(false)`.
    let r = waiter.block_on(handle.wait_until(std::time::Duration::from_secs(60), |_| None::<()>));
    assert_eq!(r, Err(true), "the waiter is told the watcher stopped");
}
