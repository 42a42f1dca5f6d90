//! A whole node plugin on the emulated fabric, driven over its real unix socket the way
//! kubelet drives it. Shared by the integration tests and the `demo`.
//!
//! Needs root and must run inside private mount and network namespaces (the emulated fabric
//! injects udev events on netlink group 2 and the plugin mounts things): the tests enter them
//! with `rds_testkit`, the demo with `unshare` before it starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rds_fabric::{EmulatedConfig, EmulatedFabric};
use rds_types::{ManagedPrefix, Nqn};
use tonic::transport::{Channel, Endpoint};

use rds_agent::app::{AppConfig, Running};
use rds_node::csi;
use rds_node::csi::identity_client::IdentityClient;
use rds_node::csi::node_client::NodeClient;
use rds_node::{Deadlines, NodeConfig};

pub const MANAGED_PREFIX: &str = "nqn.2000-02.com.mikrotik:pvc-";
pub const DRIVER: &str = "rds.csi.srvlab.io";
pub const NODE_ID: &str = "node-under-test";
/// The harness's grace before a removed namespace is called gone (production: 10 s).
pub const GONE_GRACE: Duration = Duration::from_secs(1);
/// The harness's stall period (production: 30 s) and sampling period (production: 5 s).
pub const IO_STALL_AFTER: Duration = Duration::from_secs(3);
pub const IO_SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// The NQN the existing controller derives for a volume.
pub fn nqn_for(volume_id: &str) -> Nqn {
    Nqn::parse(&format!(
        "nqn.2000-02.com.mikrotik:{}",
        volume_id.to_lowercase()
    ))
    .expect("valid NQN")
}

/// Non-default settings of a test plugin.
#[derive(Default)]
pub struct Options {
    /// Post Kubernetes Events here instead of recording them in [`Plugin::events`].
    pub events: Option<Arc<dyn rds_events::EventSink>>,
    /// Serve metrics on this address.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The emulated fabric creates a target on its first connect, reusing an existing image
    /// under the backing directory (cluster mode): for images a test provides itself.
    pub create_on_connect: Option<u64>,
}

/// One plugin instance: its directories, its emulated fabric, its server task.
pub struct Plugin {
    pub root: PathBuf,
    /// The Kubernetes Events the plugin would have posted.
    pub events: Arc<rds_events::RecordingSink>,
    pub fabric: Arc<EmulatedFabric>,
    pub socket: PathBuf,
    pub running: Running,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), rds_agent::app::AppError>>>,
}

/// Directory layout under a plugin root.
pub struct Layout {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub backing: PathBuf,
    pub state: PathBuf,
    pub kubelet: PathBuf,
    pub socket: PathBuf,
}

impl Layout {
    pub fn under(root: &Path) -> Self {
        Self {
            sys: root.join("sys"),
            dev: root.join("dev"),
            backing: root.join("backing"),
            state: root.join("state"),
            kubelet: root.join("kubelet"),
            socket: root.join("csi/csi.sock"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("emulated fabric: {0}")]
    Fabric(#[from] rds_fabric::FabricError),
    #[error("plugin: {0}")]
    App(#[from] rds_agent::app::AppError),
    #[error("the plugin did not start: {0}")]
    Start(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Plugin {
    /// Start a plugin whose fabric and state live under `root` (created if missing). Reusing
    /// a root with a new fabric is a plugin restart with the kernel state left in place.
    pub async fn start(
        root: &Path,
        fabric: Option<Arc<EmulatedFabric>>,
    ) -> Result<Self, HarnessError> {
        Self::start_with(root, fabric, Options::default()).await
    }

    /// Like [`Plugin::start`], with [`Options`].
    pub async fn start_with(
        root: &Path,
        fabric: Option<Arc<EmulatedFabric>>,
        opts: Options,
    ) -> Result<Self, HarnessError> {
        let events = Arc::new(rds_events::RecordingSink::new());
        let sink: Arc<dyn rds_events::EventSink> = opts.events.unwrap_or_else(|| events.clone());
        let l = Layout::under(root);
        for d in [&l.sys, &l.dev, &l.backing, &l.state, &l.kubelet] {
            std::fs::create_dir_all(d)?;
        }
        let managed =
            ManagedPrefix::parse(MANAGED_PREFIX).map_err(|e| HarnessError::Start(e.to_string()))?;
        let fabric = match fabric {
            Some(f) => f,
            None => Arc::new(EmulatedFabric::new(EmulatedConfig {
                sys_root: l.sys.clone(),
                dev_root: l.dev.clone(),
                backing_dir: l.backing.clone(),
                multipath: true,
                inject_uevents: true,
                managed: managed.clone(),
                loops: rds_fabric::loopdev::LoopControl::new("/dev", "/sys"),
                create_on_connect: opts.create_on_connect,
                persist: None,
            })?),
        };
        let cfg = AppConfig {
            endpoint: l.socket.clone(),
            driver_name: DRIVER.into(),
            state_dir: l.state.clone(),
            node: NodeConfig {
                node_id: NODE_ID.into(),
                managed,
                roots: rds_hostops::inuse::HostRoots {
                    proc: "/proc".into(),
                    sys: l.sys.clone(),
                    dev: l.dev.clone(),
                },
                kubelet_dir: l.kubelet.clone(),
                nvme_config_dir: root.join("etc-nvme"),
                max_volumes_per_node: 16,
                topology_key: rds_node::defaults::TOPOLOGY_KEY.into(),
                deadlines: Deadlines {
                    device_wait: Duration::from_secs(20),
                    unmount_wait: Duration::from_secs(2),
                    ..Deadlines::default()
                },
            },
            devices: rds_devices::WatcherConfig::new(l.sys.clone(), root.join("run"))
                .with_sources(rds_devices::SourceKind::Both)
                .with_kmsg(Some(l.dev.join("kmsg"))),
            mounts: rds_mounts::watch::WatcherConfig::new("/proc"),
            monitor: rds_monitor::MonitorConfig {
                gone_grace: GONE_GRACE,
                io_stall_after: IO_STALL_AFTER,
                ..rds_monitor::MonitorConfig::default()
            },
            events: rds_agent::app::EventsMode::Sink(sink),
            metrics_address: opts.metrics_address,
            io_sample_period: IO_SAMPLE_PERIOD,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Running>();
        let f2: Arc<dyn rds_fabric::Fabric> = fabric.clone();
        let task = tokio::spawn(rds_agent::app::run(
            cfg,
            f2,
            async move {
                let _ = stop_rx.await;
            },
            move |r| {
                let _ = started_tx.send(r);
            },
        ));
        let running = match started_rx.await {
            Ok(r) => {
                // Serve only a plugin that has reconciled with the kernel (what Probe reports).
                r.readiness.wait().await;
                r
            }
            Err(_) => {
                let why = match task.await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "it returned at once".into(),
                    Err(e) => e.to_string(),
                };
                return Err(HarnessError::Start(why));
            }
        };
        Ok(Self {
            root: root.to_owned(),
            events,
            fabric,
            socket: l.socket,
            running,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub fn layout(&self) -> Layout {
        Layout::under(&self.root)
    }

    /// A kubelet-like client over the real socket.
    pub async fn kubelet(&self) -> Result<Kubelet, HarnessError> {
        Kubelet::connect(&self.socket).await
    }

    /// Stop the server (in-flight RPCs finish) and wait for it.
    pub async fn stop(mut self) -> Result<Arc<EmulatedFabric>, HarnessError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            match t.await {
                Ok(r) => r?,
                Err(e) => return Err(HarnessError::Start(format!("plugin task: {e}"))),
            }
        }
        Ok(self.fabric.clone())
    }
}

impl KubeletDirs for Plugin {
    fn kubelet_dir(&self) -> PathBuf {
        self.layout().kubelet
    }
}

/// Where kubelet keeps a plugin's volumes: staging paths and publish targets in kubelet's own
/// layout, for every way the tests run a plugin.
pub trait KubeletDirs {
    /// The kubelet root (`/var/lib/kubelet` in production).
    fn kubelet_dir(&self) -> PathBuf;

    /// A kubelet-style staging path for a volume.
    fn staging_path(&self, volume_id: &str) -> PathBuf {
        self.kubelet_dir().join(format!(
            "plugins/kubernetes.io/csi/{DRIVER}/{volume_id}/globalmount"
        ))
    }

    /// A kubelet-style publish target for a volume in a pod.
    fn target_path(&self, pod: &str, volume_id: &str) -> PathBuf {
        self.kubelet_dir().join(format!(
            "pods/{pod}/volumes/kubernetes.io~csi/{volume_id}/mount"
        ))
    }
}

/// The kubelet side: CSI calls over the unix socket.
#[derive(Clone)]
pub struct Kubelet {
    pub node: NodeClient<Channel>,
    pub identity: IdentityClient<Channel>,
}

impl Kubelet {
    pub async fn connect(socket: &Path) -> Result<Self, HarnessError> {
        let path = socket.to_owned();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await?;
        Ok(Self {
            node: NodeClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
        })
    }
}

/// Volume context as the controller writes it.
pub fn volume_context(volume_id: &str) -> HashMap<String, String> {
    HashMap::from([
        ("nqn".to_owned(), nqn_for(volume_id).to_string()),
        ("nvmeAddress".to_owned(), "127.0.0.1".to_owned()),
        ("nvmePort".to_owned(), "4420".to_owned()),
    ])
}

pub fn mount_capability(
    fs: &str,
    mode: csi::volume_capability::access_mode::Mode,
) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: fs.into(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            },
        )),
    }
}

pub fn block_capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
    }
}

pub fn stage_request(
    p: &impl KubeletDirs,
    volume_id: &str,
    cap: csi::VolumeCapability,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: p.staging_path(volume_id).display().to_string(),
        volume_capability: Some(cap),
        volume_context: volume_context(volume_id),
        ..Default::default()
    }
}

pub fn publish_request(
    p: &impl KubeletDirs,
    volume_id: &str,
    pod: &str,
    cap: csi::VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: p.staging_path(volume_id).display().to_string(),
        target_path: p.target_path(pod, volume_id).display().to_string(),
        volume_capability: Some(cap),
        readonly,
        volume_context: volume_context(volume_id),
        ..Default::default()
    }
}

pub fn unstage_request(p: &impl KubeletDirs, volume_id: &str) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: p.staging_path(volume_id).display().to_string(),
    }
}

pub fn unpublish_request(
    p: &impl KubeletDirs,
    volume_id: &str,
    pod: &str,
) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: p.target_path(pod, volume_id).display().to_string(),
    }
}

pub fn stats_request(volume_id: &str, path: &Path) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}
