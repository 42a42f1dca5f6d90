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

/// What a guard covers: a volume ID, and for the operations that claim them, the staging path
/// and the NQN, so that no two volumes ever share either, even concurrently.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuardKey {
    Volume(String),
    /// A staging path or a publish target.
    Path(std::path::PathBuf),
    Nqn(String),
}

impl GuardKey {
    fn describe(&self) -> String {
        match self {
            GuardKey::Volume(v) => format!("volume {v}"),
            GuardKey::Path(p) => format!("path {}", p.display()),
            GuardKey::Nqn(n) => format!("subsystem {n}"),
        }
    }
}

/// One lock per key. Cheap to clone; every clone guards the same keys. An entry lives only
/// while an operation holds or waits for it.
#[derive(Debug, Clone, Default)]
pub struct VolumeGuards {
    slots: Arc<DashMap<GuardKey, Arc<Slot>>>,
}

/// Held for the duration of one operation; released (and its entries dropped when no other
/// operation waits on them) when dropped.
#[derive(Debug)]
pub struct VolumeGuard {
    held: Vec<(GuardKey, Arc<Slot>, OwnedMutexGuard<()>)>,
    slots: Arc<DashMap<GuardKey, Arc<Slot>>>,
    volume_id: String,
}

impl VolumeGuard {
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        for (key, slot, lock) in self.held.drain(..) {
            drop(lock);
            drop(slot);
            // The map's own reference is the last one: nobody holds or waits for it.
            self.slots.remove_if(&key, |_, s| Arc::strong_count(s) == 1);
        }
    }
}

impl VolumeGuards {
    fn slot(&self, key: &GuardKey) -> Arc<Slot> {
        self.slots.entry(key.clone()).or_default().clone()
    }

    /// The number of entries (held or waited for), for tests and metrics.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn release_unused(&self, key: &GuardKey, slot: Arc<Slot>) {
        drop(slot);
        self.slots.remove_if(key, |_, s| Arc::strong_count(s) == 1);
    }

    /// Take the guard now, or fail with Aborted naming the operation in progress.
    pub fn try_acquire(&self, volume_id: &str, op: &'static str) -> Result<VolumeGuard, NodeError> {
        self.try_acquire_all(volume_id, &[], op)
    }

    /// Take the volume's guard and the guards of `also` (its staging path, its NQN) now, all
    /// or none; a key held by another operation fails with Aborted naming it.
    pub fn try_acquire_all(
        &self,
        volume_id: &str,
        also: &[GuardKey],
        op: &'static str,
    ) -> Result<VolumeGuard, NodeError> {
        let mut keys: Vec<GuardKey> = std::iter::once(GuardKey::Volume(volume_id.to_owned()))
            .chain(also.iter().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        let mut guard = VolumeGuard {
            held: Vec::with_capacity(keys.len()),
            slots: self.slots.clone(),
            volume_id: volume_id.to_owned(),
        };
        for key in keys {
            let slot = self.slot(&key);
            match slot.lock.clone().try_lock_owned() {
                Ok(g) => {
                    *slot.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
                    guard.held.push((key, slot, g));
                }
                Err(_) => {
                    let holder = *slot.op.lock().unwrap_or_else(|p| p.into_inner());
                    self.release_unused(&key, slot);
                    return Err(match key {
                        GuardKey::Volume(v) => NodeError::Aborted {
                            volume_id: v,
                            op: holder,
                        },
                        other => NodeError::AbortedOn {
                            what: other.describe(),
                            op: holder,
                        },
                    });
                }
            }
        }
        Ok(guard)
    }

    /// Wait for the guard (recovery), up to `deadline`.
    pub async fn acquire(
        &self,
        volume_id: &str,
        op: &'static str,
        deadline: Duration,
    ) -> Result<VolumeGuard, NodeError> {
        let key = GuardKey::Volume(volume_id.to_owned());
        let slot = self.slot(&key);
        let g = match tokio::time::timeout(deadline, slot.lock.clone().lock_owned()).await {
            Ok(g) => g,
            Err(_) => {
                self.release_unused(&key, slot);
                return Err(NodeError::DeadlineExceeded(format!(
                    "volume {volume_id} stayed busy for {} ({op} could not start)",
                    humantime::format_duration(deadline)
                )));
            }
        };
        *slot.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
        Ok(VolumeGuard {
            held: vec![(key, slot, g)],
            slots: self.slots.clone(),
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
        assert!(g.is_empty(), "no entry outlives its operations");
    }

    #[tokio::test]
    async fn a_staging_path_or_nqn_is_claimed_by_one_volume_at_a_time() {
        let g = VolumeGuards::default();
        let path = GuardKey::Path("/k/plugins/kubernetes.io/csi/pv/a/globalmount".into());
        let nqn = GuardKey::Nqn("nqn.2000-02.com.mikrotik:pvc-a".into());
        let held = g
            .try_acquire_all("pvc-a", &[path.clone(), nqn.clone()], "NodeStageVolume")
            .unwrap();
        for also in [vec![path.clone()], vec![nqn.clone()]] {
            match g.try_acquire_all("pvc-b", &also, "NodeStageVolume") {
                Err(NodeError::AbortedOn { op, .. }) => assert_eq!(op, "NodeStageVolume"),
                other => panic!("expected Aborted, got {other:?}"),
            }
        }
        assert!(
            g.try_acquire("pvc-b", "NodeUnstageVolume").is_ok(),
            "a failed claim leaves nothing held"
        );
        drop(held);
        assert!(g.is_empty(), "entries dropped when unused");
    }

    #[test]
    fn distinct_unknown_ids_leave_no_entries() {
        let g = VolumeGuards::default();
        for i in 0..10_000 {
            drop(
                g.try_acquire(&format!("pvc-{i}"), "NodeUnpublishVolume")
                    .unwrap(),
            );
        }
        assert_eq!(g.len(), 0);
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
