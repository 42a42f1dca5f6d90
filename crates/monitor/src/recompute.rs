//! Conditions derived from scratch, for checking the incremental machine.
//!
//! The machine re-evaluates only the volumes an event touches (through its NQN, device and
//! mount-id indices). [`recompute`] evaluates every volume and publish from the current facts;
//! [`check`] compares the two and also verifies that the recovery cycles are at their fixpoint
//! and that every pending deadline has a tick scheduled. A divergence means the machine forgot
//! to re-evaluate something.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::condition::Message;
use crate::condition::{ConditionKind, VolumeCondition};
use crate::evaluate::{assess, publish_verdict, verdict};
use crate::facts::Resolution;
use crate::ids::VolumeId;
use crate::machine::Monitor;
use crate::recovery::{self, Phase, RecoveryCycle};
use crate::timers::TimerKey;

/// A condition reduced to what the facts decide (kind and message; `since` and `cause` are
/// history).
pub type Verdict = (ConditionKind, Message);

/// Every volume's and every publish's condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub volumes: BTreeMap<VolumeId, Verdict>,
    pub publishes: BTreeMap<(VolumeId, PathBuf), Verdict>,
}

fn reduce(c: Option<&VolumeCondition>) -> Option<Verdict> {
    c.map(|c| (c.kind, c.message.clone()))
}

/// What the machine currently holds.
pub fn held(m: &Monitor) -> Conditions {
    let mut out = Conditions::default();
    for (id, v) in &m.volumes {
        if let Some(c) = reduce(v.condition.as_ref()) {
            out.volumes.insert(id.clone(), c);
        }
        for (t, p) in &v.publishes {
            if let Some(c) = reduce(p.condition.as_ref()) {
                out.publishes.insert((id.clone(), t.clone()), c);
            }
        }
    }
    out
}

/// Derives every condition purely from the current facts and records.
pub fn recompute(m: &Monitor) -> Conditions {
    let mut out = Conditions::default();
    for (id, v) in &m.volumes {
        let a = assess(&m.facts, v, m.now, &m.config);
        let (kind, message) = verdict(&a, v, &m.config);
        let vc = VolumeCondition {
            kind,
            message: message.clone(),
            since: m.now,
            cause: crate::condition::Cause {
                event: crate::event::EventKind::Tick,
                detail: Message::empty(),
                at: m.now,
                observed_at: None,
            },
        };
        out.volumes.insert(id.clone(), (kind, message));
        for (t, p) in &v.publishes {
            let pv = publish_verdict(
                &m.facts,
                Some(&vc),
                &crate::evaluate::paths_note(&a.link),
                v.recovery.as_ref().is_some_and(RecoveryCycle::in_flight),
                p,
            );
            out.publishes
                .insert((id.clone(), t.clone()), (pv.kind, pv.message));
        }
    }
    out
}

/// One way the incremental state differs from the recomputation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Divergence {
    Volume {
        volume_id: VolumeId,
        held: Option<Verdict>,
        derived: Option<Verdict>,
    },
    Publish {
        volume_id: VolumeId,
        target: PathBuf,
        held: Option<Verdict>,
        derived: Option<Verdict>,
    },
    /// A recovery step is due but was not taken.
    RecoveryNotAtFixpoint { volume_id: VolumeId },
    /// A deadline is pending without a tick asked for it.
    MissingTick {
        volume_id: VolumeId,
        what: &'static str,
    },
    /// The volume's namespace is known removed (I/O through its mount fails) and yet the
    /// volume or one of its publishes reads healthy.
    HealthyWhileRemoved {
        volume_id: VolumeId,
        target: Option<PathBuf>,
    },
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Volume {
                volume_id,
                held,
                derived,
            } => write!(
                f,
                "volume {volume_id}: machine holds {held:?}, facts give {derived:?}"
            ),
            Self::Publish {
                volume_id,
                target,
                held,
                derived,
            } => write!(
                f,
                "publish {volume_id} at {}: machine holds {held:?}, facts give {derived:?}",
                target.display()
            ),
            Self::RecoveryNotAtFixpoint { volume_id } => {
                write!(
                    f,
                    "volume {volume_id}: a recovery step is due but was not taken"
                )
            }
            Self::MissingTick { volume_id, what } => {
                write!(
                    f,
                    "volume {volume_id}: {what} is pending with no tick scheduled"
                )
            }
            Self::HealthyWhileRemoved { volume_id, target } => match target {
                Some(t) => write!(
                    f,
                    "publish {volume_id} at {} reads healthy while the namespace is removed",
                    t.display()
                ),
                None => write!(
                    f,
                    "volume {volume_id} reads healthy while its namespace is removed"
                ),
            },
        }
    }
}

/// Compares the machine's state with a recomputation from scratch.
pub fn check(m: &Monitor) -> Vec<Divergence> {
    let mut bad = Vec::new();
    let (h, d) = (held(m), recompute(m));
    for id in h.volumes.keys().chain(d.volumes.keys()) {
        let (a, b) = (h.volumes.get(id), d.volumes.get(id));
        if a != b {
            bad.push(Divergence::Volume {
                volume_id: id.clone(),
                held: a.cloned(),
                derived: b.cloned(),
            });
        }
    }
    for key in h.publishes.keys().chain(d.publishes.keys()) {
        let (a, b) = (h.publishes.get(key), d.publishes.get(key));
        if a != b {
            bad.push(Divergence::Publish {
                volume_id: key.0.clone(),
                target: key.1.clone(),
                held: a.cloned(),
                derived: b.cloned(),
            });
        }
    }
    bad.dedup();
    let mut ids: Vec<&VolumeId> = m.volumes.keys().collect();
    ids.sort();
    for id in ids {
        let v = &m.volumes[id];
        let a = assess(&m.facts, v, m.now, &m.config);
        let s = recovery::step(
            v.recovery.as_ref(),
            a.recoverable.as_ref(),
            a.gate_open,
            a.mount_confirmed,
            m.now,
            &m.config,
        );
        if s.cycle != v.recovery || s.recover.is_some() {
            bad.push(Divergence::RecoveryNotAtFixpoint {
                volume_id: id.clone(),
            });
        }
        if let Some(Phase::Waiting { not_before, .. }) = v.recovery.as_ref().map(|c| &c.phase) {
            if *not_before > m.now
                && !m
                    .timers
                    .contains(*not_before, &TimerKey::Recovery(id.clone()))
            {
                bad.push(Divergence::MissingTick {
                    volume_id: id.clone(),
                    what: "a recovery attempt",
                });
            }
        }
        if let Some(since) = m
            .facts
            .io
            .get(&v.device.dev)
            .and_then(|t| t.stalled_since())
        {
            let due = since.saturating_add(m.config.io_stall_after);
            if due > m.now && !m.timers.contains(due, &TimerKey::Io(v.device.dev)) {
                bad.push(Divergence::MissingTick {
                    volume_id: id.clone(),
                    what: "the end of an I/O stall period",
                });
            }
        }
        if matches!(a.resolution, Resolution::Removed { .. }) {
            let healthy = |c: Option<&VolumeCondition>| c.is_some_and(|c| !c.is_abnormal());
            if healthy(v.condition.as_ref()) {
                bad.push(Divergence::HealthyWhileRemoved {
                    volume_id: id.clone(),
                    target: None,
                });
            }
            for (t, p) in &v.publishes {
                if healthy(p.condition.as_ref()) {
                    bad.push(Divergence::HealthyWhileRemoved {
                        volume_id: id.clone(),
                        target: Some(t.clone()),
                    });
                }
            }
        }
        if let Resolution::Removed { at } = a.resolution {
            let due = at.saturating_add(m.config.gone_grace);
            if due > m.now && !m.timers.contains(due, &TimerKey::Gone(v.nqn.clone())) {
                bad.push(Divergence::MissingTick {
                    volume_id: id.clone(),
                    what: "the end of a gone-grace period",
                });
            }
        }
    }
    bad
}
