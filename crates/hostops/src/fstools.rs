//! Filesystem maintenance tools: e2fsck (only on an unmounted device, incident 4), resize2fs
//! and xfs_growfs, each bounded in time with its exit codes mapped precisely.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_mounts::MountView;
use rds_types::DevNum;

use crate::blockdev;
use crate::command::{self, Tool, ToolError};
use crate::probe::FsKind;

/// A check that completed without leaving errors behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsckOutcome {
    /// Exit 0.
    Clean,
    /// Exit 1: errors were corrected.
    Corrected,
    /// Exit 2 (or 3): errors corrected, the system "should be rebooted" (meaningful only for a
    /// mounted root filesystem; reported so the caller can log it).
    CorrectedRebootRequired,
}

/// e2fsck's exit-status bits (e2fsck(8)).
pub fn fsck_exit_meanings(code: i32) -> Vec<&'static str> {
    let bits = [
        (1, "errors corrected"),
        (2, "errors corrected, reboot required"),
        (4, "errors left uncorrected"),
        (8, "operational error"),
        (16, "usage or syntax error"),
        (32, "cancelled by user request"),
        (128, "shared library error"),
    ];
    bits.iter()
        .filter(|(b, _)| code & b != 0)
        .map(|(_, m)| *m)
        .collect()
}

/// Map an e2fsck exit code: 0/1/2(3) complete, anything with bit 4 or higher is a failure.
pub fn classify_fsck_exit(code: i32) -> Option<FsckOutcome> {
    match code {
        0 => Some(FsckOutcome::Clean),
        1 => Some(FsckOutcome::Corrected),
        2 | 3 => Some(FsckOutcome::CorrectedRebootRequired),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("{device} ({dev}) is mounted at {mount_point}; refusing to fsck a mounted filesystem")]
    Mounted {
        device: PathBuf,
        dev: DevNum,
        mount_point: PathBuf,
    },
    #[error(
        "{device} is held exclusively (mounted in another namespace or claimed); refusing to fsck"
    )]
    Busy { device: PathBuf },
    #[error("{device} is not a block device")]
    NotABlockDevice { device: PathBuf },
    #[error("examining {device} failed")]
    Stat {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "e2fsck on {device} found problems it did not fix (exit {code}: {meanings:?}): {stderr}"
    )]
    Failed {
        device: PathBuf,
        code: i32,
        meanings: Vec<&'static str>,
        stderr: String,
    },
    #[error("e2fsck on {device} did not complete")]
    Tool {
        device: PathBuf,
        #[source]
        source: ToolError,
    },
}

/// `e2fsck -p` on an unmounted ext2/3/4 device. `table` is our namespace's mount table (a
/// device mounted elsewhere is caught by the `O_EXCL` open). Blocking, bounded by `deadline`.
pub fn fsck_ext4(
    device: &Path,
    table: &MountView,
    deadline: Duration,
) -> Result<FsckOutcome, FsckError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(device).map_err(|source| FsckError::Stat {
        device: device.to_owned(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(FsckError::NotABlockDevice {
            device: device.to_owned(),
        });
    }
    let dev = DevNum::from_dev_t(meta.rdev());
    if let Some(m) = table.mounts_of(dev).next() {
        return Err(FsckError::Mounted {
            device: device.to_owned(),
            dev,
            mount_point: m.mount_point.clone(),
        });
    }
    match blockdev::exclusive_open_ok(device) {
        Ok(true) => {}
        Ok(false) => {
            return Err(FsckError::Busy {
                device: device.to_owned(),
            })
        }
        Err(source) => {
            return Err(FsckError::Stat {
                device: device.to_owned(),
                source,
            })
        }
    }
    let tool = Tool::new("e2fsck", deadline).arg("-p").arg(device);
    let code = match command::run(&tool) {
        Ok(_) => 0,
        Err(ToolError::Exited { code, stderr, .. }) => match classify_fsck_exit(code) {
            Some(_) => code,
            None => {
                return Err(FsckError::Failed {
                    device: device.to_owned(),
                    code,
                    meanings: fsck_exit_meanings(code),
                    stderr,
                })
            }
        },
        Err(source) => {
            return Err(FsckError::Tool {
                device: device.to_owned(),
                source,
            })
        }
    };
    let outcome = classify_fsck_exit(code).unwrap_or(FsckOutcome::Clean);
    tracing::info!(device = %device.display(), dev = %dev, code, outcome = ?outcome, "e2fsck finished");
    Ok(outcome)
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("growing xfs needs its mount point (xfs_growfs works on a mounted filesystem only)")]
    XfsNeedsMountPoint,
    #[error("{tool} on {target} failed")]
    Tool {
        tool: &'static str,
        target: PathBuf,
        #[source]
        source: ToolError,
    },
}

/// Grow the filesystem to fill its (grown) device: resize2fs on the device for ext4 (online
/// when mounted), xfs_growfs on the mount point for xfs. Blocking, bounded by `deadline`.
pub fn resize(
    fs: FsKind,
    device: &Path,
    mount_point: Option<&Path>,
    deadline: Duration,
) -> Result<(), ResizeError> {
    let (name, target, tool) = match fs {
        FsKind::Ext4 => (
            "resize2fs",
            device.to_owned(),
            Tool::new("resize2fs", deadline).arg(device),
        ),
        FsKind::Xfs => {
            let mp = mount_point.ok_or(ResizeError::XfsNeedsMountPoint)?;
            (
                "xfs_growfs",
                mp.to_owned(),
                Tool::new("xfs_growfs", deadline).args(["-d"]).arg(mp),
            )
        }
    };
    command::run(&tool).map_err(|source| ResizeError::Tool {
        tool: name,
        target: target.clone(),
        source,
    })?;
    tracing::info!(fs = %fs, device = %device.display(), target = %target.display(), "filesystem resized");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsck_codes_zero_one_two_complete_and_four_or_more_fail() {
        assert_eq!(classify_fsck_exit(0), Some(FsckOutcome::Clean));
        assert_eq!(classify_fsck_exit(1), Some(FsckOutcome::Corrected));
        assert_eq!(
            classify_fsck_exit(2),
            Some(FsckOutcome::CorrectedRebootRequired)
        );
        for c in [4, 5, 8, 12, 16, 32, 128] {
            assert_eq!(classify_fsck_exit(c), None, "exit {c} must be a failure");
        }
    }

    #[test]
    fn fsck_exit_bits_are_decoded() {
        assert_eq!(
            fsck_exit_meanings(12),
            vec!["errors left uncorrected", "operational error"]
        );
    }
}
