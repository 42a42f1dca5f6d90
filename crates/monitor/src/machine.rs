//! The monitor: owns the facts and the volumes, re-evaluates what each event touches, and
//! turns condition changes into actions. Event application is in `apply.rs`.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;

use foldhash::HashMap;

use rds_types::{DevNum, Nqn};

use crate::action::{Action, EventReason, EventType, MetricEvent};
use crate::condition::{Cause, ConditionKind, Message, Transition, VolumeCondition};
use crate::config::MonitorConfig;
use crate::evaluate::{assess, publish_verdict, verdict};
use crate::event::{EventKind, MonitorEvent};
use crate::facts::Facts;
use crate::ids::VolumeId;
use crate::recovery;
use crate::time::Timestamp;
use crate::timers::{TimerKey, Timers};
use crate::volume::{Index, Volume, Watches};

/// The sans-IO state machine. Feed it events with [`Monitor::on_event`]; execute the actions
/// it returns; query conditions in O(1).
#[derive(Debug, Clone)]
pub struct Monitor {
    pub(crate) config: MonitorConfig,
    pub(crate) now: Timestamp,
    pub(crate) facts: Facts,
    pub(crate) volumes: HashMap<VolumeId, Volume>,
    pub(crate) by_nqn: Index<Nqn>,
    pub(crate) by_dev: Index<DevNum>,
    pub(crate) by_mount: Index<u64>,
    pub(crate) timers: Timers,
}

/// The volumes an event may have changed.
#[derive(Debug, Default)]
pub(crate) struct Affected {
    pub all: bool,
    pub ids: BTreeSet<VolumeId>,
}

impl Affected {
    pub fn one(&mut self, id: &VolumeId) {
        self.ids.insert(id.clone());
    }

    pub fn extend<'a>(&mut self, ids: impl Iterator<Item = &'a VolumeId>) {
        self.ids.extend(ids.cloned());
    }
}

impl Monitor {
    pub fn new(config: MonitorConfig) -> Self {
        Self {
            config,
            now: Timestamp::ZERO,
            facts: Facts::default(),
            volumes: HashMap::default(),
            by_nqn: Index::default(),
            by_dev: Index::default(),
            by_mount: Index::default(),
            timers: Timers::default(),
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// The latest time the machine has seen (it never goes backwards).
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Processes one event at `now`.
    pub fn on_event(&mut self, event: MonitorEvent, now: Timestamp) -> Vec<Action> {
        self.on_event_observed(event, None, now)
    }

    /// Processes one event that the kernel (or a watcher) observed at `observed_at`; detection
    /// latency metrics are `now - observed_at`.
    pub fn on_event_observed(
        &mut self,
        event: MonitorEvent,
        observed_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Vec<Action> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        // Summaries are written out only when read, and only for events that concern us.
        let detail = if self.concerns_us(&event) {
            event.summary()
        } else {
            Message::empty()
        };
        let cause = Cause {
            event: event.kind(),
            detail,
            at: self.now,
            observed_at,
        };
        let affected = self.apply(event, &mut out);
        if affected.all {
            let mut ids: Vec<VolumeId> = self.volumes.keys().cloned().collect();
            ids.sort();
            for id in ids {
                self.reconcile(&id, &cause, &mut out);
            }
        } else {
            for id in affected.ids {
                self.reconcile(&id, &cause, &mut out);
            }
        }
        // Deadlines after the event: an event processed late (a namespace re-added just as
        // its grace ran out) wins over the deadline rather than flapping through it.
        self.fire_timers(&mut out);
        out
    }

    fn concerns_us(&self, event: &MonitorEvent) -> bool {
        match event {
            MonitorEvent::MountAttached(m) | MonitorEvent::MountChanged(m) => {
                self.by_mount.contains(&m.id)
            }
            MonitorEvent::MountDetached { id } => self.by_mount.contains(id),
            MonitorEvent::IoProgress { dev, .. } => self.by_dev.contains(dev),
            _ => true,
        }
    }

    fn fire_timers(&mut self, out: &mut Vec<Action>) {
        let due = self.timers.pop_due(self.now);
        if due.is_empty() {
            return;
        }
        let cause = Cause {
            event: EventKind::Tick,
            detail: Message::fixed("deadline reached"),
            at: self.now,
            observed_at: None,
        };
        let mut ids = BTreeSet::new();
        for key in due {
            match key {
                TimerKey::Gone(nqn) => ids.extend(self.by_nqn.get(&nqn).cloned()),
                TimerKey::Recovery(id) => {
                    ids.insert(id);
                }
                TimerKey::Io(dev) => ids.extend(self.by_dev.get(&dev).cloned()),
            }
        }
        for id in ids {
            self.reconcile(&id, &cause, out);
        }
    }

    pub(crate) fn schedule(&mut self, at: Timestamp, key: TimerKey, out: &mut Vec<Action>) {
        if self.timers.schedule(at, key) {
            out.push(Action::ScheduleTick { at });
        }
    }

    /// Re-evaluates one volume and its publishes; emits what changed.
    pub(crate) fn reconcile(&mut self, id: &VolumeId, cause: &Cause, out: &mut Vec<Action>) {
        let now = self.now;
        let Some(vol) = self.volumes.get_mut(id) else {
            return;
        };
        let a = assess(&self.facts, vol, now, &self.config);
        let step = recovery::step(
            vol.recovery.as_ref(),
            a.recoverable.as_ref(),
            a.gate_open,
            a.mount_confirmed,
            now,
            &self.config,
        );
        if let (Some(attempts), Some(c)) = (step.gave_up, &step.cycle) {
            out.push(Action::Metric(MetricEvent::Recovery {
                result: crate::action::RecoveryResult::Exhausted,
            }));
            out.push(Action::PostEvent {
                volume_id: id.clone(),
                reason: EventReason::RecoveryFailed,
                type_: EventType::Warning,
                message: format!(
                    "recovery of the staging mount ({}) gave up after {attempts} attempt(s): {}",
                    crate::evaluate::describe_reason(&c.reason),
                    recovery::RELAPSE
                )
                .into(),
            });
        }
        if let Some(at) = step.timer {
            if self.timers.schedule(at, TimerKey::Recovery(id.clone())) {
                out.push(Action::ScheduleTick { at });
            }
        }
        if let Some((reason, attempt)) = step.recover {
            out.push(Action::Recover {
                volume_id: id.clone(),
                reason,
                attempt,
                device: a.resolved(),
            });
        }
        // The stall period of in-flight requests ends: re-evaluate then.
        let io_due = self
            .facts
            .io
            .get(&vol.device.dev)
            .and_then(|t| t.stalled_since())
            .map(|since| since.saturating_add(self.config.io_stall_after))
            .filter(|due| *due > now);
        vol.recovery = step.cycle;
        // With every path down the outage itself is reported; paths are tracked while some
        // carry the I/O.
        let down: Option<std::collections::BTreeSet<String>> = match &a.link {
            crate::facts::Link::Degraded { down, .. } => {
                Some(down.iter().map(|c| (*c).to_owned()).collect())
            }
            crate::facts::Link::Fine => Some(Default::default()),
            crate::facts::Link::Reconnecting { .. } | crate::facts::Link::Down { .. } => None,
        };
        if let Some(down) = down.filter(|d| *d != vol.paths_down) {
            path_events(id, &vol.nqn, &vol.paths_down, &down, out);
            vol.paths_down = down;
        }
        let (kind, message) = verdict(&a, vol, &self.config);
        let history_len = self.config.history_len;
        let watches = desired_watches(&self.facts, vol);
        if watches != vol.watches {
            watch_changes(id, &vol.watches, &watches, out);
            vol.watches = watches;
        }
        if let Some(old) = set_condition(&mut vol.condition, kind, message, cause, now) {
            let new = vol.condition.clone();
            if let Some(new) = &new {
                if old.as_ref().map(|o| o.kind) != Some(new.kind) {
                    record(&mut vol.history, old.as_ref(), new, cause, now, history_len);
                    volume_side_effects(
                        id,
                        old.as_ref().map(|o| o.kind),
                        new,
                        cause,
                        &mut vol.outage_since,
                        out,
                    );
                }
            }
            out.push(Action::ConditionChanged {
                volume_id: id.clone(),
                old,
                new,
            });
        }
        let volume_condition = vol.condition.as_ref();
        let paths = crate::evaluate::paths_note(&a.link);
        // The executor's own unmounts and re-binds are not faults.
        let recovering = vol
            .recovery
            .as_ref()
            .is_some_and(crate::recovery::RecoveryCycle::in_flight);
        for p in vol.publishes.values_mut() {
            let v = publish_verdict(&self.facts, volume_condition, &paths, recovering, p);
            let Some(old) = set_condition(&mut p.condition, v.kind, v.message, cause, now) else {
                continue;
            };
            let new = p.condition.clone();
            let kind_changed = old.as_ref().map(|o| o.kind) != new.as_ref().map(|n| n.kind);
            if let (true, true, Some(n)) = (kind_changed, v.own, &new) {
                if let Some(reason) = event_reason_for(n.kind) {
                    out.push(Action::PostEvent {
                        volume_id: id.clone(),
                        reason,
                        type_: EventType::Warning,
                        message: Message::new(TargetNote {
                            target: p.target.clone(),
                            message: n.message.clone(),
                        }),
                    });
                    out.push(Action::Metric(MetricEvent::Detection {
                        kind: n.kind,
                        latency: latency(cause, now),
                    }));
                }
            }
            out.push(Action::PublishConditionChanged {
                volume_id: id.clone(),
                target: p.target.clone(),
                old,
                new,
            });
        }
        if let Some(due) = io_due {
            let dev = vol.device.dev;
            self.schedule(due, TimerKey::Io(dev), out);
        }
    }

    /// Ends every watch the volume holds (it is being unstaged).
    pub(crate) fn drop_watches(&mut self, id: &VolumeId, out: &mut Vec<Action>) {
        if let Some(v) = self.volumes.get_mut(id) {
            watch_changes(id, &v.watches, &Watches::default(), out);
            v.watches = Watches::default();
        }
    }

    // ---- queries: a hash lookup (plus a lookup among a volume's few publishes) ----

    /// The condition of a staged volume.
    pub fn condition(&self, volume_id: &VolumeId) -> Option<&VolumeCondition> {
        self.volumes.get(volume_id)?.condition.as_ref()
    }

    /// The condition of one publish (what `NodeGetVolumeStats` on `target` reports).
    pub fn publish_condition(
        &self,
        volume_id: &VolumeId,
        target: &Path,
    ) -> Option<&VolumeCondition> {
        self.volumes
            .get(volume_id)?
            .publishes
            .get(target)?
            .condition
            .as_ref()
    }

    /// The recorded transitions of a volume, oldest first (bounded by `history_len`).
    pub fn transitions(&self, volume_id: &VolumeId) -> impl Iterator<Item = &Transition> + '_ {
        self.volumes
            .get(volume_id)
            .into_iter()
            .flat_map(|v| v.history.iter())
    }

    /// Every staged volume with its condition.
    pub fn volumes(&self) -> impl Iterator<Item = (&VolumeId, &VolumeCondition)> + '_ {
        self.volumes
            .iter()
            .filter_map(|(id, v)| v.condition.as_ref().map(|c| (id, c)))
    }

    /// Every publish of a volume with its condition.
    pub fn publishes(
        &self,
        volume_id: &VolumeId,
    ) -> impl Iterator<Item = (&Path, &VolumeCondition)> + '_ {
        self.volumes
            .get(volume_id)
            .into_iter()
            .flat_map(|v| v.publishes.values())
            .filter_map(|p| p.condition.as_ref().map(|c| (p.target.as_path(), c)))
    }

    /// Every NQN a staged volume uses (for a device resync).
    pub fn nqns(&self) -> impl Iterator<Item = &Nqn> + '_ {
        self.by_nqn.keys()
    }

    /// The earliest tick the machine is waiting for.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }
}

/// Updates `slot`; returns `Some(old)` when the kind or the message changed. A new kind gets
/// a new `since` and cause; a message-only change keeps them.
fn set_condition(
    slot: &mut Option<VolumeCondition>,
    kind: ConditionKind,
    message: Message,
    cause: &Cause,
    now: Timestamp,
) -> Option<Option<VolumeCondition>> {
    match slot {
        Some(c) if c.kind == kind && c.message == message => None,
        Some(c) if c.kind == kind => {
            let old = c.clone();
            c.message = message;
            Some(Some(old))
        }
        _ => {
            let old = slot.replace(VolumeCondition {
                kind,
                message,
                since: now,
                cause: cause.clone(),
            });
            Some(old)
        }
    }
}

fn record(
    history: &mut VecDeque<Transition>,
    old: Option<&VolumeCondition>,
    new: &VolumeCondition,
    cause: &Cause,
    now: Timestamp,
    len: usize,
) {
    if len == 0 {
        return;
    }
    while history.len() >= len {
        history.pop_front();
    }
    history.push_back(Transition {
        from: old.map(|o| o.kind),
        to: new.kind,
        message: new.message.clone(),
        cause: cause.clone(),
        after: old.map_or(std::time::Duration::ZERO, |o| now.saturating_since(o.since)),
    });
}

pub(crate) fn latency(cause: &Cause, now: Timestamp) -> Option<std::time::Duration> {
    cause.observed_at.map(|o| now.saturating_since(o))
}

/// The Kubernetes Event reason announcing that a volume (or publish) entered `kind`.
fn event_reason_for(kind: ConditionKind) -> Option<EventReason> {
    match kind {
        ConditionKind::Healthy | ConditionKind::Recovering => None,
        ConditionKind::ControllerReconnecting
        | ConditionKind::DeviceRemoved
        | ConditionKind::DeviceGone => Some(EventReason::ConnectionFailure),
        ConditionKind::IoStalled => Some(EventReason::IoStalled),
        ConditionKind::NamespaceMismatch => Some(EventReason::NamespaceMismatch),
        ConditionKind::MountMissing => Some(EventReason::MountFailure),
        ConditionKind::FilesystemFailed => Some(EventReason::FilesystemFailed),
        ConditionKind::DeviceReplaced => Some(EventReason::StaleMountDetected),
        ConditionKind::MountStorm => Some(EventReason::MountStorm),
    }
}

/// One Event per path (controller) that goes down while others carry the I/O, and one when
/// it is back.
fn path_events(
    id: &VolumeId,
    nqn: &Nqn,
    before: &std::collections::BTreeSet<String>,
    now: &std::collections::BTreeSet<String>,
    out: &mut Vec<Action>,
) {
    for c in now.difference(before) {
        out.push(Action::PostEvent {
            volume_id: id.clone(),
            reason: EventReason::ConnectionFailure,
            type_: EventType::Warning,
            message: format!(
                "One path to the volume's target is lost; I/O continues on the others. \
                 Controller {c} of {nqn} is reconnecting."
            )
            .into(),
        });
    }
    for c in before.difference(now) {
        out.push(Action::PostEvent {
            volume_id: id.clone(),
            reason: EventReason::ConnectionRecovery,
            type_: EventType::Normal,
            message: format!(
                "A lost path to the volume's target is back: controller {c} of {nqn}."
            )
            .into(),
        });
    }
}

/// A publish's own fault, as its Event says it: `target <path>: <message>`.
#[derive(Debug, PartialEq, Eq)]
struct TargetNote {
    target: std::path::PathBuf,
    message: Message,
}

impl std::fmt::Display for TargetNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "target {}: {}", self.target.display(), self.message)
    }
}

/// The connection is back, after how long and why.
#[derive(Debug, PartialEq, Eq)]
struct Restored {
    lasted: std::time::Duration,
    cause: Message,
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "The connection to the volume's namespace is back after {} ({}).",
            humantime::format_duration(self.lasted),
            self.cause
        )
    }
}

/// The kinds during which the volume has no connection to its namespace.
fn is_outage(kind: ConditionKind) -> bool {
    matches!(
        kind,
        ConditionKind::ControllerReconnecting
            | ConditionKind::DeviceRemoved
            | ConditionKind::DeviceGone
    )
}

/// Events and metrics for a change of a volume's condition kind. A connection loss posts one
/// Event when it starts and one when the namespace is back (with the outage's duration),
/// whatever the kinds it passes through in between.
fn volume_side_effects(
    id: &VolumeId,
    old: Option<ConditionKind>,
    new: &VolumeCondition,
    cause: &Cause,
    outage_since: &mut Option<Timestamp>,
    out: &mut Vec<Action>,
) {
    let post = |out: &mut Vec<Action>, reason: EventReason, message: Message| {
        out.push(Action::PostEvent {
            volume_id: id.clone(),
            reason,
            type_: reason.default_type(),
            message,
        })
    };
    let detection = |out: &mut Vec<Action>| {
        out.push(Action::Metric(MetricEvent::Detection {
            kind: new.kind,
            latency: latency(cause, new.since),
        }))
    };
    if is_outage(new.kind) {
        if outage_since.is_none() {
            *outage_since = Some(new.since);
            post(out, EventReason::ConnectionFailure, new.message.clone());
            detection(out);
        }
        return;
    }
    if let Some(since) = outage_since.take() {
        let lasted = new.since.saturating_since(since);
        post(
            out,
            EventReason::ConnectionRecovery,
            Message::new(Restored {
                lasted: std::time::Duration::from_millis(
                    u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
                ),
                cause: cause.detail.clone(),
            }),
        );
    }
    // After a failed attempt the fault is back: the failure posted its own event.
    let after_attempt = old == Some(ConditionKind::Recovering);
    if new.kind.is_abnormal() && !after_attempt {
        if let Some(reason) = event_reason_for(new.kind) {
            post(out, reason, new.message.clone());
            detection(out);
        }
    }
    if new.kind == ConditionKind::Healthy {
        let back = match old {
            Some(ConditionKind::MountStorm) => Some((
                EventReason::MountStormCleared,
                Message::fixed("The mount storm cleared."),
            )),
            Some(ConditionKind::MountMissing) => Some((
                EventReason::MountRecovered,
                Message::fixed("The staging mount is present again."),
            )),
            Some(ConditionKind::IoStalled) => Some((
                EventReason::IoResumed,
                Message::fixed("The device completes requests again."),
            )),
            _ => None,
        };
        if let Some((reason, message)) = back {
            post(out, reason, message);
        }
    }
}

/// The watches the volume needs now: its staging mount tracked for remounts, its mounted
/// filesystem watched for errors, its device sampled for stalls.
fn desired_watches(facts: &crate::facts::Facts, v: &Volume) -> Watches {
    let filesystem = v
        .mount
        .filter(|k| v.is_filesystem() && facts.mount(k).is_some())
        .map(|k| (k, v.staging_path.clone()));
    Watches {
        mount: v.mount.filter(|_| v.is_filesystem()).map(|k| k.id),
        filesystem,
        io: Some(v.device.dev),
    }
}

/// The actions that turn `old` watches into `new` (ends before starts).
fn watch_changes(id: &VolumeId, old: &Watches, new: &Watches, out: &mut Vec<Action>) {
    if old.mount != new.mount {
        if let Some(m) = old.mount {
            out.push(Action::UntrackMount { id: m });
        }
        if let Some(m) = new.mount {
            out.push(Action::TrackMount { id: m });
        }
    }
    if old.filesystem != new.filesystem {
        if let Some((k, _)) = &old.filesystem {
            out.push(Action::UnwatchFilesystem {
                volume_id: id.clone(),
                dev: k.dev,
            });
        }
        if let Some((k, p)) = &new.filesystem {
            out.push(Action::WatchFilesystem {
                volume_id: id.clone(),
                mount: *k,
                mount_point: p.clone(),
            });
        }
    }
    if old.io != new.io {
        if let Some(d) = old.io {
            out.push(Action::UnwatchIo { dev: d });
        }
        if let Some(d) = new.io {
            out.push(Action::WatchIo { dev: d });
        }
    }
}
