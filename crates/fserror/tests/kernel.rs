//! Privileged tests: real ext4 on real loop devices in a private mount namespace, made to fail
//! for real, observed through a real fanotify group.

rds_testkit::private_namespaces!();

mod common;

use common::{await_error_for, failing_io, Ext4Loop};
use rds_fserror::{FsErrorError, FsErrorEvent, FsErrorWatcher};
use rds_types::DevNum;

fn assert_error_event(ev: &FsErrorEvent, dev: DevNum, fsid: rds_fserror::Fsid) {
    match ev {
        FsErrorEvent::Error {
            dev: d,
            fsid: f,
            errno,
            count,
            ..
        } => {
            assert_eq!(*d, dev, "event names the failing device");
            assert_eq!(*f, fsid, "event carries the fsid watch() returned");
            assert_ne!(*errno, 0, "a real errno is reported");
            assert!(*count >= 1, "at least one error counted, got {count}");
        }
        other => panic!("expected FsErrorEvent::Error for {dev}, got {other:?}"),
    }
}

/// Measured kernel behaviour the monitor must know: after `EXT4_IOC_SHUTDOWN` every operation
/// fails with EIO *before* ext4 looks at its aborted journal, so no `ext4_error` and no
/// `FAN_FS_ERROR` is ever raised; a shut-down filesystem shows only as `shutdown` in its super
/// options. Proven against a barrier: a second watched filesystem fails afterwards, and its
/// event must be the first one (kernel queue order).
#[tokio::test]
async fn shutdown_alone_raises_no_fs_error_event() {
    rds_testkit::require_private_namespaces();
    let shut = Ext4Loop::new();
    let barrier = Ext4Loop::new();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    handle
        .watch(&shut.mount_dir, shut.dev)
        .expect("watch the shut-down ext4");
    handle
        .watch(&barrier.mount_dir, barrier.dev)
        .expect("watch the barrier ext4");
    let mut shut_file = shut.open_file("data");
    let mut barrier_file = barrier.open_file("data");

    shut.shutdown(&shut_file);
    failing_io(&shut, &mut shut_file);
    barrier.kill_path();
    failing_io(&barrier, &mut barrier_file);

    let (_, before) = await_error_for(&mut rx, barrier.dev).await;
    assert!(
        before.is_empty(),
        "EXT4_IOC_SHUTDOWN was expected to raise no FAN_FS_ERROR on this kernel, got {before:?}"
    );
}

#[tokio::test]
async fn dead_path_reports_an_error_for_its_device() {
    rds_testkit::require_private_namespaces();
    let fs = Ext4Loop::new();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    let fsid = handle
        .watch(&fs.mount_dir, fs.dev)
        .expect("watch the mounted ext4");
    let mut file = fs.open_file("data");

    fs.kill_path();
    failing_io(&fs, &mut file);

    let (ev, _) = await_error_for(&mut rx, fs.dev).await;
    assert_error_event(&ev, fs.dev, fsid);
}

#[tokio::test]
async fn an_unwatched_filesystem_failing_produces_no_event() {
    rds_testkit::require_private_namespaces();
    let watched = Ext4Loop::new();
    let unwatched = Ext4Loop::new();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    handle
        .watch(&watched.mount_dir, watched.dev)
        .expect("watch");
    let mut unwatched_file = unwatched.open_file("data");
    let mut watched_file = watched.open_file("data");

    // The unwatched one fails first: had it produced an event, it would be queued first.
    unwatched.kill_path();
    failing_io(&unwatched, &mut unwatched_file);
    watched.kill_path();
    failing_io(&watched, &mut watched_file);

    let (_, before) = await_error_for(&mut rx, watched.dev).await;
    assert!(
        before.is_empty(),
        "no event expected before the watched device's error, got {before:?}"
    );
}

#[tokio::test]
async fn events_of_two_watched_filesystems_name_the_failing_one() {
    rds_testkit::require_private_namespaces();
    let a = Ext4Loop::new();
    let b = Ext4Loop::new();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    handle.watch(&a.mount_dir, a.dev).expect("watch a");
    let fsid_b = handle.watch(&b.mount_dir, b.dev).expect("watch b");
    let mut file = b.open_file("data");

    b.kill_path();
    failing_io(&b, &mut file);

    let (ev, before) = await_error_for(&mut rx, b.dev).await;
    assert_error_event(&ev, b.dev, fsid_b);
    assert!(
        before.is_empty(),
        "nothing about a expected, got {before:?}"
    );
}

#[tokio::test]
async fn a_new_superblock_on_the_same_device_has_a_new_fsid() {
    rds_testkit::require_private_namespaces();
    let mut fs = Ext4Loop::new();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    let first = handle
        .watch(&fs.mount_dir, fs.dev)
        .expect("watch first incarnation");
    fs.reformat();
    let second = handle
        .watch(&fs.mount_dir, fs.dev)
        .expect("watch second incarnation");
    assert_ne!(
        first, second,
        "a re-formatted ext4 on {} must have a new fsid",
        fs.dev
    );
    assert_eq!(
        handle.watched(fs.dev),
        vec![first, second],
        "both incarnations recorded"
    );

    let mut file = fs.open_file("data");
    fs.kill_path();
    failing_io(&fs, &mut file);

    let (ev, _) = await_error_for(&mut rx, fs.dev).await;
    assert_error_event(&ev, fs.dev, second);
}

#[tokio::test]
async fn unwatched_device_reports_nothing_and_its_mark_is_removed() {
    rds_testkit::require_private_namespaces();
    let gone = Ext4Loop::new();
    let kept = Ext4Loop::new();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    let fsid = handle.watch(&gone.mount_dir, gone.dev).expect("watch");
    handle.watch(&kept.mount_dir, kept.dev).expect("watch");
    let out = handle.unwatch(gone.dev).expect("unwatch");
    assert_eq!(
        out.removed,
        vec![fsid],
        "the mark is removed through the mount point"
    );
    assert!(out.left_to_kernel.is_empty());

    let mut gone_file = gone.open_file("data");
    let mut kept_file = kept.open_file("data");
    gone.kill_path();
    failing_io(&gone, &mut gone_file);
    kept.kill_path();
    failing_io(&kept, &mut kept_file);

    let (_, before) = await_error_for(&mut rx, kept.dev).await;
    assert!(
        before.is_empty(),
        "no event for the unwatched device expected, got {before:?}"
    );
}

#[tokio::test]
async fn unwatching_an_unknown_device_is_an_error() {
    rds_testkit::require_private_namespaces();
    let (handle, _rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    let err = handle
        .unwatch(DevNum::new(7, 999_999))
        .expect_err("nothing watched");
    assert!(matches!(err, FsErrorError::NotWatched { .. }), "{err:?}");
}

#[tokio::test]
async fn watching_with_the_wrong_device_is_refused() {
    rds_testkit::require_private_namespaces();
    let fs = Ext4Loop::new();
    let (handle, _rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    let wrong = DevNum::new(fs.dev.major, fs.dev.minor + 100_000);
    let err = handle
        .watch(&fs.mount_dir, wrong)
        .expect_err("device mismatch");
    assert!(
        matches!(err, FsErrorError::DeviceMismatch { found, .. } if found == fs.dev),
        "expected DeviceMismatch naming {}, got {err:?}",
        fs.dev
    );
}

#[tokio::test]
async fn watcher_stops_when_its_handle_is_dropped() {
    rds_testkit::require_private_namespaces();
    let (handle, mut rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    drop(handle);
    let end = tokio::time::timeout(common::DEADLINE, rx.recv())
        .await
        .expect("the receiver must see the channel close after the handle is dropped");
    assert_eq!(end, None, "no event, just the end of the stream");
}

#[tokio::test]
async fn unwatch_after_unmount_leaves_the_mark_to_the_kernel() {
    rds_testkit::require_private_namespaces();
    let mut fs = Ext4Loop::new();
    let (handle, _rx) = FsErrorWatcher::spawn(16).expect("spawn watcher");
    let fsid = handle.watch(&fs.mount_dir, fs.dev).expect("watch");
    fs.unmount();
    let out = handle.unwatch(fs.dev).expect("unwatch");
    assert_eq!(
        out.left_to_kernel,
        vec![fsid],
        "the mount point no longer leads to the watched superblock"
    );
    assert!(out.removed.is_empty(), "{out:?}");
    assert!(handle.watched(fs.dev).is_empty(), "the device is forgotten");
}
