//! `rds-csi-node`: the node plugin's binary. Parses the command line into the configuration
//! and hands it to the agent (`serve`), or runs the operator's `watch` view.

use std::process::ExitCode;
use std::sync::Arc;

mod cli;
mod fabric_control;
mod logs;
mod watch;

use clap::Parser;
use cli::{Cli, Command, FabricKind, LogFormat, ServeArgs};
use rds_agent::app::{self, AppConfig};
use rds_node::{Deadlines, NodeConfig};
use rds_types::ManagedPrefix;

/// Logs go to stderr through [`logs::Lines`] (never blocking the thread that logs); the
/// returned guard flushes them at exit. If its thread cannot start, stderr directly.
fn init_tracing(format: LogFormat, default_level: &str) -> Option<logs::Flush> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    // Colours only on a terminal: container logs and files get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    match logs::Lines::start(std::io::stderr(), logs::QUEUE_LINES) {
        Ok((lines, flush)) => {
            let b = b.with_writer(lines);
            match format {
                LogFormat::Json => b.json().init(),
                LogFormat::Text => b.init(),
            }
            Some(flush)
        }
        Err(e) => {
            let b = b.with_writer(std::io::stderr);
            match format {
                LogFormat::Json => b.json().init(),
                LogFormat::Text => b.init(),
            }
            tracing::warn!(error = %e, "no log thread; logging to stderr directly");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Fabric(f) = &cli.command {
        // A client: no runtime, no tracing, just the reply.
        return match fabric_control::client(f) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let _flush = init_tracing(cli.log_format, "info");
    if let Command::Watch(w) = &cli.command {
        if let Some(ns) = &w.mount_ns {
            if let Err(e) = watch::enter_mount_ns(ns) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = match cli.command {
        Command::Serve(args) => rt.block_on(serve(*args)),
        Command::Watch(args) => rt.block_on(watch::run(args)),
        Command::Fabric(_) => unreachable!("handled before the runtime starts"),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", rds_types::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn serve(a: ServeArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Validated before any action: nothing outside this prefix is ever touched.
    let managed = ManagedPrefix::parse(&a.managed_nqn_prefix)?;
    if a.node_id.trim().is_empty() {
        return Err("--node-id must not be empty".into());
    }
    let endpoint = rds_node::server::socket_path(&a.endpoint)?;
    // Cluster mode without NVMe hardware: the emulated NVMe tree and device nodes live under
    // the emulated directory, and its udev events are always listened to (the fabric sends
    // them on the udev group, whether or not a udevd runs on the node).
    let (sys_root, dev_root, uevent_source) = match a.fabric {
        FabricKind::Kernel => (
            a.sys_root.clone(),
            a.dev_root.clone(),
            rds_devices::SourceKind::from(a.uevent_source),
        ),
        FabricKind::Emulated => (
            a.emulated_backing_dir.join("sys"),
            a.emulated_backing_dir.join("dev"),
            rds_devices::SourceKind::Both,
        ),
    };
    let roots = rds_hostops::inuse::HostRoots {
        proc: a.proc_root.clone(),
        sys: sys_root.clone(),
        dev: dev_root.clone(),
    };
    let mut control = None;
    let fabric: Arc<dyn rds_fabric::Fabric> = match a.fabric {
        FabricKind::Kernel => Arc::new(rds_fabric::KernelFabric::new(
            dev_root.clone(),
            sys_root.clone(),
            managed.clone(),
        )),
        FabricKind::Emulated => {
            let default_capacity = rds_node::validate::parse_bytes(
                "--emulated-default-capacity",
                &a.emulated_default_capacity,
            )?;
            let dir = a.emulated_backing_dir.clone();
            let f = Arc::new(rds_fabric::EmulatedFabric::new(
                rds_fabric::EmulatedConfig {
                    sys_root: sys_root.clone(),
                    dev_root: dev_root.clone(),
                    backing_dir: dir.clone(),
                    multipath: true,
                    inject_uevents: true,
                    managed: managed.clone(),
                    loops: rds_fabric::loopdev::LoopControl::new("/dev", "/sys"),
                    create_on_connect: Some(default_capacity),
                    persist: Some(dir.join("fabric-state.json")),
                },
            )?);
            tracing::info!(dir = %dir.display(), default_capacity, "emulated fabric (cluster mode): targets are created on first connect");
            control = Some(fabric_control::serve(f.clone(), &dir.join("control.sock")).await?);
            f
        }
    };
    let cfg = AppConfig {
        endpoint,
        driver_name: a.driver_name.clone(),
        state_dir: a.state_dir.clone(),
        node: NodeConfig {
            node_id: a.node_id.clone(),
            managed,
            roots,
            kubelet_dir: a.kubelet_dir.clone(),
            nvme_config_dir: a.nvme_config_dir.clone(),
            max_volumes_per_node: a.max_volumes_per_node,
            topology_key: rds_node::defaults::TOPOLOGY_KEY.to_owned(),
            deadlines: Deadlines {
                device_wait: a.device_wait.into(),
                unmount_wait: a.unmount_wait.into(),
                mountinfo: a.mountinfo_timeout.into(),
                ..Deadlines::default()
            },
        },
        devices: rds_devices::WatcherConfig::new(sys_root.clone(), a.run_root.clone())
            .with_sources(uevent_source)
            .with_kmsg(a.kmsg.then(|| dev_root.join("kmsg"))),
        mounts: {
            let mut m = rds_mounts::watch::WatcherConfig::new(a.proc_root.clone());
            m.strategy = a.mount_strategy.into();
            m.read_timeout = a.mountinfo_timeout.into();
            m.storm = rds_mounts::storm::StormConfig::with_threshold(a.storm_threshold);
            match a.storm_growth {
                Some(0) => m.storm.growth_count = usize::MAX,
                Some(n) => m.storm.growth_count = n,
                None => {}
            }
            m.storm.growth_window = a.storm_growth_window.into();
            tracing::info!(level = m.storm.threshold, clear_below = m.storm.clear_below,
                growth = m.storm.growth_count, growth_window = ?m.storm.growth_window, "mount storm signals");
            m
        },
        monitor: rds_monitor::MonitorConfig {
            gone_grace: a.gone_grace.into(),
            io_stall_after: a.io_stall_after.into(),
            recovery_attempts: a.recovery_attempts,
            evict_pods_on_stale: a.evict_pods_on_stale,
            ..rds_monitor::MonitorConfig::default()
        },
        events: rds_agent::app::EventsMode::Kube {
            kubeconfig: a.kubeconfig.clone(),
        },
        metrics_address: a.metrics_address,
        io_sample_period: a.io_sample_period.into(),
    };
    let r = app::run(cfg, fabric, rds_node::server::shutdown_signal(), |_| {}).await;
    if let Some((task, socket)) = control {
        task.abort();
        let _ = task.await;
        socket.remove();
    }
    r?;
    Ok(())
}
