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
//! The baseline, in the same run and on the same trigger: a bare fanotify listener (a thread
//! blocked in `read(2)` on its own `FAN_MNT_DETACH` mark of the mount namespace, as the
//! kernel's C example does) timestamps the moment the kernel hands it the detach of the very
//! umount2 the plugin is timed on; `[kernel: bare fanotify listener]` lines report it and
//! `[plugin / kernel]` the ratio, per unmount case.
//!
//! Each iteration stages (not timed), triggers, awaits the condition, restages (not timed).
//! The end of the timed span is the moment the condition went into the map NodeGetVolumeStats
//! reads (the report's publish stamp), fetched by a waiter task woken by the change itself, so
//! it does not include the part of the trigger call that runs after the kernel has sent its
//! notification (see `condition_waiter`); `[a waiter task woken]` adds the waiter's own
//! scheduling, and the trigger call's own duration is printed alongside.
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

/// Unstage, as kubelet does: an Aborted answer (the plugin's own recovery holds the volume,
/// after a loss) is retried.
async fn unstage(e: &mut Env, vol: &str) {
    let started = Instant::now();
    loop {
        let r =
            e.k.node
                .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                    volume_id: vol.into(),
                    staging_target_path: e.plugin.staging_path(vol).display().to_string(),
                })
                .await;
        match r {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::Aborted && started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unstage: {s}"),
        }
    }
}

/// A waiter on a runtime worker, woken by the change itself, that returns the moment the
/// condition went into the map NodeGetVolumeStats reads (the report's publish stamp: from then
/// on every call answers it), and when the waiter itself got to run. Timing from the waiter rather than after the trigger call returns
/// matters: umount2 keeps waiting in the kernel (an RCU grace period) after it has sent the
/// mount notification, and the monitor has usually flagged the volume before umount2 returns.
/// Returns once the waiter is running.
async fn condition_waiter(
    e: &Env,
    vol: &'static str,
    kind: &'static str,
) -> JoinHandle<Option<(Instant, Instant)>> {
    let monitor = e.plugin.running.monitor.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    let h = tokio::spawn(async move {
        let _ = ready_tx.send(());
        let id = VolumeId::parse(vol).unwrap();
        let seen = monitor.wait_for(&id, None, WAIT, kind_is(kind)).await;
        let woken = Instant::now();
        seen.ok()?;
        let published = monitor
            .conditions()
            .report(&id)
            .filter(|r| r.volume.kind.as_str() == kind)
            .map_or(woken, |r| r.published);
        Some((published, woken))
    });
    ready_rx.await.expect("the waiter starts");
    h
}

/// As [`condition_waiter`], for the device watcher's model no longer resolving `nqn`.
async fn removal_waiter(e: &Env, nqn: Nqn) -> JoinHandle<Option<(Instant, Instant)>> {
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
        seen.ok().map(|_| (at, at))
    });
    ready_rx.await.expect("the waiter starts");
    h
}

/// One timed iteration, from the trigger's start.
#[derive(Clone, Copy)]
struct Run {
    /// Until the condition (or model change) was there for every reader.
    visible: Duration,
    /// The trigger call alone.
    trigger: Duration,
    /// Until a waiter task woken by the change got to run.
    woken: Duration,
}

/// Wait for the waiter.
async fn observed(
    waiter: JoinHandle<Option<(Instant, Instant)>>,
    t0: Instant,
    trigger: Duration,
    what: &str,
) -> Run {
    let (visible, woken) = waiter
        .await
        .expect("waiter task")
        .unwrap_or_else(|| panic!("{what} was not observed within {WAIT:?}"));
    Run {
        visible: visible.saturating_duration_since(t0),
        trigger,
        woken: woken.saturating_duration_since(t0),
    }
}

/// The kernel's own latency: a thread blocked in read(2) on a fanotify group of its own with
/// a `FAN_MNT_DETACH` mark on this mount namespace; every detach it is handed is timestamped
/// and sent on. Raw syscalls, nothing between the kernel and the timestamp.
struct BareListener {
    rx: std::sync::mpsc::Receiver<Instant>,
}

impl BareListener {
    fn start() -> Self {
        const FAN_CLOEXEC: u32 = 0x1;
        const FAN_REPORT_MNT: u32 = 0x4000;
        const FAN_MARK_ADD: u32 = 0x1;
        const FAN_MARK_MNTNS: u32 = 0x110;
        const FAN_MNT_DETACH: u64 = 0x0200_0000;
        // SAFETY: plain syscall with flag arguments.
        let fd =
            unsafe { libc::fanotify_init(FAN_CLOEXEC | FAN_REPORT_MNT, libc::O_RDONLY as u32) };
        assert!(
            fd >= 0,
            "fanotify_init: {}",
            std::io::Error::last_os_error()
        );
        let ns = std::ffi::CString::new("/proc/self/ns/mnt").unwrap();
        // SAFETY: `ns` is a valid NUL-terminated path for the call.
        let rc = unsafe {
            libc::fanotify_mark(
                fd,
                FAN_MARK_ADD | FAN_MARK_MNTNS,
                FAN_MNT_DETACH,
                libc::AT_FDCWD,
                ns.as_ptr(),
            )
        };
        assert!(
            rc == 0,
            "fanotify_mark: {}",
            std::io::Error::last_os_error()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: `buf` is valid for its length for the call.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                let at = Instant::now();
                if n <= 0 {
                    continue;
                }
                // One timestamp per read: the detach of the trigger is the first event.
                if tx.send(at).is_err() {
                    return;
                }
            }
        });
        Self { rx }
    }

    /// Forget what earlier triggers left.
    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    fn next(&self) -> Instant {
        self.rx
            .recv_timeout(WAIT)
            .expect("the bare listener saw the detach")
    }
}

/// Unmount the staging mount (`flags`: plain or `MNT_DETACH`), await `mount_missing`, stage
/// again. Also returns when the bare listener was handed the same detach.
async fn unmount_once(
    e: &mut Env,
    bare: &BareListener,
    flags: nix::mount::MntFlags,
) -> (Run, Duration) {
    let path = e.plugin.staging_path(VOL_UNMOUNT);
    let waiter = condition_waiter(e, VOL_UNMOUNT, "mount_missing").await;
    bare.drain();
    // Right after a stage the plugin holds an O_PATH descriptor on the mount for an instant
    // (to place its FAN_FS_ERROR mark): an administrator's umount gets EBUSY then, and tries
    // again. Only the attempt that unmounts is timed.
    let (t0, trigger) = loop {
        let t0 = Instant::now();
        match nix::mount::umount2(&path, flags) {
            Ok(()) => break (t0, t0.elapsed()),
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("unmount the staging path: {e}"),
        }
    };
    let kernel = bare.next().saturating_duration_since(t0);
    let r = observed(waiter, t0, trigger, "mount_missing").await;
    stage(e, VOL_UNMOUNT).await;
    (r, kernel)
}

/// Lose the controller, await the device model's removal, unstage and stage again.
async fn loss_to_model_once(e: &mut Env) -> Run {
    let nqn = nqn_for(VOL_LOSS);
    let waiter = removal_waiter(e, nqn.clone()).await;
    let t0 = Instant::now();
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("controller loss");
    let trigger = t0.elapsed();
    let r = observed(waiter, t0, trigger, "the namespace removal").await;
    // A lost controller's port stays down (as a target that went away): bring it back.
    e.plugin.fabric.restore_port(&nqn).expect("port back");
    unstage(e, VOL_LOSS).await;
    stage(e, VOL_LOSS).await;
    r
}

/// Lose the controller, await `device_gone`, unstage and stage again.
async fn loss_to_gone_once(e: &mut Env) -> Run {
    let nqn = nqn_for(VOL_LOSS);
    let waiter = condition_waiter(e, VOL_LOSS, "device_gone").await;
    let t0 = Instant::now();
    e.plugin
        .fabric
        .lose_controller(&nqn)
        .expect("controller loss");
    let trigger = t0.elapsed();
    let r = observed(waiter, t0, trigger, "device_gone").await;
    // A lost controller's port stays down (as a target that went away): bring it back.
    e.plugin.fabric.restore_port(&nqn).expect("port back");
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

    /// One iteration: (trigger to observed, the trigger call alone), and for the unmount
    /// cases the bare listener's latency on the same trigger.
    async fn once(self, e: &mut Env, bare: &BareListener) -> (Run, Option<Duration>) {
        match self {
            Case::Unmount => {
                let (r, k) = unmount_once(e, bare, nix::mount::MntFlags::empty()).await;
                (r, Some(k))
            }
            Case::LazyUnmount => {
                let (r, k) = unmount_once(e, bare, nix::mount::MntFlags::MNT_DETACH).await;
                (r, Some(k))
            }
            Case::LossToModel => (loss_to_model_once(e).await, None),
            Case::LossToGone => (loss_to_gone_once(e).await, None),
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
    let bare = BareListener::start();

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
            let mut runs: Vec<Run> = Vec::new();
            let mut kernel: Vec<Duration> = Vec::new();
            g.bench_function(case.name(), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let (run, k) = case.once(&mut e, &bare).await;
                            runs.push(run);
                            kernel.extend(k);
                            total += run.visible;
                        }
                        total
                    })
                })
            });
            let id = format!("detection/{count}_mounts/{}", case.name());
            let mut all: Vec<Duration> = runs.iter().map(|r| r.visible).collect();
            report(&id, &mut all);
            let mut woken: Vec<Duration> = runs.iter().map(|r| r.woken).collect();
            report(&format!("{id} [a waiter task woken]"), &mut woken);
            if !kernel.is_empty() {
                report(
                    &format!("{id} [kernel: bare fanotify listener]"),
                    &mut kernel,
                );
                let pct = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
                all.sort();
                kernel.sort();
                println!(
                    "{id} [plugin / kernel]: p50 {:.1}x, p99 {:.1}x",
                    pct(&all, 0.5).as_secs_f64() / pct(&kernel, 0.5).as_secs_f64(),
                    pct(&all, 0.99).as_secs_f64() / pct(&kernel, 0.99).as_secs_f64()
                );
            }
            let mut trigger: Vec<Duration> = runs.iter().map(|r| r.trigger).collect();
            report(&format!("{id} [trigger call alone]"), &mut trigger);
            let later = runs.iter().filter(|r| r.visible > r.trigger).count();
            println!(
                "{id}: observed after the trigger call returned in {later} of {} runs",
                runs.len()
            );
            if matches!(case, Case::LossToGone) {
                let mut beyond: Vec<Duration> = runs
                    .iter()
                    .map(|r| r.visible.saturating_sub(GONE_GRACE))
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
