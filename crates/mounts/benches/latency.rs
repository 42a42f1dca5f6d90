//! Detection latency: from `mount(2)` returning to the typed `Attached` event, with tables of
//! about 20, 1,000 and 10,000 entries, for each strategy. Runs in a private mount namespace.
//!
//! `cargo bench -p rds-mounts --bench latency -- --warm-up-time 1 --measurement-time 3`
rds_testkit::private_namespaces!();

mod common;

use std::time::{Duration, Instant};

use common::{runtime, start, wait_for, Fixture, STRATEGIES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nix::mount::{umount2, MntFlags};
use rds_mounts::watch::MountEvent;

fn bench_latency(c: &mut Criterion) {
    let rt = runtime();
    let mut fx = Fixture::new();
    let probe = fx.probe();
    let mut g = c.benchmark_group("mount_to_event");
    g.sample_size(10);
    for n in [20usize, 1_000, 10_000] {
        fx.fill_to(n);
        let entries = common::table_len();
        for strategy in STRATEGIES {
            let (h, mut rx) = rt.block_on(start(strategy));
            let id = BenchmarkId::new(format!("{strategy:?}"), entries);
            // Every iteration's latency (criterion reports means): for p50/p99 below.
            let samples = std::cell::RefCell::new(Vec::new());
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t0 = Instant::now();
                            common::bind(&fx.base, &probe);
                            wait_for(
                                &mut rx,
                                |e| matches!(e, MountEvent::Attached(m) if m.mount_point == probe),
                            )
                            .await;
                            let dt = t0.elapsed();
                            samples.borrow_mut().push(dt);
                            total += dt;
                            umount2(&probe, MntFlags::empty()).expect("umount probe");
                            wait_for(
                                &mut rx,
                                |e| matches!(e, MountEvent::Detached(m) if m.mount_point == probe),
                            )
                            .await;
                        }
                        total
                    })
                })
            });
            let mut v = samples.into_inner();
            v.sort();
            if !v.is_empty() {
                let pct = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
                println!(
                    "mount_to_event/{strategy:?}/{entries}: n={} p50={:?} p99={:?} max={:?}",
                    v.len(),
                    pct(0.50),
                    pct(0.99),
                    v[v.len() - 1]
                );
            }
            drop(h);
        }
    }
    g.finish();
}

criterion_group!(benches, bench_latency);
criterion_main!(benches);
