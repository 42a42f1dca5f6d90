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
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::mountinfo::{mountinfo_path, parse_table, read_mountinfo_bytes, MountInfo};
use crate::storm::{
    top_offenders, StormCleared, StormConfig, StormDetector, StormReport, StormSignal,
};
use crate::sys::{listmount_all, statmount, FanMountEvent, MountFanotify};
use crate::table::{assemble, MountChange, MountTable};

/// Default bound on one full read of the mount table (the Go driver's seed constant).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default capacity of the event channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Most fanotify events handled in one pass (the kernel queue's own size).
const MAX_FAN_EVENTS_PER_PASS: usize = 16_384;

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
                    tracing::warn!(error = %error_chain(&e), "mount watcher falls back to listmount/statmount on POLLPRI");
                    Ok((Strategy::ListStat, None))
                }
                Err(e2) => {
                    tracing::warn!(fanotify = %error_chain(&e), listmount = %error_chain(&e2), "mount watcher falls back to re-reading mountinfo on POLLPRI");
                    Ok((Strategy::Reread, None))
                }
            },
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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

/// The receiver is gone: stop.
struct Closed;

/// The watcher task's state, shared by the three strategies.
struct Engine {
    tx: mpsc::Sender<MountEvent>,
    shared: Arc<Shared>,
    storm: StormDetector,
    read_timeout: Duration,
    proc_root: PathBuf,
}

impl Engine {
    async fn emit(&self, ev: MountEvent) -> Result<(), Closed> {
        self.tx.send(ev).await.map_err(|_| Closed)
    }

    /// Mutate the published table in place (copy-on-write: only clones when a reader still
    /// holds the previous snapshot) and return the new snapshot.
    fn mutate<R>(&self, f: impl FnOnce(&mut MountTable) -> R) -> (R, Arc<MountTable>) {
        let mut slot = lock(&self.shared.table);
        let r = f(Arc::make_mut(&mut slot));
        (r, slot.clone())
    }

    fn tracked(&self) -> Vec<u32> {
        lock(&self.shared.tracked).iter().copied().collect()
    }

    async fn storm_signals(&self, signals: Vec<StormSignal>) -> Result<(), Closed> {
        for s in signals {
            match s {
                StormSignal::Started(r) => {
                    tracing::warn!(key = %r.key, count = r.count, "{}", r.message);
                    self.emit(MountEvent::Storm(r)).await?;
                }
                StormSignal::Cleared(c) => {
                    tracing::info!(key = %c.key, count = c.count, peak = c.peak, lasted = ?c.lasted, "mount storm cleared");
                    self.emit(MountEvent::StormCleared(c)).await?;
                }
            }
        }
        Ok(())
    }

    /// Publish a batch of changes already applied to the table: events, then storm signals.
    async fn publish(
        &mut self,
        changes: Vec<MountChange>,
        table: Arc<MountTable>,
    ) -> Result<(), Closed> {
        if changes.is_empty() {
            return Ok(());
        }
        let signals = self.storm.observe(&table, &changes, Instant::now());
        drop(table);
        for c in changes {
            self.emit(match c {
                MountChange::Attached(m) => MountEvent::Attached(m),
                MountChange::Detached(m) => MountEvent::Detached(m),
                MountChange::Changed { old, new } => MountEvent::Changed { old, new },
            })
            .await?;
        }
        self.storm_signals(signals).await
    }

    /// Replace the table with a complete snapshot and say so.
    async fn publish_resync(&mut self, fresh: MountTable) -> Result<(), Closed> {
        let table = Arc::new(fresh);
        *lock(&self.shared.table) = table.clone();
        let signals = self.storm.resync(&table, Instant::now());
        self.emit(MountEvent::Resynced { table }).await?;
        self.storm_signals(signals).await
    }

    /// Run a full read off the runtime; past the deadline, warn (once) and keep waiting.
    async fn bounded<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<io::Result<T>, Closed> {
        let mut job = tokio::task::spawn_blocking(f);
        let joined = match tokio::time::timeout(self.read_timeout, &mut job).await {
            Ok(r) => r,
            Err(_) => {
                let table = self
                    .shared
                    .table
                    .lock()
                    .map(|t| t.clone())
                    .unwrap_or_default();
                let top = top_offenders(&table, 3)
                    .into_iter()
                    .map(|o| format!("{} ({})", o.key, o.count))
                    .collect::<Vec<_>>()
                    .join(", ");
                let msg = format!(
                    "{what} exceeded {}; the mount table may be flooded: {} entries at the last \
                     complete read (largest: {top}); inspect with: wc -l {}",
                    humantime::format_duration(self.read_timeout),
                    table.len(),
                    mountinfo_path(&self.proc_root, "self").display()
                );
                drop(table);
                tracing::error!("{msg}");
                self.emit(MountEvent::Error(msg)).await?;
                job.await
            }
        };
        Ok(joined.unwrap_or_else(|e| Err(io::Error::other(format!("{what} task failed: {e}")))))
    }

    async fn report_io(&self, what: &str, e: io::Error) -> Result<(), Closed> {
        tracing::warn!(error = %e, "{what} failed");
        self.emit(MountEvent::Error(format!("{what} failed: {e}")))
            .await
    }

    /// listmount + statmount of everything, bounded.
    async fn scan_statmount(&self) -> Result<io::Result<MountTable>, Closed> {
        self.bounded("listmount/statmount scan", || {
            let ids = listmount_all()?;
            let mut buf = Vec::new();
            let mut t = MountTable::new();
            for id in ids {
                match statmount(id, &mut buf) {
                    Ok(m) => {
                        t.insert(m);
                    }
                    // Unmounted between listmount and statmount.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(t)
        })
        .await
    }

    async fn initial_statmount_scan(&mut self) -> Result<(), Closed> {
        loop {
            match self.scan_statmount().await? {
                Ok(t) => return self.publish_resync(t).await,
                Err(e) => {
                    self.report_io("initial listmount/statmount scan", e)
                        .await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// statmount the tracked mounts and report those that changed (remount, move).
    async fn tracked_pass(&mut self) -> Result<(), Closed> {
        let tracked = self.tracked();
        if tracked.is_empty() {
            return Ok(());
        }
        let uniques: Vec<u64> = {
            let t = lock(&self.shared.table);
            tracked
                .iter()
                .filter_map(|id| t.get(*id).and_then(|m| m.unique_id))
                .collect()
        };
        let fresh = self
            .bounded("statmount of tracked mounts", move || {
                let mut buf = Vec::new();
                Ok(uniques
                    .into_iter()
                    .filter_map(|u| statmount(u, &mut buf).ok())
                    .collect::<Vec<_>>())
            })
            .await?;
        let fresh = match fresh {
            Ok(f) => f,
            Err(e) => return self.report_io("statmount of tracked mounts", e).await,
        };
        let (changes, table) = self.mutate(|t| {
            let mut changes = Vec::new();
            for new in fresh {
                let Some(old) = new.unique_id.and_then(|u| t.get_by_unique(u)) else {
                    continue;
                };
                if !old.same_mount_state(&new) {
                    let c = MountChange::Changed {
                        old: old.clone(),
                        new,
                    };
                    t.apply(&c);
                    changes.push(c);
                }
            }
            changes
        });
        self.publish(changes, table).await
    }

    async fn run_fanotify(mut self, pri: AsyncFd<std::fs::File>, fan: AsyncFd<MountFanotify>) {
        let _ = self.fanotify_loop(pri, fan).await;
        tracing::debug!("mount watcher stopped: receiver dropped");
    }

    async fn fanotify_loop(
        &mut self,
        pri: AsyncFd<std::fs::File>,
        fan: AsyncFd<MountFanotify>,
    ) -> Result<(), Closed> {
        self.initial_statmount_scan().await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = Vec::new();
        loop {
            tokio::select! {
                biased;
                guard = fan.readable() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => { self.report_io("fanotify poll", e).await?; continue; }
                    };
                    events.clear();
                    let mut failed = None;
                    while events.len() < MAX_FAN_EVENTS_PER_PASS {
                        match fan.get_ref().read_events(&mut buf, &mut events) {
                            Ok(0) => { guard.clear_ready(); break; }
                            Ok(_) => {}
                            Err(e) => { failed = Some(e); guard.clear_ready(); break; }
                        }
                    }
                    drop(guard);
                    if let Some(e) = failed {
                        self.report_io("fanotify read", e).await?;
                    }
                    if events.contains(&FanMountEvent::Overflow) {
                        self.overflow(&fan, &mut buf).await?;
                    } else {
                        let batch = std::mem::take(&mut events);
                        self.fanotify_pass(&batch).await?;
                        events = batch;
                    }
                }
                guard = pri.ready(Interest::PRIORITY) => {
                    match guard {
                        Ok(mut g) => g.clear_ready(),
                        Err(e) => { self.report_io("mountinfo POLLPRI", e).await?; continue; }
                    }
                    self.tracked_pass().await?;
                }
            }
        }
    }

    /// Apply one batch of fanotify events, in kernel order.
    async fn fanotify_pass(&mut self, batch: &[FanMountEvent]) -> Result<(), Closed> {
        let to_stat: Vec<u64> = {
            let t = lock(&self.shared.table);
            batch
                .iter()
                .filter_map(|e| match *e {
                    FanMountEvent::Attach(u) if t.get_by_unique(u).is_none() => Some(u),
                    FanMountEvent::Move(u) => Some(u),
                    _ => None,
                })
                .collect()
        };
        let stats = if to_stat.is_empty() {
            Vec::new()
        } else {
            match self
                .bounded("statmount of attached mounts", move || {
                    let mut buf = Vec::new();
                    Ok(to_stat
                        .into_iter()
                        .map(|u| (u, statmount(u, &mut buf)))
                        .collect::<Vec<_>>())
                })
                .await?
            {
                Ok(s) => s,
                Err(e) => return self.report_io("statmount of attached mounts", e).await,
            }
        };
        let mut errors = Vec::new();
        let (changes, table) = self.mutate(|t| {
            let mut stats: std::collections::HashMap<u64, io::Result<MountInfo>> =
                stats.into_iter().collect();
            let mut changes = Vec::new();
            for ev in batch {
                let c = match *ev {
                    FanMountEvent::Attach(u) | FanMountEvent::Move(u) => {
                        match stats.remove(&u) {
                            Some(Ok(new)) => match t.get_by_unique(u) {
                                Some(old) if old.same_mount_state(&new) => continue,
                                Some(old) => MountChange::Changed {
                                    old: old.clone(),
                                    new,
                                },
                                None => MountChange::Attached(new),
                            },
                            // Gone again before we looked: its detach follows.
                            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                            Some(Err(e)) => {
                                errors.push(format!("statmount of mount {u:#x} failed: {e}"));
                                continue;
                            }
                            None => continue,
                        }
                    }
                    FanMountEvent::Detach(u) => match t.get_by_unique(u) {
                        Some(old) => MountChange::Detached(old.clone()),
                        None => continue,
                    },
                    FanMountEvent::Overflow => continue,
                };
                t.apply(&c);
                changes.push(c);
            }
            changes
        });
        for e in errors {
            tracing::warn!("{e}");
            self.emit(MountEvent::Error(e)).await?;
        }
        self.publish(changes, table).await
    }

    /// The fanotify queue overflowed: drain what is queued (stale now), then resync.
    async fn overflow(
        &mut self,
        fan: &AsyncFd<MountFanotify>,
        buf: &mut [u8],
    ) -> Result<(), Closed> {
        tracing::warn!("fanotify mount event queue overflowed; resyncing with listmount/statmount");
        self.emit(MountEvent::Overflow).await?;
        let mut drained = Vec::new();
        while matches!(fan.get_ref().read_events(buf, &mut drained), Ok(n) if n > 0) {
            drained.clear();
        }
        loop {
            match self.scan_statmount().await? {
                Ok(t) => return self.publish_resync(t).await,
                Err(e) => {
                    self.report_io("resync after overflow", e).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn run_liststat(mut self, pri: AsyncFd<std::fs::File>) {
        let _ = self.liststat_loop(pri).await;
        tracing::debug!("mount watcher stopped: receiver dropped");
    }

    async fn liststat_loop(&mut self, pri: AsyncFd<std::fs::File>) -> Result<(), Closed> {
        self.initial_statmount_scan().await?;
        loop {
            match pri.ready(Interest::PRIORITY).await {
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    self.report_io("mountinfo POLLPRI", e).await?;
                    continue;
                }
            }
            self.tracked_pass().await?;
            self.liststat_pass().await?;
        }
    }

    /// listmount, diff the id sets, statmount the new ids.
    async fn liststat_pass(&mut self) -> Result<(), Closed> {
        let known: HashSet<u64> = lock(&self.shared.table).unique_ids().collect();
        let res = self
            .bounded("listmount", move || {
                let ids = listmount_all()?;
                let listed: HashSet<u64> = ids.iter().copied().collect();
                let mut buf = Vec::new();
                let mut new = Vec::new();
                for id in ids.into_iter().filter(|id| !known.contains(id)) {
                    match statmount(id, &mut buf) {
                        Ok(m) => new.push(m),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((listed, new))
            })
            .await?;
        let (listed, new) = match res {
            Ok(r) => r,
            Err(e) => return self.report_io("listmount pass", e).await,
        };
        let (changes, table) = self.mutate(|t| {
            let detached: Vec<MountInfo> = t
                .iter()
                .filter(|m| m.unique_id.is_some_and(|u| !listed.contains(&u)))
                .cloned()
                .collect();
            let changes = assemble(detached, Vec::new(), new);
            for c in &changes {
                t.apply(c);
            }
            changes
        });
        self.publish(changes, table).await
    }

    async fn run_reread(mut self, pri: AsyncFd<std::fs::File>) {
        let _ = self.reread_loop(pri).await;
        tracing::debug!("mount watcher stopped: receiver dropped");
    }

    async fn read_table(&self) -> Result<io::Result<crate::mountinfo::ParsedTable>, Closed> {
        let proc_root = self.proc_root.clone();
        self.bounded("mountinfo read", move || {
            read_mountinfo_bytes(&proc_root, "self").map(|b| parse_table(&b))
        })
        .await
    }

    async fn reread_loop(&mut self, pri: AsyncFd<std::fs::File>) -> Result<(), Closed> {
        loop {
            match self.read_table().await? {
                Ok(parsed) => {
                    self.report_parse_errors(&parsed.errors).await?;
                    self.publish_resync(parsed.entries.into_iter().collect())
                        .await?;
                    break;
                }
                Err(e) => {
                    self.report_io("initial mountinfo read", e).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        loop {
            match pri.ready(Interest::PRIORITY).await {
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    self.report_io("mountinfo POLLPRI", e).await?;
                    continue;
                }
            }
            let parsed = match self.read_table().await? {
                Ok(p) => p,
                Err(e) => {
                    self.report_io("mountinfo read", e).await?;
                    continue;
                }
            };
            self.report_parse_errors(&parsed.errors).await?;
            let keep_detached = parsed.errors.is_empty();
            let (changes, table) = self.mutate(|t| {
                let mut changes = t.diff_entries(&parsed.entries);
                if !keep_detached {
                    // A line we could not parse must not read as an unmount.
                    changes.retain(|c| !matches!(c, MountChange::Detached(_)));
                }
                for c in &changes {
                    t.apply(c);
                }
                changes
            });
            self.publish(changes, table).await?;
        }
    }

    async fn report_parse_errors(
        &self,
        errors: &[crate::mountinfo::ParseError],
    ) -> Result<(), Closed> {
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors
            .iter()
            .take(3)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let msg = format!("{} unparsable mountinfo line(s): {first}", errors.len());
        tracing::warn!("{msg}");
        self.emit(MountEvent::Error(msg)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_past_its_deadline_reports_a_flooded_table_and_still_completes() {
        let (tx, mut rx) = mpsc::channel(8);
        let engine = Engine {
            tx,
            shared: Arc::default(),
            storm: StormDetector::new(StormConfig::default()),
            read_timeout: Duration::from_millis(1),
            proc_root: PathBuf::from("/proc"),
        };
        // The read cannot finish before the test has seen the warning: no timing involved.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn(async move {
            let r = engine
                .bounded("mountinfo read", move || {
                    let _ = blocked.recv();
                    Ok(42)
                })
                .await;
            matches!(r, Ok(Ok(42)))
        });
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(MountEvent::Error(msg))) => assert!(
                msg.starts_with(
                    "mountinfo read exceeded 1ms; the mount table may be flooded: 0 entries"
                ),
                "unexpected message: {msg}"
            ),
            other => panic!("expected an Error event about the deadline, got {other:?}"),
        }
        release.send(()).expect("release the read");
        assert!(
            job.await.expect("join"),
            "the late read must still deliver its result"
        );
    }
}
