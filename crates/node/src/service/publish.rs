//! NodePublishVolume and NodeUnpublishVolume.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rds_hostops::mknod::NodeState;
use rds_hostops::mount::BindOptions;
use rds_types::DevNum;

use super::{exists, NodeService};
use crate::confine::{KubeletDir, PathKind};
use crate::error::NodeError;
use crate::guard::GuardKey;
use crate::record::{PublishEntry, VolumeRecord};
use crate::validate::{AbsPath, Access, PublishArgs, VolumeId};

impl NodeService {
    #[tracing::instrument(skip_all, fields(volume.id = %args.volume_id, target = %args.target_path))]
    pub async fn publish(&self, args: PublishArgs) -> Result<(), NodeError> {
        self.kubelet
            .check("staging_target_path", PathKind::Staging, &args.staging_path)?;
        self.kubelet
            .check("target_path", PathKind::Target, &args.target_path)?;
        // A stale staged volume (replaced device, failed filesystem, missing mount) is
        // recovered by the monitor first; wait for it, bounded, before binding anything.
        let cond = self
            .observer
            .condition(&args.volume_id, args.staging_path.as_path());
        if let Some(cond) = cond.filter(|c| !c.io_safe()) {
            tracing::info!(condition = %cond.kind, message = %cond.message, "volume is stale: waiting for its recovery before publishing");
            let wait = self.cfg.deadlines.publish_recovery;
            let after = self.observer.settle(&args.volume_id, wait).await;
            if let Some(after) = after.filter(|c| c.abnormal()) {
                return Err(NodeError::FailedPrecondition(format!(
                    "volume {} is not healthy and was not recovered within {}: {}: {}",
                    args.volume_id,
                    humantime::format_duration(wait),
                    after.kind,
                    after.message
                )));
            }
        }
        let _guard = self.guards.try_acquire_all(
            args.volume_id.as_str(),
            &[GuardKey::Path(args.target_path.as_path().to_owned())],
            "NodePublishVolume",
        )?;
        if let Some(owner) = self.owner_of_target(&args.target_path) {
            if owner != args.volume_id {
                return Err(NodeError::AlreadyExists(format!(
                    "{} is a publish target of volume {owner}",
                    args.target_path
                )));
            }
        }
        let mut rec = self.volumes.get(&args.volume_id).ok_or_else(|| {
            NodeError::FailedPrecondition(format!(
                "volume {} is not staged on this node",
                args.volume_id
            ))
        })?;
        if rec.staging_path != args.staging_path {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {} is staged at {}, not at {}",
                args.volume_id, rec.staging_path, args.staging_path
            )));
        }
        if rec.access.is_block() != args.access.is_block() {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {} was staged as a {} volume",
                args.volume_id,
                if rec.access.is_block() {
                    "block"
                } else {
                    "filesystem"
                }
            )));
        }
        if rec.read_only && !args.read_only {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {} was staged read-only; it cannot be published read-write",
                args.volume_id
            )));
        }
        let staged = rec.device.identity().ok_or_else(|| {
            NodeError::internal(
                "reading the volume record",
                format!("bad device {:?}", rec.device.dev),
            )
        })?;

        let mut mount_key = None;
        match &args.access {
            Access::Mount { flags, .. } => {
                let view = self.mount_view().await?;
                match view.top_at(rec.staging_path.as_path()) {
                    Some(m) if m.dev == staged.dev => {}
                    Some(m) => {
                        return Err(NodeError::FailedPrecondition(format!(
                            "staging path {} holds device {}, not the staged device {staged}",
                            rec.staging_path, m.dev
                        )))
                    }
                    None => {
                        return Err(NodeError::FailedPrecondition(format!(
                            "the staging mount of volume {} at {} is missing",
                            args.volume_id, rec.staging_path
                        )))
                    }
                }
                if let Some(m) = view.top_at(args.target_path.as_path()) {
                    if m.dev == staged.dev && m.is_read_only() == args.read_only {
                        tracing::info!("already published");
                        let key = rds_types::MountKey {
                            id: u64::from(m.id),
                            dev: m.dev,
                        };
                        return self.remember_publish(&mut rec, &args, Some(key)).await;
                    }
                    return Err(NodeError::AlreadyExists(format!(
                        "{} is already a mount of device {} ({}), incompatible with this publish of {staged} ({})",
                        args.target_path,
                        m.dev,
                        if m.is_read_only() { "ro" } else { "rw" },
                        if args.read_only { "ro" } else { "rw" }
                    )));
                }
                let (src, dst) = (
                    rec.staging_path.as_path().to_owned(),
                    args.target_path.as_path().to_owned(),
                );
                let ro = args.read_only;
                let noexec = flags.iter().any(|f| f == "noexec");
                let kubelet = self.kubelet.clone();
                mount_key = self.blocking(
                    "bind-mounting the target",
                    self.cfg.deadlines.mount,
                    move || {
                        // Both ends resolved beneath the kubelet directory, no symlink
                        // followed; the kernel acts on exactly the directories opened.
                        let from = kubelet.dir("staging_target_path", &src)?;
                        let (to, created) = prepare_dir(&kubelet, &dst)?;
                        let (parent, name) = kubelet.parent("target_path", &dst)?;
                        let new_mount = parent.child_proc_path(&name);
                        let bound = rds_hostops::mount::bind_at(
                            &from.proc_path(),
                            &to.proc_path(),
                            &new_mount,
                            BindOptions::read_only(ro),
                        );
                        drop(to);
                        if let Err(e) = bound {
                            if created {
                                // Nothing created on the failure path is left behind.
                                let _ = std::fs::remove_dir(&new_mount);
                            }
                            return Err(NodeError::internal("bind-mounting the target", e));
                        }
                        let dst = new_mount;
                        if noexec {
                            let flags = crate::options::bind_flags(&["noexec".into()], ro)
                                | nix::mount::MsFlags::MS_BIND
                                | nix::mount::MsFlags::MS_REMOUNT;
                            if let Err(e) = rds_hostops::mount::remount(&dst, flags, None) {
                                // Never leave a bind without the options asked for: a retry
                                // would take it for a finished publish.
                                if let Err(undo) = nix::mount::umount2(&dst, nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
                                    tracing::error!(target = %dst.display(), error = %undo, "undoing the bind after a failed noexec remount");
                                }
                                return Err(NodeError::internal("applying noexec to the target", e));
                            }
                        }
                        // The bind as the kernel identifies it, for the monitor.
                        Ok(rds_hostops::mount::mount_key_at(&dst)
                            .map_err(|e| tracing::warn!(target = %dst.display(), error = %e, "cannot read the bind's mount id"))
                            .ok())
                    },
                )
                .await??;
            }
            Access::Block => {
                // The device number must still be the staged device's: after a reconnect it
                // may belong to another volume.
                let current = self.devices.resolve(&rec.target.nqn).ok_or_else(|| {
                    NodeError::FailedPrecondition(format!(
                        "volume {}'s device is gone (reconnecting?)",
                        args.volume_id
                    ))
                })?;
                if !current.identity.same_device(&staged) {
                    return Err(NodeError::FailedPrecondition(format!(
                        "volume {}'s device changed from {staged} to {} since it was staged; restage it",
                        args.volume_id, current.identity
                    )));
                }
                let view = self.mount_view().await?;
                if view.top_at(args.target_path.as_path()).is_some() {
                    return Err(NodeError::AlreadyExists(format!(
                        "{} is a mount point",
                        args.target_path
                    )));
                }
                // A read-only raw block publish makes the device read-only in the kernel
                // (BLKROSET): a 0440 node alone does not stop root. That needs every publish
                // of it to be read-only.
                let mixed = rec.publishes.iter().find(|p| {
                    p.target != args.target_path.as_path() && p.read_only != args.read_only
                });
                if let Some(other) = mixed {
                    return Err(NodeError::FailedPrecondition(format!(
                        "volume {} is published {} at {}; a raw block volume is published either all read-only (the device is made read-only in the kernel) or all read-write",
                        args.volume_id,
                        if other.read_only { "read-only" } else { "read-write" },
                        other.target.display()
                    )));
                }
                let dev_path = self.dev_path(&current.name);
                // Another read-only publish (or a read-only stage) keeps the device
                // read-only even if this one fails.
                let read_only_kept_by_others = rec.read_only
                    || rec
                        .publishes
                        .iter()
                        .any(|p| p.target != args.target_path.as_path());
                let dst = args.target_path.as_path().to_owned();
                let mode = if args.read_only { 0o440 } else { 0o660 };
                let ro = args.read_only;
                let kubelet = self.kubelet.clone();
                self.blocking(
                    "creating the block device node",
                    self.cfg.deadlines.mount,
                    move || {
                        if ro {
                            rds_hostops::set_read_only(&dev_path, true).map_err(|e| {
                                NodeError::internal(
                                    format!("making {} read-only (BLKROSET)", dev_path.display()),
                                    e,
                                )
                            })?;
                        }
                        let r = publish_block_node(&kubelet, &dst, staged.dev, mode);
                        if r.is_err() && ro && !read_only_kept_by_others {
                            // Nothing half-done: no publish holds the device read-only.
                            if let Err(e) = rds_hostops::set_read_only(&dev_path, false) {
                                tracing::warn!(device = %dev_path.display(), error = %e, "could not make the device writable again");
                            }
                        }
                        r
                    },
                )
                .await??;
            }
        }
        self.remember_publish(&mut rec, &args, mount_key).await?;
        tracing::info!("volume published");
        Ok(())
    }

    async fn remember_publish(
        &self,
        rec: &mut VolumeRecord,
        args: &PublishArgs,
        mount: Option<rds_types::MountKey>,
    ) -> Result<(), NodeError> {
        let target = args.target_path.as_path();
        // One entry per target; an existing one keeps its stale mark (only unpublishing
        // ends the pod that holds a replaced filesystem).
        if !rec.publishes.iter().any(|p| p.target == target) {
            rec.publishes.insert(PublishEntry {
                target: target.to_owned(),
                read_only: args.read_only,
                stale: None,
            });
            self.save_record(rec.clone()).await?;
        }
        self.observer.published(rec, target, mount).await;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(volume.id = %id, target = %target))]
    pub async fn unpublish(&self, id: VolumeId, target: AbsPath) -> Result<(), NodeError> {
        self.kubelet
            .check("target_path", PathKind::Target, &target)?;
        let _guard = self.guards.try_acquire_all(
            id.as_str(),
            &[GuardKey::Path(target.as_path().to_owned())],
            "NodeUnpublishVolume",
        )?;
        if let Some(owner) = self.owner_of_target(&target) {
            if owner != id {
                return Err(NodeError::FailedPrecondition(format!(
                    "{target} is a publish target of volume {owner}, not of volume {id}; leaving it"
                )));
            }
        }
        let rec = self.volumes.get(&id);
        // Tell the monitor first: the unmount below is ours, not a fault.
        self.observer.unpublished(&id, target.as_path()).await;
        let r = self.unpublish_locked(&id, &target, rec.clone()).await;
        if r.is_err() {
            if let Some(rec) = self.volumes.get(&id) {
                if rec.publishes.iter().any(|p| p.target == target.as_path()) {
                    let key = self.mount_view().await.ok().and_then(|v| {
                        v.top_at(target.as_path()).map(|m| rds_types::MountKey {
                            id: u64::from(m.id),
                            dev: m.dev,
                        })
                    });
                    self.observer.published(&rec, target.as_path(), key).await;
                }
            }
        }
        r
    }

    async fn unpublish_locked(
        &self,
        id: &VolumeId,
        target: &AbsPath,
        rec: Option<VolumeRecord>,
    ) -> Result<(), NodeError> {
        let current = rec
            .as_ref()
            .and_then(|r| self.devices.resolve(&r.target.nqn));
        // The devices this target may hold: the staged one, the one the NQN resolves to now,
        // and the old incarnation a stranded pod was left on (its stale mark in the record).
        let mut allowed: Vec<DevNum> = Vec::new();
        if let Some(r) = &rec {
            allowed.extend(r.device.identity().map(|i| i.dev));
            allowed.extend(current.as_ref().map(|c| c.identity.dev));
            allowed.extend(
                r.publishes
                    .iter()
                    .filter(|p| p.target == target.as_path())
                    .filter_map(|p| p.stale.as_ref()?.decode())
                    .map(|(_, old, _)| old.dev),
            );
        }
        // Without a record, only a mount of a namespace under the managed prefix is ours
        // (the plugin stopped between binding and recording); nothing else is touched.
        let ours = |dev: DevNum| match &rec {
            Some(_) => allowed.contains(&dev),
            None => self.is_managed_device(dev),
        };

        for _ in 0..crate::defaults::MAX_UNMOUNT_LAYERS {
            let view = self.mount_view().await?;
            let Some(top) = view.top_at(target.as_path()) else {
                break;
            };
            if !ours(top.dev) {
                return Err(NodeError::FailedPrecondition(format!(
                    "{target} holds a mount of device {} that is not volume {id}'s; leaving it",
                    top.dev
                )));
            }
            self.unmount_path(target, top.dev).await?;
        }

        let view = self.mount_view().await?;
        if view.top_at(target.as_path()).is_some() {
            return Err(NodeError::FailedPrecondition(format!(
                "{target} still has more than {} mounts stacked on it (mount storm?)",
                crate::defaults::MAX_UNMOUNT_LAYERS
            )));
        }
        let Some(mut rec) = rec else {
            // No record: no file, directory or node here is provably this volume's.
            tracing::info!("volume has no record on this node: nothing removed");
            return Ok(());
        };
        let t = target.as_path().to_owned();
        let table = view.clone();
        let nodes = allowed.clone();
        let kubelet = self.kubelet.clone();
        self.blocking("removing the target", self.cfg.deadlines.mount, move || {
            remove_target(&kubelet, &t, &table, &nodes)
        })
        .await??;

        let before = rec.publishes.len();
        rec.publishes.retain(|p| p.target != target.as_path());
        if rec.publishes.len() != before {
            if rec.access.is_block() && rec.publishes.is_empty() && !rec.read_only {
                // The last publish is gone: a device made read-only for read-only publishes
                // is writable again for the next read-write one.
                if let Some(dev) = current.as_ref().map(|c| self.dev_path(&c.name)) {
                    let r = self
                        .blocking("BLKROSET", self.cfg.deadlines.stats, move || {
                            rds_hostops::set_read_only(&dev, false)
                        })
                        .await;
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::warn!(result = ?r, "could not make the device writable again");
                    }
                }
            }
            self.save_record(rec).await?;
        }
        tracing::info!("volume unpublished");
        Ok(())
    }
}

impl NodeService {
    /// The volume that records `target` among its publishes, if any.
    fn owner_of_target(&self, target: &AbsPath) -> Option<VolumeId> {
        self.volumes
            .all()
            .into_iter()
            .find(|r| r.publishes.iter().any(|p| p.target == target.as_path()))
            .map(|r| r.volume_id)
    }
}

/// Create the publish target directory beneath the kubelet directory (never through a
/// symlink); the directory opened, and whether this call created it.
fn prepare_dir(
    kubelet: &KubeletDir,
    dst: &Path,
) -> Result<(rds_hostops::beneath::Handle, bool), NodeError> {
    use rds_hostops::beneath::BeneathError;
    kubelet.root().mkdir_all(dst).map_err(|e| match e {
        BeneathError::NotADirectory { .. } => {
            NodeError::AlreadyExists(format!("{} exists and is not a directory", dst.display()))
        }
        e => crate::confine::refused("target_path", e),
    })
}

/// Make `dst` a block node for `dev`: idempotent when it already is; an empty placeholder
/// (file or directory) is replaced; anything else is left alone. Every step acts through the
/// parent directory opened beneath the kubelet directory, on the last component only.
fn publish_block_node(
    kubelet: &KubeletDir,
    dst: &Path,
    dev: DevNum,
    mode: u32,
) -> Result<(), NodeError> {
    let parent_path = dst.parent().unwrap_or(dst);
    kubelet.mkdir("target_path", parent_path)?;
    let (parent, name) = kubelet.parent("target_path", dst)?;
    let at = parent.child_proc_path(&name);
    let state = rds_hostops::mknod::check_block_node(&at, dev)
        .map_err(|e| NodeError::internal("inspecting the target", e))?;
    match state {
        NodeState::Matches => Ok(()),
        NodeState::Different(other) => Err(NodeError::AlreadyExists(format!(
            "{} is a block node for {other}, not for this volume's device {dev}",
            dst.display()
        ))),
        NodeState::NotABlockDevice => {
            let md = std::fs::symlink_metadata(&at)
                .map_err(|e| NodeError::internal("inspecting the target", e))?;
            let removed = if md.is_file() && md.len() == 0 {
                std::fs::remove_file(&at)
            } else if md.is_dir() {
                std::fs::remove_dir(&at)
            } else {
                return Err(NodeError::AlreadyExists(format!(
                    "{} exists and is not an empty placeholder",
                    dst.display()
                )));
            };
            removed.map_err(|e| {
                NodeError::AlreadyExists(format!(
                    "{} exists and could not be replaced: {e}",
                    dst.display()
                ))
            })?;
            create_node(&at, dev, mode)
        }
        NodeState::Missing => create_node(&at, dev, mode),
    }
}

fn create_node(at: &Path, dev: DevNum, mode: u32) -> Result<(), NodeError> {
    rds_hostops::mknod::create_block_node(at, dev, mode)
        .map_err(|e| NodeError::internal("creating the block node", e))
}

/// Remove the target once it is no longer a mount point: an empty directory, an empty
/// placeholder file, or a block node of this volume's device (`nodes`). Never recursive,
/// never through a symlink.
fn remove_target(
    kubelet: &KubeletDir,
    t: &Path,
    table: &rds_mounts::MountView,
    nodes: &[DevNum],
) -> Result<(), NodeError> {
    let (parent, name) = match kubelet.parent("target_path", t) {
        Ok(p) => p,
        Err(NodeError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let at = parent.child_proc_path(&name);
    let md = match std::fs::symlink_metadata(&at) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(NodeError::internal(
                format!("inspecting {}", t.display()),
                e,
            ))
        }
    };
    if md.is_dir() {
        return rds_hostops::mount::remove_target_dir_at(&at, t, table)
            .map(|_| ())
            .map_err(|e| match e {
                rds_hostops::mount::RemoveError::Remove { source, .. }
                    if source.raw_os_error() == Some(libc::ENOTEMPTY) =>
                {
                    NodeError::FailedPrecondition(format!(
                        "{} is not empty after unmounting; leaving its content alone",
                        t.display()
                    ))
                }
                other => NodeError::FailedPrecondition(other.to_string()),
            });
    }
    if md.file_type().is_block_device() {
        let dev = DevNum::from_dev_t(md.rdev());
        if !nodes.contains(&dev) {
            return Err(NodeError::FailedPrecondition(format!(
                "{} is a block node for {dev}, not for this volume's device; leaving it",
                t.display()
            )));
        }
        return std::fs::remove_file(&at)
            .map_err(|e| NodeError::internal(format!("removing {}", t.display()), e));
    }
    if md.is_file() && md.len() == 0 {
        return std::fs::remove_file(&at)
            .map_err(|e| NodeError::internal(format!("removing {}", t.display()), e));
    }
    if !exists(&at) {
        return Ok(());
    }
    Err(NodeError::FailedPrecondition(format!(
        "{} is not ours to remove (not empty, not our device node)",
        t.display()
    )))
}
