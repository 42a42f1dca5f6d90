//! Device watcher for the NVMe/TCP CSI node plugin.
//!
//! Knows, the moment the kernel says so, which NVMe controllers exist and in which state,
//! which namespace block devices they expose, and which device an NQN resolves to now.
//!
//! - [`uevent`]: both uevent wire formats (kernel group 1, libudev group 2), an encoder and a
//!   group-2 injector for synthetic events.
//! - [`model`] (pure), [`scan`] (sysfs reader), [`source`] (netlink sockets), [`watcher`]
//!   (the task and its resolver handle).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]
pub mod kmsg;
pub mod model;
pub mod scan;
pub mod source;
pub mod uevent;
pub mod watcher;

pub use model::{
    BlockInfo, ControllerInfo, ControllerState, DeviceEvent, Model, NamespaceDevice, NvmeNamespace,
    NvmeRole, Observation, Snapshot,
};
pub use source::SourceKind;
pub use watcher::{spawn, DeviceWatcherHandle, Resolver, WaitError, WatchError, WatcherConfig};
