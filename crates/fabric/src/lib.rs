//! The NVMe-oF/TCP fabric layer.
//!
//! - [`Fabric`]: the seam the node service and recovery use (connect, list controllers,
//!   disconnect). Blocking methods: callers run them off the async runtime with a deadline.
//! - [`KernelFabric`]: the real one, over `<dev>/nvme-fabrics` and `<sys>/class/nvme`.
//! - [`EmulatedFabric`]: the same trait on a kernel without NVMe. It writes the NVMe sysfs
//!   layout under an injectable root, backs every namespace with a real loop device, creates the
//!   block device nodes and injects the udev events a real kernel + udev would send.
//! - [`loopdev`]: the loop-device ioctls the emulation is built on.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod emulated;
pub mod kernel;
pub mod loopdev;
pub mod sysfs;

pub use api::{
    ConnectOutcome, ConnectRequest, ControllerInfo, ControllerState, Fabric, FabricError, Transport,
};
pub use emulated::{EmulatedConfig, EmulatedFabric, TargetView};
pub use kernel::KernelFabric;

/// Both fabrics are usable as `Arc<dyn Fabric>` shared across threads.
#[allow(dead_code)]
fn _fabrics_are_object_safe_and_shareable(k: KernelFabric, e: EmulatedFabric) {
    let _: Vec<std::sync::Arc<dyn Fabric>> = vec![std::sync::Arc::new(k), std::sync::Arc::new(e)];
}
