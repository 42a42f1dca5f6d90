//! What the monitor concludes about a staged volume or one of its publishes.

use std::fmt;

use crate::event::EventKind;
use crate::time::Timestamp;

/// The condition of a volume (or of one publish of it). Ordered here from least to most
/// urgent; [`ConditionKind::priority`] decides which wins when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionKind {
    Healthy,
    /// The NVMe controller is reconnecting (`connecting`/`resetting`) and no path is live:
    /// I/O is queued or failing, and may resume by itself.
    ControllerReconnecting,
    /// Our staging mount (or, for a publish, its bind mount) went away without an
    /// unstage/unpublish.
    MountMissing,
    /// The filesystem is dead: `FAN_FS_ERROR`, `emergency_ro`/`shutdown` in the super options,
    /// or a read-write mount that turned read-only without being asked.
    FilesystemFailed,
    /// The NQN now resolves to another block device (another `major:minor`, or the same one
    /// with a new `diskseq`): the mount sits on a dead superblock.
    DeviceReplaced,
    /// The executor is recovering the volume.
    Recovering,
    /// The namespace was removed and nothing replaced it within the grace period.
    DeviceGone,
    /// A mount storm on the volume's device or paths.
    MountStorm,
}

impl ConditionKind {
    pub const ALL: [ConditionKind; 8] = [
        Self::Healthy,
        Self::ControllerReconnecting,
        Self::MountMissing,
        Self::FilesystemFailed,
        Self::DeviceReplaced,
        Self::Recovering,
        Self::DeviceGone,
        Self::MountStorm,
    ];

    /// Anything but healthy: what CSI's `VolumeCondition.abnormal` reports.
    pub fn is_abnormal(self) -> bool {
        self != Self::Healthy
    }

    /// Higher wins when several conditions hold at once (see the crate docs for why).
    pub fn priority(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::ControllerReconnecting => 1,
            Self::MountMissing => 2,
            Self::FilesystemFailed => 3,
            Self::DeviceReplaced => 4,
            Self::Recovering => 5,
            Self::DeviceGone => 6,
            Self::MountStorm => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::ControllerReconnecting => "controller_reconnecting",
            Self::MountMissing => "mount_missing",
            Self::FilesystemFailed => "filesystem_failed",
            Self::DeviceReplaced => "device_replaced",
            Self::Recovering => "recovering",
            Self::DeviceGone => "device_gone",
            Self::MountStorm => "mount_storm",
        }
    }
}

impl fmt::Display for ConditionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event that triggered a transition, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub event: EventKind,
    /// The event with its kernel identities (`mount 42 detached`).
    pub detail: String,
    /// When the machine processed it.
    pub at: Timestamp,
    /// When the kernel (or watcher) observed it, if the event carried that.
    pub observed_at: Option<Timestamp>,
}

/// A volume's (or publish's) current condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeCondition {
    pub kind: ConditionKind,
    /// Human-readable, honest: what is wrong, on which device, and what recovery can and
    /// cannot fix. This is what `NodeGetVolumeStats` returns.
    pub message: String,
    /// When this kind was entered (a message-only update keeps it).
    pub since: Timestamp,
    /// What made it so.
    pub cause: Cause,
}

impl VolumeCondition {
    pub fn is_abnormal(&self) -> bool {
        self.kind.is_abnormal()
    }
}

/// One recorded transition of a volume's condition kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Option<ConditionKind>,
    pub to: ConditionKind,
    pub message: String,
    pub cause: Cause,
    /// How long the previous kind lasted.
    pub after: std::time::Duration,
}
