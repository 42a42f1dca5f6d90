//! The published conditions: what NodeGetVolumeStats and the node service read, in O(1).
//!
//! One writer (the monitor shell) replaces a volume's whole report at once, after the machine
//! has processed an event: a reader never sees the volume's new condition beside a publish's
//! old one. Waiters are woken by the change itself (a generation counter), never by polling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rds_types::{Health, VolumeId};

/// A staged volume's condition and each of its publishes' conditions, as of one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeReport {
    pub volume: Health,
    pub targets: BTreeMap<PathBuf, Health>,
    /// When the report went into the map (set by [`Conditions::publish`]): from this instant
    /// NodeGetVolumeStats answers it. For measuring detection, never for decisions.
    pub published: std::time::Instant,
}

impl VolumeReport {
    /// The condition at `path`: the publish's when `path` is one of its targets, else the
    /// volume's (its staging path, or a path kubelet derives from it).
    pub fn at(&self, path: &Path) -> &Health {
        self.targets.get(path).unwrap_or(&self.volume)
    }
}

/// Cheap to clone; every clone reads the same map.
#[derive(Debug, Clone)]
pub struct Conditions {
    map: Arc<DashMap<VolumeId, Arc<VolumeReport>>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            map: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Conditions {
    pub fn report(&self, id: &VolumeId) -> Option<Arc<VolumeReport>> {
        self.map.get(id).map(|r| r.clone())
    }

    /// The condition of the volume at `path` (see [`VolumeReport::at`]).
    pub fn at(&self, id: &VolumeId, path: &Path) -> Option<Health> {
        self.map.get(id).map(|r| r.at(path).clone())
    }

    pub fn volume(&self, id: &VolumeId) -> Option<Health> {
        self.map.get(id).map(|r| r.volume.clone())
    }

    /// Replace (or, with `None`, drop) a volume's report, then wake the waiters.
    pub(crate) fn publish(&self, id: &VolumeId, report: Option<VolumeReport>) {
        match report {
            Some(mut r) => {
                r.published = std::time::Instant::now();
                self.map.insert(id.clone(), Arc::new(r));
            }
            None => {
                self.map.remove(id);
            }
        }
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wait until the condition at `path` (or the volume's, with `None`) satisfies `pred`:
    /// checked now and after every change, up to `deadline`. On timeout, the last one seen.
    pub async fn wait_for(
        &self,
        id: &VolumeId,
        path: Option<&Path>,
        deadline: Duration,
        pred: impl Fn(&Health) -> bool,
    ) -> Result<Health, Option<Health>> {
        let current = || match path {
            Some(p) => self.at(id, p),
            None => self.volume(id),
        };
        // Subscribe before the first check so no change falls in between.
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if let Some(c) = current().filter(|c| pred(c)) {
                    return Ok(c);
                }
                if rx.changed().await.is_err() {
                    return Err(());
                }
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(Ok(c)) => Ok(c),
            _ => Err(current()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_types::ConditionKind;
    use std::time::SystemTime;

    fn h(kind: ConditionKind) -> Health {
        Health {
            kind,
            message: kind.as_str().into(),
            since: SystemTime::UNIX_EPOCH,
        }
    }

    fn id() -> VolumeId {
        VolumeId::parse("pvc-1").unwrap()
    }

    #[test]
    fn a_path_that_is_not_a_target_reads_the_volume_condition() {
        let c = Conditions::default();
        c.publish(
            &id(),
            Some(VolumeReport {
                volume: h(ConditionKind::DeviceReplaced),
                targets: [("/pod".into(), h(ConditionKind::Healthy))].into(),
                published: std::time::Instant::now(),
            }),
        );
        assert_eq!(
            c.at(&id(), Path::new("/pod")).unwrap().kind,
            ConditionKind::Healthy
        );
        assert_eq!(
            c.at(&id(), Path::new("/staging")).unwrap().kind,
            ConditionKind::DeviceReplaced
        );
        c.publish(&id(), None);
        assert!(c.at(&id(), Path::new("/pod")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_the_change_and_times_out_with_the_last_condition() {
        let c = Conditions::default();
        let c2 = c.clone();
        let w = tokio::spawn(async move {
            c2.wait_for(
                &id(),
                Some(Path::new("/pod")),
                Duration::from_secs(5),
                |h| h.kind == ConditionKind::MountMissing,
            )
            .await
        });
        tokio::task::yield_now().await;
        c.publish(
            &id(),
            Some(VolumeReport {
                volume: h(ConditionKind::Healthy),
                targets: [("/pod".into(), h(ConditionKind::MountMissing))].into(),
                published: std::time::Instant::now(),
            }),
        );
        assert_eq!(w.await.unwrap().unwrap().kind, ConditionKind::MountMissing);
        let r = c
            .wait_for(&id(), None, Duration::from_secs(1), |h| h.abnormal())
            .await;
        assert_eq!(r.unwrap_err().map(|h| h.kind), Some(ConditionKind::Healthy));
    }
}
