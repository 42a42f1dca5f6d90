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
//! The end of the timed span is taken by a waiter task on a runtime worker, woken by the change
//! itself, so it does not include the part of the trigger call that runs after the kernel has
//! sent its notification (see `condition_waiter`); the trigger call's own duration is printed
//! alongside.
//! Criterion's estimate is a mean; the `PERCENTILES` lines give p50/p99 over every timed
//! iteration. Needs root: the bench enters private mount and network namespaces first.

rds_testkit::private_namespaces!();

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use rds_harness::harness::*;
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use rds_types::Nqn;
use rds_types::{Health as Condition, VolumeId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::{report, Env, Fillers, WAIT};

const COUNTS: [usize; 3] = [20, 1_000, 10_000];
const SIZE: u64 = 64 << 20;
const VOL_UNMOUNT: &str = "pvc-bench-unmount";
const VOL_LOSS: &str = "pvc-bench-loss";

fn ext4() -> csi::VolumeCapability {
    mount_capability("ext4", Mode::SingleNodeWriter)
}

fn kind_is(kind: &'static str) -> impl Fn(&Condition) -> bool {
    move |c: &Condition| c.kind.as_str() == kind
}

async fn stage(e: &mut Env, vol: &str) {
    e.k.node
        .node_stage_volume(stage_request(&e.plugin, vol, ext4()))
        .await
        .expect("stage");
    e.plugin
        .running
        .monitor
        .wait_for(&VolumeId::parse(vol).unwrap(), None, WAIT, |c| {
            !c.abnormal()
        })
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

/// A waiter on a runtime worker that timestamps the moment `pred` first holds for `vol`, woken
/// by the change itself. Timing from the waiter rather than after the trigger call returns
/// matters: umount2 keeps waiting in the kernel (an RCU grace period) after it has sent the
/// mount notification, and the monitor has usually flagged the volume before umount2 returns.
/// Returns once the waiter is running.
async fn condition_waiter(
    e: &Env,
    vol: &'static str,
    kind: &'static str,
) -> JoinHandle<Option<Instant>> {
    let monitor = e.plugin.running.monitor.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    let h = tokio::spawn(async move {
        let _ = ready_tx.send(());
        let seen = monitor
            .wait_for(&VolumeId::parse(vol).unwrap(), None, WAIT, kind_is(kind))
            .await;
        let at = Instant::now();
        seen.ok().map(|_| at)
    });
    ready_rx.await.expect("the waiter starts");
    h
}

/// As [`condition_waiter`], for the device watcher's model no longer resolving `nqn`.
async fn removal_waiter(e: &Env, nqn: Nqn) -> JoinHandle<Option<Instant>> {
    let devices = e.plugin.running.devices.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    let h = tokio::spawn(async move {
        let _ = ready_tx.send(());
        let seen = devices
            .wait_until(WAIT, |m| {
                m.resolve(nqn.as_str(), None).is_none().then_some(())
            })
            .await;
        let at = Instant::now();
        seen.ok().map(|_| at)
    });
    ready_rx.await.expect("the waiter starts");
    h
}

/// Wait for the waiter; (trigger start to observed, the trigger call alone).
async fn observed(
    waiter: JoinHandle<Option<Instant>>,
    t0: Instant,
    trigger: Duration,
    what: &str,
) -> (Duration, Duration) {
    let at = waiter
        .await
        .expect("waiter task")
        .unwrap_or_else(|| panic!("{what} was not observed within {WAIT:?}"));
    (at.saturating_duration_since(t0), trigger)
}

/// Unmount the staging mount (`flags`: plain or `MNT_DETACH`), await `mount_missing`, stage
/// again.
async fn unmount_once(e: &mut Env, flags: nix::mount::MntFlags) -> (Duration, Duration) {
    let path = e.plugin.staging_path(VOL_UNMOUNT);
    let waiter = condition_waiter(e, VOL_UNMOUNT, "mount_missing").await;
    let t0 = Instant::now();
    nix::mount::umount2(&path, flags).expect("unmount the staging path");
    let trigger = t0.elapsed();
    let r = observed(waiter, t0, trigger, "mount_missing").await;
    stage(e, VOL_UNMOUNT).await;
    r
}

/// Lose the controller, await the device model's removal, unstage and stage again.
async fn loss_to_model_once(e: &mut Env) -> (Duration, Duration) {
    let nqn = nqn_for(VOL_LOSS);
    let waiter = removal_waiter(e, nqn.clone()).await;
    let t0 = Instant::now();
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("controller loss");
    let trigger = t0.elapsed();
    let r = observed(waiter, t0, trigger, "the namespace removal").await;
    unstage(e, VOL_LOSS).await;
    stage(e, VOL_LOSS).await;
    r
}

/// Lose the controller, await `device_gone`, unstage and stage again.
async fn loss_to_gone_once(e: &mut Env) -> (Duration, Duration) {
    let nqn = nqn_for(VOL_LOSS);
    let waiter = condition_waiter(e, VOL_LOSS, "device_gone").await;
    let t0 = Instant::now();
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("controller loss");
    let trigger = t0.elapsed();
    let r = observed(waiter, t0, trigger, "device_gone").await;
    unstage(e, VOL_LOSS).await;
    stage(e, VOL_LOSS).await;
    r
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
            let later = runs.iter().filter(|r| r.0 > r.1).count();
            println!(
                "{id}: observed after the trigger call returned in {later} of {} runs",
                runs.len()
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
