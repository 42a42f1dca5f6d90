//! Mounting and unmounting through syscalls (never the mount command), and the mount-point
//! question answered from the real mount table.
//!
//! Guards:
//! - a read-only bind is made read-only with a second remount; if that fails the fresh bind is
//!   removed again, so a writable view is never left where a read-only one was asked for;
//! - [`unmount`] escalates to a lazy detach only when explicitly allowed **and** [`in_use`]
//!   proves nothing uses the device; in use or unknown is an error (incident 5 and the Go
//!   driver's "lazy after 10 s" behaviour);
//! - [`is_mount_point`] returns an error, never `false`, when it cannot tell (incident 3), and
//!   [`remove_target_dir`] removes only an empty directory proven not to be a mount point.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use rds_mounts::MountView;

use crate::inuse::{in_use, Holder, HostRoots, Usage};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {fs_type} from {device} on {target} failed")]
    Mount {
        device: PathBuf,
        target: PathBuf,
        fs_type: String,
        #[source]
        errno: Errno,
    },
    #[error("bind-mounting {from} on {target} failed")]
    Bind {
        from: PathBuf,
        target: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("{from} is a block device node: raw block volumes are published with mknod, never bind-mounted")]
    BlockDeviceSource { from: PathBuf },
    #[error("restricting the bind mount at {target} failed (undo: {undo:?})")]
    RestrictBind {
        target: PathBuf,
        undo: Option<Errno>,
        #[source]
        errno: Errno,
    },
    #[error("remounting {target} failed")]
    Remount {
        target: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("moving the mount at {from} to {target} failed")]
    Move {
        from: PathBuf,
        target: PathBuf,
        #[source]
        errno: Errno,
    },
}

/// Mount a filesystem: `mount(2)` with `fs_type`, `flags` and filesystem-specific `data`.
pub fn mount_fs(
    source: &Path,
    target: &Path,
    fs_type: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    nix::mount::mount(Some(source), target, Some(fs_type), flags, data).map_err(|errno| {
        MountError::Mount {
            device: source.to_owned(),
            target: target.to_owned(),
            fs_type: fs_type.to_owned(),
            errno,
        }
    })?;
    tracing::info!(source = %source.display(), target = %target.display(), fs_type, ?flags, "mounted");
    Ok(())
}

/// Options of a bind mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    pub read_only: bool,
    /// nosuid,nodev: on by default for volume binds (a volume must not carry setuid binaries or
    /// device nodes into a pod). Turn off only when asked.
    pub nosuid_nodev: bool,
}

impl BindOptions {
    pub fn read_only(read_only: bool) -> Self {
        Self {
            read_only,
            nosuid_nodev: true,
        }
    }
}

impl Default for BindOptions {
    fn default() -> Self {
        Self::read_only(false)
    }
}

/// Bind-mount `src` on `target` (non-recursive), then apply read-only / nosuid,nodev with a
/// `MS_REMOUNT|MS_BIND` (the kernel ignores those flags on the initial bind). If the
/// restricting remount fails, the new bind is unmounted again and the error returned.
///
/// A block device node is refused as a source (incident 1: bind-mounting nodes from devtmpfs
/// under Bidirectional propagation caused a mount storm): publish raw block volumes with
/// [`crate::mknod::create_block_node`].
pub fn bind(src: &Path, target: &Path, opts: BindOptions) -> Result<(), MountError> {
    bind_at(src, target, target, opts)
}

/// [`bind`] onto `target` (a confined `/proc/self/fd/N` of the target directory), then the
/// option remount through `new_mount`, a path that reaches the new mount (`/proc/self/fd/P/
/// <name>` of its parent): the descriptor of the directory itself still names the directory
/// beneath the new mount.
pub fn bind_at(
    src: &Path,
    target: &Path,
    new_mount: &Path,
    opts: BindOptions,
) -> Result<(), MountError> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(src).is_ok_and(|m| m.file_type().is_block_device()) {
        return Err(MountError::BlockDeviceSource {
            from: src.to_owned(),
        });
    }
    nix::mount::mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| MountError::Bind {
        from: src.to_owned(),
        target: target.to_owned(),
        errno,
    })?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if opts.nosuid_nodev {
        flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    }
    if opts.read_only || opts.nosuid_nodev {
        if let Err(errno) =
            nix::mount::mount(None::<&str>, new_mount, None::<&str>, flags, None::<&str>)
        {
            // Never leave a writable (or suid-capable) view behind: undo our own fresh bind.
            let undo = nix::mount::umount2(new_mount, MntFlags::UMOUNT_NOFOLLOW).err();
            tracing::error!(target = %target.display(), %errno, ?undo, "restricting bind mount failed; removed it");
            return Err(MountError::RestrictBind {
                target: target.to_owned(),
                undo,
                errno,
            });
        }
    }
    tracing::info!(src = %src.display(), target = %target.display(), read_only = opts.read_only, "bind-mounted");
    Ok(())
}

/// Remount `target` with `flags` (MS_REMOUNT is added) and `data`.
pub fn remount(target: &Path, flags: MsFlags, data: Option<&str>) -> Result<(), MountError> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        flags | MsFlags::MS_REMOUNT,
        data,
    )
    .map_err(|errno| MountError::Remount {
        target: target.to_owned(),
        errno,
    })
}

/// Move the mount at `from` to `target` (`MS_MOVE`).
pub fn move_mount(from: &Path, target: &Path) -> Result<(), MountError> {
    nix::mount::mount(
        Some(from),
        target,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|errno| MountError::Move {
        from: from.to_owned(),
        target: target.to_owned(),
        errno,
    })
}

/// Default time a normal unmount keeps retrying on EBUSY.
pub const DEFAULT_UNMOUNT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmountPolicy {
    /// Keep retrying a normal unmount this long while it fails with EBUSY.
    pub wait: Duration,
    /// After `wait`, detach lazily (MNT_DETACH) if, and only if, [`in_use`] says NotInUse.
    pub allow_lazy_when_unused: bool,
}

impl Default for UnmountPolicy {
    fn default() -> Self {
        Self {
            wait: DEFAULT_UNMOUNT_WAIT,
            allow_lazy_when_unused: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountOutcome {
    Unmounted,
    /// Lazily detached after proving the device unused.
    DetachedLazily,
}

#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("{target} is not a mount point")]
    NotMounted { target: PathBuf },
    #[error("{target} stayed busy for {waited:?} and lazy unmount is not allowed ({usage:?})")]
    Busy {
        target: PathBuf,
        waited: Duration,
        usage: Usage,
    },
    #[error("{target} is in use ({}); it was not detached", holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    InUse {
        target: PathBuf,
        holders: Vec<Holder>,
    },
    #[error(
        "{target} is busy and whether it is in use cannot be known ({reason}); it was not detached"
    )]
    UsageUnknown { target: PathBuf, reason: String },
    #[error("reading the mount table to identify {target} failed")]
    MountTable {
        target: PathBuf,
        #[source]
        source: rds_mounts::ViewError,
    },
    #[error("unmounting {target} failed")]
    Syscall {
        target: PathBuf,
        #[source]
        errno: Errno,
    },
}

/// Unmount the topmost mount at `target` (blocking; wrap it in [`crate::deadline::run_blocking`]).
/// With stacked mounts at one path, call it until [`UnmountError::NotMounted`] or check
/// [`is_mount_point`] again. `UMOUNT_NOFOLLOW` keeps a symlink swapped in at `target` from
/// redirecting the unmount. See the module doc for the escalation rule.
pub fn unmount(
    target: &Path,
    policy: UnmountPolicy,
    roots: &HostRoots,
) -> Result<UnmountOutcome, UnmountError> {
    unmount_at(target, target, policy, roots)
}

/// [`unmount`], with the syscalls acting on `action` (a confined `/proc/self/fd/N/<name>`
/// of the same mount point, see [`crate::beneath`]) while messages and mount-table lookups
/// use `target`, the path as kubelet names it.
pub fn unmount_at(
    action: &Path,
    target: &Path,
    policy: UnmountPolicy,
    roots: &HostRoots,
) -> Result<UnmountOutcome, UnmountError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match nix::mount::umount2(action, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {
                tracing::info!(target = %target.display(), "unmounted");
                return Ok(UnmountOutcome::Unmounted);
            }
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {
                return Err(UnmountError::NotMounted {
                    target: target.to_owned(),
                })
            }
            Err(Errno::EBUSY) if start.elapsed() < policy.wait => {
                // Retry pacing for a busy mount, not synchronisation: the holder may let go.
                std::thread::sleep(pause.min(policy.wait.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(Errno::EBUSY) => break,
            Err(errno) => {
                return Err(UnmountError::Syscall {
                    target: target.to_owned(),
                    errno,
                })
            }
        }
    }
    let waited = start.elapsed();
    let table =
        MountView::read_now(&roots.proc, "self").map_err(|source| UnmountError::MountTable {
            target: target.to_owned(),
            source,
        })?;
    let resolved = crate::paths::resolved_path(target);
    let Some(entry) = table.top_at(&resolved).or_else(|| table.top_at(target)) else {
        return Err(UnmountError::NotMounted {
            target: target.to_owned(),
        });
    };
    let usage = in_use(entry.dev, Some(&entry.mount_point), roots);
    tracing::warn!(target = %target.display(), dev = %entry.dev, waited = ?waited, usage = ?usage, "unmount stayed busy");
    if !policy.allow_lazy_when_unused {
        return Err(UnmountError::Busy {
            target: target.to_owned(),
            waited,
            usage,
        });
    }
    match usage {
        Usage::InUse(holders) => Err(UnmountError::InUse {
            target: target.to_owned(),
            holders,
        }),
        Usage::Unknown(reason) => Err(UnmountError::UsageUnknown {
            target: target.to_owned(),
            reason,
        }),
        Usage::NotInUse => {
            nix::mount::umount2(action, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(
                |errno| UnmountError::Syscall {
                    target: target.to_owned(),
                    errno,
                },
            )?;
            tracing::warn!(target = %target.display(), dev = %entry.dev, "busy but unused: detached lazily");
            Ok(UnmountOutcome::DetachedLazily)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountPointError {
    #[error("{0} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error("cannot resolve the parent of {path}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stat {path}; whether it is a mount point is unknown")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Resolve symlinks in the parent only, never touching `path` itself (it may be a dead mount).
/// `None` when the parent does not exist.
fn resolve_parent(path: &Path) -> Result<Option<PathBuf>, MountPointError> {
    crate::paths::resolve_parent(path).map_err(|source| MountPointError::Resolve {
        path: path.to_owned(),
        source,
    })
}

/// Is `path` a mount point? Decided from the mount table first (by mount point, after
/// resolving symlinks in the parent), then by comparing `st_dev` with the parent's. Any doubt
/// is an error: an unparsable table, a failing stat (EIO on a dead mount, EACCES).
/// A path that does not exist is not a mount point. Blocking (the stat can hang on a dead
/// filesystem): wrap it in [`crate::deadline::run_blocking`].
pub fn is_mount_point(path: &Path, table: &MountView) -> Result<bool, MountPointError> {
    use std::os::unix::fs::MetadataExt;
    if !path.is_absolute() {
        return Err(MountPointError::NotAbsolute(path.to_owned()));
    }
    let Some(resolved) = resolve_parent(path)? else {
        return Ok(false);
    };
    if table.top_at(&resolved).is_some() || table.top_at(path).is_some() {
        return Ok(true);
    }
    let Some(parent) = resolved.parent() else {
        return Ok(true);
    }; // "/" is always mounted
    let me = match std::fs::symlink_metadata(&resolved) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(source) => {
            return Err(MountPointError::Stat {
                path: path.to_owned(),
                source,
            })
        }
    };
    let up = std::fs::metadata(parent).map_err(|source| MountPointError::Stat {
        path: parent.to_owned(),
        source,
    })?;
    if me.dev() != up.dev() {
        tracing::warn!(path = %path.display(), "device differs from the parent's but the path is not in the mount table: treating it as a mount point");
        return Ok(true);
    }
    Ok(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    AlreadyAbsent,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{0} is still a mount point; not removing it")]
    StillMounted(PathBuf),
    #[error("could not prove {path} is not a mount point; not removing it")]
    Unproven {
        path: PathBuf,
        #[source]
        source: MountPointError,
    },
    #[error("removing {path} failed (only an empty directory is ever removed)")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Remove a publish/staging target directory: only after proving it is not a mount point, and
/// only if it is empty (`rmdir`, never a recursive delete: incident 3).
pub fn remove_target_dir(path: &Path, table: &MountView) -> Result<Removal, RemoveError> {
    remove_target_dir_at(path, path, table)
}

/// [`remove_target_dir`], removing through `action` (a confined `/proc/self/fd/P/<name>`).
pub fn remove_target_dir_at(
    action: &Path,
    path: &Path,
    table: &MountView,
) -> Result<Removal, RemoveError> {
    match is_mount_point(path, table) {
        Ok(true) => return Err(RemoveError::StillMounted(path.to_owned())),
        Ok(false) => {}
        Err(source) => {
            return Err(RemoveError::Unproven {
                path: path.to_owned(),
                source,
            })
        }
    }
    match std::fs::remove_dir(action) {
        Ok(()) => Ok(Removal::Removed),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Removal::AlreadyAbsent),
        Err(source) => Err(RemoveError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The mount at `path` as the kernel identifies it: its mount id (mountinfo's first field)
/// and the `major:minor` of its superblock, from `statx(STATX_MNT_ID)` without following a
/// final symlink. Blocking (a dead filesystem can hang it): call it off the async runtime,
/// right after mounting.
pub fn mount_key_at(path: &Path) -> std::io::Result<rds_types::MountKey> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid `statx` value; the kernel overwrites what it reports.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path alive for the call; `st` is a valid, writable
    // `statx` buffer of the right size.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(std::io::Error::other(format!(
            "statx of {} reported no mount id (kernel before 5.8?)",
            path.display()
        )));
    }
    Ok(rds_types::MountKey {
        id: st.stx_mnt_id,
        dev: rds_types::DevNum::new(st.stx_dev_major, st.stx_dev_minor),
    })
}
