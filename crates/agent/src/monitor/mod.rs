//! The monitor task: the one owner of the state machine. It takes the mount watcher's, the
//! device watcher's and the node service's events, feeds [`rds_monitor::Monitor`], and carries
//! out its actions: conditions published for NodeGetVolumeStats (O(1) reads), Kubernetes
//! Events, recovery, eviction, timers.
//!
//! The node service talks to it through [`MonitorHandle`], its [`VolumeObserver`]: a
//! notification is a channel send, a condition query is a map read. Nothing blocks.

mod translate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use rds_monitor::{Action, Monitor, MonitorConfig, MonitorEvent, Timestamp};
use rds_mounts::watch::MountEvent;
use tokio::sync::mpsc;

use rds_node::identity::Readiness;
use rds_node::observer::{Condition, VolumeObserver};
use rds_node::record::VolumeRecord;
use rds_node::validate::VolumeId;

pub use translate::csi_condition;

/// Carries out `Recover` actions. The implementation answers through the returned result;
/// the task turns it into RecoveryStarted / RecoverySucceeded / RecoveryFailed.
#[tonic::async_trait]
pub trait RecoveryRunner: Send + Sync + 'static {
    async fn recover(
        &self,
        volume_id: &str,
        reason: rds_monitor::RecoveryReason,
    ) -> Result<RecoveryDone, RecoveryFailure>;
}

/// A failed recovery attempt: what happened, and whether retrying could help.
#[derive(Debug, Clone)]
pub struct RecoveryFailure {
    pub error: String,
    pub final_: bool,
}

/// A successful recovery, in the state machine's terms.
#[derive(Debug, Clone)]
pub struct RecoveryDone {
    pub new_device: rds_types::BlockIdentity,
    pub new_mount: Option<rds_monitor::MountKey>,
    pub republished: Vec<rds_monitor::PublishedMount>,
}

/// Counters the task feeds (implemented by the metrics registry).
pub trait MonitorMetrics: Send + Sync + 'static {
    fn metric(&self, m: &rds_monitor::MetricEvent);
    /// One recovery attempt ended.
    fn recovery_attempt(&self, succeeded: bool, elapsed: Duration);
    fn conditions(&self, counts: &[(&'static str, u64)]);
    fn mount_event(&self);
    fn device_event(&self);
    /// Device events the watcher had to drop because the monitor fell behind.
    fn device_events_dropped(&self, n: u64);
    fn mount_table_size(&self, n: usize);
    fn resync(&self, devices: bool, overflow: bool);
    /// The Kubernetes Events sink's own counters.
    fn events_sink(&self, posted: u64, dropped: u64, failed: u64);
}

/// What the node service tells the monitor.
#[derive(Debug)]
enum Note {
    Staged(Box<VolumeRecord>),
    Unstaged(VolumeId),
    Published(Box<VolumeRecord>, PathBuf),
    Unpublished(VolumeId, PathBuf),
}

#[derive(Debug, Default)]
struct Published {
    volume: Option<Condition>,
    targets: HashMap<PathBuf, Condition>,
}

/// The monitor's face to the rest of the process. Cheap to clone.
#[derive(Clone)]
pub struct MonitorHandle {
    notes: mpsc::UnboundedSender<Note>,
    conditions: Arc<DashMap<String, Published>>,
    /// Bumped after every condition change, so waiters are woken by the change itself.
    changed: tokio::sync::watch::Receiver<u64>,
}

impl MonitorHandle {
    /// The current condition of a volume, if the monitor knows it.
    pub fn volume_condition(&self, id: &str) -> Option<Condition> {
        self.conditions.get(id).and_then(|c| c.volume.clone())
    }

    /// Wait until the volume's condition satisfies `pred` (checked now and after every
    /// change), up to `deadline`. Returns the condition, or the last one seen on timeout.
    pub async fn wait_for(
        &self,
        id: &str,
        deadline: Duration,
        pred: impl Fn(&Condition) -> bool,
    ) -> Result<Condition, Option<Condition>> {
        let mut rx = self.changed.clone();
        let wait = async {
            loop {
                if let Some(c) = self.volume_condition(id).filter(|c| pred(c)) {
                    return Ok(c);
                }
                if rx.changed().await.is_err() {
                    return Err(());
                }
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(Ok(c)) => Ok(c),
            _ => Err(self.volume_condition(id)),
        }
    }
}

impl VolumeObserver for MonitorHandle {
    fn staged(&self, rec: &VolumeRecord) {
        let _ = self.notes.send(Note::Staged(Box::new(rec.clone())));
    }
    fn unstaged(&self, id: &VolumeId) {
        let _ = self.notes.send(Note::Unstaged(id.clone()));
    }
    fn published(&self, rec: &VolumeRecord, target: &Path) {
        let _ = self
            .notes
            .send(Note::Published(Box::new(rec.clone()), target.to_owned()));
    }
    fn unpublished(&self, id: &VolumeId, target: &Path) {
        let _ = self
            .notes
            .send(Note::Unpublished(id.clone(), target.to_owned()));
    }
    fn settle(
        &self,
        id: &VolumeId,
        deadline: Duration,
    ) -> rds_node::observer::BoxFuture<Condition> {
        let this = self.clone();
        let id = id.as_str().to_owned();
        Box::pin(async move {
            match this.wait_for(&id, deadline, |c| !c.abnormal).await {
                Ok(c) => c,
                Err(last) => last.unwrap_or_else(Condition::healthy),
            }
        })
    }

    fn condition(&self, id: &VolumeId, path: &Path) -> Condition {
        let Some(c) = self.conditions.get(id.as_str()) else {
            return Condition::healthy();
        };
        c.targets
            .get(path)
            .or(c.volume.as_ref())
            .cloned()
            .unwrap_or_else(Condition::healthy)
    }
}

/// Everything the task needs.
pub struct MonitorParts {
    pub config: MonitorConfig,
    pub mounts: Arc<rds_mounts::watch::WatcherHandle>,
    pub mount_events: mpsc::Receiver<MountEvent>,
    pub devices: rds_devices::DeviceWatcherHandle,
    pub device_events: mpsc::Receiver<rds_devices::DeviceEvent>,
    /// FAN_FS_ERROR: the task marks each staged filesystem and unmarks it on unstage.
    pub fs_errors: Option<(
        rds_fserror::FsErrorHandle,
        mpsc::Receiver<rds_fserror::FsErrorEvent>,
    )>,
    /// The events sink's counters, for the metrics.
    pub events_stats: Option<Arc<rds_events::SinkStats>>,
    pub records: Vec<VolumeRecord>,
    pub events: Arc<dyn rds_events::EventSink>,
    pub recovery: Option<Arc<dyn RecoveryRunner>>,
    pub metrics: Option<Arc<dyn MonitorMetrics>>,
    pub readiness: Readiness,
    /// The procfs root (for the rare direct mount-table read).
    pub proc_root: PathBuf,
    /// Used only for the opt-in eviction of pods stranded on a dead filesystem.
    pub evictor: Option<Evictor>,
}

/// What eviction needs: the API client and this node's name.
#[derive(Clone)]
pub struct Evictor {
    pub client: kube::Client,
    pub node_name: String,
}

/// Build the monitor; returns its handle and the task, which [`MonitorTask::run`] starts once
/// the recovery executor (which needs the node service, which needs the handle) exists.
pub fn spawn(parts: MonitorParts) -> (MonitorHandle, MonitorTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    let conditions = Arc::new(DashMap::new());
    let (changed_tx, changed) = tokio::sync::watch::channel(0u64);
    let handle = MonitorHandle {
        notes: tx,
        conditions: conditions.clone(),
        changed,
    };
    (
        handle,
        MonitorTask {
            parts,
            notes: rx,
            conditions,
            changed: changed_tx,
        },
    )
}

/// The monitor task, not yet running.
pub struct MonitorTask {
    parts: MonitorParts,
    notes: mpsc::UnboundedReceiver<Note>,
    conditions: Arc<DashMap<String, Published>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl MonitorTask {
    /// The task's future (for the caller's JoinSet).
    pub fn run(
        mut self,
        recovery: Option<Arc<dyn RecoveryRunner>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.parts.recovery = recovery;
        run(self.parts, self.notes, self.conditions, self.changed)
    }
}

struct Task {
    machine: Monitor,
    start: Instant,
    start_wall: SystemTime,
    conditions: Arc<DashMap<String, Published>>,
    changed: tokio::sync::watch::Sender<u64>,
    events: Arc<dyn rds_events::EventSink>,
    recovery: Option<Arc<dyn RecoveryRunner>>,
    metrics: Option<Arc<dyn MonitorMetrics>>,
    recovery_tx: mpsc::UnboundedSender<MonitorEvent>,
    devices: rds_devices::DeviceWatcherHandle,
    mounts: Arc<rds_mounts::watch::WatcherHandle>,
    /// Volumes staged, by id: their NQNs, for the device resync.
    nqns: HashMap<String, rds_types::Nqn>,
    fs_errors: Option<rds_fserror::FsErrorHandle>,
    evictor: Option<Evictor>,
    /// Staged filesystems marked for FAN_FS_ERROR, by volume.
    fs_marked: HashMap<String, rds_types::DevNum>,
    /// Staging mounts the mount watcher re-reads on remount wakes, by volume.
    tracked: HashMap<String, u32>,
    proc_root: PathBuf,
}

/// Bounded work per wake-up: at most this many queued events are handled before timers and
/// the other sources get their turn.
const BATCH: usize = 256;

async fn run(
    p: MonitorParts,
    mut notes: mpsc::UnboundedReceiver<Note>,
    conditions: Arc<DashMap<String, Published>>,
    changed: tokio::sync::watch::Sender<u64>,
) {
    let (recovery_tx, mut recovery_rx) = mpsc::unbounded_channel();
    let mut t = Task {
        machine: Monitor::new(p.config),
        start: Instant::now(),
        start_wall: SystemTime::now(),
        conditions,
        changed,
        events: p.events,
        recovery: p.recovery,
        metrics: p.metrics,
        recovery_tx,
        devices: p.devices,
        mounts: p.mounts,
        nqns: HashMap::new(),
        fs_errors: None,
        evictor: p.evictor.clone(),
        fs_marked: HashMap::new(),
        tracked: HashMap::new(),
        proc_root: p.proc_root.clone(),
    };
    let (mut mount_rx, mut device_rx) = (p.mount_events, p.device_events);
    let mut fs_rx = match p.fs_errors {
        Some((h, rx)) => {
            t.fs_errors = Some(h);
            Some(rx)
        }
        None => None,
    };
    let events_stats = p.events_stats;
    let mut stats_tick = tokio::time::interval(Duration::from_secs(10));

    // Re-adoption: replay every persisted record against the kernel's current state. The
    // mount watcher's first event is its initial snapshot (awaited: its published table is
    // empty until then); the device watcher's model is already populated from its sysfs scan.
    let table = first_snapshot(&mut t, &mut mount_rx).await;
    for rec in &p.records {
        let top = table.top_at(rec.staging_path.as_path()).cloned();
        if let Some(m) = &top {
            t.track(rec.volume_id.as_str(), m.id);
            t.mark_fs(rec.volume_id.as_str(), m);
        }
        if let Some(ev) = translate::staged(rec, top.as_ref(), true) {
            t.nqns
                .insert(rec.volume_id.as_str().to_owned(), rec.target.nqn.clone());
            t.feed(ev, None);
        }
        for p in &rec.publishes {
            let m = table.top_at(&p.target).cloned();
            t.feed(
                translate::published(rec, &p.target, m.as_ref(), p.read_only, true),
                None,
            );
        }
    }
    t.feed(
        MonitorEvent::MountResync(table.iter().map(translate::mount_facts).collect()),
        None,
    );
    t.device_resync();
    p.readiness.set_ready();
    tracing::info!(
        volumes = p.records.len(),
        mounts = table.len(),
        "monitor: first reconcile done"
    );

    loop {
        let deadline = t.machine.next_deadline().map(|d| t.instant_of(d));
        let tick = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        // Biased, in this order: the node service's notes first (they must precede the
        // mount events their own unmounts cause), then timers, filesystem errors and devices;
        // mount events last, so a mount storm (the one source that floods) cannot starve the
        // others. Each source handles at most BATCH events per wake-up.
        tokio::select! {
            biased;
            Some(n) = notes.recv() => t.note(n),
            Some(ev) = recovery_rx.recv() => {
                if let MonitorEvent::RecoverySucceeded { volume_id, new_mount: Some(k), .. } = &ev {
                    // The healed staging mount is the one to watch now.
                    if let Ok(id) = u32::try_from(k.id) {
                        t.track(volume_id.as_str(), id);
                    }
                }
                t.feed(ev, None)
            }
            _ = tick => t.feed(MonitorEvent::Tick, None),
            Some(ev) = async { match fs_rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                t.fs_error(ev);
            }
            Some(ev) = device_rx.recv() => {
                t.device_event(ev);
                for _ in 0..BATCH {
                    match device_rx.try_recv() { Ok(ev) => t.device_event(ev), Err(_) => break }
                }
            }
            _ = stats_tick.tick() => {
                if let (Some(m), Some(s)) = (&t.metrics, &events_stats) {
                    m.events_sink(s.posted(), s.dropped(), s.failed());
                }
            }
            Some(ev) = mount_rx.recv() => {
                t.mount_event(ev);
                for _ in 0..BATCH {
                    match mount_rx.try_recv() { Ok(ev) => t.mount_event(ev), Err(_) => break }
                }
            }
            else => break,
        }
    }
    tracing::info!("monitor stopped");
}

impl Task {
    fn ts(&self, at: Instant) -> Timestamp {
        Timestamp::from_duration(at.saturating_duration_since(self.start))
    }

    fn now(&self) -> Timestamp {
        self.ts(Instant::now())
    }

    fn instant_of(&self, t: Timestamp) -> Instant {
        self.start + Duration::from_nanos(t.0)
    }

    fn wall(&self, t: Timestamp) -> SystemTime {
        self.start_wall + Duration::from_nanos(t.0)
    }

    fn note(&mut self, n: Note) {
        match n {
            Note::Staged(rec) => {
                // The staging mount as the watcher's table has it now (the attach event may
                // still be queued: the machine tolerates a mount it has not seen yet).
                let top = self
                    .mounts
                    .table()
                    .top_at(rec.staging_path.as_path())
                    .cloned();
                // Only a filesystem volume has a staging mount to look for.
                let top = top.or_else(|| {
                    (!rec.access.is_block())
                        .then(|| read_top(&self.proc_root, rec.staging_path.as_path()))
                        .flatten()
                });
                if let Some(m) = &top {
                    self.track(rec.volume_id.as_str(), m.id);
                    self.mark_fs(rec.volume_id.as_str(), m);
                }
                self.nqns
                    .insert(rec.volume_id.as_str().to_owned(), rec.target.nqn.clone());
                if let Some(ev) = translate::staged(&rec, top.as_ref(), false) {
                    self.feed(ev, None);
                }
            }
            Note::Unstaged(id) => {
                self.nqns.remove(id.as_str());
                self.unmark_fs(id.as_str());
                if let Some(m) = self.tracked.remove(id.as_str()) {
                    self.mounts.untrack(m);
                }
                self.conditions.remove(id.as_str());
                self.feed(
                    MonitorEvent::VolumeUnstaged {
                        volume_id: id.clone(),
                    },
                    None,
                );
            }
            Note::Published(rec, target) => {
                // The watcher's table first; a fresh read only if its attach is still queued.
                let m = self
                    .mounts
                    .table()
                    .top_at(&target)
                    .cloned()
                    .or_else(|| read_top(&self.proc_root, &target));
                let ro = rec
                    .publishes
                    .iter()
                    .find(|p| p.target == target)
                    .map(|p| p.read_only)
                    .unwrap_or(rec.read_only);
                self.feed(
                    translate::published(&rec, &target, m.as_ref(), ro, false),
                    None,
                );
            }
            Note::Unpublished(id, target) => {
                if let Some(mut c) = self.conditions.get_mut(id.as_str()) {
                    c.targets.remove(&target);
                }
                self.feed(
                    MonitorEvent::VolumeUnpublished {
                        volume_id: id.clone(),
                        target,
                    },
                    None,
                );
            }
        }
    }

    /// Track `volume`'s staging mount (and stop tracking the one it replaces).
    fn track(&mut self, volume: &str, id: u32) {
        if let Some(old) = self.tracked.insert(volume.to_owned(), id) {
            if old != id {
                self.mounts.untrack(old);
            }
        }
        self.mounts.track(id);
    }

    /// Mark a staged filesystem for FAN_FS_ERROR (a few syscalls on the mount point, no IO).
    fn mark_fs(&mut self, volume: &str, m: &rds_mounts::mountinfo::MountInfo) {
        let Some(h) = &self.fs_errors else { return };
        if !matches!(m.fs_type.as_str(), "ext4" | "xfs") {
            return;
        }
        match h.watch(&m.mount_point, m.dev) {
            Ok(fsid) => {
                tracing::debug!(volume.id = volume, dev = %m.dev, %fsid, "watching for filesystem errors");
                self.fs_marked.insert(volume.to_owned(), m.dev);
            }
            Err(e) => {
                tracing::warn!(volume.id = volume, dev = %m.dev, error = %e, "cannot watch this filesystem for errors")
            }
        }
    }

    fn unmark_fs(&mut self, volume: &str) {
        let (Some(h), Some(dev)) = (&self.fs_errors, self.fs_marked.remove(volume)) else {
            return;
        };
        if let Err(e) = h.unwatch(dev) {
            tracing::debug!(volume.id = volume, %dev, error = %e, "unwatching filesystem errors");
        }
    }

    fn fs_error(&mut self, ev: rds_fserror::FsErrorEvent) {
        match ev {
            rds_fserror::FsErrorEvent::Error {
                dev,
                errno,
                count,
                observed_at,
                ..
            } => {
                let observed = self.ts(observed_at);
                self.feed(MonitorEvent::FsError { dev, errno, count }, Some(observed));
            }
            rds_fserror::FsErrorEvent::UnknownFilesystem { fsid, errno, .. } => {
                tracing::debug!(%fsid, errno, "filesystem error on a filesystem we do not watch (any more)");
            }
            rds_fserror::FsErrorEvent::Lost { cause, .. } => {
                // The super options (emergency_ro, shutdown) still tell: re-read the tracked mounts.
                tracing::warn!(
                    ?cause,
                    "filesystem error events were lost; resyncing the mount view"
                );
                let table = self.mounts.table();
                self.feed(
                    MonitorEvent::MountResync(table.iter().map(translate::mount_facts).collect()),
                    None,
                );
            }
        }
    }

    fn mount_event(&mut self, ev: MountEvent) {
        if let Some(m) = &self.metrics {
            m.mount_event();
        }
        let now = Instant::now();
        let observed = Some(self.ts(now));
        let mev = match ev {
            MountEvent::Attached(m) => MonitorEvent::MountAttached(translate::mount_facts(&m)),
            MountEvent::Detached(m) => MonitorEvent::MountDetached {
                id: u64::from(m.id),
            },
            MountEvent::Changed { new, .. } => {
                MonitorEvent::MountChanged(translate::mount_facts(&new))
            }
            MountEvent::Resynced { table } => {
                if let Some(m) = &self.metrics {
                    m.mount_table_size(table.len());
                    m.resync(false, false);
                }
                MonitorEvent::MountResync(table.iter().map(translate::mount_facts).collect())
            }
            MountEvent::Storm(r) => {
                tracing::warn!(key = %r.key, count = r.count, "{}", r.message);
                MonitorEvent::MountStorm {
                    key: r.key.clone(),
                    count: r.count as u64,
                    message: r.message,
                }
            }
            MountEvent::StormCleared(c) => MonitorEvent::MountStormCleared { key: c.key.clone() },
            MountEvent::Overflow => {
                tracing::warn!("mount watcher overflowed; a resync follows");
                return;
            }
            MountEvent::Error(e) => {
                tracing::error!(error = %e, "mount watcher");
                return;
            }
        };
        self.feed(mev, observed);
    }

    fn device_event(&mut self, ev: rds_devices::DeviceEvent) {
        if let Some(m) = &self.metrics {
            m.device_event();
        }
        let observed = Some(self.now());
        match &ev {
            rds_devices::DeviceEvent::Resynced => {
                if let Some(m) = &self.metrics {
                    m.resync(true, true);
                }
                self.device_resync()
            }
            rds_devices::DeviceEvent::Overflow => {
                tracing::warn!("device watcher overflowed; a resync follows")
            }
            rds_devices::DeviceEvent::Lagged { missed } => {
                if let Some(m) = &self.metrics {
                    m.device_events_dropped(*missed);
                }
                tracing::warn!(
                    missed,
                    "monitor lagged behind the device watcher; resyncing from its model"
                );
                self.device_resync();
            }
            _ => {
                if let Some(mev) = translate::device_event(&ev) {
                    self.feed(mev, observed);
                }
            }
        }
    }

    /// An authoritative view of the namespaces and controllers of every staged NQN.
    fn device_resync(&mut self) {
        let mut namespaces = Vec::new();
        let mut controllers = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for nqn in self.nqns.values() {
            if !seen.insert(nqn.clone()) {
                continue;
            }
            if let Some(ns) = self.devices.resolve(nqn, None) {
                namespaces.push(rds_monitor::NamespaceFacts {
                    nqn: nqn.clone(),
                    nsid: ns.nsid,
                    name: ns.name,
                    identity: ns.identity,
                });
            }
            for c in self.devices.controllers_for(nqn) {
                controllers.push(rds_monitor::ControllerFacts {
                    nqn: nqn.clone(),
                    controller: c.name.clone(),
                    state: c.state.clone(),
                });
            }
        }
        self.feed(
            MonitorEvent::DeviceResync {
                namespaces,
                controllers,
            },
            None,
        );
    }

    fn feed(&mut self, ev: MonitorEvent, observed: Option<Timestamp>) {
        let now = self.now();
        let actions = self.machine.on_event_observed(ev, observed, now);
        for a in actions {
            self.act(a);
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::ConditionChanged {
                volume_id,
                old,
                new,
            } => {
                let from = old.as_ref().map(|c| c.kind.as_str()).unwrap_or("-");
                match &new {
                    Some(c) => {
                        if c.is_abnormal() {
                            tracing::warn!(volume.id = %volume_id, from, to = c.kind.as_str(), cause = %c.cause.detail, "{}", c.message);
                        } else {
                            tracing::info!(volume.id = %volume_id, from, to = c.kind.as_str(), cause = %c.cause.detail, "{}", c.message);
                        }
                        let cond = csi_condition(c, self.wall(c.since));
                        self.conditions
                            .entry(volume_id.as_str().to_owned())
                            .or_default()
                            .volume = Some(cond);
                    }
                    None => {
                        self.conditions.remove(volume_id.as_str());
                    }
                }
                self.publish_counts();
                self.changed.send_modify(|g| *g += 1);
            }
            Action::PublishConditionChanged {
                volume_id,
                target,
                new,
                ..
            } => {
                let mut e = self
                    .conditions
                    .entry(volume_id.as_str().to_owned())
                    .or_default();
                match new {
                    Some(c) => {
                        let cond = csi_condition(&c, self.wall(c.since));
                        e.targets.insert(target, cond);
                    }
                    None => {
                        e.targets.remove(&target);
                    }
                }
                drop(e);
                self.changed.send_modify(|g| *g += 1);
            }
            Action::PostEvent {
                volume_id,
                reason,
                type_,
                message,
            } => {
                let r = reason;
                let ty = match type_ {
                    rds_monitor::EventType::Normal => rds_events::EventType::Normal,
                    rds_monitor::EventType::Warning => rds_events::EventType::Warning,
                };
                self.events.post(
                    rds_events::VolumeEvent::new(volume_id.as_str(), r, reason.as_str(), message)
                        .with_type(ty),
                );
            }
            Action::Recover {
                volume_id,
                reason,
                attempt,
                ..
            } => {
                let Some(runner) = self.recovery.clone() else {
                    tracing::warn!(volume.id = %volume_id, ?reason, "recovery needed but no executor is configured");
                    return;
                };
                let tx = self.recovery_tx.clone();
                let _ = tx.send(MonitorEvent::RecoveryStarted {
                    volume_id: volume_id.clone(),
                    attempt,
                });
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = runner.recover(volume_id.as_str(), reason).await;
                    if let Some(m) = &metrics {
                        m.recovery_attempt(r.is_ok(), started.elapsed());
                    }
                    let ev = match r {
                        Ok(done) => MonitorEvent::RecoverySucceeded {
                            volume_id,
                            new_device: done.new_device,
                            new_mount: done.new_mount,
                            republished: done.republished,
                        },
                        Err(f) => {
                            tracing::warn!(volume.id = %volume_id, attempt, final_ = f.final_, error = %f.error, "recovery attempt failed");
                            MonitorEvent::RecoveryFailed {
                                volume_id,
                                attempt,
                                error: f.error,
                                final_: f.final_,
                            }
                        }
                    };
                    let _ = tx.send(ev);
                });
            }
            Action::EvictPods { volume_id, targets } => {
                // Only emitted when --evict-pods-on-stale is set.
                let Some(ev) = self.evictor.clone() else {
                    tracing::warn!(volume.id = %volume_id, targets = ?targets, "pods hold a dead filesystem; eviction is enabled but there is no Kubernetes client");
                    return;
                };
                let events = self.events.clone();
                tokio::spawn(async move {
                    let pv = volume_id.as_str().to_owned();
                    let note = match rds_events::resolve_claim(&ev.client, &pv).await {
                        Ok(Some(claim)) => {
                            match rds_events::evict_pods_using_pvc(&ev.client, &ev.node_name, &claim.namespace, &claim.name).await {
                                Ok(o) => format!(
                                    "evicted pods {:?} holding the dead filesystem so their controllers recreate them on the healed volume; refused: {:?}",
                                    o.evicted, o.refused.iter().map(|r| &r.pod).collect::<Vec<_>>()
                                ),
                                Err(e) => format!("evicting the pods holding the dead filesystem failed: {e}"),
                            }
                        }
                        Ok(None) => "no PVC is bound to this volume; nothing to evict".to_owned(),
                        Err(e) => format!("cannot read the PV to find its PVC: {e}"),
                    };
                    tracing::warn!(volume.id = %pv, "{note}");
                    events.post(rds_events::VolumeEvent::new(
                        pv,
                        rds_events::EventReason::StaleMountDetected,
                        "EvictPods",
                        note,
                    ));
                });
            }
            Action::ScheduleTick { .. } => {}
            Action::Metric(m) => {
                if let Some(x) = &self.metrics {
                    x.metric(&m);
                }
            }
        }
    }

    fn publish_counts(&self) {
        let Some(m) = &self.metrics else { return };
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for (_, c) in self.machine.volumes() {
            *counts.entry(c.kind.as_str()).or_default() += 1;
        }
        let v: Vec<_> = counts.into_iter().collect();
        m.conditions(&v);
    }
}

/// The mount watcher's initial snapshot: its first event. Errors before it (a failing initial
/// read is retried by the watcher) are logged; past the deadline the published table is used.
async fn first_snapshot(
    t: &mut Task,
    rx: &mut mpsc::Receiver<MountEvent>,
) -> Arc<rds_mounts::table::MountTable> {
    let deadline = tokio::time::Instant::now() + FIRST_SNAPSHOT_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(MountEvent::Resynced { table })) => return table,
            Ok(Some(other)) => t.mount_event(other),
            Ok(None) | Err(_) => {
                tracing::error!(wait = ?FIRST_SNAPSHOT_WAIT, "no initial mount table from the watcher; adopting volumes from what it has");
                return t.mounts.table();
            }
        }
    }
}

/// How long start-up waits for the mount watcher's first scan (a flooded table is slow).
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// The topmost mount at `path`, read from this process's mount table (only for a path the
/// node service just mounted: its attach event may not have reached the watcher yet).
fn read_top(proc_root: &Path, path: &Path) -> Option<rds_mounts::mountinfo::MountInfo> {
    rds_mounts::MountView::read_now(proc_root, "self")
        .ok()?
        .top_at(path)
        .cloned()
}
