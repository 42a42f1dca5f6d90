//! Counters of what happened to posted events, shared with the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lock-free counters; every event handed to `post` ends in exactly one of `posted`, `dropped` or
/// `failed` (once the background task has dealt with it).
#[derive(Debug, Default)]
pub struct SinkStats {
    posted: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    unresolved: AtomicU64,
}

/// A consistent-enough copy of [`SinkStats`] for logging and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Accepted by the API server (a create, or a series patch).
    pub posted: u64,
    /// Dropped because the queue was full or the sink was shut down.
    pub dropped: u64,
    /// Could not be delivered (API error, transport error, deadline).
    pub failed: u64,
    /// Of the posted and failed ones, how many could not be tied to their PVC and were attached to
    /// the PersistentVolume instead (PV lookup failed, or the PV has no claim).
    pub unresolved: u64,
}

impl SinkStats {
    /// Events accepted by the API server.
    pub fn posted(&self) -> u64 {
        self.posted.load(Ordering::Relaxed)
    }
    /// Events dropped before delivery (queue full or sink closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Events whose delivery failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Events attached to the PV because the claim was unknown.
    pub fn unresolved(&self) -> u64 {
        self.unresolved.load(Ordering::Relaxed)
    }
    /// All counters at once.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            posted: self.posted(),
            dropped: self.dropped(),
            failed: self.failed(),
            unresolved: self.unresolved(),
        }
    }

    pub(crate) fn inc_posted(&self) -> u64 {
        self.posted.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn inc_dropped(&self) -> u64 {
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn inc_failed(&self) -> u64 {
        self.failed.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn inc_unresolved(&self) -> u64 {
        self.unresolved.fetch_add(1, Ordering::Relaxed) + 1
    }
}
