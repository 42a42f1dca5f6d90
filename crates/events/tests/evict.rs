//! Eviction against a fake API server on 127.0.0.1: exactly the pods on this node using the PVC.

use rds_testkit::fake_api;

use fake_api::FakeApi;
use rds_events::{evict_pods_using_pvc, EvictError};

const NODE: &str = "node-a";

fn evicted_pod_names(api: &FakeApi) -> Vec<String> {
    api.requests_matching("POST", "/api/v1/namespaces/")
        .into_iter()
        .filter(|r| r.path.ends_with("/eviction"))
        .map(|r| r.path)
        .collect()
}

#[tokio::test]
async fn evicts_exactly_the_pods_on_this_node_using_the_pvc() {
    let api = FakeApi::start().await;
    api.add_pod("apps", "on-node-using", NODE, &["data"]);
    api.add_pod("apps", "other-node-using", "node-b", &["data"]);
    api.add_pod("apps", "on-node-other-claim", NODE, &["logs"]);
    api.add_pod("apps", "on-node-two-claims", NODE, &["logs", "data"]);
    api.add_pod("other", "other-namespace-same-claim-name", NODE, &["data"]);

    let outcome = evict_pods_using_pvc(&api.client(), NODE, "apps", "data")
        .await
        .expect("eviction should succeed against the fake API server");

    assert_eq!(outcome.evicted, ["on-node-using", "on-node-two-claims"]);
    assert!(
        outcome.refused.is_empty() && outcome.already_gone.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(
        evicted_pod_names(&api),
        [
            "/api/v1/namespaces/apps/pods/on-node-using/eviction",
            "/api/v1/namespaces/apps/pods/on-node-two-claims/eviction"
        ],
        "only those two pods may receive an eviction"
    );
    let list = api.requests_matching("GET", "/api/v1/namespaces/apps/pods");
    assert_eq!(list.len(), 1);
    assert!(
        list[0]
            .query
            .contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "the list must be filtered by node server-side: {}",
        list[0].query
    );
    assert!(
        api.requests().iter().all(|r| r.method != "DELETE"),
        "eviction must use the Eviction subresource, never DELETE"
    );
}

#[tokio::test]
async fn eviction_body_names_the_pod() {
    let api = FakeApi::start().await;
    api.add_pod("apps", "web-0", NODE, &["data"]);
    evict_pods_using_pvc(&api.client(), NODE, "apps", "data")
        .await
        .expect("eviction");
    let req = api
        .requests_matching("POST", "/api/v1/namespaces/apps/pods/web-0/eviction")
        .pop()
        .expect("an eviction request for web-0");
    let body = req.body.expect("eviction body");
    assert_eq!(body["kind"], "Eviction", "body: {body}");
    assert_eq!(body["apiVersion"], "policy/v1", "body: {body}");
    assert_eq!(body["metadata"]["name"], "web-0", "body: {body}");
}

#[tokio::test]
async fn pod_protected_by_a_disruption_budget_is_reported_refused_not_forced() {
    let api = FakeApi::start().await;
    api.add_pod("apps", "guarded", NODE, &["data"]);
    api.add_pod("apps", "free", NODE, &["data"]);
    api.add_pod("apps", "vanished", NODE, &["data"]);
    api.set_eviction_code("guarded", 429);
    api.set_eviction_code("vanished", 404);

    // Without kube's automatic 429 retry, so the refusal is observed at once.
    let outcome = evict_pods_using_pvc(&api.client_without_retry(), NODE, "apps", "data")
        .await
        .expect("a refusal is an outcome, not an error");

    assert_eq!(outcome.evicted, ["free"]);
    assert_eq!(outcome.already_gone, ["vanished"]);
    assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
    assert_eq!(outcome.refused[0].pod, "guarded");
    assert!(
        outcome.refused[0].reason.contains("disruption budget"),
        "reason should name the budget: {}",
        outcome.refused[0].reason
    );
}

#[tokio::test]
async fn no_pod_using_the_pvc_means_no_eviction() {
    let api = FakeApi::start().await;
    api.add_pod("apps", "unrelated", NODE, &["logs"]);
    let outcome = evict_pods_using_pvc(&api.client(), NODE, "apps", "data")
        .await
        .expect("listing works");
    assert!(outcome.evicted.is_empty(), "{outcome:?}");
    assert!(
        evicted_pod_names(&api).is_empty(),
        "no eviction may be sent"
    );
}

#[tokio::test]
async fn unreachable_api_server_is_a_list_error() {
    let client = fake_api::client_for(&fake_api::closed_port_url().await, true);
    let err = evict_pods_using_pvc(&client, NODE, "apps", "data").await;
    assert!(
        matches!(err, Err(EvictError::List { .. })),
        "expected EvictError::List, got {err:?}"
    );
}
