//! Per-volume records: what a plugin restart or a recovery needs to know about a staged volume,
//! written atomically under the plugin's own state directory (never in kubelet's files).
//!
//! One JSON file per volume, `<state-dir>/volumes/<volume-id>.json`, replaced with
//! write-to-temp + fsync + rename + fsync(dir), so a crash leaves either the old or the new
//! record, never a torn one.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rds_types::{BlockIdentity, ConditionKind, DevNum, DiskSeq, NamespaceIds};
use serde::{Deserialize, Serialize};

use crate::validate::{AbsPath, Access, Target, VolumeId};

/// The device a volume was staged on, as the kernel identified it then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Block device name (`nvme0n1`), informational only: identity is `dev` + `diskseq`.
    pub name: String,
    pub dev: String,
    pub diskseq: Option<u64>,
    pub nsid: Option<u32>,
    /// What the target said the namespace was at stage time (uuid, nguid, wwid): a namespace
    /// behind the same NQN with other identifiers is another volume and is never mounted as
    /// this one. Empty in records written before they were kept.
    #[serde(default, skip_serializing_if = "NamespaceIds::is_empty")]
    pub ids: NamespaceIds,
}

impl DeviceRecord {
    pub fn new(name: &str, id: BlockIdentity, nsid: Option<u32>, ids: NamespaceIds) -> Self {
        Self {
            name: name.to_owned(),
            dev: id.dev.to_string(),
            diskseq: id.diskseq.map(|d| d.0),
            nsid,
            ids,
        }
    }

    pub fn identity(&self) -> Option<BlockIdentity> {
        Some(BlockIdentity {
            dev: self.dev.parse::<DevNum>().ok()?,
            diskseq: self.diskseq.map(DiskSeq),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume_id: VolumeId,
    pub target: Target,
    pub staging_path: AbsPath,
    pub access: Access,
    pub read_only: bool,
    pub device: DeviceRecord,
    /// Publish targets kubelet asked for and has not unpublished yet.
    #[serde(default)]
    pub publishes: BTreeSet<PublishEntry>,
    /// Seconds since the epoch when the volume was staged.
    pub staged_at: u64,
}

/// A publish target, ordered by path so the record is stable on disk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishEntry {
    pub target: PathBuf,
    pub read_only: bool,
    /// Set by a recovery that moved the volume to another device incarnation while this
    /// target's pod was running: the pod still holds the old, dead filesystem until the target
    /// is unpublished. Kept here so a plugin restart does not forget it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleRecord>,
}

/// A pod left on the filesystem of a replaced device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StaleRecord {
    /// `device_replaced` or `filesystem_failed`.
    pub reason: String,
    pub old_dev: String,
    pub old_diskseq: Option<u64>,
    pub new_dev: String,
    pub new_diskseq: Option<u64>,
}

impl StaleRecord {
    pub fn new(kind: ConditionKind, old: BlockIdentity, new: BlockIdentity) -> Self {
        Self {
            reason: kind.as_str().to_owned(),
            old_dev: old.dev.to_string(),
            old_diskseq: old.diskseq.map(|d| d.0),
            new_dev: new.dev.to_string(),
            new_diskseq: new.diskseq.map(|d| d.0),
        }
    }

    /// What it died of, and the two incarnations (`None` if the record is unreadable).
    pub fn decode(&self) -> Option<(ConditionKind, BlockIdentity, BlockIdentity)> {
        let kind = ConditionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == self.reason)?;
        let id = |dev: &str, seq: Option<u64>| {
            Some(BlockIdentity {
                dev: dev.parse::<DevNum>().ok()?,
                diskseq: seq.map(DiskSeq),
            })
        };
        Some((
            kind,
            id(&self.old_dev, self.old_diskseq)?,
            id(&self.new_dev, self.new_diskseq)?,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The directory of records. Every operation is blocking file IO on a local directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn open(state_dir: &Path) -> Result<Self, RecordError> {
        let dir = state_dir.join("volumes");
        fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, id: &VolumeId) -> PathBuf {
        self.dir.join(format!("{}.json", id.as_str()))
    }

    pub fn load(&self, id: &VolumeId) -> Result<Option<VolumeRecord>, RecordError> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RecordError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Atomically replace the record.
    pub fn save(&self, rec: &VolumeRecord) -> Result<(), RecordError> {
        let path = self.path(&rec.volume_id);
        let tmp = self
            .dir
            .join(format!(".{}.json.tmp", rec.volume_id.as_str()));
        fn io<'a>(
            op: &'static str,
            p: &'a Path,
        ) -> impl FnOnce(std::io::Error) -> RecordError + 'a {
            move |source| RecordError::Io {
                op,
                path: p.to_path_buf(),
                source,
            }
        }
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| RecordError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        Ok(())
    }

    pub fn remove(&self, id: &VolumeId) -> Result<(), RecordError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| RecordError::Io {
                    op: "syncing",
                    path: self.dir.clone(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io {
                op: "removing",
                path,
                source,
            }),
        }
    }

    /// Every record (for re-adoption at start-up). Corrupt files are reported, not skipped silently.
    pub fn list(&self) -> Result<Vec<Result<VolumeRecord, RecordError>>, RecordError> {
        let rd = fs::read_dir(&self.dir).map_err(|source| RecordError::Io {
            op: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|source| RecordError::Io {
                op: "listing",
                path: self.dir.clone(),
                source,
            })?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = ent.path();
            out.push(match fs::read(&path) {
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|source| RecordError::Corrupt { path, source }),
                Err(source) => Err(RecordError::Io {
                    op: "reading",
                    path,
                    source,
                }),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::FsType;

    fn rec(id: &str) -> VolumeRecord {
        VolumeRecord {
            volume_id: crate::validate::volume_id("volume_id", id).unwrap(),
            target: Target {
                nqn: rds_types::Nqn::parse("nqn.2000-02.com.mikrotik:pvc-1").unwrap(),
                address: "10.0.0.5".parse().unwrap(),
                port: 4420,
                ctrl_loss_tmo: -1,
                reconnect_delay: 5,
                keep_alive_tmo: None,
                capacity_hint: None,
            },
            staging_path: AbsPath::parse("p", "/var/lib/kubelet/plugins/x/globalmount").unwrap(),
            access: Access::Mount {
                fs_type: FsType::Xfs,
                flags: vec!["noatime".into()],
            },
            read_only: false,
            device: DeviceRecord::new(
                "nvme0n1",
                BlockIdentity {
                    dev: DevNum::new(259, 3),
                    diskseq: Some(DiskSeq(17)),
                },
                Some(1),
                NamespaceIds::new(
                    Some("0b5a6c1e-1234-4d2b-9c3a-7f8e9d0a1b2c".into()),
                    None,
                    None,
                ),
            ),
            publishes: BTreeSet::new(),
            staged_at: 1,
        }
    }

    #[test]
    fn a_saved_record_loads_back_identical_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let r = rec("pvc-1");
        store.save(&r).unwrap();
        assert_eq!(store.load(&r.volume_id).unwrap(), Some(r.clone()));
        let names: Vec<_> = fs::read_dir(dir.path().join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pvc-1.json")]);
        assert_eq!(r.device.identity().unwrap().diskseq, Some(DiskSeq(17)));
    }

    #[test]
    fn missing_record_is_none_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let id = crate::validate::volume_id("volume_id", "pvc-2").unwrap();
        assert_eq!(store.load(&id).unwrap(), None);
        store.remove(&id).unwrap();
        store.save(&rec("pvc-2")).unwrap();
        store.remove(&id).unwrap();
        assert_eq!(store.load(&id).unwrap(), None);
    }

    #[test]
    fn a_record_written_before_ids_and_stale_marks_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let mut old = serde_json::to_value(rec("pvc-4")).unwrap();
        old["device"].as_object_mut().unwrap().remove("ids");
        old["publishes"] = serde_json::json!([{"target": "/t", "read_only": false}]);
        fs::write(
            dir.path().join("volumes/pvc-4.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let got = store
            .load(&crate::validate::volume_id("volume_id", "pvc-4").unwrap())
            .unwrap()
            .expect("loads");
        assert!(got.device.ids.is_empty());
        assert_eq!(got.publishes.iter().next().unwrap().stale, None);
    }

    #[test]
    fn a_stale_mark_round_trips() {
        let old = BlockIdentity {
            dev: DevNum::new(259, 1),
            diskseq: Some(DiskSeq(7)),
        };
        let new = BlockIdentity {
            dev: DevNum::new(259, 1),
            diskseq: Some(DiskSeq(9)),
        };
        let s = StaleRecord::new(ConditionKind::DeviceReplaced, old, new);
        assert_eq!(s.decode(), Some((ConditionKind::DeviceReplaced, old, new)));
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_an_absent_volume() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("volumes/pvc-3.json"), b"{ not json").unwrap();
        let id = crate::validate::volume_id("volume_id", "pvc-3").unwrap();
        assert!(matches!(store.load(&id), Err(RecordError::Corrupt { .. })));
        assert!(store.list().unwrap().iter().any(|r| r.is_err()));
    }
}
