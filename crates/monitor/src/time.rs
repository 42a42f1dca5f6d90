//! Monotonic time as a plain value: the machine never reads a clock, the caller passes `now`.

use std::fmt;
use std::time::Duration;

/// Nanoseconds on a monotonic clock (`CLOCK_MONOTONIC`, or `CLOCK_BOOTTIME`; the origin does not
/// matter, only differences do). The integration layer converts its `Instant`s into this; kernel
/// timestamps in the same clock can be passed as an event's `observed_at` to measure detection
/// latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// A timestamp `d` after the clock's origin.
    pub fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time rather than wrapping.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(Timestamp::from_duration(d).0))
    }

    /// How long after `earlier` this is; zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = Duration::from_nanos(self.0);
        write!(f, "t+{}.{:03}s", d.as_secs(), d.subsec_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_saturate_instead_of_wrapping() {
        let end = Timestamp(u64::MAX - 1);
        assert_eq!(
            end.saturating_add(Duration::from_secs(1)),
            Timestamp(u64::MAX)
        );
        assert_eq!(Timestamp(5).saturating_since(Timestamp(9)), Duration::ZERO);
        assert_eq!(
            Timestamp::from_duration(Duration::from_millis(1500)).to_string(),
            "t+1.500s"
        );
    }
}
