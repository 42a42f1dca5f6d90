//! The monitor end to end: real loop devices, real mounts and real (kernel and injected udev)
//! events through the emulated fabric; conditions read back as kubelet reads them, through
//! NodeGetVolumeStats over the socket, and Kubernetes Events as the plugin would post them.

rds_testkit::private_namespaces!();

use std::sync::Arc;

use rds_harness::harness::*;
use rds_types::{Health as Condition, VolumeId};

mod common;
use common::*;

fn kind_is(kind: &'static str) -> impl Fn(&Condition) -> bool {
    move |c: &Condition| c.kind.as_str() == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_that_renames_the_device_is_flagged_device_replaced() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-renamed";
    e.stage_and_publish(vol).await;
    let (old, _, _) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    reconnect(&e.plugin.fabric, &nqn_for(vol), true);
    let (new, _, _) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    assert_ne!(old, new, "the emulated reconnect renames the namespace");
    let c = e
        .wait(vol, kind_is("device_replaced"))
        .await
        .expect("DeviceReplaced");
    assert!(
        !c.io_safe(),
        "a replaced device's old mount is never statvfs'd"
    );
    let (cond, usage) = e.stats_condition(vol).await;
    assert!(
        cond.abnormal,
        "NodeGetVolumeStats reports the condition: {}",
        cond.message
    );
    assert!(cond.message.contains("device_replaced"), "{}", cond.message);
    // Kubelet drops a reply without usage: the stale mount is not measured, the last
    // figures are answered and the condition says so.
    assert_eq!(usage, 2, "bytes and inodes, always");
    assert!(cond.message.contains("not current"), "{}", cond.message);
    e.plugin
        .events
        .wait_for(WAIT, |ev| {
            ev.volume_id == vol && ev.reason == rds_events::EventReason::StaleMountDetected
        })
        .await
        .expect("a StaleMountDetected event is posted on the volume");
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_that_reuses_the_name_with_a_new_diskseq_is_flagged_device_replaced() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-samename";
    e.stage_and_publish(vol).await;
    let (old_name, _, old_seq) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    reconnect(&e.plugin.fabric, &nqn_for(vol), false);
    let (new_name, _, new_seq) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    assert_eq!(old_name, new_name, "same name");
    assert_ne!(old_seq, new_seq, "new diskseq");
    e.wait(vol, kind_is("device_replaced"))
        .await
        .expect("DeviceReplaced despite the same name");
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_goes_and_does_not_come_back_is_flagged_device_gone() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-gone";
    e.stage_and_publish(vol).await;
    e.plugin
        .fabric
        .lose_controller(&nqn_for(vol))
        .expect("controller loss");
    let c = e
        .wait(vol, kind_is("device_gone"))
        .await
        .expect("DeviceGone after the grace");
    assert!(!c.io_safe());
    let (cond, _) = e.stats_condition(vol).await;
    assert!(
        cond.abnormal && cond.message.contains("device_gone"),
        "{}",
        cond.message
    );
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_mount_removed_behind_our_back_is_flagged_mount_missing() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-unmounted";
    e.stage_and_publish(vol).await;
    rds_testkit::umount_as_admin(&e.plugin.staging_path(vol))
        .expect("someone unmounts the staging path");
    e.wait(vol, kind_is("mount_missing"))
        .await
        .expect("MountMissing");
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bind_mounts_of_the_volume_is_flagged_and_clears() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-storm";
    e.stage_and_publish(vol).await;
    let staging = e.plugin.staging_path(vol);
    let base = e.root.join("storm");
    let mut made = Vec::new();
    for i in 0..150 {
        let d = base.join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        nix::mount::mount(
            Some(&staging),
            &d,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        made.push(d);
    }
    let c = e
        .wait(vol, kind_is("mount_storm"))
        .await
        .expect("MountStorm");
    assert!(
        c.message.contains("7:") && c.message.contains("awk"),
        "the message names the device and how to inspect it: {}",
        c.message
    );
    for d in &made {
        nix::mount::umount(d).unwrap();
    }
    e.wait(vol, |c| !c.abnormal())
        .await
        .expect("healthy once the storm is gone");
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_stale_mounts_are_found_in_the_first_reconcile() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-restart";
    e.stage_and_publish(vol).await;
    let root = e.root.clone();
    let fabric = e.plugin.stop().await.expect("plugin stops");
    // While the plugin is down, the target restarts and the namespace comes back elsewhere.
    reconnect(&fabric, &nqn_for(vol), true);
    let plugin = Plugin::start(&root, Some(fabric))
        .await
        .expect("plugin restarts");
    plugin.running.readiness.wait().await;
    let c = plugin
        .running
        .monitor
        .volume_condition(&VolumeId::parse(vol).unwrap())
        .expect("the volume was re-adopted");
    assert!(
        c.kind == rds_types::ConditionKind::DeviceReplaced,
        "decided within the first scan: {c:?}"
    );
    plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_affects_neither_the_monitor_nor_csi_calls() {
    let _s = SERIAL.lock().await;
    // A Kubernetes client pointed at a closed port.
    let cfg = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(cfg).expect("client");
    let (sink, _task) =
        rds_events::KubeSink::spawn(client, rds_events::KubeSinkConfig::new(NODE_ID.to_owned()));
    let stats = sink.stats();
    let mut e = Env::start_with(Options {
        events: Some(Arc::new(sink)),
        ..Options::default()
    })
    .await;
    let vol = "pvc-noapi";
    e.stage_and_publish(vol).await;
    reconnect(&e.plugin.fabric, &nqn_for(vol), true);
    e.wait(vol, kind_is("device_replaced"))
        .await
        .expect("detection does not wait for the API server");
    let (cond, _) = e.stats_condition(vol).await;
    assert!(cond.abnormal);
    // The event was attempted and failed (or is still queued), never blocking anything.
    assert_eq!(
        stats.posted(),
        0,
        "nothing can have been posted to a closed port"
    );
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_path_is_flagged_filesystem_failed_from_the_kernels_fs_error() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-deadpath";
    e.stage_and_publish(vol).await;
    let target = e.plugin.target_path("pod", vol);
    std::fs::write(target.join("before.txt"), b"x").unwrap();
    // The target's backing goes away: capacity 0, every IO fails with EIO.
    e.plugin
        .fabric
        .kill_path(&nqn_for(vol))
        .expect("kill the path");
    // What a pod would do: write, fsync (EIO), then more metadata work. ext4 aborts its
    // journal and reports the error, which fanotify delivers as FAN_FS_ERROR.
    let t2 = target.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(t2.join("after.txt"))
        {
            let _ = f.write_all(&[1u8; 8192]);
            let _ = f.sync_all();
        }
        if let Ok(f) = std::fs::File::open(&t2) {
            // SAFETY: syncfs on a valid fd.
            unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        }
        let _ = std::fs::File::create(t2.join("after-sync.txt"));
    })
    .await
    .unwrap();
    let c = e
        .wait(vol, kind_is("filesystem_failed"))
        .await
        .expect("FilesystemFailed");
    assert!(!c.io_safe(), "statvfs is skipped on a failed filesystem");
    let (cond, usage) = e.stats_condition(vol).await;
    assert!(
        cond.abnormal && cond.message.contains("filesystem_failed"),
        "{}",
        cond.message
    );
    assert_eq!(usage, 2, "usage is always answered");
    assert!(cond.message.contains("not current"), "{}", cond.message);
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_device_is_recovered_automatically_and_running_pods_are_told_the_truth() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-autoheal";
    e.stage_and_publish(vol).await;
    let target = e.plugin.target_path("pod", vol);
    std::fs::write(target.join("kept.txt"), b"survives the reconnect").unwrap();
    // A second pod that runs nothing on the volume right now.
    e.publish(vol, "idle", ext4(), false)
        .await
        .expect("publish idle");
    // Flush so the data is on the backing file before the emulated target restarts.
    nix::unistd::sync();
    // The running pod: a process with its working directory open on the volume, as a
    // container holds its mount.
    let running = std::fs::File::open(&target).unwrap();
    reconnect(&e.plugin.fabric, &nqn_for(vol), true);
    let (_, new_dev, _) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    e.wait(vol, kind_is("device_replaced"))
        .await
        .expect("flagged first");
    // The monitor asks for recovery (after its 1 s debounce) and the executor heals the
    // staging path onto the new device.
    e.wait(vol, |c| !c.abnormal())
        .await
        .expect("the staging path is healed");
    let staging = e.plugin.staging_path(vol);
    let top = top(&staging).expect("staging mounted");
    assert_eq!(top.dev, new_dev, "the staging mount is on the new device");
    assert_eq!(
        std::fs::read(staging.join("kept.txt")).unwrap(),
        b"survives the reconnect"
    );
    // The pod's own publish: a running container keeps the dead filesystem; the condition
    // at its target says so until the pod is recreated.
    let (cond, _) = e.stats_condition(vol).await;
    assert!(
        cond.abnormal,
        "the running pod's target stays abnormal: {}",
        cond.message
    );
    let ev = e
        .plugin
        .events
        .wait_for(WAIT, |ev| {
            ev.volume_id == vol && ev.note.contains("recreat")
        })
        .await
        .expect("an event tells the user to recreate the pod");
    assert_eq!(ev.type_, rds_events::EventType::Warning, "{ev:?}");
    // Nothing held the idle pod's bind: it was re-bound onto the healed mount and is true
    // as healthy, with the data.
    let idle = e.plugin.target_path("idle", vol);
    let c = e
        .wait_at(vol, &idle, |c| !c.abnormal())
        .await
        .expect("the idle pod's target is re-bound and healthy");
    assert_eq!(
        std::fs::read(idle.join("kept.txt")).unwrap(),
        b"survives the reconnect",
        "{}",
        c.message
    );
    assert_eq!(common::top(&idle).expect("idle bound").dev, new_dev);
    // The pod is recreated: unpublish + publish binds the healed mount.
    drop(running);
    e.unpublish(vol, "pod").await.expect("unpublish");
    e.publish(vol, "pod", ext4(), false)
        .await
        .expect("republish");
    assert_eq!(
        std::fs::read(target.join("kept.txt")).unwrap(),
        b"survives the reconnect"
    );
    let (cond, usage) = e.stats_condition(vol).await;
    assert!(
        !cond.abnormal,
        "healthy after the pod is recreated: {}",
        cond.message
    );
    assert!(usage > 0, "usage measured again");
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_a_stale_volume_waits_for_its_recovery() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-stalepub";
    e.stage_and_publish(vol).await;
    nix::unistd::sync();
    reconnect(&e.plugin.fabric, &nqn_for(vol), true);
    let (_, new_dev, _) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    e.wait(vol, kind_is("device_replaced"))
        .await
        .expect("flagged");
    // A new pod arrives while the volume is stale: the publish waits for the recovery and
    // binds the healed mount, never the dead one.
    e.publish(vol, "pod-new", ext4(), false)
        .await
        .expect("publish after recovery");
    let t = e.plugin.target_path("pod-new", vol);
    let top = top(&t).expect("target mounted");
    assert_eq!(top.dev, new_dev, "the new pod gets the healed device");
    e.plugin.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_adopted_mounts_are_watched_like_fresh_ones() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-readopt";
    e.stage_and_publish(vol).await;
    let root = e.root.clone();
    let fabric = e.plugin.stop().await.expect("plugin stops");
    let plugin = Plugin::start(&root, Some(fabric))
        .await
        .expect("plugin restarts");
    let healthy = plugin
        .running
        .monitor
        .volume_condition(&VolumeId::parse(vol).unwrap())
        .expect("re-adopted");
    assert!(
        !healthy.abnormal(),
        "nothing changed while it was down: {healthy:?}"
    );
    // The re-adopted staging mount is known by its identity: its disappearance is noticed.
    rds_testkit::umount_as_admin(&plugin.staging_path(vol))
        .expect("someone unmounts the staging path");
    plugin
        .running
        .monitor
        .wait_for(
            &VolumeId::parse(vol).unwrap(),
            None,
            WAIT,
            kind_is("mount_missing"),
        )
        .await
        .expect("MountMissing for an adopted volume");
    plugin.stop().await.unwrap();
}

/// A device whose I/O hangs, for real: the volume's image lives on a FUSE filesystem that stops
/// answering, so the loop device behind the namespace has requests in flight and none
/// completes, while nothing in sysfs changes. NodeGetVolumeStats says `io_stalled` (abnormal,
/// with usage, without blocking on the device) after the stall period, and healthy again once
/// the requests complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_io_hangs_is_io_stalled_until_its_requests_complete() {
    let _s = SERIAL.lock().await;
    let mut e = Env::start_with(Options {
        create_on_connect: Some(SIZE),
        ..Options::default()
    })
    .await;
    let vol = "pvc-hung";
    let fuse = rds_testkit::fuse::HangableFile::mount(
        &e.root.join("backing"),
        &format!("{}.img", nqn_for(vol)),
        SIZE,
    )
    .expect("a FUSE filesystem for the volume's image");
    e.stage(vol, ext4())
        .await
        .expect("stage on the FUSE-backed device");
    e.publish(vol, "pod", ext4(), false).await.expect("publish");
    let target = e.plugin.target_path("pod", vol);
    e.wait_at(vol, &target, |c| !c.abnormal())
        .await
        .expect("healthy");

    fuse.freeze();
    // The pod writes and syncs: the writes reach the device and never complete.
    let t = target.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(t.join("stuck")).expect("create");
        f.write_all(&[7u8; 1 << 20]).expect("write");
        f.sync_all()
    });
    let c = e
        .wait_at(vol, &target, |c| c.kind.as_str() == "io_stalled")
        .await
        .unwrap_or_else(|last| panic!("not io_stalled; last {last:?}, parked {}", fuse.parked()));
    assert!(c.abnormal());
    assert!(fuse.parked() > 0, "the device really has requests waiting");
    let r = e
        .stats(vol, &target)
        .await
        .expect("stats answer while the device hangs");
    let cond = r.volume_condition.expect("a condition");
    assert!(cond.abnormal, "{cond:?}");
    assert!(cond.message.starts_with("io_stalled"), "{cond:?}");
    assert!(!r.usage.is_empty(), "usage with every abnormal condition");

    fuse.thaw();
    writer
        .join()
        .expect("writer")
        .expect("the sync completes once the device answers");
    e.wait_at(vol, &target, |c| !c.abnormal())
        .await
        .expect("healthy once completions resume");
    e.unpublish(vol, "pod").await.expect("unpublish");
    e.unstage(vol).await.expect("unstage");
    e.finish().await;
    drop(fuse);
}
