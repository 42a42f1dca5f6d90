//! Storm cost: the watcher's CPU time while 1,000 / 5,000 / 10,000 bind mounts of one tmpfs
//! are added one by one, for each strategy, until its table holds them all (the storm is
//! reported on the way). CPU is the process's `getrusage` user+system time minus the same
//! mount loop's without a watcher (measured first, printed), so the figure is what the
//! watcher adds, including the fanotify work done inside mount(2).
//!
//! `cargo bench -p rds-mounts --bench storm_cost -- --warm-up-time 1 --measurement-time 3`
rds_testkit::private_namespaces!();

mod common;

use std::time::Duration;

use common::{runtime, start, wait_for, Fixture, STRATEGIES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use nix::mount::{umount2, MntFlags};

fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Mount `n` binds of the fixture's base under a fresh holder; returns the CPU spent.
fn mount_many(fx: &Fixture, round: usize, n: usize) -> (std::path::PathBuf, Duration) {
    let holder = fx.holder.join(format!("round{round}"));
    common::tmpfs("storm holder", &holder);
    let t0 = cpu();
    for i in 0..n {
        let at = holder.join(format!("b{i}"));
        std::fs::create_dir(&at).expect("mkdir");
        common::bind(&fx.base, &at);
    }
    (holder, cpu() - t0)
}

fn bench_storm(c: &mut Criterion) {
    let rt = runtime();
    let fx = Fixture::new();
    // Each round mounts under a fresh holder directory.
    let round = std::cell::Cell::new(0usize);
    let next_round = || {
        round.set(round.get() + 1);
        round.get()
    };
    let mut g = c.benchmark_group("storm_watcher_cpu");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in [1_000usize, 5_000, 10_000] {
        // Baseline: the mount loop alone.
        let (holder, base_cpu) = mount_many(&fx, next_round(), n);
        umount2(&holder, MntFlags::MNT_DETACH).expect("lazy umount");
        eprintln!("baseline: mounting {n} binds without a watcher costs {base_cpu:?} CPU");
        for strategy in STRATEGIES {
            g.bench_function(BenchmarkId::new(format!("{strategy:?}"), n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (h, mut rx) = rt.block_on(start(strategy));
                        let before = h.table().device_count(fx.dev);
                        let t0 = cpu();
                        let (holder, _) = mount_many(&fx, next_round(), n);
                        rt.block_on(async {
                            while h.table().device_count(fx.dev) < before + n {
                                wait_for(&mut rx, |_| true).await;
                            }
                        });
                        total += (cpu() - t0).saturating_sub(base_cpu);
                        drop((h, rx));
                        umount2(&holder, MntFlags::MNT_DETACH).expect("lazy umount");
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_storm);
criterion_main!(benches);
