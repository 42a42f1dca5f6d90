//! The node agent of the rds-csi node plugin: the monitor shell (the one owner of the
//! `rds-monitor` state machine, fed by the kernel watchers and the node service), the executor
//! of its actions (conditions, Kubernetes Events, metrics, eviction), the recovery executor,
//! and [`app::run`], which assembles the whole plugin. See docs/ARCHITECTURE.md.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod app;
pub mod metrics;
pub mod monitor;
pub mod notify_thread;
pub mod recovery;
