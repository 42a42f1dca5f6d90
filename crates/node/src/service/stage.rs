//! NodeStageVolume and NodeUnstageVolume.

use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rds_hostops::mount::{UnmountError, UnmountPolicy};
use rds_hostops::probe::{Content, FsKind};
use rds_types::DevNum;

use super::{NodeService, NsDevice};
use crate::confine::PathKind;
use crate::error::NodeError;
use crate::guard::GuardKey;
use crate::record::{DeviceRecord, VolumeRecord};
use crate::validate::{AbsPath, Access, FsType, StageArgs, VolumeId};

pub(crate) fn fs_kind(t: FsType) -> FsKind {
    match t {
        FsType::Ext4 => FsKind::Ext4,
        FsType::Xfs => FsKind::Xfs,
    }
}

impl NodeService {
    #[tracing::instrument(skip_all, fields(volume.id = %args.volume_id, nqn = %args.target.nqn))]
    pub async fn stage(&self, args: StageArgs) -> Result<(), NodeError> {
        self.kubelet
            .check("staging_target_path", PathKind::Staging, &args.staging_path)?;
        self.check_managed(&args.target.nqn)?;
        // The staging path and the NQN are claimed with the volume: no other volume's call
        // can use either while this one runs.
        let _guard = self.guards.try_acquire_all(
            args.volume_id.as_str(),
            &[
                GuardKey::Path(args.staging_path.as_path().to_owned()),
                GuardKey::Nqn(args.target.nqn.as_str().to_owned()),
            ],
            "NodeStageVolume",
        )?;
        let view = self.mount_view().await?;

        if let Some(rec) = self.volumes.get(&args.volume_id) {
            if rec.access.is_block() != args.access.is_block() || rec.target.nqn != args.target.nqn
            {
                return Err(NodeError::AlreadyExists(format!(
                    "volume {} is already staged with a different capability or NQN",
                    args.volume_id
                )));
            }
            if rec.staging_path != args.staging_path {
                if let Some(id) = rec.device.identity() {
                    if !rec.access.is_block()
                        && view
                            .top_at(rec.staging_path.as_path())
                            .is_some_and(|m| m.dev == id.dev)
                    {
                        return Err(NodeError::FailedPrecondition(format!(
                            "volume {} is already staged at {}; unstage it before staging at {}",
                            args.volume_id, rec.staging_path, args.staging_path
                        )));
                    }
                }
            }
        }
        // Another volume recorded at this staging path, or on this subsystem (its device
        // would be mounted twice under two volume IDs)?
        for other in self
            .volumes
            .all()
            .into_iter()
            .filter(|r| r.volume_id != args.volume_id)
        {
            if other.staging_path == args.staging_path {
                return Err(NodeError::AlreadyExists(format!(
                    "staging path {} belongs to volume {}",
                    args.staging_path, other.volume_id
                )));
            }
            if other.target.nqn == args.target.nqn {
                return Err(NodeError::AlreadyExists(format!(
                    "subsystem {} is already staged as volume {}",
                    args.target.nqn, other.volume_id
                )));
            }
        }

        let ns = match self.connect_and_wait(&args.target).await {
            Ok(ns) => ns,
            Err(e) => {
                if matches!(
                    e,
                    NodeError::Unavailable(_) | NodeError::DeadlineExceeded(_)
                ) {
                    self.observer
                        .connect_failed(&args.volume_id, &args.target.nqn, &e.to_string())
                        .await;
                }
                return Err(e);
            }
        };
        let dev_path = self.dev_path(&ns.name);
        check_device_node(&dev_path, ns.identity.dev)?;
        if !args.read_only {
            let p = dev_path.clone();
            let ro = self
                .blocking("BLKROGET", self.cfg.deadlines.stats, move || {
                    rds_hostops::is_read_only(&p)
                })
                .await?
                .map_err(|e| {
                    NodeError::Unavailable(format!(
                        "cannot tell whether {} is writable: {e}",
                        dev_path.display()
                    ))
                })?;
            if ro {
                return Err(NodeError::FailedPrecondition(format!(
                    "device {} ({}) is read-only (the target exports it so); stage the volume read-only",
                    dev_path.display(),
                    ns.identity
                )));
            }
        }

        let mut mounted_here = false;
        let mut mount_key = None;
        if let Access::Mount { fs_type, flags } = &args.access {
            match view.top_at(args.staging_path.as_path()) {
                Some(m) if m.dev == ns.identity.dev => {
                    mount_key = Some(rds_types::MountKey {
                        id: u64::from(m.id),
                        dev: m.dev,
                    });
                    if m.is_read_only() != args.read_only {
                        return Err(NodeError::AlreadyExists(format!(
                            "{} is staged {}, the request asks {}",
                            args.staging_path,
                            if m.is_read_only() { "read-only" } else { "read-write" },
                            if args.read_only { "read-only" } else { "read-write" }
                        )));
                    }
                    if m.fs_type != fs_type.as_str() {
                        return Err(NodeError::AlreadyExists(format!(
                            "{} is staged as {}, not {}",
                            args.staging_path,
                            m.fs_type,
                            fs_type.as_str()
                        )));
                    }
                    tracing::info!(staging = %args.staging_path, "already staged on this device");
                }
                Some(m) => {
                    return Err(NodeError::AlreadyExists(format!(
                        "staging path {} already holds a mount of device {} ({}), not this volume's device {}",
                        args.staging_path, m.dev, m.fs_type, ns.identity
                    )))
                }
                None => {
                    self.prepare_filesystem(&dev_path, *fs_type, args.read_only)
                        .await?;
                    mount_key = self.mount_staging(&args, &dev_path, *fs_type, flags).await?;
                    mounted_here = true;
                }
            }
        }

        let rec = VolumeRecord {
            volume_id: args.volume_id.clone(),
            target: args.target.clone(),
            staging_path: args.staging_path.clone(),
            access: args.access.clone(),
            read_only: args.read_only,
            device: DeviceRecord::new(&ns.name, ns.identity, ns.nsid, ns.ids.clone()),
            publishes: self
                .volumes
                .get(&args.volume_id)
                .map(|r| r.publishes)
                .unwrap_or_default(),
            staged_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if let Err(e) = self.save_record(rec.clone()).await {
            // Nothing half-done: without its record a staged volume could not be recovered.
            if mounted_here {
                let _ = self.unmount_path(&args.staging_path, ns.identity.dev).await;
            }
            return Err(e);
        }
        self.observer.staged(&rec, mount_key).await;
        tracing::info!(dev = %ns.identity, device = %ns.name, "volume staged");
        Ok(())
    }

    /// Prove the device readable; format only when it is proven empty.
    async fn prepare_filesystem(
        &self,
        dev_path: &std::path::Path,
        fs: FsType,
        read_only: bool,
    ) -> Result<(), NodeError> {
        let p = dev_path.to_owned();
        let content = self
            .blocking(
                "probing device content",
                self.cfg.deadlines.probe,
                move || rds_hostops::probe::probe_content(&p),
            )
            .await?
            .map_err(|e| NodeError::Unavailable(format!("{e}; refusing to format or mount it")))?;
        match content {
            Content::Empty(_) if read_only => Err(NodeError::FailedPrecondition(format!(
                "{} holds no filesystem and the volume is read-only: a read-only volume is never formatted",
                dev_path.display()
            ))),
            Content::Empty(permit) => {
                tracing::info!(device = %dev_path.display(), fs = fs.as_str(), "device proven empty: creating the filesystem");
                let p = dev_path.to_owned();
                let kind = fs_kind(fs);
                let deadline = self.cfg.deadlines.mkfs;
                self.blocking("mkfs", deadline + std::time::Duration::from_secs(5), move || {
                    rds_hostops::probe::format(&p, kind, permit, deadline)
                })
                .await?
                .map_err(|e| NodeError::internal(format!("creating {} on {}", fs.as_str(), dev_path.display()), e))
            }
            Content::Filesystem { fs_type, .. } if fs_type == fs.as_str() => Ok(()),
            Content::Filesystem { fs_type, .. } => Err(NodeError::FailedPrecondition(format!(
                "{} holds a {fs_type} filesystem but the volume asks for {}; refusing to reformat",
                dev_path.display(),
                fs.as_str()
            ))),
            Content::Unrecognised(what) => Err(NodeError::FailedPrecondition(format!(
                "{} is not empty ({}) and holds no filesystem this plugin mounts; refusing to format it",
                dev_path.display(),
                what.join(", ")
            ))),
        }
    }

    async fn mount_staging(
        &self,
        args: &StageArgs,
        dev_path: &std::path::Path,
        fs: FsType,
        flags: &[String],
    ) -> Result<Option<rds_types::MountKey>, NodeError> {
        let (ms, mut data) = crate::options::fs_mount_options(flags, args.read_only);
        if args.read_only {
            // Read-only never writes, journal replay included: ext4 skips loading the journal,
            // xfs skips log recovery (both refuse to mount read-write that way).
            let no_replay = match fs {
                FsType::Ext4 => "noload",
                FsType::Xfs => "norecovery",
            };
            if !data.split(',').any(|o| o == no_replay) {
                if !data.is_empty() {
                    data.push(',');
                }
                data.push_str(no_replay);
            }
        }
        let (src, dst) = (dev_path.to_owned(), args.staging_path.as_path().to_owned());
        let kubelet = self.kubelet.clone();
        self.blocking(
            "mounting the staging path",
            self.cfg.deadlines.mount,
            move || {
                let (dir, created) = kubelet.mkdir("staging_target_path", &dst)?;
                let mounted = rds_hostops::mount::mount_fs(
                    &src,
                    &dir.proc_path(),
                    fs.as_str(),
                    ms,
                    (!data.is_empty()).then_some(data.as_str()),
                );
                if let Err(e) = mounted {
                    drop(dir);
                    if created {
                        // Nothing created on the failure path is left behind.
                        if let Ok((parent, name)) = kubelet.parent("staging_target_path", &dst) {
                            let _ = std::fs::remove_dir(parent.child_proc_path(&name));
                        }
                    }
                    return Err(mount_failed(e, &src));
                }
                // The new mount as the kernel identifies it, for the monitor.
                Ok(rds_hostops::mount::mount_key_at(&dst)
                    .map_err(|e| tracing::warn!(path = %dst.display(), error = %e, "cannot read the new mount's id"))
                    .ok())
            },
        )
        .await?
    }

    /// Unmount one layer (of device `dev`) at `path`: normal unmount, waiting; lazy only
    /// when nothing uses it. The path is resolved beneath the kubelet directory without
    /// following a symlink, and the unmount is tracked until its syscall returns, however late.
    pub(crate) async fn unmount_path(&self, path: &AbsPath, dev: DevNum) -> Result<(), NodeError> {
        let p = path.as_path().to_owned();
        let (parent, name) = self.kubelet.parent("path", &p)?;
        let in_flight = self.unmounts.start(dev);
        let roots = self.cfg.roots.clone();
        let policy = UnmountPolicy {
            wait: self.cfg.deadlines.unmount_wait,
            allow_lazy_when_unused: true,
        };
        let deadline = self.cfg.deadlines.unmount_wait + self.cfg.deadlines.mount;
        match self
            .blocking("unmounting", deadline, move || {
                let _in_flight = in_flight;
                rds_hostops::mount::unmount_at(&parent.child_proc_path(&name), &p, policy, &roots)
            })
            .await?
        {
            Ok(_) | Err(UnmountError::NotMounted { .. }) => Ok(()),
            Err(
                e @ (UnmountError::InUse { .. }
                | UnmountError::UsageUnknown { .. }
                | UnmountError::Busy { .. }),
            ) => Err(NodeError::FailedPrecondition(e.to_string())),
            Err(e) => Err(NodeError::internal(format!("unmounting {path}"), e)),
        }
    }

    #[tracing::instrument(skip_all, fields(volume.id = %id))]
    pub async fn unstage(&self, id: VolumeId, staging: AbsPath) -> Result<(), NodeError> {
        self.kubelet
            .check("staging_target_path", PathKind::Staging, &staging)?;
        let _guard = self.guards.try_acquire_all(
            id.as_str(),
            &[GuardKey::Path(staging.as_path().to_owned())],
            "NodeUnstageVolume",
        )?;
        let rec = self.volumes.get(&id);
        if rec.is_none() {
            // Another volume's staging path is never this unknown volume's to unmount.
            if let Some(owner) = self
                .volumes
                .all()
                .into_iter()
                .find(|r| r.staging_path == staging)
            {
                return Err(NodeError::FailedPrecondition(format!(
                    "{staging} is volume {}'s staging path, not volume {id}'s; leaving it",
                    owner.volume_id
                )));
            }
        }
        if let Some(rec) = &rec {
            if rec.staging_path != staging {
                return Err(NodeError::NotFound(format!(
                    "volume {id} is staged at {}, not at {staging}",
                    rec.staging_path
                )));
            }
            self.check_managed(&rec.target.nqn)?;
            // A volume still published (targets that still exist) is not unstaged: its pods
            // would lose their device. Kubelet unpublishes first; anything else is refused
            // before anything is touched.
            let targets: Vec<_> = rec.publishes.iter().map(|p| p.target.clone()).collect();
            let live = self
                .blocking(
                    "checking publish targets",
                    self.cfg.deadlines.stats,
                    move || {
                        targets
                            .into_iter()
                            .filter(|t| std::fs::symlink_metadata(t).is_ok())
                            .collect::<Vec<_>>()
                    },
                )
                .await?;
            if !live.is_empty() {
                return Err(NodeError::FailedPrecondition(format!(
                    "volume {id} is still published at {}; unpublish it first",
                    live.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            // Tell the monitor first: the unmounts below are ours, not a fault.
            self.observer.unstaged(&id).await;
        }
        let r = self.unstage_locked(&id, &staging, rec.clone()).await;
        if let (Err(_), Some(rec)) = (&r, &rec) {
            // Still (partly) staged: the monitor watches it again and judges what is left.
            if self.volumes.get(&id).is_some() {
                let key = self.staging_mount_key(rec).await;
                self.observer.staged(rec, key).await;
            }
        }
        r
    }

    /// The staging mount of `rec` now, if it is on the recorded device.
    async fn staging_mount_key(&self, rec: &VolumeRecord) -> Option<rds_types::MountKey> {
        if rec.access.is_block() {
            return None;
        }
        let dev = rec.device.identity()?.dev;
        let view = self.mount_view().await.ok()?;
        view.top_at(rec.staging_path.as_path())
            .filter(|m| m.dev == dev)
            .map(|m| rds_types::MountKey {
                id: u64::from(m.id),
                dev: m.dev,
            })
    }

    async fn unstage_locked(
        &self,
        id: &VolumeId,
        staging: &AbsPath,
        rec: Option<VolumeRecord>,
    ) -> Result<(), NodeError> {
        let current = rec
            .as_ref()
            .and_then(|r| self.devices.resolve(&r.target.nqn));
        // Ours: the recorded or current device of the volume. Without a record (the plugin
        // stopped between mounting and writing it), a mount of a namespace under the managed
        // prefix at this volume's staging path is ours too, so the volume can still be
        // unstaged; it is not disconnected then (nothing records that we connected it).
        let ours = |dev: DevNum| match &rec {
            Some(r) => {
                r.device.identity().is_some_and(|i| i.dev == dev)
                    || current.as_ref().is_some_and(|c| c.identity.dev == dev)
            }
            None => self.is_managed_device(dev),
        };

        // Peel every layer we placed at the staging path (normally one).
        for _ in 0..crate::defaults::MAX_UNMOUNT_LAYERS {
            let view = self.mount_view().await?;
            let Some(top) = view.top_at(staging.as_path()) else {
                break;
            };
            if !ours(top.dev) {
                return Err(NodeError::FailedPrecondition(format!(
                    "{staging} holds a mount of device {} that this plugin did not stage for volume {id}; leaving it",
                    top.dev
                )));
            }
            self.unmount_path(staging, top.dev).await?;
        }
        let view = self.mount_view().await?;
        if view.top_at(staging.as_path()).is_some() {
            return Err(NodeError::FailedPrecondition(format!(
                "{staging} still has more than {} mounts stacked on it (mount storm?)",
                crate::defaults::MAX_UNMOUNT_LAYERS
            )));
        }

        if let Some(rec) = rec {
            self.disconnect_if_unused(&rec, current.as_ref(), &view)
                .await?;
            self.remove_record(id).await?;
            self.last_usage.forget(id);
            tracing::info!("volume unstaged");
        } else {
            tracing::info!("volume was not staged (nothing recorded, nothing mounted)");
        }
        Ok(())
    }

    /// Disconnect the subsystem only when nothing uses any incarnation of its device and no
    /// other staged volume shares it.
    async fn disconnect_if_unused(
        &self,
        rec: &VolumeRecord,
        current: Option<&NsDevice>,
        view: &rds_mounts::MountView,
    ) -> Result<(), NodeError> {
        if self.volumes.others_on(&rec.volume_id, &rec.target.nqn) {
            tracing::info!("another staged volume uses this subsystem: staying connected");
            return Ok(());
        }
        let devs = rec
            .device
            .identity()
            .map(|i| i.dev)
            .into_iter()
            .chain(current.map(|c| c.identity.dev));
        for dev in devs {
            if let Some(running) = self.unmounts.running_for(dev) {
                return Err(NodeError::FailedPrecondition(format!(
                    "an unmount of device {dev} of volume {} is still running in the kernel ({} so far; its filesystem may still be writing back); not disconnecting",
                    rec.volume_id,
                    humantime::format_duration(Duration::from_secs(running.as_secs()))
                )));
            }
            // A process holding the raw device (or anything stacked on it) keeps it: never
            // cut it off. "Unknown" (no host PID view) is logged; the publish check above
            // already proved kubelet holds no target of this volume.
            let roots = self.cfg.roots.clone();
            let usage = self
                .blocking("checking device use", self.cfg.deadlines.stats, move || {
                    rds_hostops::inuse::in_use(dev, None, &roots)
                })
                .await?;
            match usage {
                rds_hostops::inuse::Usage::InUse(holders) => {
                    return Err(NodeError::FailedPrecondition(format!(
                        "device {dev} of volume {} is in use ({}); not disconnecting",
                        rec.volume_id,
                        holders
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                rds_hostops::inuse::Usage::Unknown(why) => {
                    tracing::warn!(%dev, reason = %why, "whether the device is in use cannot be fully known; no mount or publish uses it")
                }
                rds_hostops::inuse::Usage::NotInUse => {}
            }
            let users: Vec<_> = view.mounts_of(dev).map(|m| m.mount_point.clone()).collect();
            if !users.is_empty() {
                return Err(NodeError::FailedPrecondition(format!(
                    "device {dev} of volume {} is still mounted at {}; not disconnecting",
                    rec.volume_id,
                    users
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        self.disconnect(&rec.target.nqn).await
    }
}

/// The node under the dev root must be the block device the watcher resolved: a stale node
/// left from an earlier incarnation must never be formatted or mounted.
pub fn check_device_node(path: &std::path::Path, expected: DevNum) -> Result<(), NodeError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| {
        NodeError::Unavailable(format!("device node {} is not usable: {e}", path.display()))
    })?;
    if !md.file_type().is_block_device() {
        return Err(NodeError::FailedPrecondition(format!(
            "{} is not a block device",
            path.display()
        )));
    }
    let actual = DevNum::from_dev_t(md.rdev());
    if actual != expected {
        return Err(NodeError::Unavailable(format!(
            "device node {} is {actual}, but the namespace is {expected}; waiting for udev to catch up",
            path.display()
        )));
    }
    Ok(())
}

/// A failed mount: a read-only device refused for writing is the node's state
/// (FailedPrecondition), anything else unexpected (Internal).
fn mount_failed(e: rds_hostops::mount::MountError, dev: &std::path::Path) -> NodeError {
    match e {
        rds_hostops::mount::MountError::Mount {
            errno: nix::errno::Errno::EACCES | nix::errno::Errno::EROFS | nix::errno::Errno::EPERM,
            ..
        } => NodeError::FailedPrecondition(format!(
            "{} cannot be mounted as asked ({e}); is the device read-only?",
            dev.display()
        )),
        e => NodeError::internal("mounting the staging path", e),
    }
}
