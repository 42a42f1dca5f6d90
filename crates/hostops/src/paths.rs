//! Paths as the mount table spells them.

use std::path::{Path, PathBuf};

/// `path` with symlinks in its parent resolved, as the mount table spells it; `path` itself when
/// that fails (the caller then compares the literal path).
pub(crate) fn resolved_path(path: &Path) -> PathBuf {
    resolve_parent(path)
        .ok()
        .flatten()
        .unwrap_or_else(|| path.to_owned())
}

/// Resolve symlinks in the parent only, never touching `path` itself (it may be a dead mount).
/// `None` when the parent does not exist.
pub(crate) fn resolve_parent(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Some(path.to_owned()));
    };
    match std::fs::canonicalize(parent) {
        Ok(p) => Ok(Some(p.join(name))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
