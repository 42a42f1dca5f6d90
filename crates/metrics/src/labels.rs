//! Closed sets of label values. Each is an enum so that callers cannot invent a new series by
//! typo, and so that [`crate::Metrics`] can pre-create one handle per value (a plain atomic
//! add on the hot path, no map lookup).

/// How a volume recovery ended, or that one started: the shared vocabulary's.
pub use rds_types::RecoveryResult;

/// The series slot of a result.
pub(crate) const fn recovery_index(r: RecoveryResult) -> usize {
    r as usize
}

/// Which watcher rescanned (`rds_csi_resyncs_total{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResyncSource {
    /// Block devices (sysfs scan after a uevent socket overflow).
    Devices,
    /// The mount table (mountinfo re-read after a fanotify or POLLPRI overflow).
    Mounts,
}

impl ResyncSource {
    pub const ALL: [ResyncSource; 2] = [Self::Devices, Self::Mounts];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Devices => "devices",
            Self::Mounts => "mounts",
        }
    }
}

/// Why a watcher rescanned (`rds_csi_resyncs_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResyncReason {
    /// The event queue overflowed (`FAN_Q_OVERFLOW`, a full channel).
    Overflow,
    /// The netlink socket reported `ENOBUFS`: uevents were lost in the kernel.
    Enobufs,
    /// The initial scan after subscribing.
    Startup,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 3] = [Self::Overflow, Self::Enobufs, Self::Startup];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::Enobufs => "enobufs",
            Self::Startup => "startup",
        }
    }
}

/// How an NVMe/TCP connect ended (`rds_csi_nvme_connects_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectResult {
    Succeeded,
    Failed,
    /// The connect (or the namespace's block device showing up) missed its deadline.
    TimedOut,
}

impl ConnectResult {
    pub const ALL: [ConnectResult; 3] = [Self::Succeeded, Self::Failed, Self::TimedOut];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// The canonical name of a gRPC status code (as `tonic::Code as i32` gives it), spelled as
/// grpc-go's `codes.Code.String()` does, which is what dashboards built for
/// go-grpc-prometheus expect. Codes outside 0..=16 are `Unknown`, as the gRPC spec says.
pub const fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_grpc_go_names_and_out_of_range_is_unknown() {
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(5), "NotFound");
        assert_eq!(grpc_code_name(16), "Unauthenticated");
        assert_eq!(grpc_code_name(17), "Unknown", "17 is not a gRPC code");
        assert_eq!(grpc_code_name(-1), "Unknown", "negative is not a gRPC code");
    }

    #[test]
    fn indices_match_the_all_arrays() {
        for (i, r) in RecoveryResult::ALL.iter().enumerate() {
            assert_eq!(recovery_index(*r), i, "{r:?} index");
        }
        for (i, r) in ConnectResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} index");
        }
    }
}
