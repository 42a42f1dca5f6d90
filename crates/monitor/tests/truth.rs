//! The condition tells the truth at every instant, and the machine does what a real kernel
//! needs: abnormal from the first sign of a lost namespace, reconnects after the kernel gives
//! up, never mounts a foreign namespace, flags stalled I/O, keeps what a restart must not
//! forget, and owns its watches. Each step also checks the incremental state against a
//! recomputation from scratch (`H::ev`).

mod common;

use std::time::Duration;

use common::*;
use rds_monitor::*;
use rds_types::{DevNum, NamespaceIds};

fn removed(n: u32, seq: u64) -> MonitorEvent {
    MonitorEvent::NamespaceRemoved {
        nqn: nqn(n),
        nsid: 1,
        identity: ident(n, seq),
    }
}

fn ctrl_removed(n: u32) -> MonitorEvent {
    MonitorEvent::ControllerRemoved {
        nqn: nqn(n),
        controller: format!("nvme{n}"),
    }
}

/// The kernel deleting a controller after `ctrl_loss_tmo`: namespace, then controller.
fn controller_deleted(h: &mut H, n: u32) -> Vec<Action> {
    let mut out = h.ev(removed(n, 7));
    out.extend(h.ev(ctrl_removed(n)));
    out
}

#[test]
fn a_removed_namespace_is_abnormal_at_once_and_through_the_whole_grace() {
    let mut h = H::with_volume(1);
    h.ev(removed(1, 7));
    let t0 = h.now;
    assert_eq!(h.kind(1), ConditionKind::DeviceRemoved);
    assert!(!h.kind(1).io_safe(), "statvfs must not be tried");
    for t in [1_000, 5_000, 9_999] {
        h.now = t0.saturating_add(ms(t));
        h.ev(MonitorEvent::Tick);
        assert_eq!(h.kind(1), ConditionKind::DeviceRemoved, "at +{t} ms");
    }
    h.now = t0.saturating_add(DEFAULT_GONE_GRACE);
    h.ev(MonitorEvent::Tick);
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
}

#[test]
fn a_controller_the_kernel_deleted_is_reconnected_with_backoff_and_no_end() {
    let mut h = H::with_volume(1);
    controller_deleted(&mut h, 1);
    let mut asked = Vec::new();
    let mut attempt = 0;
    // Twelve failed reconnects: the target stays down far longer than the remount budget.
    for _ in 0..12 {
        let out = h.tick_after(Duration::from_secs(31));
        let r = recovers(&out);
        assert_eq!(r.len(), 1, "one reconnect per backoff period, got {out:?}");
        assert_eq!(r[0].1, RecoveryReason::Reconnect);
        attempt = r[0].2;
        asked.push(attempt);
        h.ev(MonitorEvent::RecoveryStarted {
            volume_id: vid(1),
            attempt,
        });
        let out = h.ev(MonitorEvent::RecoveryFailed {
            volume_id: vid(1),
            attempt,
            error: "connection refused".into(),
            final_: false,
        });
        assert!(
            posted(&out)
                .iter()
                .any(|(r, _, _)| *r == EventReason::RecoveryFailed),
            "every failure to heal posts an Event"
        );
        assert!(h.kind(1).is_abnormal());
    }
    assert_eq!(asked, (1..=12).collect::<Vec<_>>());
    assert!(
        attempt > DEFAULT_RECOVERY_ATTEMPTS,
        "reconnects are not bounded by the remount budget"
    );
    assert!(
        !h.message(1).contains("gave up"),
        "a reconnect never gives up: {}",
        h.message(1)
    );
}

#[test]
fn the_reconnect_backoff_grows_and_then_repeats() {
    let mut h = H::with_volume(1);
    controller_deleted(&mut h, 1);
    let c = MonitorConfig::default();
    let mut waits = Vec::new();
    let mut since = h.now;
    for attempt in 1..=8u32 {
        // Step from deadline to deadline (the gone-grace tick is one of them) to the reconnect.
        let r = loop {
            let due = h.m.next_deadline().expect("a reconnect is scheduled");
            h.now = due;
            let r = recovers(&h.ev(MonitorEvent::Tick));
            if !r.is_empty() {
                break r;
            }
        };
        assert_eq!(r.iter().map(|x| x.2).collect::<Vec<_>>(), vec![attempt]);
        waits.push(h.now.saturating_since(since));
        h.ev(MonitorEvent::RecoveryStarted {
            volume_id: vid(1),
            attempt,
        });
        h.ev(MonitorEvent::RecoveryFailed {
            volume_id: vid(1),
            attempt,
            error: "refused".into(),
            final_: false,
        });
        since = h.now;
    }
    let expected: Vec<Duration> = (1..=8).map(|a| c.reconnect_backoff_before(a)).collect();
    assert_eq!(waits, expected);
    assert_eq!(
        expected.last(),
        DEFAULT_RECONNECT_BACKOFF.last(),
        "the last delay repeats"
    );
}

#[test]
fn no_reconnect_while_the_kernel_itself_is_reconnecting() {
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    h.ev(removed(1, 7));
    let out = h.tick_after(Duration::from_secs(60));
    assert!(
        recovers(&out).is_empty(),
        "a connecting controller (ctrl_loss_tmo -1) comes back by itself: {out:?}"
    );
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
}

#[test]
fn a_namespace_removed_while_its_controller_stays_live_is_rescanned_after_the_grace() {
    // Measured on 6.12: after a reconnect the kernel drops a namespace whose identifiers
    // changed and adds the target's current one only at its next scan; a disabled namespace
    // comes back with the target's AEN. Within the grace nothing is done; after it the
    // plugin asks for a scan (a "reconnect" of a connected controller), with backoff.
    let mut h = H::with_volume(1);
    h.ev(removed(1, 7));
    let out = h.tick_after(Duration::from_secs(1));
    assert!(recovers(&out).is_empty(), "within the grace: {out:?}");
    h.tick_after(DEFAULT_GONE_GRACE);
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
    assert!(
        h.message(1).contains("Reconnect attempt 1 pending"),
        "{}",
        h.message(1)
    );
    let out = h.tick_after(Duration::from_secs(1));
    let r = recovers(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].1, RecoveryReason::Reconnect);
}

#[test]
fn a_controller_being_deleted_is_abnormal_even_while_its_namespace_is_still_there() {
    // ctrl_loss_tmo ran out: the kernel sets `deleting (no IO)` before it removes the
    // namespace; nothing carries the I/O from that moment.
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    assert_eq!(h.kind(1), ConditionKind::ControllerReconnecting);
    h.ev(ctrl(1, "nvme1", ControllerState::DeletingNoIo));
    assert_eq!(h.kind(1), ConditionKind::DeviceRemoved, "{}", h.message(1));
    assert!(h.message(1).contains("deleting"), "{}", h.message(1));
    h.ev(removed(1, 7));
    h.ev(ctrl_removed(1));
    assert!(h.kind(1).is_abnormal());
}

#[test]
fn after_a_reconnect_the_same_namespace_is_healed_and_the_outage_reported_with_its_duration() {
    let mut h = H::with_volume(1);
    let lost = controller_deleted(&mut h, 1);
    assert_eq!(
        posted(&lost)
            .iter()
            .filter(|(r, _, _)| *r == EventReason::ConnectionFailure)
            .count(),
        1,
        "one Event when the connection is lost: {lost:?}"
    );
    let out = h.tick_after(Duration::from_secs(2));
    let (_, reason, attempt) = recovers(&out).pop().expect("reconnect asked");
    assert_eq!(reason, RecoveryReason::Reconnect);
    h.ev(MonitorEvent::RecoveryStarted {
        volume_id: vid(1),
        attempt,
    });
    // The executor connected: the same namespace comes back as a new incarnation.
    let back = h.after(ms(800), MonitorEvent::NamespaceAdded(ns(1, 1, 9)));
    h.ev(ctrl(1, "nvme1", ControllerState::Live));
    assert!(
        posted(&back)
            .iter()
            .any(|(r, _, m)| *r == EventReason::ConnectionRecovery && m.contains("back after")),
        "one Event when it is restored, with the duration: {back:?}"
    );
    h.ev(MonitorEvent::MountAttached(mount(
        555,
        DevNum::new(259, 1),
        staging(1),
    )));
    let out = h.ev(MonitorEvent::RecoverySucceeded {
        volume_id: vid(1),
        report: RecoveryReport {
            new_device: ident(1, 9),
            new_mount: Some(MountKey {
                id: 555,
                dev: DevNum::new(259, 1),
            }),
            republished: vec![],
            stale_targets: vec![],
        },
    });
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(posted(&out)
        .iter()
        .any(|(r, t, _)| *r == EventReason::RecoverySucceeded && *t == EventType::Normal));
}

#[test]
fn another_namespace_behind_the_nqn_is_never_recovered_onto() {
    let mut h = H::with_volume(1);
    controller_deleted(&mut h, 1);
    let mut foreign = ns(1, 1, 9);
    foreign.ids = NamespaceIds::new(
        Some("11111111-2222-4333-8444-555555555555".into()),
        None,
        None,
    );
    let out = h.after(
        Duration::from_secs(3),
        MonitorEvent::NamespaceAdded(foreign),
    );
    assert_eq!(h.kind(1), ConditionKind::NamespaceMismatch);
    assert!(
        posted(&out)
            .iter()
            .any(|(r, _, _)| *r == EventReason::NamespaceMismatch),
        "{out:?}"
    );
    let out = h.tick_after(Duration::from_secs(60));
    assert!(
        recovers(&out).is_empty(),
        "a foreign namespace is never mounted as this volume: {out:?}"
    );
    assert!(h
        .message(1)
        .contains("11111111-2222-4333-8444-555555555555"));
}

#[test]
fn identifiers_unknown_on_either_side_do_not_make_a_mismatch() {
    let mut h = H::with_volume(1);
    let mut bare = ns(1, 1, 9);
    bare.ids = NamespaceIds::default();
    h.ev(MonitorEvent::NamespaceAdded(bare));
    assert_eq!(h.kind(1), ConditionKind::DeviceReplaced);
}

fn io(n: u32, inflight: u64, completed: u64) -> MonitorEvent {
    MonitorEvent::IoProgress {
        dev: DevNum::new(259, n),
        inflight,
        completed,
    }
}

#[test]
fn requests_in_flight_without_completions_for_the_stall_period_are_io_stalled() {
    let mut h = H::with_volume(1);
    h.ev(io(1, 0, 100));
    h.after(Duration::from_secs(5), io(1, 4, 100));
    h.after(Duration::from_secs(20), io(1, 4, 100));
    assert_eq!(h.kind(1), ConditionKind::Healthy, "25 s: not yet");
    let out = h.tick_after(Duration::from_secs(5));
    assert_eq!(
        h.kind(1),
        ConditionKind::IoStalled,
        "30 s after the last progress"
    );
    assert!(posted(&out)
        .iter()
        .any(|(r, _, _)| *r == EventReason::IoStalled));
    let out = h.after(Duration::from_secs(5), io(1, 2, 101));
    assert_eq!(h.kind(1), ConditionKind::Healthy, "completions resumed");
    assert!(posted(&out)
        .iter()
        .any(|(r, t, _)| *r == EventReason::IoResumed && *t == EventType::Normal));
}

#[test]
fn a_busy_device_that_keeps_completing_is_never_stalled() {
    let mut h = H::with_volume(1);
    for i in 0..20 {
        h.after(Duration::from_secs(5), io(1, 8, 1000 + i));
        assert_eq!(h.kind(1), ConditionKind::Healthy);
    }
}

#[test]
fn a_readopted_filesystem_volume_without_its_staging_mount_is_mount_missing_not_block() {
    let mut h = H::new();
    let mut ev = staged(1, 7, true);
    if let MonitorEvent::VolumeStaged { mount, .. } = &mut ev {
        *mount = None;
    }
    h.ev(ev);
    h.ev(MonitorEvent::MountResync(vec![mount(
        1,
        DevNum::new(8, 1),
        "/".into(),
    )]));
    h.ev(MonitorEvent::DeviceResync {
        namespaces: vec![ns(1, 1, 7)],
        controllers: vec![ControllerFacts {
            nqn: nqn(1),
            controller: "nvme1".into(),
            state: ControllerState::Live,
        }],
    });
    assert_eq!(h.kind(1), ConditionKind::MountMissing, "{}", h.message(1));
    let out = h.tick_after(Duration::from_secs(2));
    assert_eq!(
        recovers(&out).pop().map(|r| r.1),
        Some(RecoveryReason::MountMissing),
        "and it is remounted"
    );
}

#[test]
fn a_stale_mark_persisted_before_a_restart_is_kept() {
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountAttached(bind_mount(1, 1)));
    let mut ev = published(1, 1);
    if let MonitorEvent::VolumePublished { stale, adopted, .. } = &mut ev {
        *adopted = true;
        *stale = Some(StaleMark {
            kind: ConditionKind::DeviceReplaced,
            old_device: ident(1, 5),
            new_device: ident(1, 7),
        });
    }
    h.ev(ev);
    assert_eq!(
        h.kind(1),
        ConditionKind::Healthy,
        "the volume itself is healed"
    );
    assert_eq!(
        h.publish_kind(1, 1),
        Some(ConditionKind::DeviceReplaced),
        "the pod still holds the dead filesystem"
    );
}

fn watch_actions(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::TrackMount { id } => Some(format!("track {id}")),
            Action::UntrackMount { id } => Some(format!("untrack {id}")),
            Action::WatchFilesystem { mount, .. } => Some(format!("watch fs {}", mount.id)),
            Action::UnwatchFilesystem { dev, .. } => Some(format!("unwatch fs {dev}")),
            Action::WatchIo { dev } => Some(format!("watch io {dev}")),
            Action::UnwatchIo { dev } => Some(format!("unwatch io {dev}")),
            _ => None,
        })
        .collect()
}

#[test]
fn the_machine_asks_for_every_watch_a_volume_needs_and_ends_them_on_unstage() {
    let mut h = H::new();
    h.ev(MonitorEvent::NamespaceAdded(ns(1, 1, 7)));
    h.ev(MonitorEvent::MountAttached(staging_mount(1)));
    let out = h.ev(staged(1, 7, false));
    assert_eq!(
        watch_actions(&out),
        vec!["track 101", "watch fs 101", "watch io 259:1"]
    );
    let out = h.ev(MonitorEvent::VolumeUnstaged { volume_id: vid(1) });
    assert_eq!(
        watch_actions(&out),
        vec!["untrack 101", "unwatch fs 259:1", "unwatch io 259:1"]
    );
}

#[test]
fn a_healed_filesystem_is_watched_again_after_the_old_watch_ends() {
    let mut h = H::with_volume(1);
    h.replace_device(1, 4, 9);
    let out = h.tick_after(Duration::from_secs(2));
    let (_, _, attempt) = recovers(&out).pop().expect("recovery asked");
    h.ev(MonitorEvent::RecoveryStarted {
        volume_id: vid(1),
        attempt,
    });
    h.ev(MonitorEvent::MountAttached(mount(
        556,
        DevNum::new(259, 4),
        staging(1),
    )));
    let out = h.ev(MonitorEvent::RecoverySucceeded {
        volume_id: vid(1),
        report: RecoveryReport {
            new_device: ident(4, 9),
            new_mount: Some(MountKey {
                id: 556,
                dev: DevNum::new(259, 4),
            }),
            republished: vec![],
            stale_targets: vec![],
        },
    });
    assert_eq!(
        watch_actions(&out),
        vec![
            "untrack 101",
            "track 556",
            "unwatch fs 259:1",
            "watch fs 556",
            "unwatch io 259:1",
            "watch io 259:4"
        ],
        "the old filesystem watch ends before the new one starts (ext4 keeps its fsid)"
    );
    h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 4),
        errno: 5,
        count: 1,
    });
    assert_eq!(
        h.kind(1),
        ConditionKind::FilesystemFailed,
        "a later failure of the healed device is flagged like the first"
    );
}

#[test]
fn a_failed_connect_at_stage_posts_the_nvme_error_on_the_pvc() {
    let mut h = H::new();
    let out = h.ev(MonitorEvent::ConnectFailed {
        volume_id: vid(5),
        nqn: nqn(5),
        error: "connect to 10.0.0.5:4420 refused: Connection refused (os error 111)".into(),
    });
    let p = posted(&out);
    assert!(
        p.iter()
            .any(|(r, t, m)| *r == EventReason::ConnectionFailure
                && *t == EventType::Warning
                && m.contains("Connection refused")),
        "{p:?}"
    );
}

/// Every condition message starts with one sentence of under 120 characters that says what is
/// wrong (and what to do), and does not repeat itself.
#[test]
fn every_condition_headline_is_short_and_says_what_to_do() {
    let mut seen = std::collections::BTreeMap::new();
    let mut check = |h: &H, n: u32| {
        let c = h.m.condition(&vid(n)).expect("tracked");
        let head = headline(&c.message);
        assert!(
            head.chars().count() < 120,
            "{}: headline of {} chars: {head}",
            c.kind,
            head.chars().count()
        );
        let sentences: Vec<&str> = c.message.split(". ").collect();
        let mut unique = sentences.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            sentences.len(),
            "repeats itself: {}",
            c.message
        );
        seen.insert(c.kind, head.to_owned());
    };
    let mut h = H::with_volume(1);
    check(&h, 1);
    h.ev(io(1, 3, 5));
    h.tick_after(Duration::from_secs(31));
    check(&h, 1);
    let mut h = H::with_volume(1);
    h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    check(&h, 1);
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountDetached {
        id: staging_mount_id(1),
    });
    check(&h, 1);
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::FsError {
        dev: DevNum::new(259, 1),
        errno: 5,
        count: 1,
    });
    check(&h, 1);
    let mut h = H::with_volume(1);
    h.ev(removed(1, 7));
    check(&h, 1);
    h.tick_after(DEFAULT_GONE_GRACE);
    check(&h, 1);
    let mut h = H::with_volume(1);
    h.replace_device(1, 4, 9);
    check(&h, 1);
    let out = h.tick_after(Duration::from_secs(2));
    let (_, _, attempt) = recovers(&out).pop().expect("recovery");
    h.ev(MonitorEvent::RecoveryStarted {
        volume_id: vid(1),
        attempt,
    });
    check(&h, 1);
    let mut h = H::with_volume(1);
    let mut foreign = ns(1, 1, 9);
    foreign.ids = NamespaceIds::new(
        Some("11111111-2222-4333-8444-555555555555".into()),
        None,
        None,
    );
    h.ev(MonitorEvent::NamespaceAdded(foreign));
    check(&h, 1);
    let mut h = H::with_volume(1);
    h.ev(MonitorEvent::MountStorm {
        key: StormKey::Device(DevNum::new(259, 1)),
        count: 150,
        message: "150 mounts of device 259:1".into(),
    });
    check(&h, 1);
    let kinds: Vec<ConditionKind> = seen.keys().copied().collect();
    assert_eq!(
        kinds,
        ConditionKind::ALL.to_vec(),
        "every kind was checked: {seen:#?}"
    );
}

#[test]
fn one_lost_path_of_two_keeps_the_volume_healthy_and_is_reported() {
    let mut h = H::with_volume(1);
    h.add_publish(1, 1);
    h.ev(ctrl(1, "nvme5", ControllerState::Live));
    let out = h.ev(ctrl(1, "nvme5", ControllerState::Connecting));
    assert_eq!(h.kind(1), ConditionKind::Healthy, "I/O flows through nvme1");
    assert!(h.message(1).contains("1 of 2 paths"), "{}", h.message(1));
    assert!(
        h.publish_message(1, 1).contains("1 of 2 paths"),
        "the pod's answer says it too: {}",
        h.publish_message(1, 1)
    );
    assert!(
        posted(&out)
            .iter()
            .any(|(r, _, m)| *r == EventReason::ConnectionFailure && m.contains("nvme5")),
        "{out:?}"
    );
    let out = h.ev(ctrl(1, "nvme1", ControllerState::Connecting));
    assert_eq!(
        h.kind(1),
        ConditionKind::ControllerReconnecting,
        "both lost"
    );
    assert!(
        !posted(&out)
            .iter()
            .any(|(r, _, m)| *r == EventReason::ConnectionRecovery && m.contains("path")),
        "losing the last path is no path coming back: {out:?}"
    );
    h.ev(ctrl(1, "nvme1", ControllerState::Live));
    let out = h.ev(ctrl(1, "nvme5", ControllerState::Live));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert!(
        posted(&out)
            .iter()
            .any(|(r, _, m)| *r == EventReason::ConnectionRecovery && m.contains("nvme5")),
        "{out:?}"
    );
}
