//! What posting costs the caller (the monitor task, CSI handlers), and how fast the background
//! task delivers to an API server on 127.0.0.1 (the fake one from the tests).

use rds_testkit::fake_api;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rds_events::{EventReason, EventSink, KubeSink, KubeSinkConfig, RecordingSink, VolumeEvent};

fn event(i: u64) -> VolumeEvent {
    VolumeEvent::new(
        "pvc-1",
        EventReason::StaleMountDetected,
        "Monitor",
        format!("device 259:{i} replaced"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_post(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("post");

    // Enqueue: the background task is parked on a held request, the queue has room for all.
    g.bench_function("enqueue", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let api = fake_api::FakeApi::start().await;
                let mut hold = api.hold();
                let mut config = KubeSinkConfig::new("node-a");
                config.queue_capacity = iters as usize + 1;
                let (sink, task) = KubeSink::spawn(api.client(), config);
                sink.post(event(0));
                hold.next_entered().await;
                let events: Vec<VolumeEvent> = (0..iters).map(event).collect();
                let start = Instant::now();
                for ev in events {
                    sink.post(ev);
                }
                let elapsed = start.elapsed();
                task.abort();
                elapsed
            })
        })
    });

    // Queue full (API server hung): the drop-and-count path.
    g.bench_function("drop_when_full", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let api = fake_api::FakeApi::start().await;
                let mut hold = api.hold();
                let mut config = KubeSinkConfig::new("node-a");
                config.queue_capacity = 1;
                let (sink, task) = KubeSink::spawn(api.client(), config);
                sink.post(event(0));
                hold.next_entered().await;
                sink.post(event(1));
                let events: Vec<VolumeEvent> = (0..iters).map(event).collect();
                let start = Instant::now();
                for ev in events {
                    sink.post(ev);
                }
                let elapsed = start.elapsed();
                assert_eq!(
                    sink.stats().dropped(),
                    iters,
                    "every post must have been dropped"
                );
                task.abort();
                elapsed
            })
        })
    });

    g.bench_function("recording_sink", |b| {
        let sink = RecordingSink::new();
        b.iter_custom(|iters| {
            let events: Vec<VolumeEvent> = (0..iters).map(event).collect();
            let start = Instant::now();
            for ev in events {
                sink.post(ev);
            }
            let elapsed = start.elapsed();
            sink.take();
            elapsed
        })
    });
    g.finish();
}

fn bench_delivery(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("deliver");
    g.sample_size(10);
    // Identical events: one create then series patches, over HTTP/1.1 on loopback.
    g.bench_function("series_patch_loopback", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let api = fake_api::FakeApi::start().await;
                api.add_pv("pvc-1", "pv-uid", Some(("apps", "data", "claim-uid")));
                let mut config = KubeSinkConfig::new("node-a");
                config.queue_capacity = iters as usize + 1;
                let (sink, task) = KubeSink::spawn(api.client(), config);
                let stats = sink.stats();
                let start = Instant::now();
                for _ in 0..iters {
                    sink.post(event(7));
                }
                drop(sink);
                tokio::time::timeout(Duration::from_secs(600), task)
                    .await
                    .expect("drain")
                    .expect("task");
                let elapsed = start.elapsed();
                assert_eq!(stats.posted(), iters, "all events must be delivered");
                elapsed
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_post, bench_delivery);
criterion_main!(benches);
