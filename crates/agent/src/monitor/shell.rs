//! The monitor shell: a loop over its event sources that feeds the sans-IO machine and carries
//! out what it decides. It holds no state of its own beyond what carrying out needs (the tasks
//! in flight, the ordered queue of filesystem marks): every fact and every decision lives in
//! the machine.
//!
//! - **Sources**, in the loop's order of priority (biased, so a flood of one cannot starve the
//!   others, and each takes at most [`BATCH`] events per wake-up): the node service's notes
//!   (they must precede the mount events their own unmounts cause), finished tasks, timers,
//!   `FAN_FS_ERROR`s, device events, I/O samples, then mount events (the one source that
//!   floods in a storm).
//! - **Effects**: conditions are published after each event, one whole report per volume at
//!   once; Events go to the sink's bounded queue (it drops and counts when full); recoveries
//!   and evictions run as tasks in the shell's own `JoinSet`, their results coming back as
//!   events; filesystem marks run off the loop, one batch at a time and in order (a healed
//!   filesystem keeps its fsid, so its old mark must go first); mount tracking and the I/O
//!   watch set are in-memory updates.
//! - **Time** is `tokio::time`'s, so tests drive the whole shell with paused time.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rds_devices::DeviceEvent;
use rds_metrics::{ResyncReason, ResyncSource};
use rds_monitor::{Action, Monitor, MonitorConfig, MonitorEvent, RecoveryReason, Timestamp};
use rds_mounts::watch::MountEvent;
use rds_node::identity::Readiness;
use rds_node::record::VolumeRecord;
use rds_types::{DevNum, MountKey, Nqn, VolumeId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conditions::{Conditions, VolumeReport};
use super::io::IoSample;
use super::seams::{RecoveryFailure, Seams};
use super::translate;

/// Bounded work per wake-up: at most this many queued events of one source are handled
/// before timers and the other sources get their turn.
pub const BATCH: usize = 256;

/// How long start-up waits for the mount watcher's first scan (a flooded table is slow).
pub const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// What the node service tells the monitor.
#[derive(Debug)]
pub enum Note {
    Staged {
        rec: Box<VolumeRecord>,
        mount: Option<MountKey>,
    },
    Unstaged(VolumeId),
    Published {
        rec: Box<VolumeRecord>,
        target: PathBuf,
        mount: Option<MountKey>,
    },
    Unpublished(VolumeId, PathBuf),
    ConnectFailed {
        volume_id: VolumeId,
        nqn: Nqn,
        error: String,
    },
}

/// A note and the channel that says it was taken in.
#[derive(Debug)]
pub struct NoteMsg {
    pub note: Note,
    pub ack: Option<oneshot::Sender<()>>,
}

/// The shell's inputs. Every channel is bounded (see each producer for its policy when full).
pub struct Sources {
    pub notes: mpsc::Receiver<NoteMsg>,
    pub mounts: mpsc::Receiver<MountEvent>,
    pub devices: mpsc::Receiver<DeviceEvent>,
    pub fs_errors: Option<mpsc::Receiver<rds_fserror::FsErrorEvent>>,
    pub io: mpsc::Receiver<IoSample>,
    /// The Events sink's counters, copied into the metrics every 10 s.
    pub events_stats: Option<Arc<rds_events::SinkStats>>,
}

/// A task of the shell's that finished.
enum Done {
    Recovery {
        volume_id: VolumeId,
        attempt: u32,
        result: Result<rds_monitor::RecoveryReport, RecoveryFailure>,
        elapsed: Duration,
    },
    Evicted {
        volume_id: VolumeId,
        note: String,
    },
    FsMarks,
}

/// One filesystem-mark change, in the order the machine asked for them.
#[derive(Debug, Clone)]
enum FsCmd {
    Watch { path: PathBuf, dev: DevNum },
    Unwatch { dev: DevNum },
}

/// The monitor shell. See the module docs.
pub struct Shell {
    machine: Monitor,
    start: Instant,
    start_wall: SystemTime,
    conditions: Conditions,
    seams: Seams,
    tasks: JoinSet<Done>,
    fs_queue: VecDeque<FsCmd>,
    fs_busy: bool,
    /// Events the shell itself owes the machine (executor feedback), fed after the current
    /// event's actions.
    pending: VecDeque<MonitorEvent>,
    dirty: BTreeSet<VolumeId>,
    mount_resyncs: u64,
    device_resyncs: u64,
    device_overflow: bool,
}

impl Shell {
    pub fn new(config: MonitorConfig, conditions: Conditions, seams: Seams) -> Self {
        Self {
            machine: Monitor::new(config),
            start: Instant::now(),
            start_wall: SystemTime::now(),
            conditions,
            seams,
            tasks: JoinSet::new(),
            fs_queue: VecDeque::new(),
            fs_busy: false,
            pending: VecDeque::new(),
            dirty: BTreeSet::new(),
            mount_resyncs: 0,
            device_resyncs: 0,
            device_overflow: false,
        }
    }

    /// The machine (for tests and introspection).
    pub fn machine(&self) -> &Monitor {
        &self.machine
    }

    /// Adopt the persisted `records` against the kernel's state, set `ready`, then run until
    /// every source is closed.
    pub async fn run(mut self, mut src: Sources, records: Vec<VolumeRecord>, ready: Readiness) {
        self.adopt(&mut src, &records).await;
        ready.set_ready();
        tracing::info!(volumes = records.len(), "monitor: first reconcile done");
        let mut stats_tick = tokio::time::interval(Duration::from_secs(10));
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer, moved only when the machine's next deadline changes: a fresh sleep per
        // pass would register and cancel a timer for every event.
        let tick = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(tick);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = self.machine.next_deadline().map(|d| self.instant_of(d));
            if deadline != armed {
                if let Some(at) = deadline {
                    tick.as_mut().reset(at);
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                Some(n) = src.notes.recv() => {
                    self.note(n);
                    for _ in 0..BATCH {
                        match src.notes.try_recv() { Ok(n) => self.note(n), Err(_) => break }
                    }
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(d) => self.done(d),
                    Err(e) => tracing::error!(error = %e, "a monitor task failed"),
                },
                _ = &mut tick, if armed.is_some() => {
                    armed = None;
                    self.feed(MonitorEvent::Tick, None);
                }
                Some(ev) = recv_opt(&mut src.fs_errors) => self.fs_error(ev),
                Some(ev) = src.devices.recv() => {
                    self.device_event(ev);
                    for _ in 0..BATCH {
                        match src.devices.try_recv() { Ok(ev) => self.device_event(ev), Err(_) => break }
                    }
                }
                Some(s) = src.io.recv() => {
                    self.io_sample(s);
                    for _ in 0..BATCH {
                        match src.io.try_recv() { Ok(s) => self.io_sample(s), Err(_) => break }
                    }
                }
                _ = stats_tick.tick() => {
                    if let (Some(m), Some(s)) = (&self.seams.metrics, &src.events_stats) {
                        m.events_sink(s.posted(), s.dropped(), s.failed());
                    }
                }
                Some(ev) = src.mounts.recv() => {
                    self.mount_event(ev);
                    for _ in 0..BATCH {
                        match src.mounts.try_recv() { Ok(ev) => self.mount_event(ev), Err(_) => break }
                    }
                }
                else => break,
            }
        }
        self.tasks.abort_all();
        tracing::info!("monitor stopped");
    }

    /// Re-adoption: replay every persisted record against the kernel's current state. The
    /// mount watcher's first event is its initial snapshot (awaited: its published table is
    /// empty until then); the device watcher's model is populated from its sysfs scan.
    async fn adopt(&mut self, src: &mut Sources, records: &[VolumeRecord]) {
        let deadline = Instant::now() + FIRST_SNAPSHOT_WAIT;
        let table = loop {
            match tokio::time::timeout_at(deadline, src.mounts.recv()).await {
                Ok(Some(MountEvent::Resynced { table })) => break Some(table),
                Ok(Some(other)) => self.mount_event(other),
                Ok(None) | Err(_) => {
                    tracing::error!(wait = ?FIRST_SNAPSHOT_WAIT, "no initial mount table from the watcher; adopting volumes without one");
                    break None;
                }
            }
        };
        for rec in records {
            let mount = table
                .as_ref()
                .and_then(|t| translate::adopted_mount(rec, t));
            if let Some(ev) = translate::staged(rec, mount, true) {
                self.feed(ev, None);
            }
            for p in &rec.publishes {
                let m = table
                    .as_ref()
                    .and_then(|t| t.top_at(&p.target).map(translate::mount_key));
                self.feed(translate::published(rec, &p.target, m, true), None);
            }
        }
        if let Some(table) = table {
            self.mount_resync(&table);
        }
        self.device_resync(ResyncReason::Startup);
    }

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

    fn note(&mut self, m: NoteMsg) {
        let ev = match m.note {
            Note::Staged { rec, mount } => translate::staged(&rec, mount, false),
            Note::Unstaged(id) => Some(MonitorEvent::VolumeUnstaged { volume_id: id }),
            Note::Published { rec, target, mount } => {
                Some(translate::published(&rec, &target, mount, false))
            }
            Note::Unpublished(id, target) => Some(MonitorEvent::VolumeUnpublished {
                volume_id: id,
                target,
            }),
            Note::ConnectFailed {
                volume_id,
                nqn,
                error,
            } => Some(MonitorEvent::ConnectFailed {
                volume_id,
                nqn,
                error,
            }),
        };
        if let Some(ev) = ev {
            self.feed(ev, None);
        }
        if let Some(ack) = m.ack {
            let _ = ack.send(());
        }
    }

    fn done(&mut self, d: Done) {
        match d {
            Done::Recovery {
                volume_id,
                attempt,
                result,
                elapsed,
            } => {
                if let Some(m) = &self.seams.metrics {
                    m.recovery_attempt(result.is_ok(), elapsed);
                }
                let ev = match result {
                    Ok(report) => MonitorEvent::RecoverySucceeded { volume_id, report },
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
                self.feed(ev, None);
            }
            Done::Evicted { volume_id, note } => {
                tracing::warn!(volume.id = %volume_id, "{note}");
                self.seams.events.post(rds_events::VolumeEvent::new(
                    volume_id.as_str(),
                    rds_types::EventReason::PodsEvicted,
                    "EvictPods",
                    note,
                ));
            }
            Done::FsMarks => {
                self.fs_busy = false;
                self.kick_fs_marks();
            }
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
                let observed = self.ts(Instant::from_std(observed_at));
                self.feed(MonitorEvent::FsError { dev, errno, count }, Some(observed));
            }
            rds_fserror::FsErrorEvent::UnknownFilesystem { fsid, errno, .. } => {
                tracing::debug!(%fsid, errno, "filesystem error on a filesystem we do not watch (any more)");
            }
            rds_fserror::FsErrorEvent::Lost { cause, .. } => {
                // The super options (emergency_ro, shutdown) still tell: the device model and
                // the next mount events carry them. Nothing to replay from here.
                tracing::warn!(?cause, "filesystem error events were lost");
            }
        }
    }

    fn io_sample(&mut self, s: IoSample) {
        self.feed(
            MonitorEvent::IoProgress {
                dev: s.dev,
                inflight: s.inflight,
                completed: s.completed,
            },
            None,
        );
    }

    fn mount_event(&mut self, ev: MountEvent) {
        if let Some(m) = &self.seams.metrics {
            m.mount_event();
        }
        let observed = Some(self.now());
        // Read by reference: the watcher's entry is freed after the answer is published.
        let mev = match &ev {
            MountEvent::Attached(m) => MonitorEvent::MountAttached(translate::mount_facts(m)),
            MountEvent::Detached(m) => MonitorEvent::MountDetached {
                id: u64::from(m.id),
            },
            MountEvent::Changed { new, .. } => {
                MonitorEvent::MountChanged(translate::mount_facts(new))
            }
            MountEvent::Resynced { table } => return self.mount_resync(table),
            MountEvent::Storm(r) => MonitorEvent::MountStorm {
                key: r.key.clone(),
                count: r.count as u64,
                message: r.message.clone(),
            },
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
        drop(ev);
    }

    fn mount_resync(&mut self, table: &rds_mounts::table::MountTable) {
        if let Some(m) = &self.seams.metrics {
            m.mount_table_size(table.len());
            // The first is the start-up scan; every later one follows an overflow.
            let reason = if self.mount_resyncs == 0 {
                ResyncReason::Startup
            } else {
                ResyncReason::Overflow
            };
            m.resync(ResyncSource::Mounts, reason);
        }
        self.mount_resyncs += 1;
        self.feed(
            MonitorEvent::MountResync(table.iter().map(translate::mount_facts).collect()),
            None,
        );
    }

    fn device_event(&mut self, ev: DeviceEvent) {
        if let Some(m) = &self.seams.metrics {
            m.device_event();
        }
        let observed = Some(self.now());
        match &ev {
            DeviceEvent::Resynced => {
                // The watcher's start-up replay ends with one; later ones follow ENOBUFS.
                let reason = if self.device_resyncs == 0 {
                    ResyncReason::Startup
                } else if std::mem::take(&mut self.device_overflow) {
                    ResyncReason::Enobufs
                } else {
                    ResyncReason::Overflow
                };
                self.device_resync(reason);
            }
            DeviceEvent::Overflow => {
                self.device_overflow = true;
                tracing::warn!("device watcher overflowed (ENOBUFS); a resync follows");
            }
            DeviceEvent::Lagged { missed } => {
                if let Some(m) = &self.seams.metrics {
                    m.device_events_dropped(*missed);
                }
                tracing::warn!(
                    missed,
                    "monitor lagged behind the device watcher; resyncing from its model"
                );
                self.device_resync(ResyncReason::Overflow);
            }
            _ => {
                if let Some(mev) = translate::device_event(&ev) {
                    self.feed(mev, observed);
                }
            }
        }
    }

    /// An authoritative view of the namespaces and controllers of every staged NQN, from the
    /// device watcher's model.
    fn device_resync(&mut self, reason: ResyncReason) {
        if let Some(m) = &self.seams.metrics {
            m.resync(ResyncSource::Devices, reason);
        }
        self.device_resyncs += 1;
        let nqns: Vec<Nqn> = self.machine.nqns().cloned().collect();
        let (namespaces, controllers) = self.seams.devices.snapshot(&nqns);
        self.feed(
            MonitorEvent::DeviceResync {
                namespaces,
                controllers,
            },
            None,
        );
    }

    /// Feed one event (and the feedback it causes), carry out the actions, then publish the
    /// reports of every volume whose condition changed.
    fn feed(&mut self, ev: MonitorEvent, observed: Option<Timestamp>) {
        self.pending.push_back(ev);
        let mut first = true;
        while let Some(ev) = self.pending.pop_front() {
            let now = self.now();
            let obs = if first { observed } else { None };
            first = false;
            let actions = self.machine.on_event_observed(ev, obs, now);
            // The answer first: a changed condition is published before anything else is
            // carried out (logs, Events, tasks, marks), so NodeGetVolumeStats has it as early
            // as the machine does.
            for a in &actions {
                if let Action::ConditionChanged { volume_id, .. }
                | Action::PublishConditionChanged { volume_id, .. } = a
                {
                    self.dirty.insert(volume_id.clone());
                }
            }
            self.publish_dirty();
            for a in actions {
                self.act(a);
            }
        }
    }

    fn publish_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.dirty) {
            let report = self.machine.condition(&id).map(|c| VolumeReport {
                volume: translate::health(c, self.wall(c.since)),
                targets: self
                    .machine
                    .publishes(&id)
                    .map(|(t, c)| (t.to_owned(), translate::health(c, self.wall(c.since))))
                    .collect(),
                published: std::time::Instant::now(),
            });
            self.conditions.publish(&id, report);
        }
        self.publish_counts();
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::ConditionChanged {
                volume_id,
                old,
                new,
            } => {
                let from = old.as_ref().map(|c| c.kind.as_str()).unwrap_or("-");
                if let Some(c) = &new {
                    if c.kind.is_abnormal() {
                        tracing::warn!(volume.id = %volume_id, from, to = c.kind.as_str(), cause = %c.cause.detail, "{}", c.message);
                    } else {
                        tracing::info!(volume.id = %volume_id, from, to = c.kind.as_str(), cause = %c.cause.detail, "{}", c.message);
                    }
                }
            }
            Action::PublishConditionChanged {
                volume_id,
                target,
                new,
                ..
            } => {
                if let Some(c) = &new {
                    tracing::debug!(volume.id = %volume_id, target = %target.display(), to = c.kind.as_str(), "{}", c.message);
                }
            }
            Action::PostEvent {
                volume_id,
                reason,
                type_,
                message,
            } => {
                self.seams.events.post(
                    rds_events::VolumeEvent::new(volume_id.as_str(), reason, "Monitor", message)
                        .with_type(type_),
                );
            }
            Action::Recover {
                volume_id,
                reason,
                attempt,
                ..
            } => self.recover(volume_id, reason, attempt),
            Action::EvictPods { volume_id, targets } => {
                let Some(ev) = self.seams.evictor.clone() else {
                    tracing::warn!(volume.id = %volume_id, targets = ?targets, "pods hold a dead filesystem; eviction is enabled but there is no Kubernetes client");
                    return;
                };
                self.tasks.spawn(async move {
                    let note = ev.evict(&volume_id, &targets).await;
                    Done::Evicted { volume_id, note }
                });
            }
            Action::TrackMount { id } => {
                if let Ok(id) = u32::try_from(id) {
                    self.seams.mounts.track(id);
                }
            }
            Action::UntrackMount { id } => {
                if let Ok(id) = u32::try_from(id) {
                    self.seams.mounts.untrack(id);
                }
            }
            Action::WatchFilesystem {
                mount, mount_point, ..
            } => {
                self.fs_queue.push_back(FsCmd::Watch {
                    path: mount_point,
                    dev: mount.dev,
                });
                self.kick_fs_marks();
            }
            Action::UnwatchFilesystem { dev, .. } => {
                self.fs_queue.push_back(FsCmd::Unwatch { dev });
                self.kick_fs_marks();
            }
            Action::WatchIo { dev } => self.seams.io.add(dev),
            Action::UnwatchIo { dev } => self.seams.io.remove(dev),
            Action::ScheduleTick { .. } => {}
            Action::Metric(m) => {
                if let Some(x) = &self.seams.metrics {
                    x.metric(&m);
                }
            }
        }
    }

    fn recover(&mut self, volume_id: VolumeId, reason: RecoveryReason, attempt: u32) {
        let Some(runner) = self.seams.recovery.clone() else {
            tracing::warn!(volume.id = %volume_id, ?reason, "recovery needed but no executor is configured");
            return;
        };
        self.pending.push_back(MonitorEvent::RecoveryStarted {
            volume_id: volume_id.clone(),
            attempt,
        });
        self.tasks.spawn(async move {
            let started = Instant::now();
            let result = runner.recover(&volume_id, &reason).await;
            Done::Recovery {
                volume_id,
                attempt,
                result,
                elapsed: started.elapsed(),
            }
        });
    }

    /// Start the next batch of filesystem marks, unless one is running (they stay in order).
    fn kick_fs_marks(&mut self) {
        if self.fs_busy || self.fs_queue.is_empty() {
            return;
        }
        let Some(fs) = self.seams.fs_errors.clone() else {
            self.fs_queue.clear();
            return;
        };
        let batch: Vec<FsCmd> = self.fs_queue.drain(..).collect();
        self.fs_busy = true;
        self.tasks.spawn(async move {
            let job = tokio::task::spawn_blocking(move || {
                for c in batch {
                    let r = match &c {
                        FsCmd::Watch { path, dev } => fs.watch(path, *dev),
                        FsCmd::Unwatch { dev } => fs.unwatch(*dev),
                    };
                    if let Err(e) = r {
                        tracing::warn!(cmd = ?c, error = %e, "filesystem error watch; dead filesystems on it are detected from mount options only");
                    }
                }
            });
            if tokio::time::timeout(FS_MARK_DEADLINE, job).await.is_err() {
                tracing::error!(deadline = ?FS_MARK_DEADLINE, "filesystem error marks did not finish in time");
            }
            Done::FsMarks
        });
    }

    fn publish_counts(&self) {
        let Some(m) = &self.seams.metrics else { return };
        let mut counts: std::collections::HashMap<&'static str, u64> = Default::default();
        for (_, c) in self.machine.volumes() {
            *counts.entry(c.kind.as_str()).or_default() += 1;
        }
        let v: Vec<_> = counts.into_iter().collect();
        m.conditions(&v);
    }
}

/// Bound on one batch of filesystem marks.
const FS_MARK_DEADLINE: Duration = Duration::from_secs(30);

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
