//! [`MountTable`]: one snapshot of a mount namespace's table, indexed the ways the monitor and
//! the CSI handlers ask questions: by mount id ("is our staging mount still there?"), by mount
//! point ("what is mounted at this target path, stacked how deep?") and by device ("how many
//! mounts does 259:3 have?" — the storm signal and the in-use check).
//!
//! The per-device and per-mount-point counts are kept incrementally on every insert and
//! remove, so a storm check is O(1) per key and a snapshot never needs a recount.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

// The indexes are consulted on every mount event: a fast hasher seeded per process (path
// hashing dominated the detach path with SipHash).
use foldhash::HashMap;

use rds_types::DevNum;

use crate::mountinfo::MountInfo;

/// A snapshot of a mount table with its indexes.
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    by_id: HashMap<u32, MountInfo>,
    by_unique: HashMap<u64, u32>,
    by_mount_point: HashMap<PathBuf, BTreeSet<u32>>,
    by_dev: HashMap<DevNum, BTreeSet<u32>>,
}

impl PartialEq for MountTable {
    /// Tables are equal when they hold the same mounts in the same state (unique ids ignored,
    /// since a mountinfo read does not know them).
    fn eq(&self, other: &Self) -> bool {
        self.by_id.len() == other.by_id.len()
            && self
                .by_id
                .iter()
                .all(|(id, m)| other.by_id.get(id).is_some_and(|o| o.same_mount_state(m)))
    }
}

impl FromIterator<MountInfo> for MountTable {
    fn from_iter<I: IntoIterator<Item = MountInfo>>(iter: I) -> Self {
        let mut t = MountTable::new();
        for m in iter {
            t.insert(m);
        }
        t
    }
}

impl MountTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Read and index `<proc_root>/<pid>/mountinfo` (pid is usually `"self"`). Lines that
    /// did not parse are returned beside the table, never silently dropped.
    pub fn read(
        proc_root: &Path,
        pid: &str,
    ) -> std::io::Result<(MountTable, Vec<crate::mountinfo::ParseError>)> {
        let parsed = crate::mountinfo::read_mountinfo(proc_root, pid)?;
        Ok((parsed.entries.into_iter().collect(), parsed.errors))
    }

    /// Number of mounts.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Insert or replace the mount with this id; returns the replaced entry.
    pub fn insert(&mut self, m: MountInfo) -> Option<MountInfo> {
        let old = self.remove(m.id);
        if let Some(u) = m.unique_id {
            self.by_unique.insert(u, m.id);
        }
        self.by_mount_point
            .entry(m.mount_point.clone())
            .or_default()
            .insert(m.id);
        self.by_dev.entry(m.dev).or_default().insert(m.id);
        self.by_id.insert(m.id, m);
        old
    }

    /// Remove the mount with this mountinfo id.
    pub fn remove(&mut self, id: u32) -> Option<MountInfo> {
        let m = self.by_id.remove(&id)?;
        if let Some(u) = m.unique_id {
            if self.by_unique.get(&u) == Some(&id) {
                self.by_unique.remove(&u);
            }
        }
        if let Some(set) = self.by_mount_point.get_mut(&m.mount_point) {
            set.remove(&id);
            if set.is_empty() {
                self.by_mount_point.remove(&m.mount_point);
            }
        }
        if let Some(set) = self.by_dev.get_mut(&m.dev) {
            set.remove(&id);
            if set.is_empty() {
                self.by_dev.remove(&m.dev);
            }
        }
        Some(m)
    }

    /// Remove the mount with this 64-bit unique id, returning it.
    pub fn remove_unique(&mut self, unique_id: u64) -> Option<MountInfo> {
        let id = *self.by_unique.get(&unique_id)?;
        self.remove(id)
    }

    /// The mount with this mountinfo id.
    pub fn get(&self, id: u32) -> Option<&MountInfo> {
        self.by_id.get(&id)
    }

    /// The mount with this 64-bit unique id (known only for entries that came from statmount).
    pub fn get_by_unique(&self, unique_id: u64) -> Option<&MountInfo> {
        self.by_unique
            .get(&unique_id)
            .and_then(|id| self.by_id.get(id))
    }

    /// Every mount, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &MountInfo> {
        self.by_id.values()
    }

    /// Every known 64-bit unique id (entries built from statmount), in no particular order.
    pub fn unique_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_unique.keys().copied()
    }

    /// Every mount id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.keys().copied()
    }

    /// The mounts stacked at a mount point, by ascending id (not necessarily mount order when
    /// ids were reused; use [`MountTable::top_at`] for what a path lookup sees).
    pub fn at_mount_point<'a>(&'a self, path: &Path) -> impl Iterator<Item = &'a MountInfo> + 'a {
        self.by_mount_point
            .get(path)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// The mount a path lookup at `path` lands on: the one at `path` that no other mount at
    /// `path` is stacked upon.
    pub fn top_at(&self, path: &Path) -> Option<&MountInfo> {
        let ids = self.by_mount_point.get(path)?;
        let covered: HashSet<u32> = ids
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .filter(|m| m.parent_id != m.id)
            .map(|m| m.parent_id)
            .collect();
        ids.iter()
            .filter(|id| !covered.contains(id))
            .find_map(|id| self.by_id.get(id))
    }

    /// The mounts of one device, by ascending id.
    pub fn on_device(&self, dev: DevNum) -> impl Iterator<Item = &MountInfo> + '_ {
        self.by_dev
            .get(&dev)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// How many mounts the device has (O(1)).
    pub fn device_count(&self, dev: DevNum) -> usize {
        self.by_dev.get(&dev).map_or(0, BTreeSet::len)
    }

    /// How many mounts are stacked at the mount point (O(1)).
    pub fn mount_point_count(&self, path: &Path) -> usize {
        self.by_mount_point.get(path).map_or(0, BTreeSet::len)
    }

    /// Every device with its mount count.
    pub fn device_counts(&self) -> impl Iterator<Item = (DevNum, usize)> + '_ {
        self.by_dev.iter().map(|(d, s)| (*d, s.len()))
    }

    /// Every mount point with its mount count.
    pub fn mount_point_counts(&self) -> impl Iterator<Item = (&Path, usize)> + '_ {
        self.by_mount_point
            .iter()
            .map(|(p, s)| (p.as_path(), s.len()))
    }

    /// Apply one change (as produced by [`diff`]).
    pub fn apply(&mut self, change: &MountChange) {
        match change {
            MountChange::Attached(m) => {
                self.insert(m.clone());
            }
            MountChange::Detached(m) => {
                self.remove(m.id);
            }
            MountChange::Changed { new, .. } => {
                self.insert(new.clone());
            }
        }
    }

    /// The changes that turn this table into one holding exactly `entries` (see [`diff`]).
    pub fn diff_entries(&self, entries: &[MountInfo]) -> Vec<MountChange> {
        let mut new_ids = HashSet::with_capacity(entries.len());
        let mut detached = Vec::new();
        let mut changed = Vec::new();
        let mut attached = Vec::new();
        for n in entries {
            new_ids.insert(n.id);
            match self.by_id.get(&n.id) {
                None => attached.push(n.clone()),
                Some(o) => classify(o, n, &mut detached, &mut changed, &mut attached),
            }
        }
        for (id, o) in &self.by_id {
            if !new_ids.contains(id) {
                detached.push(o.clone());
            }
        }
        assemble(detached, changed, attached)
    }
}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountChange {
    Attached(MountInfo),
    Detached(MountInfo),
    /// Same mount, new state: a remount (options), a move (mount point), a propagation change.
    Changed {
        old: MountInfo,
        new: MountInfo,
    },
}

impl MountChange {
    /// The mount as it is after the change (the detached entry for a detach).
    pub fn mount(&self) -> &MountInfo {
        match self {
            Self::Attached(m) | Self::Detached(m) => m,
            Self::Changed { new, .. } => new,
        }
    }
}

/// The changes from `old` to `new`, detaches first (children before parents), then changes,
/// then attaches (parents before children), so that replaying them in order never has a
/// mount appear under a parent that is not there.
///
/// Mount ids are reused after unmount, so an id alone does not prove identity. When both
/// sides know the 64-bit unique id it decides; otherwise an entry whose device or root differs
/// is a different mount (detach + attach), and one with the same device and root is the same
/// mount changed (a move keeps both).
pub fn diff(old: &MountTable, new: &MountTable) -> Vec<MountChange> {
    let mut detached = Vec::new();
    let mut changed = Vec::new();
    let mut attached = Vec::new();
    for (id, n) in &new.by_id {
        match old.by_id.get(id) {
            None => attached.push(n.clone()),
            Some(o) => classify(o, n, &mut detached, &mut changed, &mut attached),
        }
    }
    for (id, o) in &old.by_id {
        if !new.by_id.contains_key(id) {
            detached.push(o.clone());
        }
    }
    assemble(detached, changed, attached)
}

fn classify(
    o: &MountInfo,
    n: &MountInfo,
    detached: &mut Vec<MountInfo>,
    changed: &mut Vec<MountChange>,
    attached: &mut Vec<MountInfo>,
) {
    // Without statmount's unique ids, a mountinfo id (and an anonymous device number, as
    // tmpfs gets) can be reused between two reads by an unrelated mount. Only what a move
    // or a remount keeps (device, root, filesystem type and source) makes it the same mount;
    // anything else is a detach of the old and an attach of the new. A new mount identical
    // in all four at another path still reads as a move: mountinfo alone cannot tell them
    // apart (the fanotify and listmount strategies can).
    let same_mount = match (o.unique_id, n.unique_id) {
        (Some(a), Some(b)) => a == b,
        _ => o.dev == n.dev && o.root == n.root && o.fs_type == n.fs_type && o.source == n.source,
    };
    if !same_mount {
        detached.push(o.clone());
        attached.push(n.clone());
    } else if !o.same_mount_state(n) {
        changed.push(MountChange::Changed {
            old: o.clone(),
            new: n.clone(),
        });
    }
}

pub(crate) fn assemble(
    detached: Vec<MountInfo>,
    mut changed: Vec<MountChange>,
    attached: Vec<MountInfo>,
) -> Vec<MountChange> {
    let mut out = Vec::with_capacity(detached.len() + changed.len() + attached.len());
    let mut det = parents_first(detached);
    det.reverse();
    out.extend(det.into_iter().map(MountChange::Detached));
    changed.sort_by_key(|c| c.mount().id);
    out.extend(changed);
    out.extend(
        parents_first(attached)
            .into_iter()
            .map(MountChange::Attached),
    );
    out
}

/// Order mounts so that a parent in the batch precedes its children (ties by id).
pub(crate) fn parents_first(mut batch: Vec<MountInfo>) -> Vec<MountInfo> {
    if batch.len() < 2 {
        return batch;
    }
    batch.sort_by_key(|m| m.id);
    let ids: HashSet<u32> = batch.iter().map(|m| m.id).collect();
    let mut children: HashMap<u32, Vec<usize>> = HashMap::default();
    let mut roots = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        if m.parent_id != m.id && ids.contains(&m.parent_id) {
            children.entry(m.parent_id).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let mut order = Vec::with_capacity(batch.len());
    let mut seen = vec![false; batch.len()];
    let mut queue = std::collections::VecDeque::from(roots);
    while let Some(i) = queue.pop_front() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push(i);
        if let Some(c) = children.get(&batch[i].id) {
            queue.extend(c.iter().copied());
        }
    }
    // Anything left is in a parent cycle (impossible from a real kernel): keep it anyway.
    order.extend((0..batch.len()).filter(|&i| !seen[i]));
    let mut slots: Vec<Option<MountInfo>> = batch.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}
