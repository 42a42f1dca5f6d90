//! `rds-csi-node`: the node plugin's binary. Parses the command line into the configuration
//! and hands it to the agent (`serve`), or runs the operator's `watch` view.

use std::process::ExitCode;
use std::sync::Arc;

mod cli;
mod watch;

use clap::Parser;
use cli::{Cli, Command, FabricKind, LogFormat, ServeArgs};
use rds_agent::app::{self, AppConfig};
use rds_node::{Deadlines, NodeConfig};
use rds_types::ManagedPrefix;

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    // Colours only on a terminal: container logs and files get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, "info");
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
    let roots = rds_hostops::inuse::HostRoots {
        proc: a.proc_root.clone(),
        sys: a.sys_root.clone(),
        dev: a.dev_root.clone(),
    };
    let fabric: Arc<dyn rds_fabric::Fabric> = match a.fabric {
        FabricKind::Kernel => Arc::new(rds_fabric::KernelFabric::new(
            a.dev_root.clone(),
            a.sys_root.clone(),
            managed.clone(),
        )),
        FabricKind::Emulated => Arc::new(rds_fabric::EmulatedFabric::new(
            rds_fabric::EmulatedConfig {
                sys_root: a.sys_root.clone(),
                dev_root: a.dev_root.clone(),
                backing_dir: a.emulated_backing_dir.clone(),
                multipath: false,
                inject_uevents: true,
                managed: managed.clone(),
                loops: rds_fabric::loopdev::LoopControl::new("/dev", "/sys"),
            },
        )?),
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
                device_wait: a.device_wait,
                unmount_wait: a.unmount_wait,
                mountinfo: a.mountinfo_timeout,
                ..Deadlines::default()
            },
        },
        devices: rds_devices::WatcherConfig::new(a.sys_root.clone(), a.run_root.clone())
            .with_sources(a.uevent_source.into())
            .with_kmsg(a.kmsg.then(|| a.dev_root.join("kmsg"))),
        mounts: {
            let mut m = rds_mounts::watch::WatcherConfig::new(a.proc_root.clone());
            m.strategy = a.mount_strategy.into();
            m.read_timeout = a.mountinfo_timeout;
            m.storm.threshold = a.storm_threshold;
            m.storm.clear_below = m
                .storm
                .clear_below
                .min(a.storm_threshold.saturating_sub(1).max(1));
            m
        },
        monitor: rds_monitor::MonitorConfig {
            gone_grace: a.gone_grace,
            io_stall_after: a.io_stall_after,
            recovery_attempts: a.recovery_attempts,
            evict_pods_on_stale: a.evict_pods_on_stale,
            ..rds_monitor::MonitorConfig::default()
        },
        events: rds_agent::app::EventsMode::Kube {
            kubeconfig: a.kubeconfig.clone(),
        },
        metrics_address: a.metrics_address,
        io_sample_period: a.io_sample_period,
    };
    app::run(cfg, fabric, rds_node::server::shutdown_signal(), |_| {}).await?;
    Ok(())
}
