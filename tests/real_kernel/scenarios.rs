//! The scenarios of the real-kernel tier. Each asserts the conditions NodeGetVolumeStats
//! reports, the Events on the PVC, the data and what the kernel shows in sysfs; each returns
//! notes (timelines and figures) that the tier prints, and leaves the kernel clean.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use rds_harness::ensure;
use rds_harness::harness::block_capability;
use rds_harness::vm::guest::*;
use rds_node::csi;

pub type Notes = Vec<String>;
type Run = for<'a> fn(&'a mut Guest) -> Pin<Box<dyn Future<Output = Result<Notes, Fail>> + 'a>>;

macro_rules! scenario {
    ($f:ident) => {
        (stringify!($f), (|g| Box::pin($f(g))) as Run)
    };
}

pub const ALL: &[(&str, Run)] = &[
    scenario!(kernel_fixture),
    scenario!(ext4_lifecycle),
    scenario!(xfs_lifecycle),
    scenario!(block_lifecycle),
    scenario!(already_connected),
    scenario!(foreign_controller_untouched),
    scenario!(staging_unmounted),
    scenario!(port_loss_reconnects_forever),
    scenario!(port_loss_past_ctrl_loss_tmo),
    scenario!(namespace_replaced_behind_the_nqn),
    scenario!(multipath_two_ports),
    scenario!(namespace_disabled_while_mounted),
    scenario!(restart_while_reconnecting),
    scenario!(restart_while_deleted),
    scenario!(unstage_while_an_unmount_is_stuck),
    scenario!(xfs_dead_path),
];

fn st(e: tonic::Status) -> Fail {
    format!("{:?}: {}", e.code(), e.message())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The fixture of what the kernel shows, for the emulation's test.
async fn kernel_fixture(g: &mut Guest) -> Result<Notes, Fail> {
    let r = rds_harness::vm::fixture::record_kernel(g).await;
    g.clean("pvc-vm-fixture", &[]).await;
    let f = r?;
    let text = serde_json::to_string_pretty(&f).map_err(|e| e.to_string())? + "\n";
    std::fs::write(g.out.join("kernel-fixture.json"), text).map_err(|e| e.to_string())?;
    let mut notes = vec![format!("kernel {}", f.kernel)];
    if let Some(ms) = f.unexport_deleted_after_ms {
        notes.push(format!(
            "unexported subsystem (ctrl_loss_tmo -1): controller deleted {ms} ms later"
        ));
    }
    for (step, s) in &f.steps {
        notes.push(format!(
            "{step}: {}",
            s.events
                .iter()
                .map(|e| format!("{} {} {}", e.action, e.subsystem, e.name))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(notes)
}

/// Stage over a real connect, publish, write, stats, unpublish, unstage (the controller
/// deleted), restage in another pod: the data is there.
async fn fs_lifecycle(g: &mut Guest, vol: &str, cap: csi::VolumeCapability) -> Result<Notes, Fail> {
    let nqn = Guest::nqn(vol);
    g.target(vol)?;
    let ctx = Guest::context(vol, &[]);
    let t = Instant::now();
    g.stage(vol, cap.clone(), ctx.clone()).await.map_err(st)?;
    let staged_in = t.elapsed();
    let c = controllers(&nqn);
    ensure!(c.len() == 1 && c[0].state == "live", "after stage: {c:?}");
    // The node's identity comes from the files, as nvme-cli's does.
    let cdir = Path::new("/sys/class/nvme").join(&c[0].name);
    for attr in ["hostnqn", "hostid"] {
        let want = std::fs::read_to_string(g.dirs().nvme_config().join(attr))
            .map_err(|e| e.to_string())?;
        let got = std::fs::read_to_string(cdir.join(attr)).map_err(|e| e.to_string())?;
        ensure!(
            got.trim() == want.trim(),
            "controller {attr} {got:?}, the file says {want:?}"
        );
    }
    let staging = g.staging(vol);
    let head = heads(&nqn).first().cloned().ok_or("no namespace head")?;
    ensure!(
        mounted_dev(&staging).as_deref() == Some(head.dev.as_str()),
        "staging mount is on {:?}, the namespace is {}",
        mounted_dev(&staging),
        head.dev
    );
    let target = g
        .publish(vol, "pod-a", cap.clone(), ctx.clone())
        .await
        .map_err(st)?;
    write_file(&target.join("data"), vol)?;
    for p in [&staging, &target] {
        let s = g.sample(vol, p).await?;
        ensure!(
            !s.abnormal && s.kind == "healthy" && s.usage,
            "stats at {}: {s:?}",
            p.display()
        );
    }
    g.unpublish(vol, "pod-a").await.map_err(st)?;
    ensure!(
        !target.exists() || mounted_dev(&target).is_none(),
        "target still mounted"
    );
    let t = Instant::now();
    g.unstage(vol).await.map_err(st)?;
    let unstaged_in = t.elapsed();
    ensure!(
        wait_until(WAIT, || controllers(&nqn).is_empty()).await,
        "the controller is still there after unstage: {:?}",
        controllers(&nqn)
    );
    ensure!(
        mounted_dev(&staging).is_none(),
        "staging still mounted after unstage"
    );
    // Again, in another pod: the data survived.
    g.stage(vol, cap.clone(), ctx.clone()).await.map_err(st)?;
    let target = g.publish(vol, "pod-b", cap, ctx).await.map_err(st)?;
    check_file(&target.join("data"), vol)?;
    g.unpublish(vol, "pod-b").await.map_err(st)?;
    g.unstage(vol).await.map_err(st)?;
    ensure!(
        wait_until(WAIT, || controllers(&nqn).is_empty()).await,
        "controller left after the second unstage"
    );
    let warnings: Vec<_> = g
        .events(vol)
        .into_iter()
        .filter(|e| e.0 == "Warning")
        .collect();
    ensure!(
        warnings.is_empty(),
        "Warning events on a clean lifecycle: {warnings:?}"
    );
    g.clean(vol, &[]).await;
    Ok(vec![
        format!("stage (connect, mkfs, mount) {}", secs(staged_in)),
        format!("unstage (unmount, disconnect) {}", secs(unstaged_in)),
    ])
}

async fn ext4_lifecycle(g: &mut Guest) -> Result<Notes, Fail> {
    let r = fs_lifecycle(g, "pvc-vm-ext4", ext4()).await;
    g.clean("pvc-vm-ext4", &["pod-a", "pod-b"]).await;
    r
}

async fn xfs_lifecycle(g: &mut Guest) -> Result<Notes, Fail> {
    let r = fs_lifecycle(g, "pvc-vm-xfs", xfs()).await;
    g.clean("pvc-vm-xfs", &["pod-a", "pod-b"]).await;
    r
}

async fn block_lifecycle(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-block";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[]);
        g.stage(vol, block_capability(), ctx.clone())
            .await
            .map_err(st)?;
        let target = g
            .publish(vol, "pod-a", block_capability(), ctx.clone())
            .await
            .map_err(st)?;
        write_block(&target, vol)?;
        let s = g.sample(vol, &target).await?;
        ensure!(!s.abnormal && s.kind == "healthy", "stats: {s:?}");
        g.unpublish(vol, "pod-a").await.map_err(st)?;
        ensure!(
            !target.exists(),
            "the device node is still at {}",
            target.display()
        );
        g.unstage(vol).await.map_err(st)?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).is_empty()).await,
            "controller left after unstage"
        );
        g.stage(vol, block_capability(), ctx.clone())
            .await
            .map_err(st)?;
        let target = g
            .publish(vol, "pod-b", block_capability(), ctx)
            .await
            .map_err(st)?;
        check_block(&target, vol)?;
        g.unpublish(vol, "pod-b").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).is_empty()).await,
            "controller left after unstage"
        );
        Ok(vec![])
    }
    .await;
    g.clean(vol, &["pod-a", "pod-b"]).await;
    r
}

/// The NQN is connected (by hand, before the plugin): stage uses that controller, connects
/// no second one; unstage disconnects it (it is the volume's, under the managed prefix).
async fn already_connected(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-already";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let reply = connect_by_hand(&nqn, PORT_A.1, "").await?;
        ensure!(
            wait_until(WAIT, || !heads(&nqn).is_empty()).await,
            "no head after the manual connect"
        );
        let before = controllers(&nqn);
        let ctx = Guest::context(vol, &[]);
        g.stage(vol, ext4(), ctx).await.map_err(st)?;
        let after = controllers(&nqn);
        ensure!(
            after == before,
            "stage changed the controllers: {before:?} -> {after:?}"
        );
        g.unstage(vol).await.map_err(st)?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).is_empty()).await,
            "controller left after unstage"
        );
        Ok(vec![format!(
            "manual connect replied {reply:?}; stage reused {}",
            before[0].name
        )])
    }
    .await;
    g.clean(vol, &[]).await;
    r
}

/// A controller outside the managed prefix (a boot disk from the same box) is never
/// touched: a stage of it is refused, its namespace never formatted, and neither a managed
/// volume's unstage, its loss, nor a plugin restart disconnect or reconnect it.
async fn foreign_controller_untouched(g: &mut Guest) -> Result<Notes, Fail> {
    let foreign = "nqn.2000-02.com.mikrotik:boot-node1";
    let vol = "pvc-vm-beside";
    let r = async {
        let fb = Guest::backing("foreign");
        // Alone on port B: taking it away closes the port, so the kernel keeps reconnecting
        // (a port that still serves other subsystems answers with DNR and the kernel deletes
        // the controller at once).
        g.nvmet.add_subsystem(foreign, &fb, SIZE, None).map_err(|e| e.to_string())?;
        g.nvmet.expose(foreign, PORT_B.0).map_err(|e| e.to_string())?;
        connect_by_hand(foreign, PORT_B.1, ",ctrl_loss_tmo=-1,reconnect_delay=1").await?;
        ensure!(wait_until(WAIT, || !heads(foreign).is_empty()).await, "no head for the foreign subsystem");
        let before = controllers(foreign);
        // A stage request naming it is refused before any action.
        let mut ctx = Guest::context(vol, &[]);
        ctx.insert("nqn".into(), foreign.into());
        let e = g.stage(vol, ext4(), ctx).await.err().ok_or("stage of a foreign NQN succeeded")?;
        ensure!(
            matches!(e.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::PermissionDenied),
            "stage of a foreign NQN: {e:?}"
        );
        // A managed volume beside it, staged and unstaged.
        g.target(vol)?;
        g.stage(vol, ext4(), Guest::context(vol, &[])).await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        ensure!(wait_until(WAIT, || controllers(&Guest::nqn(vol)).is_empty()).await, "managed controller left");
        // Its port goes away (the controller reconnects on its own), the plugin restarts.
        g.nvmet.hide(foreign, PORT_B.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(foreign).iter().all(|c| c.state != "live")).await,
            "foreign controller still live without its port"
        );
        g.restart_plugin(false).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = controllers(foreign);
        ensure!(
            during.len() == 1 && during[0].name == before[0].name,
            "the foreign controller changed: {before:?} -> {during:?}"
        );
        let back = Instant::now();
        g.nvmet.expose(foreign, PORT_B.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(foreign).iter().any(|c| c.state == "live")).await,
            "foreign controller did not come back by itself"
        );
        let back_in = back.elapsed();
        let log = g.plugin.log();
        ensure!(
            !log.contains(&format!("deleted controller {}", before[0].name)),
            "the plugin deleted the foreign controller"
        );
        ensure!(all_zero(&fb)?, "the foreign namespace was written to");
        Ok(vec![
            format!("foreign {} ({foreign}) untouched through a refused stage, a managed unstage, its own outage and a plugin restart", before[0].name),
            format!("its port back: live again by itself {}", secs(back_in)),
        ])
    }
    .await;
    for c in controllers(foreign) {
        delete_by_hand(&c.name).await;
    }
    let _ = wait_until(WAIT, || controllers(foreign).is_empty()).await;
    let _ = g.nvmet.remove_subsystem(foreign);
    let _ = std::fs::remove_file(Guest::backing("foreign"));
    g.clean(vol, &[]).await;
    r
}

/// Someone unmounts the staging path: `mount_missing` at once, then the staging mount is
/// back on the same device and the pod's target stays healthy.
async fn staging_unmounted(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-unmounted";
    let r = async {
        g.target(vol)?;
        let ctx = Guest::context(vol, &[]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let staging = g.staging(vol);
        let dev = mounted_dev(&staging).ok_or("staging not mounted")?;
        let sampler = Sampler::start(&g.kubelet, vol, &staging, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        nix::mount::umount2(&staging, nix::mount::MntFlags::empty()).map_err(|e| e.to_string())?;
        let flagged = g
            .wait_condition(vol, &staging, "abnormal", |s| s.abnormal)
            .await?;
        ensure!(
            flagged.kind == "mount_missing" || flagged.kind == "recovering",
            "after the unmount: {flagged:?}"
        );
        let healed = g
            .wait_condition(vol, &staging, "healthy", |s| !s.abnormal)
            .await?;
        let samples = sampler.finish().await?;
        ensure!(
            mounted_dev(&staging).as_deref() == Some(dev.as_str()),
            "staging not remounted on {dev}"
        );
        g.unstage(vol).await.map_err(st)?;
        let mut notes = vec![
            format!("flagged {} after the unmount", secs(flagged.at - t0)),
            format!("remounted, healthy {} after", secs(healed.at - t0)),
        ];
        notes.extend(timeline(&samples, t0));
        Ok(notes)
    }
    .await;
    g.clean(vol, &[]).await;
    r
}

/// The target's port goes away with `ctrlLossTmo=-1`: the kernel reconnects forever; the
/// volume is `controller_reconnecting` for the whole outage and healthy when the port is
/// back, with its data.
async fn port_loss_reconnects_forever(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-portloss";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let target = g.publish(vol, "pod-a", ext4(), ctx).await.map_err(st)?;
        write_file(&target.join("data"), vol)?;
        let sampler = Sampler::start(&g.kubelet, vol, &target, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).iter().all(|c| c.state != "live")).await,
            "the controller stayed live"
        );
        let kernel_at = t0.elapsed();
        let flagged = g
            .wait_condition(vol, &target, "controller_reconnecting", |s| {
                s.kind == "controller_reconnecting"
            })
            .await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let back = Instant::now();
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).iter().any(|c| c.state == "live")).await,
            "the kernel did not reconnect"
        );
        let live_at = back.elapsed();
        let healed = g
            .wait_condition(vol, &target, "healthy", |s| !s.abnormal)
            .await?;
        let samples = sampler.finish().await?;
        abnormal_throughout(&samples, |k| k.contains(":live"))?;
        check_file(&target.join("data"), vol)?;
        write_file(&target.join("after"), "after")?;
        g.wait_event(vol, "ConnectionFailure").await?;
        let (_, note) = g.wait_event(vol, "ConnectionRecovery").await?;
        let mut notes = vec![
            format!("kernel left live {} after the port went", secs(kernel_at)),
            format!(
                "controller_reconnecting {} after the port went",
                secs(flagged.at - t0)
            ),
            format!(
                "kernel live {} after the port came back; healthy {} after",
                secs(live_at),
                secs(healed.at - back)
            ),
            format!("ConnectionRecovery: {note}"),
        ];
        notes.extend(timeline(&samples, t0));
        g.unpublish(vol, "pod-a").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        Ok(notes)
    }
    .await;
    g.clean(vol, &["pod-a"]).await;
    r
}

/// The port stays away past `ctrlLossTmo=3`: the kernel deletes the controller and its
/// namespace and never comes back by itself. The volume is abnormal for the whole outage
/// (never healthy while the device is absent), every failed reconnect posts an Event, and
/// when the port is back the plugin connects again with the recorded parameters, checks the
/// namespace is the volume's, heals the staging mount and the idle pod's target; a pod that
/// still holds the dead filesystem is told to restart. The data is intact.
async fn port_loss_past_ctrl_loss_tmo(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-ctrlloss";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "3")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let busy = g.publish(vol, "pod-busy", ext4(), ctx.clone()).await.map_err(st)?;
        let idle = g.publish(vol, "pod-idle", ext4(), ctx).await.map_err(st)?;
        write_file(&idle.join("data"), vol)?;
        // The busy pod holds a file open on the filesystem through the whole outage.
        let holder = std::fs::File::open(busy.join("data")).map_err(|e| e.to_string())?;
        let old = heads(&nqn).first().cloned().ok_or("no head")?;
        let staging = g.staging(vol);
        let sampler = Sampler::start(&g.kubelet, vol, &staging, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(wait_until(WAIT, || controllers(&nqn).is_empty()).await, "the kernel did not delete the controller");
        let deleted_at = t0.elapsed();
        let at_deletion = g.sample(vol, &staging).await?;
        ensure!(at_deletion.abnormal, "healthy right after the controller was deleted: {at_deletion:?}");
        // Long enough for reconnect attempts to fail against the missing subsystem.
        g.wait_event(vol, "RecoveryFailed").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mid = g.sample(vol, &staging).await?;
        ensure!(mid.abnormal, "healthy while the controller is deleted: {mid:?}");
        ensure!(controllers(&nqn).is_empty(), "something reconnected while the subsystem was away");
        let back = Instant::now();
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).iter().any(|c| c.state == "live")).await,
            "the plugin did not reconnect after the port came back"
        );
        let reconnected_at = back.elapsed();
        let healed = g.wait_condition(vol, &staging, "healthy", |s| !s.abnormal).await?;
        let samples = sampler.finish().await?;
        abnormal_throughout(&samples, |k| !k.ends_with("ns=-") && k.contains(":live"))?;
        // The controller is connected with the recorded parameters.
        let c = controllers(&nqn);
        let tmo = std::fs::read_to_string(format!("/sys/class/nvme/{}/ctrl_loss_tmo", c[0].name)).unwrap_or_default();
        ensure!(tmo.trim() == "3", "reconnected with ctrl_loss_tmo {tmo:?}");
        let new = heads(&nqn).first().cloned().ok_or("no head after the reconnect")?;
        ensure!(new.uuid == old.uuid, "another namespace: {old:?} -> {new:?}");
        ensure!(mounted_dev(&staging).as_deref() == Some(new.dev.as_str()), "staging not on the new device");
        // The idle pod's target is re-bound onto the healed mount, with the data.
        let idle_s = g.wait_condition(vol, &idle, "healthy", |s| !s.abnormal).await?;
        check_file(&idle.join("data"), vol)?;
        check_file(&staging.join("data"), vol)?;
        // The busy pod still holds the dead filesystem: abnormal until it restarts.
        let busy_s = g.sample(vol, &busy).await?;
        ensure!(busy_s.abnormal, "the busy pod's target on the dead filesystem is reported {busy_s:?}");
        drop(holder);
        g.wait_event(vol, "ConnectionFailure").await?;
        let (_, recovery) = g.wait_event(vol, "ConnectionRecovery").await?;
        g.wait_event(vol, "PodRestartRequired").await?;
        let failures = g.events(vol).iter().filter(|e| e.1 == "RecoveryFailed").count();
        let mut notes = vec![
            format!("kernel deleted the controller {} after the port went", secs(deleted_at)),
            format!("at deletion: {} ({})", at_deletion.kind, at_deletion.message),
            format!("port back: reconnected by the plugin {} later, healthy {} after", secs(reconnected_at), secs(healed.at - back)),
            format!("idle pod: {}; busy pod: {} ({})", idle_s.kind, busy_s.kind, busy_s.message),
            format!("{failures} RecoveryFailed Events while the target was away; ConnectionRecovery: {recovery}"),
            format!("device {} diskseq {} -> {} diskseq {}", old.dev, old.diskseq, new.dev, new.diskseq),
        ];
        notes.extend(timeline(&samples, t0));
        g.unpublish(vol, "pod-busy").await.map_err(st)?;
        g.unpublish(vol, "pod-idle").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        Ok(notes)
    }
    .await;
    g.clean(vol, &["pod-busy", "pod-idle"]).await;
    r
}

/// The target comes back with another namespace behind the same NQN (a new file, a new
/// UUID): never mounted as the old volume, never formatted; `namespace_mismatch` and an
/// Event.
async fn namespace_replaced_behind_the_nqn(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-replaced";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
        g.stage(vol, ext4(), ctx).await.map_err(st)?;
        let staging = g.staging(vol);
        let old = heads(&nqn).first().cloned().ok_or("no head")?;
        let t0 = Instant::now();
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).iter().all(|c| c.state != "live")).await,
            "the controller stayed live"
        );
        let other = Guest::backing("replaced-other");
        g.nvmet
            .replace_namespace(
                &nqn,
                1,
                &other,
                SIZE,
                "0f6c1a7e-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
            )
            .map_err(|e| e.to_string())?;
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let flagged = g
            .wait_condition(vol, &staging, "namespace_mismatch", |s| {
                s.kind == "namespace_mismatch"
            })
            .await?;
        let (_, note) = g.wait_event(vol, "NamespaceMismatch").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let still = g.sample(vol, &staging).await?;
        ensure!(still.kind == "namespace_mismatch", "later: {still:?}");
        let now = heads(&nqn);
        for h in &now {
            ensure!(
                mounted_dev(&staging).as_deref() != Some(h.dev.as_str()) || h.uuid == old.uuid,
                "the other namespace {h:?} is mounted at the staging path"
            );
        }
        ensure!(
            all_zero(&other)?,
            "the other namespace was written to (formatted?)"
        );
        let notes = vec![
            format!(
                "namespace_mismatch {} after the target went away",
                secs(flagged.at - t0)
            ),
            format!("kernel now shows {:?} (was {old:?})", now),
            format!("Event: {note}"),
        ];
        let _ = std::fs::remove_file(&other);
        Ok(notes)
    }
    .await;
    g.clean(vol, &[]).await;
    let _ = std::fs::remove_file(Guest::backing("replaced-other"));
    r
}

/// Two ports, native multipath (a second path connected by hand): one path lost keeps the
/// I/O flowing and is reported as degraded but healthy; both lost is
/// `controller_reconnecting`; both back is healthy on both paths; unstage deletes both.
async fn multipath_two_ports(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-multipath";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        g.nvmet.expose(&nqn, PORT_B.0).map_err(|e| e.to_string())?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let hostnqn = std::fs::read_to_string(g.dirs().nvme_config().join("hostnqn"))
            .map_err(|e| e.to_string())?;
        let hostid = std::fs::read_to_string(g.dirs().nvme_config().join("hostid"))
            .map_err(|e| e.to_string())?;
        connect_by_hand(
            &nqn,
            PORT_B.1,
            &format!(
                ",hostnqn={},hostid={},ctrl_loss_tmo=-1,reconnect_delay=1",
                hostnqn.trim(),
                hostid.trim()
            ),
        )
        .await?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn)
                .iter()
                .filter(|c| c.state == "live")
                .count()
                == 2)
            .await,
            "two live paths expected: {:?}",
            controllers(&nqn)
        );
        ensure!(
            heads(&nqn).len() == 1,
            "one multipath head expected: {:?}",
            heads(&nqn)
        );
        let target = g.publish(vol, "pod-a", ext4(), ctx).await.map_err(st)?;
        write_file(&target.join("data"), vol)?;
        let both = g
            .wait_condition(vol, &target, "healthy", |s| !s.abnormal)
            .await?;
        let sampler = Sampler::start(&g.kubelet, vol, &target, Duration::from_millis(100));
        // One path lost: I/O continues through the other.
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn)
                .iter()
                .any(|c| c.trsvcid == "4420" && c.state != "live"))
            .await,
            "port A's controller stayed live"
        );
        write_file(&target.join("during"), "during")?;
        let degraded = g
            .wait_condition(vol, &target, "degraded message", |s| {
                s.message.contains("1 of 2")
            })
            .await?;
        ensure!(
            !degraded.abnormal,
            "one path of two lost is reported abnormal: {degraded:?}"
        );
        // Both lost: nothing carries the I/O.
        g.nvmet.hide(&nqn, PORT_B.0).map_err(|e| e.to_string())?;
        let down = g
            .wait_condition(vol, &target, "controller_reconnecting", |s| {
                s.kind == "controller_reconnecting"
            })
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        g.nvmet.expose(&nqn, PORT_B.0).map_err(|e| e.to_string())?;
        let healed = g
            .wait_condition(vol, &target, "healthy on both paths", |s| {
                !s.abnormal && !s.message.contains(" of 2")
            })
            .await?;
        let samples = sampler.finish().await?;
        check_file(&target.join("during"), "during")?;
        check_file(&target.join("data"), vol)?;
        let events = g.events(vol);
        g.unpublish(vol, "pod-a").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).is_empty()).await,
            "unstage left controllers: {:?}",
            controllers(&nqn)
        );
        let t0 = samples.first().map(|s| s.at).unwrap_or_else(Instant::now);
        let mut notes = vec![
            format!("both paths: {}", both.message),
            format!("one lost: {} ({})", degraded.kind, degraded.message),
            format!("both lost: {} ({})", down.kind, down.message),
            format!("back: {}", healed.message),
            format!(
                "events: {:?}",
                events.iter().map(|e| e.1.as_str()).collect::<Vec<_>>()
            ),
        ];
        notes.extend(timeline(&samples, t0));
        Ok(notes)
    }
    .await;
    g.clean(vol, &["pod-a"]).await;
    r
}

/// The target disables the namespace while it is mounted: the host removes the head (the
/// controller stays live), I/O fails; the volume is abnormal from that moment; when the
/// namespace is enabled again the plugin heals the mount and the data written before is
/// there.
async fn namespace_disabled_while_mounted(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-disabled";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let target = g.publish(vol, "pod-a", ext4(), ctx).await.map_err(st)?;
        write_file(&target.join("data"), vol)?;
        let sampler = Sampler::start(&g.kubelet, vol, &target, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        g.nvmet
            .set_enabled(&nqn, 1, false)
            .map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || heads(&nqn).is_empty()).await,
            "the head stayed after the namespace was disabled"
        );
        let removed_at = t0.elapsed();
        let c = controllers(&nqn);
        ensure!(
            c.iter().all(|c| c.state == "live"),
            "controller not live: {c:?}"
        );
        let flagged = g
            .wait_condition(vol, &target, "abnormal", |s| s.abnormal)
            .await?;
        let io = write_file(&target.join("lost"), "lost");
        ensure!(
            io.is_err(),
            "a write and fsync succeeded on a removed namespace"
        );
        // Wait past the gone grace: the verdict is in.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let verdict = g.sample(vol, &target).await?;
        ensure!(verdict.abnormal, "after the grace: {verdict:?}");
        let back = Instant::now();
        g.nvmet
            .set_enabled(&nqn, 1, true)
            .map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || !heads(&nqn).is_empty()).await,
            "the head did not come back"
        );
        let healed = g
            .wait_condition(vol, &target, "healthy", |s| !s.abnormal)
            .await?;
        let samples = sampler.finish().await?;
        abnormal_throughout(&samples, |k| !k.ends_with("ns=-"))?;
        check_file(&target.join("data"), vol)?;
        let kinds: Vec<_> = {
            let mut k: Vec<String> = samples.iter().map(|s| s.kind.clone()).collect();
            k.dedup();
            k
        };
        let mut notes = vec![
            format!(
                "head removed {} after disable; abnormal ({}) {} after",
                secs(removed_at),
                flagged.kind,
                secs(flagged.at - t0)
            ),
            format!("I/O through the mount: {}", io.err().unwrap_or_default()),
            format!("after the grace: {} ({})", verdict.kind, verdict.message),
            format!("enabled again: healthy {} later", secs(healed.at - back)),
            format!("conditions seen: {kinds:?} (filesystem_failed only if FAN_FS_ERROR came)"),
            format!(
                "events: {:?}",
                g.events(vol)
                    .iter()
                    .map(|e| e.1.as_str())
                    .collect::<Vec<_>>()
            ),
        ];
        notes.extend(timeline(&samples, t0));
        g.unpublish(vol, "pod-a").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        Ok(notes)
    }
    .await;
    g.clean(vol, &["pod-a"]).await;
    r
}

/// The plugin restarts while the controller is reconnecting: abnormal from its first
/// answer, healthy when the port is back.
async fn restart_while_reconnecting(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-restart-rc";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let target = g.publish(vol, "pod-a", ext4(), ctx).await.map_err(st)?;
        write_file(&target.join("data"), vol)?;
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        g.wait_condition(vol, &target, "controller_reconnecting", |s| {
            s.kind == "controller_reconnecting"
        })
        .await?;
        g.restart_plugin(false).await?;
        let first = g.sample(vol, &target).await?;
        ensure!(first.abnormal, "first answer after the restart: {first:?}");
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let healed = g
            .wait_condition(vol, &target, "healthy", |s| !s.abnormal)
            .await?;
        check_file(&target.join("data"), vol)?;
        g.unpublish(vol, "pod-a").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        Ok(vec![
            format!(
                "first answer after the restart: {} ({})",
                first.kind, first.message
            ),
            format!("after the port came back: {}", healed.kind),
        ])
    }
    .await;
    g.clean(vol, &["pod-a"]).await;
    r
}

/// The plugin is killed while the kernel has deleted the controller: abnormal from its first
/// answer after the restart, and it reconnects from the record when the port is back.
async fn restart_while_deleted(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-restart-del";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "3")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let target = g.publish(vol, "pod-a", ext4(), ctx).await.map_err(st)?;
        write_file(&target.join("data"), vol)?;
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).is_empty()).await,
            "the kernel did not delete the controller"
        );
        g.plugin.kill();
        g.plugin.restart().await?;
        g.kubelet = g.plugin.kubelet().await?;
        let first = g.sample(vol, &target).await?;
        ensure!(first.abnormal, "first answer after the restart: {first:?}");
        let back = Instant::now();
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).iter().any(|c| c.state == "live")).await,
            "the restarted plugin did not reconnect"
        );
        let healed = g
            .wait_condition(vol, &target, "healthy", |s| !s.abnormal)
            .await?;
        check_file(&target.join("data"), vol)?;
        g.unpublish(vol, "pod-a").await.map_err(st)?;
        g.unstage(vol).await.map_err(st)?;
        Ok(vec![
            format!(
                "first answer after the restart: {} ({})",
                first.kind, first.message
            ),
            format!(
                "healthy {} after the port came back",
                secs(healed.at - back)
            ),
        ])
    }
    .await;
    g.clean(vol, &["pod-a"]).await;
    r
}

/// An unstage while the target is away and the filesystem still has dirty data: the unmount
/// blocks in the kernel (writeback to a reconnecting controller) after its mount has left the
/// mount table, the call gives up at its deadline and the thread is left behind. A retried
/// unstage must not disconnect the controller under that writeback (nothing in the mount table
/// shows the device is in use, and this guest has no udev links). Once the port is back the
/// writeback finishes, the unstage completes and disconnects, and the data is on the device.
async fn unstage_while_an_unmount_is_stuck(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-stuckumount";
    let r = async {
        let nqn = Guest::nqn(vol);
        g.target(vol)?;
        let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
        g.stage(vol, ext4(), ctx.clone()).await.map_err(st)?;
        let staging = g.staging(vol);
        // Dirty data, not synced: the unmount has to write it back.
        std::fs::write(staging.join("dirty"), pattern(vol)).map_err(|e| e.to_string())?;
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).iter().all(|c| c.state != "live")).await,
            "the controller stayed live"
        );
        let t0 = Instant::now();
        let first = g.unstage(vol).await;
        let first_took = t0.elapsed();
        ensure!(
            first.is_err(),
            "the unstage finished although its writeback cannot: {first:?}"
        );
        ensure!(
            mounted_dev(&staging).is_none(),
            "the staging mount is still in the table (the unmount did not start?)"
        );
        // Retried (kubelet retries): refused every time, and the controller stays.
        let mut refusals = Vec::new();
        for _ in 0..3 {
            let r = g.unstage(vol).await;
            match r {
                Ok(()) => return Err("a retried unstage succeeded during the writeback".into()),
                Err(e) => refusals.push(format!("{:?}: {}", e.code(), e.message())),
            }
            ensure!(
                !controllers(&nqn).is_empty(),
                "the controller was disconnected under the writeback"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let back = Instant::now();
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let mut done = None;
        while back.elapsed() < WAIT * 2 {
            if g.unstage(vol).await.is_ok() {
                done = Some(back.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let done = done.ok_or("the unstage never completed after the port came back")?;
        ensure!(
            wait_until(WAIT, || controllers(&nqn).is_empty()).await,
            "the controller was not disconnected by the completed unstage"
        );
        // The data written back is there.
        g.stage(vol, ext4(), ctx).await.map_err(st)?;
        check_file(&g.staging(vol).join("dirty"), vol)?;
        g.unstage(vol).await.map_err(st)?;
        Ok(vec![
            format!(
                "first unstage gave up after {}: {}",
                secs(first_took),
                first.err().map(|e| e.message().to_owned()).unwrap_or_default()
            ),
            format!("retries refused: {}", refusals.join(" | ")),
            format!(
                "port back: unstage completed and disconnected {} later; the dirty data is on the device",
                secs(done)
            ),
        ])
    }
    .await;
    g.clean(vol, &[]).await;
    r
}

/// The target's storage dies under a mounted xfs: the namespace sits on a loop device (nvmet's
/// bdev backend) whose capacity goes to 0, so every write the host sends fails. xfs shuts the
/// filesystem down and says so only in the kernel log (xfs sends no FAN_FS_ERROR, keeps its
/// mount options and still answers statvfs). The plugin reads the log: the pod's target reads
/// `filesystem_failed`, abnormal and with usage.
async fn xfs_dead_path(g: &mut Guest) -> Result<Notes, Fail> {
    let vol = "pvc-vm-xfsdead";
    let file = std::path::PathBuf::from(BACKING).join(format!("{vol}.lo"));
    let mut loop_dev = String::new();
    let r = async {
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(SIZE))
            .map_err(|e| format!("creating {}: {e}", file.display()))?;
        loop_dev = sh(&format!("losetup -f --show {}", file.display()))?
            .trim()
            .to_owned();
        g.target_on_device(vol, Path::new(&loop_dev))?;
        let ctx = Guest::context(vol, &[]);
        g.stage(vol, xfs(), ctx.clone()).await.map_err(st)?;
        let target = g.publish(vol, "pod-a", xfs(), ctx).await.map_err(st)?;
        std::fs::write(target.join("before"), b"data").map_err(|e| e.to_string())?;
        let s = g.sample(vol, &target).await?;
        ensure!(!s.abnormal, "healthy before: {s:?}");
        let t0 = Instant::now();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_len(0))
            .map_err(|e| e.to_string())?;
        sh(&format!("losetup -c {loop_dev}"))?;
        // The pod writes and syncs: the log write fails, xfs shuts down.
        let t = target.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..3 {
                let _ = std::fs::write(t.join(format!("after-{i}")), [1u8; 4096]);
                let _ = std::process::Command::new("sync")
                    .arg("-f")
                    .arg(&t)
                    .status();
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let s = g
            .wait_condition(vol, &target, "abnormal", |s| s.abnormal)
            .await?;
        ensure!(
            s.kind == "filesystem_failed" && s.usage,
            "after xfs shut down: {s:?}"
        );
        let log = sh("dmesg | grep -i 'XFS' | grep -i 'shut down' | tail -1").unwrap_or_default();
        Ok(vec![
            format!("{} after the device died: {}", secs(s.at - t0), s.message),
            format!("kernel: {}", log.trim()),
        ])
    }
    .await;
    g.clean(vol, &["pod-a"]).await;
    if !loop_dev.is_empty() {
        let _ = sh(&format!("losetup -d {loop_dev}"));
    }
    let _ = std::fs::remove_file(&file);
    r
}
