//! Every default in one place, as named constants (seeded from the existing driver's constants).

use std::time::Duration;

pub const DRIVER_NAME: &str = "rds.csi.srvlab.io";
pub const ENDPOINT: &str = "unix:///csi/csi.sock";
pub const STATE_DIR: &str = "/var/lib/rds-csi-node";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
pub const SYS_ROOT: &str = "/sys";
pub const DEV_ROOT: &str = "/dev";
pub const PROC_ROOT: &str = "/proc";
pub const RUN_ROOT: &str = "/run";
/// How often the staged devices' request counters are read (for stall detection).
pub const IO_SAMPLE_PERIOD: Duration = Duration::from_secs(5);
pub const NVME_CONFIG_DIR: &str = "/etc/nvme";
/// Topology key this plugin reports in NodeGetInfo.
pub const TOPOLOGY_KEY: &str = "topology.rds.csi.srvlab.io/node";
/// Upper bound on volumes kubelet schedules on one node (configurable).
pub const MAX_VOLUMES_PER_NODE: i64 = 256;

/// Volume context defaults (PRIOR_ART.md).
pub const NVME_PORT: u16 = 4420;
pub const CTRL_LOSS_TMO: i32 = -1;
pub const RECONNECT_DELAY: u32 = 5;

/// How long NodeStageVolume waits for the namespace's block device after connecting.
pub const DEVICE_WAIT: Duration = Duration::from_secs(30);
/// Deadline for one write to /dev/nvme-fabrics (a dead target can hang it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for mount, bind and similar syscalls run off the runtime.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// A normal unmount is retried on EBUSY this long before a lazy unmount is considered
/// (and a lazy unmount only happens when nothing uses the mount).
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(10);
/// Deadline for reading the mount table (a flooded table can take seconds).
pub const MOUNTINFO_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for statvfs and BLKGETSIZE64 (a dead filesystem can hang them).
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for content probing (reading the device and blkid).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for mkfs.
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline for resize2fs / xfs_growfs.
pub const RESIZE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long SIGTERM waits for in-flight RPCs before exiting anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Most layers of mounts NodeUnpublishVolume peels off one target before it gives up
/// (more than this is a mount storm, not a publish).
pub const MAX_UNMOUNT_LAYERS: usize = 64;
/// How long NodePublishVolume waits for the monitor to recover a stale volume before it
/// answers FailedPrecondition (kubelet retries).
pub const PUBLISH_RECOVERY_WAIT: Duration = Duration::from_secs(20);
