//! The kernel facts the machine has accumulated: mount table, namespaces, controllers,
//! storms. Updated by events; read by the pure evaluation.

use std::collections::BTreeMap;
use std::path::Path;

// Facts are looked up on every event: a fast hasher, seeded per process.
use foldhash::HashMap;

use rds_types::{BlockIdentity, Nqn};

use crate::event::{ControllerFacts, ControllerState, MountFacts, NamespaceFacts};
use crate::ids::{MountKey, StormKey};
use crate::time::Timestamp;

/// An active mount storm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storm {
    pub count: u64,
    pub message: String,
}

/// Where a volume's NQN (and nsid) resolves now.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resolution<'a> {
    Present(&'a NamespaceFacts),
    /// Absent, and known to have been removed (or found missing by a resync) at this time.
    Removed {
        at: Timestamp,
    },
    /// Absent, but not known to be gone: the device watcher may simply not have reported it
    /// yet.
    Unknown,
}

/// The NQN's paths, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link<'a> {
    /// A live controller, or none known (no evidence of trouble).
    Fine,
    /// Some paths are live, these reconnecting: I/O flows, with less redundancy.
    Degraded { down: Vec<&'a str>, paths: usize },
    /// No live controller and this one reconnecting.
    Reconnecting {
        controller: &'a str,
        state: &'a ControllerState,
    },
    /// No live controller and none reconnecting: every one is being deleted (its
    /// `ctrl_loss_tmo` ran out, or someone disconnected it) or dead. Nothing carries the I/O
    /// and nothing will come back by itself.
    Down {
        controller: &'a str,
        state: &'a ControllerState,
    },
}

/// Request counters of one staged device, as last sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IoTrack {
    pub inflight: u64,
    pub completed: u64,
    /// The last time a request completed (the completed count moved) or none was in flight.
    pub progress_at: Timestamp,
}

impl IoTrack {
    /// Requests are in flight and none completed since `progress_at`.
    pub fn stalled_since(&self) -> Option<Timestamp> {
        (self.inflight > 0).then_some(self.progress_at)
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Facts {
    pub mounts: HashMap<u64, MountFacts>,
    /// A full mount scan has been seen: absence from `mounts` is evidence.
    pub mounts_synced: bool,
    pub namespaces: HashMap<Nqn, BTreeMap<u32, NamespaceFacts>>,
    /// Namespace removals still unanswered, per NQN and nsid, kept only for NQNs a staged
    /// volume uses.
    pub removals: HashMap<Nqn, BTreeMap<u32, Timestamp>>,
    pub controllers: HashMap<Nqn, BTreeMap<String, ControllerState>>,
    /// A full device scan has been seen.
    pub devices_synced: bool,
    pub storms: HashMap<StormKey, Storm>,
    /// Request counters of the staged devices, as sampled.
    pub io: HashMap<rds_types::DevNum, IoTrack>,
}

impl Facts {
    /// The mount with this key, if it is still in the table (same id and same device).
    pub fn mount(&self, key: &MountKey) -> Option<&MountFacts> {
        self.mounts.get(&key.id).filter(|m| m.dev == key.dev)
    }

    pub fn resolve(
        &self,
        nqn: &Nqn,
        nsid: Option<u32>,
        recorded: &BlockIdentity,
    ) -> Resolution<'_> {
        let present = self.namespaces.get(nqn).and_then(|all| match nsid {
            Some(n) => all.get(&n),
            // Without an nsid: the only namespace, else the one we mounted, else the lowest.
            None => all
                .values()
                .find(|ns| all.len() == 1 || ns.identity.same_device(recorded))
                .or_else(|| all.values().next()),
        });
        if let Some(ns) = present {
            return Resolution::Present(ns);
        }
        let removed = self.removals.get(nqn).and_then(|r| match nsid {
            Some(n) => r.get(&n).copied(),
            None => r.values().min().copied(),
        });
        match removed {
            Some(at) => Resolution::Removed { at },
            None => Resolution::Unknown,
        }
    }

    /// No controller of `nqn` exists that could bring its namespace back by itself (none, or
    /// every one on its way out): only a new connect can.
    pub fn controllers_gone(&self, nqn: &Nqn) -> bool {
        self.controllers
            .get(nqn)
            .is_none_or(|c| c.values().all(ControllerState::is_deleting))
    }

    /// Records one sample of a device's counters at `now`.
    pub fn io_sample(
        &mut self,
        dev: rds_types::DevNum,
        inflight: u64,
        completed: u64,
        now: Timestamp,
    ) {
        let t = self.io.entry(dev).or_insert(IoTrack {
            inflight,
            completed,
            progress_at: now,
        });
        if inflight == 0 || completed != t.completed {
            t.progress_at = now;
        }
        t.inflight = inflight;
        t.completed = completed;
    }

    pub fn link(&self, nqn: &Nqn) -> Link<'_> {
        let Some(ctrls) = self.controllers.get(nqn) else {
            return Link::Fine;
        };
        if ctrls.values().any(|s| *s == ControllerState::Live) {
            // Native multipath: I/O flows through the live paths; every other one is reported
            // (reconnecting, being deleted, new).
            let down: Vec<&str> = ctrls
                .iter()
                .filter(|(_, s)| **s != ControllerState::Live)
                .map(|(c, _)| c.as_str())
                .collect();
            return if down.is_empty() {
                Link::Fine
            } else {
                Link::Degraded {
                    down,
                    paths: ctrls.len(),
                }
            };
        }
        if let Some((c, s)) = ctrls
            .iter()
            .find(|(_, s)| s.is_reconnecting() || **s == ControllerState::New)
        {
            return Link::Reconnecting {
                controller: c.as_str(),
                state: s,
            };
        }
        ctrls.iter().next().map_or(Link::Fine, |(c, s)| Link::Down {
            controller: c.as_str(),
            state: s,
        })
    }

    /// A storm on this device, or at or above one of these paths.
    pub fn storm_for<'a, 'p>(
        &'a self,
        dev: &rds_types::DevNum,
        paths: impl IntoIterator<Item = &'p Path>,
    ) -> Option<(StormKey, &'a Storm)> {
        if self.storms.is_empty() {
            return None;
        }
        let key = StormKey::Device(*dev);
        if let Some(s) = self.storms.get(&key) {
            return Some((key, s));
        }
        // Storms are few (each needs a hundred mounts): scanning them beats hashing every
        // ancestor of every path. The deepest storm at or above a path is the longest one.
        for p in paths {
            let deepest = self
                .storms
                .iter()
                .filter_map(|(k, s)| match k {
                    StormKey::MountPoint(m) if p.starts_with(m) => {
                        Some((m.as_os_str().len(), k, s))
                    }
                    _ => None,
                })
                .max_by_key(|(len, _, _)| *len);
            if let Some((_, k, s)) = deepest {
                return Some((k.clone(), s));
            }
        }
        None
    }

    /// Records that `nqn`'s namespace `nsid` was found gone at `at`; keeps an earlier record.
    /// Returns true when a new record was made.
    pub fn note_removal(&mut self, nqn: &Nqn, nsid: u32, at: Timestamp) -> bool {
        let r = self.removals.entry(nqn.clone()).or_default();
        if r.contains_key(&nsid) {
            return false;
        }
        r.insert(nsid, at);
        true
    }

    pub fn clear_removal(&mut self, nqn: &Nqn, nsid: u32) {
        if let Some(r) = self.removals.get_mut(nqn) {
            r.remove(&nsid);
            if r.is_empty() {
                self.removals.remove(nqn);
            }
        }
    }

    pub fn add_namespace(&mut self, ns: NamespaceFacts) {
        self.clear_removal(&ns.nqn, ns.nsid);
        // The record kept for a volume staged without an nsid (see `ANY_NSID`).
        self.clear_removal(&ns.nqn, 0);
        self.namespaces
            .entry(ns.nqn.clone())
            .or_default()
            .insert(ns.nsid, ns);
    }

    /// Removes the namespace if `identity` is the incarnation we know (or we know none).
    /// Returns false for a late removal of an older incarnation.
    pub fn remove_namespace(&mut self, nqn: &Nqn, nsid: u32, identity: &BlockIdentity) -> bool {
        let Some(all) = self.namespaces.get_mut(nqn) else {
            return true;
        };
        match all.get(&nsid) {
            Some(known) if !known.identity.same_device(identity) => false,
            Some(_) => {
                all.remove(&nsid);
                if all.is_empty() {
                    self.namespaces.remove(nqn);
                }
                true
            }
            None => true,
        }
    }

    pub fn set_controller(&mut self, c: ControllerFacts) {
        self.controllers
            .entry(c.nqn)
            .or_default()
            .insert(c.controller, c.state);
    }

    pub fn remove_controller(&mut self, nqn: &Nqn, controller: &str) {
        if let Some(all) = self.controllers.get_mut(nqn) {
            all.remove(controller);
            if all.is_empty() {
                self.controllers.remove(nqn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn storm(n: u64) -> Storm {
        Storm {
            count: n,
            message: String::new(),
        }
    }

    #[test]
    fn storm_for_finds_the_device_then_the_deepest_storm_at_or_above_a_path() {
        let mut f = Facts::default();
        let dev = rds_types::DevNum::new(259, 1);
        assert!(f.storm_for(&dev, [Path::new("/a/b/c")]).is_none());
        f.storms
            .insert(StormKey::MountPoint(PathBuf::from("/a")), storm(1));
        f.storms
            .insert(StormKey::MountPoint(PathBuf::from("/a/b")), storm(2));
        f.storms
            .insert(StormKey::MountPoint(PathBuf::from("/x/y")), storm(3));
        fn at(f: &Facts, dev: &rds_types::DevNum, p: &str) -> Option<u64> {
            f.storm_for(dev, [Path::new(p)]).map(|(_, s)| s.count)
        }
        assert_eq!(at(&f, &dev, "/a/b/c"), Some(2));
        assert_eq!(at(&f, &dev, "/a/b"), Some(2));
        // Component-wise: /a/bc is under /a, not under /a/b.
        assert_eq!(at(&f, &dev, "/a/bc"), Some(1));
        assert_eq!(at(&f, &dev, "/x"), None);
        assert_eq!(at(&f, &dev, "/z/a/b"), None);
        // The first path with a storm wins, as given.
        let first = f
            .storm_for(
                &dev,
                [Path::new("/q"), Path::new("/x/y/z"), Path::new("/a/b")],
            )
            .map(|(_, s)| s.count);
        assert_eq!(first, Some(3));
        // A storm on the device itself comes before any path.
        f.storms.insert(StormKey::Device(dev), storm(4));
        assert_eq!(at(&f, &dev, "/a/b/c"), Some(4));
    }
}
