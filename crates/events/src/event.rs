//! The vocabulary the node plugin uses to tell users what happened to a volume, and the
//! [`EventSink`] seam through which it says it.
//!
//! Reasons are a closed enum (not free strings) so that dashboards and alerts can rely on them; the
//! first five are the Go driver's reasons, kept for compatibility.

use std::sync::Arc;

pub use rds_types::{EventReason, EventType};

/// One thing that happened to one volume, as the node plugin wants users to learn it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEvent {
    /// The volume ID, which is the PV name (`pvc-<uuid>`). The sink finds the PVC from it.
    pub volume_id: String,
    /// Why.
    pub reason: EventReason,
    /// Normal or Warning.
    pub type_: EventType,
    /// What was being done, PascalCase (`Stage`, `Recover`, `Connect`, `Monitor`). At most 128 bytes
    /// reach the API server.
    pub action: String,
    /// Human-readable detail. At most 1 kB reaches the API server.
    pub note: String,
}

impl VolumeEvent {
    /// An event with the reason's default severity ([`EventReason::default_type`]).
    pub fn new(
        volume_id: impl Into<String>,
        reason: EventReason,
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
        let names: Vec<&str> = EventReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "StaleMountDetected",
                "RecoveryFailed",
                "MountFailure",
                "ConnectionFailure",
                "ConnectionRecovery",
                "MountStorm",
                "FilesystemFailed",
                "RecoverySucceeded",
                "MountRecovered",
                "MountStormCleared",
                "IoStalled",
                "IoResumed",
                "NamespaceMismatch",
                "PodRestartRequired",
                "PodsEvicted"
            ],
            "reason strings must stay compatible with the Go driver and stable for alerts"
        );
        for r in EventReason::ALL {
            assert_eq!(
                r.to_string(),
                r.as_str(),
                "Display must equal as_str for {r:?}"
            );
        }
    }

    #[test]
    fn only_good_news_is_normal_by_default() {
        for r in EventReason::ALL {
            let expected = if matches!(
                r,
                EventReason::ConnectionRecovery
                    | EventReason::RecoverySucceeded
                    | EventReason::MountRecovered
                    | EventReason::MountStormCleared
                    | EventReason::IoResumed
            ) {
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
        let ev = VolumeEvent::new("pvc-1", EventReason::MountFailure, "Stage", "x")
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
            EventReason::MountStorm,
            "Monitor",
            "n",
        ));
        let boxed: Box<dyn EventSink> = Box::new(sink.clone());
        boxed.post(VolumeEvent::new(
            "pvc-1",
            EventReason::MountStorm,
            "Monitor",
            "n",
        ));
    }
}
