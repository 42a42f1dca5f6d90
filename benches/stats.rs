//! NodeGetVolumeStats over the plugin's real unix socket, the way kubelet polls it, with many
//! volumes staged for real (each one a target of the emulated fabric: its own loop device
//! behind an NVMe sysfs tree, connected and staged through NodeStageVolume).
//!
//! - `stats/block/<n>_volumes`: raw block volumes (no mkfs, so staging a thousand is quick);
//!   a call reads the monitor's condition (O(1)) and the device size (open + BLKGETSIZE64).
//! - `stats/ext4/<n>_volumes`: ext4 volumes (mkfs + mount each); a call reads the condition
//!   and statvfs of the staging mount.
//!
//! Calls go round-robin over the staged volumes. Criterion's estimate is a mean; the
//! `PERCENTILES` lines give p50/p99 over every timed call. Needs root: the bench enters private
//! mount and network namespaces first. Counts: `RDS_BENCH_BLOCK_VOLUMES` (default 1000),
//! `RDS_BENCH_EXT4_VOLUMES` (default 1000).

rds_testkit::private_namespaces!();

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rds_harness::harness::*;
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;

use common::{report, Env};

const BLOCK_SIZE: u64 = 1 << 20;
const EXT4_SIZE: u64 = 32 << 20;

fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Stage up to `n` volumes; stops at the first failure (reported) so the figures are taken
/// with as many as the machine allows. Returns the staged volume ids.
async fn stage_many(
    e: &mut Env,
    prefix: &str,
    n: usize,
    size: u64,
    cap: &csi::VolumeCapability,
) -> Vec<String> {
    let t0 = Instant::now();
    let mut staged = Vec::with_capacity(n);
    for i in 0..n {
        let vol = format!("pvc-{prefix}-{i:05}");
        if let Err(err) = e.plugin.fabric.add_target(&nqn_for(&vol), size) {
            println!("stats: adding target {vol} failed after {i} volumes: {err}");
            break;
        }
        // kubelet creates the staging directory before NodeStageVolume.
        std::fs::create_dir_all(e.plugin.staging_path(&vol)).expect("staging dir");
        match e
            .k
            .node
            .node_stage_volume(stage_request(&e.plugin, &vol, cap.clone()))
            .await
        {
            Ok(_) => staged.push(vol),
            Err(status) => {
                println!("stats: staging {vol} failed after {i} volumes: {status}");
                break;
            }
        }
    }
    println!(
        "stats: staged {} {prefix} volumes in {:?}",
        staged.len(),
        t0.elapsed()
    );
    staged
}

async fn unstage_all(e: &mut Env, vols: &[String]) {
    for vol in vols {
        e.k.node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: vol.clone(),
                staging_target_path: e.plugin.staging_path(vol).display().to_string(),
            })
            .await
            .expect("unstage");
    }
}

fn bench_stats(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    e: &mut Env,
    kind: &str,
    vols: &[String],
) {
    if vols.is_empty() {
        return;
    }
    let name = format!("stats/{kind}/{}_volumes", vols.len());
    let reqs: Vec<csi::NodeGetVolumeStatsRequest> = vols
        .iter()
        .map(|v| csi::NodeGetVolumeStatsRequest {
            volume_id: v.clone(),
            volume_path: e.plugin.staging_path(v).display().to_string(),
            staging_target_path: String::new(),
        })
        .collect();
    let mut samples = Vec::new();
    let mut next = 0usize;
    c.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let req = reqs[next % reqs.len()].clone();
                    next += 1;
                    let t0 = Instant::now();
                    let r = e.k.node.node_get_volume_stats(req).await;
                    let dt = t0.elapsed();
                    let r = r.expect("NodeGetVolumeStats").into_inner();
                    let cond = r.volume_condition.expect("a condition is always reported");
                    assert!(
                        !cond.abnormal,
                        "a staged volume is healthy: {}",
                        cond.message
                    );
                    assert!(!r.usage.is_empty(), "usage is measured");
                    samples.push(dt);
                    total += dt;
                }
                total
            })
        })
    });
    report(&name, &mut samples);
}

fn stats(c: &mut Criterion) {
    rds_testkit::require_private_namespaces();
    let rt = common::runtime();
    let mut e = rt.block_on(Env::start());

    let n_block = count_from_env("RDS_BENCH_BLOCK_VOLUMES", 1000);
    let block = rt.block_on(stage_many(
        &mut e,
        "blk",
        n_block,
        BLOCK_SIZE,
        &block_capability(),
    ));
    bench_stats(c, &rt, &mut e, "block", &block);

    let n_ext4 = count_from_env("RDS_BENCH_EXT4_VOLUMES", 1000);
    let ext4 = rt.block_on(stage_many(
        &mut e,
        "fs",
        n_ext4,
        EXT4_SIZE,
        &mount_capability("ext4", Mode::SingleNodeWriter),
    ));
    // With both sets staged: the ext4 calls run with block + ext4 volumes on the node.
    bench_stats(c, &rt, &mut e, "ext4", &ext4);

    let t0 = Instant::now();
    rt.block_on(async {
        unstage_all(&mut e, &ext4).await;
        unstage_all(&mut e, &block).await;
    });
    println!(
        "stats: unstaged {} volumes in {:?}",
        block.len() + ext4.len(),
        t0.elapsed()
    );
    let Env { dir, plugin, k } = e;
    drop(k);
    let fabric = rt.block_on(plugin.stop()).expect("plugin stops");
    fabric.shutdown();
    drop(dir);
}

criterion_group!(benches, stats);
criterion_main!(benches);
