//! The per-volume operation guard, shared by the CSI handlers and recovery.
//!
//! A CSI call that finds its volume busy fails at once with Aborted (kubelet retries); recovery
//! waits its turn with a deadline. The guard is released when the returned value is dropped,
//! whatever path the operation took.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::NodeError;

#[derive(Debug, Default)]
struct Slot {
    /// Name of the operation holding the lock, for the Aborted message.
    op: std::sync::Mutex<&'static str>,
    lock: Arc<Mutex<()>>,
}

/// One lock per volume ID. Cheap to clone; every clone guards the same volumes.
#[derive(Debug, Clone, Default)]
pub struct VolumeGuards {
    slots: Arc<DashMap<String, Arc<Slot>>>,
}

/// Held for the duration of one operation on one volume.
#[derive(Debug)]
pub struct VolumeGuard {
    _lock: OwnedMutexGuard<()>,
    volume_id: String,
}

impl VolumeGuard {
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }
}

impl VolumeGuards {
    fn slot(&self, volume_id: &str) -> Arc<Slot> {
        self.slots.entry(volume_id.to_owned()).or_default().clone()
    }

    /// Take the guard now, or fail with Aborted naming the operation in progress.
    pub fn try_acquire(&self, volume_id: &str, op: &'static str) -> Result<VolumeGuard, NodeError> {
        let slot = self.slot(volume_id);
        match slot.lock.clone().try_lock_owned() {
            Ok(g) => {
                *slot.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
                Ok(VolumeGuard {
                    _lock: g,
                    volume_id: volume_id.to_owned(),
                })
            }
            Err(_) => {
                let holder = *slot.op.lock().unwrap_or_else(|p| p.into_inner());
                Err(NodeError::Aborted {
                    volume_id: volume_id.to_owned(),
                    op: holder,
                })
            }
        }
    }

    /// Wait for the guard (recovery), up to `deadline`.
    pub async fn acquire(
        &self,
        volume_id: &str,
        op: &'static str,
        deadline: Duration,
    ) -> Result<VolumeGuard, NodeError> {
        let slot = self.slot(volume_id);
        let g = tokio::time::timeout(deadline, slot.lock.clone().lock_owned())
            .await
            .map_err(|_| {
                NodeError::DeadlineExceeded(format!(
                    "volume {volume_id} stayed busy for {} ({op} could not start)",
                    humantime::format_duration(deadline)
                ))
            })?;
        *slot.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
        Ok(VolumeGuard {
            _lock: g,
            volume_id: volume_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_operation_on_a_busy_volume_is_aborted_naming_the_first() {
        let g = VolumeGuards::default();
        let held = g.try_acquire("pvc-1", "NodeStageVolume").unwrap();
        match g.try_acquire("pvc-1", "NodePublishVolume") {
            Err(NodeError::Aborted { op, .. }) => assert_eq!(op, "NodeStageVolume"),
            other => panic!("expected Aborted, got {other:?}"),
        }
        assert!(
            g.try_acquire("pvc-2", "NodeStageVolume").is_ok(),
            "other volumes are independent"
        );
        drop(held);
        assert!(
            g.try_acquire("pvc-1", "NodePublishVolume").is_ok(),
            "released on drop"
        );
    }

    #[tokio::test]
    async fn recovery_waits_for_the_guard_and_gives_up_at_its_deadline() {
        let g = VolumeGuards::default();
        let held = g.try_acquire("pvc-1", "NodeUnstageVolume").unwrap();
        let r = g
            .acquire("pvc-1", "recovery", Duration::from_millis(20))
            .await;
        assert!(matches!(r, Err(NodeError::DeadlineExceeded(_))), "{r:?}");
        let g2 = g.clone();
        let waiter = tokio::spawn(async move {
            g2.acquire("pvc-1", "recovery", Duration::from_secs(30))
                .await
                .map(|_| ())
        });
        drop(held);
        waiter
            .await
            .unwrap()
            .expect("recovery gets the guard once the CSI call finishes");
    }
}
