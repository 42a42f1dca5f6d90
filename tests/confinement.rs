//! Mistaken or hostile CSI calls, over the real socket with real mounts (private mount
//! namespace), on the emulated fabric: well-formed requests that name what is not theirs are
//! refused with the right code, and nothing is mounted, unmounted, removed, formatted or
//! disconnected. Each test names the item of the confinement issue it reproduces.

rds_testkit::private_namespaces!();

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rds_harness::harness::*;
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use tonic::Code;

mod common;
use common::*;

fn code_of(r: Result<(), tonic::Status>) -> Code {
    match r {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn kubelet(e: &Env) -> PathBuf {
    e.plugin.layout().kubelet
}

/// Every mount point under `root`, from the kernel's table.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    rds_mounts::MountView::read_now(Path::new("/proc"), "self")
        .expect("mountinfo")
        .entries()
        .iter()
        .filter(|m| m.mount_point.starts_with(root))
        .map(|m| m.mount_point.clone())
        .collect()
}

fn all_zero(path: &Path) -> bool {
    let data = std::fs::read(path).expect("backing file");
    data.iter().all(|b| *b == 0)
}

/// Item 1: a staging path or target outside kubelet's layout is InvalidArgument before any
/// action: nothing created, nothing connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_kubelets_layout_are_refused_before_any_action() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-outside";
    e.target(vol, SIZE);
    let k = kubelet(&e);
    let dev_root = e.plugin.layout().dev;
    for staging in [
        e.root.join("elsewhere/globalmount"),
        dev_root.join("globalmount"),
        k.join("pods/uid/volumes/kubernetes.io~csi/pvc-outside/mount"),
        k.join("plugins/kubernetes.io/csi/volumeDevices/publish/pvc-outside"),
        k.join("plugins/kubernetes.io/csi"),
    ] {
        let mut req = stage_request(&e.plugin, vol, ext4());
        req.staging_target_path = staging.display().to_string();
        let st = e.k.node.node_stage_volume(req).await.expect_err("refused");
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "{staging:?}: {}",
            st.message()
        );
        assert!(
            st.message().contains("staging_target_path"),
            "{}",
            st.message()
        );
        assert!(!staging.exists() || staging == k.join("plugins/kubernetes.io/csi"));
    }
    assert!(
        e.plugin.fabric.namespace_of(&nqn_for(vol)).is_none(),
        "nothing connected"
    );
    // A target outside the layout, for a staged volume.
    e.stage(vol, ext4()).await.expect("stage");
    for target in [
        e.root.join("etc-like/mount"),
        e.plugin.staging_path(vol),
        k.join("plugins/kubernetes.io/csi/rds.csi.srvlab.io/x/globalmount"),
    ] {
        let mut req = publish_request(&e.plugin, vol, "pod", ext4(), false);
        req.target_path = target.display().to_string();
        let st =
            e.k.node
                .node_publish_volume(req)
                .await
                .expect_err("refused");
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "{target:?}: {}",
            st.message()
        );
    }
    assert_eq!(mounts_under(&e.root).len(), 1, "only the staging mount");
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

/// Item 2: symlinks are never followed, in a staging path or in a target's parents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_in_staging_paths_and_targets_are_never_followed() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let k = kubelet(&e);
    // A staging path that is a symlink to a directory outside.
    let outside = e.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let vol = "pvc-link";
    e.target(vol, SIZE);
    let staging = e.plugin.staging_path(vol);
    std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &staging).unwrap();
    let st = e
        .stage(vol, ext4())
        .await
        .expect_err("a symlinked staging path");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(mounts_under(&e.root).is_empty(), "nothing mounted anywhere");
    std::fs::remove_file(&staging).unwrap();

    // A target whose parent links into another volume's filesystem.
    let a = "pvc-victim";
    e.stage_and_publish(a).await;
    let victim_data = e.plugin.staging_path(a);
    let b = "pvc-attacker";
    e.target(b, SIZE);
    e.stage(b, ext4()).await.expect("stage b");
    let pod_dir = k.join("pods/evil/volumes");
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::os::unix::fs::symlink(&victim_data, pod_dir.join("kubernetes.io~csi")).unwrap();
    let st = e
        .publish(b, "evil", ext4(), false)
        .await
        .expect_err("a target through a symlink");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(
        !victim_data.join(b).exists(),
        "nothing created inside the other volume's data"
    );
    assert_eq!(mounts_under(&victim_data).len(), 1, "no bind inside it");
    e.unpublish(a, "pod").await.unwrap();
    e.unstage(a).await.unwrap();
    e.unstage(b).await.unwrap();
    e.finish().await;
}

/// Item 3: unpublish for a volume with no record removes nothing: not an empty directory, not
/// an empty file, not a device node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_without_a_record_removes_nothing() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-owner";
    e.target(vol, SIZE);
    e.stage(vol, block_capability()).await.expect("stage block");
    let (name, dev, _) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    let _ = name;
    let k = kubelet(&e);
    let dir = k.join("pods/p1/volumes/kubernetes.io~csi/pvc-ghost/mount");
    std::fs::create_dir_all(&dir).unwrap();
    let file = k.join("pods/p2/volumes/kubernetes.io~csi/pvc-ghost/mount");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"").unwrap();
    let node = k.join("plugins/kubernetes.io/csi/volumeDevices/publish/pvc-ghost/p3");
    std::fs::create_dir_all(node.parent().unwrap()).unwrap();
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        libc::makedev(dev.major, dev.minor),
    )
    .unwrap();
    for t in [&dir, &file, &node] {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: "pvc-ghost".into(),
            target_path: t.display().to_string(),
        };
        e.k.node
            .node_unpublish_volume(req)
            .await
            .expect("success with nothing done");
    }
    assert!(dir.is_dir(), "the directory stays");
    assert!(file.is_file(), "the file stays");
    assert!(
        std::fs::symlink_metadata(&node)
            .unwrap()
            .file_type()
            .is_block_device(),
        "the device node of a connected namespace stays"
    );
    std::fs::remove_file(&node).unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

/// Item 4: an unknown volume at another volume's staging path, or a volume's own staging path
/// given as a target, unmounts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_volumes_staging_path_is_never_unmounted() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-staged";
    e.stage_and_publish(vol).await;
    let staging = e.plugin.staging_path(vol);
    let req = csi::NodeUnstageVolumeRequest {
        volume_id: "pvc-unknown".into(),
        staging_target_path: staging.display().to_string(),
    };
    let st =
        e.k.node
            .node_unstage_volume(req)
            .await
            .expect_err("not its path");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(top(&staging).is_some(), "the staging mount stays");
    let req = csi::NodeUnpublishVolumeRequest {
        volume_id: vol.into(),
        target_path: staging.display().to_string(),
    };
    let st =
        e.k.node
            .node_unpublish_volume(req)
            .await
            .expect_err("not a target");
    assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    assert!(top(&staging).is_some(), "the staging mount stays");
    assert!(staging.is_dir(), "globalmount stays");
    // Another volume's target is not this volume's to unpublish.
    let target = e.plugin.target_path("pod", vol);
    let req = csi::NodeUnpublishVolumeRequest {
        volume_id: "pvc-other".into(),
        target_path: target.display().to_string(),
    };
    let st =
        e.k.node
            .node_unpublish_volume(req)
            .await
            .expect_err("not its target");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(top(&target).is_some(), "the bind stays");
    e.unpublish(vol, "pod").await.unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

/// Item 5: two volumes never share a staging path or an NQN, even concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_volumes_never_share_a_staging_path_or_a_subsystem() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let (a, b) = ("pvc-first", "pvc-second");
    e.target(a, SIZE);
    e.target(b, SIZE);
    let shared = e.plugin.staging_path(a);
    let ra = stage_request(&e.plugin, a, ext4());
    let mut rb = stage_request(&e.plugin, b, ext4());
    rb.staging_target_path = shared.display().to_string();
    let (mut k1, mut k2) = (e.k.node.clone(), e.k.node.clone());
    let (r1, r2) = tokio::join!(k1.node_stage_volume(ra), k2.node_stage_volume(rb));
    let codes = [
        r1.map(|_| ()).map_err(|s| s.code()),
        r2.map(|_| ()).map_err(|s| s.code()),
    ];
    assert_eq!(
        codes.iter().filter(|c| c.is_ok()).count(),
        1,
        "exactly one stage at the shared path succeeds: {codes:?}"
    );
    assert!(
        codes
            .iter()
            .filter_map(|c| c.err())
            .all(|c| matches!(c, Code::Aborted | Code::AlreadyExists)),
        "{codes:?}"
    );
    let stacked = mounts_under(&shared);
    assert_eq!(
        stacked.len(),
        1,
        "one mount at the shared path: {stacked:?}"
    );
    // The same subsystem under a second volume ID.
    let c = "pvc-alias";
    let winner = if codes[0].is_ok() { a } else { b };
    let mut rc = stage_request(&e.plugin, c, ext4());
    rc.volume_context = volume_context(winner);
    let st = e.k.node.node_stage_volume(rc).await.expect_err("same NQN");
    assert_eq!(st.code(), Code::AlreadyExists, "{}", st.message());
    assert!(!e.plugin.staging_path(c).exists(), "nothing created");
    let mut ru = unstage_request(&e.plugin, winner);
    ru.staging_target_path = shared.display().to_string();
    e.k.node.node_unstage_volume(ru).await.expect("unstage");
    e.finish().await;
}

/// Items 7 and 15: read-only never writes (no mkfs on an empty device, no journal replay), and
/// a read-only device asked read-write is FailedPrecondition naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_never_writes_and_a_read_only_device_is_named() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-ro";
    let backing = e.target(vol, SIZE);
    let ro = mount_capability("ext4", Mode::SingleNodeReaderOnly);
    let st = e
        .stage(vol, ro.clone())
        .await
        .expect_err("empty and read-only");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(all_zero(&backing), "never formatted");
    assert!(!e.plugin.staging_path(vol).exists(), "nothing left behind");

    // Formatted by a read-write stage, then staged read-only: not one byte changes.
    e.stage(vol, ext4()).await.expect("stage rw formats");
    e.unstage(vol).await.expect("unstage");
    let before = std::fs::read(&backing).unwrap();
    e.stage(vol, ro.clone()).await.expect("stage ro");
    let m = top(&e.plugin.staging_path(vol)).expect("mounted");
    assert!(m.is_read_only(), "mounted read-only");
    e.unstage(vol).await.expect("unstage ro");
    assert!(
        before == std::fs::read(&backing).unwrap(),
        "nothing written"
    );

    // The target exports the device read-only: a read-write stage names the device.
    e.plugin.fabric.set_read_only(&nqn_for(vol), true).unwrap();
    let st = e.stage(vol, ext4()).await;
    match st {
        Err(st) => {
            assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
            assert!(st.message().contains("read-only"), "{}", st.message());
        }
        Ok(()) => panic!("a read-write stage of a read-only device must fail"),
    }
    assert!(!e.plugin.staging_path(vol).exists() || top(&e.plugin.staging_path(vol)).is_none());
    e.stage(vol, mount_capability("ext4", Mode::SingleNodeReaderOnly))
        .await
        .expect("read-only stage of a read-only device");
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

/// Item 9: a read-only raw block publish makes the device read-only in the kernel (root
/// cannot write through it); read-only and read-write publishes are never mixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_block_publish_makes_the_device_read_only() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-roblock";
    e.target(vol, SIZE);
    e.stage(vol, block_capability()).await.expect("stage");
    e.publish(vol, "pod-r", block_capability(), true)
        .await
        .expect("publish ro");
    let node = e.plugin.target_path("pod-r", vol);
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&node)
        .and_then(|mut f| f.write_all(&[1u8; 512]).and_then(|_| f.sync_all()))
        .expect_err("root must not write through a read-only publish");
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES)
        ),
        "{err}"
    );
    assert!(rds_hostops::is_read_only(&node).unwrap());
    let st = e
        .publish(vol, "pod-w", block_capability(), false)
        .await
        .expect_err("mixed");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    e.unpublish(vol, "pod-r").await.expect("unpublish");
    e.publish(vol, "pod-w", block_capability(), false)
        .await
        .expect("read-write once the read-only publish is gone");
    let node = e.plugin.target_path("pod-w", vol);
    assert!(!rds_hostops::is_read_only(&node).unwrap(), "writable again");
    e.unpublish(vol, "pod-w").await.unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

/// Item 11: errors=panic is refused, and nothing is created on the failure path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_panic_is_refused_and_nothing_is_left_behind() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-panic";
    let backing = e.target(vol, SIZE);
    for flags in [
        vec!["errors=panic".to_owned()],
        vec!["commit=soon".to_owned()],
    ] {
        let mut cap = ext4();
        if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
            m.mount_flags = flags.clone();
        }
        let st = e.stage(vol, cap).await.expect_err("refused");
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "{flags:?}: {}",
            st.message()
        );
        assert!(
            !e.plugin.staging_path(vol).exists(),
            "{flags:?}: nothing created"
        );
    }
    assert!(all_zero(&backing), "never formatted");
    e.finish().await;
}

/// Item 12: guard entries do not outlive their operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_map_does_not_grow_with_distinct_volume_ids() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let k = kubelet(&e);
    for i in 0..2000 {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: format!("pvc-ghost-{i}"),
            target_path: k
                .join(format!(
                    "pods/p/volumes/kubernetes.io~csi/pvc-ghost-{i}/mount"
                ))
                .display()
                .to_string(),
        };
        e.k.node
            .node_unpublish_volume(req)
            .await
            .expect("nothing to do");
    }
    assert_eq!(e.plugin.running.service.guards().len(), 0);
    e.finish().await;
}

/// Item 13: errors quote at most 256 bytes of any input; an oversized request is
/// ResourceExhausted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_echo_a_huge_input_and_oversized_requests_are_resource_exhausted() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-huge";
    let mut req = stage_request(&e.plugin, vol, ext4());
    req.volume_context
        .insert("nvmeAddress".into(), "9".repeat(1 << 20));
    let st =
        e.k.node
            .node_stage_volume(req)
            .await
            .expect_err("bad address");
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().len() <= 2048, "{} bytes", st.message().len());
    let mut req = stage_request(&e.plugin, vol, ext4());
    req.volume_context
        .insert("padding".into(), "x".repeat(5 << 20));
    let st = e.k.node.node_stage_volume(req).await.expect_err("too big");
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    e.finish().await;
}

/// Item 14: NodeExpandVolume's limits are checked, and a missing staging mount is
/// FailedPrecondition (no offline resize).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_checks_its_range_and_needs_the_staging_mount() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-expand";
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.unwrap();
    let staging = e.plugin.staging_path(vol);
    let expand = |required: i64, limit: i64| csi::NodeExpandVolumeRequest {
        volume_id: vol.into(),
        volume_path: staging.display().to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..Default::default()
    };
    for (req, lim) in [(SIZE as i64, -1), (SIZE as i64, 1 << 20)] {
        let st =
            e.k.node
                .node_expand_volume(expand(req, lim))
                .await
                .expect_err("bad range");
        assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    }
    rds_testkit::umount_as_admin(&staging).unwrap();
    let st =
        e.k.node
            .node_expand_volume(expand(SIZE as i64, 0))
            .await
            .expect_err("no staging mount");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

/// The guards as a property: random sequences of stage, publish, unpublish and unstage with
/// random (volume, path, NQN) triples, wrong ones included, never unmount, remove or
/// disconnect what the sequence did not stage or publish for that volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_calls_never_touch_what_another_volume_owns() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vols = ["pvc-pa", "pvc-pb", "pvc-pc"];
    for v in vols {
        e.target(v, SIZE);
    }
    let pods = ["p1", "p2"];
    let mut seed: u64 = std::env::var("RDS_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // The model: which volume the sequence staged, at whose path with whose NQN, and where
    // it published it.
    let mut staged: std::collections::HashMap<&str, (&str, &str)> = Default::default();
    let mut published: std::collections::HashSet<(&str, &str)> = Default::default();
    let mut succeeded = [0usize; 4];
    for step in 0..150 {
        let (v, pv, nv) = (vols[next(3)], vols[next(3)], vols[next(3)]);
        let pod = pods[next(2)];
        let op = next(4);
        let what;
        let r = match op {
            0 => {
                what = format!("stage {v} at {pv}'s path with {nv}'s NQN");
                let mut req = stage_request(&e.plugin, v, ext4());
                req.staging_target_path = e.plugin.staging_path(pv).display().to_string();
                req.volume_context = volume_context(nv);
                let r = code_of(e.k.node.node_stage_volume(req).await.map(|_| ()));
                if r == Code::Ok {
                    let taken = staged
                        .iter()
                        .any(|(o, (p, n))| *o != v && (*p == pv || *n == nv));
                    assert!(
                        !taken,
                        "step {step}: {what} succeeded though another staged volume holds the path or NQN: {staged:?}"
                    );
                    if let Some(was) = staged.get(v) {
                        assert_eq!(*was, (pv, nv), "step {step}: {what} restaged elsewhere");
                    }
                    staged.insert(v, (pv, nv));
                }
                r
            }
            1 => {
                what = format!("publish {v} from {pv}'s path in {pod}");
                let mut req = publish_request(&e.plugin, v, pod, ext4(), false);
                req.staging_target_path = e.plugin.staging_path(pv).display().to_string();
                let r = code_of(e.k.node.node_publish_volume(req).await.map(|_| ()));
                if r == Code::Ok {
                    assert!(
                        staged.get(v).is_some_and(|(p, _)| *p == pv),
                        "step {step}: {what} though not staged there: {staged:?}"
                    );
                    published.insert((v, pod));
                }
                r
            }
            2 => {
                what = format!("unpublish {v} at {pv}'s target in {pod}");
                let req = csi::NodeUnpublishVolumeRequest {
                    volume_id: v.into(),
                    target_path: e.plugin.target_path(pod, pv).display().to_string(),
                };
                let r = code_of(e.k.node.node_unpublish_volume(req).await.map(|_| ()));
                if r == Code::Ok && pv == v {
                    published.remove(&(v, pod));
                }
                r
            }
            _ => {
                what = format!("unstage {v} at {pv}'s path");
                let mut req = unstage_request(&e.plugin, v);
                req.staging_target_path = e.plugin.staging_path(pv).display().to_string();
                let r = code_of(e.k.node.node_unstage_volume(req).await.map(|_| ()));
                if r == Code::Ok && staged.get(v).is_some_and(|(p, _)| *p == pv) {
                    staged.remove(v);
                }
                r
            }
        };
        if r == Code::Ok {
            succeeded[op] += 1;
        }
        // What the model says exists must exist, exactly where it says.
        for (s, (p, n)) in &staged {
            let m = top(&e.plugin.staging_path(p));
            assert!(
                m.is_some(),
                "step {step} ({what} -> {r:?}): {s}'s staging mount was removed"
            );
            assert!(
                e.plugin.fabric.namespace_of(&nqn_for(n)).is_some(),
                "step {step} ({what} -> {r:?}): {s} was disconnected"
            );
        }
        for (v, pod) in &published {
            assert!(
                top(&e.plugin.target_path(pod, v)).is_some(),
                "step {step} ({what} -> {r:?}): {v}'s target in {pod} was unmounted"
            );
        }
        // And nothing exists that the model does not have.
        let mounts = mounts_under(&e.root).len();
        assert_eq!(
            mounts,
            staged.len() + published.len(),
            "step {step} ({what} -> {r:?}): mounts {:?}",
            mounts_under(&e.root)
        );
    }
    // Not vacuous: every kind of call got through sometimes.
    assert!(
        succeeded.iter().all(|n| *n > 0),
        "successes per call: {succeeded:?}"
    );
    for (v, pod) in published.clone() {
        e.unpublish(v, pod).await.unwrap();
    }
    for (v, (p, _)) in staged.clone() {
        let mut req = unstage_request(&e.plugin, v);
        req.staging_target_path = e.plugin.staging_path(p).display().to_string();
        e.k.node.node_unstage_volume(req).await.unwrap();
    }
    e.finish().await;
}
