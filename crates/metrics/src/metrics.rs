//! The [`Metrics`] registry and its one-method-per-event recording API.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::error::MetricsError;
use crate::labels::{
    grpc_code_name, recovery_index, ConnectResult, RecoveryResult, ResyncReason, ResyncSource,
};

/// Prefix of every metric name (`rds_csi_…`).
pub const PREFIX: &str = "rds_csi";

/// Buckets (seconds) for kernel-event-to-condition latency: 10 µs to 60 s on a 1-2.5-5 scale.
/// The fast end is the event-driven path (a uevent or fanotify event handled in the same
/// wake-up); the slow end is the periodic fallbacks and grace periods.
pub const DETECTION_LATENCY_BUCKETS: [f64; 21] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets (seconds) for operations that talk to the kernel or the fabric (CSI RPCs, NVMe
/// connects, recoveries): 1 ms to 5 min, since a stage may include a connect, a mkfs or an fsck.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// One `&'static str` label: building the lookup key never allocates.
type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn detection_histogram() -> Histogram {
    Histogram::new(DETECTION_LATENCY_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Saturating conversion for gauges, which prometheus-client stores as `i64`.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The node plugin's metrics. Construct once at start-up, share as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    detection_latency: HistogramFamily<L1>,
    conditions: Family<L1, Gauge>,
    /// Kinds ever given to [`Metrics::set_conditions`], so that a kind missing from the next
    /// snapshot is set to 0 instead of keeping its last value. Only `set_conditions` takes
    /// this lock (one caller, the monitor), so it is never contended.
    condition_kinds_seen: Mutex<Vec<&'static str>>,
    stale_detections: Family<L1, Counter>,
    recoveries: [Counter; 4],
    recovery_duration: Histogram,
    mount_storms: Counter,
    mount_storms_active: Gauge,
    mount_table_entries: Gauge,
    uevents_processed: Counter,
    uevents_dropped: Counter,
    mount_events_processed: Counter,
    mount_events_dropped: Counter,
    /// Indexed `[source][reason]` in the order of the `ALL` arrays.
    resyncs: [[Counter; 3]; 2],
    csi_operations: Family<L2, Counter>,
    csi_operation_duration: HistogramFamily<L1>,
    nvme_connects: [Counter; 3],
    nvme_connect_duration: Histogram,
    orphans_cleaned: Counter,
    kube_events_posted: Counter,
    kube_events_dropped: Counter,
    kube_events_failed: Counter,
}

impl Metrics {
    /// Registers every family under [`PREFIX`] and sets `rds_csi_build_info{version}` to 1.
    /// Series of closed label sets (recovery results, resync sources × reasons, connect
    /// results, Kubernetes event outcomes) exist from the start, at 0, so that `rate()` and
    /// alerts see them before the first event.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        let build_info = Family::<[(&'static str, String); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", version.to_owned())])
            .set(1);
        registry.register(
            "build_info",
            "Build of the node plugin; the value is always 1",
            build_info,
        );

        let detection_latency: HistogramFamily<L1> =
            Family::new_with_constructor(detection_histogram);
        registry.register_with_unit(
            "detection_latency",
            "Time from the kernel event (timestamp of the uevent, mount or fanotify event) to the condition being flagged, by condition kind",
            Unit::Seconds,
            detection_latency.clone(),
        );

        let conditions = Family::<L1, Gauge>::default();
        registry.register(
            "volume_conditions",
            "Volumes (and publishes) currently in each condition, by kind",
            conditions.clone(),
        );

        let stale_detections = Family::<L1, Counter>::default();
        registry.register(
            "stale_detections",
            "Stale or dead volumes detected, by condition kind",
            stale_detections.clone(),
        );

        let recoveries_family = Family::<L1, Counter>::default();
        let recoveries = RecoveryResult::ALL
            .map(|r| recoveries_family.get_or_create_owned(&[("result", r.as_str())]));
        registry.register(
            "recoveries",
            "Volume recoveries, by result (started, succeeded, failed, exhausted)",
            recoveries_family,
        );

        let recovery_duration = duration_histogram();
        registry.register_with_unit(
            "recovery_duration",
            "Duration of finished volume recoveries",
            Unit::Seconds,
            recovery_duration.clone(),
        );

        let mount_storms = Counter::default();
        registry.register(
            "mount_storms",
            "Mount storms detected",
            mount_storms.clone(),
        );
        let mount_storms_active = Gauge::default();
        registry.register(
            "mount_storms_active",
            "Mount storms currently in progress",
            mount_storms_active.clone(),
        );
        let mount_table_entries = Gauge::default();
        registry.register(
            "mount_table_entries",
            "Entries in the monitor's view of the mount table",
            mount_table_entries.clone(),
        );

        let uevents_processed = Counter::default();
        registry.register(
            "uevents_processed",
            "Kernel uevents processed by the device watcher",
            uevents_processed.clone(),
        );
        let uevents_dropped = Counter::default();
        registry.register(
            "uevents_dropped",
            "Kernel uevents lost or dropped before processing (ENOBUFS, full queue)",
            uevents_dropped.clone(),
        );
        let mount_events_processed = Counter::default();
        registry.register(
            "mount_events_processed",
            "Mount-table events processed by the mount watcher",
            mount_events_processed.clone(),
        );
        let mount_events_dropped = Counter::default();
        registry.register(
            "mount_events_dropped",
            "Mount-table events lost or dropped before processing (queue overflow)",
            mount_events_dropped.clone(),
        );

        let resyncs_family = Family::<L2, Counter>::default();
        let resyncs = ResyncSource::ALL.map(|s| {
            ResyncReason::ALL.map(|r| {
                resyncs_family
                    .get_or_create_owned(&[("source", s.as_str()), ("reason", r.as_str())])
            })
        });
        registry.register(
            "resyncs",
            "Full rescans by a watcher, by source (devices, mounts) and reason (overflow, enobufs, startup)",
            resyncs_family,
        );

        let csi_operations = Family::<L2, Counter>::default();
        registry.register(
            "csi_operations",
            "CSI RPCs handled, by rpc and gRPC status code",
            csi_operations.clone(),
        );
        let csi_operation_duration: HistogramFamily<L1> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "csi_operation_duration",
            "Duration of CSI RPCs, by rpc",
            Unit::Seconds,
            csi_operation_duration.clone(),
        );

        let connects_family = Family::<L1, Counter>::default();
        let nvme_connects = ConnectResult::ALL
            .map(|r| connects_family.get_or_create_owned(&[("result", r.as_str())]));
        registry.register(
            "nvme_connects",
            "NVMe/TCP connects, by result",
            connects_family,
        );
        let nvme_connect_duration = duration_histogram();
        registry.register_with_unit(
            "nvme_connect_duration",
            "Duration of NVMe/TCP connects, until the namespace's block device is usable",
            Unit::Seconds,
            nvme_connect_duration.clone(),
        );

        let orphans_cleaned = Counter::default();
        registry.register(
            "orphans_cleaned",
            "Orphaned NVMe controllers or mounts cleaned up",
            orphans_cleaned.clone(),
        );

        let events_family = Family::<L1, Counter>::default();
        let [kube_events_posted, kube_events_dropped, kube_events_failed] =
            ["posted", "dropped", "failed"]
                .map(|r| events_family.get_or_create_owned(&[("result", r)]));
        registry.register(
            "kube_events",
            "Kubernetes Events by result: posted, dropped (queue full or rate-limited), failed (API error)",
            events_family,
        );

        Self {
            registry,
            detection_latency,
            conditions,
            condition_kinds_seen: Mutex::new(Vec::new()),
            stale_detections,
            recoveries,
            recovery_duration,
            mount_storms,
            mount_storms_active,
            mount_table_entries,
            uevents_processed,
            uevents_dropped,
            mount_events_processed,
            mount_events_dropped,
            resyncs,
            csi_operations,
            csi_operation_duration,
            nvme_connects,
            nvme_connect_duration,
            orphans_cleaned,
            kube_events_posted,
            kube_events_dropped,
            kube_events_failed,
        }
    }

    /// The underlying registry, for callers that add their own collectors' output to a scrape.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The whole registry in OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry).map_err(MetricsError::Encode)?;
        Ok(out)
    }

    /// A condition of `kind` was flagged `latency` after the kernel event that revealed it.
    pub fn detection_latency(&self, kind: &'static str, latency: Duration) {
        self.detection_latency
            .get_or_create(&[("kind", kind)])
            .observe(latency.as_secs_f64());
    }

    /// Publishes a snapshot of how many volumes are in each condition. Kinds seen in an
    /// earlier snapshot but absent from this one are set to 0 (the series stays, so a
    /// recovered condition reads 0 rather than its last count). If a kind is listed twice,
    /// the last count wins.
    pub fn set_conditions(&self, counts: &[(&'static str, u64)]) {
        // A poisoned lock only means a panic elsewhere mid-update; the list is still valid.
        let mut seen = self
            .condition_kinds_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for kind in seen.iter() {
            if !counts.iter().any(|(k, _)| k == kind) {
                self.conditions.get_or_create(&[("kind", *kind)]).set(0);
            }
        }
        for &(kind, count) in counts {
            self.conditions
                .get_or_create(&[("kind", kind)])
                .set(gauge_value(count));
            if !seen.contains(&kind) {
                seen.push(kind);
            }
        }
    }

    /// A stale or dead volume was detected (one per transition into the condition).
    pub fn stale_detected(&self, kind: &'static str) {
        self.stale_detections.get_or_create(&[("kind", kind)]).inc();
    }

    /// A recovery started.
    pub fn recovery_started(&self) {
        self.recoveries[recovery_index(RecoveryResult::Started)].inc();
    }

    /// A recovery ended with `result` after `elapsed`. `RecoveryResult::Started` only counts
    /// (there is no duration yet); use [`Metrics::recovery_started`] for clarity.
    pub fn recovery_finished(&self, result: RecoveryResult, elapsed: Duration) {
        self.recoveries[recovery_index(result)].inc();
        if result != RecoveryResult::Started {
            self.recovery_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// A mount storm began: counts it and adds it to the active gauge.
    pub fn mount_storm_started(&self) {
        self.mount_storms.inc();
        self.mount_storms_active.inc();
    }

    /// A mount storm subsided. The active gauge never goes below 0, so an unmatched clear
    /// (e.g. after a resync) cannot leave it negative.
    pub fn mount_storm_cleared(&self) {
        let _ = self.mount_storms_active.inner().fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |v| Some(v.saturating_sub(1).max(0)),
        );
    }

    /// Sets the active-storm gauge from the monitor's state (after a resync).
    pub fn set_active_mount_storms(&self, active: u64) {
        self.mount_storms_active.set(gauge_value(active));
    }

    /// Entries in the monitor's mount table.
    pub fn set_mount_table_size(&self, entries: u64) {
        self.mount_table_entries.set(gauge_value(entries));
    }

    /// `n` uevents were processed (batched per wake-up, or 1).
    pub fn uevents_processed(&self, n: u64) {
        self.uevents_processed.inc_by(n);
    }

    /// `n` uevents were lost or dropped.
    pub fn uevents_dropped(&self, n: u64) {
        self.uevents_dropped.inc_by(n);
    }

    /// `n` mount-table events were processed.
    pub fn mount_events_processed(&self, n: u64) {
        self.mount_events_processed.inc_by(n);
    }

    /// `n` mount-table events were lost or dropped.
    pub fn mount_events_dropped(&self, n: u64) {
        self.mount_events_dropped.inc_by(n);
    }

    /// A watcher did a full rescan.
    pub fn resync(&self, source: ResyncSource, reason: ResyncReason) {
        self.resyncs[source as usize][reason as usize].inc();
    }

    /// A CSI RPC finished with gRPC status `code` (`tonic::Code as i32`) after `elapsed`.
    /// `rpc` is the method name (`"NodeStageVolume"`).
    pub fn csi_operation(&self, rpc: &'static str, code: i32, elapsed: Duration) {
        self.csi_operations
            .get_or_create(&[("rpc", rpc), ("code", grpc_code_name(code))])
            .inc();
        self.csi_operation_duration
            .get_or_create(&[("rpc", rpc)])
            .observe(elapsed.as_secs_f64());
    }

    /// An NVMe/TCP connect ended with `result` after `elapsed`.
    pub fn nvme_connect(&self, result: ConnectResult, elapsed: Duration) {
        self.nvme_connects[result.index()].inc();
        self.nvme_connect_duration.observe(elapsed.as_secs_f64());
    }

    /// `n` orphaned controllers or mounts were cleaned up.
    pub fn orphans_cleaned(&self, n: u64) {
        self.orphans_cleaned.inc_by(n);
    }

    /// Copies the events sink's own running totals. Counters only move forward: a value
    /// lower than the current one (a restarted sink) is ignored rather than breaking `rate()`.
    pub fn set_events(&self, posted: u64, dropped: u64, failed: u64) {
        for (counter, value) in [
            (&self.kube_events_posted, posted),
            (&self.kube_events_dropped, dropped),
            (&self.kube_events_failed, failed),
        ] {
            counter.inner().fetch_max(value, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
