//! Mount options: CSI mount flags (already validated) to mount(2) flags and data.

use nix::mount::MsFlags;

/// Flags and the data string for mounting a volume's filesystem. Volumes are always
/// `nosuid,nodev`.
pub fn fs_mount_options(flags: &[String], read_only: bool) -> (MsFlags, String) {
    let mut ms = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut data: Vec<&str> = Vec::new();
    for f in flags {
        match per_mount_flag(f) {
            Some(PerMount::Set(fl)) => ms |= fl,
            Some(PerMount::Clear(fl)) => ms &= !fl,
            None => data.push(f),
        }
    }
    if read_only {
        ms |= MsFlags::MS_RDONLY;
    }
    (ms, data.join(","))
}

/// Per-mount flags to apply to a bind of the staging mount (data options belong to the
/// superblock and cannot change on a bind).
pub fn bind_flags(flags: &[String], read_only: bool) -> MsFlags {
    let (ms, _) = fs_mount_options(flags, read_only);
    ms & (MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOATIME
        | MsFlags::MS_NODIRATIME
        | MsFlags::MS_RELATIME
        | MsFlags::MS_STRICTATIME)
}

enum PerMount {
    Set(MsFlags),
    Clear(MsFlags),
}

fn per_mount_flag(f: &str) -> Option<PerMount> {
    use PerMount::*;
    Some(match f {
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "lazytime" => Set(MsFlags::MS_LAZYTIME),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "nodev" => Set(MsFlags::MS_NODEV),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_always_nosuid_nodev_and_data_options_pass_through() {
        let (ms, data) = fs_mount_options(
            &["noatime".into(), "discard".into(), "data=ordered".into()],
            false,
        );
        assert!(ms.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME));
        assert!(!ms.contains(MsFlags::MS_RDONLY));
        assert_eq!(data, "discard,data=ordered");
    }

    #[test]
    fn read_only_wins_over_rw_flag() {
        let (ms, _) = fs_mount_options(&["rw".into()], true);
        assert!(ms.contains(MsFlags::MS_RDONLY));
        assert!(bind_flags(&[], true).contains(MsFlags::MS_RDONLY));
    }
}
