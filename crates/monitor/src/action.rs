//! The machine's output: what the executor, the event recorder and the metrics should do.

use std::path::PathBuf;
use std::time::Duration;

use rds_types::{BlockIdentity, DevNum};

use crate::condition::{ConditionKind, VolumeCondition};
use crate::event::EventKind;
use crate::ids::{MountKey, StormKey, VolumeId};
use crate::time::Timestamp;

/// Why a recovery is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryReason {
    /// Mount `new` at the staging path (the old mount sits on `old`, which is dead).
    DeviceReplaced {
        old: BlockIdentity,
        new: BlockIdentity,
    },
    /// The filesystem on the (same) device failed: remount it.
    FilesystemFailed,
    /// The staging mount vanished while the device is fine: mount it again.
    MountMissing,
    /// The namespace's controller is gone (the kernel deleted it once `ctrl_loss_tmo` expired,
    /// or someone disconnected it) and nothing brings it back by itself: connect with the
    /// volume's recorded parameters, check that the namespace is the same volume, then heal
    /// the staging path as for a replaced device. Retried with backoff and no end while the
    /// volume is staged.
    Reconnect,
}

impl RecoveryReason {
    pub fn kind(&self) -> ConditionKind {
        match self {
            Self::DeviceReplaced { .. } => ConditionKind::DeviceReplaced,
            Self::FilesystemFailed => ConditionKind::FilesystemFailed,
            Self::MountMissing => ConditionKind::MountMissing,
            Self::Reconnect => ConditionKind::DeviceGone,
        }
    }

    /// Reconnects never give up while the volume is staged; the remount steps are bounded.
    pub fn is_unbounded(&self) -> bool {
        matches!(self, Self::Reconnect)
    }
}

use rds_types::Message;
pub use rds_types::{EventReason, EventType};

/// Outcome of one recovery attempt, for the metrics: the shared vocabulary's.
pub use rds_types::RecoveryResult;

/// Why an event changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// The event names a volume that is not staged (or a publish that does not exist).
    UnknownVolume,
    /// Executor feedback for no recovery the machine asked for (or another attempt).
    UnexpectedFeedback,
    /// A removal of a namespace incarnation older than the one we know.
    StaleRemoval,
}

/// Metric observations; the integration layer turns them into Prometheus series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricEvent {
    /// A volume entered an abnormal condition; `latency` is `now - observed_at` when the
    /// triggering event carried a kernel timestamp.
    Detection {
        kind: ConditionKind,
        latency: Option<Duration>,
    },
    Recovery {
        result: RecoveryResult,
    },
    StormStarted {
        key: StormKey,
        count: u64,
    },
    StormCleared {
        key: StormKey,
    },
    Ignored {
        event: EventKind,
        reason: IgnoreReason,
    },
}

/// What to do. The machine never does it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A volume's condition changed (kind or message). `old: None` = newly tracked, `new: None`
    /// = no longer tracked (unstaged).
    ConditionChanged {
        volume_id: VolumeId,
        old: Option<VolumeCondition>,
        new: Option<VolumeCondition>,
    },
    /// One publish's condition changed (what `NodeGetVolumeStats` on that target reports).
    PublishConditionChanged {
        volume_id: VolumeId,
        target: PathBuf,
        old: Option<VolumeCondition>,
        new: Option<VolumeCondition>,
    },
    /// Recover the volume (take the per-volume guard, remount the staging path, re-bind the
    /// targets), then report `RecoveryStarted` and `RecoverySucceeded`/`RecoveryFailed`.
    Recover {
        volume_id: VolumeId,
        reason: RecoveryReason,
        attempt: u32,
        /// What the NQN resolves to now (`None` if unknown).
        device: Option<BlockIdentity>,
    },
    /// Post a Kubernetes Event on the volume's PVC.
    PostEvent {
        volume_id: VolumeId,
        reason: EventReason,
        type_: EventType,
        /// Rendered when the shell hands the Event to its sink, after publishing.
        message: Message,
    },
    /// Delete the pods behind these targets so their controllers recreate them on the healed
    /// mount (only with `MonitorConfig::evict_pods_on_stale`).
    EvictPods {
        volume_id: VolumeId,
        targets: Vec<PathBuf>,
    },
    /// Re-read this mount on every remount wake-up of the mount watcher (a staging mount: its
    /// remount to read-only is a fault); `UntrackMount` ends it.
    TrackMount {
        id: u64,
    },
    UntrackMount {
        id: u64,
    },
    /// Watch the filesystem mounted at `mount_point` (`mount.dev`) for `FAN_FS_ERROR` on
    /// behalf of the volume. A volume's previous watch is always ended first (with
    /// `UnwatchFilesystem`, in order): a healed filesystem keeps its fsid.
    WatchFilesystem {
        volume_id: VolumeId,
        mount: MountKey,
        mount_point: PathBuf,
    },
    UnwatchFilesystem {
        volume_id: VolumeId,
        dev: DevNum,
    },
    /// Sample this device's request counters (`MonitorEvent::IoProgress`), for stall
    /// detection; `UnwatchIo` ends it.
    WatchIo {
        dev: DevNum,
    },
    UnwatchIo {
        dev: DevNum,
    },
    /// Deliver a `MonitorEvent::Tick` at or after `at`. Extra or late ticks are harmless;
    /// `Monitor::next_deadline` gives the earliest pending one.
    ScheduleTick {
        at: Timestamp,
    },
    Metric(MetricEvent),
}
