//! What the watcher tells its receiver, and the pure mapping from decoded kernel events to it.

use std::time::Instant;

use rds_types::DevNum;

use crate::parse::{Fsid, RawEvent};
use crate::registry::{Registry, Resolution};
use crate::sys::{FAN_FS_ERROR, FAN_Q_OVERFLOW};

/// One notification for the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsErrorEvent {
    /// A watched filesystem reported an error. `fsid` identifies the superblock incarnation:
    /// compare it with the [`Fsid`] that [`crate::FsErrorHandle::watch`] returned for the
    /// current mount of `dev` to tell an error of today's filesystem from one of a previous
    /// filesystem on the same device number.
    Error {
        dev: DevNum,
        fsid: Fsid,
        /// First error since the event was last read (positive errno, e.g. 5 = EIO). 0 when
        /// the kernel sent no error record (never seen; kept so the device is still named).
        errno: i32,
        /// Errors merged into this event (0 when the kernel sent no error record).
        count: u32,
        /// When the watcher read the event from the kernel.
        observed_at: Instant,
    },
    /// An error on a filesystem whose fsid no current watch maps to a device. Not dropped:
    /// something this process marked is failing, and the caller decides what that means.
    UnknownFilesystem {
        fsid: Fsid,
        errno: i32,
        count: u32,
        observed_at: Instant,
    },
    /// Events may have been lost: the caller must re-check every watched filesystem (mountinfo
    /// super options `emergency_ro` / `shutdown`, or a probe of its own).
    Lost {
        cause: LostCause,
        observed_at: Instant,
    },
}

/// Why [`FsErrorEvent::Lost`] was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostCause {
    /// The kernel's queue for this group overflowed (`FAN_Q_OVERFLOW`).
    QueueOverflow,
    /// Bytes from the kernel did not decode; what they said is unknown.
    Unparsable,
    /// `read(2)` on the fanotify group failed.
    ReadFailed,
}

/// Map one decoded event. `None` for events of unwatched-on-purpose filesystems (see
/// [`Resolution::Retired`]) and for masks this group never asked for.
pub fn map_event(
    raw: &RawEvent,
    registry: &Registry,
    observed_at: Instant,
) -> Option<FsErrorEvent> {
    if raw.mask & FAN_Q_OVERFLOW != 0 {
        return Some(FsErrorEvent::Lost {
            cause: LostCause::QueueOverflow,
            observed_at,
        });
    }
    if raw.mask & FAN_FS_ERROR == 0 {
        tracing::warn!(
            mask = raw.mask,
            "fanotify event with an unexpected mask ignored"
        );
        return None;
    }
    let Some(fsid) = raw.fsid else {
        // An error we cannot attribute: every watched filesystem is suspect.
        return Some(FsErrorEvent::Lost {
            cause: LostCause::Unparsable,
            observed_at,
        });
    };
    let (errno, count) = raw.error.map_or((0, 0), |e| (e.errno, e.count));
    match registry.resolve(fsid) {
        Resolution::Watched(dev) => Some(FsErrorEvent::Error {
            dev,
            fsid,
            errno,
            count,
            observed_at,
        }),
        Resolution::Retired => {
            tracing::debug!(%fsid, errno, "filesystem error on an unwatched filesystem dropped");
            None
        }
        Resolution::Unknown => Some(FsErrorEvent::UnknownFilesystem {
            fsid,
            errno,
            count,
            observed_at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::ErrorInfo;
    use std::path::Path;

    const DEV: DevNum = DevNum::new(7, 3);
    const FSID: Fsid = Fsid([11, 22]);

    fn fs_error(fsid: Option<Fsid>) -> RawEvent {
        RawEvent {
            mask: FAN_FS_ERROR,
            fd: -1,
            pid: 0,
            fsid,
            handle_type: None,
            error: Some(ErrorInfo { errno: 5, count: 2 }),
        }
    }

    fn watched() -> Registry {
        let mut r = Registry::default();
        r.insert(DEV, FSID, Path::new("/staging/a"));
        r
    }

    #[test]
    fn error_on_a_watched_fsid_names_its_device() {
        let now = Instant::now();
        assert_eq!(
            map_event(&fs_error(Some(FSID)), &watched(), now),
            Some(FsErrorEvent::Error {
                dev: DEV,
                fsid: FSID,
                errno: 5,
                count: 2,
                observed_at: now
            })
        );
    }

    #[test]
    fn error_on_an_unknown_fsid_is_reported_as_unknown_filesystem() {
        let now = Instant::now();
        let other = Fsid([1, 1]);
        assert_eq!(
            map_event(&fs_error(Some(other)), &watched(), now),
            Some(FsErrorEvent::UnknownFilesystem {
                fsid: other,
                errno: 5,
                count: 2,
                observed_at: now
            })
        );
    }

    #[test]
    fn error_on_a_retired_fsid_is_dropped() {
        let mut r = watched();
        r.remove_dev(DEV);
        r.retire(FSID);
        assert_eq!(map_event(&fs_error(Some(FSID)), &r, Instant::now()), None);
    }

    #[test]
    fn error_without_fsid_means_events_were_lost() {
        let now = Instant::now();
        assert_eq!(
            map_event(&fs_error(None), &watched(), now),
            Some(FsErrorEvent::Lost {
                cause: LostCause::Unparsable,
                observed_at: now
            })
        );
    }

    #[test]
    fn queue_overflow_is_reported_as_lost_events() {
        let now = Instant::now();
        let raw = RawEvent {
            mask: FAN_Q_OVERFLOW,
            error: None,
            fsid: None,
            ..fs_error(None)
        };
        assert_eq!(
            map_event(&raw, &watched(), now),
            Some(FsErrorEvent::Lost {
                cause: LostCause::QueueOverflow,
                observed_at: now
            })
        );
    }

    #[test]
    fn unexpected_masks_are_ignored() {
        let raw = RawEvent {
            mask: 0x2,
            ..fs_error(Some(FSID))
        };
        assert_eq!(map_event(&raw, &watched(), Instant::now()), None);
    }
}
