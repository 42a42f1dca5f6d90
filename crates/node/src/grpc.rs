//! The CSI Node service over tonic: validate into typed arguments, call the node service, map
//! the one error enum. Nothing else happens here.

use std::collections::HashMap;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::csi;
use crate::error::NodeError;
use crate::service::{NodeService, Usage};
use crate::validate::{AbsPath, PublishArgs, StageArgs};

/// The condition as kubelet shows it: `kind: message (since RFC 3339)`.
pub fn condition_message(h: &rds_types::Health) -> String {
    format!(
        "{}: {} (since {})",
        h.kind,
        h.message,
        humantime::format_rfc3339_seconds(h.since)
    )
}

/// Records the outcome of each RPC (metrics); implemented by the metrics registry.
pub trait RpcObserver: Send + Sync + 'static {
    fn rpc_done(&self, rpc: &'static str, code: tonic::Code, elapsed: std::time::Duration);
}

#[derive(Clone)]
pub struct NodeGrpc {
    svc: NodeService,
    rpcs: std::sync::Arc<dyn RpcObserver>,
}

impl NodeGrpc {
    pub fn new(svc: NodeService, rpcs: std::sync::Arc<dyn RpcObserver>) -> Self {
        Self { svc, rpcs }
    }

    async fn run<T>(
        &self,
        rpc: &'static str,
        f: impl std::future::Future<Output = Result<T, NodeError>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let r = f.await;
        let code = r
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(NodeError::code);
        self.rpcs.rpc_done(rpc, code, start.elapsed());
        match r {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                // Logged once, here, at the boundary.
                match e.code() {
                    tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::Aborted => {
                        tracing::info!(rpc, code = ?e.code(), error = %e, "request refused")
                    }
                    _ => tracing::warn!(rpc, code = ?e.code(), error = %e, "request failed"),
                }
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeGrpc {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        self.run("NodeStageVolume", async {
            let args = StageArgs::from_request(&r)?;
            self.svc.stage(args).await?;
            Ok(csi::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        self.run("NodeUnstageVolume", async {
            let id = crate::validate::volume_id("volume_id", &r.volume_id)?;
            let staging = AbsPath::parse("staging_target_path", &r.staging_target_path)?;
            self.svc.unstage(id, staging).await?;
            Ok(csi::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        self.run("NodePublishVolume", async {
            let args = PublishArgs::from_request(&r)?;
            self.svc.publish(args).await?;
            Ok(csi::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        self.run("NodeUnpublishVolume", async {
            let id = crate::validate::volume_id("volume_id", &r.volume_id)?;
            let target = AbsPath::parse("target_path", &r.target_path)?;
            self.svc.unpublish(id, target).await?;
            Ok(csi::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let r = req.into_inner();
        self.run("NodeGetVolumeStats", async {
            let id = crate::validate::volume_id("volume_id", &r.volume_id)?;
            // An unknown volume is NotFound whatever its path (the CSI sanity suite sends
            // `some/path`).
            self.svc.require_staged(&id)?;
            let path = AbsPath::parse("volume_path", &r.volume_path)?;
            let reply = self.svc.stats(id, path).await?;
            use csi::volume_usage::Unit;
            let usage = match reply.usage {
                Usage::Filesystem(s) => vec![
                    csi::VolumeUsage {
                        available: s.available_bytes as i64,
                        total: s.total_bytes as i64,
                        used: s.used_bytes as i64,
                        unit: Unit::Bytes as i32,
                    },
                    csi::VolumeUsage {
                        available: s.free_inodes as i64,
                        total: s.total_inodes as i64,
                        used: s.used_inodes as i64,
                        unit: Unit::Inodes as i32,
                    },
                ],
                Usage::Block { bytes } => {
                    vec![csi::VolumeUsage {
                        available: 0,
                        total: bytes as i64,
                        used: 0,
                        unit: Unit::Bytes as i32,
                    }]
                }
                Usage::Unmeasured => vec![],
            };
            Ok(csi::NodeGetVolumeStatsResponse {
                usage,
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: reply.condition.abnormal(),
                    message: crate::grpc::condition_message(&reply.condition),
                }),
            })
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        self.run("NodeExpandVolume", async {
            let id = crate::validate::volume_id("volume_id", &r.volume_id)?;
            self.svc.require_staged(&id)?;
            let path = AbsPath::parse("volume_path", &r.volume_path)?;
            let required = r
                .capacity_range
                .as_ref()
                .map(|c| c.required_bytes)
                .unwrap_or(0);
            let limit = r
                .capacity_range
                .as_ref()
                .map(|c| c.limit_bytes)
                .unwrap_or(0);
            if required < 0 {
                return Err(NodeError::invalid(
                    "capacity_range.required_bytes",
                    "must not be negative",
                ));
            }
            if limit < 0 {
                return Err(NodeError::invalid(
                    "capacity_range.limit_bytes",
                    "must not be negative",
                ));
            }
            if limit > 0 && limit < required {
                return Err(NodeError::invalid(
                    "capacity_range.limit_bytes",
                    format!("{limit} is below required_bytes {required}"),
                ));
            }
            let bytes = self.svc.expand(id, path, required).await?;
            Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: bytes as i64,
            })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{rpc::Type, Rpc, Type as CapType};
        let caps = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::VolumeCondition,
            Type::ExpandVolume,
        ]
        .into_iter()
        .map(|t| csi::NodeServiceCapability {
            r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let cfg = self.svc.config();
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: cfg.node_id.clone(),
            max_volumes_per_node: cfg.max_volumes_per_node,
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(cfg.topology_key.clone(), cfg.node_id.clone())]),
            }),
        }))
    }
}
