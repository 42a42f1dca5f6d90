//! The shell's seams onto the rest of the process: each a small trait with one production
//! implementation here and fakes in the tests (which drive the shell with paused time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rds_monitor::{ControllerFacts, NamespaceFacts, RecoveryReason, RecoveryReport};
use rds_types::{DevNum, Nqn, VolumeId};

/// The device watcher's model, read for a resync (in memory, no sysfs).
pub trait DeviceModel: Send + Sync + 'static {
    fn snapshot(&self, nqns: &[Nqn]) -> (Vec<NamespaceFacts>, Vec<ControllerFacts>);
}

impl DeviceModel for rds_devices::DeviceWatcherHandle {
    fn snapshot(&self, nqns: &[Nqn]) -> (Vec<NamespaceFacts>, Vec<ControllerFacts>) {
        let mut namespaces = Vec::new();
        let mut controllers = Vec::new();
        for nqn in nqns {
            if let Some(ns) = self.resolve(nqn, None) {
                namespaces.push(NamespaceFacts {
                    nqn: nqn.clone(),
                    nsid: ns.nsid,
                    name: ns.name,
                    identity: ns.identity,
                    ids: ns.ids,
                });
            }
            for c in self.controllers_for(nqn) {
                controllers.push(ControllerFacts {
                    nqn: nqn.clone(),
                    controller: c.name.clone(),
                    state: c.state.clone(),
                });
            }
        }
        (namespaces, controllers)
    }
}

/// The mount watcher's list of mounts re-read on every remount wake-up (in memory).
pub trait MountTracker: Send + Sync + 'static {
    fn track(&self, id: u32);
    fn untrack(&self, id: u32);
}

impl MountTracker for rds_mounts::watch::WatcherHandle {
    fn track(&self, id: u32) {
        rds_mounts::watch::WatcherHandle::track(self, id)
    }
    fn untrack(&self, id: u32) {
        rds_mounts::watch::WatcherHandle::untrack(self, id)
    }
}

/// `FAN_FS_ERROR` marks. Blocking (a path lookup and a mark): the shell runs these off its
/// loop, in order.
pub trait FsWatcher: Send + Sync + 'static {
    fn watch(&self, mount_point: &Path, dev: DevNum) -> Result<(), String>;
    fn unwatch(&self, dev: DevNum) -> Result<(), String>;
}

impl FsWatcher for rds_fserror::FsErrorHandle {
    fn watch(&self, mount_point: &Path, dev: DevNum) -> Result<(), String> {
        rds_fserror::FsErrorHandle::watch(self, mount_point, dev)
            .map(|_| ())
            .map_err(|e| rds_types::error_chain(&e))
    }
    fn unwatch(&self, dev: DevNum) -> Result<(), String> {
        rds_fserror::FsErrorHandle::unwatch(self, dev)
            .map(|_| ())
            .map_err(|e| rds_types::error_chain(&e))
    }
}

/// A failed recovery attempt: what happened, and whether retrying could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFailure {
    pub error: String,
    pub final_: bool,
}

/// Carries out `Recover` actions.
#[tonic::async_trait]
pub trait RecoveryRunner: Send + Sync + 'static {
    async fn recover(
        &self,
        volume_id: &VolumeId,
        reason: &RecoveryReason,
    ) -> Result<RecoveryReport, RecoveryFailure>;
}

/// Deletes the pods behind publish targets (opt-in); returns a note for the Event.
#[tonic::async_trait]
pub trait Evictor: Send + Sync + 'static {
    async fn evict(&self, volume_id: &VolumeId, targets: &[PathBuf]) -> String;
}

/// Eviction through the Kubernetes API (respects PodDisruptionBudgets).
pub struct KubeEvictor {
    pub client: kube::Client,
    pub node_name: String,
    /// Where the API calls run: the process's runtime, with the Events poster, not the
    /// notification thread (connects, TLS and JSON decoding are not detection work).
    pub runtime: tokio::runtime::Handle,
}

#[tonic::async_trait]
impl Evictor for KubeEvictor {
    async fn evict(&self, volume_id: &VolumeId, _targets: &[PathBuf]) -> String {
        let (client, node) = (self.client.clone(), self.node_name.clone());
        let pv = volume_id.as_str().to_owned();
        let mut job = self
            .runtime
            .spawn(async move { evict_pods(&client, &node, &pv).await });
        // Aborted with the shell's task (at shutdown), as it was when it ran there.
        let _abort = AbortOnDrop(job.abort_handle());
        (&mut job)
            .await
            .unwrap_or_else(|e| format!("The eviction task failed: {e}."))
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn evict_pods(client: &kube::Client, node_name: &str, pv: &str) -> String {
    match rds_events::resolve_claim(client, pv).await {
        Ok(Some(claim)) => {
            match rds_events::evict_pods_using_pvc(client, node_name, &claim.namespace, &claim.name)
                .await
            {
                Ok(o) => format!(
                    "Evicted the pods holding the dead filesystem so their controllers \
                     recreate them on the healed volume: {:?}; refused: {:?}.",
                    o.evicted,
                    o.refused.iter().map(|r| &r.pod).collect::<Vec<_>>()
                ),
                Err(e) => format!("Evicting the pods holding the dead filesystem failed: {e}."),
            }
        }
        Ok(None) => "No PVC is bound to this volume; nothing to evict.".to_owned(),
        Err(e) => format!("Cannot read the PV to find its PVC: {e}."),
    }
}

/// Counters the shell feeds (implemented by the metrics registry).
pub trait MonitorMetrics: Send + Sync + 'static {
    fn metric(&self, m: &rds_monitor::MetricEvent);
    /// One recovery attempt ended.
    fn recovery_attempt(&self, succeeded: bool, elapsed: Duration);
    fn conditions(&self, counts: &[(&'static str, u64)]);
    fn mount_event(&self);
    fn device_event(&self);
    /// Device events the watcher had to drop because the monitor fell behind.
    fn device_events_dropped(&self, n: u64);
    fn mount_table_size(&self, n: usize);
    fn resync(&self, source: rds_metrics::ResyncSource, reason: rds_metrics::ResyncReason);
    /// The Kubernetes Events sink's own counters.
    fn events_sink(&self, posted: u64, dropped: u64, failed: u64);
}

/// Everything the shell acts through.
#[derive(Clone)]
pub struct Seams {
    pub devices: Arc<dyn DeviceModel>,
    pub mounts: Arc<dyn MountTracker>,
    pub fs_errors: Option<Arc<dyn FsWatcher>>,
    pub io: crate::monitor::io::IoWatchSet,
    pub events: Arc<dyn rds_events::EventSink>,
    pub recovery: Option<Arc<dyn RecoveryRunner>>,
    pub evictor: Option<Arc<dyn Evictor>>,
    pub metrics: Option<Arc<dyn MonitorMetrics>>,
}
