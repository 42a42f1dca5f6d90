//! Which superblock (fsid) belongs to which watched device: pure bookkeeping, no syscalls.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rds_types::DevNum;

use crate::parse::Fsid;

/// One watched superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub fsid: Fsid,
    /// Where it was mounted when watched; used to reach it again for `FAN_MARK_REMOVE`.
    pub mount_point: PathBuf,
}

/// What an fsid from an event means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Watched(DevNum),
    /// Unwatched, but its mark could not be removed (the mount point no longer reaches it);
    /// the kernel drops the mark when the superblock dies. Its events are not wanted.
    Retired,
    Unknown,
}

/// fsid ↔ device bookkeeping. A device may have several incarnations watched (a re-formatted
/// or replaced filesystem on the same `major:minor` has a new fsid); each fsid belongs to
/// exactly one device.
#[derive(Debug, Default)]
pub struct Registry {
    by_fsid: HashMap<Fsid, DevNum>,
    by_dev: HashMap<DevNum, Vec<Watched>>,
    retired: HashSet<Fsid>,
}

impl Registry {
    /// The device `fsid` is already attributed to, if it is not `dev`: two filesystems with
    /// one fsid (a cloned ext4 with the same UUID) cannot be told apart by fanotify.
    pub fn conflict(&self, fsid: Fsid, dev: DevNum) -> Option<DevNum> {
        self.by_fsid.get(&fsid).copied().filter(|d| *d != dev)
    }

    /// Record a watch; idempotent for the same (dev, fsid).
    pub fn insert(&mut self, dev: DevNum, fsid: Fsid, mount_point: &Path) {
        self.retired.remove(&fsid);
        self.by_fsid.insert(fsid, dev);
        let list = self.by_dev.entry(dev).or_default();
        match list.iter_mut().find(|w| w.fsid == fsid) {
            Some(w) => w.mount_point = mount_point.to_path_buf(),
            None => list.push(Watched {
                fsid,
                mount_point: mount_point.to_path_buf(),
            }),
        }
    }

    /// Forget every incarnation watched for `dev`.
    pub fn remove_dev(&mut self, dev: DevNum) -> Vec<Watched> {
        let list = self.by_dev.remove(&dev).unwrap_or_default();
        for w in &list {
            self.by_fsid.remove(&w.fsid);
        }
        list
    }

    /// Drop future events of `fsid` quietly (its mark outlives the watch).
    pub fn retire(&mut self, fsid: Fsid) {
        if !self.by_fsid.contains_key(&fsid) {
            self.retired.insert(fsid);
        }
    }

    pub fn resolve(&self, fsid: Fsid) -> Resolution {
        match self.by_fsid.get(&fsid) {
            Some(dev) => Resolution::Watched(*dev),
            None if self.retired.contains(&fsid) => Resolution::Retired,
            None => Resolution::Unknown,
        }
    }

    /// Incarnations currently watched for `dev`, oldest first.
    pub fn watched(&self, dev: DevNum) -> &[Watched] {
        self.by_dev.get(&dev).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DevNum = DevNum::new(7, 0);
    const B: DevNum = DevNum::new(7, 1);

    #[test]
    fn each_incarnation_of_a_device_resolves_to_that_device() {
        let mut r = Registry::default();
        r.insert(A, Fsid([1, 1]), Path::new("/m"));
        r.insert(A, Fsid([2, 2]), Path::new("/m"));
        assert_eq!(r.resolve(Fsid([1, 1])), Resolution::Watched(A));
        assert_eq!(r.resolve(Fsid([2, 2])), Resolution::Watched(A));
        assert_eq!(r.watched(A).len(), 2, "both incarnations kept");
    }

    #[test]
    fn watching_the_same_superblock_twice_is_idempotent() {
        let mut r = Registry::default();
        r.insert(A, Fsid([1, 1]), Path::new("/m"));
        r.insert(A, Fsid([1, 1]), Path::new("/n"));
        assert_eq!(
            r.watched(A),
            &[Watched {
                fsid: Fsid([1, 1]),
                mount_point: "/n".into()
            }]
        );
    }

    #[test]
    fn an_fsid_owned_by_another_device_is_a_conflict() {
        let mut r = Registry::default();
        r.insert(A, Fsid([1, 1]), Path::new("/m"));
        assert_eq!(r.conflict(Fsid([1, 1]), B), Some(A));
        assert_eq!(r.conflict(Fsid([1, 1]), A), None);
    }

    #[test]
    fn removing_a_device_forgets_all_its_fsids() {
        let mut r = Registry::default();
        r.insert(A, Fsid([1, 1]), Path::new("/m"));
        r.insert(B, Fsid([3, 3]), Path::new("/n"));
        assert_eq!(r.remove_dev(A).len(), 1);
        assert_eq!(r.resolve(Fsid([1, 1])), Resolution::Unknown);
        assert_eq!(r.resolve(Fsid([3, 3])), Resolution::Watched(B));
    }

    #[test]
    fn a_retired_fsid_watched_again_resolves_to_its_device() {
        let mut r = Registry::default();
        r.retire(Fsid([1, 1]));
        assert_eq!(r.resolve(Fsid([1, 1])), Resolution::Retired);
        r.insert(B, Fsid([1, 1]), Path::new("/m"));
        assert_eq!(r.resolve(Fsid([1, 1])), Resolution::Watched(B));
    }
}
