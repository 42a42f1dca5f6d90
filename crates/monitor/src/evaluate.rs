//! Pure evaluation: a volume's (and a publish's) condition from the facts, nothing else.
//!
//! Used both by the incremental machine (for the volumes an event touches) and by
//! [`crate::recompute`] (for all of them), so the two cannot disagree by construction of the
//! rules, only by the machine forgetting to re-evaluate a volume.

use rds_types::{BlockIdentity, DevNum};

use crate::action::RecoveryReason;
use crate::condition::{ConditionKind, VolumeCondition};
use crate::config::MonitorConfig;
use crate::event::NamespaceFacts;
use crate::facts::{Facts, Link, Resolution, Storm};
use crate::ids::{MountKey, StormKey};
use crate::recovery::{Phase, RecoveryCycle};
use crate::time::Timestamp;
use crate::volume::{Publish, Volume};

/// Why the filesystem is considered failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FsEvidence {
    Error { dev: DevNum, errno: i32, count: u64 },
    KernelFlag { mount: u64, flag: &'static str },
    ReadOnlyFlip { mount: u64 },
}

/// Every fault that holds for a volume, independent of its recovery cycle.
#[derive(Debug, Clone)]
pub(crate) struct Assessment<'f> {
    pub storm: Option<(StormKey, &'f Storm)>,
    pub resolution: Resolution<'f>,
    /// Removed at this time and still absent after the grace period.
    pub gone_since: Option<Timestamp>,
    pub replaced_by: Option<&'f NamespaceFacts>,
    pub fs: Option<FsEvidence>,
    pub mount_missing: Option<MountKey>,
    pub link: Link<'f>,
    /// The fault recovery would fix, most specific first.
    pub recoverable: Option<RecoveryReason>,
    /// Recovery can act now: the namespace is present, a path is up, no storm.
    pub gate_open: bool,
    /// The staging mount is in the table (always true for raw block).
    pub mount_confirmed: bool,
}

impl Assessment<'_> {
    pub fn resolved(&self) -> Option<BlockIdentity> {
        match self.resolution {
            Resolution::Present(ns) => Some(ns.identity),
            _ => None,
        }
    }
}

pub(crate) fn assess<'f>(
    facts: &'f Facts,
    vol: &Volume,
    now: Timestamp,
    cfg: &MonitorConfig,
) -> Assessment<'f> {
    let paths = std::iter::once(vol.staging_path.as_path())
        .chain(vol.publishes.keys().map(|p| p.as_path()));
    let storm = facts.storm_for(&vol.device.dev, paths);
    let resolution = facts.resolve(&vol.nqn, vol.nsid, &vol.device);
    let gone_since = match resolution {
        Resolution::Removed { at } if now >= at.saturating_add(cfg.gone_grace) => Some(at),
        _ => None,
    };
    let replaced_by = match resolution {
        Resolution::Present(ns) if !ns.identity.same_device(&vol.device) => Some(ns),
        _ => None,
    };
    let staging = vol.mount.as_ref().and_then(|k| facts.mount(k));
    let mount_missing = match vol.mount {
        Some(k) if vol.mount_tracked && staging.is_none() => Some(k),
        _ => None,
    };
    let fs = if let Some(f) = &vol.fs_failure {
        Some(FsEvidence::Error {
            dev: f.dev,
            errno: f.errno,
            count: f.count,
        })
    } else if let Some(m) = staging {
        if let Some(flag) = m.dead_flag() {
            Some(FsEvidence::KernelFlag { mount: m.id, flag })
        } else if !vol.read_only && m.effectively_read_only() {
            Some(FsEvidence::ReadOnlyFlip { mount: m.id })
        } else {
            None
        }
    } else {
        None
    };
    let link = facts.link(&vol.nqn);
    let recoverable = if let Some(ns) = replaced_by {
        Some(RecoveryReason::DeviceReplaced {
            old: vol.device,
            new: ns.identity,
        })
    } else if fs.is_some() {
        Some(RecoveryReason::FilesystemFailed)
    } else if mount_missing.is_some() {
        Some(RecoveryReason::MountMissing)
    } else {
        None
    };
    let gate_open = recoverable.is_some()
        && matches!(resolution, Resolution::Present(_))
        && link == Link::Fine
        && storm.is_none();
    Assessment {
        mount_confirmed: vol.mount.is_none() || staging.is_some(),
        storm,
        resolution,
        gone_since,
        replaced_by,
        fs,
        mount_missing,
        link,
        recoverable,
        gate_open,
    }
}

const RUNNING_PODS: &str = "remounting heals the staging path for new pods, but a running \
container keeps its reference to the dead filesystem and must be recreated";

/// The volume's condition kind and message: the highest-priority fault, then what recovery
/// is doing about it.
pub(crate) fn verdict(
    a: &Assessment<'_>,
    vol: &Volume,
    cfg: &MonitorConfig,
) -> (ConditionKind, String) {
    let running = vol
        .recovery
        .as_ref()
        .and_then(RecoveryCycle::running_attempt);
    let (kind, mut message) = if let Some((key, s)) = &a.storm {
        (
            ConditionKind::MountStorm,
            format!(
                "mount storm on {key}: {} mount entries ({}); nothing is mounted for this \
                 volume until it clears",
                s.count, s.message
            ),
        )
    } else if a.gone_since.is_some() {
        (
            ConditionKind::DeviceGone,
            format!(
                "the namespace of {} was removed and nothing replaced it within {:?}; \
                 every read and write through the mount on {} fails until the target is \
                 reachable again",
                vol.nqn, cfg.gone_grace, vol.device
            ),
        )
    } else if let (Some(attempt), Some(c)) = (running, &vol.recovery) {
        (
            ConditionKind::Recovering,
            format!(
                "recovery attempt {attempt} of {} running ({})",
                cfg.max_attempts(),
                describe_reason(&c.reason)
            ),
        )
    } else if let Some(ns) = a.replaced_by {
        (
            ConditionKind::DeviceReplaced,
            format!(
                "{} now resolves to {} ({}), but the volume is mounted from {}, which the \
                 kernel replaced: every read and write through that mount fails; {RUNNING_PODS}",
                vol.nqn, ns.name, ns.identity, vol.device
            ),
        )
    } else if let Some(fs) = &a.fs {
        let what = match fs {
            FsEvidence::Error { dev, errno, count } => {
                format!("the filesystem on {dev} reported {count} error(s) (last errno {errno})")
            }
            FsEvidence::KernelFlag { mount, flag } => {
                format!("the kernel marked the filesystem of staging mount {mount} {flag}")
            }
            FsEvidence::ReadOnlyFlip { mount } => format!(
                "staging mount {mount} turned read-only although the volume was staged \
                 read-write"
            ),
        };
        (
            ConditionKind::FilesystemFailed,
            format!("{what}; {RUNNING_PODS}"),
        )
    } else if let Some(k) = a.mount_missing {
        let device = match a.resolution {
            Resolution::Present(ns) => format!("the device {} is present", ns.identity),
            _ => "the device is not present".to_owned(),
        };
        (
            ConditionKind::MountMissing,
            format!(
                "the staging {k} at {} disappeared without an unstage; {device}",
                vol.staging_path.display()
            ),
        )
    } else if let Link::Reconnecting { controller, state } = &a.link {
        (
            ConditionKind::ControllerReconnecting,
            format!(
                "controller {controller} of {} is {state} and no path is live: I/O waits \
                 until it reconnects",
                vol.nqn
            ),
        )
    } else {
        let on = match vol.mount {
            Some(k) => format!("{k}"),
            None => "raw block".to_owned(),
        };
        (
            ConditionKind::Healthy,
            format!("staged on {} ({on})", vol.device),
        )
    };
    if kind.is_abnormal() && kind != ConditionKind::Recovering {
        if let Some(c) = &vol.recovery {
            match &c.phase {
                Phase::Waiting { attempt, .. } => message.push_str(&format!(
                    "; recovery attempt {attempt} of {} pending",
                    cfg.max_attempts()
                )),
                Phase::Requested { attempt } => message.push_str(&format!(
                    "; recovery attempt {attempt} of {} requested",
                    cfg.max_attempts()
                )),
                Phase::Exhausted { attempts, error } => message.push_str(&format!(
                    "; automatic recovery gave up after {attempts} attempt(s): {error}"
                )),
                Phase::Running { .. } | Phase::Verifying { .. } => {}
            }
        }
    }
    (kind, message)
}

pub(crate) fn describe_reason(r: &RecoveryReason) -> String {
    match r {
        RecoveryReason::DeviceReplaced { old, new } => {
            format!("device replaced: {old} -> {new}")
        }
        RecoveryReason::FilesystemFailed => "filesystem failed".to_owned(),
        RecoveryReason::MountMissing => "staging mount missing".to_owned(),
    }
}

/// A publish's condition: whether it comes from the publish itself (`own`), which is worth
/// its own Kubernetes Event, or is inherited from the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishVerdict {
    pub kind: ConditionKind,
    pub message: String,
    pub own: bool,
}

/// Priority: a pod holding a replaced filesystem (permanent for that pod) > its bind mount
/// gone > the volume's condition > a read-only flip of the bind mount alone.
pub(crate) fn publish_verdict(
    facts: &Facts,
    volume: Option<&VolumeCondition>,
    p: &Publish,
) -> PublishVerdict {
    let target = p.target.display();
    if let Some(s) = &p.stale {
        return PublishVerdict {
            kind: s.kind,
            message: format!(
                "the volume was recovered onto {}, but the pod using {target} was \
                 running before: it still holds the dead filesystem of {}. No remount can reach \
                 into a running container; recreate the pod. This stays abnormal until this \
                 target is unpublished.",
                s.new_device, s.old_device
            ),
            own: false,
        };
    }
    let bind = p.mount.as_ref().and_then(|k| facts.mount(k));
    if let Some(k) = p.mount {
        if p.mount_tracked && bind.is_none() {
            return PublishVerdict {
                kind: ConditionKind::MountMissing,
                message: format!(
                    "the bind {k} at {target} disappeared without an unpublish: the pod's \
                     path no longer shows the volume"
                ),
                own: true,
            };
        }
    }
    if let Some(v) = volume.filter(|v| v.is_abnormal()) {
        return PublishVerdict {
            kind: v.kind,
            message: v.message.clone(),
            own: false,
        };
    }
    if let Some(m) = bind.filter(|m| !p.read_only && m.effectively_read_only()) {
        return PublishVerdict {
            kind: ConditionKind::FilesystemFailed,
            message: format!(
                "the bind mount {} at {target} turned read-only although it was published \
                 read-write",
                m.id
            ),
            own: true,
        };
    }
    PublishVerdict {
        kind: ConditionKind::Healthy,
        message: format!("published at {target}"),
        own: false,
    }
}
