//! Cost of the hot-path recording methods (called from the monitor's event loop and CSI
//! handlers), and of one scrape encode for scale.
//!
//! `cargo bench -p rds-metrics --bench record -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rds_metrics::{ConnectResult, Metrics, RecoveryResult, ResyncReason, ResyncSource};

fn record(c: &mut Criterion) {
    let m = Metrics::new("bench");
    // Existing series: the steady state after the first event of each kind.
    m.detection_latency("mount_missing", Duration::from_micros(40));
    m.csi_operation("NodeGetVolumeStats", 0, Duration::from_micros(300));
    m.stale_detected("mount_missing");

    let mut g = c.benchmark_group("record");
    g.bench_function("uevents_processed", |b| {
        b.iter(|| m.uevents_processed(black_box(1)))
    });
    g.bench_function("resync", |b| {
        b.iter(|| {
            m.resync(
                black_box(ResyncSource::Mounts),
                black_box(ResyncReason::Overflow),
            )
        })
    });
    g.bench_function("set_mount_table_size", |b| {
        b.iter(|| m.set_mount_table_size(black_box(120)))
    });
    g.bench_function("stale_detected", |b| {
        b.iter(|| m.stale_detected(black_box("mount_missing")))
    });
    g.bench_function("detection_latency", |b| {
        b.iter(|| {
            m.detection_latency(
                black_box("mount_missing"),
                black_box(Duration::from_micros(40)),
            )
        })
    });
    g.bench_function("csi_operation", |b| {
        b.iter(|| {
            m.csi_operation(
                black_box("NodeGetVolumeStats"),
                black_box(0),
                black_box(Duration::from_micros(300)),
            )
        })
    });
    g.bench_function("nvme_connect", |b| {
        b.iter(|| {
            m.nvme_connect(
                black_box(ConnectResult::Succeeded),
                black_box(Duration::from_millis(80)),
            )
        })
    });
    g.bench_function("recovery_finished", |b| {
        b.iter(|| {
            m.recovery_finished(
                black_box(RecoveryResult::Succeeded),
                black_box(Duration::from_secs(1)),
            )
        })
    });
    let snapshot: [(&'static str, u64); 8] = [
        ("healthy", 40),
        ("controller_reconnecting", 0),
        ("mount_missing", 1),
        ("filesystem_failed", 0),
        ("device_replaced", 0),
        ("recovering", 1),
        ("device_gone", 0),
        ("mount_storm", 0),
    ];
    g.bench_function("set_conditions_8_kinds", |b| {
        b.iter(|| m.set_conditions(black_box(&snapshot)))
    });
    g.bench_function("set_events", |b| {
        b.iter(|| m.set_events(black_box(10), black_box(1), black_box(0)))
    });
    g.finish();

    c.bench_function("encode_scrape", |b| {
        b.iter(|| black_box(m.encode().expect("encode")))
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
