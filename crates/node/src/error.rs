//! The node service's one error enum, mapped to gRPC codes in exactly one place.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request itself is wrong; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// A volume, path or device that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The node is not in the state the request needs (e.g. publish before stage).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something incompatible is already there (another device at the target, another mode).
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on the same volume is in progress.
    #[error("an operation ({op}) is already in progress on volume {volume_id}")]
    Aborted { volume_id: String, op: &'static str },
    /// Another volume's operation holds the staging path or NQN this one claims.
    #[error("an operation ({op}) of another volume is in progress on {what}")]
    AbortedOn { what: String, op: &'static str },
    /// Something did not finish in time (the device did not appear, a syscall hung).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A transient condition worth retrying (device unreadable, target unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// Request outside what the volume can do (e.g. shrink).
    #[error("{0}")]
    OutOfRange(String),
    /// Anything unexpected, with its cause.
    #[error("{context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NodeError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Aborted { .. } | Self::AbortedOn { .. } => Code::Aborted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unavailable(_) => Code::Unavailable,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Internal { .. } => Code::Internal,
        }
    }
}

impl From<rds_mounts::ViewError> for NodeError {
    fn from(e: rds_mounts::ViewError) -> Self {
        match e {
            rds_mounts::ViewError::TimedOut { .. } => Self::DeadlineExceeded(e.to_string()),
            e => Self::internal("reading the mount table", e),
        }
    }
}

/// The longest status message sent: each input is already quoted to at most 256 bytes, and
/// this bounds the whole (a message travels in a header, and clients limit header size).
pub const STATUS_MESSAGE_MAX: usize = 2048;

fn cap_message(mut m: String) -> String {
    if m.len() > STATUS_MESSAGE_MAX {
        let mut end = STATUS_MESSAGE_MAX;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
        m.push_str("... (truncated)");
    }
    m
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        // Include the whole source chain: it is what an operator reads in kubelet's events.
        Status::new(e.code(), cap_message(rds_types::error_chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_csi_code() {
        let io = std::io::Error::other("boom");
        let cases = [
            (
                NodeError::invalid("volume_id", "must not be empty"),
                Code::InvalidArgument,
            ),
            (NodeError::NotFound("x".into()), Code::NotFound),
            (
                NodeError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (NodeError::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                NodeError::Aborted {
                    volume_id: "v".into(),
                    op: "stage",
                },
                Code::Aborted,
            ),
            (
                NodeError::DeadlineExceeded("x".into()),
                Code::DeadlineExceeded,
            ),
            (NodeError::Unavailable("x".into()), Code::Unavailable),
            (NodeError::OutOfRange("x".into()), Code::OutOfRange),
            (NodeError::internal("reading record", io), Code::Internal),
        ];
        for (e, code) in cases {
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{}", s.message());
        }
    }

    #[test]
    fn invalid_argument_message_names_the_field() {
        let s = Status::from(NodeError::invalid("volume_context.nqn", "is missing"));
        assert_eq!(s.message(), "volume_context.nqn: is missing");
    }
}
