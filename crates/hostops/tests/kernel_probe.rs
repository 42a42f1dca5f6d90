//! Content probe, format permit, fsck, resize, mknod and statvfs on real loop devices with real
//! ext4 and xfs, inside the test kit's private namespaces.

rds_testkit::private_namespaces!();

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Loop, Mounted};
use rds_hostops::fstools::{fsck_ext4, resize, FsckError, FsckOutcome};
use rds_hostops::mknod::{
    check_block_node, create_block_node, remove_block_node, NodeError, NodeState,
};
use rds_hostops::probe::{
    format, probe_content, probe_content_with, Content, FormatError, FsKind, ProbeConfig,
    ProbeError,
};
use rds_hostops::statfs::{block_size, volume_stats};
use rds_types::DevNum;

const MIB: u64 = 1 << 20;
const MKFS: Duration = Duration::from_secs(300);
const FSCK: Duration = Duration::from_secs(300);

fn permit_of(dev: &Path) -> rds_hostops::FormatPermit {
    match probe_content(dev).expect("probe a fresh zeroed device") {
        Content::Empty(p) => p,
        other => panic!("a zeroed device must probe Empty, got {other:?}"),
    }
}

fn mount_ext4(dev: &Path, at: &Path) -> Mounted {
    rds_hostops::mount::mount_fs(dev, at, "ext4", nix::mount::MsFlags::empty(), None)
        .expect("mount ext4");
    Mounted(at.to_owned())
}

#[test]
fn a_zeroed_device_probes_empty_with_a_permit_for_that_device() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    match probe_content(&lo.path).expect("probe") {
        Content::Empty(permit) => assert_eq!(
            permit.device(),
            lo.path,
            "the permit names the probed device"
        ),
        other => panic!("expected Empty for a zeroed device, got {other:?}"),
    }
}

#[test]
fn a_device_smaller_than_the_probe_windows_is_read_whole() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(512 * 1024);
    assert!(
        probe_content(&lo.path).expect("probe").is_empty(),
        "a small zeroed device is Empty"
    );
    lo.write_at(512 * 1024 - 1, &[7]);
    assert!(
        matches!(
            probe_content(&lo.path).expect("probe"),
            Content::Unrecognised(_)
        ),
        "a non-zero last byte of a small device must be seen"
    );
}

#[test]
fn an_ext4_device_probes_as_that_filesystem() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    format(&lo.path, FsKind::Ext4, permit_of(&lo.path), MKFS)
        .expect("mkfs.ext4 on an empty device");
    match probe_content(&lo.path).expect("probe") {
        Content::Filesystem { fs_type, uuid } => {
            assert_eq!(fs_type, "ext4");
            assert!(uuid.is_some(), "ext4 has a UUID");
        }
        other => panic!("expected Filesystem ext4, got {other:?}"),
    }
}

#[test]
fn a_mounted_ext4_in_use_probes_as_that_filesystem() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    format(&lo.path, FsKind::Ext4, permit_of(&lo.path), MKFS).expect("mkfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let _m = mount_ext4(&lo.path, dir.path());
    std::fs::write(dir.path().join("f"), vec![3u8; 1 << 20]).expect("write");
    match probe_content(&lo.path).expect("probe of a mounted filesystem") {
        Content::Filesystem { fs_type, .. } => assert_eq!(fs_type, "ext4"),
        other => panic!("expected Filesystem ext4, got {other:?}"),
    }
}

#[test]
fn an_xfs_device_probes_as_that_filesystem() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(512 * MIB);
    format(&lo.path, FsKind::Xfs, permit_of(&lo.path), MKFS).expect("mkfs.xfs on an empty device");
    match probe_content(&lo.path).expect("probe") {
        Content::Filesystem { fs_type, .. } => assert_eq!(fs_type, "xfs"),
        other => panic!("expected Filesystem xfs, got {other:?}"),
    }
}

#[test]
fn random_data_is_unrecognised_and_voids_an_earlier_permit() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    let permit = permit_of(&lo.path);
    // Pseudo-random bytes (xorshift) in the middle of the first MiB: no signature, just data.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    lo.write_at(300 * 1024, &data);
    match probe_content(&lo.path).expect("probe") {
        Content::Unrecognised(seen) => assert!(
            seen.iter().any(|s| s == "non-zero data"),
            "expected non-zero data in {seen:?}"
        ),
        other => panic!("random data must be Unrecognised, got {other:?}"),
    }
    let err = format(&lo.path, FsKind::Ext4, permit, MKFS)
        .expect_err("format after data appeared must refuse");
    assert!(
        matches!(err, FormatError::NoLongerEmpty { .. }),
        "expected NoLongerEmpty, got {err:?}"
    );
    assert!(
        matches!(
            probe_content(&lo.path).expect("probe"),
            Content::Unrecognised(_)
        ),
        "the data must still be there after the refused format"
    );
}

#[test]
fn data_only_in_the_last_mib_makes_the_device_not_empty() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    lo.write_at(64 * MIB - 4096, b"user data at the end of the device");
    assert!(matches!(
        probe_content(&lo.path).expect("probe"),
        Content::Unrecognised(_)
    ));
}

#[test]
fn data_between_the_ends_without_any_signature_is_never_empty() {
    // Issue 10, item 8: 62 MiB of random data between two zeroed 1 MiB ends, no signature.
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..62 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    lo.write_at(MIB, &noise);
    match probe_content(&lo.path).expect("probe") {
        Content::Unrecognised(what) => assert!(
            what.iter().any(|w| w.contains("non-zero data at offset")),
            "{what:?}"
        ),
        other => panic!("random data between the ends must not be empty: {other:?}"),
    }
    // One 4 KiB block of data in the middle of a stripe of the first GiB is found too.
    let lo = Loop::new(64 * MIB);
    lo.write_at(33 * MIB, &[0xa5; 4096]);
    assert!(
        matches!(
            probe_content(&lo.path).expect("probe"),
            Content::Unrecognised(_)
        ),
        "a 4 KiB block at a stripe start is data"
    );
}

#[test]
fn a_partition_table_is_unrecognised() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    lo.write_at(510, &[0x55, 0xAA]);
    match probe_content(&lo.path).expect("probe") {
        Content::Unrecognised(seen) => assert!(
            seen.iter().any(|s| s == "dos"),
            "expected the MBR signature in {seen:?}"
        ),
        other => panic!("expected Unrecognised, got {other:?}"),
    }
}

#[test]
fn a_dead_device_is_unreadable_never_empty() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    lo.set_capacity(0);
    let err = probe_content(&lo.path).expect_err("a device with capacity 0 cannot be probed");
    assert!(
        matches!(err, ProbeError::Unreadable { .. }),
        "expected Unreadable, got {err:?}"
    );
}

nix::ioctl_read!(ext4_ioc_shutdown, b'X', 125, u32);

#[test]
fn a_device_whose_reads_fail_is_unreadable_never_empty() {
    rds_testkit::require_private_namespaces();
    // Outer loop with ext4; the inner loop's backing file lives on it. Shutting the outer
    // filesystem down makes every read of the inner device fail with EIO while its size stays.
    let outer = Loop::new(128 * MIB);
    format(&outer.path, FsKind::Ext4, permit_of(&outer.path), MKFS).expect("mkfs outer");
    let dir = tempfile::tempdir().expect("tempdir");
    let _m = mount_ext4(&outer.path, dir.path());
    let inner = Loop::on_file(&dir.path().join("inner.img"), 64 * MIB);
    let root = std::fs::File::open(dir.path()).expect("open outer root");
    let mut flags: u32 = 2; // EXT4_GOING_FLAGS_NOLOGFLUSH
                            // SAFETY: the ioctl reads one u32 from `flags`, which outlives the call.
    unsafe { ext4_ioc_shutdown(std::os::fd::AsRawFd::as_raw_fd(&root), &mut flags) }
        .expect("EXT4_IOC_SHUTDOWN");
    assert_eq!(
        block_size(&inner.path).expect("size"),
        64 * MIB,
        "the inner device still claims its size"
    );
    let err = probe_content(&inner.path).expect_err("a device failing reads cannot be probed");
    assert!(
        matches!(err, ProbeError::Unreadable { .. }),
        "expected Unreadable, got {err:?}"
    );
}

#[test]
fn a_permit_is_void_once_the_device_died() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    let permit = permit_of(&lo.path);
    lo.set_capacity(0);
    let err = format(&lo.path, FsKind::Ext4, permit, MKFS)
        .expect_err("formatting a dead device must refuse");
    assert!(
        matches!(
            err,
            FormatError::Recheck { .. } | FormatError::DeviceChanged { .. }
        ),
        "expected a failed re-check, got {err:?}"
    );
}

#[test]
fn a_permit_for_one_device_does_not_format_another() {
    rds_testkit::require_private_namespaces();
    let a = Loop::new(64 * MIB);
    let b = Loop::new(64 * MIB);
    let err = format(&b.path, FsKind::Ext4, permit_of(&a.path), MKFS).expect_err("wrong device");
    assert!(
        matches!(err, FormatError::PermitForAnotherDevice { .. }),
        "got {err:?}"
    );
    assert!(
        probe_content(&b.path).expect("probe").is_empty(),
        "the other device is untouched"
    );
}

#[test]
fn a_device_held_exclusively_cannot_be_formatted() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    let permit = permit_of(&lo.path);
    // Hold the device exclusively, as a mounted filesystem does.
    let _hold = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&lo.path)
        .expect("exclusive open");
    let err = format(&lo.path, FsKind::Ext4, permit, MKFS)
        .expect_err("a held device must not be formatted");
    assert!(
        matches!(err, FormatError::DeviceBusy { .. }),
        "expected DeviceBusy, got {err:?}"
    );
}

use std::os::unix::fs::OpenOptionsExt;

#[test]
fn without_blkid_the_probe_fails_unless_explicitly_allowed() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    let mut cfg = ProbeConfig {
        blkid: "/nonexistent/blkid".into(),
        ..ProbeConfig::default()
    };
    let err =
        probe_content_with(&lo.path, &cfg).expect_err("a required but missing blkid is an error");
    assert!(
        matches!(err, ProbeError::SecondOpinion { .. }),
        "got {err:?}"
    );
    cfg.require_blkid = false;
    assert!(
        probe_content_with(&lo.path, &cfg)
            .expect("probe")
            .is_empty(),
        "native-only probe of zeroes is Empty"
    );
}

#[test]
fn fsck_refuses_a_mounted_device_and_checks_an_unmounted_one() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    format(&lo.path, FsKind::Ext4, permit_of(&lo.path), MKFS).expect("mkfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let m = mount_ext4(&lo.path, dir.path());
    let err =
        fsck_ext4(&lo.path, &common::table(), FSCK).expect_err("fsck of a mounted fs must refuse");
    assert!(
        matches!(err, FsckError::Mounted { .. }),
        "expected Mounted, got {err:?}"
    );
    drop(m);
    assert_eq!(
        fsck_ext4(&lo.path, &common::table(), FSCK).expect("fsck unmounted"),
        FsckOutcome::Clean
    );
}

/// Offline: online ext4 growth (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which this test
/// machine withholds even from root; the node plugin's privileged container has it.
#[test]
fn fsck_refuses_a_device_held_exclusively() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    format(&lo.path, FsKind::Ext4, permit_of(&lo.path), MKFS).expect("mkfs");
    let _hold = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&lo.path)
        .expect("exclusive open");
    let err =
        fsck_ext4(&lo.path, &common::table(), FSCK).expect_err("a held device must not be checked");
    assert!(
        matches!(err, FsckError::Busy { .. }),
        "expected Busy, got {err:?}"
    );
}

#[test]
fn resize2fs_grows_an_ext4_after_the_device_grew() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    format(&lo.path, FsKind::Ext4, permit_of(&lo.path), MKFS).expect("mkfs");
    lo.set_capacity(128 * MIB);
    assert_eq!(
        block_size(&lo.path).expect("size"),
        128 * MIB,
        "the loop device grew"
    );
    resize(FsKind::Ext4, &lo.path, None, MKFS).expect("resize2fs");
    let dir = tempfile::tempdir().expect("tempdir");
    let _m = mount_ext4(&lo.path, dir.path());
    let total = volume_stats(dir.path()).expect("statvfs").total_bytes;
    assert!(
        total > 96 * MIB,
        "expected the filesystem to span most of 128 MiB, more than the original 64 MiB: {total}"
    );
}

#[test]
fn xfs_growfs_grows_a_mounted_xfs_after_the_device_grew() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(512 * MIB);
    format(&lo.path, FsKind::Xfs, permit_of(&lo.path), MKFS).expect("mkfs.xfs");
    let dir = tempfile::tempdir().expect("tempdir");
    rds_hostops::mount::mount_fs(
        &lo.path,
        dir.path(),
        "xfs",
        nix::mount::MsFlags::empty(),
        None,
    )
    .expect("mount xfs");
    let _m = Mounted(dir.path().to_owned());
    let before = volume_stats(dir.path()).expect("statvfs").total_bytes;
    lo.set_capacity(768 * MIB);
    resize(FsKind::Xfs, &lo.path, Some(dir.path()), MKFS).expect("xfs_growfs");
    let after = volume_stats(dir.path()).expect("statvfs").total_bytes;
    assert!(
        after > before + 128 * MIB,
        "expected xfs to grow by most of 256 MiB: {before} -> {after}"
    );
}

#[test]
fn statvfs_reports_usage_that_follows_writes() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(64 * MIB);
    format(&lo.path, FsKind::Ext4, permit_of(&lo.path), MKFS).expect("mkfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let _m = mount_ext4(&lo.path, dir.path());
    let s0 = volume_stats(dir.path()).expect("statvfs");
    assert!(
        s0.total_bytes > 32 * MIB && s0.total_bytes <= 64 * MIB,
        "total within the device: {s0:?}"
    );
    assert!(
        s0.available_bytes <= s0.total_bytes - s0.used_bytes,
        "available excludes reserved blocks: {s0:?}"
    );
    assert_eq!(s0.used_inodes, s0.total_inodes - s0.free_inodes);
    let f = dir.path().join("data");
    std::fs::write(&f, vec![1u8; 4 * MIB as usize]).expect("write 4 MiB");
    std::fs::File::open(&f)
        .and_then(|f| f.sync_all())
        .expect("fsync");
    let s1 = volume_stats(dir.path()).expect("statvfs");
    assert!(
        s1.used_bytes >= s0.used_bytes + 4 * MIB,
        "used must grow by the 4 MiB written: {s0:?} -> {s1:?}"
    );
    assert_eq!(s1.used_inodes, s0.used_inodes + 1, "one more inode in use");
}

#[test]
fn a_block_node_is_created_for_the_exact_device_number() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(16 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("vol");
    create_block_node(&node, lo.dev(), 0o660).expect("mknod");
    assert_eq!(
        check_block_node(&node, lo.dev()).expect("check"),
        NodeState::Matches
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&node).expect("stat").permissions().mode() & 0o777,
        0o660,
        "exact mode, umask ignored"
    );
    create_block_node(&node, lo.dev(), 0o660)
        .expect("a repeated publish of the same number is idempotent");
    let other = DevNum::new(lo.dev().major, lo.dev().minor + 1000);
    assert_eq!(
        check_block_node(&node, other).expect("check"),
        NodeState::Different(lo.dev())
    );
}

#[test]
fn a_node_for_another_device_is_neither_reused_nor_removed() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(16 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("vol");
    create_block_node(&node, lo.dev(), 0o600).expect("mknod");
    let other = DevNum::new(lo.dev().major, lo.dev().minor + 1000);
    let err = create_block_node(&node, other, 0o600)
        .expect_err("a node for another number must not be accepted");
    assert!(
        matches!(
            err,
            NodeError::Conflict {
                state: NodeState::Different(_),
                ..
            }
        ),
        "got {err:?}"
    );
    let err =
        remove_block_node(&node, other).expect_err("removing someone else's node must refuse");
    assert!(matches!(err, NodeError::Conflict { .. }), "got {err:?}");
    assert!(node.exists(), "the node is still there");
    assert!(
        remove_block_node(&node, lo.dev()).expect("remove ours"),
        "our node is removed"
    );
    assert_eq!(
        check_block_node(&node, lo.dev()).expect("check"),
        NodeState::Missing
    );
    assert!(
        !remove_block_node(&node, lo.dev()).expect("remove again"),
        "a second remove reports already gone"
    );
}

#[test]
fn a_regular_file_is_not_a_block_node_and_is_not_removed() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("file");
    std::fs::write(&f, b"user data").expect("write");
    let dev = DevNum::new(7, 0);
    assert_eq!(
        check_block_node(&f, dev).expect("check"),
        NodeState::NotABlockDevice
    );
    assert!(
        remove_block_node(&f, dev).is_err(),
        "a regular file must never be removed as a node"
    );
    assert_eq!(std::fs::read(&f).expect("read"), b"user data");
}
