//! Latency of a filesystem-error notification on a real dead path: a fresh ext4 on a loop
//! device per iteration, its backing file truncated to 0 and the loop resized, then the
//! failing I/O (write, fsync, syncfs, create) runs and the watcher's event is awaited.
//!
//! Two figures:
//! * criterion's: from the start of the failing write to the event received by the caller
//!   (includes the kernel's own error path: EIO on data, journal abort in syncfs);
//! * printed p50/p99 of the notification alone: from the start of the operation that raises
//!   the error (the create that finds the aborted journal) to the event received.
//!
//! Runs in a private mount namespace (testkit constructor). Setup is not timed.

rds_testkit::private_namespaces!();

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use common::Ext4Loop;
use criterion::{criterion_group, criterion_main, Criterion};
use rds_fserror::{FsErrorEvent, FsErrorWatcher};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    if v.is_empty() {
        return;
    }
    v.sort();
    eprintln!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        percentile(&v, 0.50),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

fn bench(c: &mut Criterion) {
    rds_testkit::require_private_namespaces();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (handle, mut rx) = rt
        .block_on(async { FsErrorWatcher::spawn(64) })
        .expect("spawn watcher");
    let mut write_to_event = Vec::new();
    let mut trigger_to_event = Vec::new();

    let mut group = c.benchmark_group("fs_error");
    group.sample_size(10);
    group.bench_function("dead_path_write_to_event", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fs = Ext4Loop::new();
                handle.watch(&fs.mount_dir, fs.dev).expect("watch");
                let mut file = fs.open_file("data");
                fs.kill_path();

                let start = Instant::now();
                let _ = file.write_all(&[0x5a; 8192]);
                let _ = file.sync_all();
                let _ = nix::unistd::syncfs(&file);
                let trigger = Instant::now();
                let _ = File::create(fs.mount_dir.join("after-failure"));
                let ev = rt.block_on(async {
                    tokio::time::timeout(common::DEADLINE, async {
                        loop {
                            match rx.recv().await.expect("watcher running") {
                                FsErrorEvent::Error { dev, .. } if dev == fs.dev => break,
                                other => eprintln!("unrelated event: {other:?}"),
                            }
                        }
                    })
                    .await
                });
                let received = Instant::now();
                ev.expect("FAN_FS_ERROR within the deadline");
                total += received - start;
                write_to_event.push(received - start);
                trigger_to_event.push(received - trigger);
                let _ = handle.unwatch(fs.dev);
            }
            total
        })
    });
    group.finish();
    report("write start -> event received", write_to_event);
    report("triggering op start -> event received", trigger_to_event);
}

criterion_group!(benches, bench);
criterion_main!(benches);
