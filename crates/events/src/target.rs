//! Which Kubernetes object an event about a volume is attached to.
//!
//! Users look at their PVC (`kubectl describe pvc`), not at the PV, so the sink follows the PV's
//! `spec.claimRef` to the claim. `kubectl describe` finds events by the involved object's kind,
//! name, namespace **and uid**, so the uid from the claimRef is carried over (the PV controller
//! sets it when it binds, and kubelet only stages bound volumes). The event itself lives in the
//! claim's namespace: the API server rejects an event whose namespace differs from its involved
//! object's (the Go driver's "empty event namespace" bug). A PV without a claim gets the event on
//! itself; a PV is cluster-scoped, so its reference has no namespace and the event goes to
//! `default`, which is where kube's `Recorder` and the API server put events about cluster-scoped
//! objects.

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume};
use kube::{Api, Client};

/// The namespace the events API requires for events about cluster-scoped objects.
pub const CLUSTER_SCOPED_EVENT_NAMESPACE: &str = "default";

/// A PersistentVolumeClaim, as named by a PV's `spec.claimRef`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The claim's uid (set once the PV is bound).
    pub uid: Option<String>,
}

/// The object an event is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventTarget {
    /// The PVC bound to the volume (the usual case).
    Claim(ClaimRef),
    /// The PV itself: it has no claim, or the claim could not be found out.
    Volume {
        /// The PV name (the CSI volume ID).
        name: String,
        /// The PV's uid when known.
        uid: Option<String>,
    },
}

impl EventTarget {
    /// The involved object ("regarding") reference to put in the event.
    pub fn object_ref(&self) -> ObjectReference {
        match self {
            EventTarget::Claim(c) => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(c.namespace.clone()),
                name: Some(c.name.clone()),
                uid: c.uid.clone(),
                ..ObjectReference::default()
            },
            EventTarget::Volume { name, uid } => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolume".into()),
                namespace: None,
                name: Some(name.clone()),
                uid: uid.clone(),
                ..ObjectReference::default()
            },
        }
    }

    /// The namespace the event object is created in.
    pub fn event_namespace(&self) -> &str {
        match self {
            EventTarget::Claim(c) => &c.namespace,
            EventTarget::Volume { .. } => CLUSTER_SCOPED_EVENT_NAMESPACE,
        }
    }
}

/// The claim named by a PV's `spec.claimRef`, if it names one (pure).
pub fn claim_of(pv: &PersistentVolume) -> Option<ClaimRef> {
    let cr = pv.spec.as_ref()?.claim_ref.as_ref()?;
    let namespace = cr.namespace.as_deref().filter(|s| !s.is_empty())?;
    let name = cr.name.as_deref().filter(|s| !s.is_empty())?;
    Some(ClaimRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: cr.uid.clone().filter(|s| !s.is_empty()),
    })
}

/// The target for events about the PV `pv_name`, given the PV object (pure).
pub fn target_from_pv(pv_name: &str, pv: &PersistentVolume) -> EventTarget {
    match claim_of(pv) {
        Some(claim) => EventTarget::Claim(claim),
        None => EventTarget::Volume {
            name: pv_name.to_owned(),
            uid: pv.metadata.uid.clone(),
        },
    }
}

/// Reads the PV `pv_name` (needs `get` on `persistentvolumes`).
pub async fn fetch_pv(client: &Client, pv_name: &str) -> Result<PersistentVolume, kube::Error> {
    Api::<PersistentVolume>::all(client.clone())
        .get(pv_name)
        .await
}

/// The claim bound to the PV `pv_name`, or `None` when the PV has no claim. Callers deciding on
/// eviction use it to go from a CSI volume ID to the PVC.
pub async fn resolve_claim(
    client: &Client,
    pv_name: &str,
) -> Result<Option<ClaimRef>, kube::Error> {
    Ok(claim_of(&fetch_pv(client, pv_name).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pv(claim: Option<(&str, &str, Option<&str>)>) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".into()),
                uid: Some("pv-uid".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                claim_ref: claim.map(|(ns, name, uid)| ObjectReference {
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns.into()),
                    name: Some(name.into()),
                    uid: uid.map(Into::into),
                    resource_version: Some("42".into()),
                    ..ObjectReference::default()
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn bound_pv_targets_its_claim_in_the_claims_namespace_with_the_claims_uid() {
        let t = target_from_pv("pvc-1", &pv(Some(("apps", "data", Some("claim-uid")))));
        assert_eq!(
            t.event_namespace(),
            "apps",
            "event must live in the claim's namespace"
        );
        let r = t.object_ref();
        assert_eq!(r.kind.as_deref(), Some("PersistentVolumeClaim"));
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert_eq!(
            r.namespace.as_deref(),
            Some("apps"),
            "regarding.namespace must match"
        );
        assert_eq!(r.name.as_deref(), Some("data"));
        assert_eq!(
            r.uid.as_deref(),
            Some("claim-uid"),
            "kubectl describe filters on uid"
        );
        assert_eq!(
            r.resource_version, None,
            "a resourceVersion would split event series"
        );
    }

    #[test]
    fn pv_without_claim_targets_itself_cluster_scoped_in_default() {
        let t = target_from_pv("pvc-1", &pv(None));
        assert_eq!(
            t.event_namespace(),
            "default",
            "cluster-scoped objects' events go to default"
        );
        let r = t.object_ref();
        assert_eq!(r.kind.as_deref(), Some("PersistentVolume"));
        assert_eq!(r.namespace, None, "a PV reference must carry no namespace");
        assert_eq!(r.name.as_deref(), Some("pvc-1"));
        assert_eq!(r.uid.as_deref(), Some("pv-uid"));
    }

    #[test]
    fn claim_ref_with_an_empty_namespace_is_not_a_claim() {
        assert_eq!(
            claim_of(&pv(Some(("", "data", None)))),
            None,
            "empty namespace"
        );
        assert_eq!(claim_of(&pv(Some(("apps", "", None)))), None, "empty name");
    }
}
