//! CSI Identity service: name, version, capabilities, readiness.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::csi;

/// Readiness shared with the monitor: Probe reports ready only once the first reconcile of
/// the node's volumes against the kernel's state is done.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.0.send_replace(true);
    }
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }
    /// Resolves once ready (woken by the monitor's first reconcile, not by polling).
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

#[derive(Debug, Clone)]
pub struct IdentityService {
    driver_name: String,
    readiness: Readiness,
}

impl IdentityService {
    pub fn new(driver_name: String, readiness: Readiness) -> Self {
        Self {
            driver_name,
            readiness,
        }
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: [(
                "git".to_owned(),
                option_env!("RDS_GIT_REV").unwrap_or("unknown").to_owned(),
            )]
            .into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::{volume_expansion, Type, VolumeExpansion};
        // A node-only plugin: no CONTROLLER_SERVICE. It does expand filesystems online.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![csi::PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                })),
            }],
        }))
    }

    async fn probe(
        &self,
        _req: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(self.readiness.is_ready()),
        }))
    }
}
