//! Applying one event to the facts and the volume records, and saying which volumes it may
//! have changed. No conditions are decided here (that is `evaluate.rs`), except for the
//! executor's feedback, which drives the recovery cycle directly.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use rds_types::{BlockIdentity, NamespaceIds, Nqn};

use crate::action::{Action, EventReason, EventType, IgnoreReason, MetricEvent, RecoveryResult};
use crate::condition::ConditionKind;
use crate::event::{
    EventKind, MonitorEvent, MountFacts, NamespaceFacts, RecoveryReport, StaleMark,
};
use crate::facts::{Resolution, Storm};
use crate::ids::{MountKey, StormKey, VolumeId};
use crate::machine::{Affected, Monitor};
use crate::recovery::{Phase, RecoveryCycle};
use crate::timers::TimerKey;
use crate::volume::{FsFailure, Publish, Volume};

/// NSID 0 is invalid in NVMe: used as the removal key of a volume staged without an nsid.
const ANY_NSID: u32 = 0;

impl Monitor {
    pub(crate) fn apply(&mut self, event: MonitorEvent, out: &mut Vec<Action>) -> Affected {
        let mut aff = Affected::default();
        let kind = event.kind();
        match event {
            MonitorEvent::VolumeStaged {
                volume_id,
                nqn,
                nsid,
                ids,
                staging_path,
                mount,
                device,
                fs_type,
                read_only,
                adopted,
            } => {
                let record = StageRecord {
                    nqn,
                    nsid,
                    ids,
                    staging_path,
                    mount,
                    device,
                    fs_type,
                    read_only,
                };
                self.stage(&volume_id, record, adopted, out);
                aff.one(&volume_id);
            }
            MonitorEvent::VolumeUnstaged { volume_id } => self.unstage(&volume_id, kind, out),
            MonitorEvent::VolumePublished {
                volume_id,
                target,
                mount,
                read_only,
                adopted,
                stale,
            } => {
                if self.publish(&volume_id, target, mount, read_only, adopted, stale) {
                    aff.one(&volume_id);
                } else {
                    ignored(out, kind, IgnoreReason::UnknownVolume);
                }
            }
            MonitorEvent::VolumeUnpublished { volume_id, target } => {
                if self.unpublish(&volume_id, &target, out) {
                    aff.one(&volume_id);
                } else {
                    ignored(out, kind, IgnoreReason::UnknownVolume);
                }
            }
            MonitorEvent::MountAttached(m) | MonitorEvent::MountChanged(m) => {
                self.saw_mount(m.id, &mut aff);
                self.facts.mounts.insert(m.id, m);
            }
            MonitorEvent::MountDetached { id } => {
                self.saw_mount(id, &mut aff);
                self.facts.mounts.remove(&id);
            }
            MonitorEvent::MountResync(all) => {
                self.mount_resync(all);
                aff.all = true;
            }
            MonitorEvent::MountStorm {
                key,
                count,
                message,
            } => {
                if !self.facts.storms.contains_key(&key) {
                    out.push(Action::Metric(MetricEvent::StormStarted {
                        key: key.clone(),
                        count,
                    }));
                }
                self.storm_affects(&key, &mut aff);
                self.facts.storms.insert(key, Storm { count, message });
            }
            MonitorEvent::MountStormCleared { key } => {
                if self.facts.storms.remove(&key).is_some() {
                    out.push(Action::Metric(MetricEvent::StormCleared {
                        key: key.clone(),
                    }));
                    self.storm_affects(&key, &mut aff);
                }
            }
            MonitorEvent::NamespaceAdded(ns) => {
                aff.extend(self.by_nqn.get(&ns.nqn));
                self.facts.add_namespace(ns);
            }
            MonitorEvent::NamespaceRemoved {
                nqn,
                nsid,
                identity,
            } => {
                if self.facts.remove_namespace(&nqn, nsid, &identity) {
                    self.note_removal(&nqn, nsid, out);
                    aff.extend(self.by_nqn.get(&nqn));
                } else {
                    ignored(out, kind, IgnoreReason::StaleRemoval);
                }
            }
            MonitorEvent::ControllerState(c) => {
                aff.extend(self.by_nqn.get(&c.nqn));
                self.facts.set_controller(c);
            }
            MonitorEvent::ControllerRemoved { nqn, controller } => {
                aff.extend(self.by_nqn.get(&nqn));
                self.facts.remove_controller(&nqn, &controller);
            }
            MonitorEvent::DeviceResync {
                namespaces,
                controllers,
            } => {
                self.device_resync(namespaces, out);
                self.facts.controllers.clear();
                for c in controllers {
                    self.facts.set_controller(c);
                }
                aff.all = true;
            }
            MonitorEvent::ConnectFailed {
                volume_id,
                nqn,
                error,
            } => {
                out.push(Action::PostEvent {
                    volume_id,
                    reason: EventReason::ConnectionFailure,
                    type_: EventType::Warning,
                    message: format!(
                        "Staging the volume could not connect to its NVMe/TCP target; the stage is \
                         retried. Connecting {nqn} failed: {}",
                        rds_types::quote(&error)
                    )
                    .into(),
                });
            }
            MonitorEvent::IoProgress {
                dev,
                inflight,
                completed,
            } => {
                if self.by_dev.contains(&dev) {
                    self.facts.io_sample(dev, inflight, completed, self.now);
                    aff.extend(self.by_dev.get(&dev));
                }
            }
            MonitorEvent::FsError { dev, errno, count } => {
                let ids: Vec<VolumeId> = self.by_dev.get(&dev).cloned().collect();
                for id in ids {
                    let Some(v) = self.volumes.get_mut(&id) else {
                        continue;
                    };
                    if v.device.dev != dev || v.mount.is_none() {
                        continue;
                    }
                    let f = v.fs_failure.get_or_insert(FsFailure {
                        dev,
                        errno,
                        count: 0,
                    });
                    f.errno = errno;
                    f.count = f.count.saturating_add(u64::from(count));
                    aff.one(&id);
                }
            }
            MonitorEvent::RecoveryStarted { volume_id, attempt } => {
                if self.recovery_started(&volume_id, attempt) {
                    out.push(Action::Metric(MetricEvent::Recovery {
                        result: RecoveryResult::Started,
                    }));
                    aff.one(&volume_id);
                } else {
                    ignored(out, kind, IgnoreReason::UnexpectedFeedback);
                }
            }
            MonitorEvent::RecoverySucceeded { volume_id, report } => {
                if self.volumes.contains_key(&volume_id) {
                    self.recovery_succeeded(&volume_id, report, out);
                    aff.one(&volume_id);
                } else {
                    ignored(out, kind, IgnoreReason::UnknownVolume);
                }
            }
            MonitorEvent::RecoveryFailed {
                volume_id,
                attempt,
                error,
                final_,
            } => {
                if self.recovery_failed(&volume_id, attempt, error, final_, out) {
                    aff.one(&volume_id);
                } else {
                    ignored(out, kind, IgnoreReason::UnexpectedFeedback);
                }
            }
            MonitorEvent::Tick => {}
        }
        aff
    }

    // ---- indices ----

    fn index(&mut self, id: &VolumeId) {
        let Some(v) = self.volumes.get(id) else {
            return;
        };
        self.by_nqn.add(v.nqn.clone(), id);
        self.by_dev.add(v.device.dev, id);
        for m in v.mount_ids() {
            self.by_mount.add(m, id);
        }
    }

    fn unindex(&mut self, id: &VolumeId) {
        let Some(v) = self.volumes.get(id) else {
            return;
        };
        self.by_nqn.remove(&v.nqn, id);
        self.by_dev.remove(&v.device.dev, id);
        if !self.by_dev.contains(&v.device.dev) {
            self.facts.io.remove(&v.device.dev);
        }
        for m in v.mount_ids() {
            self.by_mount.remove(&m, id);
        }
    }

    /// Mutates a volume record with its index entries kept right.
    fn reindexed(&mut self, id: &VolumeId, f: impl FnOnce(&mut Volume)) {
        self.unindex(id);
        if let Some(v) = self.volumes.get_mut(id) {
            f(v);
        }
        self.index(id);
    }

    // ---- volume lifecycle ----

    fn stage(&mut self, id: &VolumeId, r: StageRecord, adopted: bool, out: &mut Vec<Action>) {
        let present = r.mount.is_some_and(|k| self.facts.mount(&k).is_some());
        let tracked = present || (adopted && self.facts.mounts_synced);
        if let Some(v) = self.volumes.get(id) {
            if r.same_as(v) {
                // An idempotent re-stage: nothing about the device or mount changed.
                if let Some(v) = self.volumes.get_mut(id) {
                    v.mount_tracked |= tracked;
                    v.read_only = r.read_only;
                }
                return;
            }
            self.reindexed(id, |v| {
                r.write_into(v);
                v.mount_tracked = tracked;
                v.fs_failure = None;
                v.recovery = None;
            });
        } else {
            let mut v = Volume {
                nqn: r.nqn.clone(),
                nsid: r.nsid,
                ids: NamespaceIds::default(),
                staging_path: PathBuf::new(),
                mount: None,
                device: r.device,
                fs_type: None,
                read_only: false,
                mount_tracked: tracked,
                fs_failure: None,
                recovery: None,
                publishes: BTreeMap::new(),
                condition: None,
                history: VecDeque::new(),
                outage_since: None,
                watches: Default::default(),
                paths_down: Default::default(),
            };
            r.write_into(&mut v);
            self.volumes.insert(id.clone(), v);
            self.index(id);
        }
        if adopted && self.facts.devices_synced {
            // A record replayed after a restart whose namespace an authoritative scan did not
            // find: that namespace is gone (subject to the grace period), not merely late.
            self.note_missing_after_scan(id, out);
        }
    }

    fn unstage(&mut self, id: &VolumeId, kind: EventKind, out: &mut Vec<Action>) {
        if !self.volumes.contains_key(id) {
            ignored(out, kind, IgnoreReason::UnknownVolume);
            return;
        }
        self.drop_watches(id, out);
        self.unindex(id);
        let Some(v) = self.volumes.remove(id) else {
            return;
        };
        if !self.by_nqn.contains(&v.nqn) {
            // Nobody needs that NQN's removal history any more.
            self.facts.removals.remove(&v.nqn);
        }
        // Any recovery cycle dies with the record; its timer fires into nothing.
        for p in v.publishes.into_values() {
            out.push(Action::PublishConditionChanged {
                volume_id: id.clone(),
                target: p.target,
                old: p.condition,
                new: None,
            });
        }
        out.push(Action::ConditionChanged {
            volume_id: id.clone(),
            old: v.condition,
            new: None,
        });
    }

    fn publish(
        &mut self,
        id: &VolumeId,
        target: PathBuf,
        mount: Option<MountKey>,
        read_only: bool,
        adopted: bool,
        stale: Option<StaleMark>,
    ) -> bool {
        if !self.volumes.contains_key(id) {
            return false;
        }
        let present = mount.is_some_and(|k| self.facts.mount(&k).is_some());
        let tracked = present || (adopted && self.facts.mounts_synced);
        self.reindexed(id, |v| {
            let p = v
                .publishes
                .entry(target.clone())
                .or_insert_with(|| Publish {
                    target,
                    mount,
                    read_only,
                    mount_tracked: tracked,
                    // A pod that held a replaced filesystem stays stale across an idempotent
                    // re-publish of the same target: only unpublishing ends that pod.
                    stale: None,
                    condition: None,
                });
            if p.stale.is_none() {
                // A mark persisted by an earlier recovery (a plugin restart keeps it).
                p.stale = stale;
            }
            if p.mount != mount {
                p.mount = mount;
                p.mount_tracked = tracked;
            } else {
                p.mount_tracked |= tracked;
            }
            p.read_only = read_only;
        });
        true
    }

    /// Returns false when the volume or the publish is unknown.
    fn unpublish(
        &mut self,
        id: &VolumeId,
        target: &std::path::Path,
        out: &mut Vec<Action>,
    ) -> bool {
        let known = self
            .volumes
            .get(id)
            .is_some_and(|v| v.publishes.contains_key(target));
        if !known {
            return false;
        }
        let mut removed = None;
        self.reindexed(id, |v| removed = v.publishes.remove(target));
        if let Some(p) = removed {
            out.push(Action::PublishConditionChanged {
                volume_id: id.clone(),
                target: p.target,
                old: p.condition,
                new: None,
            });
        }
        true
    }

    // ---- mounts ----

    /// The mount with this id was just seen (attached, changed or detached): every volume
    /// owning it now has authoritative information about it.
    fn saw_mount(&mut self, mount_id: u64, aff: &mut Affected) {
        for id in self.by_mount.get(&mount_id) {
            if let Some(v) = self.volumes.get_mut(id) {
                if v.mount.is_some_and(|k| k.id == mount_id) {
                    v.mount_tracked = true;
                }
                for p in v.publishes.values_mut() {
                    if p.mount.is_some_and(|k| k.id == mount_id) {
                        p.mount_tracked = true;
                    }
                }
            }
            aff.one(id);
        }
    }

    fn mount_resync(&mut self, all: Vec<MountFacts>) {
        self.facts.mounts = all.into_iter().map(|m| (m.id, m)).collect();
        self.facts.mounts_synced = true;
        for v in self.volumes.values_mut() {
            v.mount_tracked = true;
            for p in v.publishes.values_mut() {
                p.mount_tracked = true;
            }
        }
    }

    fn storm_affects(&self, key: &StormKey, aff: &mut Affected) {
        match key {
            StormKey::Device(d) => aff.extend(self.by_dev.get(d)),
            // Rare: a linear pass beats maintaining a path trie.
            StormKey::MountPoint(_) => aff.all = true,
        }
    }

    // ---- devices ----

    /// Starts the gone-grace of `nqn`'s namespace `nsid` if a volume uses that NQN.
    fn note_removal(&mut self, nqn: &Nqn, nsid: u32, out: &mut Vec<Action>) {
        if !self.by_nqn.contains(nqn) {
            return;
        }
        if self.facts.note_removal(nqn, nsid, self.now) {
            let at = self.now.saturating_add(self.config.gone_grace);
            self.schedule(at, TimerKey::Gone(nqn.clone()), out);
        }
    }

    fn note_missing_after_scan(&mut self, id: &VolumeId, out: &mut Vec<Action>) {
        let Some(v) = self.volumes.get(id) else {
            return;
        };
        if matches!(
            self.facts.resolve(&v.nqn, v.nsid, &v.device),
            Resolution::Unknown
        ) {
            let (nqn, nsid) = (v.nqn.clone(), v.nsid.unwrap_or(ANY_NSID));
            self.note_removal(&nqn, nsid, out);
        }
    }

    fn device_resync(&mut self, namespaces: Vec<NamespaceFacts>, out: &mut Vec<Action>) {
        let old = std::mem::take(&mut self.facts.namespaces);
        for ns in namespaces {
            self.facts.add_namespace(ns);
        }
        self.facts.devices_synced = true;
        for (nqn, nsids) in old {
            for nsid in nsids.into_keys() {
                let still = self
                    .facts
                    .namespaces
                    .get(&nqn)
                    .is_some_and(|n| n.contains_key(&nsid));
                if !still {
                    self.note_removal(&nqn, nsid, out);
                }
            }
        }
        let mut ids: Vec<VolumeId> = self.volumes.keys().cloned().collect();
        ids.sort();
        for id in ids {
            self.note_missing_after_scan(&id, out);
        }
    }

    // ---- executor feedback ----

    fn recovery_started(&mut self, id: &VolumeId, attempt: u32) -> bool {
        let Some(c) = self.volumes.get_mut(id).and_then(|v| v.recovery.as_mut()) else {
            return false;
        };
        match c.phase {
            Phase::Requested { attempt: a } | Phase::Waiting { attempt: a, .. } if a == attempt => {
                c.phase = Phase::Running { attempt };
                true
            }
            Phase::Running { attempt: a } => a == attempt,
            _ => false,
        }
    }

    fn recovery_failed(
        &mut self,
        id: &VolumeId,
        attempt: u32,
        error: String,
        final_: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        let now = self.now;
        let Some(c) = self.volumes.get_mut(id).and_then(|v| v.recovery.as_mut()) else {
            return false;
        };
        match c.phase {
            Phase::Requested { attempt: a } | Phase::Running { attempt: a } if a == attempt => {}
            _ => return false,
        }
        let max = self.config.attempts_for(&c.reason);
        if final_ || attempt >= max {
            let message = format!(
                "Healing the volume failed and is not retried until the fault changes: its pods \
                 see I/O errors. Recovery ({}) failed after {attempt} attempt(s): {error}.",
                crate::evaluate::describe_reason(&c.reason)
            );
            c.phase = Phase::Exhausted {
                attempts: attempt,
                error,
            };
            out.push(Action::Metric(MetricEvent::Recovery {
                result: RecoveryResult::Exhausted,
            }));
            out.push(Action::PostEvent {
                volume_id: id.clone(),
                reason: EventReason::RecoveryFailed,
                type_: EventType::Warning,
                message: message.into(),
            });
        } else {
            let delay = self.config.delay_before(&c.reason, attempt + 1);
            // No attempt number for the endless reconnect: its repeats aggregate into one
            // Event series.
            let message = if c.reason.is_unbounded() {
                format!(
                    "Reconnecting the volume's NVMe/TCP target failed; retrying while the volume \
                     is staged. {error}"
                )
            } else {
                format!(
                    "Healing the volume failed; the plugin retries in {}. Attempt {attempt} of \
                     {max} ({}): {error}.",
                    humantime::format_duration(delay),
                    crate::evaluate::describe_reason(&c.reason)
                )
            };
            let next = RecoveryCycle::waiting(c.reason.clone(), attempt + 1, now, &self.config);
            let at = match next.phase {
                Phase::Waiting { not_before, .. } => not_before,
                _ => now,
            };
            *c = next;
            out.push(Action::Metric(MetricEvent::Recovery {
                result: RecoveryResult::Failed,
            }));
            out.push(Action::PostEvent {
                volume_id: id.clone(),
                reason: EventReason::RecoveryFailed,
                type_: EventType::Warning,
                message: message.into(),
            });
            self.schedule(at, TimerKey::Recovery(id.clone()), out);
        }
        true
    }

    fn recovery_succeeded(&mut self, id: &VolumeId, report: RecoveryReport, out: &mut Vec<Action>) {
        let RecoveryReport {
            new_device,
            new_mount,
            republished,
            stale_targets,
        } = report;
        let present = new_mount.is_some_and(|k| self.facts.mount(&k).is_some());
        let bind_present: BTreeMap<PathBuf, bool> = republished
            .iter()
            .map(|r| {
                let ok = r.mount.is_some_and(|k| self.facts.mount(&k).is_some());
                (r.target.clone(), ok)
            })
            .collect();
        let mut stranded = Vec::new();
        let mut old_device = new_device;
        let mut staging = PathBuf::new();
        self.reindexed(id, |v| {
            old_device = v.device;
            staging = v.staging_path.clone();
            // The executor says which running pods were left on the old superblock (and has
            // persisted it in the record); what their filesystem died of is this cycle's fault.
            let kind = match v.recovery.as_ref().map(|c| c.reason.kind()) {
                Some(ConditionKind::FilesystemFailed) => ConditionKind::FilesystemFailed,
                _ => ConditionKind::DeviceReplaced,
            };
            for t in &stale_targets {
                if let Some(p) = v.publishes.get_mut(t) {
                    if p.stale.is_none() {
                        p.stale = Some(StaleMark {
                            kind,
                            old_device: v.device,
                            new_device,
                        });
                    }
                    stranded.push(p.target.clone());
                }
            }
            v.device = new_device;
            v.mount = new_mount;
            v.mount_tracked = present;
            v.fs_failure = None;
            // Keep watching: the success holds only once the new mount is seen healthy.
            v.recovery = v.recovery.take().map(|c| RecoveryCycle {
                phase: Phase::Verifying {
                    attempt: c.attempt(),
                },
                reason: c.reason,
            });
            for r in &republished {
                if let Some(p) = v.publishes.get_mut(&r.target) {
                    p.mount = r.mount;
                    p.mount_tracked = bind_present.get(&r.target).copied().unwrap_or(false);
                }
            }
        });
        stranded.sort();
        out.push(Action::Metric(MetricEvent::Recovery {
            result: RecoveryResult::Succeeded,
        }));
        let healed = if new_mount.is_some() {
            format!(
                "The volume is healed: new pods get a working filesystem. The staging path {} is \
                 mounted again, on {new_device} (was {old_device}).",
                staging.display()
            )
        } else {
            format!(
                "The volume is healed: its device nodes point at {new_device} (was {old_device})."
            )
        };
        out.push(Action::PostEvent {
            volume_id: id.clone(),
            reason: EventReason::RecoverySucceeded,
            type_: EventType::Normal,
            message: healed.into(),
        });
        if !stranded.is_empty() {
            let list: Vec<String> = stranded.iter().map(|t| t.display().to_string()).collect();
            let what = if self.config.evict_pods_on_stale {
                "they are being deleted so their controllers recreate them"
            } else {
                "recreate them; their volume condition stays abnormal until they are"
            };
            out.push(Action::PostEvent {
                volume_id: id.clone(),
                reason: EventReason::PodRestartRequired,
                type_: EventType::Warning,
                message: format!(
                    "{} running pod(s) still hold the dead filesystem and no remount can heal \
                     them: {what}. Their targets: {}.",
                    stranded.len(),
                    list.join(", ")
                )
                .into(),
            });
        }
        if self.config.evict_pods_on_stale && !stranded.is_empty() {
            out.push(Action::EvictPods {
                volume_id: id.clone(),
                targets: stranded,
            });
        }
    }
}

fn ignored(out: &mut Vec<Action>, event: EventKind, reason: IgnoreReason) {
    out.push(Action::Metric(MetricEvent::Ignored { event, reason }));
}

/// The identities a stage records.
struct StageRecord {
    nqn: Nqn,
    nsid: Option<u32>,
    ids: NamespaceIds,
    staging_path: PathBuf,
    mount: Option<MountKey>,
    device: BlockIdentity,
    fs_type: Option<String>,
    read_only: bool,
}

impl StageRecord {
    fn same_as(&self, v: &Volume) -> bool {
        self.nqn == v.nqn
            && self.nsid == v.nsid
            && self.ids == v.ids
            && self.staging_path == v.staging_path
            && self.mount == v.mount
            && self.device == v.device
            && self.fs_type == v.fs_type
    }

    fn write_into(&self, v: &mut Volume) {
        v.nqn = self.nqn.clone();
        v.nsid = self.nsid;
        v.ids = self.ids.clone();
        v.staging_path = self.staging_path.clone();
        v.mount = self.mount;
        v.device = self.device;
        v.fs_type = self.fs_type.clone();
        v.read_only = self.read_only;
    }
}
