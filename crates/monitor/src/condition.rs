//! What the monitor concludes about a staged volume or one of its publishes.

use crate::event::EventKind;
use crate::time::Timestamp;

pub use rds_types::{ConditionKind, Message};

/// The event that triggered a transition, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub event: EventKind,
    /// The event with its kernel identities (`mount 42 detached`), rendered when read.
    pub detail: Message,
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
    /// cannot fix. This is what `NodeGetVolumeStats` returns. Rendered when first read.
    pub message: Message,
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
    pub message: Message,
    pub cause: Cause,
    /// How long the previous kind lasted.
    pub after: std::time::Duration,
}
