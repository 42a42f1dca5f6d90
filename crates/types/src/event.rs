//! Kubernetes Event vocabulary: what the plugin tells users happened to a volume.

use std::fmt;

/// Event severity (`kubectl describe`'s `Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Informational.
    Normal,
    /// Something needs a human's attention.
    Warning,
}

impl EventType {
    /// The string Kubernetes shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event is posted (`kubectl describe pvc`'s `Reason`). A closed set so dashboards and
/// alerts can rely on it; the first seven are the Go driver's, kept for compatibility. Every
/// transition has its own reason: a problem starting and a problem ending never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventReason {
    /// A mount of the volume sits on a replaced device (the namespace came back as a new one).
    StaleMountDetected,
    /// An attempt to heal the volume failed (every failure gets one).
    RecoveryFailed,
    /// The staging mount or a pod's bind mount disappeared without an unstage or unpublish.
    MountFailure,
    /// The NVMe/TCP connection to the target was lost, or connecting failed.
    ConnectionFailure,
    /// The NVMe/TCP connection came back (the note gives the outage's duration).
    ConnectionRecovery,
    /// Duplicate mounts of the volume's device or paths exceed the storm threshold.
    MountStorm,
    /// The filesystem died (`FAN_FS_ERROR`, emergency read-only, shutdown).
    FilesystemFailed,
    /// The staging path was healed onto a working device.
    RecoverySucceeded,
    /// A missing mount is present again.
    MountRecovered,
    /// The mount storm is over.
    MountStormCleared,
    /// Requests to the device are in flight and none completes.
    IoStalled,
    /// The stalled device completes requests again.
    IoResumed,
    /// The namespace behind the volume's NQN is not the volume's (another uuid/nguid/wwid).
    NamespaceMismatch,
    /// Running pods still hold the dead filesystem and must be recreated.
    PodRestartRequired,
    /// Pods holding the dead filesystem were evicted (opt-in).
    PodsEvicted,
}

impl EventReason {
    /// Every reason, in declaration order (exhaustive tests, metric label pre-registration).
    pub const ALL: [EventReason; 15] = [
        Self::StaleMountDetected,
        Self::RecoveryFailed,
        Self::MountFailure,
        Self::ConnectionFailure,
        Self::ConnectionRecovery,
        Self::MountStorm,
        Self::FilesystemFailed,
        Self::RecoverySucceeded,
        Self::MountRecovered,
        Self::MountStormCleared,
        Self::IoStalled,
        Self::IoResumed,
        Self::NamespaceMismatch,
        Self::PodRestartRequired,
        Self::PodsEvicted,
    ];

    /// The PascalCase string Kubernetes shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StaleMountDetected => "StaleMountDetected",
            Self::RecoveryFailed => "RecoveryFailed",
            Self::MountFailure => "MountFailure",
            Self::ConnectionFailure => "ConnectionFailure",
            Self::ConnectionRecovery => "ConnectionRecovery",
            Self::MountStorm => "MountStorm",
            Self::FilesystemFailed => "FilesystemFailed",
            Self::RecoverySucceeded => "RecoverySucceeded",
            Self::MountRecovered => "MountRecovered",
            Self::MountStormCleared => "MountStormCleared",
            Self::IoStalled => "IoStalled",
            Self::IoResumed => "IoResumed",
            Self::NamespaceMismatch => "NamespaceMismatch",
            Self::PodRestartRequired => "PodRestartRequired",
            Self::PodsEvicted => "PodsEvicted",
        }
    }

    /// The severity this reason normally carries: good news is Normal.
    pub const fn default_type(self) -> EventType {
        match self {
            Self::ConnectionRecovery
            | Self::RecoverySucceeded
            | Self::MountRecovered
            | Self::MountStormCleared
            | Self::IoResumed => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
