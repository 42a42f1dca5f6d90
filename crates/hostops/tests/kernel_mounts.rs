//! Bind, move, unmount (never lazy when in use), in-use detection, mount-point decisions and
//! target removal on real mounts inside the test kit's private namespaces.

rds_testkit::private_namespaces!();

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{is_mounted, mount_tmpfs, sleeper_in, table, FakeProc, Loop, Mounted};
use rds_hostops::inuse::{in_use, Holder, HostRoots, Usage};
use rds_hostops::mount::{
    bind, is_mount_point, move_mount, remove_target_dir, unmount, BindOptions, MountPointError,
    Removal, RemoveError, UnmountError, UnmountOutcome, UnmountPolicy,
};
use rds_hostops::probe::{format, probe_content, Content, FsKind};

const MIB: u64 = 1 << 20;
const QUICK: UnmountPolicy = UnmountPolicy {
    wait: Duration::from_millis(100),
    allow_lazy_when_unused: true,
};

/// A fresh ext4 loop device mounted in a fresh directory.
struct Volume {
    mount: Option<Mounted>,
    lo: Loop,
    dir: tempfile::TempDir,
}

impl Volume {
    fn new() -> Self {
        let lo = Loop::new(32 * MIB);
        let Content::Empty(permit) = probe_content(&lo.path).expect("probe") else {
            panic!("fresh loop not empty")
        };
        format(&lo.path, FsKind::Ext4, permit, Duration::from_secs(300)).expect("mkfs");
        let dir = tempfile::tempdir().expect("tempdir");
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).expect("mkdir");
        rds_hostops::mount::mount_fs(&lo.path, &mp, "ext4", nix::mount::MsFlags::empty(), None)
            .expect("mount");
        Self {
            mount: Some(Mounted(mp)),
            lo,
            dir,
        }
    }
    fn mp(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn dev(&self) -> rds_types::DevNum {
        self.lo.dev()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.mount.take();
    }
}

fn real_roots() -> HostRoots {
    HostRoots::standard()
}

fn holds(usage: &Usage, pid: u32) -> bool {
    matches!(usage, Usage::InUse(h) if h.iter().any(|h| matches!(h, Holder::Process { pid: p, .. } if *p == pid)))
}

#[test]
fn a_read_only_bind_really_is_read_only_and_nosuid_nodev() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let target = v.dir.path().join("ro");
    std::fs::create_dir(&target).expect("mkdir");
    bind(&v.mp(), &target, BindOptions::read_only(true)).expect("bind ro");
    let _g = Mounted(target.clone());
    let err = std::fs::write(target.join("f"), b"x")
        .expect_err("writing through a read-only bind must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "expected EROFS, got {err}"
    );
    let t = table();
    let m = t
        .entries()
        .iter()
        .rev()
        .find(|m| m.mount_point == target)
        .expect("the bind is in the mount table");
    assert!(
        m.mount_flag("ro") && m.mount_flag("nosuid") && m.mount_flag("nodev"),
        "ro,nosuid,nodev: {}",
        m.mount_options
    );
    std::fs::write(v.mp().join("f"), b"x").expect("the source stays writable");
}

#[test]
fn a_read_write_bind_is_writable_but_still_nosuid_nodev() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let target = v.dir.path().join("rw");
    std::fs::create_dir(&target).expect("mkdir");
    bind(&v.mp(), &target, BindOptions::default()).expect("bind rw");
    let _g = Mounted(target.clone());
    std::fs::write(target.join("f"), b"x").expect("a rw bind is writable");
    let t = table();
    let m = t
        .entries()
        .iter()
        .rev()
        .find(|m| m.mount_point == target)
        .expect("in table");
    assert!(
        !m.mount_flag("ro") && m.mount_flag("nosuid") && m.mount_flag("nodev"),
        "rw,nosuid,nodev: {}",
        m.mount_options
    );
}

#[test]
fn a_block_device_is_never_bind_mounted() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(16 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("dev");
    std::fs::write(&target, b"").expect("target file");
    let err = bind(&lo.path, &target, BindOptions::default())
        .expect_err("binding a device node must be refused");
    assert!(
        matches!(
            err,
            rds_hostops::mount::MountError::BlockDeviceSource { .. }
        ),
        "got {err:?}"
    );
    assert!(!is_mounted(&target), "nothing was mounted");
}

#[test]
fn a_mount_can_be_moved() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).expect("mkdir");
    std::fs::create_dir(&b).expect("mkdir");
    let _ga = mount_tmpfs(&a);
    move_mount(&a, &b).expect("MS_MOVE");
    let _gb = Mounted(b.clone());
    assert!(
        is_mounted(&b) && !is_mounted(&a),
        "the mount moved from a to b"
    );
}

#[test]
fn unmounting_an_unused_mount_just_unmounts() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    assert_eq!(
        unmount(&v.mp(), QUICK, &real_roots()).expect("unmount"),
        UnmountOutcome::Unmounted
    );
    assert!(!is_mounted(&v.mp()));
}

#[test]
fn unmounting_what_is_not_mounted_says_so() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let err = unmount(dir.path(), QUICK, &real_roots()).expect_err("not a mount point");
    assert!(
        matches!(err, UnmountError::NotMounted { .. }),
        "got {err:?}"
    );
}

#[test]
fn a_busy_mount_in_use_by_a_process_never_goes_lazy() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let sleeper = sleeper_in(&v.mp());
    let err = unmount(&v.mp(), QUICK, &real_roots())
        .expect_err("a mount with a process inside must not be unmounted");
    match &err {
        UnmountError::InUse { holders, .. } => assert!(
            holders.iter().any(|h| matches!(h, Holder::Process { pid, what, .. } if *pid == sleeper.pid() && what == "cwd")),
            "the sleeping process's cwd must be named: {holders:?}"
        ),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(
        is_mounted(&v.mp()),
        "the mount must still be attached (no lazy detach)"
    );
    sleeper.stop();
    assert_eq!(
        unmount(&v.mp(), QUICK, &real_roots()).expect("unmount after exit"),
        UnmountOutcome::Unmounted
    );
}

#[test]
fn in_use_names_a_process_with_its_cwd_on_the_device_and_forgets_it_after_exit() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let sleeper = sleeper_in(&v.mp());
    let pid = sleeper.pid();
    let usage = in_use(v.dev(), Some(&v.mp()), &real_roots());
    assert!(
        holds(&usage, pid),
        "expected process {pid} as a holder, got {usage:?}"
    );
    sleeper.stop();
    let usage = in_use(v.dev(), Some(&v.mp()), &real_roots());
    assert!(
        !holds(&usage, pid),
        "an exited process must not be reported: {usage:?}"
    );
    assert!(
        !matches!(usage, Usage::InUse(_)),
        "nothing holds the device any more: {usage:?}"
    );
}

#[test]
fn in_use_names_an_open_file_descriptor_on_the_device() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let f = std::fs::File::create(v.mp().join("held")).expect("create");
    let usage = in_use(v.dev(), Some(&v.mp()), &real_roots());
    let me = std::process::id();
    assert!(
        matches!(&usage, Usage::InUse(h) if h.iter().any(|h| matches!(h, Holder::Process { pid, what, .. } if *pid == me && what.starts_with("fd ")))),
        "expected our own fd as a holder, got {usage:?}"
    );
    drop(f);
}

#[test]
fn in_use_counts_another_mount_of_the_same_device() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let other = v.dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    bind(&v.mp(), &other, BindOptions::default()).expect("bind");
    let _g = Mounted(other.clone());
    let usage = in_use(v.dev(), Some(&v.mp()), &real_roots());
    assert!(
        matches!(&usage, Usage::InUse(h) if h.iter().any(|h| matches!(h, Holder::Mount { mount_point, .. } if *mount_point == other))),
        "the second mount must hold the device, got {usage:?}"
    );
}

#[test]
fn in_use_is_not_in_use_only_when_every_process_was_inspected() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let fake = FakeProc::new(&[]);
    assert_eq!(
        in_use(v.dev(), Some(&v.mp()), &fake.roots()),
        Usage::NotInUse
    );
    // The same stand-in process holding a file on the device.
    let file = v.mp().join("f");
    std::fs::write(&file, b"x").expect("write");
    let holding = FakeProc::new(&[&file]);
    assert!(matches!(
        in_use(v.dev(), Some(&v.mp()), &holding.roots()),
        Usage::InUse(_)
    ));
}

#[test]
fn a_process_that_cannot_be_inspected_makes_the_answer_unknown() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let fake = FakeProc::new(&[]);
    // Replace the fd directory with a file: listing it fails like a refused inspection would.
    let fd = fake.dir.path().join("1/fd");
    std::fs::remove_dir(&fd).expect("rmdir");
    std::fs::write(&fd, b"").expect("file");
    assert!(
        matches!(
            in_use(v.dev(), Some(&v.mp()), &fake.roots()),
            Usage::Unknown(_)
        ),
        "never NotInUse when blind"
    );
}

#[test]
fn an_unmounted_device_held_exclusively_is_in_use() {
    rds_testkit::require_private_namespaces();
    let lo = Loop::new(16 * MIB);
    let fake = FakeProc::new(&[]);
    // A private /dev with the udev-style block/<maj:min> node for our device.
    let dev_root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dev_root.path().join("block")).expect("mkdir");
    rds_hostops::mknod::create_block_node(
        &dev_root.path().join("block").join(lo.dev().to_string()),
        lo.dev(),
        0o600,
    )
    .expect("mknod");
    let roots = HostRoots {
        dev: dev_root.path().to_owned(),
        ..fake.roots()
    };
    assert_eq!(
        in_use(lo.dev(), None, &roots),
        Usage::NotInUse,
        "nobody holds a fresh loop device"
    );
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&lo.path)
        .expect("exclusive open");
    let usage = in_use(lo.dev(), None, &roots);
    assert!(
        matches!(&usage, Usage::InUse(h) if h.contains(&Holder::ExclusiveClaim)),
        "an exclusive opener must make the device in use, got {usage:?}"
    );
    drop(hold);
}

/// A mount with a submount is busy (EBUSY) although no process uses it.
fn busy_but_unused() -> (Volume, Mounted) {
    let v = Volume::new();
    let sub = v.mp().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let g = mount_tmpfs(&sub);
    (v, g)
}

#[test]
fn a_busy_unused_mount_is_not_detached_when_lazy_is_not_allowed() {
    rds_testkit::require_private_namespaces();
    let (v, _sub) = busy_but_unused();
    let fake = FakeProc::new(&[]);
    let policy = UnmountPolicy {
        allow_lazy_when_unused: false,
        ..QUICK
    };
    let err = unmount(&v.mp(), policy, &fake.roots()).expect_err("busy, lazy not allowed");
    assert!(
        matches!(
            err,
            UnmountError::Busy {
                usage: Usage::NotInUse,
                ..
            }
        ),
        "expected Busy(NotInUse), got {err:?}"
    );
    assert!(is_mounted(&v.mp()), "still mounted");
}

#[test]
fn a_busy_unused_mount_is_detached_lazily_when_allowed() {
    rds_testkit::require_private_namespaces();
    let (v, _sub) = busy_but_unused();
    let fake = FakeProc::new(&[]);
    assert_eq!(
        unmount(&v.mp(), QUICK, &fake.roots()).expect("lazy detach"),
        UnmountOutcome::DetachedLazily
    );
    assert!(!is_mounted(&v.mp()), "detached");
}

#[test]
fn a_busy_mount_whose_usage_is_unknown_is_not_detached() {
    rds_testkit::require_private_namespaces();
    let (v, _sub) = busy_but_unused();
    let blind = HostRoots {
        proc: "/nonexistent/proc".into(),
        ..real_roots()
    };
    // The mount table is read through the proc root: point it at the real one but make the
    // process scan impossible by using a fake whose fd listing fails.
    let fake = FakeProc::new(&[]);
    let fd = fake.dir.path().join("1/fd");
    std::fs::remove_dir(&fd).expect("rmdir");
    std::fs::write(&fd, b"").expect("file");
    let err = unmount(&v.mp(), QUICK, &fake.roots()).expect_err("unknown usage must not detach");
    assert!(
        matches!(err, UnmountError::UsageUnknown { .. }),
        "expected UsageUnknown, got {err:?}"
    );
    assert!(is_mounted(&v.mp()), "still mounted");
    let err = unmount(&v.mp(), QUICK, &blind).expect_err("no mount table, no detach");
    assert!(
        matches!(err, UnmountError::MountTable { .. }),
        "got {err:?}"
    );
    assert!(is_mounted(&v.mp()), "still mounted");
}

#[test]
fn is_mount_point_is_true_for_mounts_and_false_for_plain_or_missing_paths() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let t = table();
    assert!(
        is_mount_point(&v.mp(), &t).expect("decidable"),
        "a mounted directory"
    );
    assert!(
        !is_mount_point(v.dir.path(), &t).expect("decidable"),
        "a plain directory"
    );
    assert!(
        !is_mount_point(&v.dir.path().join("missing"), &t).expect("decidable"),
        "a missing path"
    );
    // A bind of a directory onto another on the same filesystem has the same st_dev: only the
    // mount table can tell.
    let (a, b) = (v.mp().join("a"), v.mp().join("b"));
    std::fs::create_dir(&a).expect("mkdir");
    std::fs::create_dir(&b).expect("mkdir");
    bind(&a, &b, BindOptions::default()).expect("bind");
    let _g = Mounted(b.clone());
    assert!(
        is_mount_point(&b, &table()).expect("decidable"),
        "a same-filesystem bind is a mount point"
    );
}

#[test]
fn is_mount_point_through_a_symlinked_parent_is_still_true() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    let link = v.dir.path().join("link");
    std::os::unix::fs::symlink(v.dir.path(), &link).expect("symlink");
    assert!(is_mount_point(&link.join("mnt"), &table()).expect("decidable"));
}

#[test]
fn on_a_dead_device_is_mount_point_errs_and_nothing_is_removed() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    std::fs::create_dir(v.mp().join("pods")).expect("mkdir");
    // Remount so that no directory block is cached, then kill the device under it.
    unmount(&v.mp(), QUICK, &real_roots()).expect("unmount");
    rds_hostops::mount::mount_fs(
        &v.lo.path,
        &v.mp(),
        "ext4",
        nix::mount::MsFlags::empty(),
        None,
    )
    .expect("remount");
    v.lo.set_capacity(0);
    let inside = v.mp().join("pods").join("target");
    let err = is_mount_point(&inside, &table())
        .expect_err("a path the kernel cannot look up is undecidable, never false");
    assert!(
        matches!(
            err,
            MountPointError::Stat { .. } | MountPointError::Resolve { .. }
        ),
        "expected a stat error, got {err:?}"
    );
    let err = remove_target_dir(&inside, &table())
        .expect_err("an undecidable target must not be removed");
    assert!(matches!(err, RemoveError::Unproven { .. }), "got {err:?}");
}

#[test]
fn a_mounted_target_is_never_removed_and_its_data_survives() {
    rds_testkit::require_private_namespaces();
    let v = Volume::new();
    std::fs::write(v.mp().join("user-data"), b"precious").expect("write");
    let err = remove_target_dir(&v.mp(), &table()).expect_err("a mount point must not be removed");
    assert!(matches!(err, RemoveError::StillMounted(_)), "got {err:?}");
    assert_eq!(
        std::fs::read(v.mp().join("user-data")).expect("read"),
        b"precious"
    );
}

#[test]
fn a_non_empty_target_is_never_removed() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path().join("target");
    std::fs::create_dir(&t).expect("mkdir");
    std::fs::write(t.join("user-data"), b"precious").expect("write");
    let err =
        remove_target_dir(&t, &table()).expect_err("a non-empty directory must not be removed");
    assert!(matches!(err, RemoveError::Remove { .. }), "got {err:?}");
    assert_eq!(
        std::fs::read(t.join("user-data")).expect("read"),
        b"precious"
    );
}

#[test]
fn an_empty_unmounted_target_is_removed_once() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path().join("target");
    std::fs::create_dir(&t).expect("mkdir");
    assert_eq!(
        remove_target_dir(&t, &table()).expect("remove"),
        Removal::Removed
    );
    assert_eq!(
        remove_target_dir(&t, &table()).expect("remove again"),
        Removal::AlreadyAbsent
    );
}
