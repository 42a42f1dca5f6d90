//! The node service: the domain logic behind the CSI Node RPCs. Handlers in [`grpc`] only
//! validate and map errors; everything that touches the host happens here, off the async
//! runtime and under deadlines.

mod publish;
mod stage;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rds_fabric::{ConnectRequest, Fabric};
use rds_hostops::deadline::run_blocking;
use rds_hostops::inuse::HostRoots;
use rds_types::{ManagedPrefix, Nqn};

pub use crate::devices::{NamespaceSource, NsDevice};
use crate::error::NodeError;
use crate::guard::VolumeGuards;
pub use crate::observer::VolumeObserver;
use crate::validate::Target;
pub use crate::volumes::Volumes;
use rds_mounts::MountView;
pub use stage::check_device_node;
pub use stats::{StatsReply, Usage};

/// Host paths and deadlines the node service works with. Built once from the CLI.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub managed: ManagedPrefix,
    pub roots: HostRoots,
    /// Kubelet's directory (`--kubelet-dir`): every staging path and publish target must be
    /// beneath it, in kubelet's layout ([`crate::confine`]).
    pub kubelet_dir: PathBuf,
    /// Where `hostnqn` and `hostid` live (`/etc/nvme`).
    pub nvme_config_dir: PathBuf,
    pub max_volumes_per_node: i64,
    pub topology_key: String,
    pub deadlines: Deadlines,
}

#[derive(Debug, Clone)]
pub struct Deadlines {
    pub device_wait: Duration,
    pub connect: Duration,
    pub mount: Duration,
    pub unmount_wait: Duration,
    pub mountinfo: Duration,
    pub stats: Duration,
    pub probe: Duration,
    pub mkfs: Duration,
    pub resize: Duration,
    /// How long NodePublishVolume waits for a stale volume's recovery.
    pub publish_recovery: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        use crate::defaults as d;
        Self {
            device_wait: d::DEVICE_WAIT,
            connect: d::CONNECT_TIMEOUT,
            mount: d::MOUNT_TIMEOUT,
            unmount_wait: d::UNMOUNT_WAIT,
            mountinfo: d::MOUNTINFO_TIMEOUT,
            stats: d::STATS_TIMEOUT,
            probe: d::PROBE_TIMEOUT,
            mkfs: d::MKFS_TIMEOUT,
            resize: d::RESIZE_TIMEOUT,
            publish_recovery: d::PUBLISH_RECOVERY_WAIT,
        }
    }
}

/// The node service. Cheap to clone (everything is shared).
#[derive(Clone)]
pub struct NodeService {
    pub(crate) cfg: Arc<NodeConfig>,
    pub(crate) guards: VolumeGuards,
    pub(crate) volumes: Volumes,
    pub(crate) fabric: Arc<dyn Fabric>,
    pub(crate) devices: Arc<dyn NamespaceSource>,
    pub(crate) observer: Arc<dyn VolumeObserver>,
    pub(crate) connects: Option<Arc<dyn ConnectObserver>>,
    pub(crate) kubelet: Arc<crate::confine::KubeletDir>,
    pub(crate) unmounts: crate::inflight::Unmounts,
    pub(crate) last_usage: stats::LastUsage,
}

/// Told the outcome and duration of every NVMe connect (implemented by the metrics).
pub trait ConnectObserver: Send + Sync + 'static {
    /// `ok`: connected; `timed_out`: the write to the fabric did not return in time.
    fn connect_done(&self, ok: bool, timed_out: bool, elapsed: Duration);
}

impl NodeService {
    /// Report every NVMe connect's outcome and duration to `o`.
    pub fn with_connect_observer(mut self, o: Arc<dyn ConnectObserver>) -> Self {
        self.connects = Some(o);
        self
    }

    /// Fails when the kubelet directory cannot be opened.
    pub fn new(
        cfg: NodeConfig,
        volumes: Volumes,
        fabric: Arc<dyn Fabric>,
        devices: Arc<dyn NamespaceSource>,
        observer: Arc<dyn VolumeObserver>,
        guards: VolumeGuards,
    ) -> Result<Self, NodeError> {
        let kubelet = Arc::new(crate::confine::KubeletDir::open(&cfg.kubelet_dir)?);
        Ok(Self {
            cfg: Arc::new(cfg),
            guards,
            volumes,
            fabric,
            devices,
            observer,
            connects: None,
            kubelet,
            unmounts: Default::default(),
            last_usage: Default::default(),
        })
    }

    /// Kubelet's directory, confined (recovery moves and binds only through it).
    pub fn kubelet(&self) -> &Arc<crate::confine::KubeletDir> {
        &self.kubelet
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn guards(&self) -> &VolumeGuards {
        &self.guards
    }

    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    // ---- the narrow API recovery uses ----

    /// Take the volume's guard (the one every CSI call takes), waiting up to `wait`.
    pub async fn acquire_guard(
        &self,
        volume_id: &crate::validate::VolumeId,
        op: &'static str,
        wait: Duration,
    ) -> Result<crate::guard::VolumeGuard, NodeError> {
        self.guards.acquire(volume_id.as_str(), op, wait).await
    }

    /// The volume's record, from memory (no disk IO).
    pub fn record(
        &self,
        volume_id: &crate::validate::VolumeId,
    ) -> Option<crate::record::VolumeRecord> {
        self.volumes.get(volume_id)
    }

    /// The namespace device `nqn` resolves to now (the device watcher's model, O(1)).
    pub fn resolve(&self, nqn: &Nqn) -> Option<NsDevice> {
        self.devices.resolve(nqn)
    }

    /// Wait until `nqn` resolves to a device other than `old` (woken by uevents).
    pub async fn wait_for_replacement(
        &self,
        nqn: &Nqn,
        old: rds_types::BlockIdentity,
    ) -> Result<NsDevice, crate::devices::WaitError> {
        self.devices
            .wait_for_replacement(nqn, old, self.cfg.deadlines.device_wait)
            .await
    }

    /// Connect the volume's controller with its recorded parameters (a no-op when the
    /// namespace resolves) and wait for its namespace.
    pub async fn connect(&self, t: &Target) -> Result<NsDevice, NodeError> {
        self.connect_and_wait(t).await
    }

    /// Refuse anything outside the managed NQN prefix, before any action.
    pub fn check_managed(&self, nqn: &Nqn) -> Result<(), NodeError> {
        if self.cfg.managed.covers(nqn) {
            Ok(())
        } else {
            Err(NodeError::invalid(
                "volume_context.nqn",
                format!("{nqn} is outside the managed prefix {}; this plugin never connects, formats, mounts or disconnects it", self.cfg.managed),
            ))
        }
    }

    /// `dev` is the block device of a namespace under the managed prefix (the device
    /// watcher's model, O(1)): without a record, the only mounts a call may take as its own.
    pub(crate) fn is_managed_device(&self, dev: rds_types::DevNum) -> bool {
        self.devices
            .nqn_of(dev)
            .is_some_and(|n| self.cfg.managed.covers(&n))
    }

    /// A fresh mount table off the runtime, bounded: idempotency decisions come from the
    /// kernel's table, never from our own notes.
    pub(crate) async fn mount_view(&self) -> Result<MountView, NodeError> {
        MountView::read(&self.cfg.roots.proc, self.cfg.deadlines.mountinfo)
            .await
            .map_err(NodeError::from)
    }

    /// The device node of block device `name` under the configured dev root.
    pub fn dev_path(&self, name: &str) -> PathBuf {
        self.cfg.roots.dev.join(name)
    }

    /// Run a blocking host operation with a deadline; a timeout becomes DeadlineExceeded.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        deadline: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        run_blocking(what, deadline, f)
            .await
            .map_err(|e| NodeError::DeadlineExceeded(e.to_string()))
    }

    /// Persist a volume record (temp file, fsync, rename, fsync dir) off the runtime.
    pub(crate) async fn save_record(
        &self,
        rec: crate::record::VolumeRecord,
    ) -> Result<(), NodeError> {
        let volumes = self.volumes.clone();
        self.blocking(
            "saving the volume record",
            self.cfg.deadlines.mount,
            move || volumes.save(rec),
        )
        .await?
    }

    /// Remove a volume record off the runtime.
    pub(crate) async fn remove_record(
        &self,
        id: &crate::validate::VolumeId,
    ) -> Result<(), NodeError> {
        let (volumes, id) = (self.volumes.clone(), id.clone());
        self.blocking(
            "removing the volume record",
            self.cfg.deadlines.mount,
            move || volumes.remove(&id),
        )
        .await?
    }

    /// Connect the volume's controller (a no-op when connected) and wait for its namespace.
    pub(crate) async fn connect_and_wait(&self, t: &Target) -> Result<NsDevice, NodeError> {
        if let Some(ns) = self.devices.resolve(&t.nqn) {
            return Ok(ns);
        }
        let req = ConnectRequest {
            ctrl_loss_tmo: Some(t.ctrl_loss_tmo),
            reconnect_delay: Some(t.reconnect_delay),
            keep_alive_tmo: t.keep_alive_tmo,
            capacity_hint: t.capacity_hint,
            ..ConnectRequest::tcp(t.nqn.clone(), t.address, t.port)
        };
        let fabric = self.fabric.clone();
        let config_dir = self.cfg.nvme_config_dir.clone();
        let started = std::time::Instant::now();
        let outcome = self
            .blocking("nvme connect", self.cfg.deadlines.connect, move || {
                let (host_nqn, host_id) = host_identity(&config_dir);
                fabric.connect(&ConnectRequest {
                    host_nqn,
                    host_id,
                    ..req
                })
            })
            .await;
        if let Some(o) = &self.connects {
            o.connect_done(
                matches!(outcome, Ok(Ok(_))),
                outcome.is_err(),
                started.elapsed(),
            );
        }
        let outcome = outcome?.map_err(|e| {
            NodeError::Unavailable(format!(
                "connecting {} at {}:{}: {e}",
                t.nqn, t.address, t.port
            ))
        })?;
        tracing::info!(nqn = %t.nqn, controller = %outcome.controller, already = outcome.already_connected, "controller connected");
        if outcome.already_connected {
            // Connected, yet the namespace does not resolve: after a reconnect the kernel drops
            // a namespace whose identifiers changed and adds the target's current one only at
            // its next scan. Ask for that scan (harmless when the namespace is on its way).
            let fabric = self.fabric.clone();
            let ctrl = outcome.controller.clone();
            match self
                .blocking("nvme rescan", self.cfg.deadlines.connect, move || {
                    fabric.rescan(&ctrl)
                })
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(controller = %outcome.controller, error = %e, "rescan failed")
                }
                Err(e) => {
                    tracing::warn!(controller = %outcome.controller, error = %e, "rescan did not finish")
                }
            }
        }
        self.devices
            .wait_for(&t.nqn, self.cfg.deadlines.device_wait)
            .await
            .map_err(|e| match e {
                crate::devices::WaitError::Timeout { .. } => {
                    NodeError::DeadlineExceeded(e.to_string())
                }
                crate::devices::WaitError::Stopped(_) => {
                    NodeError::internal("waiting for the namespace", e)
                }
            })
    }

    /// Disconnect every controller of `nqn` (only within the managed prefix).
    pub(crate) async fn disconnect(&self, nqn: &Nqn) -> Result<(), NodeError> {
        self.check_managed(nqn)?;
        let fabric = self.fabric.clone();
        let nqn_s = nqn.as_str().to_owned();
        let deadline = self.cfg.deadlines.connect;
        self.blocking(
            "nvme disconnect",
            deadline,
            move || -> Result<Vec<String>, rds_fabric::FabricError> {
                let mut done = Vec::new();
                for c in fabric
                    .controllers()?
                    .into_iter()
                    .filter(|c| c.subsysnqn == nqn_s)
                {
                    fabric.disconnect(&c.name)?;
                    done.push(c.name);
                }
                Ok(done)
            },
        )
        .await?
        .map(|done| tracing::info!(nqn = %nqn, controllers = ?done, "disconnected"))
        .map_err(|e| NodeError::internal(format!("disconnecting {nqn}"), e))
    }
}

/// The host NQN and host ID from `/etc/nvme` (when present), for the connect line.
fn host_identity(config_dir: &Path) -> (Option<String>, Option<String>) {
    let read = |name: &str| {
        std::fs::read_to_string(config_dir.join(name))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    (read("hostnqn"), read("hostid"))
}

/// `true` when `p` exists (without following a final symlink).
pub(crate) fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
