//! The resilience scenarios, as a library: the `demo` prints them, the integration tests run
//! each one as a test. Every scenario starts its own plugin on the emulated fabric (under its
//! own directory), acts as kubelet over the real socket, makes the kernel-side thing happen,
//! and records a timeline of what the plugin saw and did. A scenario fails when the plugin
//! did not behave as described.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;
use rds_node::csi;
use rds_node::csi::volume_capability::access_mode::Mode;
use rds_types::{Health as Condition, VolumeId};

/// Every scenario, in the order the demo plays them.
pub const ALL: &[&str] = &[
    "ext4",
    "xfs",
    "block",
    "port-loss",
    "reconnect-same-name",
    "reconnect-renamed",
    "namespace-replaced",
    "dead-path",
    "mount-storm",
    "plugin-restart",
];

/// Generous bound on each wait: the kernel delivers in microseconds; this only ends a broken run.
const WAIT: Duration = Duration::from_secs(30);

pub type DynError = Box<dyn std::error::Error + Send + Sync>;

/// What happened, when.
#[derive(Debug, Default)]
pub struct Timeline {
    pub scenario: String,
    pub steps: Vec<(Duration, String)>,
    /// The headline figure: how long after the kernel-side change the monitor flagged it.
    pub detected_after: Option<Duration>,
    pub start: Option<Instant>,
}

impl Timeline {
    fn new(name: &str) -> Self {
        Self {
            scenario: name.to_owned(),
            start: Some(Instant::now()),
            ..Self::default()
        }
    }
    fn step(&mut self, what: impl Into<String>) {
        let at = self.start.map(|s| s.elapsed()).unwrap_or_default();
        self.steps.push((at, what.into()));
    }
}

fn fail(msg: impl Into<String>) -> DynError {
    msg.into().into()
}

/// Run one scenario under `root` (a fresh directory).
pub async fn run(name: &str, root: &Path) -> Result<Timeline, (Timeline, DynError)> {
    let mut t = Timeline::new(name);
    let r = match name {
        "ext4" | "xfs" | "block" => lifecycle(&mut t, root, name).await,
        "port-loss" => port_loss(&mut t, root).await,
        "reconnect-renamed" => reconnect(&mut t, root, false).await,
        "reconnect-same-name" => reconnect(&mut t, root, true).await,
        "namespace-replaced" => namespace_replaced(&mut t, root).await,
        "dead-path" => dead_path(&mut t, root).await,
        "mount-storm" => storm(&mut t, root).await,
        "plugin-restart" => restart(&mut t, root).await,
        other => Err(fail(format!(
            "no scenario named {other:?}; known: {}",
            ALL.join(", ")
        ))),
    };
    match r {
        Ok(()) => Ok(t),
        Err(e) => Err((t, e)),
    }
}

fn cap(kind: &str) -> csi::VolumeCapability {
    match kind {
        "block" => block_capability(),
        fs => mount_capability(fs, Mode::SingleNodeWriter),
    }
}

fn size(kind: &str) -> u64 {
    if kind == "xfs" {
        320 << 20
    } else {
        64 << 20
    }
}

async fn stage_publish(
    p: &Plugin,
    k: &mut Kubelet,
    vol: &str,
    kind: &str,
    pod: &str,
) -> Result<(), DynError> {
    k.node
        .node_stage_volume(stage_request(p, vol, cap(kind)))
        .await?;
    k.node
        .node_publish_volume(publish_request(p, vol, pod, cap(kind), false))
        .await?;
    Ok(())
}

/// A plugin under `root` with one volume staged and published in "pod", healthy.
async fn one_volume(root: &Path, vol: &str, kind: &str) -> Result<(Plugin, Kubelet), DynError> {
    let p = Plugin::start(root, None).await?;
    let mut k = p.kubelet().await?;
    p.fabric.add_target(&nqn_for(vol), size(kind))?;
    stage_publish(&p, &mut k, vol, kind, "pod").await?;
    wait(&p, vol, |c| !c.abnormal()).await?;
    Ok((p, k))
}

async fn unpublish(p: &Plugin, k: &mut Kubelet, vol: &str, pod: &str) -> Result<(), DynError> {
    k.node
        .node_unpublish_volume(unpublish_request(p, vol, pod))
        .await?;
    Ok(())
}

async fn teardown(p: &Plugin, k: &mut Kubelet, vol: &str, pods: &[&str]) -> Result<(), DynError> {
    for pod in pods {
        unpublish(p, k, vol, pod).await?;
    }
    k.node.node_unstage_volume(unstage_request(p, vol)).await?;
    Ok(())
}

async fn stats(
    p: &Plugin,
    k: &mut Kubelet,
    vol: &str,
    pod: &str,
) -> Result<csi::NodeGetVolumeStatsResponse, DynError> {
    Ok(k.node
        .node_get_volume_stats(stats_request(vol, &p.target_path(pod, vol)))
        .await?
        .into_inner())
}

fn condition_text(r: &csi::NodeGetVolumeStatsResponse) -> String {
    match &r.volume_condition {
        Some(c) if c.abnormal => format!("abnormal: {}", c.message),
        Some(c) => format!("normal: {}", c.message),
        None => "no condition".into(),
    }
}

fn write_payload(target: &Path, kind: &str, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if kind == "block" {
        let mut f = std::fs::OpenOptions::new().write(true).open(target)?;
        f.write_all(payload)?;
        f.sync_all()
    } else {
        let mut f = std::fs::File::create(target.join("payload"))?;
        f.write_all(payload)?;
        f.sync_all()
    }
}

fn read_payload(target: &Path, kind: &str, len: usize) -> std::io::Result<Vec<u8>> {
    if kind == "block" {
        let mut buf = vec![0u8; len];
        std::io::Read::read_exact(&mut std::fs::File::open(target)?, &mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(target.join("payload"))
    }
}

async fn wait(
    p: &Plugin,
    vol: &str,
    pred: impl Fn(&Condition) -> bool,
) -> Result<Condition, DynError> {
    p.running
        .monitor
        .wait_for(&vid(vol), None, WAIT, pred)
        .await
        .map_err(|last| {
            fail(format!(
                "condition not reached within {WAIT:?}; last: {last:?}"
            ))
        })
}

fn is(kind: &'static str) -> impl Fn(&Condition) -> bool {
    move |c| c.abnormal() && c.kind.as_str() == kind
}

fn vid(vol: &str) -> VolumeId {
    VolumeId::parse(vol).expect("scenario volume ids are valid")
}

async fn lifecycle(t: &mut Timeline, root: &Path, kind: &str) -> Result<(), DynError> {
    let p = Plugin::start(root, None).await?;
    let mut k = p.kubelet().await?;
    let vol = format!("pvc-demo-{kind}");
    p.fabric.add_target(&nqn_for(&vol), size(kind))?;
    let t0 = Instant::now();
    stage_publish(&p, &mut k, &vol, kind, "pod-a").await?;
    t.step(format!(
        "NodeStageVolume + NodePublishVolume ({kind}) in {} ms",
        t0.elapsed().as_millis()
    ));
    let payload = format!("written by the demo into {vol}").into_bytes();
    write_payload(&p.target_path("pod-a", &vol), kind, &payload)?;
    t.step("data written through the target");
    let s = stats(&p, &mut k, &vol, "pod-a").await?;
    let total = s.usage.first().map(|u| u.total).unwrap_or(0);
    t.step(format!(
        "NodeGetVolumeStats: {total} bytes, {}",
        condition_text(&s)
    ));
    teardown(&p, &mut k, &vol, &["pod-a"]).await?;
    t.step("unpublished and unstaged (controller disconnected)");
    stage_publish(&p, &mut k, &vol, kind, "pod-b").await?;
    let back = read_payload(&p.target_path("pod-b", &vol), kind, payload.len())?;
    if back != payload {
        return Err(fail(
            "the data written before unstage was not there after restage",
        ));
    }
    t.step("staged again in another pod: data intact");
    teardown(&p, &mut k, &vol, &["pod-b"]).await?;
    p.stop().await?;
    Ok(())
}

/// Volume context of a volume whose controller the kernel deletes after `ctrl_loss_tmo`.
fn finite_loss_context(vol: &str) -> std::collections::HashMap<String, String> {
    let mut ctx = volume_context(vol);
    ctx.insert("ctrlLossTmo".into(), "1".into());
    ctx.insert("reconnectDelay".into(), "1".into());
    ctx
}

/// A plugin with one ext4 volume staged with `ctx` and published in "pod", healthy.
async fn one_volume_with(
    root: &Path,
    vol: &str,
    ctx: std::collections::HashMap<String, String>,
) -> Result<(Plugin, Kubelet), DynError> {
    let p = Plugin::start(root, None).await?;
    let mut k = p.kubelet().await?;
    p.fabric.add_target(&nqn_for(vol), size("ext4"))?;
    let mut req = stage_request(&p, vol, cap("ext4"));
    req.volume_context = ctx;
    k.node.node_stage_volume(req).await?;
    k.node
        .node_publish_volume(publish_request(&p, vol, "pod", cap("ext4"), false))
        .await?;
    wait(&p, vol, |c| !c.abnormal()).await?;
    Ok((p, k))
}

/// Wait until each of `expected` has been posted on `vol` (an Event is queued after the
/// condition it reports is published, so a scenario waits on the Event it asserts); then the
/// Events posted so far, by reason.
async fn wait_reasons(
    p: &Plugin,
    vol: &str,
    expected: &[rds_types::EventReason],
) -> Result<Vec<rds_types::EventReason>, DynError> {
    for r in expected {
        if p.events
            .wait_for(WAIT, |e| e.volume_id == vol && e.reason == *r)
            .await
            .is_none()
        {
            return Err(fail(format!(
                "no {r} Event within {WAIT:?}: {:?}",
                reasons(p, vol)
            )));
        }
    }
    Ok(reasons(p, vol))
}

/// The Events posted on `vol` so far, by reason.
fn reasons(p: &Plugin, vol: &str) -> Vec<rds_types::EventReason> {
    p.events
        .events()
        .into_iter()
        .filter(|e| e.volume_id == vol)
        .map(|e| e.reason)
        .collect()
}

async fn port_loss(t: &mut Timeline, root: &Path) -> Result<(), DynError> {
    let vol = "pvc-demo-portloss";
    let nqn = nqn_for(vol);
    let (p, mut k) = one_volume(root, vol, "ext4").await?;
    let before = p
        .fabric
        .namespace_of(&nqn)
        .ok_or_else(|| fail("not connected"))?;
    let kernel = Instant::now();
    p.fabric.lose_port(&nqn)?;
    t.step("target: port unlinked; kernel: controller resetting, then connecting (no uevent; ctrl_loss_tmo -1)");
    let c = wait(&p, vol, is("controller_reconnecting")).await?;
    t.detected_after = Some(kernel.elapsed());
    t.step(format!(
        "monitor flagged it {} ms after the loss (the kernel log named the controller; its state was re-read at once): {}",
        kernel.elapsed().as_millis(),
        c.message
    ));
    let s = stats(&p, &mut k, vol, "pod").await?;
    t.step(format!("NodeGetVolumeStats: {}", condition_text(&s)));
    p.fabric.restore_port(&nqn)?;
    t.step("target: port back; kernel: controller live on the same device (NVME_EVENT=connected)");
    let healed = wait(&p, vol, |c| !c.abnormal()).await?;
    t.step(format!("healthy again: {}", healed.message));
    let after = p
        .fabric
        .namespace_of(&nqn)
        .ok_or_else(|| fail("not connected"))?;
    if after != before {
        return Err(fail(format!("the device changed: {before:?} -> {after:?}")));
    }
    t.step(format!(
        "same device {} ({}, diskseq {}): nothing to remount",
        after.0, after.1, after.2
    ));
    teardown(&p, &mut k, vol, &["pod"]).await?;
    p.stop().await?;
    Ok(())
}

async fn reconnect(t: &mut Timeline, root: &Path, same_name: bool) -> Result<(), DynError> {
    let vol = if same_name {
        "pvc-demo-samename"
    } else {
        "pvc-demo-renamed"
    };
    let nqn = nqn_for(vol);
    let (p, mut k) = one_volume_with(root, vol, finite_loss_context(vol)).await?;
    let payload = b"written before the storage box restarted".to_vec();
    write_payload(&p.target_path("pod", vol), "ext4", &payload)?;
    nix::unistd::sync();
    let (old_name, old_dev, old_seq) = p
        .fabric
        .namespace_of(&nqn)
        .ok_or_else(|| fail("not connected"))?;
    t.step(format!(
        "staged on {old_name} ({old_dev}, diskseq {old_seq}) with ctrlLossTmo 1 s; data written"
    ));
    // The running pod: a process with its working directory open on the volume, as a
    // container holds its mount.
    let running_pod = std::fs::File::open(p.target_path("pod", vol))?;
    let kernel = Instant::now();
    p.fabric.lose_port(&nqn)?;
    t.step("target: port unlinked; kernel: controller connecting, deleted after ctrl_loss_tmo");
    let c = wait(&p, vol, |c| {
        matches!(
            c.kind,
            rds_types::ConditionKind::DeviceRemoved | rds_types::ConditionKind::DeviceGone
        )
    })
    .await?;
    t.detected_after = Some(kernel.elapsed());
    t.step(format!(
        "kernel deleted the controller and its namespace; the volume is abnormal at once ({} ms after the loss): {}",
        kernel.elapsed().as_millis(),
        c.message
    ));
    if !same_name {
        // Meanwhile another volume connects and takes the free controller number.
        let other = nqn_for("pvc-demo-other");
        p.fabric.add_target(&other, size("ext4"))?;
        let o = rds_fabric::Fabric::connect(
            &*p.fabric,
            &rds_fabric::ConnectRequest::tcp(other, "127.0.0.1".parse()?, 4420),
        )?;
        t.step(format!(
            "another volume connected meanwhile, as {}",
            o.controller
        ));
    }
    p.fabric.restore_port(&nqn)?;
    t.step("target: port back; nothing reconnects by itself");
    let healed = wait(&p, vol, |c| !c.abnormal()).await?;
    let (new_name, new_dev, new_seq) = p
        .fabric
        .namespace_of(&nqn)
        .ok_or_else(|| fail("not reconnected"))?;
    t.step(format!(
        "the plugin reconnected with the recorded parameters: {new_name} ({new_dev}, diskseq {new_seq}); the staging path healed: {}",
        healed.message
    ));
    if same_name != (new_name == old_name) || new_seq == old_seq {
        return Err(fail(format!(
            "expected {} name and a new diskseq, got {old_name}/{old_seq} -> {new_name}/{new_seq}",
            if same_name { "the same" } else { "another" }
        )));
    }
    use rds_types::EventReason as R;
    let seen = wait_reasons(
        &p,
        vol,
        &[
            R::ConnectionFailure,
            R::ConnectionRecovery,
            R::RecoverySucceeded,
        ],
    )
    .await?;
    t.step(format!("Kubernetes Events on the PVC: {seen:?}"));
    let s = stats(&p, &mut k, vol, "pod").await?;
    t.step(format!("the running pod's target: {}", condition_text(&s)));
    if !s.volume_condition.is_some_and(|c| c.abnormal) {
        return Err(fail(
            "the running pod still holds the dead filesystem but reads healthy",
        ));
    }
    drop(running_pod);
    unpublish(&p, &mut k, vol, "pod").await?;
    k.node
        .node_publish_volume(publish_request(&p, vol, "pod-new", cap("ext4"), false))
        .await?;
    let back = read_payload(&p.target_path("pod-new", vol), "ext4", payload.len())?;
    if back != payload {
        return Err(fail("data lost across the reconnect"));
    }
    t.step("pod recreated: its new publish is on the healed device; data intact");
    teardown(&p, &mut k, vol, &["pod-new"]).await?;
    p.stop().await?;
    Ok(())
}

async fn namespace_replaced(t: &mut Timeline, root: &Path) -> Result<(), DynError> {
    let vol = "pvc-demo-replaced";
    let nqn = nqn_for(vol);
    let (p, mut k) = one_volume_with(root, vol, finite_loss_context(vol)).await?;
    p.fabric.lose_port(&nqn)?;
    p.fabric.replace_namespace(&nqn)?;
    t.step("target restarts with another namespace behind the same NQN (new uuid, empty)");
    wait(&p, vol, is("device_removed")).await?;
    p.fabric.restore_port(&nqn)?;
    let c = wait(&p, vol, is("namespace_mismatch")).await?;
    t.step(format!(
        "the plugin reconnected and refused the foreign namespace: {}",
        c.message
    ));
    wait_reasons(&p, vol, &[rds_types::EventReason::NamespaceMismatch]).await?;
    let staging = p.staging_path(vol);
    let view = rds_mounts::MountView::read_now(Path::new("/proc"), "self")?;
    let (_, new_dev, _) = p
        .fabric
        .namespace_of(&nqn)
        .ok_or_else(|| fail("not connected"))?;
    if view.mounts_of(new_dev).next().is_some() {
        return Err(fail("the foreign namespace was mounted"));
    }
    t.step(format!(
        "never mounted: {} still holds only the old device",
        staging.display()
    ));
    let _ = teardown(&p, &mut k, vol, &["pod"]).await;
    p.stop().await?;
    Ok(())
}

async fn dead_path(t: &mut Timeline, root: &Path) -> Result<(), DynError> {
    let vol = "pvc-demo-deadpath";
    let nqn = nqn_for(vol);
    let (p, mut k) = one_volume(root, vol, "ext4").await?;
    p.fabric.kill_path(&nqn)?;
    t.step("kernel: the path died (backing gone, capacity 0): every IO now fails with EIO");
    let target = p.target_path("pod", vol);
    let io = tokio::task::spawn_blocking(move || {
        // What a pod does next: write and fsync (EIO); ext4 aborts its journal and reports the
        // error on its next transaction.
        use std::io::Write;
        let r = std::fs::File::create(target.join("after")).and_then(|mut f| {
            f.write_all(&[7u8; 8192])?;
            f.sync_all()
        });
        if let Ok(d) = std::fs::File::open(&target) {
            // SAFETY: syncfs on a valid descriptor.
            unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) };
        }
        let _ = std::fs::File::create(target.join("after-sync"));
        r
    });
    let kernel = Instant::now();
    let io = io.await?;
    t.step(format!(
        "the pod's write + fsync: {}",
        io.err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "succeeded?!".into())
    ));
    let c = wait(&p, vol, is("filesystem_failed")).await?;
    t.detected_after = Some(kernel.elapsed());
    t.step(format!(
        "FAN_FS_ERROR: monitor flagged it {} us after the IO started: {}",
        kernel.elapsed().as_micros(),
        c.message
    ));
    let s = stats(&p, &mut k, vol, "pod").await?;
    t.step(format!(
        "NodeGetVolumeStats: {} (statvfs skipped, last usage answered: {})",
        condition_text(&s),
        !s.usage.is_empty()
    ));
    let ev = p
        .events
        .wait_for(WAIT, |e| e.volume_id == vol)
        .await
        .ok_or_else(|| fail("no event"))?;
    t.step(format!(
        "Kubernetes Event on the PVC: {} {:?}: {}",
        ev.reason, ev.type_, ev.note
    ));
    // The device is not replaced, so remounting it would give back the dead filesystem: the
    // volume stays flagged until the path comes back (here: it never does).
    let still = p
        .running
        .monitor
        .volume_condition(&vid(vol))
        .ok_or_else(|| fail("condition lost"))?;
    if !still.abnormal() {
        return Err(fail("a dead filesystem was reported healthy"));
    }
    t.step(
        "recovery refuses to remount the same dead device; the condition stays abnormal (honest)",
    );
    p.stop().await?;
    Ok(())
}

async fn storm(t: &mut Timeline, root: &Path) -> Result<(), DynError> {
    let vol = "pvc-demo-storm";
    let (p, mut k) = one_volume(root, vol, "ext4").await?;
    let staging = p.staging_path(vol);
    let base = root.join("storm");
    let start = Instant::now();
    let mut made = Vec::new();
    for i in 0..150 {
        let d = base.join(i.to_string());
        std::fs::create_dir_all(&d)?;
        nix::mount::mount(
            Some(&staging),
            &d,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        made.push(d);
    }
    t.step(format!(
        "150 bind mounts of the volume made in {} ms (a propagation loop)",
        start.elapsed().as_millis()
    ));
    let c = wait(&p, vol, is("mount_storm")).await?;
    t.detected_after = Some(start.elapsed());
    t.step(format!("monitor flagged the storm: {}", c.message));
    let ev = p
        .events
        .wait_for(WAIT, |e| e.volume_id == vol)
        .await
        .ok_or_else(|| fail("no event"))?;
    t.step(format!(
        "Kubernetes Event on the PVC: {} {:?}",
        ev.reason, ev.type_
    ));
    for d in &made {
        nix::mount::umount(d)?;
    }
    wait(&p, vol, |c| !c.abnormal()).await?;
    t.step("storm unmounted: condition cleared");
    teardown(&p, &mut k, vol, &["pod"]).await?;
    p.stop().await?;
    Ok(())
}

async fn restart(t: &mut Timeline, root: &Path) -> Result<(), DynError> {
    let p = Plugin::start(root, None).await?;
    let mut k = p.kubelet().await?;
    let vol = "pvc-demo-restart";
    let nqn = nqn_for(vol);
    p.fabric.add_target(&nqn, size("ext4"))?;
    let mut req = stage_request(&p, vol, cap("ext4"));
    req.volume_context = finite_loss_context(vol);
    k.node.node_stage_volume(req).await?;
    k.node
        .node_publish_volume(publish_request(&p, vol, "pod", cap("ext4"), false))
        .await?;
    write_payload(&p.target_path("pod", vol), "ext4", b"before the restart")?;
    nix::unistd::sync();
    let fabric = p.stop().await?;
    t.step("plugin stopped (DaemonSet rollout); its volume stays mounted");
    fabric.lose_controller(&nqn)?;
    fabric.restore_port(&nqn)?;
    t.step(
        "while the plugin is down: the target restarts, the kernel deletes the controller; the target is back but nothing reconnects by itself",
    );
    let started = Instant::now();
    let p = Plugin::start(root, Some(fabric)).await?;
    let c = p
        .running
        .monitor
        .volume_condition(&vid(vol))
        .ok_or_else(|| fail("the volume was not re-adopted"))?;
    t.detected_after = Some(started.elapsed());
    t.step(format!(
        "plugin restarted; first reconcile done in {} ms: {}",
        started.elapsed().as_millis(),
        c.message
    ));
    if !c.abnormal() {
        return Err(fail(format!(
            "expected the lost namespace to be abnormal in the first reconcile, got {}: {}",
            c.kind, c.message
        )));
    }
    let healed = wait(&p, vol, |c| !c.abnormal()).await?;
    t.step(format!(
        "the plugin reconnected and healed the volume after the restart: {}",
        healed.message
    ));
    let mut k = p.kubelet().await?;
    unpublish(&p, &mut k, vol, "pod").await?;
    k.node
        .node_publish_volume(publish_request(&p, vol, "pod-new", cap("ext4"), false))
        .await?;
    let back = read_payload(&p.target_path("pod-new", vol), "ext4", 18)?;
    if back != b"before the restart" {
        return Err(fail("data lost across the restart"));
    }
    t.step("pod recreated: data intact");
    teardown(&p, &mut k, vol, &["pod-new"]).await?;
    p.stop().await?;
    Ok(())
}
