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

use rds_types::{BlockIdentity, DevNum, DiskSeq};
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
}

impl DeviceRecord {
    pub fn new(name: &str, id: BlockIdentity, nsid: Option<u32>) -> Self {
        Self {
            name: name.to_owned(),
            dev: id.dev.to_string(),
            diskseq: id.diskseq.map(|d| d.0),
            nsid,
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
    fn a_corrupt_record_is_an_error_not_an_absent_volume() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("volumes/pvc-3.json"), b"{ not json").unwrap();
        let id = crate::validate::volume_id("volume_id", "pvc-3").unwrap();
        assert!(matches!(store.load(&id), Err(RecordError::Corrupt { .. })));
        assert!(store.list().unwrap().iter().any(|r| r.is_err()));
    }
}
