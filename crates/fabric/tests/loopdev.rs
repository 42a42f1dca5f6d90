//! Privileged tests of the loop-device wrapper on real loop devices.

rds_testkit::private_namespaces!();

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rds_fabric::loopdev::{read_sys_diskseq, AttachOptions, LoopControl};
use rds_types::DevNum;

const SIZE: u64 = 4 << 20;

fn control() -> LoopControl {
    LoopControl::new("/dev", "/sys")
}

fn backing(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let f = File::create(&p).expect("create backing file");
    f.set_len(SIZE).expect("size backing file");
    p
}

#[test]
fn attach_reports_the_device_number_and_diskseq_the_kernel_sees() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let dev = control()
        .attach(&file, AttachOptions::default())
        .expect("attach");
    let node = std::fs::metadata(dev.path()).expect("stat loop node");
    assert_eq!(
        dev.dev_num(),
        DevNum::from_dev_t(node.rdev()),
        "dev_num must be the node's rdev"
    );
    assert_eq!(
        read_sys_diskseq(Path::new("/sys"), &dev.name()).unwrap(),
        dev.diskseq(),
        "diskseq must be sysfs's"
    );
    assert_eq!(
        common::loop_backing(&dev.name()).as_deref(),
        Some(file.to_str().unwrap()),
        "the kernel must report our backing file"
    );
}

#[test]
fn writes_through_the_device_land_in_the_backing_file() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let dev = control()
        .attach(&file, AttachOptions::default())
        .expect("attach");
    let mut node = OpenOptions::new().write(true).open(dev.path()).unwrap();
    node.seek(SeekFrom::Start(8192)).unwrap();
    node.write_all(&[0xab; 512]).unwrap();
    node.sync_all().unwrap();
    let mut buf = [0u8; 512];
    File::open(&file)
        .unwrap()
        .read_exact_at(&mut buf, 8192)
        .unwrap();
    assert!(
        buf.iter().all(|b| *b == 0xab),
        "the backing file must hold what was written"
    );
}

#[test]
fn each_attach_of_the_same_file_is_a_new_device_and_diskseq() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let a = control()
        .attach(&file, AttachOptions::default())
        .expect("first attach");
    let b = control()
        .attach(&file, AttachOptions::default())
        .expect("second attach");
    assert_ne!(
        a.dev_num(),
        b.dev_num(),
        "a second attach must be another device"
    );
    assert!(
        b.diskseq() > a.diskseq(),
        "diskseq must grow: {} then {}",
        a.diskseq(),
        b.diskseq()
    );
}

#[test]
fn capacity_zero_after_truncate_leaves_a_device_with_no_sectors() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let dev = control()
        .attach(&file, AttachOptions::default())
        .expect("attach");
    let node = File::open(dev.path()).unwrap();
    File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    dev.set_capacity().expect("LOOP_SET_CAPACITY");
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/{}/size", dev.name()))
            .unwrap()
            .trim(),
        "0",
        "the device must shrink to 0 sectors"
    );
    // What a mounted filesystem then gets is EIO on every block (tested with ext4 in the
    // emulated fabric's kill_path test); a raw read sees end-of-device.
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        node.read_at(&mut buf, 0).unwrap(),
        0,
        "a 0-capacity device must return no data"
    );
}

#[test]
fn detach_unbinds_the_device() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let dev = control()
        .attach(&file, AttachOptions::default())
        .expect("attach");
    let n = dev.number();
    dev.detach().expect("detach");
    common::await_loop_released(&format!("loop{n}"), &file);
}

#[test]
fn detach_while_open_elsewhere_defers_until_the_last_close() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let dev = control()
        .attach(&file, AttachOptions::default())
        .expect("attach");
    let n = dev.number();
    let holder = File::open(dev.path()).unwrap();
    dev.detach()
        .expect("detach of a busy device only sets autoclear");
    assert_eq!(
        common::loop_backing(&format!("loop{n}")).as_deref(),
        Some(file.to_str().unwrap()),
        "loop{n} must stay bound while another opener holds it (as while mounted)"
    );
    drop(holder);
    common::await_loop_released(&format!("loop{n}"), &file);
}

#[test]
fn dropping_a_device_detaches_it() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let file = backing(dir.path(), "a.img");
    let dev = control()
        .attach(&file, AttachOptions::default())
        .expect("attach");
    let n = dev.number();
    drop(dev);
    common::await_loop_released(&format!("loop{n}"), &file);
}
