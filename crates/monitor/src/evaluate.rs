//! Pure evaluation: a volume's (and a publish's) condition from the facts, nothing else.
//!
//! Used both by the incremental machine (for the volumes an event touches) and by
//! [`crate::recompute`] (for all of them), so the two cannot disagree by construction of the
//! rules, only by the machine forgetting to re-evaluate a volume.
//!
//! Every message starts with one sentence that says what is wrong and what to do (under 120
//! characters: kubelet shows it in pod Events); the details (devices, diskseq, attempt counts)
//! follow it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rds_types::{BlockIdentity, ControllerState, DevNum, Message, Nqn};

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

/// The namespace behind the NQN is another volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch<'f> {
    pub what: &'static str,
    pub recorded: String,
    pub found: String,
    pub ns: &'f NamespaceFacts,
}

/// Every fault that holds for a volume, independent of its recovery cycle.
#[derive(Debug, Clone)]
pub(crate) struct Assessment<'f> {
    pub storm: Option<(StormKey, &'f Storm)>,
    pub resolution: Resolution<'f>,
    /// The namespace was removed at this time and has not come back.
    pub removed_at: Option<Timestamp>,
    /// ... and the gone-grace has passed.
    pub gone: bool,
    pub mismatch: Option<Mismatch<'f>>,
    pub replaced_by: Option<&'f NamespaceFacts>,
    pub fs: Option<FsEvidence>,
    /// The staging mount is missing: the recorded one left the table, or a filesystem volume
    /// was re-adopted without one.
    pub mount_missing: Option<Option<MountKey>>,
    pub link: Link<'f>,
    /// Requests in flight and none completed since then, for at least the stall period.
    pub stalled_since: Option<Timestamp>,
    /// The fault recovery would fix, most specific first.
    pub recoverable: Option<RecoveryReason>,
    /// Recovery can act now.
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
    let removed_at = match resolution {
        Resolution::Removed { at } => Some(at),
        _ => None,
    };
    let gone = removed_at.is_some_and(|at| now >= at.saturating_add(cfg.gone_grace));
    let present = match resolution {
        Resolution::Present(ns) => Some(ns),
        _ => None,
    };
    let mismatch = present.and_then(|ns| {
        vol.ids
            .conflict(&ns.ids)
            .map(|(what, recorded, found)| Mismatch {
                what,
                recorded: recorded.to_owned(),
                found: found.to_owned(),
                ns,
            })
    });
    let replaced_by =
        present.filter(|ns| mismatch.is_none() && !ns.identity.same_device(&vol.device));
    let staging = vol.mount.as_ref().and_then(|k| facts.mount(k));
    let mount_missing = if !vol.is_filesystem() || !vol.mount_tracked {
        None
    } else {
        match vol.mount {
            Some(k) if staging.is_none() => Some(Some(k)),
            Some(_) => None,
            None => Some(None),
        }
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
    let controllers_gone = facts.controllers_gone(&vol.nqn);
    let stalled_since = facts
        .io
        .get(&vol.device.dev)
        .and_then(|t| t.stalled_since())
        .filter(|since| now >= since.saturating_add(cfg.io_stall_after));
    let recoverable = if mismatch.is_some() {
        // Never mounted as this volume: a human must look at the target.
        None
    } else if removed_at.is_some()
        && (controllers_gone || (gone && matches!(link, Link::Fine | Link::Degraded { .. })))
    {
        // Nothing brings the namespace back by itself: no controller is left (connect again),
        // or a live one has gone without it past the grace (its scan dropped it: rescan).
        Some(RecoveryReason::Reconnect)
    } else if let Some(ns) = replaced_by {
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
    let gate_open = match &recoverable {
        None => false,
        Some(_) if storm.is_some() => false,
        Some(RecoveryReason::Reconnect) => true,
        Some(_) => {
            present.is_some() && !matches!(link, Link::Reconnecting { .. } | Link::Down { .. })
        }
    };
    Assessment {
        mount_confirmed: !vol.is_filesystem() || staging.is_some(),
        storm,
        resolution,
        removed_at,
        gone,
        mismatch,
        replaced_by,
        fs,
        mount_missing,
        link,
        stalled_since,
        recoverable,
        gate_open,
    }
}

fn secs(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
}

/// What a volume's condition message says: the fault with the facts it names, then what
/// recovery is doing about it. Decided with the condition, rendered when first read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeMessage {
    what: What,
    recovery: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    Storm(String),
    Gone {
        nqn: Nqn,
        device: BlockIdentity,
        grace: Duration,
    },
    Mismatch {
        nqn: Nqn,
        what: &'static str,
        recorded: String,
        found: String,
        name: String,
        identity: BlockIdentity,
    },
    Recovering {
        attempt: u32,
        of: u32,
        reason: RecoveryReason,
    },
    Replaced {
        nqn: Nqn,
        name: String,
        identity: BlockIdentity,
        device: BlockIdentity,
    },
    Removed {
        nqn: Nqn,
        device: BlockIdentity,
        grace: Duration,
    },
    Filesystem(FsEvidence),
    MountMissing {
        which: Option<MountKey>,
        staging: PathBuf,
        present: Option<BlockIdentity>,
    },
    Reconnecting {
        nqn: Nqn,
        controller: String,
        state: ControllerState,
    },
    Deleting {
        nqn: Nqn,
        controller: String,
        state: ControllerState,
    },
    Stalled {
        device: BlockIdentity,
        after: Duration,
    },
    Healthy {
        paths: String,
        device: BlockIdentity,
        on: On,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Mount(MountKey),
    NoStagingMount,
    RawBlock,
}

/// The recovery cycle behind an abnormal condition: attempt `attempt` of `of` (`None`: a
/// reconnect, retried without end).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    Pending {
        attempt: u32,
        of: Option<u32>,
        after: Duration,
    },
    Running {
        attempt: u32,
        of: Option<u32>,
    },
    Exhausted {
        attempts: u32,
        error: String,
    },
}

impl fmt::Display for VolumeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            // The storm's own message names the device or path (once).
            What::Storm(m) => write!(
                f,
                "A mount storm: nothing is remounted until it clears. {m}"
            )?,
            What::Gone { nqn, device, grace } => write!(
                f,
                "The volume's NVMe namespace is gone: I/O fails until the target is back and the \
                 plugin reconnects. {nqn} was removed and did not come back within {}; the mount \
                 is on {device}.",
                secs(*grace)
            )?,
            What::Mismatch {
                nqn,
                what,
                recorded,
                found,
                name,
                identity,
            } => write!(
                f,
                "Another namespace is behind this volume's NQN; it is never mounted as this \
                 volume: check the target. {nqn} {what}: recorded {recorded}, found {found} on \
                 {name} ({identity})."
            )?,
            What::Recovering {
                attempt,
                of,
                reason,
            } => write!(
                f,
                "The plugin is remounting the volume's staging path; new pods get it when it \
                 is done. Attempt {attempt} of {of} ({}).",
                describe_reason(reason)
            )?,
            What::Replaced {
                nqn,
                name,
                identity,
                device,
            } => write!(
                f,
                "The volume's device was replaced after a reconnect: the plugin remounts it, \
                 running pods must be recreated. {nqn} now resolves to {name} ({identity}); the \
                 mount is on {device}, which the kernel replaced: every read and write through \
                 it fails; a running container keeps its reference to the dead filesystem and \
                 must be recreated."
            )?,
            What::Removed { nqn, device, grace } => write!(
                f,
                "The volume's NVMe namespace was removed: I/O fails while the plugin waits for \
                 it to come back. {nqn} was removed (the mount is on {device}); waiting up to {} \
                 for it to come back.",
                secs(*grace)
            )?,
            What::Filesystem(fs) => {
                f.write_str(
                    "The volume's filesystem failed: its pods see I/O errors and must be \
                     recreated once it is healed. ",
                )?;
                match fs {
                    FsEvidence::Error { dev, errno, count } => write!(
                        f,
                        "The filesystem on {dev} reported {count} error(s) (last errno {errno})."
                    )?,
                    FsEvidence::KernelFlag { mount, flag } => write!(
                        f,
                        "The kernel marked the filesystem of staging mount {mount} {flag}."
                    )?,
                    FsEvidence::ReadOnlyFlip { mount } => write!(
                        f,
                        "Staging mount {mount} turned read-only although the volume was staged \
                         read-write."
                    )?,
                }
                f.write_str(
                    " Remounting heals the staging path for new pods; a running container keeps \
                     its reference to the dead filesystem and must be recreated.",
                )?
            }
            What::MountMissing {
                which,
                staging,
                present,
            } => {
                f.write_str(
                    "The volume's staging mount disappeared without an unstage: the plugin \
                     mounts it again. ",
                )?;
                match which {
                    Some(k) => write!(f, "{k}")?,
                    None => f.write_str("the staging mount")?,
                }
                write!(f, " at {}; ", staging.display())?;
                match present {
                    Some(id) => write!(f, "the device {id} is present.")?,
                    None => f.write_str("the device is not present.")?,
                }
            }
            What::Reconnecting {
                nqn,
                controller,
                state,
            } => write!(
                f,
                "The NVMe connection to the target is lost: I/O waits while the kernel \
                 reconnects. Controller {controller} of {nqn} is {state} and no path is live."
            )?,
            What::Deleting {
                nqn,
                controller,
                state,
            } => write!(
                f,
                "The kernel is deleting the volume's NVMe controller: I/O fails; the plugin \
                 connects again once it is gone. Controller {controller} of {nqn} is {state} and \
                 no path is live (ctrl_loss_tmo ran out, or it was disconnected)."
            )?,
            What::Stalled { device, after } => write!(
                f,
                "I/O to the volume's device is stalled: requests are in flight and none \
                 completes; check the target. {device}: no request completed for {} or more.",
                secs(*after)
            )?,
            What::Healthy { paths, device, on } => {
                write!(f, "Healthy{paths}. Staged on {device} (")?;
                match on {
                    On::Mount(k) => write!(f, "{k}")?,
                    On::NoStagingMount => f.write_str("no staging mount")?,
                    On::RawBlock => f.write_str("raw block")?,
                }
                f.write_str(").")?
            }
        }
        let attempt_of = |f: &mut fmt::Formatter<'_>, attempt: u32, of: Option<u32>| match of {
            None => write!(f, "Reconnect attempt {attempt}"),
            Some(of) => write!(f, "Recovery attempt {attempt} of {of}"),
        };
        match &self.recovery {
            None => Ok(()),
            Some(Progress::Pending { attempt, of, after }) => {
                f.write_str(" ")?;
                attempt_of(f, *attempt, *of)?;
                write!(f, " pending (after {}).", secs(*after))
            }
            Some(Progress::Running { attempt, of }) => {
                f.write_str(" ")?;
                attempt_of(f, *attempt, *of)?;
                f.write_str(" running.")
            }
            Some(Progress::Exhausted { attempts, error }) => write!(
                f,
                " Automatic recovery gave up after {attempts} attempt(s): {error}."
            ),
        }
    }
}

/// The volume's condition kind and message: the highest-priority fault, then what recovery
/// is doing about it.
pub(crate) fn verdict(
    a: &Assessment<'_>,
    vol: &Volume,
    cfg: &MonitorConfig,
) -> (ConditionKind, Message) {
    let running = vol
        .recovery
        .as_ref()
        .filter(|c| !c.reason.is_unbounded())
        .and_then(RecoveryCycle::running_attempt);
    let (kind, what) = if let Some((_, s)) = &a.storm {
        (ConditionKind::MountStorm, What::Storm(s.message.clone()))
    } else if a.gone {
        (
            ConditionKind::DeviceGone,
            What::Gone {
                nqn: vol.nqn.clone(),
                device: vol.device,
                grace: cfg.gone_grace,
            },
        )
    } else if let Some(m) = &a.mismatch {
        (
            ConditionKind::NamespaceMismatch,
            What::Mismatch {
                nqn: vol.nqn.clone(),
                what: m.what,
                recorded: m.recorded.clone(),
                found: m.found.clone(),
                name: m.ns.name.clone(),
                identity: m.ns.identity,
            },
        )
    } else if let (Some(attempt), Some(c)) = (running, &vol.recovery) {
        (
            ConditionKind::Recovering,
            What::Recovering {
                attempt,
                of: cfg.attempts_for(&c.reason),
                reason: c.reason.clone(),
            },
        )
    } else if let Some(ns) = a.replaced_by {
        (
            ConditionKind::DeviceReplaced,
            What::Replaced {
                nqn: vol.nqn.clone(),
                name: ns.name.clone(),
                identity: ns.identity,
                device: vol.device,
            },
        )
    } else if a.removed_at.is_some() {
        (
            ConditionKind::DeviceRemoved,
            What::Removed {
                nqn: vol.nqn.clone(),
                device: vol.device,
                grace: cfg.gone_grace,
            },
        )
    } else if let Some(fs) = &a.fs {
        (
            ConditionKind::FilesystemFailed,
            What::Filesystem(fs.clone()),
        )
    } else if let Some(which) = a.mount_missing {
        (
            ConditionKind::MountMissing,
            What::MountMissing {
                which,
                staging: vol.staging_path.clone(),
                present: a.resolved(),
            },
        )
    } else if let Link::Reconnecting { controller, state } = &a.link {
        (
            ConditionKind::ControllerReconnecting,
            What::Reconnecting {
                nqn: vol.nqn.clone(),
                controller: (*controller).to_owned(),
                state: (*state).clone(),
            },
        )
    } else if let Link::Down { controller, state } = &a.link {
        (
            ConditionKind::DeviceRemoved,
            What::Deleting {
                nqn: vol.nqn.clone(),
                controller: (*controller).to_owned(),
                state: (*state).clone(),
            },
        )
    } else if a.stalled_since.is_some() {
        (
            ConditionKind::IoStalled,
            What::Stalled {
                device: vol.device,
                after: cfg.io_stall_after,
            },
        )
    } else {
        let on = match vol.mount {
            Some(k) => On::Mount(k),
            None if vol.is_filesystem() => On::NoStagingMount,
            None => On::RawBlock,
        };
        (
            ConditionKind::Healthy,
            What::Healthy {
                paths: paths_note(&a.link),
                device: vol.device,
                on,
            },
        )
    };
    let recovery = vol
        .recovery
        .as_ref()
        .filter(|_| kind.is_abnormal() && kind != ConditionKind::Recovering)
        .and_then(|c| {
            let of = (!c.reason.is_unbounded()).then(|| cfg.attempts_for(&c.reason));
            match &c.phase {
                Phase::Waiting { attempt, .. } => Some(Progress::Pending {
                    attempt: *attempt,
                    of,
                    after: cfg.delay_before(&c.reason, *attempt),
                }),
                Phase::Requested { attempt } | Phase::Running { attempt } => {
                    Some(Progress::Running {
                        attempt: *attempt,
                        of,
                    })
                }
                Phase::Exhausted { attempts, error } => Some(Progress::Exhausted {
                    attempts: *attempts,
                    error: error.clone(),
                }),
                Phase::Verifying { .. } => None,
            }
        });
    (kind, Message::new(VolumeMessage { what, recovery }))
}

/// `, on 1 of 2 paths (nvme0 down)` while native multipath carries the I/O on fewer paths
/// than it has; empty otherwise.
pub(crate) fn paths_note(link: &Link<'_>) -> String {
    match link {
        Link::Degraded { down, paths } => format!(
            ", on {} of {paths} paths ({} down)",
            paths - down.len(),
            down.join(", ")
        ),
        _ => String::new(),
    }
}

pub(crate) fn describe_reason(r: &RecoveryReason) -> String {
    match r {
        RecoveryReason::DeviceReplaced { old, new } => {
            format!("device replaced: {old} -> {new}")
        }
        RecoveryReason::FilesystemFailed => "filesystem failed".to_owned(),
        RecoveryReason::MountMissing => "staging mount missing".to_owned(),
        RecoveryReason::Reconnect => "namespace gone: connecting again".to_owned(),
    }
}

/// A publish's condition: whether it comes from the publish itself (`own`), which is worth
/// its own Kubernetes Event, or is inherited from the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishVerdict {
    pub kind: ConditionKind,
    pub message: Message,
    pub own: bool,
}

/// What a publish's own condition message says (an inherited one is the volume's message).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublishMessage {
    Stale {
        target: PathBuf,
        old: BlockIdentity,
        new: BlockIdentity,
    },
    BindMissing {
        target: PathBuf,
        bind: MountKey,
    },
    ReadOnly {
        target: PathBuf,
        mount: u64,
    },
    Healthy {
        target: PathBuf,
        paths: String,
    },
}

impl fmt::Display for PublishMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale { target, old, new } => write!(
                f,
                "This pod still holds the volume's old, dead filesystem: recreate the pod to get \
                 the healed volume. The volume was recovered onto {new}, but the pod using {} \
                 was running before and holds the filesystem of {old}; no remount can reach into \
                 a running container. This stays abnormal until the target is unpublished.",
                target.display()
            ),
            Self::BindMissing { target, bind } => write!(
                f,
                "The pod's bind mount of the volume disappeared: the pod no longer sees it; \
                 recreate the pod. The bind {bind} at {} left the table without an unpublish.",
                target.display()
            ),
            Self::ReadOnly { target, mount } => write!(
                f,
                "The pod's mount of the volume turned read-only although it was published \
                 read-write; recreate the pod. Bind mount {mount} at {}.",
                target.display()
            ),
            Self::Healthy { target, paths } => {
                write!(f, "Healthy{paths}. Published at {}.", target.display())
            }
        }
    }
}

/// Priority: a pod holding a replaced filesystem (permanent for that pod) > its bind mount
/// gone > the volume's condition > a read-only flip of the bind mount alone. While the
/// volume is recovering, the plugin's own re-binds are not faults.
pub(crate) fn publish_verdict(
    facts: &Facts,
    volume: Option<&VolumeCondition>,
    paths: &str,
    recovering: bool,
    p: &Publish,
) -> PublishVerdict {
    let says = |kind, own, m: PublishMessage| PublishVerdict {
        kind,
        message: Message::new(m),
        own,
    };
    if let Some(s) = &p.stale {
        return says(
            s.kind,
            false,
            PublishMessage::Stale {
                target: p.target.clone(),
                old: s.old_device,
                new: s.new_device,
            },
        );
    }
    let bind = p.mount.as_ref().and_then(|k| facts.mount(k));
    if let Some(k) = p.mount {
        if p.mount_tracked && bind.is_none() && !recovering {
            return says(
                ConditionKind::MountMissing,
                true,
                PublishMessage::BindMissing {
                    target: p.target.clone(),
                    bind: k,
                },
            );
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
        return says(
            ConditionKind::FilesystemFailed,
            true,
            PublishMessage::ReadOnly {
                target: p.target.clone(),
                mount: m.id,
            },
        );
    }
    says(
        ConditionKind::Healthy,
        false,
        PublishMessage::Healthy {
            target: p.target.clone(),
            paths: paths.to_owned(),
        },
    )
}

/// The first sentence of a condition message: up to its first full stop followed by a space
/// (or the whole message).
pub fn headline(message: &str) -> &str {
    match message.find(". ") {
        Some(i) => &message[..=i],
        None => message,
    }
}
