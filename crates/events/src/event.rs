//! The vocabulary the node plugin uses to tell users what happened to a volume, and the
//! [`EventSink`] seam through which it says it.
//!
//! Reasons are a closed enum (not free strings) so that dashboards and alerts can rely on them; the
//! first five are the Go driver's reasons, kept for compatibility.

use std::fmt;
use std::sync::Arc;

/// Why an event is posted. Shows up in `kubectl describe pvc` as `Reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A mount of the volume sits on a dead or replaced device.
    StaleMountDetected,
    /// Automatic recovery of a stale mount gave up.
    RecoveryFailed,
    /// Staging or publishing the volume failed.
    MountFailure,
    /// The NVMe/TCP connection to the target failed or was lost.
    ConnectionFailure,
    /// The NVMe/TCP connection came back.
    ConnectionRecovery,
    /// Duplicate mounts of the volume's device exceed the storm threshold.
    MountStorm,
    /// The filesystem reported an error (`FAN_FS_ERROR`, emergency read-only, shutdown).
    FilesystemFailed,
}

impl Reason {
    /// Every reason, in declaration order (for exhaustive tests and metric label pre-registration).
    pub const ALL: [Reason; 7] = [
        Reason::StaleMountDetected,
        Reason::RecoveryFailed,
        Reason::MountFailure,
        Reason::ConnectionFailure,
        Reason::ConnectionRecovery,
        Reason::MountStorm,
        Reason::FilesystemFailed,
    ];

    /// The PascalCase string Kubernetes shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::StaleMountDetected => "StaleMountDetected",
            Reason::RecoveryFailed => "RecoveryFailed",
            Reason::MountFailure => "MountFailure",
            Reason::ConnectionFailure => "ConnectionFailure",
            Reason::ConnectionRecovery => "ConnectionRecovery",
            Reason::MountStorm => "MountStorm",
            Reason::FilesystemFailed => "FilesystemFailed",
        }
    }

    /// The severity this reason normally carries: only a recovered connection is good news.
    pub const fn default_type(self) -> EventType {
        match self {
            Reason::ConnectionRecovery => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event severity. Shows up in `kubectl describe` as `Type`.
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

/// One thing that happened to one volume, as the node plugin wants users to learn it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEvent {
    /// The volume ID, which is the PV name (`pvc-<uuid>`). The sink finds the PVC from it.
    pub volume_id: String,
    /// Why.
    pub reason: Reason,
    /// Normal or Warning.
    pub type_: EventType,
    /// What was being done, PascalCase (`Stage`, `Recover`, `Connect`, `Monitor`). At most 128 bytes
    /// reach the API server.
    pub action: String,
    /// Human-readable detail. At most 1 kB reaches the API server.
    pub note: String,
}

impl VolumeEvent {
    /// An event with the reason's default severity ([`Reason::default_type`]).
    pub fn new(
        volume_id: impl Into<String>,
        reason: Reason,
        action: impl Into<String>,
        note: impl Into<String>,
    ) -> Self {
        Self {
            volume_id: volume_id.into(),
            reason,
            type_: reason.default_type(),
            action: action.into(),
            note: note.into(),
        }
    }

    /// The same event with another severity.
    #[must_use]
    pub fn with_type(mut self, type_: EventType) -> Self {
        self.type_ = type_;
        self
    }
}

/// Where volume events go. Object-safe and non-blocking: the monitor task and the CSI handlers call
/// [`EventSink::post`] on their hot paths, so an implementation must never wait on IO, on the API
/// server, or on a full queue (it drops and counts instead).
pub trait EventSink: Send + Sync {
    /// Hand one event over. Returns at once; delivery, if any, happens elsewhere.
    fn post(&self, ev: VolumeEvent);
}

impl<T: EventSink + ?Sized> EventSink for Arc<T> {
    fn post(&self, ev: VolumeEvent) {
        (**self).post(ev);
    }
}

impl<T: EventSink + ?Sized> EventSink for Box<T> {
    fn post(&self, ev: VolumeEvent) {
        (**self).post(ev);
    }
}

/// The sink used when Kubernetes Events are disabled: discards everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn post(&self, _ev: VolumeEvent) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_the_pascal_case_names_users_see() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "StaleMountDetected",
                "RecoveryFailed",
                "MountFailure",
                "ConnectionFailure",
                "ConnectionRecovery",
                "MountStorm",
                "FilesystemFailed"
            ],
            "reason strings must stay compatible with the Go driver and stable for alerts"
        );
        for r in Reason::ALL {
            assert_eq!(
                r.to_string(),
                r.as_str(),
                "Display must equal as_str for {r:?}"
            );
        }
    }

    #[test]
    fn only_connection_recovery_is_normal_by_default() {
        for r in Reason::ALL {
            let expected = if r == Reason::ConnectionRecovery {
                EventType::Normal
            } else {
                EventType::Warning
            };
            assert_eq!(
                VolumeEvent::new("pvc-1", r, "Monitor", "x").type_,
                expected,
                "default severity of {r:?}"
            );
        }
    }

    #[test]
    fn with_type_overrides_the_default_severity() {
        let ev = VolumeEvent::new("pvc-1", Reason::MountFailure, "Stage", "x")
            .with_type(EventType::Normal);
        assert_eq!(
            ev.type_,
            EventType::Normal,
            "with_type must override the default"
        );
    }

    #[test]
    fn event_sink_is_object_safe_and_null_sink_accepts_events() {
        let sink: Arc<dyn EventSink> = Arc::new(NullSink);
        sink.post(VolumeEvent::new(
            "pvc-1",
            Reason::MountStorm,
            "Monitor",
            "n",
        ));
        let boxed: Box<dyn EventSink> = Box::new(sink.clone());
        boxed.post(VolumeEvent::new(
            "pvc-1",
            Reason::MountStorm,
            "Monitor",
            "n",
        ));
    }
}
