//! Tunables, with the seed constants of the Go driver as defaults.

use std::time::Duration;

/// How long a removed namespace may stay away before the volume is `DeviceGone`: one
/// reconnect (the default `reconnect_delay` is 5 s) plus the time to connect again.
pub const DEFAULT_GONE_GRACE: Duration = Duration::from_secs(10);
/// Recovery attempts per fault (the Go driver's 3).
pub const DEFAULT_RECOVERY_ATTEMPTS: u32 = 3;
/// Delay before each attempt (the Go driver's 1 s, 2 s, 4 s).
pub const DEFAULT_RECOVERY_BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// Delay before each reconnect attempt of a volume whose controller is gone; the last repeats
/// for as long as the volume is staged.
pub const DEFAULT_RECONNECT_BACKOFF: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(30),
];
/// Requests in flight and none completed for this long: the device is stalled.
pub const DEFAULT_IO_STALL_AFTER: Duration = Duration::from_secs(30);
/// Transitions kept per volume.
pub const DEFAULT_HISTORY_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Hysteresis for namespace removal (see the crate docs).
    pub gone_grace: Duration,
    /// Attempts per recovery cycle (at least 1).
    pub recovery_attempts: u32,
    /// `recovery_backoff[n]` is the delay before attempt `n + 1`, counted from detection for
    /// the first attempt and from the previous failure for the others; the last entry repeats.
    /// The first delay is also a debounce: kernel races (a mount attach reported after a
    /// resync, a namespace re-added) settle before anything is remounted.
    pub recovery_backoff: Vec<Duration>,
    /// `reconnect_backoff[n]` is the delay before reconnect attempt `n + 1`; the last entry
    /// repeats, with no end while the volume is staged.
    pub reconnect_backoff: Vec<Duration>,
    /// A device with requests in flight and no completion for this long is `IoStalled`.
    pub io_stall_after: Duration,
    /// Ask for the pods that still hold a dead filesystem to be deleted after a recovery.
    pub evict_pods_on_stale: bool,
    pub history_len: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            gone_grace: DEFAULT_GONE_GRACE,
            recovery_attempts: DEFAULT_RECOVERY_ATTEMPTS,
            recovery_backoff: DEFAULT_RECOVERY_BACKOFF.to_vec(),
            reconnect_backoff: DEFAULT_RECONNECT_BACKOFF.to_vec(),
            io_stall_after: DEFAULT_IO_STALL_AFTER,
            evict_pods_on_stale: false,
            history_len: DEFAULT_HISTORY_LEN,
        }
    }
}

impl MonitorConfig {
    /// Delay before `attempt` (1-based).
    pub fn backoff_before(&self, attempt: u32) -> Duration {
        let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.recovery_backoff
            .get(i)
            .or(self.recovery_backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    pub fn max_attempts(&self) -> u32 {
        self.recovery_attempts.max(1)
    }

    /// Delay before reconnect `attempt` (1-based).
    pub fn reconnect_backoff_before(&self, attempt: u32) -> Duration {
        let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.reconnect_backoff
            .get(i)
            .or(self.reconnect_backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// Delay before `attempt` of a cycle for `reason`.
    pub fn delay_before(&self, reason: &crate::action::RecoveryReason, attempt: u32) -> Duration {
        if reason.is_unbounded() {
            self.reconnect_backoff_before(attempt)
        } else {
            self.backoff_before(attempt)
        }
    }

    /// Attempts a cycle for `reason` may take (`u32::MAX`: no end).
    pub fn attempts_for(&self, reason: &crate::action::RecoveryReason) -> u32 {
        if reason.is_unbounded() {
            u32::MAX
        } else {
            self.max_attempts()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_is_one_two_four_seconds_and_the_last_repeats() {
        let c = MonitorConfig {
            recovery_attempts: 5,
            ..MonitorConfig::default()
        };
        let got: Vec<u64> = (1..=5).map(|a| c.backoff_before(a).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 4, 4]);
    }

    #[test]
    fn an_empty_backoff_means_no_delay_and_attempts_are_at_least_one() {
        let c = MonitorConfig {
            recovery_backoff: vec![],
            recovery_attempts: 0,
            ..MonitorConfig::default()
        };
        assert_eq!(c.backoff_before(1), Duration::ZERO);
        assert_eq!(c.max_attempts(), 1);
    }
}
