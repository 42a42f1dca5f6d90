//! Re-adoption after a plugin restart: persisted records replayed as adopted stages plus a
//! mount and a device resync, in either order, decide each volume in one pass.

mod common;

use common::*;
use rds_monitor::*;
use rds_types::DevNum;

fn mounts_with_staging(n: u32) -> MonitorEvent {
    MonitorEvent::MountResync(vec![
        mount(1, DevNum::new(8, 1), "/".into()),
        staging_mount(n),
    ])
}

fn devices(list: Vec<NamespaceFacts>) -> MonitorEvent {
    MonitorEvent::DeviceResync {
        namespaces: list,
        controllers: vec![ControllerFacts {
            nqn: nqn(1),
            controller: "nvme1".into(),
            state: ControllerState::Live,
        }],
    }
}

/// Replays `events` in the given order and returns the volume's condition.
fn replay(events: Vec<MonitorEvent>) -> (H, ConditionKind) {
    let mut h = H::new();
    for e in events {
        h.ev(e);
    }
    let k = h.kind(1);
    (h, k)
}

#[test]
fn a_record_on_its_still_present_device_and_mount_is_healthy_in_any_order() {
    for order in [0, 1, 2] {
        let mut evs = vec![
            staged(1, 7, true),
            mounts_with_staging(1),
            devices(vec![ns(1, 1, 7)]),
        ];
        evs.rotate_left(order);
        let (h, k) = replay(evs);
        assert_eq!(k, ConditionKind::Healthy, "order {order}");
        assert!(
            h.m.next_deadline().is_none(),
            "nothing pending, order {order}"
        );
    }
}

#[test]
fn a_record_whose_nqn_now_resolves_elsewhere_is_device_replaced_in_any_order() {
    for order in [0, 1, 2] {
        let mut evs = vec![
            staged(1, 7, true),
            mounts_with_staging(1),
            devices(vec![ns(1, 4, 12)]),
        ];
        evs.rotate_left(order);
        let (_, k) = replay(evs);
        assert_eq!(
            k,
            ConditionKind::DeviceReplaced,
            "259:1 seq 7 -> 259:4, order {order}"
        );
    }
}

#[test]
fn a_record_whose_device_number_came_back_with_a_new_diskseq_is_device_replaced() {
    let (_, k) = replay(vec![
        devices(vec![ns(1, 1, 8)]),
        mounts_with_staging(1),
        staged(1, 7, true),
    ]);
    assert_eq!(k, ConditionKind::DeviceReplaced);
}

#[test]
fn a_staging_mount_absent_from_the_resync_is_mount_missing_in_any_order() {
    for order in [0, 1, 2] {
        let mut evs = vec![
            staged(1, 7, true),
            MonitorEvent::MountResync(vec![mount(1, DevNum::new(8, 1), "/".into())]),
            devices(vec![ns(1, 1, 7)]),
        ];
        evs.rotate_left(order);
        let (_, k) = replay(evs);
        assert_eq!(k, ConditionKind::MountMissing, "order {order}");
    }
}

#[test]
fn a_namespace_absent_from_the_resync_becomes_gone_after_the_grace_in_any_order() {
    for order in [0, 1, 2] {
        let mut evs = vec![staged(1, 7, true), mounts_with_staging(1), devices(vec![])];
        evs.rotate_left(order);
        let (mut h, k) = replay(evs);
        assert_ne!(
            k,
            ConditionKind::DeviceGone,
            "not before the grace, order {order}"
        );
        assert!(
            h.m.next_deadline().is_some(),
            "a tick is asked for, order {order}"
        );
        h.tick_after(DEFAULT_GONE_GRACE);
        assert_eq!(h.kind(1), ConditionKind::DeviceGone, "order {order}");
    }
}

#[test]
fn a_fresh_stage_before_any_device_report_is_not_gone() {
    let mut h = H::new();
    h.ev(devices(vec![]));
    h.ev(MonitorEvent::MountAttached(staging_mount(1)));
    h.ev(staged(1, 7, false));
    h.tick_after(DEFAULT_GONE_GRACE * 3);
    assert_eq!(
        h.kind(1),
        ConditionKind::Healthy,
        "the node service just resolved the device; the watcher is only late"
    );
}

#[test]
fn a_device_resync_that_lost_a_namespace_is_abnormal_at_once_and_gone_after_its_grace() {
    let mut h = H::with_volume(1);
    h.ev(devices(vec![]));
    assert_eq!(
        h.kind(1),
        ConditionKind::DeviceRemoved,
        "I/O through the mount fails from the first instant"
    );
    h.tick_after(DEFAULT_GONE_GRACE);
    assert_eq!(h.kind(1), ConditionKind::DeviceGone);
}

#[test]
fn re_adopting_many_volumes_decides_each_in_one_pass() {
    let mut h = H::new();
    h.ev(staged(1, 7, true));
    h.ev(staged(2, 7, true));
    h.ev(staged(3, 7, true));
    h.ev(MonitorEvent::MountResync(vec![
        staging_mount(1),
        staging_mount(2),
    ]));
    h.ev(MonitorEvent::DeviceResync {
        namespaces: vec![ns(1, 1, 7), ns(2, 9, 20), ns(3, 3, 7)],
        controllers: vec![],
    });
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert_eq!(h.kind(2), ConditionKind::DeviceReplaced);
    assert_eq!(h.kind(3), ConditionKind::MountMissing);
}

#[test]
fn an_adopted_publish_whose_bind_is_absent_from_the_resync_is_mount_missing() {
    let mut h = H::new();
    h.ev(staged(1, 7, true));
    h.ev(MonitorEvent::VolumePublished {
        volume_id: vid(1),
        target: target(1, 1),
        mount: Some(MountKey {
            id: bind_id(1, 1),
            dev: DevNum::new(259, 1),
        }),
        read_only: false,
        adopted: true,
        stale: None,
    });
    h.ev(mounts_with_staging(1));
    h.ev(devices(vec![ns(1, 1, 7)]));
    assert_eq!(h.kind(1), ConditionKind::Healthy);
    assert_eq!(h.publish_kind(1, 1), Some(ConditionKind::MountMissing));
}
