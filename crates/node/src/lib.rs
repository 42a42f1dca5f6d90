//! The CSI node service of the rds-csi node plugin: request validation, the one error enum and
//! its gRPC codes, the per-volume guard, the per-volume records, the node service (stage,
//! publish, stats, expand, unpublish, unstage), the thin tonic handlers and the unix-socket
//! server. See docs/ARCHITECTURE.md.
//!
//! Other layers use it through a narrow API: [`NodeService`] (CSI operations, and for
//! recovery: take a volume's guard, read and write its record, resolve its namespace, connect
//! it), [`VolumeObserver`] (what the node service tells the monitor) and [`NamespaceSource`]
//! (what it asks the device watcher).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod authority;
pub mod confine;
pub mod csi;
pub mod defaults;
pub mod devices;
pub mod error;
pub mod grpc;
pub mod guard;
pub mod identity;
pub mod inflight;
pub mod observer;
pub mod options;
pub mod record;
pub mod server;
pub mod service;
pub mod validate;
pub mod volumes;

pub use devices::{NamespaceSource, NsDevice};
pub use error::NodeError;
pub use observer::VolumeObserver;
pub use service::{ConnectObserver, Deadlines, NodeConfig, NodeService};
pub use volumes::Volumes;
