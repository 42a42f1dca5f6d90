//! Event-driven CSI node plugin for NVMe/TCP block storage. See docs/ARCHITECTURE.md.

pub mod app;
pub mod cli;
pub mod csi;
pub mod defaults;
pub mod demo;
pub mod error;
pub mod guard;
pub mod harness;
pub mod identity;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod record;
pub mod recovery;
pub mod scenarios;
pub mod server;
pub mod validate;
pub mod watch;
