//! How the node service tells the monitor what it did, and asks it how a volume is.

use std::path::Path;
use std::time::Duration;

use rds_types::{Health, MountKey, Nqn};

use crate::record::VolumeRecord;
use crate::validate::VolumeId;

/// Implemented by the monitor. The notifications wait (briefly) until the monitor has taken
/// them in, so a CSI call that returns has been seen; the queries are O(1) and never block.
#[tonic::async_trait]
pub trait VolumeObserver: Send + Sync + 'static {
    /// A volume was staged; `mount` is its staging mount (`None` for raw block).
    async fn staged(&self, rec: &VolumeRecord, mount: Option<MountKey>);
    /// The node service is about to take the volume's staging mount away (its own unmount is
    /// not a fault).
    async fn unstaged(&self, id: &VolumeId);
    /// A publish was made (or confirmed); `mount` is its bind mount (`None` for a block node).
    async fn published(&self, rec: &VolumeRecord, target: &Path, mount: Option<MountKey>);
    /// The node service is about to take a publish away.
    async fn unpublished(&self, id: &VolumeId, target: &Path);
    /// Staging could not connect the volume's controller.
    async fn connect_failed(&self, id: &VolumeId, nqn: &Nqn, error: &str);
    /// The condition of the volume as seen at `path` (its staging path or a publish target);
    /// `None` when the monitor does not know the volume (yet).
    fn condition(&self, id: &VolumeId, path: &Path) -> Option<Health>;
    /// Resolves once the volume is healthy (woken by the monitor's own change, e.g. its
    /// recovery finishing) or at `deadline`, with the condition then.
    async fn settle(&self, id: &VolumeId, deadline: Duration) -> Option<Health>;
}
