//! `watch`: print the live stream of what the monitor sees, for an operator: mount events
//! (attach, detach, remount/move, storms) and device events (controllers, namespaces, block
//! devices with `major:minor` and `diskseq`).

use std::time::Instant;

use crate::cli::WatchArgs;

pub async fn run(a: WatchArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cfg = rds_devices::WatcherConfig::new(a.sys_root.clone(), a.run_root.clone())
        .with_sources(a.uevent_source.into());
    let (_devices, mut dev_rx) = rds_devices::spawn(cfg)?;
    let mut mcfg = rds_mounts::watch::WatcherConfig::new(a.proc_root.clone());
    mcfg.strategy = a.mount_strategy.into();
    let (mounts, mut mount_rx) = rds_mounts::watch::spawn(mcfg)?;
    println!(
        "watching mounts ({:?}) and devices under {} (Ctrl-C to stop)",
        mounts.strategy(),
        a.sys_root.display()
    );
    let start = Instant::now();
    let stamp = || format!("{:>10.3}s", start.elapsed().as_secs_f64());
    loop {
        tokio::select! {
            ev = mount_rx.recv() => match ev {
                Some(ev) => println!("{} mount   {}", stamp(), describe_mount(&ev)),
                None => return Err("the mount watcher stopped".into()),
            },
            ev = dev_rx.recv() => match ev {
                Some(ev) => println!("{} device  {ev:?}", stamp()),
                None => return Err("the device watcher stopped".into()),
            },
            _ = rds_node::server::shutdown_signal() => return Ok(()),
        }
    }
}

fn describe_mount(ev: &rds_mounts::watch::MountEvent) -> String {
    use rds_mounts::watch::MountEvent as E;
    let m = |m: &rds_mounts::mountinfo::MountInfo| {
        format!(
            "id {} {} {} on {} ({})",
            m.id,
            m.dev,
            m.fs_type,
            m.mount_point.display(),
            m.mount_options
        )
    };
    match ev {
        E::Attached(x) => format!("attached {}", m(x)),
        E::Detached(x) => format!("detached {}", m(x)),
        E::Changed { old, new } => format!(
            "changed  {} (was {} on {})",
            m(new),
            old.mount_options,
            old.mount_point.display()
        ),
        E::Resynced { table } => format!("resynced: {} mounts", table.len()),
        E::Overflow => "overflow: events were lost, a resync follows".into(),
        E::Storm(r) => format!("STORM    {}", r.message),
        E::StormCleared(c) => format!("storm cleared on {} (peak {})", c.key, c.peak),
        E::Error(e) => format!("error    {e}"),
    }
}

/// Join another mount namespace. Must run while the process is single-threaded (before the
/// async runtime starts): the kernel refuses setns(CLONE_NEWNS) to a multi-threaded process.
pub fn enter_mount_ns(
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("setns({}): {e}", path.display()))?;
    Ok(())
}
