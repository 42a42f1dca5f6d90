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

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;
use rds_hostops::deadline::run_blocking;
use rds_hostops::inuse::{Holder, HostRoots};
use rds_hostops::mknod::NodeState;
use rds_hostops::mount::{BindOptions, UnmountError, UnmountPolicy};
use rds_mounts::mountinfo::{MountInfo, ParsedTable};
use rds_types::{BlockIdentity, DevNum, Nqn};

use crate::error::NodeError;
use crate::guard::VolumeGuard;
use crate::node::devices::WaitError;
use crate::node::{NodeService, NsDevice, Volumes};
use crate::record::{DeviceRecord, VolumeRecord};
use crate::validate::{Access, FsType, VolumeId};

/// How long recovery waits for a CSI call on the same volume to finish.
pub const DEFAULT_GUARD_WAIT: Duration = Duration::from_secs(30);
/// Slack added to the host-steps deadline for mount-table reads and in-use scans.
const HOST_SLACK: Duration = Duration::from_secs(30);

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
            mount: crate::defaults::MOUNT_TIMEOUT,
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
            .guards
            .acquire(volume_id.as_str(), "recovery", self.cfg.guard_wait)
            .await
            .map_err(|source| RecoveryError::Busy {
                volume_id: volume_id.clone(),
                source,
            })?;
        let rec = self
            .svc
            .volumes
            .get(volume_id)
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
        if reason == RecoveryKind::FilesystemFailed && new.identity.same_device(&old) {
            return Err(RecoveryError::DeviceUnchanged {
                volume_id: volume_id.clone(),
                dev: old,
            });
        }
        tracing::info!(old = %old, new = %new.identity, device = new.name, "recovering onto device");

        let exec = Exec {
            dev_path: self.svc.dev_path(&new.name),
            rec,
            old,
            new,
            reason,
            roots: self.svc.cfg.roots.clone(),
            work_dir: self.cfg.work_dir.clone(),
            unmount_wait: self.cfg.unmount_wait,
            volumes: self.svc.volumes.clone(),
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
        let ns = match self.svc.devices.resolve(nqn) {
            Some(ns) => ns,
            None => {
                tracing::info!(%nqn, "no device for the namespace: reconnecting");
                self.svc
                    .connect_and_wait(&rec.target)
                    .await
                    .map_err(|source| RecoveryError::Connect {
                        volume_id: rec.volume_id.clone(),
                        nqn: nqn.clone(),
                        source,
                    })?
            }
        };
        if reason == RecoveryKind::DeviceReplaced && ns.identity.same_device(&old) {
            // The model may still hold the dead incarnation until its remove event arrives.
            return self
                .svc
                .devices
                .wait_for_replacement(nqn, old, self.svc.cfg.deadlines.device_wait)
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

/// Everything the host steps need, moved into the blocking closure.
struct Exec {
    rec: VolumeRecord,
    old: BlockIdentity,
    new: NsDevice,
    dev_path: PathBuf,
    reason: RecoveryKind,
    roots: HostRoots,
    work_dir: PathBuf,
    unmount_wait: Duration,
    volumes: Volumes,
}

/// What to do with the mount found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// A mount of the new device: already done.
    Current,
    /// A mount of the dead device: to be replaced.
    Stale,
    /// Somebody else's: never touched.
    Foreign,
}

impl Exec {
    fn volume_id(&self) -> VolumeId {
        self.rec.volume_id.clone()
    }

    /// Deadline of the host steps: every mount and unmount they may do, plus scans.
    fn budget(&self, mount: Duration) -> Duration {
        let n = u32::try_from(self.rec.publishes.len()).unwrap_or(u32::MAX / 4);
        let per_step = mount + self.unmount_wait;
        per_step.saturating_mul(n.saturating_add(3)) + HOST_SLACK
    }

    /// The same number came back with a new diskseq: mounts of that number cannot be told
    /// apart by the mount table, so every one found before our own is stale.
    fn numbers_reused(&self) -> bool {
        self.new.identity.dev == self.old.dev
    }

    fn classify(&self, dev: DevNum) -> Layer {
        if dev == self.new.identity.dev
            && !(self.numbers_reused() && self.reason == RecoveryKind::DeviceReplaced)
        {
            Layer::Current
        } else if dev == self.old.dev {
            Layer::Stale
        } else {
            Layer::Foreign
        }
    }

    fn policy(&self) -> UnmountPolicy {
        UnmountPolicy {
            wait: self.unmount_wait,
            allow_lazy_when_unused: true,
        }
    }

    fn host(
        &self,
        step: &'static str,
        state: impl Into<String>,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> RecoveryError {
        RecoveryError::Host {
            volume_id: self.volume_id(),
            step,
            state: state.into(),
            source: e.into(),
        }
    }

    fn table(&self) -> std::io::Result<ParsedTable> {
        let t = rds_mounts::mountinfo::read_mountinfo(&self.roots.proc, "self")?;
        if t.errors.is_empty() {
            Ok(t)
        } else {
            // A table we could not fully parse cannot prove anything is absent.
            Err(std::io::Error::other(format!(
                "{} unparsable mountinfo lines",
                t.errors.len()
            )))
        }
    }

    /// Steps 4 to 8, blocking. Owns the guard, so it is released only when everything is done,
    /// whatever happened to the caller.
    fn run(self, guard: VolumeGuard) -> Result<RecoveryOutcome, RecoveryError> {
        let r = self.run_inner();
        match &r {
            Ok(o) => tracing::info!(volume.id = guard.volume_id(), new = %o.new_device,
                republished = o.republished.len(), stranded = ?o.stranded, dropped = ?o.dropped, "volume recovered"),
            Err(e) => tracing::warn!(volume.id = guard.volume_id(), error = %e, "recovery failed"),
        }
        drop(guard);
        r
    }

    fn run_inner(mut self) -> Result<RecoveryOutcome, RecoveryError> {
        crate::node::check_device_node(&self.dev_path, self.new.identity.dev).map_err(
            |source| RecoveryError::DeviceNode {
                volume_id: self.volume_id(),
                source,
            },
        )?;
        let mut out = RecoveryOutcome {
            new_device: self.new.identity,
            new_mount: None,
            republished: Vec::new(),
            stranded: Vec::new(),
            renoded: Vec::new(),
            dropped: Vec::new(),
        };
        match self.rec.access.clone() {
            Access::Mount { fs_type, flags } => {
                out.new_mount = Some(self.restage(fs_type, &flags)?);
                self.rebind(&flags, &mut out);
            }
            Access::Block => self.renode(&mut out),
        }
        // Step 8: the record names the new incarnation and forgets targets that are gone.
        self.rec.device = DeviceRecord::new(&self.new.name, self.new.identity, self.new.nsid);
        self.rec
            .publishes
            .retain(|p| !out.dropped.contains(&p.target));
        self.volumes
            .save(self.rec.clone())
            .map_err(|source| RecoveryError::Record {
                volume_id: self.volume_id(),
                new: self.new.identity,
                source,
            })?;
        Ok(out)
    }

    /// Steps 4 to 6: a verified mount of the new device at the staging path.
    fn restage(&self, fs: FsType, flags: &[String]) -> Result<(u32, DevNum), RecoveryError> {
        let staging = self.rec.staging_path.as_path().to_owned();
        let table = self
            .table()
            .map_err(|e| self.host("reading the mount table", "nothing was changed", e))?;
        let stale = match top(&table, &staging).map(|m| (m.dev, self.classify(m.dev))) {
            Some((dev, Layer::Current)) => {
                tracing::info!(staging = %staging.display(), %dev, "staging path already on the new device");
                let m = top(&table, &staging).map(|m| (m.id, m.dev));
                return m.ok_or_else(|| {
                    self.host(
                        "reading the mount table",
                        "nothing was changed",
                        "staging mount vanished",
                    )
                });
            }
            Some((_, Layer::Stale)) => true,
            Some((found, Layer::Foreign)) => {
                return Err(RecoveryError::ForeignMount {
                    volume_id: self.volume_id(),
                    staging,
                    found,
                    recorded: self.old.dev,
                    new: self.new.identity.dev,
                })
            }
            None => false,
        };

        // Step 4: mount and verify on a private temporary path.
        let work = ensure_private_dir(&self.work_dir, &self.roots.proc)
            .map_err(|e| self.host("preparing the recovery directory", "nothing was changed", e))?;
        let temp = work.join(self.rec.volume_id.as_str());
        self.clear_temp(&temp)?;
        std::fs::create_dir_all(&temp).map_err(|e| {
            self.host(
                "creating the temporary mount point",
                "nothing was changed",
                e,
            )
        })?;
        let (ms, data) = crate::node::options::fs_mount_options(flags, self.rec.read_only);
        let new_fs = |why: String| RecoveryError::NewFilesystem {
            volume_id: self.volume_id(),
            device: self.dev_path.clone(),
            fs_type: fs.as_str(),
            why,
        };
        if let Err(e) = rds_hostops::mount::mount_fs(
            &self.dev_path,
            &temp,
            fs.as_str(),
            ms,
            (!data.is_empty()).then_some(data.as_str()),
        ) {
            let _ = std::fs::remove_dir(&temp);
            return Err(new_fs(error_chain(&e)));
        }
        if let Err(why) = self.verify(&temp, fs) {
            self.undo_temp(&temp);
            return Err(new_fs(why));
        }

        // Step 5: the stale staging mount goes away only now, and only safely.
        if stale {
            self.remove_stale_staging(&staging, &temp)?;
        }

        // Step 6: move the verified mount into place.
        if let Err(e) = std::fs::create_dir_all(&staging) {
            self.undo_temp(&temp);
            return Err(self.host(
                "creating the staging path",
                "the staging path is not mounted (it was not before recovery either); the new mount was undone",
                e,
            ));
        }
        if let Err(e) = rds_hostops::mount::move_mount(&temp, &staging) {
            return Err(self.move_failed(&staging, &temp, stale, e));
        }
        let _ = std::fs::remove_dir(&temp);
        let table = self.table().map_err(|e| {
            self.host(
                "reading the mount table",
                "the new mount was moved to the staging path",
                e,
            )
        })?;
        match top(&table, &staging) {
            Some(m) if m.dev == self.new.identity.dev => {
                tracing::info!(staging = %staging.display(), mount_id = m.id, dev = %m.dev, "new staging mount in place");
                Ok((m.id, m.dev))
            }
            other => Err(self.host(
                "verifying the moved mount",
                "the staging path does not show the new device",
                format!("found {:?}", other.map(|m| m.dev)),
            )),
        }
    }

    /// statvfs answers and the table shows the new device with the recorded type at `temp`.
    fn verify(&self, temp: &Path, fs: FsType) -> Result<(), String> {
        rds_hostops::statfs::volume_stats(temp).map_err(|e| error_chain(&e))?;
        let table = self.table().map_err(|e| e.to_string())?;
        match top(&table, temp) {
            Some(m) if m.dev == self.new.identity.dev && m.fs_type == fs.as_str() => Ok(()),
            Some(m) => Err(format!(
                "the temporary mount shows device {} with {}, expected {} with {}",
                m.dev,
                m.fs_type,
                self.new.identity.dev,
                fs.as_str()
            )),
            None => Err("the temporary mount is not in the mount table".into()),
        }
    }

    /// A temporary mount left by an interrupted earlier attempt is ours: take it away.
    fn clear_temp(&self, temp: &Path) -> Result<(), RecoveryError> {
        for _ in 0..crate::defaults::MAX_UNMOUNT_LAYERS {
            let table = self
                .table()
                .map_err(|e| self.host("reading the mount table", "nothing was changed", e))?;
            if top(&table, temp).is_none() {
                return Ok(());
            }
            match rds_hostops::mount::unmount(temp, self.policy(), &self.roots) {
                Ok(_) | Err(UnmountError::NotMounted { .. }) => {}
                Err(e) => {
                    return Err(self.host(
                        "removing a left-over temporary mount",
                        "nothing else was changed",
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Undo step 4 (best effort; a failure is logged: the temporary mount is ours and
    /// harmless, and the next attempt clears it).
    fn undo_temp(&self, temp: &Path) {
        match rds_hostops::mount::unmount(temp, self.policy(), &self.roots) {
            Ok(_) | Err(UnmountError::NotMounted { .. }) => {
                let _ = std::fs::remove_dir(temp);
            }
            Err(e) => {
                tracing::error!(temp = %temp.display(), error = %e, "could not undo the temporary mount")
            }
        }
    }

    /// Step 5: unmount every stale layer at the staging path (normally one).
    fn remove_stale_staging(&self, staging: &Path, temp: &Path) -> Result<(), RecoveryError> {
        for _ in 0..crate::defaults::MAX_UNMOUNT_LAYERS {
            let table = match self.table() {
                Ok(t) => t,
                Err(e) => {
                    self.undo_temp(temp);
                    return Err(self.host(
                        "reading the mount table",
                        "the staging mount was left as it was; the new mount was undone",
                        e,
                    ));
                }
            };
            match top(&table, staging).map(|m| (m.dev, self.classify(m.dev))) {
                None => return Ok(()),
                Some((_, Layer::Stale)) => {}
                Some((found, _)) => {
                    // A lower layer that is not the dead device: stop peeling, leave it.
                    self.undo_temp(temp);
                    return Err(RecoveryError::ForeignMount {
                        volume_id: self.volume_id(),
                        staging: staging.to_owned(),
                        found,
                        recorded: self.old.dev,
                        new: self.new.identity.dev,
                    });
                }
            }
            match rds_hostops::mount::unmount(staging, self.policy(), &self.roots) {
                Ok(how) => {
                    tracing::info!(staging = %staging.display(), ?how, "stale staging mount removed")
                }
                Err(UnmountError::NotMounted { .. }) => {}
                Err(UnmountError::InUse { holders, .. }) => {
                    self.undo_temp(temp);
                    return Err(RecoveryError::InUse {
                        volume_id: self.volume_id(),
                        staging: staging.to_owned(),
                        holders,
                    });
                }
                Err(UnmountError::UsageUnknown { reason, .. }) => {
                    self.undo_temp(temp);
                    return Err(RecoveryError::UsageUnknown {
                        volume_id: self.volume_id(),
                        staging: staging.to_owned(),
                        reason,
                    });
                }
                Err(UnmountError::Busy { usage, .. }) => {
                    self.undo_temp(temp);
                    return Err(RecoveryError::UsageUnknown {
                        volume_id: self.volume_id(),
                        staging: staging.to_owned(),
                        reason: format!("{usage:?}"),
                    });
                }
                Err(e) => {
                    self.undo_temp(temp);
                    return Err(self.host(
                        "unmounting the stale staging mount",
                        "the staging mount was left as it was; the new mount was undone",
                        e,
                    ));
                }
            }
        }
        self.undo_temp(temp);
        Err(self.host(
            "unmounting the stale staging mount",
            "the staging path still has stale layers; the new mount was undone",
            format!(
                "more than {} layers (mount storm?)",
                crate::defaults::MAX_UNMOUNT_LAYERS
            ),
        ))
    }

    /// Step 6 failed after the stale staging mount was removed: never leave the staging path
    /// empty under publishes. First a bind of the new mount, then a bind of the old
    /// filesystem from one of its publish targets; the error says which state remains.
    fn move_failed(
        &self,
        staging: &Path,
        temp: &Path,
        stale: bool,
        e: rds_hostops::mount::MountError,
    ) -> RecoveryError {
        let opts = BindOptions::read_only(self.rec.read_only);
        let state = match rds_hostops::mount::bind(temp, staging, opts) {
            Ok(()) => {
                self.undo_temp(temp);
                "the new filesystem was bind-mounted at the staging path instead; the publish targets were not re-bound".to_owned()
            }
            Err(bind_err) => {
                self.undo_temp(temp);
                let restored = stale
                    && self.rec.publishes.iter().any(|p| {
                        self.table().ok().is_some_and(|t| {
                            top(&t, &p.target).is_some_and(|m| m.dev == self.old.dev)
                        }) && rds_hostops::mount::bind(&p.target, staging, opts).is_ok()
                    });
                if restored {
                    format!("binding the new mount failed too ({bind_err}); the old filesystem was bound back at the staging path from a publish target")
                } else if stale {
                    format!("binding the new mount failed too ({bind_err}) and the old filesystem could not be bound back: the staging path is NOT mounted")
                } else {
                    format!("binding the new mount failed too ({bind_err}); the staging path is not mounted (it was not before recovery either)")
                }
            }
        };
        self.host("moving the new mount to the staging path", state, e)
    }

    /// Step 7 (filesystem): every publish target gets a bind of the new staging mount.
    fn rebind(&self, flags: &[String], out: &mut RecoveryOutcome) {
        let staging = self.rec.staging_path.as_path();
        let noexec = flags.iter().any(|f| f == "noexec");
        'targets: for p in &self.rec.publishes {
            let t = &p.target;
            if std::fs::symlink_metadata(t).is_err() {
                tracing::info!(target = %t.display(), "publish target is gone: dropping it");
                out.dropped.push(t.clone());
                continue;
            }
            for _ in 0..crate::defaults::MAX_UNMOUNT_LAYERS {
                let table = match self.table() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(target = %t.display(), error = %e, "cannot read the mount table: target left as it is");
                        out.republished.push((t.clone(), None));
                        continue 'targets;
                    }
                };
                match top(&table, t).map(|m| (m.id, m.dev, self.classify(m.dev))) {
                    None => break,
                    Some((id, dev, Layer::Current)) => {
                        out.republished.push((t.clone(), Some((id, dev))));
                        continue 'targets;
                    }
                    Some((_, dev, Layer::Foreign)) => {
                        tracing::warn!(target = %t.display(), %dev, "target holds a mount that is not this volume's: left alone");
                        out.republished.push((t.clone(), None));
                        continue 'targets;
                    }
                    Some((_, _, Layer::Stale)) => {}
                }
                match rds_hostops::mount::unmount(t, self.policy(), &self.roots) {
                    Ok(_) | Err(UnmountError::NotMounted { .. }) => {}
                    Err(
                        e @ (UnmountError::InUse { .. }
                        | UnmountError::UsageUnknown { .. }
                        | UnmountError::Busy { .. }),
                    ) => {
                        // A running pod (or something we cannot rule out) holds the dead
                        // filesystem: never detach under it.
                        tracing::warn!(target = %t.display(), error = %e, "stale bind in use: left in place (pod stranded on the dead filesystem)");
                        out.stranded.push(t.clone());
                        out.republished.push((t.clone(), None));
                        continue 'targets;
                    }
                    Err(e) => {
                        tracing::warn!(target = %t.display(), error = %e, "unmounting the stale bind failed: left in place");
                        out.republished.push((t.clone(), None));
                        continue 'targets;
                    }
                }
            }
            match bind_target(staging, t, p.read_only, noexec, flags) {
                Ok(()) => {
                    let id = self
                        .table()
                        .ok()
                        .and_then(|tb| top(&tb, t).map(|m| (m.id, m.dev)));
                    out.republished.push((t.clone(), id));
                }
                Err(e) => {
                    tracing::warn!(target = %t.display(), error = %e, "re-binding the target failed");
                    out.republished.push((t.clone(), None));
                }
            }
        }
    }

    /// Step 7 (block): each target's node carries the new number.
    fn renode(&self, out: &mut RecoveryOutcome) {
        let new = self.new.identity.dev;
        for p in &self.rec.publishes {
            let t = &p.target;
            let mode = if p.read_only { 0o440 } else { 0o660 };
            let state = match rds_hostops::mknod::check_block_node(t, new) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target = %t.display(), error = %e, "cannot inspect the target: left alone");
                    continue;
                }
            };
            let r = match state {
                NodeState::Matches => Ok(()),
                NodeState::Different(d) if d == self.old.dev => {
                    rds_hostops::mknod::remove_block_node(t, d)
                        .and_then(|_| rds_hostops::mknod::create_block_node(t, new, mode))
                }
                NodeState::Different(d) => {
                    tracing::warn!(target = %t.display(), found = %d, "target is a node of another device: left alone");
                    continue;
                }
                NodeState::NotABlockDevice => {
                    tracing::warn!(target = %t.display(), "target is not a block node: left alone");
                    continue;
                }
                NodeState::Missing => {
                    if t.parent().is_some_and(|d| d.is_dir()) {
                        rds_hostops::mknod::create_block_node(t, new, mode)
                    } else {
                        tracing::info!(target = %t.display(), "publish target is gone: dropping it");
                        out.dropped.push(t.clone());
                        continue;
                    }
                }
            };
            match r {
                Ok(()) => out.renoded.push(t.clone()),
                Err(e) => {
                    tracing::warn!(target = %t.display(), error = %e, "re-creating the block node failed")
                }
            }
        }
    }
}

/// Bind the staging mount on a target, as NodePublishVolume does.
fn bind_target(
    staging: &Path,
    t: &Path,
    read_only: bool,
    noexec: bool,
    flags: &[String],
) -> Result<(), rds_hostops::mount::MountError> {
    rds_hostops::mount::bind(staging, t, BindOptions::read_only(read_only))?;
    if noexec {
        let extra = crate::node::options::bind_flags(flags, read_only)
            | MsFlags::MS_BIND
            | MsFlags::MS_NOEXEC;
        rds_hostops::mount::remount(t, extra, None)?;
    }
    Ok(())
}

/// The visible (topmost) mount at `path`.
fn top<'a>(table: &'a ParsedTable, path: &Path) -> Option<&'a MountInfo> {
    table.entries.iter().rev().find(|m| m.mount_point == path)
}

/// Create `dir` and make sure a mount under it can be moved (its mount must not be shared):
/// if the mount containing it is shared, bind `dir` onto itself and make that private.
/// Returns the canonical path (the form the mount table uses).
fn ensure_private_dir(dir: &Path, proc: &Path) -> Result<PathBuf, std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let table = rds_mounts::mountinfo::read_mountinfo(proc, "self")?;
    let containing = table
        .entries
        .iter()
        .filter(|m| dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .ok_or_else(|| std::io::Error::other(format!("no mount contains {}", dir.display())))?;
    if containing.shared_group().is_none() {
        return Ok(dir);
    }
    if containing.mount_point != dir {
        nix::mount::mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
    }
    nix::mount::mount(
        None::<&str>,
        &dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(std::io::Error::from)?;
    tracing::info!(dir = %dir.display(), "recovery directory made a private mount (MS_MOVE needs an unshared parent)");
    Ok(dir)
}

/// An error with its sources, on one line.
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
