//! Raw block publish by `mknod(2)` of the device number (incident 1: bind-mounting device nodes
//! from devtmpfs under Bidirectional propagation cascaded into a mount storm). Every idempotent
//! publish re-checks the number: after renumbering an old node could point at another volume.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};
use rds_types::DevNum;

/// What is at a block-node target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Matches,
    Different(DevNum),
    NotABlockDevice,
    Missing,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("creating block node {target} for {dev} failed")]
    Create {
        target: PathBuf,
        dev: DevNum,
        #[source]
        errno: nix::errno::Errno,
    },
    #[error("{target} already exists and is not a block node for {dev} ({state:?})")]
    Conflict {
        target: PathBuf,
        dev: DevNum,
        state: NodeState,
    },
    #[error("examining {target} failed")]
    Io {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Create a block device node for `dev` at `target` with exactly `mode` (permission bits; the
/// umask is overridden). Idempotent: an existing node for the same number is accepted, any
/// other file is a [`NodeError::Conflict`].
pub fn create_block_node(target: &Path, dev: DevNum, mode: u32) -> Result<(), NodeError> {
    match nix::sys::stat::mknod(
        target,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(mode & 0o777),
        dev.to_dev_t() as libc::dev_t,
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => {
            return match check_block_node(target, dev)? {
                NodeState::Matches => Ok(()),
                state => Err(NodeError::Conflict {
                    target: target.to_owned(),
                    dev,
                    state,
                }),
            };
        }
        Err(errno) => {
            return Err(NodeError::Create {
                target: target.to_owned(),
                dev,
                errno,
            })
        }
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode & 0o777)).map_err(
        |source| NodeError::Io {
            target: target.to_owned(),
            source,
        },
    )?;
    tracing::info!(target = %target.display(), dev = %dev, mode = format!("{:o}", mode & 0o777), "created block node");
    Ok(())
}

/// What `target` is, compared with `expected` (lstat: a symlink is not a block node).
pub fn check_block_node(target: &Path, expected: DevNum) -> Result<NodeState, NodeError> {
    let meta = match std::fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(NodeState::Missing),
        Err(source) => {
            return Err(NodeError::Io {
                target: target.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_block_device() {
        return Ok(NodeState::NotABlockDevice);
    }
    let actual = DevNum::from_dev_t(meta.rdev());
    Ok(if actual == expected {
        NodeState::Matches
    } else {
        NodeState::Different(actual)
    })
}

/// Remove the block node at `target` only if it is a block node for `expected`. Returns false
/// when it was already gone.
pub fn remove_block_node(target: &Path, expected: DevNum) -> Result<bool, NodeError> {
    match check_block_node(target, expected)? {
        NodeState::Missing => Ok(false),
        NodeState::Matches => {
            std::fs::remove_file(target).map_err(|source| NodeError::Io {
                target: target.to_owned(),
                source,
            })?;
            tracing::info!(target = %target.display(), dev = %expected, "removed block node");
            Ok(true)
        }
        state => Err(NodeError::Conflict {
            target: target.to_owned(),
            dev: expected,
            state,
        }),
    }
}
