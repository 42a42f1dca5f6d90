//! One test per condition transition, driven by synthetic events. Every step also checks the
//! incremental state against a recomputation from scratch (`H::ev`).

mod common;

use common::*;
use rds_monitor::*;
use rds_types::DevNum;

#[test]
fn a_volume_staged_on_its_present_device_and_mount_is_healthy() {
    let mut h = H::new();
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 7)));
    h.ev(MonitorEvent::MountAttached(staging_mount(1)));
    let out = h.ev(staged(1, 7, false));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(
        out.iter().any(|a| matches!(a,
            Action::ConditionChanged { old: None, new: Some(c), .. } if c.kind == ConditionKind::Healthy)),
        "staging must announce the new volume's condition, got {out:?}"
    );
}

#[test]
fn a_restage_of_the_same_record_changes_nothing() {
    let mut h = H::with_volume(1);
    let out = h.ev(staged(1, 7, false));
    assert!(
        out.is_empty(),
        "an idempotent stage must be silent, got {out:?}"
    );
}

#[test]
fn the_same_devnum_with_a_new_diskseq_is_device_replaced() {
    let mut h = H::with_volume(1);
    let out = h.replace_device(1, 1, 8);
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
    assert!(
        posted(&out)
            .iter()
            .any(|(r, t, _)| *r == EventReason::StaleMountDetected && *t == EventType::Warning),
        "a replaced device must post StaleMountDetected, got {out:?}"
    );
}

#[test]
fn another_devnum_for_the_nqn_is_device_replaced() {
    let mut h = H::with_volume(1);
    h.replace_device(1, 4, 9);
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
    assert!(
        h.message(1).contains("259:4"),
        "message names the new device: {}",
        h.message(1)
    );
}

#[test]
fn a_namespace_added_without_a_removal_event_still_replaces_the_device() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 8)));
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
}

#[test]
fn the_device_replaced_message_says_running_pods_cannot_be_healed_by_a_remount() {
    let mut h = H::with_volume(1);
    h.replace_device(1, 4, 9);
    let m = h.message(1);
    assert!(
        m.contains("running container") && m.contains("recreated"),
        "the message must be honest about running pods: {m}"
    );
}

#[test]
fn a_namespace_removed_and_readded_within_the_grace_never_reports_device_gone() {
    let mut h = H::with_volume(1);
    let mut seen = vec![];
    let out = h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    seen.push(h.kind(1));
    assert_eq!(
        ticks(&out),
        vec![h.now.saturating_add(DEFAULT_GONE_GRACE)],
        "removal must ask for a tick at the end of the grace"
    );
    h.after(ms(4000), MonitorEvent::NamespaceAdded(ns(1, 1, 8)));
    seen.push(h.kind(1));
    h.tick_after(ms(20_000));
    seen.push(h.kind(1));
    assert!(
        !seen.contains(&ConditionKind::DeviceGone),
        "a re-add within the grace must not flap into DeviceGone: {seen:?}"
    );
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
}

#[test]
fn a_namespace_removed_is_not_gone_before_the_grace_ends() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    h.tick_after(DEFAULT_GONE_GRACE - ms(1));
    assert_ne!(h.kind(1), ConditionKind::DeviceGone);
}

#[test]
fn a_namespace_not_back_by_the_grace_tick_is_device_gone() {
    let mut h = H::with_volume(1);
    let lost = h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    assert_eq!(h.kind(1), ConditionKind::DeviceRemoved);
    assert!(
        posted(&lost)
            .iter()
            .any(|(r, _, _)| *r == EventReason::ConnectionFailure),
        "the loss posts ConnectionFailure at once, got {lost:?}"
    );
    let out = h.tick_after(DEFAULT_GONE_GRACE);
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
    assert!(
        !posted(&out)
            .iter()
            .any(|(r, _, _)| *r == EventReason::ConnectionFailure),
        "one Event per outage, not one per kind it passes through, got {out:?}"
    );
}

#[test]
fn a_missed_tick_is_caught_up_by_the_next_event() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    h.after(
        DEFAULT_GONE_GRACE + ms(5),
        MonitorEvent::MountAttached(mount(9999, DevNum::new(8, 0), "/elsewhere".into())),
    );
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
}

#[test]
fn a_late_removal_of_an_older_incarnation_is_ignored() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 8)));
    let out = h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    assert!(metrics(&out).contains(&MetricEvent::Ignored {
        event: EventKind::NamespaceRemoved,
        reason: IgnoreReason::StaleRemoval
    }));
    h.tick_after(DEFAULT_GONE_GRACE * 2);
    assert_eq!(
        h.kind(1),
        ConditionKind::DeviceReplaced,
        "the newer incarnation is still there"
    );
}

#[test]
fn a_gone_device_that_returns_as_the_same_incarnation_is_healthy_again() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    h.tick_after(DEFAULT_GONE_GRACE);
    let out = h.after(ms(10), MonitorEvent::NamespaceAdded(ns(1, 1, 7)));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(posted(&out)
        .iter()
        .any(|(r, t, _)| *r == EventReason::ConnectionRecovery && *t == EventType::Normal));
}

#[test]
fn a_connecting_controller_without_a_live_path_is_controller_reconnecting() {
    let mut h = H::with_volume(1);
    let out = h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    assert_eq!(h.kind(1), ConditionKind::ControllerReconnecting);
    assert!(posted(&out)
        .iter()
        .any(|(r, _, _)| *r == EventReason::ConnectionFailure));
}

#[test]
fn a_resetting_controller_is_controller_reconnecting() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Resetting));
    assert_eq!(h.kind(1), ConditionKind::ControllerReconnecting);
}

#[test]
fn a_reconnecting_path_beside_a_live_one_is_healthy() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme9", ControllerState::Live));
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

#[test]
fn a_controller_back_live_posts_connection_recovery() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    let out = h.after(ms(500), ctrl(1, "nvme1", ControllerState::Live));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(posted(&out)
        .iter()
        .any(|(r, t, _)| *r == EventReason::ConnectionRecovery && *t == EventType::Normal));
}

#[test]
fn a_removed_reconnecting_controller_ends_controller_reconnecting() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    h.ev(MonitorEvent::ControllerRemoved {
        nqn: nqn(1),
        controller: "nvme1".into(),
    });
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

#[test]
fn the_staging_mount_detached_without_an_unstage_is_mount_missing() {
    let mut h = H::with_volume(1);
    let out = h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    assert_eq!(h.kind(1), ConditionKind::MountMissing);
    assert!(posted(&out)
        .iter()
        .any(|(r, _, _)| *r == EventReason::MountFailure));
}

#[test]
fn a_staging_mount_not_yet_reported_after_a_fresh_stage_is_not_missing() {
    let mut h = H::new();
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 7)));
    h.ev(staged(1, 7, false));
    assert_eq!(
        h.kind(1),
        ConditionKind::Healthy,
        "the attach event may simply be late"
    );
    h.ev(MonitorEvent::MountAttached(staging_mount(1)));
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    assert_eq!(h.kind(1), ConditionKind::MountMissing);
}

#[test]
fn a_mount_resync_without_the_staging_mount_is_mount_missing() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountResync(vec![mount(
        5,
        DevNum::new(8, 1),
        "/".into(),
    )]));
    assert_eq!(h.kind(1), ConditionKind::MountMissing);
}

#[test]
fn a_mount_with_a_reused_path_but_another_id_does_not_hide_a_missing_staging_mount() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    h.ev(MonitorEvent::MountAttached(mount(
        777,
        DevNum::new(259, 1),
        staging(1),
    )));
    assert_eq!(
        h.kind(1),
        ConditionKind::MountMissing,
        "identity is the mount id, not the path"
    );
}

#[test]
fn an_fs_error_on_the_device_is_filesystem_failed() {
    let mut h = H::with_volume(1);
    let out = h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 1),
        errno: 5,
        count: 1,
    });
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
    assert!(posted(&out)
        .iter()
        .any(|(r, _, _)| *r == EventReason::FilesystemFailed));
}

#[test]
fn an_fs_error_on_another_device_changes_nothing() {
    let mut h = H::with_volume(1);
    let out = h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 2),
        errno: 5,
        count: 1,
    });
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(out.is_empty(), "nothing to do, got {out:?}");
}

fn changed_super(opts: &str, ro: bool) -> MonitorEvent {
    let mut m = staging_mount(1);
    m.super_options = opts.into();
    m.read_only = ro;
    MonitorEvent::MountChanged(m)
}

#[test]
fn emergency_ro_in_the_super_options_is_filesystem_failed() {
    let mut h = H::with_volume(1);
    h.ev(changed_super("ro,emergency_ro,errors=remount-ro", false));
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
    assert!(h.message(1).contains("emergency_ro"), "{}", h.message(1));
}

#[test]
fn shutdown_in_the_super_options_is_filesystem_failed() {
    let mut h = H::with_volume(1);
    h.ev(changed_super("rw,shutdown", false));
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
}

#[test]
fn a_read_write_staging_mount_turned_read_only_is_filesystem_failed() {
    let mut h = H::with_volume(1);
    h.ev(changed_super("rw", true));
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
    assert!(h.message(1).contains("read-only"), "{}", h.message(1));
}

#[test]
fn an_option_that_merely_contains_ro_is_not_a_flip() {
    let mut h = H::with_volume(1);
    h.ev(changed_super("rw,errors=remount-ro,noroot", false));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

#[test]
fn a_read_only_volume_on_a_read_only_mount_is_healthy() {
    let mut h = H::new();
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 7)));
    let mut m = staging_mount(1);
    m.read_only = true;
    h.ev(MonitorEvent::MountAttached(m));
    let mut ev = staged(1, 7, false);
    if let MonitorEvent::VolumeStaged { read_only, .. } = &mut ev {
        *read_only = true;
    }
    h.ev(ev);
    assert_eq!(h.kind(1), ConditionKind::Healthy);
}

#[test]
fn a_storm_on_the_device_is_mount_storm_until_cleared() {
    let mut h = H::with_volume(1);
    let key = StormKey::Device(DevNum::new(259, 1));
    let out = h.ev(MonitorEvent::MountStorm {
        key: key.clone(),
        count: 4000,
        message: "4000 entries".into(),
    });
    assert_eq!(h.kind(1), ConditionKind::MountStorm);
    assert!(metrics(&out).contains(&MetricEvent::StormStarted {
        key: key.clone(),
        count: 4000
    }));
    let out = h.ev(MonitorEvent::MountStormCleared { key: key.clone() });
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(metrics(&out).contains(&MetricEvent::StormCleared { key }));
}

#[test]
fn a_storm_above_a_publish_target_is_mount_storm_for_that_volume_only() {
    let mut h = H::with_volume(1);
    h.add_volume(2);
    h.add_publish(1, 1);
    h.ev(MonitorEvent::MountStorm {
        key: StormKey::MountPoint("/var/lib/kubelet/pods/pod-1-1".into()),
        count: 150,
        message: "stacked".into(),
    });
    assert_eq!(h.kind(1), ConditionKind::MountStorm);
    assert_eq!(h.kind(2), ConditionKind::Healthy);
    assert_eq!(h.publish_kind(1, 1), Some(ConditionKind::MountStorm));
}

#[test]
fn filesystem_failed_beats_controller_reconnecting() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 1),
        errno: 5,
        count: 3,
    });
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed);
}

#[test]
fn the_highest_priority_condition_wins_when_all_hold() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    assert_eq!(
        h.kind(1),
        ConditionKind::MountMissing,
        "missing > reconnecting"
    );
    h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 1),
        errno: 5,
        count: 1,
    });
    assert_eq!(h.kind(1), ConditionKind::FilesystemFailed, "fs > missing");
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 3, 9)));
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced, "replaced > fs");
    h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(3, 9),
    });
    h.tick_after(DEFAULT_GONE_GRACE);
    assert_eq!(h.kind(1), ConditionKind::DeviceGone, "gone > the rest");
    h.ev(MonitorEvent::MountStorm {
        key: StormKey::Device(DevNum::new(259, 1)),
        count: 500,
        message: "x".into(),
    });
    assert_eq!(h.kind(1), ConditionKind::MountStorm, "storm > everything");
}

#[test]
fn priorities_are_a_total_order_matching_the_documentation() {
    let order: Vec<ConditionKind> = ConditionKind::ALL.to_vec();
    for w in order.windows(2) {
        assert!(w[0].priority() < w[1].priority(), "{:?} < {:?}", w[0], w[1]);
    }
    assert!(!ConditionKind::Healthy.is_abnormal());
    assert!(ConditionKind::ALL[1..].iter().all(|k| k.is_abnormal()));
}

#[test]
fn unstaging_drops_the_volume_and_announces_it() {
    let mut h = H::with_volume(1);
    let out = h.ev(MonitorEvent::VolumeUnstaged { volume_id: vid(1) });
    assert!(h.m.condition(&vid(1)).is_none());
    assert!(out.iter().any(|a| matches!(
        a,
        Action::ConditionChanged {
            new: None,
            old: Some(_),
            ..
        }
    )));
    let out = h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    assert!(
        out.is_empty(),
        "an unstaged volume's unmount is expected: {out:?}"
    );
}

#[test]
fn a_publish_bind_detached_is_mount_missing_for_that_publish_only() {
    let mut h = H::with_volume(1);
    h.add_publish(1, 1);
    h.add_publish(1, 2);
    let out = h.ev(MonitorEvent::MountDetached { id: bind_id(1, 1) });
    assert_eq!(h.publish_kind(1, 1), Some(ConditionKind::MountMissing));
    assert_eq!(h.publish_kind(1, 2), Some(ConditionKind::Healthy));
    assert_eq!(
        h.kind(1),
        ConditionKind::Healthy,
        "the volume itself is fine"
    );
    assert!(posted(&out)
        .iter()
        .any(|(r, _, m)| *r == EventReason::MountFailure && m.contains("pod-1-1")));
}

#[test]
fn unpublishing_drops_the_publish_condition() {
    let mut h = H::with_volume(1);
    h.add_publish(1, 1);
    h.ev(MonitorEvent::VolumeUnpublished {
        volume_id: vid(1),
        target: target(1, 1),
    });
    assert_eq!(h.publish_kind(1, 1), None);
    let out = h.ev(MonitorEvent::MountDetached { id: bind_id(1, 1) });
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_publish_inherits_the_volume_condition() {
    let mut h = H::with_volume(1);
    h.add_publish(1, 1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    assert_eq!(
        h.publish_kind(1, 1),
        Some(ConditionKind::ControllerReconnecting)
    );
}

#[test]
fn a_publish_for_an_unknown_volume_is_ignored_with_a_metric() {
    let mut h = H::new();
    let out = h.ev(published(3, 1));
    assert_eq!(
        metrics(&out),
        vec![MetricEvent::Ignored {
            event: EventKind::VolumePublished,
            reason: IgnoreReason::UnknownVolume
        }]
    );
}

#[test]
fn a_raw_block_volume_has_no_mount_checks_but_sees_device_replacement() {
    let mut h = H::new();
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 7)));
    h.ev(MonitorEvent::VolumeStaged {
        volume_id: vid(1),
        nqn: nqn(1),
        nsid: None,
        ids: Default::default(),
        staging_path: staging(1),
        mount: None,
        device: ident(1, 7),
        fs_type: None,
        read_only: false,
        adopted: false,
    });
    h.ev(MonitorEvent::MountResync(vec![]));
    h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 1),
        errno: 5,
        count: 1,
    });
    assert_eq!(
        h.kind(1),
        ConditionKind::Healthy,
        "no filesystem, no mount to miss"
    );
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 2, 8)));
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
}

#[test]
fn detection_latency_is_now_minus_the_kernel_timestamp() {
    let mut h = H::with_volume(1);
    let observed = h.now;
    h.now = h.now.saturating_add(ms(3));
    let out = h.m.on_event_observed(
        MonitorEvent::MountDetached {
            id: staging_mount_id(1),
        },
        Some(observed),
        h.now,
    );
    assert!(
        metrics(&out).contains(&MetricEvent::Detection {
            kind: ConditionKind::MountMissing,
            latency: Some(ms(3))
        }),
        "expected a 3 ms detection latency, got {out:?}"
    );
}

#[test]
fn transitions_are_recorded_with_their_cause_and_duration() {
    let mut h = H::with_volume(1);
    h.after(ms(100), ctrl(1, "nvme1", ControllerState::Connecting));
    h.after(ms(2500), ctrl(1, "nvme1", ControllerState::Live));
    let t: Vec<&Transition> = h.m.transitions(&vid(1)).collect();
    assert_eq!(t.len(), 3, "staged, reconnecting, healthy: {t:?}");
    assert_eq!(t[1].to, ConditionKind::ControllerReconnecting);
    assert_eq!(t[1].cause.event, EventKind::ControllerState);
    assert!(t[1].cause.detail.contains("nvme1"), "{}", t[1].cause.detail);
    assert_eq!(t[2].from, Some(ConditionKind::ControllerReconnecting));
    assert_eq!(t[2].after, ms(2500));
    let c = h.m.condition(&vid(1)).expect("tracked");
    assert_eq!(c.since, h.now);
}

#[test]
fn time_never_goes_backwards() {
    let mut h = H::with_volume(1);
    let before = h.m.now();
    h.m.on_event(MonitorEvent::Tick, Timestamp::ZERO);
    assert_eq!(h.m.now(), before);
}

#[test]
fn the_transition_history_is_bounded() {
    let mut h = H::with(MonitorConfig {
        history_len: 4,
        ..MonitorConfig::default()
    });
    h.add_volume(1);
    for _ in 0..10 {
        h.after(ms(10), ctrl(1, "nvme1", ControllerState::Connecting));
        h.after(ms(10), ctrl(1, "nvme1", ControllerState::Live));
    }
    let t: Vec<&Transition> = h.m.transitions(&vid(1)).collect();
    assert_eq!(t.len(), 4, "only the last 4 transitions are kept");
    assert_eq!(t[3].to, ConditionKind::Healthy, "the newest is last");
}

#[test]
fn an_unpublish_of_an_unknown_target_is_ignored_with_a_metric() {
    let mut h = H::with_volume(1);
    let out = h.ev(MonitorEvent::VolumeUnpublished {
        volume_id: vid(1),
        target: target(1, 9),
    });
    assert_eq!(
        metrics(&out),
        vec![MetricEvent::Ignored {
            event: EventKind::VolumeUnpublished,
            reason: IgnoreReason::UnknownVolume
        }]
    );
}

#[test]
fn a_namespace_readded_in_the_event_that_passes_the_deadline_does_not_flap_through_gone() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::NamespaceRemoved {
        nqn: nqn(1),
        nsid: 1,
        identity: ident(1, 7),
    });
    let out = h.after(
        DEFAULT_GONE_GRACE,
        MonitorEvent::NamespaceAdded(ns(1, 1, 8)),
    );
    assert!(
        !out.iter().any(|a| matches!(a,
            Action::ConditionChanged { new: Some(c), .. } if c.kind == ConditionKind::DeviceGone)),
        "the re-add wins over the deadline it races with: {out:?}"
    );
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
}
