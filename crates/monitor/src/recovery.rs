//! The recovery retry policy as a pure step function.
//!
//! A cycle starts when a recoverable fault appears, asks for attempt 1 after the first backoff
//! (a debounce), waits for the executor's feedback, retries after each failure with the next
//! backoff, and stops after `recovery_attempts` (or a final failure). A reconnect of a volume
//! whose controller is gone never stops while the volume is staged (its own, longer backoff). A different fault (another
//! reason, or the device replaced again) starts a new cycle; the fault clearing ends it. An
//! attempt in flight is never touched: the executor's answer ends it.
//!
//! A reported success is not trusted blindly: the cycle stays `Verifying` until the new
//! staging mount is seen healthy. If the same fault is back first, the success counts as a
//! failed attempt. This stops a remount loop where the "recovered" mount is the same dead
//! superblock (mounting a device whose superblock running pods still hold returns that
//! superblock, `emergency_ro` and all).

use crate::action::RecoveryReason;
use crate::config::MonitorConfig;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Attempt `attempt` is due at `not_before`, once the device is usable.
    Waiting { attempt: u32, not_before: Timestamp },
    /// `Action::Recover` was emitted; no feedback yet.
    Requested { attempt: u32 },
    /// The executor reported `RecoveryStarted`.
    Running { attempt: u32 },
    /// The executor reported success for `attempt`; waiting to see the new mount healthy.
    Verifying { attempt: u32 },
    /// No more attempts for this fault.
    Exhausted { attempts: u32, error: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecoveryCycle {
    pub reason: RecoveryReason,
    pub phase: Phase,
}

impl RecoveryCycle {
    pub fn in_flight(&self) -> bool {
        matches!(self.phase, Phase::Requested { .. } | Phase::Running { .. })
    }

    /// The attempt this cycle is at (the count so far when exhausted).
    pub fn attempt(&self) -> u32 {
        match self.phase {
            Phase::Waiting { attempt, .. }
            | Phase::Requested { attempt }
            | Phase::Running { attempt }
            | Phase::Verifying { attempt } => attempt,
            Phase::Exhausted { attempts, .. } => attempts,
        }
    }

    pub fn running_attempt(&self) -> Option<u32> {
        match self.phase {
            Phase::Running { attempt } => Some(attempt),
            _ => None,
        }
    }

    /// Attempt `attempt` (1-based) is due `backoff_before(attempt)` from `now`.
    pub fn waiting(
        reason: RecoveryReason,
        attempt: u32,
        now: Timestamp,
        cfg: &MonitorConfig,
    ) -> Self {
        let not_before = now.saturating_add(cfg.delay_before(&reason, attempt));
        Self {
            reason,
            phase: Phase::Waiting {
                attempt,
                not_before,
            },
        }
    }
}

/// What one step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub cycle: Option<RecoveryCycle>,
    /// Emit `Action::Recover` for this attempt.
    pub recover: Option<(RecoveryReason, u32)>,
    /// Ask for a tick then.
    pub timer: Option<Timestamp>,
    /// The cycle just ran out of attempts because the fault kept coming back after
    /// reported successes (a failure reported by the executor is handled by its event).
    pub gave_up: Option<u32>,
}

/// The message recorded when successes do not hold.
pub(crate) const RELAPSE: &str = "the fault came back after each reported recovery (a filesystem still held by running pods cannot be mounted afresh: the kernel hands back the same dead superblock until those pods are recreated)";

/// Advances the cycle given the current fault (`recoverable`), whether acting is possible
/// now (`gate_open`: the device is present and usable, no storm) and whether the staging
/// mount is confirmed present (`confirmed`, always true for raw block). Idempotent at a
/// fixpoint: stepping the result again with the same inputs changes nothing.
pub(crate) fn step(
    cycle: Option<&RecoveryCycle>,
    recoverable: Option<&RecoveryReason>,
    gate_open: bool,
    confirmed: bool,
    now: Timestamp,
    cfg: &MonitorConfig,
) -> Step {
    let mut timer = None;
    let mut gave_up = None;
    let mut next = match (cycle, recoverable) {
        (Some(c), _) if c.in_flight() => Some(c.clone()),
        (Some(c), r) if matches!(c.phase, Phase::Verifying { .. }) => {
            let Phase::Verifying { attempt } = c.phase else {
                unreachable!("matched above")
            };
            match r {
                None if confirmed => None,
                None => Some(c.clone()),
                Some(r) if *r == c.reason && attempt >= cfg.attempts_for(&c.reason) => {
                    gave_up = Some(attempt);
                    Some(RecoveryCycle {
                        reason: c.reason.clone(),
                        phase: Phase::Exhausted {
                            attempts: attempt,
                            error: RELAPSE.to_owned(),
                        },
                    })
                }
                Some(r) => {
                    let n = if *r == c.reason { attempt + 1 } else { 1 };
                    let next = RecoveryCycle::waiting(r.clone(), n, now, cfg);
                    if let Phase::Waiting { not_before, .. } = next.phase {
                        timer = (not_before > now).then_some(not_before);
                    }
                    Some(next)
                }
            }
        }
        (_, None) => None,
        (Some(c), Some(r)) if c.reason == *r => Some(c.clone()),
        (_, Some(r)) => {
            let c = RecoveryCycle::waiting(r.clone(), 1, now, cfg);
            if let Phase::Waiting { not_before, .. } = c.phase {
                if not_before > now {
                    timer = Some(not_before);
                }
            }
            Some(c)
        }
    };
    let mut recover = None;
    if let Some(c) = next.as_mut() {
        if let Phase::Waiting {
            attempt,
            not_before,
        } = c.phase
        {
            if gate_open && now >= not_before {
                c.phase = Phase::Requested { attempt };
                recover = Some((c.reason.clone(), attempt));
            }
        }
    }
    Step {
        cycle: next,
        recover,
        timer,
        gave_up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> MonitorConfig {
        MonitorConfig::default()
    }

    #[test]
    fn a_new_fault_waits_for_the_first_backoff_before_asking() {
        let s = step(
            None,
            Some(&RecoveryReason::MountMissing),
            true,
            true,
            Timestamp(0),
            &cfg(),
        );
        assert_eq!(s.recover, None, "attempt 1 must wait for the 1 s debounce");
        assert_eq!(
            s.timer,
            Some(Timestamp::from_duration(Duration::from_secs(1)))
        );
    }

    #[test]
    fn a_due_attempt_is_asked_for_once_and_then_is_in_flight() {
        let c = RecoveryCycle::waiting(RecoveryReason::MountMissing, 1, Timestamp(0), &cfg());
        let t = Timestamp::from_duration(Duration::from_secs(1));
        let s = step(
            Some(&c),
            Some(&RecoveryReason::MountMissing),
            true,
            true,
            t,
            &cfg(),
        );
        assert_eq!(s.recover, Some((RecoveryReason::MountMissing, 1)));
        let again = step(
            s.cycle.as_ref(),
            Some(&RecoveryReason::MountMissing),
            true,
            true,
            t,
            &cfg(),
        );
        assert_eq!(
            again.recover, None,
            "a requested attempt must not be asked for twice"
        );
        assert_eq!(again.cycle, s.cycle);
    }

    #[test]
    fn a_closed_gate_holds_a_due_attempt() {
        let c = RecoveryCycle::waiting(RecoveryReason::FilesystemFailed, 1, Timestamp(0), &cfg());
        let t = Timestamp::from_duration(Duration::from_secs(5));
        let s = step(
            Some(&c),
            Some(&RecoveryReason::FilesystemFailed),
            false,
            true,
            t,
            &cfg(),
        );
        assert_eq!(s.recover, None);
        assert_eq!(s.cycle, Some(c));
    }

    #[test]
    fn a_cleared_fault_ends_a_waiting_cycle_but_not_one_in_flight() {
        let w = RecoveryCycle::waiting(RecoveryReason::MountMissing, 1, Timestamp(0), &cfg());
        assert_eq!(
            step(Some(&w), None, true, true, Timestamp(0), &cfg()).cycle,
            None
        );
        let r = RecoveryCycle {
            reason: RecoveryReason::MountMissing,
            phase: Phase::Running { attempt: 1 },
        };
        assert_eq!(
            step(Some(&r), None, true, true, Timestamp(0), &cfg()).cycle,
            Some(r),
            "only the executor's answer ends an attempt in flight"
        );
    }

    #[test]
    fn another_fault_restarts_an_exhausted_cycle_at_attempt_one() {
        let e = RecoveryCycle {
            reason: RecoveryReason::MountMissing,
            phase: Phase::Exhausted {
                attempts: 3,
                error: "x".into(),
            },
        };
        let s = step(
            Some(&e),
            Some(&RecoveryReason::FilesystemFailed),
            true,
            true,
            Timestamp(0),
            &cfg(),
        );
        let c = s.cycle.expect("a new cycle");
        assert_eq!(c.reason, RecoveryReason::FilesystemFailed);
        assert!(matches!(c.phase, Phase::Waiting { attempt: 1, .. }));
        let same = step(
            Some(&e),
            Some(&RecoveryReason::MountMissing),
            true,
            true,
            Timestamp(0),
            &cfg(),
        );
        assert_eq!(same.cycle, Some(e), "the same fault stays exhausted");
    }

    fn verifying(attempt: u32) -> RecoveryCycle {
        RecoveryCycle {
            reason: RecoveryReason::FilesystemFailed,
            phase: Phase::Verifying { attempt },
        }
    }

    #[test]
    fn a_success_is_kept_under_watch_until_the_new_mount_is_seen() {
        let v = verifying(1);
        let s = step(Some(&v), None, true, false, Timestamp(0), &cfg());
        assert_eq!(s.cycle, Some(v.clone()), "not confirmed yet: keep watching");
        let s = step(Some(&v), None, true, true, Timestamp(0), &cfg());
        assert_eq!(s.cycle, None, "confirmed healthy: the cycle ends");
    }

    #[test]
    fn a_fault_back_after_a_success_counts_as_a_failed_attempt() {
        let r = RecoveryReason::FilesystemFailed;
        let s = step(
            Some(&verifying(1)),
            Some(&r),
            true,
            true,
            Timestamp(0),
            &cfg(),
        );
        let c = s.cycle.expect("cycle");
        assert!(
            matches!(c.phase, Phase::Waiting { attempt: 2, .. }),
            "attempt 2 next, got {c:?}"
        );
        let s = step(
            Some(&verifying(3)),
            Some(&r),
            true,
            true,
            Timestamp(0),
            &cfg(),
        );
        assert_eq!(s.gave_up, Some(3), "three relapses exhaust the cycle");
        assert!(matches!(
            s.cycle.map(|c| c.phase),
            Some(Phase::Exhausted { attempts: 3, .. })
        ));
    }
}
