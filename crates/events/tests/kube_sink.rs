//! End-to-end tests of KubeSink against a fake API server on 127.0.0.1: what reaches the wire.

use rds_testkit::fake_api;

use std::time::Duration;

use fake_api::{client_for, closed_port_url, FakeApi, Recorded};
use rds_events::{
    EventReason, EventSink, EventType, KubeSink, KubeSinkConfig, StatsSnapshot, VolumeEvent,
};
use serde_json::Value;
use tokio::task::JoinHandle;

const NODE: &str = "node-a";
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// Drops the sink (closing the queue) and waits for the background task to deliver everything.
async fn drain(sink: KubeSink, task: JoinHandle<()>) -> StatsSnapshot {
    let stats = sink.stats();
    drop(sink);
    tokio::time::timeout(DRAIN_DEADLINE, task)
        .await
        .expect("the sink's task should finish within 60 s once the sink is dropped")
        .expect("the sink's task should not panic");
    stats.snapshot()
}

fn stale(note: &str) -> VolumeEvent {
    VolumeEvent::new("pvc-1", EventReason::StaleMountDetected, "Monitor", note)
}

fn body(r: &Recorded) -> &Value {
    r.body.as_ref().expect("request should carry a JSON body")
}

#[tokio::test]
async fn event_lands_on_the_pvc_in_the_pvcs_namespace() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    sink.post(stale("device 259:3 replaced by 259:5"));
    let stats = drain(sink, task).await;

    let creates = api.requests_matching("POST", "/apis/events.k8s.io/v1/namespaces/");
    assert_eq!(
        creates.len(),
        1,
        "one event create expected, got {:?}",
        api.requests()
    );
    assert_eq!(
        creates[0].path, "/apis/events.k8s.io/v1/namespaces/apps/events",
        "the event must be created in the PVC's namespace"
    );
    let ev = body(&creates[0]);
    let regarding = &ev["regarding"];
    assert_eq!(
        regarding["kind"], "PersistentVolumeClaim",
        "regarding: {regarding}"
    );
    assert_eq!(regarding["apiVersion"], "v1", "regarding: {regarding}");
    assert_eq!(regarding["namespace"], "apps", "regarding: {regarding}");
    assert_eq!(regarding["name"], "data", "regarding: {regarding}");
    assert_eq!(
        regarding["uid"], "claim-uid",
        "kubectl describe needs the uid: {regarding}"
    );
    assert_eq!(ev["metadata"]["namespace"], "apps", "event: {ev}");
    assert_eq!(ev["reason"], "StaleMountDetected");
    assert_eq!(ev["note"], "device 259:3 replaced by 259:5");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["action"], "Monitor");
    assert_eq!(ev["reportingController"], "rds.csi.srvlab.io");
    assert_eq!(ev["reportingInstance"], NODE);
    assert_eq!(
        ev["related"]["kind"], "Node",
        "the node is the related object: {ev}"
    );
    assert_eq!(ev["related"]["name"], NODE);
    assert!(
        ev["eventTime"].is_string(),
        "events.k8s.io requires eventTime: {ev}"
    );
    assert_eq!(
        stats,
        StatsSnapshot {
            posted: 1,
            ..StatsSnapshot::default()
        },
        "one posted, nothing dropped or failed"
    );
}

#[tokio::test]
async fn repeated_identical_events_are_patched_into_one_series() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    for _ in 0..3 {
        sink.post(stale("dead superblock"));
    }
    let stats = drain(sink, task).await;

    let creates = api.requests_matching("POST", "/apis/events.k8s.io/");
    let patches = api.requests_matching("PATCH", "/apis/events.k8s.io/");
    assert_eq!(
        (creates.len(), patches.len()),
        (1, 2),
        "3 identical events must be 1 create + 2 series patches, got {:?}",
        api.requests()
    );
    let name = body(&creates[0])["metadata"]["name"]
        .as_str()
        .expect("created event has a name")
        .to_owned();
    for p in &patches {
        assert_eq!(
            p.path,
            format!("/apis/events.k8s.io/v1/namespaces/apps/events/{name}"),
            "series patches must target the first event"
        );
    }
    assert_eq!(
        body(&patches[1])["series"]["count"],
        3,
        "the last patch must count 3 occurrences"
    );
    assert_eq!(
        api.requests_matching("GET", "/api/v1/persistentvolumes/")
            .len(),
        1,
        "the PV -> PVC resolution must be cached"
    );
    assert_eq!(stats.posted, 3, "every occurrence counts as posted");
}

#[tokio::test]
async fn a_changed_note_starts_a_new_event_instead_of_hiding_in_the_old_series() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    let failed =
        |note: &str| VolumeEvent::new("pvc-1", EventReason::RecoveryFailed, "Recover", note);
    sink.post(failed("attempt 1: timeout"));
    sink.post(failed("attempt 3: EIO"));
    drain(sink, task).await;

    let notes: Vec<Value> = api
        .requests_matching("POST", "/apis/events.k8s.io/")
        .iter()
        .map(|r| body(r)["note"].clone())
        .collect();
    assert_eq!(
        notes,
        ["attempt 1: timeout", "attempt 3: EIO"],
        "each distinct note must be created as its own event"
    );
    assert!(
        api.requests_matching("PATCH", "/apis/").is_empty(),
        "no series patch expected for distinct notes"
    );
}

#[tokio::test]
async fn after_a_failed_series_patch_the_next_repeat_creates_a_fresh_event() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    api.fail_next("PATCH", 500, 1);
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    sink.post(stale("dead")); // create
    sink.post(stale("dead")); // patch, fails
    sink.post(stale("dead")); // must not patch an event that may be gone: create
    let stats = drain(sink, task).await;

    let methods: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/apis/events.k8s.io/"))
        .map(|r| r.method)
        .collect();
    assert_eq!(
        methods,
        ["POST", "PATCH", "POST"],
        "a failed series patch must make the next occurrence a new event"
    );
    assert_eq!((stats.posted, stats.failed), (2, 1));
}

#[tokio::test]
async fn pv_without_claim_gets_the_event_itself_in_default() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", None);
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    sink.post(VolumeEvent::new(
        "pvc-1",
        EventReason::ConnectionRecovery,
        "Connect",
        "back",
    ));
    let stats = drain(sink, task).await;

    let creates = api.requests_matching("POST", "/apis/events.k8s.io/");
    assert_eq!(
        creates.len(),
        1,
        "one create expected: {:?}",
        api.requests()
    );
    assert_eq!(
        creates[0].path, "/apis/events.k8s.io/v1/namespaces/default/events",
        "events about cluster-scoped objects go to the default namespace"
    );
    let ev = body(&creates[0]);
    assert_eq!(ev["regarding"]["kind"], "PersistentVolume");
    assert_eq!(ev["regarding"]["name"], "pvc-1");
    assert_eq!(ev["regarding"]["uid"], "pv-uid");
    assert!(
        ev["regarding"].get("namespace").is_none(),
        "a PV reference must have no namespace: {ev}"
    );
    assert_eq!(ev["type"], "Normal", "ConnectionRecovery is Normal");
    assert_eq!((stats.posted, stats.unresolved), (1, 1));
}

#[tokio::test]
async fn unknown_pv_still_reports_on_the_pv_name() {
    let api = FakeApi::start().await;
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    sink.post(VolumeEvent::new(
        "pvc-gone",
        EventReason::MountFailure,
        "Stage",
        "x",
    ));
    let stats = drain(sink, task).await;

    let creates = api.requests_matching("POST", "/apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(
        creates.len(),
        1,
        "the event must still be posted: {:?}",
        api.requests()
    );
    assert_eq!(body(&creates[0])["regarding"]["name"], "pvc-gone");
    assert_eq!((stats.posted, stats.unresolved), (1, 1));
}

#[tokio::test]
async fn long_notes_are_trimmed_to_the_api_limit_not_rejected() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));

    sink.post(stale(&"x".repeat(5000)));
    drain(sink, task).await;

    let creates = api.requests_matching("POST", "/apis/events.k8s.io/");
    let note = body(&creates[0])["note"].as_str().expect("note").to_owned();
    assert_eq!(note.len(), rds_events::MAX_NOTE, "note must be cut to 1 kB");
}

#[tokio::test]
async fn api_server_down_counts_failures_and_never_blocks_posting() {
    let client = client_for(&closed_port_url().await, true);
    let (sink, task) = KubeSink::spawn(client, KubeSinkConfig::new(NODE));

    for i in 0..5 {
        sink.post(stale(&format!("n{i}")));
    }
    let stats = drain(sink, task).await;

    assert_eq!(
        stats,
        StatsSnapshot {
            posted: 0,
            dropped: 0,
            failed: 5,
            unresolved: 5
        },
        "every event must fail (and be attached to the PV, the PV being unreadable)"
    );
}

#[tokio::test]
async fn hung_api_server_costs_one_delivery_deadline_per_event() {
    let api = FakeApi::start().await;
    let mut hold = api.hold();
    let mut config = KubeSinkConfig::new(NODE);
    config.delivery_timeout = Duration::from_millis(100);
    let (sink, task) = KubeSink::spawn(api.client(), config);

    sink.post(stale("a"));
    sink.post(stale("b"));
    hold.next_entered().await;
    let stats = drain(sink, task).await;

    assert_eq!(
        (stats.posted, stats.failed),
        (0, 2),
        "both events must fail at their deadline while the server hangs"
    );
}

#[tokio::test]
async fn full_queue_drops_and_counts_without_blocking() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    let mut hold = api.hold();
    let mut config = KubeSinkConfig::new(NODE);
    config.queue_capacity = 2;
    let (sink, task) = KubeSink::spawn(api.client(), config);
    let stats = sink.stats();

    sink.post(stale("in flight"));
    let first = hold.next_entered().await;
    assert_eq!(
        first, "GET /api/v1/persistentvolumes/pvc-1",
        "the task is busy with event 1"
    );
    sink.post(stale("queued 1"));
    sink.post(stale("queued 2"));
    assert_eq!(stats.dropped(), 0, "two events fit in a queue of 2");
    sink.post(stale("one too many"));
    assert_eq!(
        stats.dropped(),
        1,
        "the event beyond the queue must be dropped at once"
    );

    hold.release();
    let snap = drain(sink, task).await;
    assert_eq!(
        (snap.posted, snap.dropped, snap.failed),
        (3, 1, 0),
        "the three queued events must go out after the server recovers"
    );
}

#[tokio::test]
async fn posting_after_the_task_is_gone_is_counted_as_dropped() {
    let api = FakeApi::start().await;
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));
    task.abort();
    let _ = task.await;
    sink.post(stale("late"));
    assert_eq!(
        sink.stats().dropped(),
        1,
        "a post to a stopped sink must be counted dropped"
    );
}

#[tokio::test]
async fn warning_type_override_reaches_the_wire() {
    let api = FakeApi::start().await;
    api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
    let (sink, task) = KubeSink::spawn(api.client(), KubeSinkConfig::new(NODE));
    sink.post(
        VolumeEvent::new(
            "pvc-1",
            EventReason::ConnectionRecovery,
            "Connect",
            "flapping",
        )
        .with_type(EventType::Warning),
    );
    drain(sink, task).await;
    let creates = api.requests_matching("POST", "/apis/events.k8s.io/");
    assert_eq!(body(&creates[0])["type"], "Warning");
}
