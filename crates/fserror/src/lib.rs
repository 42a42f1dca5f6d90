//! Filesystem-error watcher: tells the monitor, the moment the kernel reports it, that the
//! filesystem of a staged volume hit an error.
//!
//! One fanotify group (`FAN_REPORT_FID`) carries a `FAN_MARK_FILESYSTEM` mark with
//! `FAN_FS_ERROR` (Linux 5.16+) on every watched superblock. The kernel reports an error record
//! (errno, count) and the superblock's fsid; [`FsErrorHandle::watch`] recorded which device
//! that fsid belongs to, so each event names its [`rds_types::DevNum`]. On ext4 the event
//! arrives with the first filesystem operation after a failure (journal abort on a dead path,
//! I/O after `EXT4_IOC_SHUTDOWN`), long before kubelet's next stats call would notice.
//!
//! * What raises the event (measured on Linux 6.18, see `tests/kernel.rs`): on a dead path
//!   (EIO from the device) the data write and fsync fail, the next journal commit (`syncfs`, or
//!   jbd2's 5 s timer) aborts the journal, and the next operation that starts a journal handle
//!   calls `ext4_abort`: that raises `FAN_FS_ERROR`. `EXT4_IOC_SHUTDOWN` raises **none**: every
//!   operation fails with EIO before ext4 looks at its journal; a shut-down filesystem shows
//!   only as `shutdown` in its mountinfo super options, which the caller must check itself.
//! * Superblock incarnations: ext4's fsid comes from its UUID, so a new filesystem on the same
//!   `major:minor` has a new fsid. Events carry the fsid; compare it with what `watch` returned.
//! * Lost events (queue overflow, undecodable bytes) arrive as [`FsErrorEvent::Lost`]: the
//!   caller re-checks the super options of every watched mount.
//! * An error on an fsid no watch maps to arrives as [`FsErrorEvent::UnknownFilesystem`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), rds_fserror::FsErrorError> {
//! use rds_fserror::{FsErrorEvent, FsErrorWatcher};
//! let (handle, mut events) = FsErrorWatcher::spawn(64)?;
//! let fsid = handle.watch("/var/lib/kubelet/plugins/x/staging".as_ref(), "259:3".parse().unwrap())?;
//! while let Some(ev) = events.recv().await {
//!     if let FsErrorEvent::Error { dev, fsid: f, errno, .. } = ev {
//!         println!("{dev} failed with errno {errno} (current incarnation: {})", f == fsid);
//!     }
//! }
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;

use rds_types::DevNum;

mod event;
pub mod parse;
mod registry;
pub mod sys;
mod watcher;

pub use event::{map_event, FsErrorEvent, LostCause};
pub use parse::Fsid;
pub use registry::{Registry, Resolution, Watched};
pub use watcher::{FsErrorHandle, FsErrorWatcher, Unwatched};

/// Errors of the watcher and its handle.
#[derive(Debug, thiserror::Error)]
pub enum FsErrorError {
    #[error("the filesystem-error watcher must be spawned inside a tokio runtime")]
    NoRuntime,
    #[error("fanotify_init(FAN_REPORT_FID) failed (needs CAP_SYS_ADMIN)")]
    Init {
        #[source]
        source: std::io::Error,
    },
    #[error("registering the fanotify group with the tokio reactor failed")]
    Register {
        #[source]
        source: std::io::Error,
    },
    #[error("opening mount point {path:?} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?} is on device {found}, not on {expected}")]
    DeviceMismatch {
        path: PathBuf,
        expected: DevNum,
        found: DevNum,
    },
    #[error("filesystem at {path:?} (device {dev}) has fsid {fsid}, already watched for device {other}: errors could not be told apart")]
    FsidCollision {
        path: PathBuf,
        fsid: Fsid,
        dev: DevNum,
        other: DevNum,
    },
    #[error("fanotify_mark(FAN_FS_ERROR) on {path:?} (fsid {fsid}) failed (needs Linux 5.16+ and a filesystem that reports errors)")]
    Mark {
        path: PathBuf,
        fsid: Fsid,
        #[source]
        source: std::io::Error,
    },
    #[error("device {dev} is not watched")]
    NotWatched { dev: DevNum },
    #[error("the filesystem-error watcher has stopped")]
    Stopped,
}
