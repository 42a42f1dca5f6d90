//! Per-volume state: the record made at stage time, what has been observed about it since,
//! its publishes and its current condition.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use foldhash::HashMap;

use rds_types::{BlockIdentity, DevNum, NamespaceIds, Nqn};

use crate::condition::{Transition, VolumeCondition};
pub use crate::event::StaleMark;
use crate::ids::{MountKey, VolumeId};
use crate::recovery::RecoveryCycle;
use crate::time::Timestamp;

/// A `FAN_FS_ERROR` seen on the volume's device since it was (re)mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FsFailure {
    pub dev: DevNum,
    pub errno: i32,
    pub count: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Volume {
    pub nqn: Nqn,
    pub nsid: Option<u32>,
    /// The namespace's identifiers at stage time (empty for records that predate them).
    pub ids: NamespaceIds,
    pub staging_path: PathBuf,
    /// The staging mount (`None` for raw block).
    pub mount: Option<MountKey>,
    /// The device at mount time (updated by a successful recovery).
    pub device: BlockIdentity,
    pub fs_type: Option<String>,
    pub read_only: bool,
    /// We have authoritative information about the staging mount: it was seen in the table,
    /// seen detached, or a full scan postdates the stage. Until then its absence from the
    /// table only means the watcher has not reported it yet.
    pub mount_tracked: bool,
    pub fs_failure: Option<FsFailure>,
    pub recovery: Option<RecoveryCycle>,
    /// Ordered so actions come out in a stable order; a volume has a handful of publishes.
    pub publishes: BTreeMap<PathBuf, Publish>,
    /// `None` only between creation and the first evaluation.
    pub condition: Option<VolumeCondition>,
    pub history: VecDeque<Transition>,
    /// When the connection was lost (the volume entered an outage condition); cleared when
    /// the namespace is back, for the restored Event's duration.
    pub outage_since: Option<Timestamp>,
    /// What the shell was last asked to watch for this volume.
    pub watches: Watches,
    /// Paths (controllers) reported down while others carry the I/O.
    pub paths_down: std::collections::BTreeSet<String>,
}

/// The kernel-side watches a volume needs, as last requested from the shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Watches {
    pub mount: Option<u64>,
    pub filesystem: Option<(MountKey, PathBuf)>,
    pub io: Option<DevNum>,
}

impl Volume {
    /// Is this a filesystem volume (it has, or should have, a staging mount)?
    pub fn is_filesystem(&self) -> bool {
        self.fs_type.is_some()
    }

    /// Mount ids this volume owns (staging and publishes).
    pub fn mount_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.mount
            .iter()
            .chain(self.publishes.values().filter_map(|p| p.mount.as_ref()))
            .map(|m| m.id)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Publish {
    pub target: PathBuf,
    /// The bind mount (`None` for a block publish: a device node).
    pub mount: Option<MountKey>,
    pub read_only: bool,
    pub mount_tracked: bool,
    /// Set by a recovery that replaced the filesystem under this running pod; cleared only by
    /// unpublishing (the pod is gone).
    pub stale: Option<StaleMark>,
    pub condition: Option<VolumeCondition>,
}

/// Records which volumes reference a key (a device, an NQN, a mount id), counting references
/// so one volume can hold the same key twice.
#[derive(Debug, Clone)]
pub(crate) struct Index<K: std::hash::Hash + Eq> {
    map: HashMap<K, BTreeMap<VolumeId, u32>>,
}

impl<K: std::hash::Hash + Eq> Default for Index<K> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Index<K> {
    pub fn add(&mut self, key: K, id: &VolumeId) {
        *self
            .map
            .entry(key)
            .or_default()
            .entry(id.clone())
            .or_insert(0) += 1;
    }

    pub fn remove(&mut self, key: &K, id: &VolumeId) {
        if let Some(ids) = self.map.get_mut(key) {
            if let Some(n) = ids.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    ids.remove(id);
                }
            }
            if ids.is_empty() {
                self.map.remove(key);
            }
        }
    }

    pub fn get(&self, key: &K) -> impl Iterator<Item = &VolumeId> + '_ {
        self.map.get(key).into_iter().flat_map(|ids| ids.keys())
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.map.keys()
    }
}
