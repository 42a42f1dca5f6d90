//! Rate-limited logging: when the API server is down, every event fails; one line per event would
//! flood the node's logs exactly when someone is trying to read them.

use std::time::{Duration, Instant};

/// Allows one log line per `interval` and counts what it held back, so the next line can say how
/// many were suppressed. Time is passed in (no clock inside), which keeps it testable.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing one line per `interval`; the first one is always allowed.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were suppressed since the last
    /// one; `None` when this one must be suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let due = match self.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.interval,
        };
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Lock-free limiter for counters bumped on hot paths: log on the 1st, 2nd, 4th, 8th, … occurrence.
pub fn is_log_worthy(count: u64) -> bool {
    count.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_passes_then_lines_within_the_interval_are_suppressed_and_counted() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(30));
        assert_eq!(l.allow(t0), Some(0), "the first line must be logged");
        assert_eq!(
            l.allow(t0 + Duration::from_secs(1)),
            None,
            "1 s later: suppressed"
        );
        assert_eq!(
            l.allow(t0 + Duration::from_secs(29)),
            None,
            "29 s later: suppressed"
        );
        assert_eq!(
            l.allow(t0 + Duration::from_secs(30)),
            Some(2),
            "after the interval a line is logged and reports the 2 suppressed ones"
        );
        assert_eq!(
            l.allow(t0 + Duration::from_secs(31)),
            None,
            "the window restarts"
        );
    }

    #[test]
    fn power_of_two_counts_are_log_worthy() {
        let worthy: Vec<u64> = (1..=20).filter(|&n| is_log_worthy(n)).collect();
        assert_eq!(worthy, [1, 2, 4, 8, 16], "log on powers of two only");
    }
}
