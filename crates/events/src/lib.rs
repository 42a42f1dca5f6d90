//! How the node plugin tells users what happened to their volumes.
//!
//! - [`EventSink`] is the seam the monitor and the CSI handlers post [`VolumeEvent`]s through. It
//!   never blocks. [`KubeSink`] publishes Kubernetes Events (events.k8s.io/v1) on the volume's
//!   **PVC**, in the PVC's namespace, repeats folded into event series; [`NullSink`] is used when
//!   Kubernetes is absent; [`RecordingSink`] serves other crates' tests.
//! - [`connect`] / [`start`] find a client (explicit kubeconfig, in-cluster, `KUBECONFIG`,
//!   `~/.kube/config`) or report that there is none.
//! - [`evict_pods_using_pvc`] is the opt-in eviction of the pods on this node using a PVC.
//!
//! `RBAC.md` in this crate lists exactly the API verbs this code uses.
//!
//! This crate does not choose a Kubernetes API version for k8s-openapi: the final binary does.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod cache;
mod connect;
mod event;
mod evict;
mod kube_sink;
mod limits;
mod ratelimit;
mod recording;
mod series;
mod stats;
mod target;

pub use connect::{
    choose_source, connect, connect_with, start, ClientEnv, ConfigSource, ConnectError, Events,
    EVENTS_DISABLED,
};
pub use event::{EventReason, EventSink, EventType, NullSink, VolumeEvent};
pub use evict::{
    evict_pods_using_pvc, evict_pods_using_pvc_within, pod_uses_claim, pods_to_evict, EvictError,
    EvictionOutcome, RefusedEviction, DEFAULT_EVICTION_TIMEOUT,
};
pub use kube_sink::{
    KubeSink, KubeSinkConfig, DEFAULT_CLAIM_CACHE_TTL, DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_ERROR_LOG_INTERVAL, DEFAULT_MAX_SERIES, DEFAULT_QUEUE_CAPACITY,
    DEFAULT_REPORTING_CONTROLLER,
};
pub use limits::{truncate, MAX_NOTE, MAX_SHORT_FIELD};
pub use recording::RecordingSink;
pub use series::SERIES_TTL;
pub use stats::{SinkStats, StatsSnapshot};
pub use target::{
    claim_of, resolve_claim, target_from_pv, ClaimRef, EventTarget, CLUSTER_SCOPED_EVENT_NAMESPACE,
};
