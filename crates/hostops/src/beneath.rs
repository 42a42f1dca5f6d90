//! Paths confined to one directory tree, resolved without following symlinks.
//!
//! Every path the plugin creates, mounts on, unmounts or removes lives under kubelet's
//! directory. A request naming a path there must not be able to reach anything else: not by
//! `..` (validation refuses it), not through a symlink planted in any component (a staging
//! path linked to `/etc`, a target whose parent links into another volume's data), and not by
//! swapping a component between the check and the syscall.
//!
//! [`Root`] holds a descriptor of the tree's top, opened once at start-up. Each path is
//! opened from it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, which fails rather than follow a symlink or leave the tree, and the
//! syscalls then act on the opened object through `/proc/self/fd/N`: the kernel resolves that
//! magic link to exactly the object opened, so a rename or a new symlink afterwards cannot
//! redirect the mount. For calls that must not follow their last component (unmount, unlink,
//! mknod), [`Root::parent`] opens the parent the same way and the call gets
//! `/proc/self/fd/N/<name>`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Why a path could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path} is outside {root}")]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{path} has a symbolic link in it (at or below {root}); symlinks are never followed")]
    Symlink { path: PathBuf, root: PathBuf },
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BeneathError {
    /// The path is absent (nothing to act on).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BeneathError::NotFound { .. })
    }
}

/// The top of a confined tree.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    /// As configured.
    path: PathBuf,
    /// The same with symlinks resolved (a kubelet directory reached through a symlink).
    canonical: PathBuf,
}

/// An object opened beneath a [`Root`] (an `O_PATH` descriptor).
#[derive(Debug)]
pub struct Handle {
    fd: OwnedFd,
    path: PathBuf,
}

impl Handle {
    /// `/proc/self/fd/N`: the opened object itself, for syscalls that take a path.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// `/proc/self/fd/N/<name>`: an entry of this directory, whose last component the
    /// syscall resolves itself (use with calls that do not follow it).
    pub fn child_proc_path(&self, name: &std::ffi::OsStr) -> PathBuf {
        self.proc_path().join(name)
    }

    /// The path it was opened as (for messages and mount-table lookups).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for Handle {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_PATH)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

impl Root {
    /// Open the tree's top (it must exist and be a directory; it may itself be reached
    /// through symlinks: that is the operator's configuration, resolved once here).
    pub fn open(path: &Path) -> Result<Self, BeneathError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| BeneathError::Io {
            op: "resolving",
            path: path.to_owned(),
            source,
        })?;
        let fd = nix::fcntl::open(
            &canonical,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BeneathError::Io {
            op: "opening",
            path: canonical.clone(),
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            path: path.to_owned(),
            canonical,
        })
    }

    /// The configured path of the top.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `abs` relative to the top (as configured or resolved), or an error when it is not
    /// beneath it. `abs` must be normalised (no `.` or `..`).
    pub fn relative<'a>(&self, abs: &'a Path) -> Result<&'a Path, BeneathError> {
        let rel = abs
            .strip_prefix(&self.path)
            .or_else(|_| abs.strip_prefix(&self.canonical))
            .map_err(|_| BeneathError::Outside {
                path: abs.to_owned(),
                root: self.path.clone(),
            })?;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(BeneathError::Outside {
                path: abs.to_owned(),
                root: self.path.clone(),
            });
        }
        Ok(rel)
    }

    fn open_rel(&self, abs: &Path, rel: &Path, flags: OFlag) -> Result<OwnedFd, BeneathError> {
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        openat2(self.fd.as_fd(), target, how(flags)).map_err(|e| self.classify(abs, e))
    }

    fn classify(&self, abs: &Path, e: nix::errno::Errno) -> BeneathError {
        use nix::errno::Errno;
        match e {
            Errno::ELOOP => BeneathError::Symlink {
                path: abs.to_owned(),
                root: self.path.clone(),
            },
            Errno::EXDEV => BeneathError::Outside {
                path: abs.to_owned(),
                root: self.path.clone(),
            },
            Errno::ENOENT => BeneathError::NotFound {
                path: abs.to_owned(),
            },
            Errno::ENOTDIR => BeneathError::NotADirectory {
                path: abs.to_owned(),
            },
            e => BeneathError::Io {
                op: "opening",
                path: abs.to_owned(),
                source: e.into(),
            },
        }
    }

    /// Open an existing directory beneath the top, following no symlink.
    pub fn dir(&self, abs: &Path) -> Result<Handle, BeneathError> {
        let rel = self.relative(abs)?;
        let fd = self.open_rel(abs, rel, OFlag::O_DIRECTORY)?;
        Ok(Handle {
            fd,
            path: abs.to_owned(),
        })
    }

    /// Open whatever is at `abs` (directory, file, device node), following no symlink; a
    /// symlink as the last component is refused too.
    pub fn any(&self, abs: &Path) -> Result<Handle, BeneathError> {
        let rel = self.relative(abs)?;
        let fd = self.open_rel(abs, rel, OFlag::empty())?;
        Ok(Handle {
            fd,
            path: abs.to_owned(),
        })
    }

    /// The parent directory of `abs` (opened as [`Root::dir`]) and the last component's name.
    pub fn parent(&self, abs: &Path) -> Result<(Handle, OsString), BeneathError> {
        let rel = self.relative(abs)?;
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(BeneathError::Outside {
                path: abs.to_owned(),
                root: self.path.clone(),
            });
        };
        let parent_abs = abs.parent().unwrap_or(abs);
        let fd = self.open_rel(parent_abs, parent, OFlag::O_DIRECTORY)?;
        Ok((
            Handle {
                fd,
                path: parent_abs.to_owned(),
            },
            name.to_owned(),
        ))
    }

    /// Create `abs` and any missing parents (mode 0750) beneath the top, one component at a
    /// time, never through a symlink; returns the directory opened, and whether this call
    /// created the last component (so a failure afterwards can remove exactly that).
    pub fn mkdir_all(&self, abs: &Path) -> Result<(Handle, bool), BeneathError> {
        let rel = self.relative(abs)?;
        let mut cur = self.open_rel(abs, Path::new(""), OFlag::O_DIRECTORY)?;
        let mut walked = PathBuf::new();
        let mut created_last = false;
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(BeneathError::Outside {
                    path: abs.to_owned(),
                    root: self.path.clone(),
                });
            };
            walked.push(name);
            let shown = self.path.join(&walked);
            created_last =
                match nix::sys::stat::mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o750)) {
                    Ok(()) => true,
                    Err(nix::errno::Errno::EEXIST) => false,
                    Err(e) => {
                        return Err(BeneathError::Io {
                            op: "creating",
                            path: shown,
                            source: e.into(),
                        })
                    }
                };
            let next = openat2(cur.as_fd(), Path::new(name), how(OFlag::O_DIRECTORY))
                .map_err(|e| self.classify(&shown, e))?;
            cur = next;
        }
        Ok((
            Handle {
                fd: cur,
                path: abs.to_owned(),
            },
            created_last,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let r = Root::open(d.path()).unwrap();
        (d, r)
    }

    #[test]
    fn paths_outside_or_through_symlinks_are_refused() {
        let (d, r) = root();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        assert!(matches!(
            r.dir(Path::new("/etc")),
            Err(BeneathError::Outside { .. })
        ));
        assert!(matches!(
            r.dir(&d.path().join("link")),
            Err(BeneathError::Symlink { .. })
        ));
        assert!(matches!(
            r.mkdir_all(&d.path().join("link/sub")),
            Err(BeneathError::Symlink { .. })
        ));
        assert!(
            !outside.path().join("sub").exists(),
            "nothing created through the link"
        );
        assert!(matches!(
            r.parent(&d.path().join("link/x")),
            Err(BeneathError::Symlink { .. })
        ));
        assert!(r.dir(&d.path().join("real")).is_ok());
        assert!(matches!(
            r.dir(&d.path().join("missing")),
            Err(BeneathError::NotFound { .. })
        ));
    }

    #[test]
    fn mkdir_all_creates_and_reports_the_last_component() {
        let (d, r) = root();
        let p = d.path().join("a/b/c");
        let (h, created) = r.mkdir_all(&p).unwrap();
        assert!(created && p.is_dir());
        assert_eq!(
            std::fs::canonicalize(h.proc_path()).unwrap(),
            std::fs::canonicalize(&p).unwrap()
        );
        let (_, created) = r.mkdir_all(&p).unwrap();
        assert!(!created, "already there");
    }

    #[test]
    fn the_resolved_form_of_a_symlinked_root_is_accepted() {
        let real = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let via = links.path().join("kubelet");
        std::os::unix::fs::symlink(real.path(), &via).unwrap();
        let r = Root::open(&via).unwrap();
        std::fs::create_dir(real.path().join("x")).unwrap();
        assert!(r.dir(&via.join("x")).is_ok(), "configured form");
        let canon = std::fs::canonicalize(real.path()).unwrap();
        assert!(r.dir(&canon.join("x")).is_ok(), "resolved form");
    }
}
