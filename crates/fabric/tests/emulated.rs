//! Privileged tests of the emulated fabric: real loop devices, real nodes, real ext4, real
//! uevents on netlink group 2, inside the test kit's private mount and network namespaces.

rds_testkit::private_namespaces!();

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rds_fabric::emulated::tree::{ControllerSpec, NvmeTree};
use rds_fabric::loopdev::LoopControl;
use rds_fabric::{
    ConnectRequest, ControllerState, EmulatedConfig, EmulatedFabric, Fabric, FabricError,
};
use rds_types::{DevNum, DiskSeq, ManagedPrefix, Nqn};

const PREFIX: &str = "nqn.2000-02.com.mikrotik:pvc-";
const SIZE: u64 = 64 << 20;

struct Fixture {
    fabric: EmulatedFabric,
    sys: PathBuf,
    dev: PathBuf,
    // Dropped last: the fabric detaches its loop devices before the directory goes.
    dir: tempfile::TempDir,
}

fn fixture_with(multipath: bool, inject_uevents: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    let fabric = EmulatedFabric::new(EmulatedConfig {
        multipath,
        inject_uevents,
        ..EmulatedConfig::under(
            dir.path(),
            ManagedPrefix::parse(PREFIX).unwrap(),
            LoopControl::new("/dev", "/sys"),
        )
    })
    .expect("emulated fabric");
    Fixture {
        fabric,
        sys,
        dev,
        dir,
    }
}

fn fixture() -> Fixture {
    fixture_with(false, false)
}

fn nqn(name: &str) -> Nqn {
    Nqn::parse(&format!("{PREFIX}{name}")).unwrap()
}

fn request(nqn: &Nqn) -> ConnectRequest {
    let mut r = ConnectRequest::tcp(nqn.clone(), "10.0.0.5".parse().unwrap(), 4420);
    r.ctrl_loss_tmo = Some(-1);
    r
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn node_identity(path: &Path) -> DevNum {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        m.file_type().is_block_device(),
        "{} must be a block node",
        path.display()
    );
    DevNum::from_dev_t(m.rdev())
}

fn connected(f: &Fixture, name: &str) -> (Nqn, PathBuf) {
    let n = nqn(name);
    let backing = f.fabric.add_target(&n, SIZE).unwrap();
    f.fabric.connect(&request(&n)).expect("connect");
    (n, backing)
}

#[test]
fn connect_builds_tree_node_and_loop_with_one_identity() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let n = nqn("a");
    let backing = f.fabric.add_target(&n, SIZE).unwrap();
    let out = f.fabric.connect(&request(&n)).expect("connect");
    assert!(!out.already_connected);
    let (name, dev, seq) = f.fabric.namespace_of(&n).expect("namespace after connect");
    assert_eq!(
        name,
        format!("{}n1", out.controller),
        "non-multipath namespace is nvmeNn1"
    );

    let ctrl = f.fabric.controllers().unwrap();
    assert_eq!(ctrl.len(), 1);
    assert_eq!(ctrl[0].name, out.controller);
    assert_eq!(ctrl[0].subsysnqn, n.as_str());
    assert_eq!(ctrl[0].state, ControllerState::Live);
    assert_eq!(
        ctrl[0].address, "traddr=10.0.0.5,trsvcid=4420,src_addr=10.0.0.5",
        "as the kernel prints it for TCP"
    );

    let disk = f.sys.join("block").join(&name);
    assert_eq!(
        attr(&disk, "dev"),
        Some(dev.to_string()),
        "sysfs dev is the loop's"
    );
    assert_eq!(
        attr(&disk, "diskseq"),
        Some(seq.to_string()),
        "sysfs diskseq is the loop's"
    );
    assert_eq!(attr(&disk, "size"), Some((SIZE / 512).to_string()));
    assert_eq!(attr(&disk, "nsid").as_deref(), Some("1"));
    assert!(
        attr(&disk, "uuid").is_some(),
        "the namespace reports a uuid"
    );

    let loop_name = f.fabric.loop_of(&n).unwrap();
    assert_eq!(
        attr(Path::new(&format!("/sys/block/{loop_name}")), "dev"),
        Some(dev.to_string()),
        "the namespace's number is the real loop device's"
    );
    assert_eq!(
        attr(Path::new(&format!("/sys/block/{loop_name}")), "diskseq"),
        Some(seq.to_string()),
        "the namespace's diskseq is the real loop device's"
    );
    assert_eq!(
        common::loop_backing(&loop_name).as_deref(),
        backing.to_str()
    );
    assert_eq!(
        node_identity(&f.dev.join(&name)),
        dev,
        "the node carries the loop's number"
    );
}

#[test]
fn writes_through_the_namespace_node_reach_the_backing_file() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, backing) = connected(&f, "a");
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let mut node = OpenOptions::new()
        .write(true)
        .open(f.dev.join(&name))
        .unwrap();
    node.seek(SeekFrom::Start(1 << 20)).unwrap();
    node.write_all(&[0x5a; 4096]).unwrap();
    node.sync_all().unwrap();
    let mut buf = [0u8; 4096];
    File::open(&backing)
        .unwrap()
        .read_exact_at(&mut buf, 1 << 20)
        .unwrap();
    assert!(
        buf.iter().all(|b| *b == 0x5a),
        "the backing file must hold what was written to the node"
    );
}

#[test]
fn repeat_connect_is_a_no_op() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let before = f.fabric.namespace_of(&n).unwrap();
    let first = f.fabric.controller_of(&n).unwrap();
    let again = f.fabric.connect(&request(&n)).expect("repeat connect");
    assert!(
        again.already_connected,
        "a repeat connect must report the existing controller"
    );
    assert_eq!(again.controller, first);
    assert_eq!(
        f.fabric.namespace_of(&n).unwrap(),
        before,
        "nothing may change on a repeat connect"
    );
    assert_eq!(f.fabric.controllers().unwrap().len(), 1);
}

#[test]
fn connect_to_an_unknown_target_is_refused() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let err = f.fabric.connect(&request(&nqn("nobody"))).unwrap_err();
    assert!(
        matches!(err, FabricError::Refused { .. }),
        "expected Refused, got {err:?}"
    );
}

/// Another volume's controller takes the number `n`'s controller freed.
fn take_the_freed_number(f: &Fixture) {
    let (other, _) = connected(f, "filler");
    assert!(f.fabric.controller_of(&other).is_some());
}

#[test]
fn after_a_deletion_a_connect_with_the_number_taken_brings_a_new_name_number_and_diskseq() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let old_ctrl = f.fabric.controller_of(&n).unwrap();
    let (old_name, old_dev, old_seq) = f.fabric.namespace_of(&n).unwrap();
    f.fabric.lose_controller(&n).unwrap();
    take_the_freed_number(&f);
    f.fabric.restore_port(&n).unwrap();
    let out = f.fabric.connect(&request(&n)).expect("reconnect");
    let (name, dev, seq) = f.fabric.namespace_of(&n).unwrap();
    assert_ne!(
        out.controller, old_ctrl,
        "the freed number is taken: a new one"
    );
    assert_ne!(name, old_name, "and a new namespace name");
    assert_ne!(dev, old_dev, "and a new major:minor");
    assert!(seq > old_seq, "and a newer diskseq ({old_seq} then {seq})");
    assert_eq!(node_identity(&f.dev.join(&name)), dev);
    assert_eq!(
        attr(&f.sys.join("block").join(&name), "diskseq"),
        Some(seq.to_string())
    );
}

#[test]
fn after_a_deletion_a_connect_reuses_the_lowest_number_like_the_kernel() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let old_ctrl = f.fabric.controller_of(&n).unwrap();
    let (old_name, old_dev, old_seq) = f.fabric.namespace_of(&n).unwrap();
    f.fabric.lose_controller(&n).unwrap();
    assert!(
        f.fabric.namespace_of(&n).is_none(),
        "nothing comes back by itself after a deletion"
    );
    f.fabric.restore_port(&n).unwrap();
    assert!(
        f.fabric.namespace_of(&n).is_none(),
        "not even when the port is back: someone must connect"
    );
    let out = f.fabric.connect(&request(&n)).expect("reconnect");
    let (name, dev, seq) = f.fabric.namespace_of(&n).unwrap();
    assert_eq!(out.controller, old_ctrl);
    assert_eq!(name, old_name, "the same name comes back");
    assert!(seq > old_seq, "with a newer diskseq ({old_seq} then {seq})");
    // The kernel gave the new head the same 259:1; here the freed loop number comes back
    // the same way, or another one: only diskseq tells the incarnations apart.
    let _ = old_dev;
    assert_eq!(node_identity(&f.dev.join(&name)), dev);
}

#[test]
fn a_reconnected_namespace_shows_the_same_data() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let node = OpenOptions::new()
        .write(true)
        .open(f.dev.join(&name))
        .unwrap();
    node.write_all_at(b"still here", 0).unwrap();
    node.sync_all().unwrap();
    drop(node);
    f.fabric.reconnect(&n).unwrap();
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let mut buf = [0u8; 10];
    File::open(f.dev.join(&name))
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    assert_eq!(
        &buf, b"still here",
        "a reconnect is the same namespace on a new device"
    );
}

#[test]
fn a_lost_port_leaves_the_controller_connecting_and_its_return_makes_it_live_on_the_same_device() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let before = f.fabric.namespace_of(&n).unwrap();
    f.fabric.lose_port(&n).unwrap();
    assert_eq!(
        f.fabric.controllers().unwrap()[0].state,
        ControllerState::Connecting
    );
    assert_eq!(
        f.fabric.namespace_of(&n),
        Some(before.clone()),
        "the device stays"
    );
    let err = f.fabric.connect(&request(&nqn("b"))).unwrap_err();
    assert!(matches!(err, FabricError::Refused { .. }), "{err:?}");
    f.fabric.restore_port(&n).unwrap();
    assert_eq!(
        f.fabric.controllers().unwrap()[0].state,
        ControllerState::Live
    );
    assert_eq!(f.fabric.namespace_of(&n), Some(before), "the same device");
}

#[test]
fn a_lost_port_is_deleted_by_itself_once_ctrl_loss_tmo_runs_out_and_connects_are_refused() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let n = nqn("a");
    f.fabric.add_target(&n, SIZE).unwrap();
    let mut req = request(&n);
    req.ctrl_loss_tmo = Some(1);
    f.fabric.connect(&req).unwrap();
    f.fabric.lose_port(&n).unwrap();
    // Waited for, not timed: the deletion comes after the controller's own 1 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while f.fabric.controller_of(&n).is_some() {
        assert!(std::time::Instant::now() < deadline, "never deleted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(f.fabric.controllers().unwrap().is_empty());
    let err = f.fabric.connect(&req).unwrap_err();
    assert!(
        matches!(err, FabricError::Refused { .. }),
        "the port is still down: {err:?}"
    );
}

#[test]
fn a_deleted_namespace_stops_working_while_its_backing_keeps_the_data() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, backing) = connected(&f, "a");
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let node = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.dev.join(&name))
        .unwrap();
    let mut block = vec![7u8; 8192];
    node.write_all_at(&block, 1 << 20).unwrap();
    node.sync_all().unwrap();
    f.fabric.lose_controller(&n).unwrap();
    let w = node
        .write_all_at(&block, 1 << 20)
        .and_then(|_| node.sync_all());
    assert!(w.is_err(), "a write to the deleted device must fail");
    let r = node.read_at(&mut block, 1 << 20).unwrap_or(0);
    assert_eq!(r, 0, "nothing past the cut can be read");
    let mut back = vec![0u8; 8192];
    File::open(&backing)
        .unwrap()
        .read_exact_at(&mut back, 1 << 20)
        .unwrap();
    assert_eq!(back, vec![7u8; 8192], "the backing file keeps every byte");
}

#[test]
fn a_disabled_namespace_goes_while_the_controller_stays_live_and_comes_back_as_a_new_incarnation() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let (name, _, seq) = f.fabric.namespace_of(&n).unwrap();
    f.fabric.disable_namespace(&n).unwrap();
    assert!(f.fabric.namespace_of(&n).is_none());
    assert!(!f.dev.join(&name).exists());
    assert_eq!(
        f.fabric.controllers().unwrap()[0].state,
        ControllerState::Live,
        "the controller stays"
    );
    f.fabric.enable_namespace(&n).unwrap();
    let (again, _, new_seq) = f.fabric.namespace_of(&n).unwrap();
    assert_eq!(again, name);
    assert!(new_seq > seq);
}

#[test]
fn a_replaced_namespace_has_another_uuid_after_the_next_connect() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let before = f.fabric.uuid_of(&n).unwrap();
    f.fabric.lose_controller(&n).unwrap();
    f.fabric.replace_namespace(&n).unwrap();
    f.fabric.restore_port(&n).unwrap();
    f.fabric.connect(&request(&n)).unwrap();
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let uuid = attr(&f.sys.join("block").join(&name), "uuid").unwrap();
    assert_ne!(uuid, before);
    assert_eq!(Some(uuid), f.fabric.uuid_of(&n));
}

#[test]
fn lose_controller_removes_namespace_and_controller_and_frees_the_loop() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, backing) = connected(&f, "a");
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let loop_name = f.fabric.loop_of(&n).unwrap();
    f.fabric.lose_controller(&n).unwrap();
    assert!(f.fabric.namespace_of(&n).is_none());
    assert!(
        f.fabric.controllers().unwrap().is_empty(),
        "no controller is left"
    );
    assert!(!f.sys.join("block").join(&name).exists());
    assert!(!f.dev.join(&name).exists());
    common::await_loop_released(&loop_name, &backing);
    // The target itself survives: once its port is back, a connect creates new devices.
    f.fabric.restore_port(&n).unwrap();
    let out = f.fabric.connect(&request(&n)).unwrap();
    assert!(!out.already_connected);
}

#[test]
fn disconnect_cleans_up_tree_node_and_loop() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, backing) = connected(&f, "a");
    let ctrl = f.fabric.controller_of(&n).unwrap();
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let loop_name = f.fabric.loop_of(&n).unwrap();
    f.fabric.disconnect(&ctrl).expect("disconnect");
    assert!(f.fabric.controllers().unwrap().is_empty());
    assert!(!f.sys.join("block").join(&name).exists());
    assert!(
        !f.sys.join("class/nvme-subsystem/nvme-subsys0").exists(),
        "the subsystem goes with its last controller"
    );
    assert!(!f.dev.join(&name).exists());
    common::await_loop_released(&loop_name, &backing);
}

fn foreign_controller(f: &Fixture, instance: u32, nqn: &str) {
    let tree = NvmeTree::new(&f.sys);
    tree.add_subsystem(100 + instance, nqn).unwrap();
    tree.add_controller(&ControllerSpec {
        name: format!("nvme{instance}"),
        subsysnqn: nqn.into(),
        transport: "tcp".into(),
        traddr: "10.0.0.9".into(),
        trsvcid: "4420".into(),
        state: "live".into(),
        cntlid: 1,
        hostnqn: String::new(),
        hostid: String::new(),
        dev: DevNum::new(240, 200 + instance),
        ctrl_loss_tmo: None,
        reconnect_delay: None,
    })
    .unwrap();
}

#[test]
fn disconnect_refuses_a_controller_outside_the_prefix() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    foreign_controller(&f, 0, "nqn.2000-02.com.mikrotik:boot-node1");
    let err = f.fabric.disconnect("nvme0").unwrap_err();
    assert!(
        matches!(err, FabricError::NotManaged { .. }),
        "expected NotManaged, got {err:?}"
    );
    assert!(
        f.sys.join("class/nvme/nvme0").exists(),
        "the foreign controller must be untouched"
    );
}

#[test]
fn controller_numbers_skip_what_already_exists_under_the_root() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    foreign_controller(&f, 0, "nqn.2000-02.com.mikrotik:boot-node1");
    let (n, _) = connected(&f, "a");
    assert_eq!(
        f.fabric.controller_of(&n).as_deref(),
        Some("nvme1"),
        "nvme0 is taken"
    );
    assert_eq!(f.fabric.controllers().unwrap().len(), 2);
}

#[test]
fn two_targets_get_distinct_controllers_and_devices() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (a, _) = connected(&f, "a");
    let (b, _) = connected(&f, "b");
    let (na, da, _) = f.fabric.namespace_of(&a).unwrap();
    let (nb, db, _) = f.fabric.namespace_of(&b).unwrap();
    assert_ne!(na, nb);
    assert_ne!(da, db);
}

#[test]
fn multipath_exposes_a_subsystem_head_and_a_hidden_path() {
    rds_testkit::require_private_namespaces();
    let f = fixture_with(true, false);
    let (n, _) = connected(&f, "a");
    let ctrl = f.fabric.controller_of(&n).unwrap();
    let (name, dev, _) = f.fabric.namespace_of(&n).unwrap();
    let subsys = std::fs::read_dir(f.sys.join("class/nvme-subsystem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let k = subsys.trim_start_matches("nvme-subsys");
    assert_eq!(name, format!("nvme{k}n1"), "the block device is the head");
    assert!(
        f.sys
            .join("devices/virtual/nvme-subsystem")
            .join(&subsys)
            .join(&name)
            .is_dir(),
        "the head sits under the subsystem"
    );
    let path = f
        .sys
        .join("block")
        .join(format!("nvme{k}c{}n1", ctrl.trim_start_matches("nvme")));
    assert_eq!(
        attr(&path, "hidden").as_deref(),
        Some("1"),
        "the per-path disk is hidden"
    );
    assert_eq!(
        attr(&f.sys.join("module/nvme_core/parameters"), "multipath").as_deref(),
        Some("Y")
    );
    assert_eq!(node_identity(&f.dev.join(&name)), dev);
    assert!(
        !path.join("dev").exists(),
        "a hidden path has no device number (as on the kernel)"
    );
    f.fabric.lose_controller(&n).unwrap();
    take_the_freed_number(&f);
    f.fabric.restore_port(&n).unwrap();
    let out = f.fabric.connect(&request(&n)).unwrap();
    let (new_name, _, _) = f.fabric.namespace_of(&n).unwrap();
    assert_ne!(
        new_name, name,
        "a controller with another number has another head name"
    );
    assert_ne!(out.controller, ctrl);
}

/// Unmounts (lazily) on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn kill_path_makes_the_mounted_filesystem_fail_with_eio() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, _) = connected(&f, "a");
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let node = f.dev.join(&name);
    let status = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
        ])
        .arg(&node)
        .status()
        .expect("run mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 failed: {status}");
    let mnt = f.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some(&node),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount ext4");
    let _mounted = Mounted(mnt.clone());
    let data = mnt.join("data");
    let mut file = File::create(&data).unwrap();
    file.write_all(&[7u8; 8192]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    f.fabric.kill_path(&n).expect("kill path");

    let mut buf = vec![0u8; 4096];
    // O_DIRECT bypasses the page cache: the read must reach the dead device.
    let aligned = {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: non-zero size; freed below with the same layout.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        (p, layout)
    };
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&data);
    let read = direct.and_then(|fh| {
        // SAFETY: `aligned.0` points to 4096 writable bytes.
        let slice = unsafe { std::slice::from_raw_parts_mut(aligned.0, 4096) };
        fh.read_at(slice, 0)
    });
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(aligned.0, aligned.1) };
    let err = read.expect_err("a read from a dead path must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "expected EIO on read, got {err}"
    );

    let write = File::create(mnt.join("new"))
        .and_then(|mut fh| fh.write_all(&buf).and_then(|_| fh.sync_all()));
    let err = write.expect_err("a write + fsync on a dead path must fail");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::EROFS)),
        "expected EIO (or EROFS once ext4 aborted), got {err}"
    );
    buf.clear();
}

#[test]
fn disconnect_of_a_mounted_namespace_keeps_the_loop_until_unmount() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (n, backing) = connected(&f, "a");
    let (name, _, _) = f.fabric.namespace_of(&n).unwrap();
    let loop_name = f.fabric.loop_of(&n).unwrap();
    let node = f.dev.join(&name);
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&node)
        .status()
        .unwrap()
        .success());
    let mnt = f.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some(&node),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount ext4");
    let mounted = Mounted(mnt.clone());
    f.fabric
        .disconnect(&f.fabric.controller_of(&n).unwrap())
        .expect("disconnect");
    assert!(!node.exists(), "the node goes away with the namespace");
    assert_eq!(
        common::loop_backing(&loop_name).as_deref(),
        backing.to_str(),
        "the loop device lives on while mounted (autoclear)"
    );
    drop(mounted);
    common::await_loop_released(&loop_name, &backing);
}

#[test]
fn shutdown_detaches_every_loop_device() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (a, ba) = connected(&f, "a");
    let (b, bb) = connected(&f, "b");
    let la = f.fabric.loop_of(&a).unwrap();
    let lb = f.fabric.loop_of(&b).unwrap();
    f.fabric.shutdown();
    common::await_loop_released(&la, &ba);
    common::await_loop_released(&lb, &bb);
    assert!(f.fabric.namespace_of(&a).is_none());
}

#[test]
fn dropping_the_fabric_detaches_its_loop_devices() {
    rds_testkit::require_private_namespaces();
    let f = fixture();
    let (a, ba) = connected(&f, "a");
    let la = f.fabric.loop_of(&a).unwrap();
    drop(f);
    common::await_loop_released(&la, &ba);
}

/// A group-2 listener, bound before the events are sent.
fn udev_listener() -> netlink_sys::Socket {
    let mut sock =
        netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT).unwrap();
    sock.bind(&netlink_sys::SocketAddr::new(0, 2)).unwrap();
    sock.set_non_blocking(false).unwrap();
    sock
}

/// Receive events until `want` events whose DEVNAME lies under `dev_root` (or, for subsystem
/// events, none) have arrived; events of other fixtures running in parallel are skipped.
fn receive_ours(
    sock: &netlink_sys::Socket,
    dev_root: &Path,
    want: usize,
) -> Vec<rds_devices::uevent::Uevent> {
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval on our own socket.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let root = dev_root.to_str().unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    while out.len() < want {
        let n = sock.recv(&mut &mut buf[..], 0).unwrap_or_else(|e| {
            panic!(
                "waiting for {want} events, got {} ({e}): {out:?}",
                out.len()
            )
        });
        let ev = rds_devices::uevent::parse(&buf[..n]).expect("a parsable udev event");
        if ev.devname.as_deref().is_some_and(|d| d.starts_with(root)) {
            out.push(ev);
        }
    }
    out
}

#[test]
fn connect_reconnect_and_disconnect_send_the_udev_events_a_kernel_would() {
    rds_testkit::require_private_namespaces();
    let sock = udev_listener();
    let f = fixture_with(false, true);
    let (n, _) = connected(&f, "a");
    let (name, dev, seq) = f.fabric.namespace_of(&n).unwrap();
    let ctrl = f.fabric.controller_of(&n).unwrap();
    let evs = receive_ours(&sock, &f.dev, 3);
    assert_eq!(
        (evs[0].subsystem.as_str(), evs[0].action.as_str()),
        ("nvme", "add"),
        "{evs:?}"
    );
    assert_eq!(evs[0].kernel_name(), ctrl);
    assert_eq!(evs[0].get("NVME_TRADDR"), Some("10.0.0.5"));
    assert_eq!(evs[0].get("NVME_HOST_TRADDR"), Some("none"));
    assert_eq!(
        (evs[1].subsystem.as_str(), evs[1].get("NVME_EVENT")),
        ("nvme", Some("connected")),
        "{evs:?}"
    );
    let evs = &evs[1..];
    assert_eq!(
        (evs[1].subsystem.as_str(), evs[1].action.as_str()),
        ("block", "add"),
        "{evs:?}"
    );
    assert_eq!(evs[1].devtype.as_deref(), Some("disk"));
    assert_eq!(evs[1].kernel_name(), name);
    assert_eq!(evs[1].dev, Some(dev));
    assert_eq!(evs[1].diskseq, Some(seq));
    assert!(
        f.sys
            .join(evs[1].devpath.trim_start_matches('/'))
            .join("dev")
            .exists(),
        "DEVPATH {} must point into the fake tree",
        evs[1].devpath
    );

    // A lost port sends nothing (the kernel's first event is the deletion or the return).
    f.fabric.lose_port(&n).unwrap();
    f.fabric.restore_port(&n).unwrap();
    let evs = receive_ours(&sock, &f.dev, 2);
    let summary: Vec<_> = evs
        .iter()
        .map(|e| (e.subsystem.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        summary,
        [("block", "change"), ("nvme", "change")],
        "a reconnect that succeeds: the head's change (same diskseq), then `connected`"
    );
    assert_eq!(evs[0].diskseq, Some(seq));
    assert_eq!(evs[1].get("NVME_EVENT"), Some("connected"));

    f.fabric.reconnect(&n).unwrap();
    let (_, new_dev, new_seq) = f.fabric.namespace_of(&n).unwrap();
    let evs = receive_ours(&sock, &f.dev, 5);
    let summary: Vec<_> = evs
        .iter()
        .map(|e| (e.subsystem.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("block", "remove"),
            ("nvme", "remove"),
            ("nvme", "add"),
            ("nvme", "change"),
            ("block", "add"),
        ],
        "deletion, then a new connect: the kernel's order"
    );
    assert_eq!(
        evs[0].diskseq,
        Some(seq),
        "the remove names the old incarnation"
    );
    assert_eq!(evs[3].get("NVME_EVENT"), Some("connected"));
    assert_eq!((evs[4].dev, evs[4].diskseq), (Some(new_dev), Some(new_seq)));
    assert_ne!(new_seq, DiskSeq(0));

    f.fabric.disconnect(&ctrl).unwrap();
    let evs = receive_ours(&sock, &f.dev, 2);
    let summary: Vec<_> = evs
        .iter()
        .map(|e| (e.subsystem.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(summary, [("block", "remove"), ("nvme", "remove")]);
}

/// The device watcher's own scanner and resolver, run over the emulated tree.
fn resolve(f: &Fixture, n: &Nqn) -> Option<rds_devices::model::NamespaceDevice> {
    let snap = rds_devices::scan::SysfsReader::new(&f.sys)
        .scan()
        .expect("scan the emulated tree");
    let mut model = rds_devices::model::Model::new();
    model.reconcile(snap);
    model.resolve(n.as_str(), Some(1))
}

#[test]
fn the_device_watchers_resolver_finds_the_emulated_namespace_and_its_replacement() {
    rds_testkit::require_private_namespaces();
    for multipath in [false, true] {
        let f = fixture_with(multipath, false);
        let (n, _) = connected(&f, "a");
        let (name, dev, seq) = f.fabric.namespace_of(&n).unwrap();
        let found = resolve(&f, &n)
            .unwrap_or_else(|| panic!("multipath={multipath}: the resolver must find {n}"));
        assert_eq!(found.name, name, "multipath={multipath}");
        assert_eq!(found.identity.dev, dev, "multipath={multipath}");
        assert_eq!(found.identity.diskseq, Some(seq), "multipath={multipath}");
        assert_eq!(found.state, Some(ControllerState::Live));

        f.fabric.reconnect(&n).unwrap();
        let (_, new_dev, new_seq) = f.fabric.namespace_of(&n).unwrap();
        let again = resolve(&f, &n).expect("resolvable after the reconnect");
        assert_eq!(
            (again.identity.dev, again.identity.diskseq),
            (new_dev, Some(new_seq)),
            "multipath={multipath}: the resolver must see the new incarnation"
        );
        f.fabric.lose_controller(&n).unwrap();
        assert!(
            resolve(&f, &n).is_none(),
            "multipath={multipath}: nothing after the loss"
        );
    }
}

/// Cluster mode: targets made on first connect, state that outlives the fabric.
fn cluster_config(dir: &Path) -> EmulatedConfig {
    EmulatedConfig {
        create_on_connect: Some(SIZE),
        persist: Some(dir.join("fabric-state.json")),
        ..EmulatedConfig::under(
            dir,
            ManagedPrefix::parse(PREFIX).unwrap(),
            LoopControl::new("/dev", "/sys"),
        )
    }
}

#[test]
fn cluster_mode_creates_targets_on_first_connect_sized_by_the_hint_and_keeps_their_data() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let n = nqn("made-on-connect");
    {
        let f = EmulatedFabric::new(cluster_config(dir.path())).unwrap();
        let mut r = request(&n);
        r.capacity_hint = Some(32 << 20);
        f.connect(&r).expect("a connect creates the target");
        let backing = dir.path().join("targets").join(format!("{n}.img"));
        let m = std::fs::metadata(&backing).unwrap();
        assert_eq!(m.len(), 32 << 20, "sized by the request's hint");
        assert!(m.blocks() * 512 < m.len(), "sparse");
        // A byte on the device, then the target and its connection go (disconnect).
        let (name, _, _) = f.namespace_of(&n).unwrap();
        let dev = OpenOptions::new()
            .write(true)
            .open(dir.path().join("dev").join(&name))
            .unwrap();
        dev.write_all_at(b"kept", 4096).unwrap();
        dev.sync_all().unwrap();
        drop(dev);
        f.disconnect(&f.controller_of(&n).unwrap()).unwrap();
    }
    // Another fabric without the state file (it was wiped): the image is reused, not zeroed.
    std::fs::remove_file(dir.path().join("fabric-state.json")).unwrap();
    let f = EmulatedFabric::new(cluster_config(dir.path())).unwrap();
    f.connect(&request(&n)).expect("connect again");
    let (name, _, _) = f.namespace_of(&n).unwrap();
    let mut buf = [0u8; 4];
    File::open(dir.path().join("dev").join(&name))
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    assert_eq!(&buf, b"kept", "an existing image is the target's data");
    f.disconnect(&f.controller_of(&n).unwrap()).unwrap();

    // Without cluster mode an unknown subsystem is refused, as a real target does.
    let plain = fixture();
    assert!(matches!(
        plain.fabric.connect(&request(&nqn("nobody-added"))),
        Err(FabricError::Refused { .. })
    ));
}

#[test]
fn cluster_mode_connections_outlive_the_fabric_and_are_adopted_by_the_next() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (nqn("survives"), nqn("reused-meanwhile"));
    let (dev_a, seq_a, loop_b, name_b) = {
        let f = EmulatedFabric::new(cluster_config(dir.path())).unwrap();
        f.connect(&request(&a)).unwrap();
        f.connect(&request(&b)).unwrap();
        f.lose_port(&a).unwrap();
        let (_, dev, seq) = f.namespace_of(&a).unwrap();
        let (name_b, _, _) = f.namespace_of(&b).unwrap();
        (dev, seq, f.loop_of(&b).unwrap(), name_b)
        // Dropped: a plugin restart. The kernel keeps its controllers.
    };
    // Someone detaches b's loop device while no plugin runs: its binding is not ours anymore.
    let st = Command::new("losetup")
        .arg("-d")
        .arg(format!("/dev/{loop_b}"))
        .status()
        .unwrap();
    assert!(st.success());
    // And someone put a file of their own where b's node was: it is not ours to remove.
    let node_b = dir.path().join("dev").join(&name_b);
    std::fs::remove_file(&node_b).unwrap();
    std::fs::write(&node_b, b"not a device node").unwrap();

    let f = EmulatedFabric::new(cluster_config(dir.path())).unwrap();
    let (name, dev, seq) = f.namespace_of(&a).expect("a's namespace adopted");
    assert_eq!(
        (dev, seq),
        (dev_a, seq_a),
        "the same device, the same incarnation"
    );
    assert_eq!(
        f.controller_state(&a),
        Some(ControllerState::Connecting),
        "still reconnecting: the port is still down"
    );
    assert_eq!(node_identity(&dir.path().join("dev").join(&name)), dev);
    assert!(
        f.namespace_of(&b).is_none(),
        "a namespace whose loop device was detached meanwhile is gone, not someone else's"
    );
    assert!(f.controller_of(&b).is_some(), "its controller stays");
    assert_eq!(
        std::fs::read(&node_b).unwrap(),
        b"not a device node",
        "only a block node of the namespace's own number is removed"
    );
    // The adopted connection behaves like any other: the port comes back, then a disconnect
    // detaches the loop device.
    f.restore_port(&a).unwrap();
    assert_eq!(f.controller_state(&a), Some(ControllerState::Live));
    let loop_a = f.loop_of(&a).unwrap();
    for n in [&a, &b] {
        f.disconnect(&f.controller_of(n).unwrap()).unwrap();
    }
    // Another test may take the freed number at once: what matters is that it no longer
    // carries a's image.
    let image_a = dir.path().join("targets").join(format!("{a}.img"));
    let bound_to = std::fs::read_to_string(
        Path::new("/sys/block")
            .join(&loop_a)
            .join("loop/backing_file"),
    )
    .unwrap_or_default();
    assert_ne!(
        Path::new(bound_to.trim()),
        image_a,
        "the adopted loop device is detached on disconnect"
    );
}
