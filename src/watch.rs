//! `watch`: print the live stream of what the monitor sees, for an operator.

use crate::cli::WatchArgs;

pub async fn run(a: WatchArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cfg = rds_devices::WatcherConfig::new(a.sys_root.clone(), a.run_root.clone())
        .with_sources(a.uevent_source.into());
    let (_devices, mut dev_rx) = rds_devices::spawn(cfg)?;
    println!(
        "watching devices under {} (Ctrl-C to stop)",
        a.sys_root.display()
    );
    loop {
        tokio::select! {
            ev = dev_rx.recv() => match ev {
                Some(ev) => println!("device  {ev:?}"),
                None => return Err("the device watcher stopped".into()),
            },
            _ = crate::server::shutdown_signal() => return Ok(()),
        }
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
