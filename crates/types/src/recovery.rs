//! How a volume recovery went: the machine's metric observations and the metrics' label.

/// How a volume recovery ended, or that one started (`rds_csi_recoveries_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryResult {
    Started,
    Succeeded,
    /// One attempt failed; another is scheduled.
    Failed,
    /// The last attempt failed (or the executor said retrying cannot help).
    Exhausted,
}

impl RecoveryResult {
    pub const ALL: [RecoveryResult; 4] = [
        Self::Started,
        Self::Succeeded,
        Self::Failed,
        Self::Exhausted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Exhausted => "exhausted",
        }
    }
}
