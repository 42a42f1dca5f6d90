//! The mount watcher: one stream of typed [`MountEvent`]s on a bounded channel, from one of
//! three kernel mechanisms ([`Strategy`]):
//!
//! * [`Strategy::Fanotify`] (Linux 6.15+): fanotify mount-namespace events name each attached
//!   and detached mount by its 64-bit id; attached mounts are `statmount`ed at once (statmount
//!   fails after detach, so the table doubles as the cache a detach is answered from). The
//!   queue holds 16,384 events; on `FAN_Q_OVERFLOW` the watcher resyncs with
//!   `listmount`+`statmount`. fanotify says nothing about remounts, so a `POLLPRI` wake on
//!   mountinfo re-`statmount`s the *tracked* mounts.
//! * [`Strategy::ListStat`] (6.8+): on each `POLLPRI` wake, `listmount` the ids, diff the id
//!   sets, `statmount` the new ids and the tracked ones.
//! * [`Strategy::Reread`] (any kernel): on each `POLLPRI` wake, re-read and diff the whole
//!   mountinfo (what `findmnt --poll` does; O(table) per change).
//!
//! The two statmount-based strategies see attach, detach, and every change of a *tracked*
//! mount (remount, move, propagation); a remount of an untracked mount is seen only by
//! `Reread` (the published table keeps its previous options until a resync). Track what you
//! care about with [`WatcherHandle::track`].
//!
//! Every strategy subscribes first, then scans, then emits the scan as one
//! [`MountEvent::Resynced`] (always the first event), so nothing between the two is missed.
//! Bursts coalesce: each wake-up makes one pass, whatever the number of changes behind it.
//! Every full read (mountinfo, or listmount+statmount of everything) runs off the runtime and
//! is bounded by [`WatcherConfig::read_timeout`]: past it a [`MountEvent::Error`] says the
//! table may be flooded, and the watcher keeps going.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::mountinfo::{mountinfo_path, MountInfo};
use crate::storm::{StormCleared, StormConfig, StormDetector, StormReport};
use crate::sys::{listmount_all, MountFanotify};
use crate::table::MountTable;

/// Default bound on one full read of the mount table (the Go driver's seed constant).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default capacity of the event channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;

/// Which kernel mechanism drives the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Fanotify, else ListStat, else Reread; the fallback is logged once.
    Auto,
    Fanotify,
    ListStat,
    Reread,
}

/// Watcher configuration; build it once and pass it down.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// The procfs root (`/proc` on a node); the watcher reads `<proc_root>/self/...`.
    pub proc_root: PathBuf,
    pub strategy: Strategy,
    /// Deadline of one full read of the table.
    pub read_timeout: Duration,
    pub storm: StormConfig,
    pub channel_capacity: usize,
}

impl WatcherConfig {
    /// Defaults for everything but the proc root.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            strategy: Strategy::Auto,
            read_timeout: DEFAULT_READ_TIMEOUT,
            storm: StormConfig::default(),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
        }
    }
}

/// What the watcher reports.
#[derive(Debug, Clone)]
pub enum MountEvent {
    Attached(MountInfo),
    Detached(MountInfo),
    /// Remount (options), move (mount point), propagation change of the same mount.
    Changed {
        old: MountInfo,
        new: MountInfo,
    },
    /// A complete, exact snapshot: at start-up (always the first event) and after an
    /// overflow. Changes since the previous event are not itemised: reconcile against it.
    Resynced {
        table: Arc<MountTable>,
    },
    /// Events were lost (fanotify queue overflow); a [`MountEvent::Resynced`] follows.
    Overflow,
    Storm(StormReport),
    StormCleared(StormCleared),
    /// Something went wrong but the watcher keeps running (read deadline exceeded, a failed
    /// syscall, unparsable lines).
    Error(String),
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("fanotify mount events unavailable (needs Linux 6.15+ and CAP_SYS_ADMIN)")]
    Fanotify(#[source] io::Error),
    #[error("listmount(2)/statmount(2) unavailable (needs Linux 6.8+)")]
    Listmount(#[source] io::Error),
    #[error("cannot open {path} for POLLPRI")]
    OpenMountinfo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot register {what} with the tokio reactor (spawn must run inside a runtime)")]
    Register {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// State shared between the watcher task and its handle.
#[derive(Debug, Default)]
struct Shared {
    table: Mutex<Arc<MountTable>>,
    tracked: Mutex<HashSet<u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Controls a running watcher. Dropping it stops the watcher.
#[derive(Debug)]
pub struct WatcherHandle {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    strategy: Strategy,
}

impl WatcherHandle {
    /// Re-read this mount (mountinfo id) first on every remount wake-up, and report its
    /// remounts and moves whatever the strategy.
    pub fn track(&self, mount_id: u32) {
        lock(&self.shared.tracked).insert(mount_id);
    }

    pub fn untrack(&self, mount_id: u32) {
        lock(&self.shared.tracked).remove(&mount_id);
    }

    /// The current snapshot: an `Arc` clone, cheap. Empty until the initial scan finished
    /// (the first [`MountEvent::Resynced`]).
    pub fn table(&self) -> Arc<MountTable> {
        lock(&self.shared.table).clone()
    }

    /// The strategy actually running (never `Auto`).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The watcher task ended (its receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribe (synchronously, so a missing facility is an error here), then spawn the task
/// that scans, emits the scan and follows changes. Must be called inside a tokio runtime.
pub fn spawn(
    config: WatcherConfig,
) -> Result<(WatcherHandle, mpsc::Receiver<MountEvent>), WatchError> {
    let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
    let shared = Arc::new(Shared::default());
    let pri = open_pollpri(&config.proc_root)?;
    let (strategy, fan) = choose(&config)?;
    let engine = Engine {
        tx,
        shared: shared.clone(),
        storm: StormDetector::new(config.storm.clone()),
        read_timeout: config.read_timeout,
        proc_root: config.proc_root.clone(),
    };
    let task = match (strategy, fan) {
        (Strategy::Fanotify, Some(fan)) => tokio::spawn(engine.run_fanotify(pri, fan)),
        (Strategy::ListStat, _) => tokio::spawn(engine.run_liststat(pri)),
        _ => tokio::spawn(engine.run_reread(pri)),
    };
    tracing::info!(?strategy, proc_root = %config.proc_root.display(), "mount watcher started");
    Ok((
        WatcherHandle {
            shared,
            task,
            strategy,
        },
        rx,
    ))
}

fn choose(
    config: &WatcherConfig,
) -> Result<(Strategy, Option<AsyncFd<MountFanotify>>), WatchError> {
    let ns = config.proc_root.join("self").join("ns").join("mnt");
    let fanotify = || -> Result<AsyncFd<MountFanotify>, WatchError> {
        let fan = MountFanotify::watch_namespace(&ns).map_err(WatchError::Fanotify)?;
        // SAFETY: the AsyncFd owns the fanotify fd, which stays open and unchanged until the
        // AsyncFd is dropped.
        unsafe { AsyncFd::register_with_interest(fan, Interest::READABLE) }.map_err(|e| {
            WatchError::Register {
                what: "the fanotify group",
                source: e.into_parts().1,
            }
        })
    };
    let liststat = || listmount_all().map(|_| ()).map_err(WatchError::Listmount);
    match config.strategy {
        Strategy::Fanotify => Ok((Strategy::Fanotify, Some(fanotify()?))),
        Strategy::ListStat => liststat().map(|()| (Strategy::ListStat, None)),
        Strategy::Reread => Ok((Strategy::Reread, None)),
        Strategy::Auto => match fanotify() {
            Ok(fan) => Ok((Strategy::Fanotify, Some(fan))),
            Err(e) => match liststat() {
                Ok(()) => {
                    tracing::warn!(error = %rds_types::error_chain(&e), "mount watcher falls back to listmount/statmount on POLLPRI");
                    Ok((Strategy::ListStat, None))
                }
                Err(e2) => {
                    tracing::warn!(fanotify = %rds_types::error_chain(&e), listmount = %rds_types::error_chain(&e2), "mount watcher falls back to re-reading mountinfo on POLLPRI");
                    Ok((Strategy::Reread, None))
                }
            },
        },
    }
}

fn open_pollpri(proc_root: &Path) -> Result<AsyncFd<std::fs::File>, WatchError> {
    let path = mountinfo_path(proc_root, "self");
    let file = std::fs::File::open(&path).map_err(|source| WatchError::OpenMountinfo {
        path: path.clone(),
        source,
    })?;
    // SAFETY: the AsyncFd owns the file, whose fd stays open and unchanged until it is dropped.
    unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }.map_err(|e| {
        WatchError::Register {
            what: "mountinfo",
            source: e.into_parts().1,
        }
    })
}

mod engine;
mod fanotify;
mod liststat;
mod reread;

use engine::Engine;
