//! How the node service tells the monitor what it did, and asks it how a volume is.

use std::path::Path;

use crate::record::VolumeRecord;
use crate::validate::VolumeId;

/// A volume's condition as NodeGetVolumeStats reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub abnormal: bool,
    pub message: String,
    /// The volume is known to be dead: statvfs must not be attempted.
    pub dead: bool,
}

impl Condition {
    pub fn healthy() -> Self {
        Self {
            abnormal: false,
            message: "healthy".into(),
            dead: false,
        }
    }
}

/// Implemented by the monitor. Every method is O(1) and never blocks.
pub trait VolumeObserver: Send + Sync + 'static {
    fn staged(&self, rec: &VolumeRecord);
    fn unstaged(&self, id: &VolumeId);
    fn published(&self, rec: &VolumeRecord, target: &Path);
    fn unpublished(&self, id: &VolumeId, target: &Path);
    /// The condition of the volume as seen at `path` (its staging path or a publish target).
    fn condition(&self, id: &VolumeId, path: &Path) -> Condition;
    /// Resolves once the volume is healthy again (woken by the monitor's own change, e.g. its
    /// recovery finishing) or at `deadline`, with the condition then.
    fn settle(&self, id: &VolumeId, deadline: std::time::Duration) -> BoxFuture<Condition>;
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
