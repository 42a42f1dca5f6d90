//! Volume statistics (statvfs) and device size (BLKGETSIZE64). Both can hang on a dead
//! device (incident 10): callers run them through [`crate::deadline::run_blocking`].

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatError {
    #[error("statvfs on {path} failed")]
    Statvfs {
        path: PathBuf,
        #[source]
        errno: nix::errno::Errno,
    },
    #[error("querying the size of {path} failed")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Capacity figures of the filesystem containing `path`. `available` is what an unprivileged
/// user can still write (f_bavail), `used` is total minus free (f_bfree).
pub fn volume_stats(path: &Path) -> Result<VolumeStats, StatError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|errno| StatError::Statvfs {
        path: path.to_owned(),
        errno,
    })?;
    let frsize = s.fragment_size() as u64;
    let blocks = s.blocks() as u64;
    let files = s.files() as u64;
    let ffree = s.files_free() as u64;
    Ok(VolumeStats {
        total_bytes: blocks * frsize,
        available_bytes: s.blocks_available() as u64 * frsize,
        used_bytes: blocks.saturating_sub(s.blocks_free() as u64) * frsize,
        total_inodes: files,
        free_inodes: ffree,
        used_inodes: files.saturating_sub(ffree),
    })
}

/// Size in bytes of the block device at `dev_path` (BLKGETSIZE64; a regular file's length).
pub fn block_size(dev_path: &Path) -> Result<u64, StatError> {
    let err = |source| StatError::Size {
        path: dev_path.to_owned(),
        source,
    };
    let f = std::fs::File::open(dev_path).map_err(err)?;
    crate::blockdev::size_of(&f).map_err(err)
}
