//! Prometheus metrics of the node plugin.
//!
//! [`Metrics`] owns one [`prometheus_client`] registry (every name prefixed `rds_csi_`) and has
//! one method per event the monitor, the executor and the CSI handlers report. Every method
//! takes `&self` and costs an atomic add, or for labelled families a read-locked hash lookup
//! (a short uncontended lock, never held across an await): they are safe to call from the
//! monitor's event loop. Share it as `Arc<Metrics>`.
//!
//! [`serve`] exposes the registry on `--metrics-address` (`GET /metrics`, OpenMetrics text
//! format, [`CONTENT_TYPE`]); the endpoint is off unless the caller starts it.
//!
//! Label values that come from other crates' enums (`ConditionKind::as_str`,
//! CSI rpc names) are `&'static str`: the lookup key is then built without allocating.
//! Closed sets owned here ([`RecoveryResult`], [`ResyncSource`], [`ResyncReason`],
//! [`ConnectResult`]) are enums with pre-created series.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod error;
mod http;
mod labels;
mod metrics;

pub use error::MetricsError;
pub use http::{serve, serve_on, CONTENT_TYPE, METRICS_PATH};
pub use labels::{grpc_code_name, ConnectResult, RecoveryResult, ResyncReason, ResyncSource};
pub use metrics::{Metrics, DETECTION_LATENCY_BUCKETS, DURATION_BUCKETS, PREFIX};
