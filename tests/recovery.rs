//! The recovery executor on the emulated fabric: volumes staged and published over the real
//! CSI socket, the device replaced underneath (new loop device, new `major:minor`/`diskseq`),
//! then `Recovery::recover` called directly, as the monitor task will.

rds_testkit::private_namespaces!();

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_agent::recovery::{Recovery, RecoveryConfig, RecoveryError, RecoveryKind};
use rds_harness::harness::*;
use rds_hostops::inuse::Holder;
use rds_node::csi;
use rds_node::validate::VolumeId;
use rds_types::DevNum;

mod common;
use common::*;

const PAYLOAD: &[u8] = b"written before the device was replaced";

/// What the recovery tests need beyond the shared test plugin.
trait RecoveryEnv {
    fn recovery(&self, unmount_wait: Duration, guard_wait: Duration) -> Recovery;
    fn temp_mount_point(&self, vol: &str) -> PathBuf;
    fn recorded(&self, vol: &str) -> Option<rds_types::BlockIdentity>;
    async fn publish_at(&mut self, vol: &str, pod: &str, cap: csi::VolumeCapability) -> PathBuf;
    async fn staged_ext4(&mut self, vol: &str) -> (PathBuf, PathBuf);
}

impl RecoveryEnv for Env {
    fn recovery(&self, unmount_wait: Duration, guard_wait: Duration) -> Recovery {
        Recovery::new(
            self.plugin.running.service.clone(),
            RecoveryConfig {
                guard_wait,
                unmount_wait,
                mount: Duration::from_secs(30),
                work_dir: self.plugin.layout().state.join("recovery"),
            },
        )
    }
    fn temp_mount_point(&self, vol: &str) -> PathBuf {
        self.plugin.layout().state.join("recovery").join(vol)
    }
    fn recorded(&self, vol: &str) -> Option<rds_types::BlockIdentity> {
        self.plugin
            .running
            .service
            .volumes()
            .get(&id(vol))
            .and_then(|r| r.device.identity())
    }
    /// Publish read-write in `pod`; returns the target.
    async fn publish_at(&mut self, vol: &str, pod: &str, cap: csi::VolumeCapability) -> PathBuf {
        self.publish(vol, pod, cap, false).await.expect("publish");
        self.plugin.target_path(pod, vol)
    }
    /// Stage + publish an ext4 volume and write a file through the target, synced to the
    /// backing file.
    async fn staged_ext4(&mut self, vol: &str) -> (PathBuf, PathBuf) {
        self.target(vol, SIZE);
        self.stage(vol, ext4()).await.expect("stage");
        let target = self.publish_at(vol, "pod-a", ext4()).await;
        let mut f = std::fs::File::create(target.join("data.txt")).expect("create data file");
        f.write_all(PAYLOAD).expect("write data");
        f.sync_all().expect("fsync data");
        syncfs(&target);
        (self.plugin.staging_path(vol), target)
    }
}

fn syncfs(path: &Path) {
    let d = std::fs::File::open(path).expect("open for syncfs");
    // SAFETY: a valid open fd.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) };
    assert_eq!(rc, 0, "syncfs {}", path.display());
}

fn id(vol: &str) -> VolumeId {
    VolumeId::parse(vol).expect("volume id")
}

/// The visible mount at `path`: (mountinfo id, device).
fn mount_key(path: &Path) -> Option<(u32, DevNum)> {
    top(path).map(|m| (m.id, m.dev))
}

/// Recover a replaced ext4 volume and check every promise of a successful recovery.
async fn recovers_onto_the_replacement(same_name: bool) {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = if same_name {
        "pvc-rec-same"
    } else {
        "pvc-rec-renamed"
    };
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let (old_name, old_dev, old_seq) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    assert_eq!(
        mount_key(&staging).map(|m| m.1),
        Some(old_dev),
        "staged on the old device"
    );

    if same_name {
        reconnect(&e.plugin.fabric, &nqn, false);
    } else {
        reconnect(&e.plugin.fabric, &nqn, true);
    }
    let (new_name, new_dev, new_seq) = e.plugin.fabric.namespace_of(&nqn).expect("reconnected");
    assert_ne!(
        new_dev, old_dev,
        "the emulated reconnect gives a new number"
    );
    assert_ne!(new_seq, old_seq, "and a new diskseq");
    assert_eq!(
        new_name == old_name,
        same_name,
        "name kept only by reconnect_same_name"
    );

    let out = e
        .recovery(Duration::from_secs(2), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .unwrap_or_else(|err| panic!("recovery onto {new_dev} should succeed: {err}"));

    assert_eq!(out.new_device.dev, new_dev, "outcome names the new device");
    assert_eq!(out.new_device.diskseq, Some(new_seq));
    let staged = mount_key(&staging).expect("staging path mounted after recovery");
    assert_eq!(staged.1, new_dev, "staging mount is on the new device");
    assert_eq!(
        out.new_mount,
        Some(staged),
        "outcome reports the staging mount"
    );
    let bound = mount_key(&target).expect("target mounted after recovery");
    assert_eq!(bound.1, new_dev, "target re-bound to the new device");
    assert_eq!(out.republished, vec![(target.clone(), Some(bound))]);
    assert!(
        out.stranded.is_empty(),
        "nothing stranded: {:?}",
        out.stranded
    );
    assert_eq!(
        std::fs::read(target.join("data.txt")).expect("read through the new bind"),
        PAYLOAD,
        "data written before the reconnect is readable through the new bind"
    );
    std::fs::write(target.join("after.txt"), b"new").expect("the new bind is writable");
    let rec = e.recorded(vol).expect("still recorded");
    assert_eq!(rec.dev, new_dev, "record carries the new number");
    assert_eq!(rec.diskseq, Some(new_seq), "record carries the new diskseq");
    assert_eq!(
        mount_key(&e.temp_mount_point(vol)),
        None,
        "no temporary mount left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_under_a_new_name_is_recovered_onto_the_new_device() {
    recovers_onto_the_replacement(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_under_the_same_name_with_a_new_diskseq_is_recovered() {
    recovers_onto_the_replacement(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_refused_while_the_stale_staging_mount_is_held_and_succeeds_after() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-held";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let (_, old_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    let target_before = mount_key(&target).expect("published");
    reconnect(&e.plugin.fabric, &nqn, true);
    let (_, new_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("reconnected");
    let rec = e.recovery(Duration::from_millis(300), Duration::from_secs(30));

    // This process holds a file open on the stale staging mount: it is a holder.
    let holder = std::fs::File::open(staging.join("data.txt")).expect("open on staging");
    let err = rec
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .expect_err("recovery must refuse while the stale staging mount is in use");
    let me = std::process::id();
    match &err {
        RecoveryError::InUse { holders, .. } => assert!(
            holders
                .iter()
                .any(|h| matches!(h, Holder::Process { pid, .. } if *pid == me)),
            "holders name this process ({me}): {holders:?}"
        ),
        other => panic!("expected InUse, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("process {me}")) && msg.contains("left mounted"),
        "message names the holder and the state: {msg}"
    );
    assert_eq!(
        mount_key(&staging).map(|m| m.1),
        Some(old_dev),
        "stale staging mount still in place"
    );
    assert_eq!(mount_key(&target), Some(target_before), "publish untouched");
    assert_eq!(
        mount_key(&e.temp_mount_point(vol)),
        None,
        "temporary mount undone"
    );
    assert_eq!(
        e.recorded(vol).map(|i| i.dev),
        Some(old_dev),
        "record untouched"
    );

    drop(holder);
    let out = rec
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .unwrap_or_else(|err| panic!("recovery succeeds once the holder is gone: {err}"));
    assert_eq!(mount_key(&staging).map(|m| m.1), Some(new_dev));
    assert_eq!(mount_key(&target).map(|m| m.1), Some(new_dev));
    assert!(out.stranded.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_holding_a_stale_bind_is_reported_stranded_not_detached() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-stranded";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let (_, old_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    reconnect(&e.plugin.fabric, &nqn, true);
    let (_, new_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("reconnected");

    // The "pod" keeps a file open through its bind of the old filesystem.
    let pod = std::fs::File::open(target.join("data.txt")).expect("open through the target");
    let out = e
        .recovery(Duration::from_millis(300), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .unwrap_or_else(|err| panic!("staging recovery succeeds: {err}"));
    assert_eq!(
        mount_key(&staging).map(|m| m.1),
        Some(new_dev),
        "staging healed"
    );
    assert_eq!(
        out.stranded,
        vec![target.clone()],
        "the held target is stranded"
    );
    assert_eq!(out.republished, vec![(target.clone(), None)]);
    assert_eq!(
        mount_key(&target).map(|m| m.1),
        Some(old_dev),
        "the pod's bind of the old filesystem was not detached under it"
    );
    drop(pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_waits_for_the_guard_and_touches_nothing_once_unstaged() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-race";
    let nqn = nqn_for(vol);
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.expect("stage");
    let staging = e.plugin.staging_path(vol);
    reconnect(&e.plugin.fabric, &nqn, true);
    let svc = e.plugin.running.service.clone();

    // A CSI call holds the guard: a recovery with a short wait gives up, touching nothing.
    let held = svc
        .guards()
        .try_acquire(vol, "NodeUnstageVolume")
        .expect("guard");
    let err = e
        .recovery(Duration::from_secs(2), Duration::from_millis(50))
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .expect_err("recovery must not bypass a held guard");
    assert!(
        matches!(err, RecoveryError::Busy { .. }),
        "expected Busy, got {err}"
    );

    // A patient recovery queues behind the unstage, which meanwhile does its work.
    let rec = e.recovery(Duration::from_secs(2), Duration::from_secs(60));
    let waiting = tokio::spawn(async move {
        rec.recover(&id("pvc-rec-race"), RecoveryKind::DeviceReplaced)
            .await
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiting.is_finished(),
        "recovery must wait while the unstage holds the guard"
    );
    // What NodeUnstageVolume does under its guard: unmount the staging path, drop the record.
    rds_testkit::umount_as_admin(&staging).expect("unmount staging");
    svc.volumes().remove(&id(vol)).expect("remove the record");
    drop(held);

    let err = waiting
        .await
        .expect("recovery task")
        .expect_err("the volume was unstaged meanwhile");
    assert!(
        matches!(err, RecoveryError::NotStaged { .. }),
        "expected NotStaged, got {err}"
    );
    assert_eq!(
        mount_key(&staging),
        None,
        "nothing mounted at the staging path"
    );
    assert!(
        !e.temp_mount_point(vol).exists(),
        "no temporary mount point created"
    );
    assert!(e.recorded(vol).is_none(), "no record re-created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_volume_target_node_is_recreated_with_the_new_number() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-block";
    let nqn = nqn_for(vol);
    e.target(vol, SIZE);
    e.stage(vol, block_capability()).await.expect("stage");
    let target = e.publish_at(vol, "pod-blk", block_capability()).await;
    let (_, old_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    let rdev = |p: &Path| {
        let md = std::fs::symlink_metadata(p).expect("target node");
        assert!(md.file_type().is_block_device(), "target is a block node");
        DevNum::from_dev_t(md.rdev())
    };
    assert_eq!(rdev(&target), old_dev);
    reconnect(&e.plugin.fabric, &nqn, true);
    let (_, new_dev, new_seq) = e.plugin.fabric.namespace_of(&nqn).expect("reconnected");

    let out = e
        .recovery(Duration::from_secs(2), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .unwrap_or_else(|err| panic!("block recovery succeeds: {err}"));
    assert_eq!(rdev(&target), new_dev, "target node carries the new number");
    assert_eq!(out.renoded, vec![target.clone()]);
    assert_eq!(out.new_mount, None, "block volumes have no staging mount");
    assert_eq!(e.recorded(vol).map(|i| i.dev), Some(new_dev));
    assert_eq!(e.recorded(vol).and_then(|i| i.diskseq), Some(new_seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_does_not_come_back_fails_cleanly_leaving_the_staging_mount() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-gone";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let backing = e.plugin.layout().backing;
    let (_, old_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    let staged_before = mount_key(&staging).expect("staged");
    let target_before = mount_key(&target).expect("published");

    // ctrl_loss_tmo expired and the target cannot be reached again (its backing is gone).
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("lose controller");
    e.plugin
        .running
        .devices
        .wait_until(Duration::from_secs(20), |m| {
            m.resolve(nqn.as_str(), None).is_none().then_some(())
        })
        .await
        .expect("the watcher sees the namespace go");
    for f in std::fs::read_dir(&backing).expect("backing dir") {
        std::fs::remove_file(f.expect("entry").path()).expect("remove backing file");
    }

    let err = e
        .recovery(Duration::from_secs(2), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .expect_err("no device to recover onto");
    assert!(
        matches!(err, RecoveryError::Connect { .. }),
        "expected Connect, got {err}"
    );
    assert!(
        err.to_string().contains("left as they were"),
        "message states the volume's state: {err}"
    );
    assert_eq!(
        mount_key(&staging),
        Some(staged_before),
        "the staging path is still mounted (on the old device {old_dev})"
    );
    assert_eq!(mount_key(&target), Some(target_before), "publish untouched");
    assert_eq!(e.recorded(vol).map(|i| i.dev), Some(old_dev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_without_the_filesystem_is_never_formatted_and_changes_nothing() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-blank";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let backing = e.plugin.layout().backing;
    let (_, old_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    let staged_before = mount_key(&staging).expect("staged");
    let target_before = mount_key(&target).expect("published");
    reconnect(&e.plugin.fabric, &nqn, true);
    // The target lost the filesystem: its first 64 KiB (ext4 superblock included) read zero.
    let file = backing.join(format!("{nqn}.img"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("open backing");
        f.write_all_at(&[0u8; 65536], 0).expect("wipe superblock");
        f.sync_all().expect("sync backing");
    }

    let err = e
        .recovery(Duration::from_secs(2), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::DeviceReplaced)
        .await
        .expect_err("nothing to mount on the replacement");
    assert!(
        matches!(err, RecoveryError::NewFilesystem { .. }),
        "expected NewFilesystem, got {err}"
    );
    assert!(
        err.to_string().contains("never formats"),
        "message says no format happened: {err}"
    );
    let mut head = vec![0u8; 65536];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&file)
            .expect("open backing")
            .read_exact_at(&mut head, 0)
            .expect("read backing");
    }
    assert!(
        head.iter().all(|b| *b == 0),
        "the replacement device was not formatted"
    );
    assert_eq!(
        mount_key(&staging),
        Some(staged_before),
        "stale staging left in place (device {old_dev})"
    );
    assert_eq!(mount_key(&target), Some(target_before), "publish untouched");
    assert_eq!(
        mount_key(&e.temp_mount_point(vol)),
        None,
        "no temporary mount left"
    );
    assert_eq!(
        e.recorded(vol).map(|i| i.dev),
        Some(old_dev),
        "record untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_filesystem_on_an_unreplaced_device_is_refused_touching_nothing() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-samedev";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let staged_before = mount_key(&staging).expect("staged");
    let target_before = mount_key(&target).expect("published");
    e.plugin.fabric.kill_path(&nqn).expect("kill path");

    let err = e
        .recovery(Duration::from_secs(2), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::FilesystemFailed)
        .await
        .expect_err("the same device would give back the same dead superblock");
    assert!(
        matches!(err, RecoveryError::DeviceUnchanged { .. }),
        "expected DeviceUnchanged, got {err}"
    );
    assert_eq!(
        mount_key(&staging),
        Some(staged_before),
        "staging untouched"
    );
    assert_eq!(mount_key(&target), Some(target_before), "publish untouched");
    assert_eq!(
        mount_key(&e.temp_mount_point(vol)),
        None,
        "no temporary mount"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_dropped_midway_leaves_a_consistent_volume() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-abort";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let (_, old_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    reconnect(&e.plugin.fabric, &nqn, true);
    let (_, new_dev, _) = e.plugin.fabric.namespace_of(&nqn).expect("reconnected");

    let rec = e.recovery(Duration::from_secs(2), Duration::from_secs(30));
    let task = tokio::spawn(async move {
        rec.recover(&id("pvc-rec-abort"), RecoveryKind::DeviceReplaced)
            .await
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    task.abort();
    let _ = task.await;

    // Wherever the abort landed, once the guard is free the volume is whole: the staging
    // path is mounted, on the device its record names, and no temporary mount is left.
    let _g = e
        .plugin
        .running
        .service
        .guards()
        .acquire(vol, "test", Duration::from_secs(60))
        .await
        .expect("the guard comes back once the host steps end");
    let staged = mount_key(&staging).map(|m| m.1);
    assert!(
        staged == Some(old_dev) || staged == Some(new_dev),
        "staging path mounted on the old or the new device, found {staged:?}"
    );
    assert_eq!(
        staged,
        e.recorded(vol).map(|i| i.dev),
        "record matches the staging mount"
    );
    assert_eq!(
        mount_key(&e.temp_mount_point(vol)),
        None,
        "no temporary mount left"
    );
    assert!(
        mount_key(&target).is_some(),
        "the publish target is still mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_staging_mount_is_mounted_again_from_the_same_device() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-rec-missing";
    let nqn = nqn_for(vol);
    let (staging, target) = e.staged_ext4(vol).await;
    let (_, dev, seq) = e.plugin.fabric.namespace_of(&nqn).expect("connected");
    let target_before = mount_key(&target).expect("published");
    rds_testkit::umount_as_admin(&staging).expect("staging goes away");
    assert_eq!(mount_key(&staging), None);

    let out = e
        .recovery(Duration::from_secs(2), Duration::from_secs(30))
        .recover(&id(vol), RecoveryKind::MountMissing)
        .await
        .unwrap_or_else(|err| panic!("the staging mount comes back: {err}"));
    let staged = mount_key(&staging).expect("staging mounted again");
    assert_eq!(staged.1, dev, "from the same device");
    assert_eq!(out.new_mount, Some(staged));
    assert_eq!(
        out.republished,
        vec![(target.clone(), Some(target_before))],
        "the healthy bind of the same device is kept as it was"
    );
    assert_eq!(
        std::fs::read(staging.join("data.txt")).expect("read through the staging path"),
        PAYLOAD
    );
    let rec = e.recorded(vol).expect("recorded");
    assert_eq!((rec.dev, rec.diskseq), (dev, Some(seq)), "record unchanged");
    // Kubelet can publish again from the restored staging path.
    let second = e.publish_at(vol, "pod-b", ext4()).await;
    assert_eq!(mount_key(&second).map(|m| m.1), Some(dev));
}
