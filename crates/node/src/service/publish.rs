//! NodePublishVolume and NodeUnpublishVolume.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rds_hostops::mknod::NodeState;
use rds_hostops::mount::BindOptions;
use rds_types::DevNum;

use super::{exists, NodeService};
use crate::error::NodeError;
use crate::record::{PublishEntry, VolumeRecord};
use crate::validate::{AbsPath, Access, PublishArgs, VolumeId};

impl NodeService {
    #[tracing::instrument(skip_all, fields(volume.id = %args.volume_id, target = %args.target_path))]
    pub async fn publish(&self, args: PublishArgs) -> Result<(), NodeError> {
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
        let _guard = self
            .guards
            .try_acquire(args.volume_id.as_str(), "NodePublishVolume")?;
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
                mount_key = self.blocking(
                    "bind-mounting the target",
                    self.cfg.deadlines.mount,
                    move || {
                        prepare_dir(&dst)?;
                        rds_hostops::mount::bind(&src, &dst, BindOptions::read_only(ro))
                            .map_err(|e| NodeError::internal("bind-mounting the target", e))?;
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
                let dst = args.target_path.as_path().to_owned();
                let mode = if args.read_only { 0o440 } else { 0o660 };
                self.blocking(
                    "creating the block device node",
                    self.cfg.deadlines.mount,
                    move || publish_block_node(&dst, staged.dev, mode),
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
        let _guard = self
            .guards
            .try_acquire(id.as_str(), "NodeUnpublishVolume")?;
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
        // Without a record we cannot tell our layers from someone else's.
        let ours = |dev: DevNum| allowed.contains(&dev);

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
            self.unmount_path(target).await?;
        }

        let view = self.mount_view().await?;
        if view.top_at(target.as_path()).is_some() {
            return Err(NodeError::FailedPrecondition(format!(
                "{target} still has more than {} mounts stacked on it (mount storm?)",
                crate::defaults::MAX_UNMOUNT_LAYERS
            )));
        }
        let t = target.as_path().to_owned();
        let table = view.clone();
        let nodes = rec.is_some().then(|| allowed.clone());
        self.blocking("removing the target", self.cfg.deadlines.mount, move || {
            remove_target(&t, &table, nodes.as_deref())
        })
        .await??;

        if let Some(mut rec) = rec {
            let before = rec.publishes.len();
            rec.publishes.retain(|p| p.target != target.as_path());
            if rec.publishes.len() != before {
                self.save_record(rec).await?;
            }
        }
        tracing::info!("volume unpublished");
        Ok(())
    }
}

/// Create the publish target directory (the plugin owns the target; its parent must exist).
fn prepare_dir(dst: &Path) -> Result<(), NodeError> {
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(NodeError::AlreadyExists(format!(
            "{} exists and is not a directory",
            dst.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dst)
            .map_err(|e| NodeError::internal(format!("creating {}", dst.display()), e)),
        Err(e) => Err(NodeError::internal(
            format!("inspecting {}", dst.display()),
            e,
        )),
    }
}

/// Make `dst` a block node for `dev`: idempotent when it already is; an empty placeholder
/// (file or directory) is replaced; anything else is left alone.
fn publish_block_node(dst: &Path, dev: DevNum, mode: u32) -> Result<(), NodeError> {
    let state = rds_hostops::mknod::check_block_node(dst, dev)
        .map_err(|e| NodeError::internal("inspecting the target", e))?;
    match state {
        NodeState::Matches => Ok(()),
        NodeState::Different(other) => Err(NodeError::AlreadyExists(format!(
            "{} is a block node for {other}, not for this volume's device {dev}",
            dst.display()
        ))),
        NodeState::NotABlockDevice => {
            let md = std::fs::symlink_metadata(dst)
                .map_err(|e| NodeError::internal("inspecting the target", e))?;
            let removed = if md.is_file() && md.len() == 0 {
                std::fs::remove_file(dst)
            } else if md.is_dir() {
                std::fs::remove_dir(dst)
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
            create_node(dst, dev, mode)
        }
        NodeState::Missing => create_node(dst, dev, mode),
    }
}

fn create_node(dst: &Path, dev: DevNum, mode: u32) -> Result<(), NodeError> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| NodeError::internal(format!("creating {}", parent.display()), e))?;
    }
    rds_hostops::mknod::create_block_node(dst, dev, mode)
        .map_err(|e| NodeError::internal("creating the block node", e))
}

/// Remove the target once it is no longer a mount point: an empty directory, an empty
/// placeholder file, or a block node of this volume's device. Never recursive.
fn remove_target(
    t: &Path,
    table: &rds_mounts::MountView,
    nodes: Option<&[DevNum]>,
) -> Result<(), NodeError> {
    let md = match std::fs::symlink_metadata(t) {
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
        return rds_hostops::mount::remove_target_dir(t, table)
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
        if nodes.is_some_and(|allowed| !allowed.contains(&dev)) {
            return Err(NodeError::FailedPrecondition(format!(
                "{} is a block node for {dev}, not for this volume's device; leaving it",
                t.display()
            )));
        }
        return std::fs::remove_file(t)
            .map_err(|e| NodeError::internal(format!("removing {}", t.display()), e));
    }
    if md.is_file() && md.len() == 0 {
        return std::fs::remove_file(t)
            .map_err(|e| NodeError::internal(format!("removing {}", t.display()), e));
    }
    if !exists(t) {
        return Ok(());
    }
    Err(NodeError::FailedPrecondition(format!(
        "{} is not ours to remove (not empty, not our device node)",
        t.display()
    )))
}
