//! NodeGetVolumeStats and NodeExpandVolume.

use std::path::Path;

use super::NodeService;
use crate::error::NodeError;
use crate::record::VolumeRecord;
use crate::validate::{AbsPath, Access, VolumeId};
use rds_types::{ConditionKind, Health};

/// Usage figures, or only the condition when the filesystem must not be touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    Filesystem(rds_hostops::statfs::VolumeStats),
    Block {
        bytes: u64,
    },
    /// Not measured: the volume is known to be dead, or the measurement timed out. Never
    /// reaches kubelet (a reply without usage is an error to it): [`NodeService::stats`]
    /// answers the last measured figures instead.
    Unmeasured,
}

/// The last usage measured per volume, answered (marked stale in the condition) while the
/// volume must not or cannot be measured.
#[derive(Debug, Clone, Default)]
pub struct LastUsage {
    by_volume: std::sync::Arc<dashmap::DashMap<VolumeId, (Usage, std::time::SystemTime)>>,
}

impl LastUsage {
    pub(crate) fn remember(&self, id: &VolumeId, u: &Usage) {
        if !matches!(u, Usage::Unmeasured) {
            self.by_volume
                .insert(id.clone(), (u.clone(), std::time::SystemTime::now()));
        }
    }

    pub(crate) fn forget(&self, id: &VolumeId) {
        self.by_volume.remove(id);
    }

    fn last(&self, id: &VolumeId) -> Option<(Usage, std::time::SystemTime)> {
        self.by_volume.get(id).map(|e| e.value().clone())
    }
}

#[derive(Debug, Clone)]
pub struct StatsReply {
    pub usage: Usage,
    pub condition: Health,
}

impl NodeService {
    /// NotFound unless the volume is staged on this node (from memory, O(1)).
    pub fn require_staged(&self, id: &VolumeId) -> Result<(), NodeError> {
        match self.volumes.get(id) {
            Some(_) => Ok(()),
            None => Err(NodeError::NotFound(format!(
                "volume {id} is not staged on this node"
            ))),
        }
    }

    /// The record of the volume at `path` (its staging path or one of its publish targets),
    /// and the recorded path the answer is about. Kubelet asks for a raw block volume's stats
    /// at its own map path (`volumeDevices/<pv>/dev/<pod>`): that stands for the publish target
    /// of the same PV and pod, when the node there is the volume's device.
    async fn record_at(
        &self,
        id: &VolumeId,
        path: &AbsPath,
    ) -> Result<(VolumeRecord, AbsPath), NodeError> {
        let rec = self.volumes.get(id).ok_or_else(|| {
            NodeError::NotFound(format!("volume {id} is not staged on this node"))
        })?;
        let known =
            rec.staging_path == *path || rec.publishes.iter().any(|p| p.target == path.as_path());
        if known {
            return Ok((rec, path.clone()));
        }
        if rec.access.is_block() {
            if let Some(publish) = self.kubelet.block_publish_of(path.as_path()) {
                if rec.publishes.iter().any(|p| p.target == publish) {
                    // The node there must be the volume's device: staged or current.
                    let devs: Vec<rds_types::DevNum> = rec
                        .device
                        .identity()
                        .map(|i| i.dev)
                        .into_iter()
                        .chain(
                            self.devices
                                .resolve(&rec.target.nqn)
                                .map(|c| c.identity.dev),
                        )
                        .collect();
                    let (kubelet, p) = (self.kubelet.clone(), path.as_path().to_owned());
                    let node = self
                        .blocking(
                            "reading kubelet's map path",
                            self.cfg.deadlines.stats,
                            move || block_node_at(&kubelet, &p),
                        )
                        .await?;
                    if node.is_some_and(|d| devs.contains(&d)) {
                        let target = AbsPath::parse("volume_path", &publish.to_string_lossy())?;
                        return Ok((rec, target));
                    }
                }
            }
        }
        Err(NodeError::NotFound(format!(
            "{path} is not a staging path or publish target of volume {id}"
        )))
    }

    #[tracing::instrument(skip_all, fields(volume.id = %id, path = %path))]
    pub async fn stats(&self, id: VolumeId, path: AbsPath) -> Result<StatsReply, NodeError> {
        let (rec, path) = self.record_at(&id, &path).await?;
        let mut reply = self.measure(&id, &path, &rec).await?;
        if matches!(reply.usage, Usage::Unmeasured) {
            // Kubelet drops a reply without usage before it reads the condition: answer the
            // last measured figures, and say in the condition that they are not current.
            let (usage, note) = match self.last_usage.last(&id) {
                Some((u, at)) => (
                    u,
                    format!(
                        " Usage figures are the last measured, at {}, not current.",
                        humantime::format_rfc3339_seconds(at)
                    ),
                ),
                None if rec.access.is_block() => (
                    Usage::Block { bytes: 0 },
                    " The device size could not be read.".to_owned(),
                ),
                None => (
                    Usage::Filesystem(Default::default()),
                    " Usage was never measured: the figures are zero, not current.".to_owned(),
                ),
            };
            reply.usage = usage;
            reply.condition.message = format!("{}{note}", reply.condition.message).into();
        } else {
            self.last_usage.remember(&id, &reply.usage);
        }
        Ok(reply)
    }

    async fn measure(
        &self,
        id: &VolumeId,
        path: &AbsPath,
        rec: &VolumeRecord,
    ) -> Result<StatsReply, NodeError> {
        let condition = self
            .observer
            .condition(id, path.as_path())
            .unwrap_or_else(|| Health {
                kind: ConditionKind::Healthy,
                message: "Healthy. Not evaluated by the monitor yet.".into(),
                since: std::time::SystemTime::now(),
            });
        if !condition.io_safe() {
            // Never statvfs a filesystem the monitor knows is dead: it can hang.
            return Ok(StatsReply {
                usage: Usage::Unmeasured,
                condition,
            });
        }
        let p = path.as_path().to_owned();
        let dev = self.block_path(rec);
        let block = rec.access.is_block();
        // Off the runtime, with a deadline: a dead filesystem can hang statvfs.
        let measured =
            rds_hostops::deadline::run_blocking("statvfs", self.cfg.deadlines.stats, move || {
                if std::fs::symlink_metadata(&p).is_err() {
                    return Ok(None);
                }
                if block {
                    rds_hostops::statfs::block_size(&dev).map(|bytes| Some(Usage::Block { bytes }))
                } else {
                    rds_hostops::statfs::volume_stats(&p).map(|s| Some(Usage::Filesystem(s)))
                }
            })
            .await;
        match measured {
            Ok(Ok(Some(usage))) => Ok(StatsReply { usage, condition }),
            Ok(Ok(None)) => Err(NodeError::NotFound(format!("{path} does not exist"))),
            Ok(Err(e)) => Ok(StatsReply {
                usage: Usage::Unmeasured,
                condition: Health {
                    kind: ConditionKind::FilesystemFailed,
                    message: format!("The volume cannot be measured. statvfs of {path}: {e}.")
                        .into(),
                    since: std::time::SystemTime::now(),
                },
            }),
            Err(timeout) => Ok(StatsReply {
                usage: Usage::Unmeasured,
                condition: Health {
                    kind: ConditionKind::IoStalled,
                    message: format!(
                        "The volume's filesystem does not answer. {timeout}: statvfs of {path}."
                    )
                    .into(),
                    since: std::time::SystemTime::now(),
                },
            }),
        }
    }

    /// The block device node of the volume now (the namespace may have been renamed).
    fn block_path(&self, rec: &VolumeRecord) -> std::path::PathBuf {
        match self.devices.resolve(&rec.target.nqn) {
            Some(ns) => self.dev_path(&ns.name),
            None => self.dev_path(&rec.device.name),
        }
    }

    #[tracing::instrument(skip_all, fields(volume.id = %id, path = %path))]
    pub async fn expand(
        &self,
        id: VolumeId,
        path: AbsPath,
        required: i64,
    ) -> Result<u64, NodeError> {
        let _guard = self.guards.try_acquire(id.as_str(), "NodeExpandVolume")?;
        let (rec, _) = self.record_at(&id, &path).await?;
        let dev = self.block_path(&rec);
        let dev2 = dev.clone();
        let size = self
            .blocking("BLKGETSIZE64", self.cfg.deadlines.stats, move || {
                rds_hostops::statfs::block_size(&dev2)
            })
            .await?
            .map_err(|e| NodeError::internal("reading the device size", e))?;
        if required > 0 && (required as u64) > size {
            return Err(NodeError::OutOfRange(format!(
                "the device is {size} bytes, smaller than the requested {required}; the controller has not grown it yet"
            )));
        }
        let Access::Mount { fs_type, .. } = rec.access else {
            return Ok(size);
        };
        // Online resize only, through the staging mount of the recorded device: never an
        // offline resize of a device whose filesystem is mounted elsewhere or not at all.
        let staged = rec.device.identity().map(|i| i.dev);
        let view = self.mount_view().await?;
        match view.top_at(rec.staging_path.as_path()) {
            Some(m) if Some(m.dev) == staged => {}
            Some(m) => {
                return Err(NodeError::FailedPrecondition(format!(
                    "the staging path {} holds device {}, not volume {id}'s device; not resizing",
                    rec.staging_path, m.dev
                )))
            }
            None => {
                return Err(NodeError::FailedPrecondition(format!(
                    "the staging mount of volume {id} at {} is missing; not resizing",
                    rec.staging_path
                )))
            }
        }
        let kind = super::stage::fs_kind(fs_type);
        let mp = rec.staging_path.as_path().to_owned();
        let deadline = self.cfg.deadlines.resize;
        self.blocking(
            "resize",
            deadline + std::time::Duration::from_secs(5),
            move || rds_hostops::fstools::resize(kind, &dev, Some(&mp), deadline),
        )
        .await?
        .map_err(|e| NodeError::internal("growing the filesystem", e))?;
        let mp = rec.staging_path.as_path().to_owned();
        let st = self
            .blocking("statvfs", self.cfg.deadlines.stats, move || {
                rds_hostops::statfs::volume_stats(Path::new(&mp))
            })
            .await?
            .map_err(|e| NodeError::internal("measuring the grown filesystem", e))?;
        tracing::info!(bytes = st.total_bytes, "filesystem grown");
        Ok(st.total_bytes)
    }
}

/// The block device at `path` beneath the kubelet directory (opened without following a
/// symlink; kubelet's map file is a bind mount of the published node, so the object opened is
/// that node), if it is one. Blocking.
fn block_node_at(kubelet: &crate::confine::KubeletDir, path: &Path) -> Option<rds_types::DevNum> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let h = kubelet.root().any(path).ok()?;
    let md = std::fs::metadata(h.proc_path()).ok()?;
    md.file_type()
        .is_block_device()
        .then(|| rds_types::DevNum::from_dev_t(md.rdev()))
}
