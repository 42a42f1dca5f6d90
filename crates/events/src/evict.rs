//! Opt-in eviction of the pods on this node that use a PVC.
//!
//! A running container keeps its reference to a dead superblock; only a new pod sees the healed
//! mount. When the operator opts in, the node plugin asks Kubernetes to move those pods. It uses
//! the **Eviction subresource** (`pods/eviction` create), not a plain delete, so that
//! PodDisruptionBudgets are respected: an eviction the budget forbids comes back 429 and is
//! reported as refused, never forced. The caller decides whether and when to call this.
//!
//! Note: kube's client retries 429 answers itself (with backoff) when its config has
//! `default_retry` on, the default; each eviction is therefore bounded by a deadline here, and a
//! pod still refused at the deadline is reported as refused.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::core::Status;
use kube::{Api, Client};

/// Deadline for listing pods, and for each pod's eviction.
pub const DEFAULT_EVICTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to each pod that used the claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionOutcome {
    /// Pods whose eviction the API server accepted.
    pub evicted: Vec<String>,
    /// Pods that were gone by the time they were evicted (404).
    pub already_gone: Vec<String>,
    /// Pods not evicted, with why (a PodDisruptionBudget, an error, the deadline).
    pub refused: Vec<RefusedEviction>,
}

/// A pod that was not evicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedEviction {
    /// The pod's name.
    pub pod: String,
    /// Why, for logs and events.
    pub reason: String,
}

/// Listing the pods failed, so nothing was evicted.
#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    /// The API server refused or failed the list.
    #[error("cannot list pods of node {node} in namespace {namespace}")]
    List {
        /// The node.
        node: String,
        /// The namespace.
        namespace: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The list did not answer in time.
    #[error("listing pods of node {node} in namespace {namespace} took over {timeout:?}")]
    ListTimeout {
        /// The node.
        node: String,
        /// The namespace.
        namespace: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// Whether `pod` mounts the claim `claim_name` (of its own namespace), directly or as the PVC of a
/// generic ephemeral volume (named `<pod>-<volume>`).
pub fn pod_uses_claim(pod: &Pod, claim_name: &str) -> bool {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let Some(volumes) = pod.spec.as_ref().and_then(|s| s.volumes.as_ref()) else {
        return false;
    };
    volumes.iter().any(|v| {
        let direct = v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == claim_name);
        let ephemeral = v.ephemeral.is_some()
            && claim_name
                .strip_prefix(pod_name)
                .and_then(|rest| rest.strip_prefix('-'))
                == Some(v.name.as_str());
        direct || ephemeral
    })
}

/// Names of the pods in `pods` that run on `node`, are neither finished nor already terminating,
/// and use the claim (pure; the list is also filtered server-side by node).
pub fn pods_to_evict<'a>(pods: &'a [Pod], node: &str, claim_name: &str) -> Vec<&'a str> {
    pods.iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|p| pod_uses_claim(p, claim_name))
        .filter_map(|p| p.metadata.name.as_deref())
        .collect()
}

/// Evicts the pods on `node_name` that use the PVC `pvc_namespace/pvc_name`, with
/// [`DEFAULT_EVICTION_TIMEOUT`] per request. Needs `list` on `pods` and `create` on
/// `pods/eviction`.
pub async fn evict_pods_using_pvc(
    client: &Client,
    node_name: &str,
    pvc_namespace: &str,
    pvc_name: &str,
) -> Result<EvictionOutcome, EvictError> {
    evict_pods_using_pvc_within(
        client,
        node_name,
        pvc_namespace,
        pvc_name,
        DEFAULT_EVICTION_TIMEOUT,
    )
    .await
}

/// [`evict_pods_using_pvc`] with another deadline per request.
pub async fn evict_pods_using_pvc_within(
    client: &Client,
    node_name: &str,
    pvc_namespace: &str,
    pvc_name: &str,
    timeout: Duration,
) -> Result<EvictionOutcome, EvictError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), pvc_namespace);
    let lp = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let list = match tokio::time::timeout(timeout, pods.list(&lp)).await {
        Ok(Ok(list)) => list,
        Ok(Err(source)) => {
            return Err(EvictError::List {
                node: node_name.to_owned(),
                namespace: pvc_namespace.to_owned(),
                source,
            })
        }
        Err(_) => {
            return Err(EvictError::ListTimeout {
                node: node_name.to_owned(),
                namespace: pvc_namespace.to_owned(),
                timeout,
            })
        }
    };
    let mut outcome = EvictionOutcome::default();
    for name in pods_to_evict(&list.items, node_name, pvc_name) {
        let result = tokio::time::timeout(timeout, evict(&pods, pvc_namespace, name)).await;
        match result {
            Ok(Ok(_)) => {
                tracing::info!(
                    pod = name,
                    namespace = pvc_namespace,
                    pvc = pvc_name,
                    "pod evicted"
                );
                outcome.evicted.push(name.to_owned());
            }
            Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {
                outcome.already_gone.push(name.to_owned());
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 429 => {
                outcome.refused.push(RefusedEviction {
                    pod: name.to_owned(),
                    reason: format!("disruption budget forbids it: {}", status.message),
                });
            }
            Ok(Err(e)) => outcome.refused.push(RefusedEviction {
                pod: name.to_owned(),
                reason: e.to_string(),
            }),
            Err(_) => outcome.refused.push(RefusedEviction {
                pod: name.to_owned(),
                reason: format!("eviction not accepted within {timeout:?}"),
            }),
        }
    }
    for r in &outcome.refused {
        tracing::warn!(pod = %r.pod, namespace = pvc_namespace, pvc = pvc_name, reason = %r.reason, "pod not evicted");
    }
    Ok(outcome)
}

/// Posts a policy/v1 `Eviction` for the pod. Not `Api::evict`: kube 5 sends a body without
/// `apiVersion`/`kind` and with a misspelled `delete_options` field; the API server tolerates it
/// today, but a typed body is what the API documents.
async fn evict(pods: &Api<Pod>, namespace: &str, name: &str) -> Result<Status, kube::Error> {
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        delete_options: None,
    };
    pods.create_subresource("eviction", name, &PostParams::default(), &eviction)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EphemeralVolumeSource, PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pvc_vol(vol: &str, claim: &str) -> Volume {
        Volume {
            name: vol.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: None,
            }),
            ..Volume::default()
        }
    }

    fn pod(name: &str, node: &str, volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn only_pods_on_this_node_using_the_claim_are_chosen() {
        let pods = vec![
            pod("a", "n1", vec![pvc_vol("v", "data")]),
            pod("b", "n2", vec![pvc_vol("v", "data")]),
            pod("c", "n1", vec![pvc_vol("v", "other")]),
            pod("d", "n1", vec![pvc_vol("x", "other"), pvc_vol("y", "data")]),
            pod("e", "n1", vec![]),
        ];
        assert_eq!(pods_to_evict(&pods, "n1", "data"), ["a", "d"]);
    }

    #[test]
    fn generic_ephemeral_volume_claims_count_as_use() {
        let eph = Volume {
            name: "scratch".into(),
            ephemeral: Some(EphemeralVolumeSource::default()),
            ..Volume::default()
        };
        let p = pod("web-0", "n1", vec![eph]);
        assert!(
            pod_uses_claim(&p, "web-0-scratch"),
            "PVC <pod>-<volume> belongs to the pod"
        );
        assert!(
            !pod_uses_claim(&p, "web-0-other"),
            "another volume name is not this pod's"
        );
        assert!(
            !pod_uses_claim(&p, "web-0scratch"),
            "the separator is required"
        );
    }

    #[test]
    fn finished_and_terminating_pods_are_left_alone() {
        let mut done = pod("done", "n1", vec![pvc_vol("v", "data")]);
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        let mut going = pod("going", "n1", vec![pvc_vol("v", "data")]);
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = vec![done, going, pod("live", "n1", vec![pvc_vol("v", "data")])];
        assert_eq!(pods_to_evict(&pods, "n1", "data"), ["live"]);
    }
}
