//! The recovery executor: bring a staged volume back onto its (new) device without ever
//! leaving it worse than it was (incident 9).
//!
//! A staged volume needs recovery when its NQN now resolves to another incarnation of the
//! namespace (new `major:minor` or `diskseq`), when its filesystem died, or when its staging
//! mount vanished. The monitor decides *when* (and retries with backoff); this module does the
//! *how*, in this order:
//!
//! 1. take the volume's guard (the one the CSI handlers use), waiting up to
//!    [`RecoveryConfig::guard_wait`]; a volume unstaged meanwhile is [`RecoveryError::NotStaged`]
//!    and nothing is touched;
//! 2. if the NQN resolves to no device, reconnect the controller (bounded);
//! 3. wait for the namespace through the device watcher (woken by uevents, no sleep loop); for
//!    [`RecoveryKind::DeviceReplaced`] it must be another incarnation than the recorded one;
//!    the device node under the dev root must carry its number;
//! 4. filesystem volumes: mount the new device on a temporary path under the plugin's own
//!    state directory (never formatting: a device without the recorded filesystem is an error)
//!    and verify it (statvfs answers, the mount table shows the new device with the recorded
//!    filesystem type);
//! 5. only then take the stale staging mount away: a normal unmount retried up to
//!    [`RecoveryConfig::unmount_wait`], a lazy detach only when `rds_hostops` proves the device
//!    unused; in use or unknown undoes step 4 and fails naming the holders, leaving the stale
//!    staging mount in place;
//! 6. move the verified mount to the staging path (`MS_MOVE`);
//! 7. re-bind every publish target kubelet still has; a stale bind held by a running pod is
//!    left alone and reported as stranded (a running container keeps its reference to the
//!    dead superblock: see DESIGN.md, "Recovery, honestly"); a target that is gone is dropped
//!    from the record;
//! 8. save the record with the new device identity, then release the guard.
//!
//! Block volumes have no staging mount: each publish target's device node is re-created with
//! the new number (a node carrying the old number is replaced; anything else is left alone).
//!
//! **Cancellation.** Steps 4 to 8 run in one closure on the blocking pool that owns the volume
//! guard. Dropping the [`Recovery::recover`] future (or its deadline expiring) cannot
//! interrupt a half-moved mount: the closure runs to its end and only then releases the
//! guard, so no CSI call on the volume can interleave with it either.
//!
//! **Propagation.** `MS_MOVE` refuses to move a mount whose parent mount is shared. The
//! temporary mount lives under `<state-dir>/recovery`; when that directory sits on a shared
//! mount (systemd makes `/` shared), it is bind-mounted onto itself once and made private, and
//! left so. The destination, kubelet's staging path, may be shared (the DaemonSet mounts the
//! kubelet directory with Bidirectional propagation): moving into a shared mount is allowed
//! and propagates the new staging mount to the host, which is what kubelet needs.

mod exec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_hostops::deadline::run_blocking;
use rds_hostops::inuse::Holder;
use rds_types::{BlockIdentity, DevNum, Nqn};

use exec::Exec;
use rds_node::devices::WaitError;
use rds_node::error::NodeError;
use rds_node::record::VolumeRecord;
use rds_node::validate::VolumeId;
use rds_node::{NodeService, NsDevice};

/// How long recovery waits for a CSI call on the same volume to finish.
pub const DEFAULT_GUARD_WAIT: Duration = Duration::from_secs(30);

/// Why the monitor asked for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryKind {
    /// The NQN resolves (or will, after a reconnect) to another incarnation of the namespace.
    DeviceReplaced,
    /// The filesystem failed (`FAN_FS_ERROR`, EIO). Only a replaced device can heal it: the
    /// same device would give back the same dead superblock while any mount of it remains.
    FilesystemFailed,
    /// The staging mount vanished while the device is fine.
    MountMissing,
    /// The controller is gone (the kernel deleted it, or it was disconnected): connect it
    /// again with the recorded parameters, then heal as for a replaced device.
    Reconnect,
}

impl RecoveryKind {
    pub fn of(reason: &rds_monitor::RecoveryReason) -> Self {
        match reason {
            rds_monitor::RecoveryReason::DeviceReplaced { .. } => Self::DeviceReplaced,
            rds_monitor::RecoveryReason::FilesystemFailed => Self::FilesystemFailed,
            rds_monitor::RecoveryReason::MountMissing => Self::MountMissing,
            rds_monitor::RecoveryReason::Reconnect => Self::Reconnect,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// Wait at most this long for the volume's guard (a CSI call in progress).
    pub guard_wait: Duration,
    /// A normal unmount of a stale mount is retried this long before the in-use check.
    pub unmount_wait: Duration,
    /// Bound of one mount/bind/move step (the host-steps deadline is derived from it).
    pub mount: Duration,
    /// Temporary mounts go to `<work_dir>/<volume-id>`: the plugin's own directory, never
    /// kubelet's.
    pub work_dir: PathBuf,
}

impl RecoveryConfig {
    /// Defaults (guard 30 s, unmount 10 s, mount 30 s) with temporary mounts under
    /// `<state_dir>/recovery`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            guard_wait: DEFAULT_GUARD_WAIT,
            unmount_wait: rds_hostops::mount::DEFAULT_UNMOUNT_WAIT,
            mount: rds_node::defaults::MOUNT_TIMEOUT,
            work_dir: state_dir.join("recovery"),
        }
    }
}

/// What a successful recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryOutcome {
    /// The device the volume now lives on (also in its record).
    pub new_device: BlockIdentity,
    /// The new staging mount: mountinfo id and device (None for block volumes).
    pub new_mount: Option<(u32, DevNum)>,
    /// Every filesystem publish target still present, with its bind of the new mount
    /// (mountinfo id and device), or None when it could not be re-bound (see `stranded`).
    pub republished: Vec<(PathBuf, Option<(u32, DevNum)>)>,
    /// Targets whose pods still hold the dead filesystem: their stale bind is in use, so it was
    /// left in place and the new bind could not go there. Those pods must be restarted.
    pub stranded: Vec<PathBuf>,
    /// Block volumes: targets whose device node now carries the new number.
    pub renoded: Vec<PathBuf>,
    /// Targets that no longer exist (kubelet removed them); dropped from the record.
    pub dropped: Vec<PathBuf>,
    /// Targets whose pods were running when the volume moved to another device incarnation:
    /// they hold the old superblock. Marked so in the record.
    pub stale: Vec<PathBuf>,
}

/// Each message says what happened and in which state the volume was left.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("volume {volume_id} is not staged on this node (unstaged before recovery could start); nothing was touched")]
    NotStaged { volume_id: VolumeId },
    #[error("volume {volume_id} stayed busy: {source}; nothing was touched")]
    Busy {
        volume_id: VolumeId,
        #[source]
        source: NodeError,
    },
    #[error("the record of volume {volume_id} is unusable ({why}); nothing was touched")]
    BadRecord { volume_id: VolumeId, why: String },
    #[error("reconnecting volume {volume_id} ({nqn}) failed: {source}; its staging mount and publishes were left as they were")]
    Connect {
        volume_id: VolumeId,
        nqn: Nqn,
        #[source]
        source: NodeError,
    },
    #[error("volume {volume_id}'s namespace still resolves to the dead device {old}: {source}; its staging mount and publishes were left as they were")]
    NotReplaced {
        volume_id: VolumeId,
        old: BlockIdentity,
        #[source]
        source: WaitError,
    },
    #[error("the namespace now behind the NQN is not volume {volume_id}'s ({detail}); it is never mounted as this volume and nothing was changed")]
    NamespaceMismatch { volume_id: VolumeId, detail: String },
    #[error("the filesystem of volume {volume_id} failed but its device {dev} was not replaced: mounting it again would give back the same dead superblock while any mount of it remains; nothing was changed (its pods must release it, or the device be replaced)")]
    DeviceUnchanged {
        volume_id: VolumeId,
        dev: BlockIdentity,
    },
    #[error(
        "the node of volume {volume_id}'s new device is not usable: {source}; nothing was changed"
    )]
    DeviceNode {
        volume_id: VolumeId,
        #[source]
        source: NodeError,
    },
    #[error("the new device {device} of volume {volume_id} did not give a healthy {fs_type} mount ({why}); recovery never formats; the temporary mount was undone and the staging mount left as it was")]
    NewFilesystem {
        volume_id: VolumeId,
        device: PathBuf,
        fs_type: &'static str,
        why: String,
    },
    #[error("staging path {staging} of volume {volume_id} holds device {found}, neither the recorded device {recorded} nor the new one {new}; it was left untouched and nothing was changed")]
    ForeignMount {
        volume_id: VolumeId,
        staging: PathBuf,
        found: DevNum,
        recorded: DevNum,
        new: DevNum,
    },
    #[error("the stale staging mount {staging} of volume {volume_id} is in use by {}; it was left mounted, the new mount was undone, the publishes were not touched", holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    InUse {
        volume_id: VolumeId,
        staging: PathBuf,
        holders: Vec<Holder>,
    },
    #[error("the stale staging mount {staging} of volume {volume_id} stayed busy and whether it is in use cannot be known ({reason}); it was left mounted, the new mount was undone, the publishes were not touched")]
    UsageUnknown {
        volume_id: VolumeId,
        staging: PathBuf,
        reason: String,
    },
    #[error("{step} failed while recovering volume {volume_id}: {source}; {state}")]
    Host {
        volume_id: VolumeId,
        step: &'static str,
        /// The state the volume was left in.
        state: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the host steps of volume {volume_id}'s recovery did not finish within {}; they go on in the background holding the volume's guard, so no CSI call on it can interleave", humantime::format_duration(*.deadline))]
    TimedOut {
        volume_id: VolumeId,
        deadline: Duration,
    },
    #[error("volume {volume_id} was moved onto device {new} (staging mount and binds in place) but saving its record failed: {source}; the record still names the old device")]
    Record {
        volume_id: VolumeId,
        new: BlockIdentity,
        #[source]
        source: NodeError,
    },
}

/// The recovery executor of one node. Cheap to clone.
#[derive(Clone)]
pub struct Recovery {
    svc: NodeService,
    cfg: RecoveryConfig,
}

impl Recovery {
    pub fn new(svc: NodeService, cfg: RecoveryConfig) -> Self {
        Self { svc, cfg }
    }

    pub fn config(&self) -> &RecoveryConfig {
        &self.cfg
    }

    /// Recover one staged volume (see the module doc for the steps and their guarantees).
    #[tracing::instrument(skip_all, fields(volume.id = %volume_id, reason = ?reason))]
    pub async fn recover(
        &self,
        volume_id: &VolumeId,
        reason: RecoveryKind,
    ) -> Result<RecoveryOutcome, RecoveryError> {
        let guard = self
            .svc
            .acquire_guard(volume_id, "recovery", self.cfg.guard_wait)
            .await
            .map_err(|source| RecoveryError::Busy {
                volume_id: volume_id.clone(),
                source,
            })?;
        let rec = self
            .svc
            .record(volume_id)
            .ok_or_else(|| RecoveryError::NotStaged {
                volume_id: volume_id.clone(),
            })?;
        let bad = |why: String| RecoveryError::BadRecord {
            volume_id: volume_id.clone(),
            why,
        };
        let old = rec
            .device
            .identity()
            .ok_or_else(|| bad(format!("device number {:?}", rec.device.dev)))?;
        self.svc
            .check_managed(&rec.target.nqn)
            .map_err(|e| bad(e.to_string()))?;

        let new = self.find_device(&rec, old, reason).await?;
        if let Some((what, recorded, found)) = rec.device.ids.conflict(&new.ids) {
            return Err(RecoveryError::NamespaceMismatch {
                volume_id: volume_id.clone(),
                detail: format!(
                    "{}: {what} recorded {recorded}, found {found} on {} ({})",
                    rec.target.nqn, new.name, new.identity
                ),
            });
        }
        if reason == RecoveryKind::FilesystemFailed && new.identity.same_device(&old) {
            return Err(RecoveryError::DeviceUnchanged {
                volume_id: volume_id.clone(),
                dev: old,
            });
        }
        tracing::info!(old = %old, new = %new.identity, device = new.name, "recovering onto device");

        let exec = Exec {
            stale_kind: if reason == RecoveryKind::FilesystemFailed {
                rds_types::ConditionKind::FilesystemFailed
            } else {
                rds_types::ConditionKind::DeviceReplaced
            },
            dev_path: self.svc.dev_path(&new.name),
            rec,
            old,
            new,
            roots: self.svc.config().roots.clone(),
            work_dir: self.cfg.work_dir.clone(),
            unmount_wait: self.cfg.unmount_wait,
            volumes: self.svc.volumes().clone(),
            kubelet: self.svc.kubelet().clone(),
        };
        let deadline = exec.budget(self.cfg.mount);
        match run_blocking("recovery host steps", deadline, move || exec.run(guard)).await {
            Ok(r) => r,
            Err(_) => Err(RecoveryError::TimedOut {
                volume_id: volume_id.clone(),
                deadline,
            }),
        }
    }

    /// Steps 2 and 3: the device the volume should now live on.
    async fn find_device(
        &self,
        rec: &VolumeRecord,
        old: BlockIdentity,
        reason: RecoveryKind,
    ) -> Result<NsDevice, RecoveryError> {
        let nqn = &rec.target.nqn;
        let ns = match self.svc.resolve(nqn) {
            Some(ns) => ns,
            None => {
                tracing::info!(%nqn, "no device for the namespace: reconnecting");
                self.svc
                    .connect(&rec.target)
                    .await
                    .map_err(|source| RecoveryError::Connect {
                        volume_id: rec.volume_id.clone(),
                        nqn: nqn.clone(),
                        source,
                    })?
            }
        };
        let replaced = matches!(
            reason,
            RecoveryKind::DeviceReplaced | RecoveryKind::Reconnect
        );
        if replaced && ns.identity.same_device(&old) {
            // The model may still hold the dead incarnation until its remove event arrives.
            return self
                .svc
                .wait_for_replacement(nqn, old)
                .await
                .map_err(|source| RecoveryError::NotReplaced {
                    volume_id: rec.volume_id.clone(),
                    old,
                    source,
                });
        }
        Ok(ns)
    }
}

/// The executor as the monitor shell drives it.
#[tonic::async_trait]
impl crate::monitor::RecoveryRunner for Recovery {
    async fn recover(
        &self,
        volume_id: &VolumeId,
        reason: &rds_monitor::RecoveryReason,
    ) -> Result<rds_monitor::RecoveryReport, crate::monitor::RecoveryFailure> {
        let key = |(id, dev): (u32, DevNum)| rds_types::MountKey {
            id: u64::from(id),
            dev,
        };
        match Recovery::recover(self, volume_id, RecoveryKind::of(reason)).await {
            Ok(o) => Ok(rds_monitor::RecoveryReport {
                new_device: o.new_device,
                new_mount: o.new_mount.map(key),
                republished: o
                    .republished
                    .into_iter()
                    .map(|(target, m)| rds_monitor::PublishedMount {
                        target,
                        mount: m.map(key),
                    })
                    .collect(),
                stale_targets: o.stale,
            }),
            Err(e) => {
                // Retrying cannot change these: the volume is gone, or the device is not one we
                // may mount without a human.
                let final_ = matches!(
                    e,
                    RecoveryError::NotStaged { .. }
                        | RecoveryError::BadRecord { .. }
                        | RecoveryError::DeviceUnchanged { .. }
                        | RecoveryError::NewFilesystem { .. }
                        | RecoveryError::ForeignMount { .. }
                        | RecoveryError::NamespaceMismatch { .. }
                );
                Err(crate::monitor::RecoveryFailure {
                    error: rds_types::error_chain(&e),
                    final_,
                })
            }
        }
    }
}
