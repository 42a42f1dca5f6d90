//! [`KubeSink`]: posts volume events as Kubernetes Events (events.k8s.io/v1) on the volume's PVC.
//!
//! `post` only does a `try_send` into a bounded queue; one background task does all the talking to
//! the API server, one event at a time, each under a deadline. So a slow or dead API server costs
//! the callers (the monitor task, the CSI handlers) nothing: the queue fills, further events are
//! dropped and counted, and failures are counted and logged at a bounded rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{self as kev, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

use crate::cache::TtlCache;
use crate::event::{EventSink, EventType, VolumeEvent};
use crate::limits::{truncate, MAX_NOTE, MAX_SHORT_FIELD};
use crate::ratelimit::{is_log_worthy, LogLimiter};
use crate::series::{SeriesBook, SeriesKey};
use crate::stats::SinkStats;
use crate::target::{fetch_pv, target_from_pv, EventTarget};

/// `reportingController` of every event: the CSI driver name.
pub const DEFAULT_REPORTING_CONTROLLER: &str = "rds.csi.srvlab.io";
/// Events waiting for the background task before new ones are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// How long a PV → PVC resolution is reused (a claimRef changes only if the PV is rebound).
pub const DEFAULT_CLAIM_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Deadline for delivering one event (PV lookup plus create/patch), retries by kube included.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// At most one log line per this interval about failing deliveries.
pub const DEFAULT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Event series tracked at once (each holds one kube `Recorder`).
pub const DEFAULT_MAX_SERIES: usize = 4096;

/// Settings of a [`KubeSink`]. Build with [`KubeSinkConfig::new`] and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSinkConfig {
    /// This node's name: the `related` object of every event, and the default reporting instance.
    pub node_name: String,
    /// `reportingController` (at most 128 bytes).
    pub reporting_controller: String,
    /// `reportingInstance` (at most 128 bytes); which node plugin pod said it.
    pub reporting_instance: String,
    /// Bounded queue length between `post` and the background task.
    pub queue_capacity: usize,
    /// Lifetime of a cached PV → PVC resolution.
    pub claim_cache_ttl: Duration,
    /// Deadline for delivering one event.
    pub delivery_timeout: Duration,
    /// Minimum interval between two log lines about failures.
    pub error_log_interval: Duration,
    /// Series tracked at once.
    pub max_series: usize,
}

impl KubeSinkConfig {
    /// Defaults for the node `node_name`; the reporting instance is the node name.
    pub fn new(node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        Self {
            reporting_instance: node_name.clone(),
            node_name,
            reporting_controller: DEFAULT_REPORTING_CONTROLLER.to_owned(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            claim_cache_ttl: DEFAULT_CLAIM_CACHE_TTL,
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            error_log_interval: DEFAULT_ERROR_LOG_INTERVAL,
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

/// Posts [`VolumeEvent`]s to Kubernetes. Cheap to clone; the background task ends once every clone
/// is dropped and the queue is drained.
#[derive(Clone, Debug)]
pub struct KubeSink {
    tx: mpsc::Sender<VolumeEvent>,
    stats: Arc<SinkStats>,
}

impl KubeSink {
    /// Starts the background task on the current Tokio runtime (call from within one) and returns
    /// the sink with the task's handle. Await the handle after dropping every clone of the sink to
    /// let queued events go out before shutdown.
    pub fn spawn(client: Client, config: KubeSinkConfig) -> (KubeSink, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(SinkStats::default());
        let worker = Worker::new(client, &config, stats.clone());
        let task = tokio::spawn(worker.run(rx));
        (KubeSink { tx, stats }, task)
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}

impl EventSink for KubeSink {
    fn post(&self, ev: VolumeEvent) {
        let (ev, why) = match self.tx.try_send(ev) {
            Ok(()) => return,
            Err(TrySendError::Full(ev)) => (ev, "queue full"),
            Err(TrySendError::Closed(ev)) => (ev, "sink stopped"),
        };
        let dropped = self.stats.inc_dropped();
        if is_log_worthy(dropped) {
            tracing::warn!(
                volume.id = %ev.volume_id,
                reason = %ev.reason,
                dropped_total = dropped,
                why,
                "Kubernetes Event dropped"
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("the API server refused or failed the event")]
    Publish(#[source] kube::Error),
    #[error("delivery did not finish within {0:?}")]
    Timeout(Duration),
}

/// The background task's state; owned by that task alone.
struct Worker {
    client: Client,
    reporter: Reporter,
    node_ref: ObjectReference,
    stats: Arc<SinkStats>,
    targets: TtlCache<String, EventTarget>,
    series: SeriesBook<Recorder>,
    delivery_timeout: Duration,
    failure_log: LogLimiter,
    resolve_log: LogLimiter,
}

impl Worker {
    fn new(client: Client, config: &KubeSinkConfig, stats: Arc<SinkStats>) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: truncate(&config.reporting_controller, MAX_SHORT_FIELD),
                instance: Some(truncate(&config.reporting_instance, MAX_SHORT_FIELD)),
            },
            node_ref: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(config.node_name.clone()),
                ..ObjectReference::default()
            },
            stats,
            targets: TtlCache::new(config.claim_cache_ttl, config.max_series),
            series: SeriesBook::new(config.max_series),
            delivery_timeout: config.delivery_timeout,
            failure_log: LogLimiter::new(config.error_log_interval),
            resolve_log: LogLimiter::new(config.error_log_interval),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<VolumeEvent>) {
        while let Some(ev) = rx.recv().await {
            self.handle(ev).await;
        }
        tracing::debug!(stats = ?self.stats.snapshot(), "Kubernetes Event sink stopped");
    }

    async fn handle(&mut self, ev: VolumeEvent) {
        let deadline = self.delivery_timeout;
        let result = match tokio::time::timeout(deadline, self.deliver(&ev)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout(deadline)),
        };
        match result {
            Ok(()) => {
                self.stats.inc_posted();
            }
            Err(err) => {
                let failed = self.stats.inc_failed();
                if let Some(suppressed) = self.failure_log.allow(Instant::now()) {
                    tracing::warn!(
                        volume.id = %ev.volume_id,
                        reason = %ev.reason,
                        error = &err as &dyn std::error::Error,
                        failed_total = failed,
                        suppressed,
                        "could not post Kubernetes Event"
                    );
                }
            }
        }
    }

    async fn deliver(&mut self, ev: &VolumeEvent) -> Result<(), DeliveryError> {
        let now = Instant::now();
        let target = self.target_for(&ev.volume_id, now).await;
        if matches!(target, EventTarget::Volume { .. }) {
            self.stats.inc_unresolved();
        }
        let note = truncate(&ev.note, MAX_NOTE);
        let action = truncate(&ev.action, MAX_SHORT_FIELD);
        let key = SeriesKey {
            target,
            reason: ev.reason,
            type_: ev.type_,
            action: action.clone(),
        };
        let (client, reporter) = (&self.client, &self.reporter);
        let recorder = self.series.publisher_for(&key, &note, now, || {
            Recorder::new(client.clone(), reporter.clone())
        });
        let event = kev::Event {
            type_: match ev.type_ {
                EventType::Normal => kev::EventType::Normal,
                EventType::Warning => kev::EventType::Warning,
            },
            reason: ev.reason.as_str().to_owned(),
            note: Some(note),
            action,
            secondary: Some(self.node_ref.clone()),
        };
        match recorder.publish(&event, &key.target.object_ref()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The next occurrence starts a new event instead of patching one that may not exist.
                self.series.forget(&key);
                Err(DeliveryError::Publish(e))
            }
        }
    }

    /// The PVC for the PV, from the cache or the API server; the PV itself when it has no claim or
    /// cannot be read (the event still reaches `kubectl get events`, if not `describe pvc`).
    async fn target_for(&mut self, pv_name: &str, now: Instant) -> EventTarget {
        if let Some(t) = self.targets.get(&pv_name.to_owned(), now) {
            return t.clone();
        }
        match fetch_pv(&self.client, pv_name).await {
            Ok(pv) => {
                let t = target_from_pv(pv_name, &pv);
                self.targets.insert(pv_name.to_owned(), t.clone(), now);
                t
            }
            Err(err) => {
                if let Some(suppressed) = self.resolve_log.allow(now) {
                    tracing::warn!(
                        volume.id = %pv_name,
                        error = &err as &dyn std::error::Error,
                        suppressed,
                        "could not read the PersistentVolume to find its claim; \
                         attaching the event to the PersistentVolume"
                    );
                }
                EventTarget::Volume {
                    name: pv_name.to_owned(),
                    uid: None,
                }
            }
        }
    }
}
