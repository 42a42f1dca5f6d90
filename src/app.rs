//! Wiring: build the node plugin from its configuration and run it until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use rds_fabric::Fabric;
use tokio::task::JoinSet;

use crate::csi::{identity_server::IdentityServer, node_server::NodeServer};
use crate::guard::VolumeGuards;
use crate::identity::{IdentityService, Readiness};
use crate::node::grpc::{NoRpcObserver, NodeGrpc, RpcObserver};
use crate::node::{NamespaceSource, NoObserver, NodeConfig, NodeService, VolumeObserver, Volumes};

/// Everything `serve` needs, already validated.
pub struct AppConfig {
    pub endpoint: PathBuf,
    pub driver_name: String,
    pub state_dir: PathBuf,
    pub node: NodeConfig,
    pub devices: rds_devices::WatcherConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Endpoint(#[from] crate::server::EndpointError),
    #[error("opening the state directory")]
    State(#[from] crate::record::RecordError),
    #[error("starting the device watcher")]
    Devices(#[from] rds_devices::WatchError),
    #[error("gRPC server")]
    Grpc(#[from] tonic::transport::Error),
}

/// A running plugin's handles, for tests and the demo.
pub struct Running {
    pub service: NodeService,
    pub devices: rds_devices::DeviceWatcherHandle,
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
    let mut tasks = JoinSet::new();
    let (devices, mut device_events) = rds_devices::spawn(cfg.devices.clone())?;
    // Until the monitor consumes them, keep the device stream drained so the watcher never
    // blocks on a full channel.
    tasks.spawn(async move {
        while device_events.recv().await.is_some() {}
        Ok::<(), AppError>(())
    });
    let volumes = Volumes::open(&cfg.state_dir)?;
    let observer: Arc<dyn VolumeObserver> = Arc::new(NoObserver);
    let rpcs: Arc<dyn RpcObserver> = Arc::new(NoRpcObserver);
    let guards = VolumeGuards::default();
    let source: Arc<dyn NamespaceSource> = Arc::new(devices.clone());
    let service = NodeService::new(cfg.node.clone(), volumes, fabric, source, observer, guards);
    let readiness = Readiness::default();
    readiness.set_ready();

    let listener = crate::server::bind(&cfg.endpoint)?;
    tracing::info!(endpoint = %cfg.endpoint.display(), driver = %cfg.driver_name, node = %cfg.node.node_id, "CSI server listening");
    started(Running {
        service: service.clone(),
        devices: devices.clone(),
        readiness: readiness.clone(),
    });

    let identity = IdentityServer::new(IdentityService::new(cfg.driver_name.clone(), readiness));
    let node = NodeServer::new(NodeGrpc::new(service, rpcs));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = tonic::transport::Server::builder()
        .add_service(identity)
        .add_service(node)
        .serve_with_incoming_shutdown(crate::server::incoming(listener), async {
            let _ = stop_rx.await;
        });
    tasks.spawn(async move { grpc.await.map_err(AppError::from) });

    // First of: the shutdown signal, or a task ending (one failing server stops the others).
    let first = tokio::select! {
        _ = shutdown => None,
        r = tasks.join_next() => r,
    };
    let _ = stop_tx.send(());
    if let Some(Ok(Err(e))) = first {
        tracing::error!(error = %e, "a task failed; shutting down");
        tasks.abort_all();
        return Err(e);
    }
    // Let in-flight RPCs finish, within the grace period.
    let grace = crate::server::grace();
    let drain = async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "task ended with an error during shutdown");
            }
            // The device drain task never ends by itself: stop once the server is done.
            if tasks.len() <= 1 {
                break;
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(grace = ?grace, "in-flight work did not finish within the grace period");
    }
    let _ = std::fs::remove_file(&cfg.endpoint);
    tasks.abort_all();
    tracing::info!("stopped");
    Ok(())
}
