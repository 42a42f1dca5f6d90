//! Command line: every flag also an environment variable; defaults from [`rds_node::defaults`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use rds_node::defaults as d;

#[derive(Debug, Parser)]
#[command(
    name = "rds-csi-node",
    version,
    about = "Event-driven CSI node plugin for NVMe/TCP block storage"
)]
pub struct Cli {
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CSI Identity and Node services (what the DaemonSet runs).
    Serve(Box<ServeArgs>),
    /// Print the live stream of mount and device events the monitor sees.
    Watch(WatchArgs),
    /// Rehearse a fault on a plugin running `serve --fabric emulated` (over its control socket).
    Fabric(FabricArgs),
}

/// Where the emulated fabric keeps its targets, tree and control socket by default.
pub const EMULATED_DIR: &str = "/var/lib/rds-csi-node/emulated";

#[derive(Debug, Args)]
pub struct FabricArgs {
    /// list, lose, restore, unexport, expire, kill-path, replace, reconnect,
    /// disable-namespace or enable-namespace.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(
        rds_fabric::emulated::control::FaultCommand::VERBS.iter().map(|(v, _)| *v)
    ))]
    pub command: String,
    /// The target's NQN (every command but `list`).
    #[arg(long, env = "NQN")]
    pub nqn: Option<String>,
    /// The running plugin's control socket (`<emulated-backing-dir>/control.sock`).
    #[arg(long, env = "EMULATED_CONTROL_SOCKET", default_value_t = format!("{EMULATED_DIR}/control.sock"))]
    pub socket: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FabricKind {
    /// The kernel's NVMe-oF host (`/dev/nvme-fabrics` and sysfs).
    Kernel,
    /// The emulated fabric (loop devices behind an NVMe sysfs tree under --sys-root).
    Emulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UeventSource {
    Auto,
    Kernel,
    Udev,
    Both,
}

impl From<UeventSource> for rds_devices::SourceKind {
    fn from(s: UeventSource) -> Self {
        match s {
            UeventSource::Auto => Self::Auto,
            UeventSource::Kernel => Self::Kernel,
            UeventSource::Udev => Self::Udev,
            UeventSource::Both => Self::Both,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// CSI endpoint (unix socket).
    #[arg(long, env = "CSI_ENDPOINT", default_value = d::ENDPOINT)]
    pub endpoint: String,
    /// This node's name (NodeGetInfo's node_id and topology).
    #[arg(long, env = "NODE_ID")]
    pub node_id: String,
    #[arg(long, env = "DRIVER_NAME", default_value = d::DRIVER_NAME)]
    pub driver_name: String,
    /// Only NQNs under this prefix are ever connected, formatted, mounted or disconnected.
    #[arg(long, env = "CSI_MANAGED_NQN_PREFIX")]
    pub managed_nqn_prefix: String,
    /// The plugin's own state (per-volume records).
    #[arg(long, env = "STATE_DIR", default_value = d::STATE_DIR)]
    pub state_dir: PathBuf,
    #[arg(long, env = "KUBELET_DIR", default_value = d::KUBELET_DIR)]
    pub kubelet_dir: PathBuf,
    #[arg(long, env = "SYS_ROOT", default_value = d::SYS_ROOT)]
    pub sys_root: PathBuf,
    #[arg(long, env = "DEV_ROOT", default_value = d::DEV_ROOT)]
    pub dev_root: PathBuf,
    #[arg(long, env = "PROC_ROOT", default_value = d::PROC_ROOT)]
    pub proc_root: PathBuf,
    /// Where udev's control socket lives (`<run-root>/udev/control`).
    #[arg(long, env = "RUN_ROOT", default_value = d::RUN_ROOT)]
    pub run_root: PathBuf,
    /// Directory holding `hostnqn` and `hostid`.
    #[arg(long, env = "NVME_CONFIG_DIR", default_value = d::NVME_CONFIG_DIR)]
    pub nvme_config_dir: PathBuf,
    #[arg(long, env = "MAX_VOLUMES_PER_NODE", default_value_t = d::MAX_VOLUMES_PER_NODE)]
    pub max_volumes_per_node: i64,
    #[arg(long, env = "FABRIC", value_enum, default_value_t = FabricKind::Kernel)]
    pub fabric: FabricKind,
    /// With --fabric emulated (cluster mode without NVMe hardware): where the emulated targets
    /// live. Their sparse backing files `<nqn>.img`, the emulated NVMe sysfs tree (`sys/`, used
    /// instead of --sys-root), the namespaces' device nodes (`dev/`, instead of --dev-root), the
    /// emulated kernel's state (`fabric-state.json`, so connections survive a plugin restart)
    /// and the control socket for `rds-csi-node fabric` (`control.sock`).
    #[arg(long, env = "EMULATED_BACKING_DIR", default_value = EMULATED_DIR)]
    pub emulated_backing_dir: PathBuf,
    /// With --fabric emulated: the size of a target created on first connect when the volume
    /// context has no `emulatedCapacity` (bytes, or with Ki, Mi, Gi, Ti, k, M, G, T).
    #[arg(long, env = "EMULATED_DEFAULT_CAPACITY", default_value = "1Gi")]
    pub emulated_default_capacity: String,
    #[arg(long, env = "UEVENT_SOURCE", value_enum, default_value_t = UeventSource::Auto)]
    pub uevent_source: UeventSource,
    /// Read `<dev-root>/kmsg` for the NVMe core's messages, so a controller that loses its
    /// transport is seen in milliseconds (no uevent announces it) rather than at the next
    /// periodic state re-read.
    #[arg(long, env = "KMSG", default_value_t = true, action = clap::ArgAction::Set)]
    pub kmsg: bool,
    /// How long NodeStageVolume waits for the namespace's block device.
    #[arg(long, env = "DEVICE_WAIT", default_value_t = d::DEVICE_WAIT.into())]
    pub device_wait: humantime::Duration,
    /// Normal unmounts are retried this long before a lazy unmount is considered.
    #[arg(long, env = "UNMOUNT_WAIT", default_value_t = d::UNMOUNT_WAIT.into())]
    pub unmount_wait: humantime::Duration,
    /// Bound on one read of the mount table.
    #[arg(long, env = "MOUNTINFO_TIMEOUT", default_value_t = d::MOUNTINFO_TIMEOUT.into())]
    pub mountinfo_timeout: humantime::Duration,
    /// How the mount table is watched: fanotify mount events (6.15+), POLLPRI + listmount/statmount
    /// (6.8+), POLLPRI + full re-read; auto picks the best the kernel allows.
    #[arg(long, env = "MOUNT_STRATEGY", value_enum, default_value_t = MountStrategy::Auto)]
    pub mount_strategy: MountStrategy,
    /// A mount storm is flagged on either of two signals, per device or mount point. The level:
    /// this many mounts at once (cleared below 80 % of it).
    #[arg(long, env = "STORM_THRESHOLD", default_value_t = rds_mounts::storm::DEFAULT_THRESHOLD)]
    pub storm_threshold: usize,
    /// The growth: this many new mounts within --storm-growth-window, which catches a cascade
    /// before it reaches the level. Default: half of --storm-threshold; 0 turns it off.
    #[arg(long, env = "STORM_GROWTH")]
    pub storm_growth: Option<usize>,
    #[arg(long, env = "STORM_GROWTH_WINDOW", default_value_t = rds_mounts::storm::DEFAULT_GROWTH_WINDOW.into())]
    pub storm_growth_window: humantime::Duration,
    /// How long a removed namespace may take to come back (a reconnect) before the volume is
    /// reported as device gone.
    #[arg(long, env = "GONE_GRACE", default_value_t = rds_monitor::DEFAULT_GONE_GRACE.into())]
    pub gone_grace: humantime::Duration,
    /// A staged device with requests in flight and none completed for this long is reported
    /// `io_stalled`.
    #[arg(long, env = "IO_STALL_AFTER", default_value_t = rds_monitor::DEFAULT_IO_STALL_AFTER.into())]
    pub io_stall_after: humantime::Duration,
    /// How often the staged devices' request counters are read (for stall detection).
    #[arg(long, env = "IO_SAMPLE_PERIOD", default_value_t = d::IO_SAMPLE_PERIOD.into())]
    pub io_sample_period: humantime::Duration,
    /// Recovery attempts before giving up (backoff 1s, 2s, 4s, ...).
    #[arg(long, env = "RECOVERY_ATTEMPTS", default_value_t = rds_monitor::DEFAULT_RECOVERY_ATTEMPTS)]
    pub recovery_attempts: u32,
    /// Delete the pods on this node that hold a dead filesystem so their controllers recreate
    /// them on the healed volume (off by default).
    #[arg(long, env = "EVICT_PODS_ON_STALE", default_value_t = false)]
    pub evict_pods_on_stale: bool,
    /// Serve Prometheus metrics on this address (off by default; bind to localhost or the pod IP).
    #[arg(long, env = "METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Kubeconfig for posting Events (default: in-cluster config, then $KUBECONFIG).
    #[arg(long, env = "KUBECONFIG_PATH")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MountStrategy {
    Auto,
    Fanotify,
    Liststat,
    Reread,
}

impl From<MountStrategy> for rds_mounts::watch::Strategy {
    fn from(s: MountStrategy) -> Self {
        match s {
            MountStrategy::Auto => Self::Auto,
            MountStrategy::Fanotify => Self::Fanotify,
            MountStrategy::Liststat => Self::ListStat,
            MountStrategy::Reread => Self::Reread,
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(long, env = "SYS_ROOT", default_value = d::SYS_ROOT)]
    pub sys_root: PathBuf,
    #[arg(long, env = "PROC_ROOT", default_value = d::PROC_ROOT)]
    pub proc_root: PathBuf,
    #[arg(long, env = "RUN_ROOT", default_value = d::RUN_ROOT)]
    pub run_root: PathBuf,
    #[arg(long, env = "UEVENT_SOURCE", value_enum, default_value_t = UeventSource::Auto)]
    pub uevent_source: UeventSource,
    /// Watch the mount namespace of this file (e.g. /proc/<pid>/ns/mnt) instead of our own.
    #[arg(long, env = "MOUNT_NS")]
    pub mount_ns: Option<PathBuf>,
    #[arg(long, env = "MOUNT_STRATEGY", value_enum, default_value_t = MountStrategy::Auto)]
    pub mount_strategy: MountStrategy,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(extra: &[&str]) -> ServeArgs {
        let mut argv = vec![
            "rds-csi-node",
            "serve",
            "--node-id=n1",
            "--managed-nqn-prefix=nqn.2000-02.com.mikrotik:pvc-",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Serve(a) => *a,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_libraries_own() {
        let a = serve(&[]);
        let d = |h: humantime::Duration| std::time::Duration::from(h);
        assert_eq!(d(a.device_wait), rds_node::defaults::DEVICE_WAIT);
        assert_eq!(d(a.unmount_wait), rds_node::defaults::UNMOUNT_WAIT);
        assert_eq!(
            d(a.mountinfo_timeout),
            rds_node::defaults::MOUNTINFO_TIMEOUT
        );
        assert_eq!(d(a.gone_grace), rds_monitor::DEFAULT_GONE_GRACE);
        assert_eq!(d(a.io_stall_after), rds_monitor::DEFAULT_IO_STALL_AFTER);
        assert_eq!(d(a.io_sample_period), rds_node::defaults::IO_SAMPLE_PERIOD);
        assert_eq!(
            d(a.storm_growth_window),
            rds_mounts::storm::DEFAULT_GROWTH_WINDOW
        );
        assert_eq!(a.storm_threshold, rds_mounts::storm::DEFAULT_THRESHOLD);
        assert_eq!(a.recovery_attempts, rds_monitor::DEFAULT_RECOVERY_ATTEMPTS);
        assert_eq!(
            a.run_root,
            std::path::Path::new(rds_node::defaults::RUN_ROOT)
        );
    }

    #[test]
    fn durations_take_the_documented_forms() {
        let a = serve(&["--gone-grace=1500ms", "--device-wait=2m"]);
        assert_eq!(
            std::time::Duration::from(a.gone_grace),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(
            std::time::Duration::from(a.device_wait),
            std::time::Duration::from_secs(120)
        );
        assert!(Cli::try_parse_from([
            "rds-csi-node",
            "serve",
            "--node-id=n1",
            "--managed-nqn-prefix=nqn.2000-02.com.mikrotik:pvc-",
            "--gone-grace=soon",
        ])
        .is_err());
    }
}
