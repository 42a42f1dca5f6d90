//! Property: whatever the sequence of events (including nonsense: feedback for recoveries
//! never asked for, removals of unknown namespaces, mounts shared between volumes), the
//! incrementally maintained conditions equal a recomputation from the current facts, the
//! recovery cycles are at their fixpoint, every pending deadline has a tick in the future, and
//! a volume never has two `Recover`s out without an answer in between.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use rds_monitor::*;
use rds_types::DevNum;

fn dev(minor: u32) -> DevNum {
    DevNum::new(259, minor)
}

/// Mount ids 100..=105 sit at staging paths, 200..=205 at targets.
fn mount_point(id: u64) -> PathBuf {
    if id < 200 {
        staging(u32::try_from(id % 3 + 1).expect("small"))
    } else {
        target(
            u32::try_from(id % 3 + 1).expect("small"),
            u32::try_from(id % 2 + 1).expect("small"),
        )
    }
}

fn mount_facts(id: u64, minor: u32, ro: bool, opts: &str) -> MountFacts {
    MountFacts {
        id,
        dev: dev(minor),
        mount_point: mount_point(id),
        fs_type: "ext4".into(),
        read_only: ro,
        super_options: opts.into(),
    }
}

fn key(id: u64, minor: u32) -> MountKey {
    MountKey {
        id,
        dev: dev(minor),
    }
}

fn any_mount_id() -> impl Strategy<Value = u64> {
    prop_oneof![100u64..=105, 200u64..=205]
}

fn any_state() -> impl Strategy<Value = ControllerState> {
    prop_oneof![
        Just(ControllerState::Live),
        Just(ControllerState::Connecting),
        Just(ControllerState::Resetting),
        Just(ControllerState::Deleting),
        Just(ControllerState::Dead),
        Just(ControllerState::Unknown("new".into())),
    ]
}

fn any_ns() -> impl Strategy<Value = NamespaceFacts> {
    (1u32..=3, 1u32..=2, 1u32..=4, 1u64..=3, 0u32..5).prop_map(|(n, nsid, minor, seq, other)| {
        NamespaceFacts {
            nqn: nqn(n),
            nsid,
            name: format!("nvme{n}n{nsid}"),
            identity: ident(minor, seq),
            // Now and then another volume's namespace behind the NQN.
            ids: if other == 0 { ids(n + 10) } else { ids(n) },
        }
    })
}

fn any_ctrl() -> impl Strategy<Value = ControllerFacts> {
    (1u32..=3, prop::sample::select(vec!["a", "b"]), any_state()).prop_map(|(n, c, state)| {
        ControllerFacts {
            nqn: nqn(n),
            controller: c.into(),
            state,
        }
    })
}

fn any_opts() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "rw",
        "rw",
        "rw,errors=remount-ro",
        "ro,emergency_ro",
        "rw,shutdown",
        "ro",
    ])
}

fn any_storm_key() -> impl Strategy<Value = StormKey> {
    prop_oneof![
        (1u32..=4).prop_map(|m| StormKey::Device(dev(m))),
        (1u32..=3).prop_map(|n| StormKey::MountPoint(staging(n))),
        Just(StormKey::MountPoint("/var/lib/kubelet/pods".into())),
        (1u32..=3).prop_map(|n| StormKey::MountPoint(target(n, 1))),
    ]
}

fn any_event() -> impl Strategy<Value = MonitorEvent> {
    prop_oneof![
        3 => (1u32..=3, 1u32..=4, 1u64..=3, 100u64..=105, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(n, minor, seq, mid, no_nsid, ro, adopted)| MonitorEvent::VolumeStaged {
                volume_id: vid(n),
                nqn: nqn(n),
                nsid: if no_nsid { None } else { Some(1) },
                ids: Default::default(),
                staging_path: staging(n),
                mount: Some(key(mid, minor)),
                device: ident(minor, seq),
                fs_type: Some("ext4".into()),
                read_only: ro,
                adopted,
            }),
        1 => (1u32..=3).prop_map(|n| MonitorEvent::VolumeUnstaged { volume_id: vid(n) }),
        2 => (1u32..=3, 1u32..=2, 200u64..=205, 1u32..=4, any::<bool>(), any::<bool>())
            .prop_map(|(n, pod, mid, minor, ro, adopted)| MonitorEvent::VolumePublished {
                volume_id: vid(n),
                target: target(n, pod),
                mount: Some(key(mid, minor)),
                read_only: ro,
                adopted,
                stale: (adopted && ro).then(|| StaleMark {
                    kind: ConditionKind::DeviceReplaced,
                    old_device: ident(minor, 1),
                    new_device: ident(minor, 2),
                }),
            }),
        2 => (1u32..=4, 0u64..=2, 0u64..=2).prop_map(|(minor, inflight, completed)| {
            MonitorEvent::IoProgress { dev: dev(minor), inflight, completed }
        }),
        1 => (1u32..=3, 1u32..=2).prop_map(|(n, pod)| MonitorEvent::VolumeUnpublished {
            volume_id: vid(n),
            target: target(n, pod),
        }),
        4 => (any_mount_id(), 1u32..=4, any::<bool>(), any_opts())
            .prop_map(|(id, minor, ro, o)| MonitorEvent::MountAttached(mount_facts(id, minor, ro, o))),
        2 => (any_mount_id(), 1u32..=4, any::<bool>(), any_opts())
            .prop_map(|(id, minor, ro, o)| MonitorEvent::MountChanged(mount_facts(id, minor, ro, o))),
        4 => any_mount_id().prop_map(|id| MonitorEvent::MountDetached { id }),
        1 => prop::collection::vec((any_mount_id(), 1u32..=4), 0..6).prop_map(|v| {
            MonitorEvent::MountResync(v.into_iter().map(|(id, m)| mount_facts(id, m, false, "rw")).collect())
        }),
        1 => (any_storm_key(), 100u64..5000).prop_map(|(key, count)| MonitorEvent::MountStorm {
            key,
            count,
            message: "storm".into(),
        }),
        1 => any_storm_key().prop_map(|key| MonitorEvent::MountStormCleared { key }),
        3 => any_ns().prop_map(MonitorEvent::NamespaceAdded),
        3 => any_ns().prop_map(|ns| MonitorEvent::NamespaceRemoved {
            nqn: ns.nqn,
            nsid: ns.nsid,
            identity: ns.identity,
        }),
        2 => any_ctrl().prop_map(MonitorEvent::ControllerState),
        1 => (1u32..=3, prop::sample::select(vec!["a", "b"])).prop_map(|(n, c)| {
            MonitorEvent::ControllerRemoved { nqn: nqn(n), controller: c.into() }
        }),
        1 => (prop::collection::vec(any_ns(), 0..4), prop::collection::vec(any_ctrl(), 0..3))
            .prop_map(|(namespaces, controllers)| MonitorEvent::DeviceResync { namespaces, controllers }),
        2 => (1u32..=4, 1u32..=3).prop_map(|(minor, count)| MonitorEvent::FsError {
            dev: dev(minor),
            errno: 5,
            count,
        }),
        2 => (1u32..=3, 1u32..=3).prop_map(|(n, attempt)| MonitorEvent::RecoveryStarted {
            volume_id: vid(n),
            attempt,
        }),
        2 => (1u32..=3, 1u32..=4, 1u64..=3, 100u64..=105, any::<bool>()).prop_map(
            |(n, minor, seq, mid, rebind)| MonitorEvent::RecoverySucceeded {
                volume_id: vid(n),
                report: RecoveryReport {
                    new_device: ident(minor, seq),
                    new_mount: Some(key(mid, minor)),
                    republished: if rebind {
                        vec![PublishedMount { target: target(n, 1), mount: Some(key(204, minor)) }]
                    } else {
                        vec![]
                    },
                    stale_targets: if rebind { vec![] } else { vec![target(n, 1), target(n, 2)] },
                },
            },
        ),
        2 => (1u32..=3, 1u32..=3, any::<bool>()).prop_map(|(n, attempt, final_)| {
            MonitorEvent::RecoveryFailed {
                volume_id: vid(n),
                attempt,
                error: "EIO".into(),
                final_,
            }
        }),
        3 => Just(MonitorEvent::Tick),
    ]
}

fn any_step() -> impl Strategy<Value = Duration> {
    prop::sample::select(vec![0u64, 1, 400, 1000, 2000, 3000, 11_000])
        .prop_map(Duration::from_millis)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn incremental_conditions_always_equal_a_recomputation_from_the_facts(
        events in prop::collection::vec((any_step(), any_event()), 1..80)
    ) {
        let mut m = Monitor::new(MonitorConfig::default());
        let mut now = Timestamp::from_duration(Duration::from_secs(100));
        // Volumes with a Recover out and no answer (or restage/unstage) since.
        let mut outstanding: std::collections::BTreeSet<VolumeId> = Default::default();
        for (i, (step, ev)) in events.into_iter().enumerate() {
            now = now.saturating_add(step);
            let shown = format!("{ev:?}");
            match &ev {
                MonitorEvent::RecoveryFailed { volume_id, .. }
                | MonitorEvent::RecoverySucceeded { volume_id, .. }
                | MonitorEvent::VolumeStaged { volume_id, .. }
                | MonitorEvent::VolumeUnstaged { volume_id } => {
                    outstanding.remove(volume_id);
                }
                _ => {}
            }
            let out = m.on_event(ev, now);
            let bad = rds_monitor::recompute::check(&m);
            prop_assert!(
                bad.is_empty(),
                "after event #{i} {shown}: {}",
                bad.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; ")
            );
            for a in &out {
                if let Action::Recover { volume_id, .. } = a {
                    prop_assert!(
                        outstanding.insert(volume_id.clone()),
                        "after event #{i} {shown}: a second Recover for {volume_id} while one \
                         is unanswered"
                    );
                }
                if let Action::ScheduleTick { at } = a {
                    prop_assert!(*at > now, "a tick must be in the future: {at} <= {now}");
                }
            }
        }
    }
}
