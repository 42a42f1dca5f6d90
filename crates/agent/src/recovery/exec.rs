//! The host steps of a recovery (4 to 8 in the parent module's doc): blocking, run in one
//! closure off the runtime that owns the volume guard.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;
use rds_hostops::inuse::HostRoots;
use rds_hostops::mknod::NodeState;
use rds_hostops::mount::{BindOptions, UnmountError, UnmountPolicy};
use rds_mounts::MountView;
use rds_types::{BlockIdentity, DevNum};

use super::{RecoveryError, RecoveryOutcome};
use rds_node::guard::VolumeGuard;
use rds_node::record::{DeviceRecord, StaleRecord, VolumeRecord};
use rds_node::validate::{Access, FsType, VolumeId};
use rds_node::{NsDevice, Volumes};

/// Slack added to the host-steps deadline for mount-table reads and in-use scans.
const HOST_SLACK: Duration = Duration::from_secs(30);

/// How long a busy stale bind of a publish target is retried before the in-use check.
const TARGET_UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Everything the host steps need, moved into the blocking closure.
pub(super) struct Exec {
    /// What pods left on the old superblock hold: the fault being healed.
    pub(super) stale_kind: rds_types::ConditionKind,
    pub(super) rec: VolumeRecord,
    pub(super) old: BlockIdentity,
    pub(super) new: NsDevice,
    pub(super) dev_path: PathBuf,
    pub(super) roots: HostRoots,
    pub(super) work_dir: PathBuf,
    pub(super) unmount_wait: Duration,
    pub(super) volumes: Volumes,
    /// Kubelet's directory: every recorded path is proven beneath it, free of symlinks,
    /// before any step.
    pub(super) kubelet: std::sync::Arc<rds_node::confine::KubeletDir>,
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
    pub(super) fn budget(&self, mount: Duration) -> Duration {
        let n = u32::try_from(self.rec.publishes.len()).unwrap_or(u32::MAX / 4);
        let per_step = mount + self.unmount_wait;
        per_step.saturating_mul(n.saturating_add(3)) + HOST_SLACK
    }

    fn classify(&self, dev: DevNum) -> Layer {
        classify(dev, self.old, self.new.identity)
    }

    fn policy(&self) -> UnmountPolicy {
        UnmountPolicy {
            wait: self.unmount_wait,
            allow_lazy_when_unused: true,
        }
    }

    /// A pod's stale bind: a running container holds it for as long as it runs, so a busy
    /// bind goes to the in-use check at once instead of being retried for the full wait (a
    /// wait per stranded pod kept the volume `recovering` for seconds each).
    fn target_policy(&self) -> UnmountPolicy {
        UnmountPolicy {
            wait: self.unmount_wait.min(TARGET_UNMOUNT_WAIT),
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

    fn table(&self) -> Result<MountView, rds_mounts::ViewError> {
        MountView::read_now(&self.roots.proc, "self")
    }

    /// Steps 4 to 8, blocking. Owns the guard, so it is released only when everything is done,
    /// whatever happened to the caller.
    pub(super) fn run(self, guard: VolumeGuard) -> Result<RecoveryOutcome, RecoveryError> {
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
        // The recorded paths were confined when staged and published; a symlink planted in
        // one since then must not redirect a move, bind or unmount.
        let paths = std::iter::once(self.rec.staging_path.as_path())
            .chain(self.rec.publishes.iter().map(|p| p.target.as_path()));
        for p in paths {
            // An absent path has nothing to redirect (a block volume has no staging
            // directory); a symlink or a path outside the kubelet directory is refused.
            match self.kubelet.root().parent(p) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(RecoveryError::BadRecord {
                        volume_id: self.volume_id(),
                        why: format!("{} cannot be used safely: {e}", p.display()),
                    })
                }
            }
        }
        rds_node::service::check_device_node(&self.dev_path, self.new.identity.dev).map_err(
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
            stale: Vec::new(),
        };
        match self.rec.access.clone() {
            Access::Mount { fs_type, flags } => {
                out.new_mount = Some(self.restage(fs_type, &flags)?);
                self.rebind(&flags, &mut out);
            }
            Access::Block => self.renode(&mut out),
        }
        // Step 8: the record names the new incarnation, forgets targets that are gone, and
        // marks the pods that were running on the old one (they hold its dead superblock;
        // only unpublishing ends that).
        let ids = if self.new.ids.is_empty() {
            self.rec.device.ids.clone()
        } else {
            self.new.ids.clone()
        };
        self.rec.device = DeviceRecord::new(&self.new.name, self.new.identity, self.new.nsid, ids);
        self.rec
            .publishes
            .retain(|p| !out.dropped.contains(&p.target));
        if !self.new.identity.same_device(&self.old) {
            let mark = StaleRecord::new(self.stale_kind, self.old, self.new.identity);
            let new_dev = self.new.identity.dev;
            // A filesystem target now bound onto the new mount is healed: nothing held the old
            // bind (a running container's copy of it, in its own mount namespace, is a holder:
            // such a target is stranded and keeps its bind). A block target's node may sit
            // open in a running container, which keeps the old device: marked.
            let rebound = |t: &Path| {
                out.republished
                    .iter()
                    .any(|(p, m)| p == t && m.is_some_and(|(_, dev)| dev == new_dev))
            };
            let filesystem = matches!(self.rec.access, Access::Mount { .. });
            let mut stale = Vec::new();
            self.rec.publishes = std::mem::take(&mut self.rec.publishes)
                .into_iter()
                .map(|mut p| {
                    if !(filesystem && rebound(&p.target)) {
                        if p.stale.is_none() {
                            p.stale = Some(mark.clone());
                        }
                        stale.push(p.target.clone());
                    }
                    p
                })
                .collect();
            out.stale = stale;
        }
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
        let stale = match table
            .top_at(&staging)
            .map(|m| (m.dev, self.classify(m.dev)))
        {
            Some((dev, Layer::Current)) => {
                tracing::info!(staging = %staging.display(), %dev, "staging path already on the new device");
                let m = table.top_at(&staging).map(|m| (m.id, m.dev));
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
        let (ms, data) = rds_node::options::fs_mount_options(flags, self.rec.read_only);
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
            return Err(new_fs(rds_types::error_chain(&e)));
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
        match table.top_at(&staging) {
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
        rds_hostops::statfs::volume_stats(temp).map_err(|e| rds_types::error_chain(&e))?;
        let table = self.table().map_err(|e| e.to_string())?;
        match table.top_at(temp) {
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
        for _ in 0..rds_node::defaults::MAX_UNMOUNT_LAYERS {
            let table = self
                .table()
                .map_err(|e| self.host("reading the mount table", "nothing was changed", e))?;
            if table.top_at(temp).is_none() {
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
        for _ in 0..rds_node::defaults::MAX_UNMOUNT_LAYERS {
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
            match table.top_at(staging).map(|m| (m.dev, self.classify(m.dev))) {
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
                rds_node::defaults::MAX_UNMOUNT_LAYERS
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
                            t.top_at(&p.target).is_some_and(|m| m.dev == self.old.dev)
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
            match std::fs::symlink_metadata(t) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!(target = %t.display(), "publish target is gone: dropping it");
                    out.dropped.push(t.clone());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(target = %t.display(), error = %e, "cannot inspect the target: left as it is");
                    out.republished.push((t.clone(), None));
                    continue;
                }
            }
            for _ in 0..rds_node::defaults::MAX_UNMOUNT_LAYERS {
                let table = match self.table() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(target = %t.display(), error = %e, "cannot read the mount table: target left as it is");
                        out.republished.push((t.clone(), None));
                        continue 'targets;
                    }
                };
                match table.top_at(t).map(|m| (m.id, m.dev, self.classify(m.dev))) {
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
                match rds_hostops::mount::unmount(t, self.target_policy(), &self.roots) {
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
                        .and_then(|tb| tb.top_at(t).map(|m| (m.id, m.dev)));
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

/// Which incarnation a mount of `dev` belongs to. When the same number came back with a new
/// diskseq (a replaced device), mounts of that number cannot be told apart by the mount table:
/// every one found before recovery placed its own is the dead incarnation's. That is decided
/// by the identities themselves, whatever the reason the recovery was asked for (a failed
/// filesystem can be followed by a same-number reconnect before its recovery runs).
fn classify(dev: DevNum, old: BlockIdentity, new: BlockIdentity) -> Layer {
    let number_reused_by_a_new_device = new.dev == old.dev && !new.same_device(&old);
    if dev == new.dev && !number_reused_by_a_new_device {
        Layer::Current
    } else if dev == old.dev {
        Layer::Stale
    } else {
        Layer::Foreign
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
        let extra =
            rds_node::options::bind_flags(flags, read_only) | MsFlags::MS_BIND | MsFlags::MS_NOEXEC;
        rds_hostops::mount::remount(t, extra, None)?;
    }
    Ok(())
}

/// Create `dir` and make sure a mount under it can be moved (its mount must not be shared):
/// if the mount containing it is shared, bind `dir` onto itself and make that private.
/// Returns the canonical path (the form the mount table uses).
fn ensure_private_dir(dir: &Path, proc: &Path) -> Result<PathBuf, std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let table = MountView::read_now(proc, "self").map_err(std::io::Error::other)?;
    let containing = table
        .entries()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rds_types::DiskSeq;

    fn id(major: u32, minor: u32, seq: u64) -> BlockIdentity {
        BlockIdentity {
            dev: DevNum::new(major, minor),
            diskseq: Some(DiskSeq(seq)),
        }
    }

    #[test]
    fn mounts_are_classified_by_incarnation() {
        let (old, new) = (id(259, 0, 10), id(259, 1, 11));
        assert_eq!(classify(new.dev, old, new), Layer::Current);
        assert_eq!(classify(old.dev, old, new), Layer::Stale);
        assert_eq!(
            classify(DevNum::new(8, 0), old, new),
            Layer::Foreign,
            "another device is never ours to unmount"
        );
    }

    #[test]
    fn a_reused_number_is_stale_when_the_device_was_replaced() {
        let (old, new) = (id(259, 0, 10), id(259, 0, 11));
        assert_eq!(
            classify(old.dev, old, new),
            Layer::Stale,
            "same major:minor, new diskseq: the mount found is the dead incarnation's, whatever the reason"
        );
        assert_eq!(
            classify(old.dev, old, old),
            Layer::Current,
            "a missing mount on an unchanged device: its other mounts are healthy"
        );
    }
}
