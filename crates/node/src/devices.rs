//! The seam between the node service and the device watcher: where a volume's namespace is now.

use std::time::Duration;

use rds_types::{BlockIdentity, NamespaceIds, Nqn};

/// The namespace block device an NQN resolves to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsDevice {
    /// Block device name, e.g. `nvme0n1` (its node is `<dev-root>/<name>`).
    pub name: String,
    pub nsid: Option<u32>,
    pub identity: BlockIdentity,
    /// What the target says the namespace is.
    pub ids: NamespaceIds,
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no block device for {nqn} appeared within {}", humantime::format_duration(*.waited))]
    Timeout { nqn: Nqn, waited: Duration },
    #[error("the device watcher stopped: {0}")]
    Stopped(String),
}

/// Answers from the device watcher's model: O(1), never a sysfs scan on the caller's path.
#[tonic::async_trait]
pub trait NamespaceSource: Send + Sync + 'static {
    /// The namespace device of `nqn` now, if any.
    fn resolve(&self, nqn: &Nqn) -> Option<NsDevice>;
    /// The subsystem NQN of the namespace that is block device `dev` now, if it is one.
    fn nqn_of(&self, dev: rds_types::DevNum) -> Option<Nqn>;
    /// Wait for the namespace's device, woken by the kernel's event (no sleep loop).
    async fn wait_for(&self, nqn: &Nqn, deadline: Duration) -> Result<NsDevice, WaitError>;
    /// Wait for the namespace to resolve to a device other than `old` (a reconnect), woken
    /// by the kernel's events: recovery must not mistake the dead incarnation, still in the
    /// model until its `remove` event is processed, for the new one.
    async fn wait_for_replacement(
        &self,
        nqn: &Nqn,
        old: BlockIdentity,
        deadline: Duration,
    ) -> Result<NsDevice, WaitError>;
}

/// The device watcher's handle is the production source.
#[tonic::async_trait]
impl NamespaceSource for rds_devices::DeviceWatcherHandle {
    fn nqn_of(&self, dev: rds_types::DevNum) -> Option<Nqn> {
        let ns = rds_devices::DeviceWatcherHandle::block(self, dev)?.nvme?;
        Nqn::parse(&ns.nqn).ok()
    }

    fn resolve(&self, nqn: &Nqn) -> Option<NsDevice> {
        rds_devices::DeviceWatcherHandle::resolve(self, nqn, None).map(from_watcher)
    }

    async fn wait_for(&self, nqn: &Nqn, deadline: Duration) -> Result<NsDevice, WaitError> {
        self.wait_until(deadline, |m| m.resolve(nqn.as_str(), None))
            .await
            .map(from_watcher)
            .map_err(|stopped| {
                if stopped {
                    WaitError::Stopped(format!("while waiting for {nqn}"))
                } else {
                    WaitError::Timeout {
                        nqn: nqn.clone(),
                        waited: deadline,
                    }
                }
            })
    }

    async fn wait_for_replacement(
        &self,
        nqn: &Nqn,
        old: BlockIdentity,
        deadline: Duration,
    ) -> Result<NsDevice, WaitError> {
        self.wait_until(deadline, |m| {
            m.resolve(nqn.as_str(), None)
                .filter(|d| !d.identity.same_device(&old))
        })
        .await
        .map(from_watcher)
        .map_err(|stopped| {
            if stopped {
                WaitError::Stopped(format!("while waiting for a new device of {nqn}"))
            } else {
                WaitError::Timeout {
                    nqn: nqn.clone(),
                    waited: deadline,
                }
            }
        })
    }
}

fn from_watcher(d: rds_devices::NamespaceDevice) -> NsDevice {
    // The node is `<dev-root>/<kernel name>`: names and DEVNAME from udev may carry the
    // sender's dev root, so keep only the last component.
    let name = std::path::Path::new(&d.name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(d.name);
    NsDevice {
        name,
        nsid: Some(d.nsid),
        identity: d.identity,
        ids: d.ids,
    }
}
