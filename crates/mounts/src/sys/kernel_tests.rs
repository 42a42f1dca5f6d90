//! listmount/statmount/fanotify wrappers against the live kernel, in a private namespace (the
//! crate's unit tests enter it before main: see lib.rs).

use std::path::{Path, PathBuf};

use crate::mountinfo::read_mountinfo;
use crate::sys::{listmount_all, statmount, FanMountEvent, MountFanotify};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

struct Unmount(Vec<PathBuf>);
impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
    }
}

fn tmpfs(src: &str, at: &Path, flags: MsFlags) {
    mount(
        Some(src),
        at,
        Some("tmpfs"),
        flags,
        Some("size=1m,mode=700"),
    )
    .expect("mount tmpfs");
}

#[test]
fn statmount_rebuilds_exactly_what_mountinfo_prints() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    tmpfs("base src", &base, MsFlags::empty());
    let mut guard = Unmount(vec![base.clone()]);
    let names = [
        "a b",
        "tab\tx",
        "nl\ny",
        "back\\slash",
        "shared",
        "slave",
        "unb",
        "ro",
        "bind",
    ];
    for n in names {
        std::fs::create_dir(base.join(n)).unwrap();
    }
    tmpfs(
        "s p",
        &base.join("a b"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    );
    tmpfs("", &base.join("tab\tx"), MsFlags::MS_NOATIME);
    tmpfs(
        "x",
        &base.join("nl\ny"),
        MsFlags::MS_STRICTATIME | MsFlags::MS_NOEXEC,
    );
    tmpfs("b\\s", &base.join("back\\slash"), MsFlags::MS_SYNCHRONOUS);
    tmpfs("sh", &base.join("shared"), MsFlags::empty());
    mount(
        None::<&str>,
        &base.join("shared"),
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    mount(
        Some(&base.join("shared")),
        &base.join("slave"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        &base.join("slave"),
        None::<&str>,
        MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .unwrap();
    tmpfs("u", &base.join("unb"), MsFlags::empty());
    mount(
        None::<&str>,
        &base.join("unb"),
        None::<&str>,
        MsFlags::MS_UNBINDABLE,
        None::<&str>,
    )
    .unwrap();
    tmpfs("r", &base.join("ro"), MsFlags::MS_RDONLY);
    std::fs::create_dir(base.join("a b/sub dir")).unwrap_or(());
    mount(
        Some(&base.join("a b")),
        &base.join("bind"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        &base.join("bind"),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    guard.0.extend(names.iter().map(|n| base.join(n)));

    // Other tests in this binary mount concurrently: compare the mounts under `base` only.
    let ids = listmount_all().expect("listmount works on this kernel");
    let table = read_mountinfo(Path::new("/proc"), "self").expect("mountinfo");
    assert!(table.errors.is_empty());
    let ours: Vec<_> = table
        .entries
        .iter()
        .filter(|m| m.mount_point.starts_with(&base))
        .collect();
    assert_eq!(
        ours.len(),
        names.len() + 1,
        "mountinfo shows base and its {} children",
        names.len()
    );
    let mut buf = Vec::new();
    let mut seen = 0;
    for id in ids {
        let Ok(sm) = statmount(id, &mut buf) else {
            continue;
        };
        if !sm.mount_point.starts_with(&base) {
            continue;
        }
        seen += 1;
        assert_eq!(sm.unique_id, Some(id));
        let mi = ours.iter().find(|m| m.id == sm.id).unwrap_or_else(|| {
            panic!(
                "statmount id {} ({:?}) not in mountinfo",
                sm.id, sm.mount_point
            )
        });
        assert!(
            mi.same_mount_state(&sm),
            "statmount view differs from mountinfo:\n mountinfo {mi:?}\n statmount {sm:?}"
        );
    }
    assert_eq!(seen, ours.len(), "listmount lists every mount under base");
}

#[test]
fn statmount_of_a_detached_mount_is_enoent() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("temp dir");
    let before = listmount_all().unwrap();
    tmpfs("gone", dir.path(), MsFlags::empty());
    let after = listmount_all().unwrap();
    let new: Vec<u64> = after.into_iter().filter(|i| !before.contains(i)).collect();
    assert_eq!(new.len(), 1);
    umount2(dir.path(), MntFlags::empty()).unwrap();
    let err = statmount(new[0], &mut Vec::new()).expect_err("detached mount");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn fanotify_reports_attach_and_detach_with_unique_ids() {
    rds_testkit::require_private_namespaces();
    let fan = MountFanotify::watch_namespace(Path::new("/proc/self/ns/mnt"))
        .expect("fanotify mount events");
    let dir = tempfile::tempdir().expect("temp dir");
    tmpfs("fan", dir.path(), MsFlags::empty());
    let unique = statmount_unique_at(dir.path());
    umount2(dir.path(), MntFlags::empty()).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut evs = Vec::new();
    fan.read_events(&mut buf, &mut evs).unwrap();
    // Other tests in this binary mount concurrently: look for ours.
    assert!(
        evs.contains(&FanMountEvent::Attach(unique)),
        "{evs:?} lacks attach of {unique:#x}"
    );
    assert!(
        evs.contains(&FanMountEvent::Detach(unique)),
        "{evs:?} lacks detach of {unique:#x}"
    );
}

fn statmount_unique_at(p: &Path) -> u64 {
    let mut buf = Vec::new();
    listmount_all()
        .unwrap()
        .into_iter()
        .find(|id| {
            statmount(*id, &mut buf)
                .map(|m| m.mount_point == p)
                .unwrap_or(false)
        })
        .expect("our mount is listed")
}
