//! Staged volumes: the durable records plus an in-memory copy, so that lookups on the CSI
//! path (NodeGetVolumeStats) are O(1) and touch no disk.

use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::NodeError;
use crate::record::{RecordError, RecordStore, VolumeRecord};
use crate::validate::VolumeId;

#[derive(Debug, Clone)]
pub struct Volumes {
    store: RecordStore,
    cache: Arc<DashMap<VolumeId, VolumeRecord>>,
}

impl Volumes {
    /// Open the store and load every record. Corrupt records are logged and left on disk for
    /// an operator (their volumes are not adopted).
    pub fn open(state_dir: &Path) -> Result<Self, RecordError> {
        let store = RecordStore::open(state_dir)?;
        let cache = DashMap::new();
        for r in store.list()? {
            match r {
                Ok(rec) => {
                    cache.insert(rec.volume_id.clone(), rec);
                }
                Err(e) => tracing::error!(error = %e, "skipping an unreadable volume record"),
            }
        }
        Ok(Self {
            store,
            cache: Arc::new(cache),
        })
    }

    pub fn get(&self, id: &VolumeId) -> Option<VolumeRecord> {
        self.cache.get(id).map(|r| r.clone())
    }

    pub fn all(&self) -> Vec<VolumeRecord> {
        self.cache.iter().map(|r| r.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Persist first, then publish in memory: the cache never claims what the disk does not.
    pub fn save(&self, rec: VolumeRecord) -> Result<(), NodeError> {
        self.store.save(&rec).map_err(|e| {
            NodeError::internal(format!("saving the record of {}", rec.volume_id), e)
        })?;
        self.cache.insert(rec.volume_id.clone(), rec);
        Ok(())
    }

    pub fn remove(&self, id: &VolumeId) -> Result<(), NodeError> {
        self.store
            .remove(id)
            .map_err(|e| NodeError::internal(format!("removing the record of {id}"), e))?;
        self.cache.remove(id);
        Ok(())
    }

    /// Another staged volume on the same subsystem (then the controller must stay connected).
    pub fn others_on(&self, id: &VolumeId, nqn: &rds_types::Nqn) -> bool {
        self.cache
            .iter()
            .any(|r| r.volume_id != *id && r.target.nqn == *nqn)
    }
}
