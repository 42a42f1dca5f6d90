//! Deadlines the machine asked to be woken for. Firing is state-based: a timer only says
//! "re-evaluate these volumes now", so a stale or duplicate timer is harmless.

use std::collections::{BTreeMap, BTreeSet};

use rds_types::Nqn;

use crate::ids::VolumeId;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    /// The gone-grace of a namespace of this NQN ends.
    Gone(Nqn),
    /// A recovery attempt of this volume is due.
    Recovery(VolumeId),
    /// The stall period of this device's in-flight requests ends.
    Io(rds_types::DevNum),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Timers {
    at: BTreeMap<Timestamp, BTreeSet<TimerKey>>,
}

impl Timers {
    /// Returns true when `at` is a new instant (the caller then asks for a tick).
    pub fn schedule(&mut self, at: Timestamp, key: TimerKey) -> bool {
        let new_instant = !self.at.contains_key(&at);
        self.at.entry(at).or_default().insert(key);
        new_instant
    }

    /// Removes and returns every timer due at or before `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<TimerKey> {
        let mut due = Vec::new();
        while let Some(entry) = self.at.first_entry() {
            if *entry.key() > now {
                break;
            }
            due.extend(entry.remove());
        }
        due
    }

    pub fn next(&self) -> Option<Timestamp> {
        self.at.keys().next().copied()
    }

    pub fn contains(&self, at: Timestamp, key: &TimerKey) -> bool {
        self.at.get(&at).is_some_and(|k| k.contains(key))
    }
}
