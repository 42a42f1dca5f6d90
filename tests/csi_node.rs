//! The CSI Node service over a real unix socket, as kubelet drives it, on the emulated fabric:
//! real loop devices, real ext4/xfs, real mounts (in a private mount namespace).

rds_testkit::private_namespaces!();

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rds_harness::harness::*;
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use tonic::Code;

mod common;
use common::*;

fn mountinfo_has(path: &Path) -> bool {
    top(path).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_volume_lifecycle_keeps_data_across_unstage_and_restage() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-lifecycle";
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.expect("stage");
    e.stage(vol, ext4()).await.expect("stage again is a no-op");
    let staging = e.plugin.staging_path(vol);
    assert!(mountinfo_has(&staging), "staging path mounted");
    e.publish(vol, "pod-a", ext4(), false)
        .await
        .expect("publish");
    e.publish(vol, "pod-a", ext4(), false)
        .await
        .expect("publish again is a no-op");
    let target = e.plugin.target_path("pod-a", vol);
    std::fs::write(target.join("data.txt"), b"written through the target").unwrap();

    let st = e.stats(vol, &target).await.expect("stats");
    let bytes = st
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .expect("bytes usage");
    assert!(
        bytes.total > 0 && bytes.total <= SIZE as i64,
        "total {} of a {SIZE}-byte device",
        bytes.total
    );
    assert!(
        st.usage
            .iter()
            .any(|u| u.unit == csi::volume_usage::Unit::Inodes as i32),
        "inode usage"
    );
    assert_eq!(st.volume_condition.map(|c| c.abnormal), Some(false));

    e.unpublish(vol, "pod-a").await.expect("unpublish");
    e.unpublish(vol, "pod-a")
        .await
        .expect("unpublish again is a no-op");
    assert!(!target.exists(), "target removed after unpublish");
    e.unstage(vol).await.expect("unstage");
    e.unstage(vol).await.expect("unstage again is a no-op");
    assert!(!mountinfo_has(&staging), "staging unmounted");
    assert!(
        e.plugin.fabric.namespace_of(&nqn_for(vol)).is_none(),
        "controller disconnected after unstage"
    );

    e.stage(vol, ext4()).await.expect("restage");
    e.publish(vol, "pod-b", ext4(), false)
        .await
        .expect("republish");
    let again = std::fs::read(e.plugin.target_path("pod-b", vol).join("data.txt"))
        .expect("data still there");
    assert_eq!(again, b"written through the target");
    e.unpublish(vol, "pod-b").await.unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_volume_published_read_only_refuses_writes() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-xfs-ro";
    e.target(vol, XFS_SIZE);
    let cap = mount_capability("xfs", Mode::SingleNodeWriter);
    e.stage(vol, cap.clone()).await.expect("stage xfs");
    let staging = e.plugin.staging_path(vol);
    let m = top(&staging).expect("staging mount");
    assert_eq!(m.fs_type, "xfs");
    e.publish(vol, "pod-ro", cap.clone(), true)
        .await
        .expect("publish ro");
    let target = e.plugin.target_path("pod-ro", vol);
    let err =
        std::fs::write(target.join("x"), b"x").expect_err("write to a read-only publish must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // The same target asked read-write now is an incompatible publish.
    let st = e
        .publish(vol, "pod-ro", cap.clone(), false)
        .await
        .expect_err("rw over ro");
    assert_eq!(st.code(), Code::AlreadyExists, "{}", st.message());
    e.unpublish(vol, "pod-ro").await.unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_is_published_as_a_device_node_never_a_bind_mount() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-block";
    e.target(vol, SIZE);
    e.stage(vol, block_capability()).await.expect("stage block");
    let staging = e.plugin.staging_path(vol);
    assert!(
        !mountinfo_has(&staging),
        "nothing is mounted at a block volume's staging path"
    );
    e.publish(vol, "pod-blk", block_capability(), false)
        .await
        .expect("publish block");
    e.publish(vol, "pod-blk", block_capability(), false)
        .await
        .expect("publish block again");
    let target = e.plugin.target_path("pod-blk", vol);
    assert!(!mountinfo_has(&target), "a block publish is not a mount");
    let md = std::fs::symlink_metadata(&target).unwrap();
    assert!(
        md.file_type().is_block_device(),
        "target is a block device node"
    );
    let (_, dev, _) = e.plugin.fabric.namespace_of(&nqn_for(vol)).unwrap();
    assert_eq!(
        rds_types::DevNum::from_dev_t(md.rdev()),
        dev,
        "node carries the namespace's number"
    );
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        f.write_all(b"raw block payload").unwrap();
        f.sync_all().unwrap();
    }
    let mut buf = [0u8; 17];
    std::fs::File::open(&target)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    assert_eq!(&buf, b"raw block payload");
    let st = e.stats(vol, &target).await.expect("block stats");
    assert_eq!(
        st.usage.first().map(|u| u.total),
        Some(SIZE as i64),
        "block size reported"
    );
    e.unpublish(vol, "pod-blk").await.expect("unpublish block");
    assert!(!target.exists(), "device node removed");
    e.unstage(vol).await.expect("unstage block");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_naming_the_field() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-bad";
    let good = stage_request(&e.plugin, vol, ext4());
    type Edit = fn(&mut csi::NodeStageVolumeRequest);
    fn with_flag(r: &mut csi::NodeStageVolumeRequest, flag: &str) {
        let mut c = mount_capability("ext4", Mode::SingleNodeWriter);
        if let Some(csi::volume_capability::AccessType::Mount(m)) = &mut c.access_type {
            m.mount_flags = vec![flag.into()];
        }
        r.volume_capability = Some(c);
    }
    let cases: Vec<(&str, Edit)> = vec![
        ("volume_id", |r| r.volume_id.clear()),
        ("staging_target_path", |r| r.staging_target_path.clear()),
        ("staging_target_path", |r| {
            r.staging_target_path = "relative/path".into()
        }),
        ("staging_target_path", |r| {
            r.staging_target_path = "/var/lib/../etc".into()
        }),
        ("volume_capability", |r| r.volume_capability = None),
        ("volume_context.nqn", |r| {
            r.volume_context.remove("nqn");
        }),
        ("volume_context.nqn", |r| {
            r.volume_context
                .insert("nqn".into(), "nqn.2000-02.com.mikrotik:UPPER".into());
        }),
        ("volume_context.nqn", |r| {
            r.volume_context.insert(
                "nqn".into(),
                format!("nqn.2000-02.com.mikrotik:pvc-{}", "a".repeat(220)),
            );
        }),
        ("volume_context.nvmeAddress", |r| {
            r.volume_context.remove("nvmeAddress");
        }),
        ("volume_context.nvmeAddress", |r| {
            r.volume_context
                .insert("nvmeAddress".into(), "storage.example".into());
        }),
        ("volume_context.nvmePort", |r| {
            r.volume_context.insert("nvmePort".into(), "0".into());
        }),
        ("volume_context.nvmePort", |r| {
            r.volume_context.insert("nvmePort".into(), "65536".into());
        }),
        ("volume_capability.mount.fs_type", |r| {
            r.volume_capability = Some(mount_capability("btrfs", Mode::SingleNodeWriter));
        }),
        ("volume_capability.access_mode", |r| {
            r.volume_capability = Some(mount_capability("ext4", Mode::MultiNodeMultiWriter));
        }),
        ("volume_capability.mount.mount_flags", |r| {
            with_flag(r, "suid")
        }),
        ("volume_capability.mount.mount_flags", |r| {
            with_flag(r, "dev")
        }),
        // Outside the managed prefix: refused before anything is connected or formatted.
        ("volume_context.nqn", |r| {
            r.volume_context
                .insert("nqn".into(), "nqn.2000-02.com.mikrotik:boot-node1".into());
        }),
    ];
    for (field, edit) in cases {
        let mut r = good.clone();
        edit(&mut r);
        let st =
            e.k.node
                .node_stage_volume(r)
                .await
                .expect_err("must be refused");
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "{field}: {}",
            st.message()
        );
        assert!(
            st.message().starts_with(field),
            "message should name {field}: {}",
            st.message()
        );
    }
    let mut p = publish_request(&e.plugin, vol, "pod", ext4(), false);
    p.target_path.clear();
    assert_eq!(
        e.k.node.node_publish_volume(p).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let u = csi::NodeUnpublishVolumeRequest {
        volume_id: vol.into(),
        target_path: "rel".into(),
    };
    assert_eq!(
        e.k.node.node_unpublish_volume(u).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let s = csi::NodeGetVolumeStatsRequest {
        volume_id: String::new(),
        volume_path: "/x".into(),
        ..Default::default()
    };
    assert_eq!(
        e.k.node.node_get_volume_stats(s).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(
        e.plugin.fabric.controller_of(&nqn_for(vol)).is_none(),
        "nothing was connected"
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holding_unknown_data_is_never_formatted() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-has-data";
    e.target(vol, SIZE);
    let backing = e
        .plugin
        .layout()
        .backing
        .join(format!("{}.img", nqn_for(vol)));
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap();
        f.write_all(&pattern).unwrap();
    }
    let st = e
        .stage(vol, ext4())
        .await
        .expect_err("stage must refuse to format");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    let mut head = vec![0u8; 4096];
    std::fs::File::open(&backing)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, pattern, "the data on the device is untouched");
    assert!(!mountinfo_has(&e.plugin.staging_path(vol)));
    e.unstage(vol)
        .await
        .expect("unstage of a never-staged volume is success");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_device_is_never_formatted() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-dead";
    e.target(vol, SIZE);
    let nqn = nqn_for(vol);
    let req = rds_fabric::ConnectRequest::tcp(nqn.clone(), "127.0.0.1".parse().unwrap(), 4420);
    rds_fabric::Fabric::connect(e.plugin.fabric.as_ref(), &req).expect("connect");
    e.plugin.fabric.kill_path(&nqn).expect("kill the path");
    let st = e
        .stage(vol, ext4())
        .await
        .expect_err("stage must fail on an unreadable device");
    assert_eq!(st.code(), Code::Unavailable, "{}", st.message());
    assert!(st.message().contains("refusing"), "{}", st.message());
    assert!(!mountinfo_has(&e.plugin.staging_path(vol)));
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_conflicts_are_refused() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let (a, b) = ("pvc-conflict-a", "pvc-conflict-b");
    e.target(a, SIZE);
    e.target(b, SIZE);
    e.stage(a, ext4()).await.expect("stage a");
    let mut other_path = stage_request(&e.plugin, a, ext4());
    other_path.staging_target_path = e.plugin.staging_path("elsewhere").display().to_string();
    let st =
        e.k.node
            .node_stage_volume(other_path)
            .await
            .expect_err("restage elsewhere");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    let mut same_path = stage_request(&e.plugin, b, ext4());
    same_path.staging_target_path = e.plugin.staging_path(a).display().to_string();
    let st =
        e.k.node
            .node_stage_volume(same_path)
            .await
            .expect_err("another volume at the same path");
    assert_eq!(st.code(), Code::AlreadyExists, "{}", st.message());
    let st = e
        .publish(b, "pod", ext4(), false)
        .await
        .expect_err("publish before stage");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    e.unstage(a).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_operation_on_a_busy_volume_is_aborted() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-busy";
    e.target(vol, SIZE);
    let held = e
        .plugin
        .running
        .service
        .guards()
        .try_acquire(vol, "NodeStageVolume")
        .unwrap();
    let st = e.stage(vol, ext4()).await.expect_err("busy");
    assert_eq!(st.code(), Code::Aborted, "{}", st.message());
    assert!(st.message().contains("NodeStageVolume"), "{}", st.message());
    drop(held);
    e.stage(vol, ext4())
        .await
        .expect("stage once the first operation is done");
    let (mut k1, mut k2) = (e.k.clone(), e.k.clone());
    let (r1, r2) = (
        stage_request(&e.plugin, vol, ext4()),
        stage_request(&e.plugin, vol, ext4()),
    );
    let (a, b) = tokio::join!(k1.node.node_stage_volume(r1), k2.node.node_stage_volume(r2));
    for r in [a.map(|_| ()), b.map(|_| ())] {
        if let Err(st) = r {
            assert_eq!(
                st.code(),
                Code::Aborted,
                "concurrent call: {}",
                st.message()
            );
        }
    }
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_still_a_foreign_mount_point_is_never_removed() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-foreign";
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.unwrap();
    e.publish(vol, "pod", ext4(), false).await.unwrap();
    let target = e.plugin.target_path("pod", vol);
    std::fs::write(target.join("keep.txt"), b"keep").unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(target.join("foreign.txt"), b"foreign").unwrap();
    let st = e.unpublish(vol, "pod").await.expect_err("foreign mount");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert_eq!(
        std::fs::read(target.join("foreign.txt")).unwrap(),
        b"foreign",
        "foreign data untouched"
    );
    nix::mount::umount(&target).unwrap();
    e.unpublish(vol, "pod")
        .await
        .expect("unpublish once only our layer remains");
    e.unstage(vol).await.unwrap();
    e.stage(vol, ext4()).await.unwrap();
    e.publish(vol, "pod2", ext4(), false).await.unwrap();
    assert_eq!(
        std::fs::read(e.plugin.target_path("pod2", vol).join("keep.txt")).unwrap(),
        b"keep"
    );
    e.unpublish(vol, "pod2").await.unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_unknown_volumes_and_paths_are_not_found() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-stats";
    let st = e
        .stats(vol, Path::new("/nonexistent/path"))
        .await
        .expect_err("unknown volume");
    assert_eq!(st.code(), Code::NotFound);
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.unwrap();
    let st = e
        .stats(vol, Path::new("/tmp"))
        .await
        .expect_err("a path that is not this volume's");
    assert_eq!(st.code(), Code::NotFound);
    let staging = e.plugin.staging_path(vol);
    assert!(
        e.stats(vol, &staging).await.is_ok(),
        "the staging path has stats"
    );
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_grows_an_xfs_filesystem_online() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-grow";
    // xfs: ext4 online growth needs CAP_SYS_RESOURCE, which this test sandbox does not grant.
    let xfs = mount_capability("xfs", Mode::SingleNodeWriter);
    e.target(vol, XFS_SIZE);
    e.stage(vol, xfs.clone()).await.unwrap();
    e.publish(vol, "pod", xfs, false).await.unwrap();
    let staging = e.plugin.staging_path(vol);
    let before = rds_hostops::statfs::volume_stats(&staging)
        .unwrap()
        .total_bytes;
    let backing = e
        .plugin
        .layout()
        .backing
        .join(format!("{}.img", nqn_for(vol)));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len(2 * XFS_SIZE)
        .unwrap();
    let loopdev = e.plugin.fabric.loop_of(&nqn_for(vol)).expect("loop device");
    let out = std::process::Command::new("losetup")
        .args(["-c", &format!("/dev/{loopdev}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup -c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = csi::NodeExpandVolumeRequest {
        volume_id: vol.into(),
        volume_path: e.plugin.target_path("pod", vol).display().to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: (2 * XFS_SIZE) as i64,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let got =
        e.k.node
            .node_expand_volume(req)
            .await
            .expect("expand")
            .into_inner()
            .capacity_bytes;
    let after = rds_hostops::statfs::volume_stats(&staging)
        .unwrap()
        .total_bytes;
    assert!(after > before, "filesystem grew: {before} -> {after}");
    assert_eq!(
        got as u64, after,
        "reported capacity is the grown filesystem's"
    );
    e.unpublish(vol, "pod").await.unwrap();
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_node_info_describe_a_node_only_plugin() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let info =
        e.k.identity
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(info.name, DRIVER);
    assert!(!info.vendor_version.is_empty());
    let caps =
        e.k.identity
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
    let claims_controller = caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(csi::plugin_capability::Type::Service(s))
            if s.r#type == csi::plugin_capability::service::Type::ControllerService as i32)
    });
    assert!(
        !claims_controller,
        "a node-only plugin must not claim the controller service"
    );
    let probe =
        e.k.identity
            .probe(csi::ProbeRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(probe.ready, Some(true));
    let ni =
        e.k.node
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(ni.node_id, NODE_ID);
    assert!(!ni
        .accessible_topology
        .expect("topology")
        .segments
        .is_empty());
    assert!(ni.max_volumes_per_node > 0);
    let nc =
        e.k.node
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
    use csi::node_service_capability::rpc::Type;
    let types: Vec<i32> = nc
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(csi::node_service_capability::Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    for t in [
        Type::StageUnstageVolume,
        Type::GetVolumeStats,
        Type::VolumeCondition,
        Type::ExpandVolume,
    ] {
        assert!(types.contains(&(t as i32)), "missing capability {t:?}");
    }
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_csi_operations_by_rpc_and_code() {
    let _s = SERIAL.lock().await;
    // Pick a free port on the private namespace's loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Enters (and requires) the private namespaces before it binds anything.
    let mut e = Env::start_with(Options {
        metrics_address: Some(addr),
        ..Options::default()
    })
    .await;
    let vol = "pvc-metrics";
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.expect("stage");
    let mut bad = stage_request(&e.plugin, vol, ext4());
    bad.volume_id.clear();
    assert!(e.k.node.node_stage_volume(bad).await.is_err());
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let line = |needle: &str| {
        body.lines()
            .any(|l| l.starts_with("rds_csi_csi_operations_total") && l.contains(needle))
    };
    assert!(
        line("rpc=\"NodeStageVolume\",code=\"OK\""),
        "successful stage counted:\n{body}"
    );
    assert!(
        line("code=\"InvalidArgument\""),
        "refused stage counted:\n{body}"
    );
    assert!(
        body.contains("rds_csi_volume_conditions"),
        "conditions gauge exported"
    );
    e.unstage(vol).await.unwrap();
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_still_published_is_never_unstaged_or_disconnected() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-still-published";
    e.target(vol, SIZE);
    e.stage(vol, block_capability()).await.expect("stage block");
    e.publish(vol, "pod", block_capability(), false)
        .await
        .expect("publish block");
    let st = e
        .unstage(vol)
        .await
        .expect_err("unstage while the pod's device node is published");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(st.message().contains("still published"), "{}", st.message());
    assert!(
        e.plugin.fabric.namespace_of(&nqn_for(vol)).is_some(),
        "the controller stays connected"
    );
    let target = e.plugin.target_path("pod", vol);
    assert!(
        std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_block_device(),
        "the pod keeps its node"
    );
    e.unpublish(vol, "pod").await.expect("unpublish");
    e.unstage(vol).await.expect("unstage once unpublished");
    assert!(
        e.plugin.fabric.namespace_of(&nqn_for(vol)).is_none(),
        "disconnected after the last user left"
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restaging_with_another_read_only_mode_is_an_incompatible_stage() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-ro-restage";
    e.target(vol, SIZE);
    // Staged read-write first.
    e.stage(vol, ext4()).await.expect("stage rw");
    let st = e
        .stage(vol, mount_capability("ext4", Mode::SingleNodeReaderOnly))
        .await
        .expect_err("the same staging path asked read-only");
    assert_eq!(st.code(), Code::AlreadyExists, "{}", st.message());
    let m = top(&e.plugin.staging_path(vol)).expect("still staged");
    assert!(!m.is_read_only(), "the existing stage is unchanged");
    e.unstage(vol).await.expect("unstage");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_volume_whose_record_was_lost_can_still_be_unstaged_but_a_foreign_mount_cannot() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let vol = "pvc-no-record";
    e.target(vol, SIZE);
    e.stage(vol, ext4()).await.expect("stage");
    let staging = e.plugin.staging_path(vol);
    // The plugin stopped between mounting and writing its record.
    let root = e.root.clone();
    let fabric = e.plugin.stop().await.expect("stop");
    std::fs::remove_file(
        Layout::under(&root)
            .state
            .join(format!("volumes/{vol}.json")),
    )
    .expect("record");
    let plugin = Plugin::start(&root, Some(fabric)).await.expect("restart");
    let mut k = plugin.kubelet().await.unwrap();
    k.node
        .node_unstage_volume(unstage_request(&plugin, vol))
        .await
        .expect("unstage without a record");
    assert!(
        top(&staging).is_none(),
        "our namespace's mount was taken away"
    );
    // A mount that is not a managed namespace at another volume's staging path is left alone.
    let other = "pvc-foreign-staging";
    let other_staging = plugin.staging_path(other);
    std::fs::create_dir_all(&other_staging).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &other_staging,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let st = k
        .node
        .node_unstage_volume(unstage_request(&plugin, other))
        .await
        .expect_err("foreign mount");
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(top(&other_staging).is_some(), "the foreign mount stays");
    nix::mount::umount(&other_staging).unwrap();
    plugin.stop().await.unwrap();
}

/// The CSI sanity suite's rule: stats and expand of an unknown volume are NotFound, whatever
/// its path (it sends the relative `some/path`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_expand_of_an_unknown_volume_are_not_found_before_the_path_is_checked() {
    let _s = SERIAL.lock().await;
    let mut e = env().await;
    let st =
        e.k.node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: "pvc-nobody".into(),
                volume_path: "some/path".into(),
                staging_target_path: String::new(),
            })
            .await
            .expect_err("unknown volume");
    assert_eq!(st.code(), Code::NotFound, "{}", st.message());
    let st =
        e.k.node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: "pvc-nobody".into(),
                volume_path: "some/path".into(),
                ..Default::default()
            })
            .await
            .expect_err("unknown volume");
    assert_eq!(st.code(), Code::NotFound, "{}", st.message());
    e.finish().await;
}
