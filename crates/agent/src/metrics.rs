//! The metrics registry (`rds-metrics`) plugged into the seams that feed it: the monitor task,
//! the CSI handlers and the node service's connects.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use rds_metrics::Metrics;

use crate::monitor::MonitorMetrics;
use rds_node::grpc::RpcObserver;

/// The registry as every seam's observer (the seams' traits live in the layers that call them).
#[derive(Clone)]
pub struct MetricsSink(pub Arc<Metrics>);

impl Deref for MetricsSink {
    type Target = Metrics;
    fn deref(&self) -> &Metrics {
        &self.0
    }
}

impl MonitorMetrics for MetricsSink {
    fn metric(&self, m: &rds_monitor::MetricEvent) {
        use rds_monitor::MetricEvent as M;
        use rds_monitor::RecoveryResult as R;
        match m {
            M::Detection { kind, latency } => {
                self.stale_detected(kind.as_str());
                if let Some(l) = latency {
                    self.detection_latency(kind.as_str(), *l);
                }
            }
            M::Recovery { result: R::Started } => self.recovery_started(),
            // Durations of attempts are recorded where they are measured (the task).
            M::Recovery {
                result: R::Exhausted,
            } => self.recovery_finished(R::Exhausted, Duration::ZERO),
            M::Recovery { .. } => {}
            M::StormStarted { .. } => self.mount_storm_started(),
            M::StormCleared { .. } => self.mount_storm_cleared(),
            M::Ignored { .. } => {}
        }
    }

    fn recovery_attempt(&self, succeeded: bool, elapsed: Duration) {
        let r = if succeeded {
            rds_types::RecoveryResult::Succeeded
        } else {
            rds_types::RecoveryResult::Failed
        };
        self.recovery_finished(r, elapsed);
    }

    fn conditions(&self, counts: &[(&'static str, u64)]) {
        self.set_conditions(counts);
    }

    fn mount_event(&self) {
        self.mount_events_processed(1);
    }

    fn device_event(&self) {
        self.uevents_processed(1);
    }

    fn device_events_dropped(&self, n: u64) {
        self.uevents_dropped(n);
    }

    fn mount_table_size(&self, n: usize) {
        self.set_mount_table_size(n as u64);
    }

    fn resync(&self, source: rds_metrics::ResyncSource, reason: rds_metrics::ResyncReason) {
        Metrics::resync(&self.0, source, reason);
    }

    fn events_sink(&self, posted: u64, dropped: u64, failed: u64) {
        self.set_events(posted, dropped, failed);
    }
}

impl RpcObserver for MetricsSink {
    fn rpc_done(&self, rpc: &'static str, code: tonic::Code, elapsed: Duration) {
        self.csi_operation(rpc, code as i32, elapsed);
    }
}

impl rds_node::ConnectObserver for MetricsSink {
    fn connect_done(&self, ok: bool, timed_out: bool, elapsed: Duration) {
        let r = match (ok, timed_out) {
            (true, _) => rds_metrics::ConnectResult::Succeeded,
            (false, true) => rds_metrics::ConnectResult::TimedOut,
            (false, false) => rds_metrics::ConnectResult::Failed,
        };
        self.nvme_connect(r, elapsed);
    }
}
