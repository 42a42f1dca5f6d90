//! `read_mountinfo` against the live kernel, inside a private mount namespace.
rds_testkit::private_namespaces!();

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rds_mounts::mountinfo::read_mountinfo;

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[test]
fn read_mountinfo_sees_a_fresh_tmpfs_with_an_awkward_name() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("a b\tc\\d");
    std::fs::create_dir(&target).expect("mkdir");
    mount(
        Some("src x"),
        &target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("size=1m"),
    )
    .expect("mount tmpfs");
    let _guard = Unmount(target.clone());
    let table = read_mountinfo(Path::new("/proc"), "self").expect("read own mountinfo");
    assert!(
        table.errors.is_empty(),
        "the live table should parse: {:?}",
        table.errors
    );
    let m = table
        .entries
        .iter()
        .find(|m| m.mount_point == target)
        .unwrap_or_else(|| panic!("no entry at {target:?}"));
    assert_eq!(m.fs_type, "tmpfs");
    assert_eq!(m.source.as_deref(), Some("src x"));
    assert!(m.mount_flag("nosuid"));
    assert_eq!(m.super_option("size").as_deref(), Some("1024k"));
}

#[test]
fn mount_table_read_indexes_the_live_table() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("temp dir");
    mount(
        Some("indexed"),
        dir.path(),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs");
    let _guard = Unmount(dir.path().to_path_buf());
    let dev = rds_types::DevNum::from_dev_t(std::os::unix::fs::MetadataExt::dev(
        &std::fs::metadata(dir.path()).unwrap(),
    ));
    let (table, errors) =
        rds_mounts::table::MountTable::read(Path::new("/proc"), "self").expect("read");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.device_count(dev), 1, "one mount of the fresh tmpfs");
    assert_eq!(table.top_at(dir.path()).map(|m| m.dev), Some(dev));
}
