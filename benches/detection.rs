//! Detection latency end to end: a kernel-side change to a staged volume, until the condition
//! is visible through the monitor's query API (`MonitorHandle::wait_for`, the map
//! NodeGetVolumeStats reads), with 20 / 1,000 / 10,000 mounts in the (private) namespace and
//! the mount watcher in its default mode (Auto = fanotify mount events on this kernel).
//!
//! Cases, per mount count:
//! - `unmount_to_mount_missing`: `umount2` of the staging mount behind the plugin's back until
//!   the volume reads `mount_missing`.
//! - `lazy_unmount_to_mount_missing`: the same with `MNT_DETACH`. A plain umount2 waits for
//!   an RCU grace period before it returns (milliseconds on a busy machine), and the monitor
//!   has flagged the volume before the call returns; the lazy unmount returns without that
//!   wait, so its figure is closer to the pipeline's own latency.
//! - `controller_loss_to_device_model`: the emulated fabric's `lose_controller` (sysfs tree
//!   removal + `remove` uevents) until the device watcher's model, the monitor's input, no
//!   longer resolves the namespace. The monitor itself publishes nothing at that moment: by
//!   design (hysteresis, see rds-monitor) a removed namespace makes the volume abnormal only
//!   after the gone grace, because a reconnect removes and re-adds it.
//! - `controller_loss_to_device_gone`: the same trigger until the volume reads `device_gone`:
//!   the harness's 1 s grace plus the detection latency.
//!
//! Each iteration stages (not timed), triggers, awaits the condition, restages (not timed).
//! Criterion's estimate is a mean; the `PERCENTILES` lines give p50/p99 over every timed
//! iteration. Needs root: the bench enters private mount and network namespaces first.

rds_testkit::private_namespaces!();

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use rds_csi_node::csi;
use rds_csi_node::csi::volume_capability::access_mode::Mode;
use rds_csi_node::harness::*;
use rds_csi_node::node::observer::Condition;

use common::{report, Env, Fillers, WAIT};

const COUNTS: [usize; 3] = [20, 1_000, 10_000];
const SIZE: u64 = 64 << 20;
const VOL_UNMOUNT: &str = "pvc-bench-unmount";
const VOL_LOSS: &str = "pvc-bench-loss";

fn ext4() -> csi::VolumeCapability {
    mount_capability("ext4", Mode::SingleNodeWriter)
}

fn kind_is(kind: &'static str) -> impl Fn(&Condition) -> bool {
    move |c: &Condition| c.abnormal && c.message.starts_with(kind)
}

async fn stage(e: &mut Env, vol: &str) {
    e.k.node
        .node_stage_volume(stage_request(&e.plugin, vol, ext4()))
        .await
        .expect("stage");
    e.plugin
        .running
        .monitor
        .wait_for(vol, WAIT, |c| !c.abnormal)
        .await
        .expect("healthy after stage");
}

async fn unstage(e: &mut Env, vol: &str) {
    e.k.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.into(),
            staging_target_path: e.plugin.staging_path(vol).display().to_string(),
        })
        .await
        .expect("unstage");
}

/// Unmount the staging mount (`flags`: plain or `MNT_DETACH`), await `mount_missing`, stage
/// again.
async fn unmount_once(e: &mut Env, flags: nix::mount::MntFlags) -> (Duration, Duration) {
    let path = e.plugin.staging_path(VOL_UNMOUNT);
    let t0 = Instant::now();
    nix::mount::umount2(&path, flags).expect("unmount the staging path");
    let trigger = t0.elapsed();
    let seen = e
        .plugin
        .running
        .monitor
        .wait_for(VOL_UNMOUNT, WAIT, kind_is("mount_missing"))
        .await;
    let dt = t0.elapsed();
    seen.expect("mount_missing is flagged");
    stage(e, VOL_UNMOUNT).await;
    (dt, trigger)
}

/// Lose the controller, await the device model's removal, unstage and stage again.
async fn loss_to_model_once(e: &mut Env) -> (Duration, Duration) {
    let nqn = nqn_for(VOL_LOSS);
    let t0 = Instant::now();
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("controller loss");
    let trigger = t0.elapsed();
    let seen = e
        .plugin
        .running
        .devices
        .wait_until(WAIT, |m| {
            m.resolve(nqn.as_str(), None).is_none().then_some(())
        })
        .await;
    let dt = t0.elapsed();
    seen.expect("the device model drops the namespace");
    unstage(e, VOL_LOSS).await;
    stage(e, VOL_LOSS).await;
    (dt, trigger)
}

/// Lose the controller, await `device_gone`, unstage and stage again.
async fn loss_to_gone_once(e: &mut Env) -> (Duration, Duration) {
    let nqn = nqn_for(VOL_LOSS);
    let t0 = Instant::now();
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("controller loss");
    let trigger = t0.elapsed();
    let seen = e
        .plugin
        .running
        .monitor
        .wait_for(VOL_LOSS, WAIT, kind_is("device_gone"))
        .await;
    let dt = t0.elapsed();
    seen.expect("device_gone after the grace");
    unstage(e, VOL_LOSS).await;
    stage(e, VOL_LOSS).await;
    (dt, trigger)
}

#[derive(Clone, Copy)]
enum Case {
    Unmount,
    LazyUnmount,
    LossToModel,
    LossToGone,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Unmount => "unmount_to_mount_missing",
            Case::LazyUnmount => "lazy_unmount_to_mount_missing",
            Case::LossToModel => "controller_loss_to_device_model",
            Case::LossToGone => "controller_loss_to_device_gone",
        }
    }

    /// One iteration: (trigger to observed, the trigger call alone).
    async fn once(self, e: &mut Env) -> (Duration, Duration) {
        match self {
            Case::Unmount => unmount_once(e, nix::mount::MntFlags::empty()).await,
            Case::LazyUnmount => unmount_once(e, nix::mount::MntFlags::MNT_DETACH).await,
            Case::LossToModel => loss_to_model_once(e).await,
            Case::LossToGone => loss_to_gone_once(e).await,
        }
    }
}

fn detection(c: &mut Criterion) {
    rds_testkit::require_private_namespaces();
    let rt = common::runtime();
    let mut e = rt.block_on(Env::start());
    for vol in [VOL_UNMOUNT, VOL_LOSS] {
        e.plugin
            .fabric
            .add_target(&nqn_for(vol), SIZE)
            .expect("target");
        rt.block_on(stage(&mut e, vol));
    }
    let mut fillers = Fillers::new(e.dir.path());

    for count in COUNTS {
        fillers.grow_to(count);
        let total = common::mounts_in_namespace();
        rt.block_on(common::settle_watcher(&e.plugin, total));
        println!("detection: {total} mounts in the namespace");

        let mut g = c.benchmark_group(format!("detection/{count}_mounts"));
        // Every iteration restages a volume (milliseconds of untimed work, a second for the
        // gone grace): few, flat samples keep the run inside its time budget.
        g.sample_size(10).sampling_mode(SamplingMode::Flat);

        for case in [
            Case::Unmount,
            Case::LazyUnmount,
            Case::LossToModel,
            Case::LossToGone,
        ] {
            let mut runs: Vec<(Duration, Duration)> = Vec::new();
            g.bench_function(case.name(), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let run = case.once(&mut e).await;
                            runs.push(run);
                            total += run.0;
                        }
                        total
                    })
                })
            });
            let id = format!("detection/{count}_mounts/{}", case.name());
            let mut all: Vec<Duration> = runs.iter().map(|r| r.0).collect();
            report(&id, &mut all);
            let mut trigger: Vec<Duration> = runs.iter().map(|r| r.1).collect();
            report(&format!("{id} [trigger call alone]"), &mut trigger);
            let mut after: Vec<Duration> = runs.iter().map(|r| r.0.saturating_sub(r.1)).collect();
            report(
                &format!("{id} [after the trigger call returned]"),
                &mut after,
            );
            if matches!(case, Case::LossToGone) {
                let mut beyond: Vec<Duration> = runs
                    .iter()
                    .map(|r| r.0.saturating_sub(GONE_GRACE))
                    .collect();
                report(&format!("{id} [minus the 1 s grace]"), &mut beyond);
            }
        }
        g.finish();
    }

    // Clean up: unstage (unmounts; the lost controllers' loop devices detach with their last
    // mount), stop the plugin, detach what the fabric still holds, drop the fillers.
    rt.block_on(async {
        for vol in [VOL_UNMOUNT, VOL_LOSS] {
            unstage(&mut e, vol).await;
        }
    });
    let Env { dir, plugin, k } = e;
    drop(k);
    let fabric = rt.block_on(plugin.stop()).expect("plugin stops");
    fabric.shutdown();
    drop(fillers);
    drop(dir);
}

criterion_group!(benches, detection);
criterion_main!(benches);
