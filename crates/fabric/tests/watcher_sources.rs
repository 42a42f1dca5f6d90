//! Source selection and message admission rules. Privileged: private mount and network
//! namespaces (injections never leave this process's netns).

rds_testkit::private_namespaces!();

mod common;

use std::path::Path;

use common::devices::{ctrl, expect_event, ns, skip_replay, NQN};
use rds_devices::source::{SourceKind, Sources};
use rds_devices::uevent::{encode_kernel, Action, GROUP_KERNEL};
use rds_devices::{spawn, DeviceEvent, WatcherConfig};
use rds_fabric::emulated::announce::Announcer;
use rds_fabric::emulated::tree::NvmeTree;
use rds_testkit::loopdev::LoopDev;
use rds_types::DevNum;

/// Tests here inject on group 2: they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[test]
fn auto_adds_the_udev_group_only_when_udevd_runs() {
    let run = tempfile::tempdir().unwrap();
    assert_eq!(
        SourceKind::Auto.resolve(run.path()),
        Sources {
            kernel: true,
            udev: false
        },
        "no <run>/udev/control: kernel group only"
    );
    std::fs::create_dir_all(run.path().join("udev")).unwrap();
    std::fs::write(run.path().join("udev/control"), b"").unwrap();
    assert_eq!(
        SourceKind::Auto.resolve(run.path()),
        Sources {
            kernel: true,
            udev: true
        }
    );
    assert_eq!(SourceKind::Both.resolve(run.path()).mask(), 0b11);
    assert_eq!(SourceKind::Udev.resolve(run.path()).mask(), 0b10);
    assert_eq!(SourceKind::Kernel.resolve(run.path()).mask(), 0b01);
}

#[tokio::test]
async fn kernel_format_message_from_user_space_is_ignored() {
    rds_testkit::require_private_namespaces();
    let _turn = SERIAL.lock().await;
    let run = tempfile::tempdir().unwrap();
    let (h, mut rx) =
        spawn(WatcherConfig::new("/sys", run.path()).with_sources(SourceKind::Kernel)).unwrap();
    skip_replay(&mut rx).await;
    // A forged kernel event for a device that does not exist, sent by a (root) process.
    let forged = encode_kernel(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/virtual/block/forged0"),
        ("SUBSYSTEM", "block"),
        ("MAJOR", "7"),
        ("MINOR", "999"),
        ("DEVNAME", "forged0"),
        ("DEVTYPE", "disk"),
        ("DISKSEQ", "1"),
        ("SEQNUM", "1"),
    ]);
    let sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT).unwrap();
    sock.send_to(&forged, &netlink_sys::SocketAddr::new(0, GROUP_KERNEL), 0)
        .expect("root may send to group 1");
    // Then a real kernel event; the socket delivers in order, so once it is seen the forged
    // message has been processed.
    let lo = LoopDev::add(Path::new("/dev"), 360).expect("LOOP_CTL_ADD");
    let name = lo.name();
    expect_event(
        &mut rx,
        "the real loop add",
        |e| matches!(e, DeviceEvent::BlockAdded(b) if b.name == name),
    )
    .await;
    assert!(
        h.block_by_name("forged0").is_none(),
        "a kernel-format message not sent by the kernel must be ignored"
    );
    drop(lo);
}

#[tokio::test]
async fn with_both_groups_a_udev_add_for_a_device_missing_from_sysfs_is_stale() {
    rds_testkit::require_private_namespaces();
    let _turn = SERIAL.lock().await;
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.add_subsystem(0, NQN).unwrap();
    tree.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    let (h, mut rx) =
        spawn(WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Both)).unwrap();
    skip_replay(&mut rx).await;
    let ann = Announcer::new().unwrap();
    // udevd's late re-broadcast of an add whose device is already gone from sysfs.
    let gone = ns("nvme0n9", 9, DevNum::new(259, 90), 900);
    ann.disk(
        Action::Add,
        "/devices/virtual/nvme-fabrics/ctl/nvme0/nvme0n9",
        &gone,
    )
    .unwrap();
    // Then one that is there.
    let live = ns("nvme0n1", 1, DevNum::new(259, 3), 41);
    let p = tree.add_namespace("nvme0", &live).unwrap();
    ann.disk(Action::Add, &p, &live).unwrap();
    expect_event(
        &mut rx,
        "NamespaceAdded for the present namespace",
        |e| matches!(e, DeviceEvent::NamespaceAdded { name, .. } if name == "nvme0n1"),
    )
    .await;
    assert!(
        h.block_by_name("nvme0n9").is_none(),
        "a stale udev add must not resurrect a device"
    );
}
