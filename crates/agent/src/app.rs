//! Wiring: build the node plugin from its configuration and run it until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use rds_fabric::Fabric;
use tokio::task::JoinSet;

use crate::notify_thread::NotifyThread;

use rds_node::csi::{identity_server::IdentityServer, node_server::NodeServer};
use rds_node::grpc::{NodeGrpc, RpcObserver};
use rds_node::guard::VolumeGuards;
use rds_node::identity::{IdentityService, Readiness};
use rds_node::{NamespaceSource, NodeConfig, NodeService, VolumeObserver, Volumes};

/// Everything `serve` needs, already validated.
pub struct AppConfig {
    pub endpoint: PathBuf,
    pub driver_name: String,
    pub state_dir: PathBuf,
    pub node: NodeConfig,
    pub devices: rds_devices::WatcherConfig,
    pub mounts: rds_mounts::watch::WatcherConfig,
    pub monitor: rds_monitor::MonitorConfig,
    pub events: EventsMode,
    /// Serve Prometheus metrics here (off when `None`).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// How often the staged devices' request counters are sampled (stall detection).
    pub io_sample_period: std::time::Duration,
}

/// Where Kubernetes Events go.
pub enum EventsMode {
    /// In-cluster config or a kubeconfig when one exists; disabled (one log line) otherwise.
    Kube { kubeconfig: Option<PathBuf> },
    /// A given sink (tests and the demo record what would be posted).
    Sink(Arc<dyn rds_events::EventSink>),
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Endpoint(#[from] rds_node::server::EndpointError),
    #[error("opening the state directory")]
    State(#[from] rds_node::record::RecordError),
    #[error("starting the device watcher")]
    Devices(#[from] rds_devices::WatchError),
    #[error("starting the mount watcher")]
    Mounts(#[from] rds_mounts::watch::WatchError),
    #[error("connecting to Kubernetes for Events")]
    Events(#[from] rds_events::ConnectError),
    #[error("metrics endpoint")]
    Metrics(#[from] rds_metrics::MetricsError),
    #[error("gRPC server")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the node service")]
    Node(#[from] rds_node::NodeError),
    #[error("starting the monitor's thread")]
    Thread(#[source] std::io::Error),
}

/// A running plugin's handles, for tests and the demo.
pub struct Running {
    pub service: NodeService,
    pub devices: rds_devices::DeviceWatcherHandle,
    pub mounts: Arc<rds_mounts::watch::WatcherHandle>,
    pub monitor: crate::monitor::MonitorHandle,
    pub readiness: Readiness,
}

/// Run the plugin: device watcher, CSI server on the unix socket; returns after `shutdown`
/// resolves and in-flight RPCs finished (bounded by the grace period).
pub async fn run(
    cfg: AppConfig,
    fabric: Arc<dyn Fabric>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: impl FnOnce(Running) + Send,
) -> Result<(), AppError> {
    // One plugin per socket, before anything else: a second instance must not adopt, watch or
    // recover the volumes the first one serves.
    let endpoint = cfg.endpoint.clone();
    let (listener, socket) = tokio::task::spawn_blocking(move || {
        rds_node::server::bind(&endpoint, rds_node::server::LOCK_WAIT)
    })
    .await
    .map_err(|e| AppError::Node(rds_node::NodeError::internal("binding the socket", e)))??;
    // The kernel-notification path (watchers and monitor shell) on a thread of its own; on
    // every way out of `serve`, its tasks are gone before `run` returns.
    let notify = NotifyThread::start().await.map_err(AppError::Thread)?;
    let served = serve(cfg, fabric, shutdown, started, listener, socket, &notify).await;
    notify.stop().await;
    if served.is_ok() {
        tracing::info!("stopped");
    }
    served
}

/// [`run`] once the socket is bound and the notification thread is running.
async fn serve(
    cfg: AppConfig,
    fabric: Arc<dyn Fabric>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: impl FnOnce(Running) + Send,
    listener: tokio::net::UnixListener,
    socket: rds_node::server::BoundSocket,
    notify: &NotifyThread,
) -> Result<(), AppError> {
    let mut tasks = JoinSet::new();
    // Subscribe to the kernel first (every watcher scans after subscribing), then adopt.
    let (devices, device_events, mounts, mount_events, fs_errors) = {
        let _on = notify.handle().enter();
        let (devices, device_events) = rds_devices::spawn(cfg.devices.clone())?;
        let (mounts, mount_events) = rds_mounts::watch::spawn(cfg.mounts.clone())?;
        let fs_errors = match rds_fserror::FsErrorWatcher::spawn(1024) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "filesystem error events (FAN_FS_ERROR) unavailable; dead filesystems are detected from mount options only");
                None
            }
        };
        (devices, device_events, mounts, mount_events, fs_errors)
    };
    let mounts = Arc::new(mounts);
    tracing::info!(strategy = ?mounts.strategy(), "mount watcher running");
    let volumes = Volumes::open(&cfg.state_dir)?;
    let (events, events_stats, client): (Arc<dyn rds_events::EventSink>, _, _) = match &cfg.events {
        EventsMode::Sink(s) => (s.clone(), None, None),
        EventsMode::Kube { kubeconfig } => {
            let sink_cfg = rds_events::KubeSinkConfig::new(cfg.node.node_id.clone());
            let ev = rds_events::start(kubeconfig.clone(), sink_cfg).await?;
            (ev.sink, Some(ev.stats), ev.client)
        }
    };
    let metrics = Arc::new(rds_metrics::Metrics::new(env!("CARGO_PKG_VERSION")));
    let sink = crate::metrics::MetricsSink(metrics.clone());
    let (metrics_stop_tx, metrics_stop) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = cfg.metrics_address {
        let m = metrics.clone();
        tasks.spawn(async move {
            tracing::info!(%addr, "serving metrics");
            rds_metrics::serve(addr, m, async {
                let _ = metrics_stop.await;
            })
            .await
            .map_err(AppError::from)
        });
    }
    let readiness = Readiness::default();
    let guards = VolumeGuards::default();
    let source: Arc<dyn NamespaceSource> = Arc::new(devices.clone());
    let conditions = crate::monitor::Conditions::default();
    let (monitor, notes) = crate::monitor::MonitorHandle::new(conditions.clone());

    let observer: Arc<dyn VolumeObserver> = Arc::new(monitor.clone());
    let rpcs: Arc<dyn RpcObserver> = Arc::new(sink.clone());
    let records = volumes.all();
    let service = NodeService::new(cfg.node.clone(), volumes, fabric, source, observer, guards)?
        .with_connect_observer(Arc::new(sink.clone()));
    let recovery: Option<Arc<dyn crate::monitor::RecoveryRunner>> =
        (cfg.monitor.recovery_attempts > 0).then(|| {
            let r = crate::recovery::Recovery::new(
                service.clone(),
                crate::recovery::RecoveryConfig {
                    // The operator's deadlines apply to recovery as to the CSI calls.
                    unmount_wait: cfg.node.deadlines.unmount_wait,
                    mount: cfg.node.deadlines.mount,
                    ..crate::recovery::RecoveryConfig::new(&cfg.state_dir)
                },
            );
            Arc::new(r) as Arc<dyn crate::monitor::RecoveryRunner>
        });
    let io = crate::monitor::io::IoWatchSet::default();
    // I/O samples: a full channel drops a sample (the next period brings a fresher one).
    let (io_tx, io_rx) = tokio::sync::mpsc::channel(1024);
    tasks.spawn_on(
        {
            let (io, sys) = (io.clone(), cfg.node.roots.sys.clone());
            let period = cfg.io_sample_period;
            async move {
                crate::monitor::io::run_sampler(io, sys, period, io_tx).await;
                Ok::<(), AppError>(())
            }
        },
        notify.handle(),
    );
    let seams = crate::monitor::Seams {
        devices: Arc::new(devices.clone()),
        mounts: mounts.clone(),
        fs_errors: fs_errors
            .as_ref()
            .map(|(h, _)| Arc::new(h.clone()) as Arc<dyn crate::monitor::FsWatcher>),
        io,
        events,
        recovery,
        evictor: client
            .filter(|_| cfg.monitor.evict_pods_on_stale)
            .map(|client| {
                Arc::new(crate::monitor::KubeEvictor {
                    client,
                    node_name: cfg.node.node_id.clone(),
                    runtime: tokio::runtime::Handle::current(),
                }) as Arc<dyn crate::monitor::Evictor>
            }),
        metrics: Some(Arc::new(sink.clone()) as Arc<dyn crate::monitor::MonitorMetrics>),
    };
    let sources = crate::monitor::Sources {
        notes,
        mounts: mount_events,
        devices: device_events,
        fs_errors: fs_errors.map(|(_, rx)| rx),
        io: io_rx,
        events_stats,
    };
    let shell = crate::monitor::Shell::new(cfg.monitor.clone(), conditions, seams);
    tasks.spawn_on(
        {
            let ready = readiness.clone();
            async move {
                shell.run(sources, records, ready).await;
                Ok::<(), AppError>(())
            }
        },
        notify.handle(),
    );

    tracing::info!(endpoint = %cfg.endpoint.display(), driver = %cfg.driver_name, node = %cfg.node.node_id, "CSI server listening");
    started(Running {
        service: service.clone(),
        devices: devices.clone(),
        mounts: mounts.clone(),
        monitor: monitor.clone(),
        readiness: readiness.clone(),
    });

    let identity = IdentityServer::new(IdentityService::new(cfg.driver_name.clone(), readiness));
    let node = NodeServer::new(NodeGrpc::new(service, rpcs));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = tonic::transport::Server::builder()
        .layer(rds_node::server::BadInputCodes)
        .add_service(identity)
        .add_service(node)
        .serve_with_incoming_shutdown(rds_node::server::incoming(listener), async {
            let _ = stop_rx.await;
        });
    tasks.spawn(async move { grpc.await.map_err(AppError::from) });
    // The servers' tasks drain on shutdown; the monitor shell and the I/O sampler never end
    // by themselves and are stopped once the servers are done.
    let servers = 1 + usize::from(cfg.metrics_address.is_some());

    // First of: the shutdown signal, or a task ending (one failing server stops the others).
    let first = tokio::select! {
        _ = shutdown => None,
        r = tasks.join_next() => r,
    };
    let _ = stop_tx.send(());
    let _ = metrics_stop_tx.send(());
    if let Some(Ok(Err(e))) = first {
        tracing::error!(error = %e, "a task failed; shutting down");
        tasks.abort_all();
        return Err(e);
    }
    // Let in-flight RPCs finish, within the grace period.
    let grace = rds_node::server::grace();
    let background = tasks.len().saturating_sub(servers);
    let drain = async {
        while tasks.len() > background {
            match tasks.join_next().await {
                Some(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "task ended with an error during shutdown")
                }
                Some(_) => {}
                None => break,
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(grace = ?grace, "in-flight work did not finish within the grace period");
    }
    socket.remove();
    tasks.abort_all();
    Ok(())
}
