//! The recovery policy: when a Recover is asked for, retries with backoff, cancellation, and
//! honest outcomes for running pods.

mod common;

use std::time::Duration;

use common::*;
use rds_monitor::*;
use rds_types::DevNum;

fn fs_error(n: u32) -> MonitorEvent {
    MonitorEvent::FsError {
        dev: DevNum::new(259, n),
        errno: 5,
        count: 1,
    }
}

fn started(attempt: u32) -> MonitorEvent {
    MonitorEvent::RecoveryStarted {
        volume_id: vid(1),
        attempt,
    }
}

fn failed(attempt: u32, final_: bool) -> MonitorEvent {
    MonitorEvent::RecoveryFailed {
        volume_id: vid(1),
        attempt,
        error: "mount: EIO".into(),
        final_,
    }
}

/// What the executor reports: the pods of a volume that moved to another device incarnation
/// hold the old superblock (the machine marks those of them that are published).
fn succeeded(minor: u32, seq: u64, mount_id: u64) -> MonitorEvent {
    let moved = ident(minor, seq) != ident(1, 7);
    MonitorEvent::RecoverySucceeded {
        volume_id: vid(1),
        report: RecoveryReport {
            new_device: ident(minor, seq),
            new_mount: Some(MountKey {
                id: mount_id,
                dev: DevNum::new(259, minor),
            }),
            republished: vec![],
            stale_targets: if moved {
                vec![target(1, 1), target(1, 2)]
            } else {
                vec![]
            },
        },
    }
}

#[test]
fn a_replaced_device_asks_for_recovery_after_the_first_backoff_with_the_new_device() {
    let mut h = H::with_volume(1);
    let out = h.replace_device(1, 4, 9);
    assert!(
        recovers(&out).is_empty(),
        "attempt 1 waits for the debounce: {out:?}"
    );
    let due = ticks(&out);
    assert!(
        due.contains(&h.now.saturating_add(Duration::from_secs(1))),
        "a tick 1 s after detection is asked for: {due:?}"
    );
    let out = h.tick_after(Duration::from_secs(1));
    assert_eq!(
        recovers(&out),
        vec![(
            vid(1),
            RecoveryReason::DeviceReplaced {
                old: ident(1, 7),
                new: ident(4, 9)
            },
            1
        )]
    );
    assert!(out.iter().any(|a| matches!(a,
        Action::Recover { device: Some(d), .. } if *d == ident(4, 9))));
}

#[test]
fn a_failed_filesystem_asks_for_recovery() {
    let mut h = H::with_volume(1);
    h.ev(fs_error(1));
    let out = h.tick_after(Duration::from_secs(1));
    assert_eq!(
        recovers(&out),
        vec![(vid(1), RecoveryReason::FilesystemFailed, 1)]
    );
}

#[test]
fn a_missing_staging_mount_on_a_good_device_asks_for_recovery() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    let out = h.tick_after(Duration::from_secs(1));
    assert_eq!(
        recovers(&out),
        vec![(vid(1), RecoveryReason::MountMissing, 1)]
    );
}

#[test]
fn a_mount_reported_late_within_the_debounce_cancels_the_recovery() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountResync(vec![]));
    assert_eq!(h.kind(1), ConditionKind::MountMissing);
    h.after(ms(200), MonitorEvent::MountAttached(staging_mount(1)));
    let out = h.tick_after(Duration::from_secs(1));
    assert!(recovers(&out).is_empty(), "nothing to recover: {out:?}");
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

#[test]
fn no_recovery_is_asked_while_the_controller_reconnects() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    let out = h.tick_after(Duration::from_secs(5));
    assert!(recovers(&out).is_empty(), "{out:?}");
    let out = h.after(ms(10), ctrl(1, "nvme1", ControllerState::Live));
    assert_eq!(
        recovers(&out),
        vec![(vid(1), RecoveryReason::MountMissing, 1)],
        "the held attempt goes out as soon as a path is live"
    );
}

#[test]
fn no_recovery_is_asked_for_a_gone_device() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    let out = h.tick_after(DEFAULT_GONE_GRACE);
    assert!(recovers(&out).is_empty(), "{out:?}");
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
}

#[test]
fn no_recovery_is_asked_during_a_storm() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountStorm {
        key: StormKey::Device(DevNum::new(259, 1)),
        count: 1000,
        message: "x".into(),
    });
    h.ev(fs_error(1));
    let out = h.tick_after(Duration::from_secs(10));
    assert!(
        recovers(&out).is_empty(),
        "remounting feeds a storm: {out:?}"
    );
}

#[test]
fn recovery_started_shows_recovering_and_hides_its_own_unmount() {
    let mut h = H::with_volume(1);
    h.ev(fs_error(1));
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    assert_eq!(h.kind(1), ConditionKind::Recovering);
    let out = h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    assert_eq!(h.kind(1), ConditionKind::Recovering);
    assert!(
        recovers(&out).is_empty() && posted(&out).is_empty(),
        "{out:?}"
    );
}

#[test]
fn failed_attempts_retry_after_two_then_four_seconds_and_then_give_up() {
    let cfg = MonitorConfig {
        recovery_attempts: 3,
        ..MonitorConfig::default()
    };
    let mut h = H::with(cfg);
    h.add_volume(1);
    h.ev(fs_error(1));
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    let out = h.after(ms(50), failed(1, false));
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
    assert_eq!(
        ticks(&out),
        vec![h.now.saturating_add(Duration::from_secs(2))]
    );
    assert!(metrics(&out).contains(&MetricEvent::Recovery {
        result: RecoveryResult::Failed
    }));
    assert!(
        recovers(&h.tick_after(ms(1999))).is_empty(),
        "not before 2 s"
    );
    let out = h.tick_after(ms(1));
    assert_eq!(
        recovers(&out),
        vec![(vid(1), RecoveryReason::FilesystemFailed, 2)]
    );
    h.ev(started(2));
    let out = h.after(ms(50), failed(2, false));
    assert_eq!(
        ticks(&out),
        vec![h.now.saturating_add(Duration::from_secs(4))]
    );
    let out = h.tick_after(Duration::from_secs(4));
    assert_eq!(
        recovers(&out),
        vec![(vid(1), RecoveryReason::FilesystemFailed, 3)]
    );
    h.ev(started(3));
    let out = h.after(ms(50), failed(3, false));
    assert!(metrics(&out).contains(&MetricEvent::Recovery {
        result: RecoveryResult::Exhausted
    }));
    assert!(posted(&out)
        .iter()
        .any(|(r, t, m)| *r == EventReason::RecoveryFailed
            && *t == EventType::Warning
            && m.contains("3 attempt")));
    assert!(
        recovers(&h.tick_after(Duration::from_secs(60))).is_empty(),
        "no fourth attempt"
    );
    assert!(h.message(1).contains("gave up"), "{}", h.message(1));
}

#[test]
fn a_final_failure_stops_retrying_at_once() {
    let mut h = H::with_volume(1);
    h.ev(fs_error(1));
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    let out = h.ev(failed(1, true));
    assert!(metrics(&out).contains(&MetricEvent::Recovery {
        result: RecoveryResult::Exhausted
    }));
    assert!(recovers(&h.tick_after(Duration::from_secs(60))).is_empty());
}

#[test]
fn an_exhausted_volume_gets_a_new_cycle_when_its_device_is_replaced_again() {
    let mut h = H::with_volume(1);
    h.replace_device(1, 4, 9);
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    h.ev(failed(1, true));
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 5, 10)));
    let out = h.tick_after(Duration::from_secs(1));
    assert_eq!(
        recovers(&out),
        vec![(
            vid(1),
            RecoveryReason::DeviceReplaced {
                old: ident(1, 7),
                new: ident(5, 10)
            },
            1
        )]
    );
}

#[test]
fn unstaging_cancels_a_pending_recovery() {
    let mut h = H::with_volume(1);
    h.ev(fs_error(1));
    h.ev(MonitorEvent::VolumeUnstaged { volume_id: vid(1) });
    let out = h.tick_after(Duration::from_secs(1));
    assert!(recovers(&out).is_empty(), "{out:?}");
}

#[test]
fn feedback_for_an_attempt_never_asked_for_is_ignored() {
    let mut h = H::with_volume(1);
    let out = h.ev(started(1));
    assert!(metrics(&out).contains(&MetricEvent::Ignored {
        event: EventKind::RecoveryStarted,
        reason: IgnoreReason::UnexpectedFeedback
    }));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

/// Volume 1 with two running pods, device replaced, recovered onto 259:4.
fn recovered_with_two_pods(cfg: MonitorConfig) -> (H, Vec<Action>) {
    let mut h = H::with(cfg);
    h.add_volume(1);
    h.add_publish(1, 1);
    h.add_publish(1, 2);
    h.replace_device(1, 4, 9);
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    h.ev(MonitorEvent::MountAttached(mount(
        555,
        DevNum::new(259, 4),
        staging(1),
    )));
    let out = h.after(ms(80), succeeded(4, 9, 555));
    (h, out)
}

#[test]
fn a_successful_recovery_makes_the_volume_healthy_on_its_new_device() {
    let (h, out) = recovered_with_two_pods(MonitorConfig::default());
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(metrics(&out).contains(&MetricEvent::Recovery {
        result: RecoveryResult::Succeeded
    }));
}

#[test]
fn after_recovery_the_running_pods_stay_abnormal_with_an_honest_message() {
    let (h, out) = recovered_with_two_pods(MonitorConfig::default());
    for pod in [1, 2] {
        let c =
            h.m.publish_condition(&vid(1), &target(1, pod))
                .expect("publish tracked");
        assert_eq!(
            c.kind,
            ConditionKind::DeviceReplaced,
            "pod {pod} holds the dead fs"
        );
        assert!(
            c.message.contains("recreate the pod"),
            "publish message must say what heals it: {}",
            c.message
        );
    }
    let events = posted(&out);
    assert!(
        events
            .iter()
            .any(|(r, t, _)| *r == EventReason::RecoverySucceeded && *t == EventType::Normal),
        "the healing itself is good news: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(r, t, m)| *r == EventReason::PodRestartRequired
                && *t == EventType::Warning
                && m.contains("2 running pod(s)")
                && m.contains("no remount can heal")),
        "a separate warning names the stranded pods: {events:?}"
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::EvictPods { .. })),
        "no eviction unless configured"
    );
}

#[test]
fn a_stale_publish_heals_only_when_unpublished_and_republished() {
    let (mut h, _) = recovered_with_two_pods(MonitorConfig::default());
    h.ev(published(1, 1));
    assert_eq!(
        h.publish_kind(1, 1),
        Some(ConditionKind::DeviceReplaced),
        "an idempotent re-publish is the same pod"
    );
    h.ev(MonitorEvent::VolumeUnpublished {
        volume_id: vid(1),
        target: target(1, 1),
    });
    h.ev(MonitorEvent::MountAttached(mount(
        bind_id(1, 1),
        DevNum::new(259, 4),
        target(1, 1),
    )));
    h.ev(MonitorEvent::VolumePublished {
        volume_id: vid(1),
        target: target(1, 1),
        mount: Some(MountKey {
            id: bind_id(1, 1),
            dev: DevNum::new(259, 4),
        }),
        read_only: false,
        adopted: false,
        stale: None,
    });
    assert_eq!(h.publish_kind(1, 1), Some(ConditionKind::Healthy));
    assert_eq!(h.publish_kind(1, 2), Some(ConditionKind::DeviceReplaced));
}

#[test]
fn with_eviction_configured_a_recovery_asks_to_evict_the_stranded_pods() {
    let cfg = MonitorConfig {
        evict_pods_on_stale: true,
        ..MonitorConfig::default()
    };
    let (_, out) = recovered_with_two_pods(cfg);
    let evict: Vec<&Action> = out
        .iter()
        .filter(|a| matches!(a, Action::EvictPods { .. }))
        .collect();
    assert_eq!(
        evict,
        vec![&Action::EvictPods {
            volume_id: vid(1),
            targets: vec![target(1, 1), target(1, 2)]
        }]
    );
}

#[test]
fn recovering_a_vanished_staging_mount_strands_no_pod() {
    let mut h = H::with_volume(1);
    h.add_publish(1, 1);
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    h.ev(MonitorEvent::MountAttached(mount(
        556,
        DevNum::new(259, 1),
        staging(1),
    )));
    let out = h.ev(succeeded(1, 7, 556));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert_eq!(
        h.publish_kind(1, 1),
        Some(ConditionKind::Healthy),
        "the pod's bind still reaches the live superblock"
    );
    assert!(posted(&out).iter().all(|(_, t, _)| *t == EventType::Normal));
}

#[test]
fn a_new_staging_mount_reported_after_the_success_is_not_missing() {
    let mut h = H::with_volume(1);
    h.ev(fs_error(1));
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    h.ev(succeeded(1, 7, 557));
    assert_eq!(
        h.kind(1),
        ConditionKind::Healthy,
        "the attach event is late, not missing"
    );
    h.ev(MonitorEvent::MountAttached(mount(
        557,
        DevNum::new(259, 1),
        staging(1),
    )));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

fn dead_staging_mount(id: u64) -> MountFacts {
    let mut m = mount(id, DevNum::new(259, 1), staging(1));
    m.read_only = true;
    m.super_options = "ro,emergency_ro".into();
    m
}

#[test]
fn a_recovery_that_hands_back_the_same_dead_filesystem_is_not_retried_forever() {
    let mut h = H::with_volume(1);
    h.add_publish(1, 1);
    h.ev(MonitorEvent::MountChanged(dead_staging_mount(
        staging_mount_id(1),
    )));
    let mut asked = vec![];
    for round in 0..6u64 {
        let out = h.tick_after(Duration::from_secs(8));
        for (_, _, attempt) in recovers(&out) {
            asked.push(attempt);
            h.ev(started(attempt));
            // The kernel returns the superblock the pod still holds: still emergency_ro.
            let id = 600 + round;
            h.ev(MonitorEvent::MountAttached(dead_staging_mount(id)));
            h.ev(succeeded(1, 7, id));
        }
    }
    assert_eq!(asked, vec![1, 2, 3], "three attempts, then no remount loop");
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
    assert!(h.message(1).contains("gave up"), "{}", h.message(1));
}

#[test]
fn a_success_confirmed_by_a_healthy_mount_resets_the_attempt_budget() {
    let mut h = H::with_volume(1);
    h.ev(fs_error(1));
    h.tick_after(Duration::from_secs(1));
    h.ev(started(1));
    h.ev(MonitorEvent::MountAttached(mount(
        601,
        DevNum::new(259, 1),
        staging(1),
    )));
    h.ev(succeeded(1, 7, 601));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    h.after(Duration::from_secs(60), fs_error(1));
    let out = h.tick_after(Duration::from_secs(1));
    assert_eq!(
        recovers(&out),
        vec![(vid(1), RecoveryReason::FilesystemFailed, 1)],
        "a new fault after a confirmed recovery starts at attempt 1"
    );
}
