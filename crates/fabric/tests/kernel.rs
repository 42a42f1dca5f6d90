//! KernelFabric against a fake device root and a fake sysfs tree (written by rds-devices'
//! NvmeTree, the same writer the emulated fabric uses).
//!
//! `<dev>/nvme-fabrics` is stood in for by a pseudo-terminal in raw mode: like the real misc
//! device it is one file descriptor on which the client writes its options line and then reads
//! the reply produced by the other side (here a test thread on the pty master, playing the
//! kernel). Nothing here needs privileges.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use rds_fabric::emulated::tree::{ControllerSpec, NvmeTree};
use rds_fabric::{ConnectRequest, ControllerState, Fabric, FabricError, KernelFabric};
use rds_types::{DevNum, ManagedPrefix, Nqn};

const PREFIX: &str = "nqn.2000-02.com.mikrotik:pvc-";
const VOLUME: &str = "nqn.2000-02.com.mikrotik:pvc-0b5a6c1e";
const BOOT: &str = "nqn.2000-02.com.mikrotik:boot-node1";

struct Roots {
    _dir: tempfile::TempDir,
    dev: PathBuf,
    sys: PathBuf,
    tree: NvmeTree,
}

fn roots() -> Roots {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let sys = dir.path().join("sys");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&sys).unwrap();
    let tree = NvmeTree::new(&sys);
    Roots {
        _dir: dir,
        dev,
        sys,
        tree,
    }
}

fn fabric(r: &Roots) -> KernelFabric {
    KernelFabric::new(&r.dev, &r.sys, ManagedPrefix::parse(PREFIX).unwrap())
}

fn request(nqn: &str) -> ConnectRequest {
    let mut req = ConnectRequest::tcp(Nqn::parse(nqn).unwrap(), "10.0.0.5".parse().unwrap(), 4420);
    req.host_nqn = Some("nqn.2014-08.org.nvmexpress:uuid:5a1e".into());
    req.ctrl_loss_tmo = Some(-1);
    req.reconnect_delay = Some(5);
    req
}

fn add_controller(r: &Roots, instance: u32, nqn: &str, state: &str) {
    if r.tree.find_subsystem(nqn).unwrap().is_none() {
        r.tree.add_subsystem(instance, nqn).unwrap();
    }
    r.tree
        .add_controller(&ControllerSpec {
            name: format!("nvme{instance}"),
            subsysnqn: nqn.into(),
            transport: "tcp".into(),
            traddr: "10.0.0.5".into(),
            trsvcid: "4420".into(),
            state: state.into(),
            cntlid: 1,
            hostnqn: String::new(),
            hostid: String::new(),
            dev: DevNum::new(240, instance),
            ctrl_loss_tmo: Some(-1),
            reconnect_delay: Some(5),
        })
        .unwrap();
    // The real attribute exists; an empty file records any write made to it.
    File::create(
        r.sys
            .join(format!("class/nvme/nvme{instance}/delete_controller")),
    )
    .unwrap();
}

fn delete_controller_contents(r: &Roots, ctrl: &str) -> String {
    std::fs::read_to_string(
        r.sys
            .join("class/nvme")
            .join(ctrl)
            .join("delete_controller"),
    )
    .unwrap()
}

/// A raw-mode pty standing in for `/dev/nvme-fabrics`: `<dev>/nvme-fabrics` links to the slave;
/// a thread on the master receives one options line and answers `reply`.
struct FakeFabricsDevice {
    line: mpsc::Receiver<String>,
    _slave: File,
}

fn serve_fabrics_device(dev_root: &Path, reply: &'static str) -> FakeFabricsDevice {
    // SAFETY: plain libc pty calls; every fd is owned by an OwnedFd/File right away.
    let (master, slave_path) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let path = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_str()
            .unwrap()
            .to_owned();
        (master, path)
    };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&slave_path)
        .unwrap();
    // Raw mode: no echo (the client must read only the reply), no line editing.
    // SAFETY: termios is plain data, initialised by tcgetattr before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    std::os::unix::fs::symlink(&slave_path, dev_root.join("nvme-fabrics")).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut master = File::from(master);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let n = master.read(&mut buf).unwrap();
        tx.send(String::from_utf8_lossy(&buf[..n]).into_owned())
            .unwrap();
        master.write_all(reply.as_bytes()).unwrap();
        // Keep the master open until the client has read the reply.
        let _ = master.read(&mut buf);
    });
    FakeFabricsDevice {
        line: rx,
        _slave: slave,
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}
impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY)
    }
}

#[test]
fn connect_writes_one_options_line_and_returns_the_new_controller() {
    let r = roots();
    let device = serve_fabrics_device(&r.dev, "instance=7,cntlid=3\n");
    let out = fabric(&r).connect(&request(VOLUME)).expect("connect");
    assert_eq!(
        out.controller, "nvme7",
        "the controller is nvme<instance> from the reply"
    );
    assert!(!out.already_connected);
    assert_eq!(
        device.line.recv().unwrap(),
        format!(
            "transport=tcp,traddr=10.0.0.5,trsvcid=4420,nqn={VOLUME},\
             hostnqn=nqn.2014-08.org.nvmexpress:uuid:5a1e,ctrl_loss_tmo=-1,reconnect_delay=5"
        ),
        "the device must receive exactly the kernel's options line"
    );
}

#[test]
fn connect_reuses_a_live_controller_without_touching_the_device() {
    let r = roots();
    add_controller(&r, 2, VOLUME, "live");
    // No <dev>/nvme-fabrics exists: any attempt to write would fail with an Io error.
    let out = fabric(&r).connect(&request(VOLUME)).expect("connect");
    assert_eq!(out.controller, "nvme2");
    assert!(
        out.already_connected,
        "an existing live controller must be reported as such"
    );
}

#[test]
fn connect_reuses_a_reconnecting_controller() {
    let r = roots();
    add_controller(&r, 4, VOLUME, "connecting");
    let out = fabric(&r).connect(&request(VOLUME)).expect("connect");
    assert_eq!(
        (out.controller.as_str(), out.already_connected),
        ("nvme4", true)
    );
}

#[test]
fn connect_does_not_reuse_a_deleting_controller() {
    let r = roots();
    add_controller(&r, 1, VOLUME, "deleting");
    let device = serve_fabrics_device(&r.dev, "instance=5,cntlid=1\n");
    let out = fabric(&r).connect(&request(VOLUME)).expect("connect");
    assert_eq!(
        out.controller, "nvme5",
        "a deleting controller must be replaced by a new connect"
    );
    assert!(!out.already_connected);
    assert!(device.line.recv().unwrap().contains(VOLUME));
}

#[test]
fn connect_to_another_address_is_a_new_connection() {
    let r = roots();
    add_controller(&r, 1, VOLUME, "live");
    let _device = serve_fabrics_device(&r.dev, "instance=6,cntlid=2\n");
    let mut req = request(VOLUME);
    req.traddr = "10.0.0.6".parse().unwrap();
    let out = fabric(&r).connect(&req).expect("connect");
    assert_eq!(
        (out.controller.as_str(), out.already_connected),
        ("nvme6", false)
    );
}

#[test]
fn connect_refuses_subsystems_outside_the_managed_prefix() {
    let r = roots();
    let err = fabric(&r).connect(&request(BOOT)).unwrap_err();
    assert!(
        matches!(err, FabricError::NotManaged { .. }),
        "expected NotManaged, got {err:?}"
    );
}

#[test]
fn a_failing_device_write_is_reported_as_refused() {
    let r = roots();
    // /dev/full fails every write with ENOSPC: a stand-in for the kernel refusing a connect.
    std::os::unix::fs::symlink("/dev/full", r.dev.join("nvme-fabrics")).unwrap();
    let err = fabric(&r).connect(&request(VOLUME)).unwrap_err();
    match err {
        FabricError::Refused { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
        }
        other => panic!("expected Refused carrying the OS error, got {other:?}"),
    }
}

#[test]
fn a_garbled_reply_is_a_parse_error() {
    let r = roots();
    let _device = serve_fabrics_device(&r.dev, "what\n");
    let err = fabric(&r).connect(&request(VOLUME)).unwrap_err();
    assert!(
        matches!(err, FabricError::Parse { .. }),
        "expected Parse, got {err:?}"
    );
}

#[test]
fn disconnect_writes_1_to_delete_controller_of_a_managed_controller() {
    let r = roots();
    add_controller(&r, 3, VOLUME, "live");
    fabric(&r).disconnect("nvme3").expect("disconnect");
    assert_eq!(delete_controller_contents(&r, "nvme3"), "1");
}

#[test]
fn disconnect_never_writes_to_a_controller_outside_the_prefix() {
    let r = roots();
    add_controller(&r, 0, BOOT, "live");
    let err = fabric(&r).disconnect("nvme0").unwrap_err();
    assert!(
        matches!(err, FabricError::NotManaged { .. }),
        "expected NotManaged, got {err:?}"
    );
    assert_eq!(
        delete_controller_contents(&r, "nvme0"),
        "",
        "the boot volume's delete_controller must never be written"
    );
}

#[test]
fn disconnect_never_writes_to_a_controller_whose_nqn_is_not_a_volume_nqn() {
    let r = roots();
    add_controller(&r, 0, "nqn.2014-08.org.nvmexpress.discovery", "live");
    let err = fabric(&r).disconnect("nvme0").unwrap_err();
    assert!(
        matches!(err, FabricError::NotManaged { .. }),
        "expected NotManaged, got {err:?}"
    );
    assert_eq!(delete_controller_contents(&r, "nvme0"), "");
}

#[test]
fn disconnect_refuses_names_that_are_not_controllers() {
    let r = roots();
    add_controller(&r, 0, VOLUME, "live");
    for bad in ["../nvme0", "nvme0/..", "nvme0n1", "nvme"] {
        let err = fabric(&r).disconnect(bad).unwrap_err();
        assert!(
            matches!(err, FabricError::NoSuchController(_)),
            "{bad:?}: expected NoSuchController, got {err:?}"
        );
    }
    assert_eq!(delete_controller_contents(&r, "nvme0"), "");
}

#[test]
fn disconnect_of_a_missing_controller_is_no_such_controller() {
    let r = roots();
    let err = fabric(&r).disconnect("nvme9").unwrap_err();
    assert!(
        matches!(err, FabricError::NoSuchController(_)),
        "got {err:?}"
    );
}

#[test]
fn controllers_lists_what_sysfs_shows() {
    let r = roots();
    add_controller(&r, 1, VOLUME, "connecting");
    add_controller(&r, 0, BOOT, "live");
    let list = fabric(&r).controllers().unwrap();
    let names: Vec<_> = list.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["nvme0", "nvme1"], "sorted by instance");
    assert_eq!(list[1].subsysnqn, VOLUME);
    assert_eq!(list[1].state, ControllerState::Connecting);
    assert_eq!(list[1].transport, "tcp");
    assert_eq!(
        list[1].address,
        "traddr=10.0.0.5,trsvcid=4420,src_addr=10.0.0.5"
    );
}

#[test]
fn controllers_is_empty_without_the_nvme_class() {
    let r = roots();
    assert!(fabric(&r).controllers().unwrap().is_empty());
}
