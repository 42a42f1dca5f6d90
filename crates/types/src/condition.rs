//! What the plugin knows about a volume's health, in the one shape every layer speaks: the
//! monitor decides it, the agent publishes it, NodeGetVolumeStats reports it.

use std::fmt;
use std::time::SystemTime;

/// The condition of a staged volume (or of one publish of it). When several faults hold, the
/// highest [`ConditionKind::priority`] wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionKind {
    Healthy,
    /// Requests are in flight on the device and none completed for the stall period.
    IoStalled,
    /// The NVMe controller is reconnecting (`connecting`/`resetting`) and no path is live:
    /// I/O is queued or failing, and may resume by itself.
    ControllerReconnecting,
    /// Our staging mount (for a publish: its bind mount) went away without an unstage
    /// (unpublish).
    MountMissing,
    /// The filesystem is dead: `FAN_FS_ERROR`, `emergency_ro`/`shutdown` in the super options,
    /// or a read-write mount that turned read-only without being asked.
    FilesystemFailed,
    /// The namespace's block device was removed; the gone-grace has not decided yet whether it
    /// comes back (a reconnect) or is gone. I/O through the mount fails from the first instant.
    DeviceRemoved,
    /// The NQN resolves to another block device (another `major:minor`, or the same one with a
    /// new `diskseq`): the mount sits on a dead superblock.
    DeviceReplaced,
    /// The executor is healing the volume.
    Recovering,
    /// The namespace now behind the volume's NQN is another volume (uuid/nguid/wwid differ):
    /// it is never mounted as this one.
    NamespaceMismatch,
    /// The namespace was removed and nothing replaced it within the gone-grace.
    DeviceGone,
    /// A mount storm on the volume's device or paths.
    MountStorm,
}

impl ConditionKind {
    pub const ALL: [ConditionKind; 11] = [
        Self::Healthy,
        Self::IoStalled,
        Self::ControllerReconnecting,
        Self::MountMissing,
        Self::FilesystemFailed,
        Self::DeviceRemoved,
        Self::DeviceReplaced,
        Self::Recovering,
        Self::NamespaceMismatch,
        Self::DeviceGone,
        Self::MountStorm,
    ];

    /// Anything but healthy: what CSI's `VolumeCondition.abnormal` reports.
    pub fn is_abnormal(self) -> bool {
        self != Self::Healthy
    }

    /// Higher wins when several conditions hold at once. A storm endangers the whole node and
    /// must not be made worse by remounts, so it masks everything; a gone device makes every
    /// other fault moot; a foreign namespace must never be mounted; while a recovery runs, the
    /// faults it repairs are expected; a replaced or removed device is the root cause of the
    /// filesystem errors and the missing mount that usually follow; a dead filesystem does not
    /// heal when the controller reconnects; a reconnecting controller explains stalled I/O.
    pub fn priority(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::IoStalled => 1,
            Self::ControllerReconnecting => 2,
            Self::MountMissing => 3,
            Self::FilesystemFailed => 4,
            Self::DeviceRemoved => 5,
            Self::DeviceReplaced => 6,
            Self::Recovering => 7,
            Self::NamespaceMismatch => 8,
            Self::DeviceGone => 9,
            Self::MountStorm => 10,
        }
    }

    /// Whether `statvfs` (or `BLKGETSIZE64`) through the volume's mount can be attempted: on a
    /// removed, replaced, failed, stalled or reconnecting device it can fail or hang.
    pub fn io_safe(self) -> bool {
        matches!(self, Self::Healthy | Self::MountStorm)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::IoStalled => "io_stalled",
            Self::ControllerReconnecting => "controller_reconnecting",
            Self::MountMissing => "mount_missing",
            Self::FilesystemFailed => "filesystem_failed",
            Self::DeviceRemoved => "device_removed",
            Self::DeviceReplaced => "device_replaced",
            Self::Recovering => "recovering",
            Self::NamespaceMismatch => "namespace_mismatch",
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

/// A volume's (or one publish's) condition as reported: what NodeGetVolumeStats answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub kind: ConditionKind,
    /// First sentence: what is wrong and what to do (under 120 characters); details follow.
    pub message: crate::Message,
    /// When the volume entered this kind.
    pub since: SystemTime,
}

impl Health {
    pub fn abnormal(&self) -> bool {
        self.kind.is_abnormal()
    }

    pub fn io_safe(&self) -> bool {
        self.kind.io_safe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_distinct_and_follow_the_declaration_order() {
        let p: Vec<u8> = ConditionKind::ALL.iter().map(|k| k.priority()).collect();
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(p, sorted);
    }

    #[test]
    fn only_healthy_and_storm_allow_statvfs() {
        for k in ConditionKind::ALL {
            assert_eq!(
                k.io_safe(),
                matches!(k, ConditionKind::Healthy | ConditionKind::MountStorm),
                "{k}"
            );
        }
    }
}
