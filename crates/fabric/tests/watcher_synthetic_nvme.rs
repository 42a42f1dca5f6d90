//! Synthetic NVMe uevents injected on netlink group 2 (libudev format) over an NVMe sysfs tree
//! in a temporary root: the model and resolver after each step of a connect / reconnect story.
//! Privileged: runs in private mount and network namespaces (injections stay in this netns).

rds_testkit::private_namespaces!();

mod common;

use common::devices::{ctrl, expect_event, ns, skip_replay, Injector, DEADLINE, NQN};
use rds_devices::uevent::Action;
use rds_devices::{spawn, ControllerState, DeviceEvent, SourceKind, WaitError, WatcherConfig};
use rds_fabric::emulated::announce::Announcer;
use rds_fabric::emulated::tree::{subsystem_devpath, NvmeTree};
use rds_types::{DevNum, DiskSeq, Nqn};

/// Injections reach every group-2 socket of the process's network namespace: tests in this
/// binary take turns so that one test's events never land in another's watcher.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn connect_reconnect_story_keeps_model_and_resolver_right() {
    rds_testkit::require_private_namespaces();
    let _turn = SERIAL.lock().await;
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.set_multipath(false).unwrap();
    let (h, mut rx) =
        spawn(WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Udev)).unwrap();
    skip_replay(&mut rx).await;
    let nqn = Nqn::parse(NQN).unwrap();
    let mut inj = Injector::new();

    // 1. connect: subsystem and controller appear
    let subsys = tree.add_subsystem(0, NQN).unwrap();
    inj.send("add", &subsys, "nvme-subsystem", &[]);
    let c0 = tree.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    inj.send("add", &c0, "nvme", &[("NVME_TRTYPE", "tcp")]);
    expect_event(&mut rx, "ControllerAdded nvme0", |e| {
        matches!(e, DeviceEvent::ControllerAdded(c) if c.name == "nvme0" && c.state == ControllerState::Live)
    })
    .await;
    assert_eq!(h.controllers_for(&nqn).len(), 1);
    assert!(h.resolve(&nqn, Some(1)).is_none(), "no namespace yet");

    // 2. the namespace appears; a waiter started before it is woken by the event
    let waiter = {
        let (h, nqn) = (h.clone(), nqn.clone());
        tokio::spawn(async move { h.wait_for_namespace(&nqn, 1, DEADLINE).await })
    };
    tokio::task::yield_now().await;
    let ns1 = ns("nvme0n1", 1, DevNum::new(259, 3), 41);
    let p1 = tree.add_namespace("nvme0", &ns1).unwrap();
    inj.disk("add", &p1, &ns1);
    let got = waiter
        .await
        .unwrap()
        .expect("waiter woken by the namespace event");
    assert_eq!(got.name, "nvme0n1");
    assert_eq!(got.identity.dev, DevNum::new(259, 3));
    assert_eq!(got.identity.diskseq, Some(DiskSeq(41)));
    assert_eq!(got.controller.as_deref(), Some("nvme0"));
    assert_eq!(
        got.dev_path_name, "nvme0n1",
        "udev's absolute DEVNAME becomes a name relative to the dev root"
    );
    expect_event(
        &mut rx,
        "NamespaceAdded nvme0n1",
        |e| matches!(e, DeviceEvent::NamespaceAdded { name, nsid: 1, .. } if name == "nvme0n1"),
    )
    .await;

    // 3. the controller goes connecting (device kept)
    tree.set_controller_state("nvme0", "connecting").unwrap();
    inj.send("change", &c0, "nvme", &[]);
    expect_event(&mut rx, "ControllerState live -> connecting", |e| {
        matches!(
            e,
            DeviceEvent::ControllerState {
                old: ControllerState::Live,
                new: ControllerState::Connecting,
                ..
            }
        )
    })
    .await;
    let d = h
        .resolve(&nqn, Some(1))
        .expect("still resolves while connecting");
    assert_eq!(d.state, Some(ControllerState::Connecting));

    // 4. loss timeout: namespace and controller deleted
    tree.remove_disk("nvme0n1").unwrap();
    inj.disk("remove", &p1, &ns1);
    tree.remove_controller("nvme0").unwrap();
    inj.send("remove", &c0, "nvme", &[]);
    expect_event(
        &mut rx,
        "ControllerRemoved nvme0",
        |e| matches!(e, DeviceEvent::ControllerRemoved(c) if c.name == "nvme0"),
    )
    .await;
    assert!(
        h.resolve(&nqn, Some(1)).is_none(),
        "nothing resolves after deletion"
    );
    assert!(h.controllers_for(&nqn).is_empty());
    assert!(h.block(DevNum::new(259, 3)).is_none());

    // 5. reconnect: a new controller, the namespace renamed and renumbered
    let waiter = {
        let (h, nqn) = (h.clone(), nqn.clone());
        tokio::spawn(async move { h.wait_for_namespace(&nqn, 1, DEADLINE).await })
    };
    let c1 = tree.add_controller(&ctrl("nvme1", NQN, "live", 2)).unwrap();
    inj.send("add", &c1, "nvme", &[]);
    let ns2 = ns("nvme1n1", 1, DevNum::new(259, 5), 50);
    let p2 = tree.add_namespace("nvme1", &ns2).unwrap();
    inj.disk("add", &p2, &ns2);
    let got = waiter
        .await
        .unwrap()
        .expect("woken by the renamed namespace");
    assert_eq!(
        (got.name.as_str(), got.identity.dev, got.identity.diskseq),
        ("nvme1n1", DevNum::new(259, 5), Some(DiskSeq(50)))
    );
    assert_eq!(got.state, Some(ControllerState::Live));

    // 6. the same name comes back with a new diskseq: removed, then added
    tree.remove_disk("nvme1n1").unwrap();
    inj.disk("remove", &p2, &ns2);
    let ns3 = ns("nvme1n1", 1, DevNum::new(259, 5), 51);
    let p3 = tree.add_namespace("nvme1", &ns3).unwrap();
    inj.disk("add", &p3, &ns3);
    expect_event(&mut rx, "NamespaceRemoved of diskseq 50", |e| {
        matches!(e, DeviceEvent::NamespaceRemoved { identity, .. } if identity.diskseq == Some(DiskSeq(50)))
    })
    .await;
    expect_event(&mut rx, "NamespaceAdded of diskseq 51", |e| {
        matches!(e, DeviceEvent::NamespaceAdded { identity, .. } if identity.diskseq == Some(DiskSeq(51)))
    })
    .await;
    let d = h.resolve(&nqn, Some(1)).unwrap();
    assert_eq!(
        (d.name.as_str(), d.identity.diskseq),
        ("nvme1n1", Some(DiskSeq(51))),
        "same name, new diskseq resolves to the new incarnation"
    );
}

#[tokio::test]
async fn same_name_new_diskseq_without_a_remove_event_is_still_a_new_device() {
    rds_testkit::require_private_namespaces();
    let _turn = SERIAL.lock().await;
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.add_subsystem(0, NQN).unwrap();
    tree.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    let a = ns("nvme0n1", 1, DevNum::new(259, 3), 41);
    tree.add_namespace("nvme0", &a).unwrap();
    let (h, mut rx) =
        spawn(WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Udev)).unwrap();
    skip_replay(&mut rx).await;
    let b = ns("nvme0n1", 1, DevNum::new(259, 3), 77);
    let p = tree.add_namespace("nvme0", &b).unwrap();
    Injector::new().disk("add", &p, &b);
    let ev = expect_event(&mut rx, "NamespaceRemoved for the lost incarnation", |e| {
        matches!(e, DeviceEvent::NamespaceRemoved { .. })
    })
    .await;
    assert!(
        matches!(ev, DeviceEvent::NamespaceRemoved { identity, .. } if identity.diskseq == Some(DiskSeq(41)))
    );
    let nqn = Nqn::parse(NQN).unwrap();
    h.wait_until(DEADLINE, |m| {
        m.resolve(NQN, Some(1))
            .filter(|d| d.identity.diskseq == Some(DiskSeq(77)))
    })
    .await
    .expect("resolves to diskseq 77");
    assert_eq!(
        h.resolve(&nqn, None).unwrap().identity.diskseq,
        Some(DiskSeq(77))
    );
}

#[tokio::test]
async fn multipath_head_resolves_and_follows_path_state() {
    rds_testkit::require_private_namespaces();
    let _turn = SERIAL.lock().await;
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.set_multipath(true).unwrap();
    let (h, mut rx) =
        spawn(WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Udev)).unwrap();
    skip_replay(&mut rx).await;
    // The crate's own announcer, as the emulated fabric uses it.
    let ann = Announcer::new().unwrap();
    tree.add_subsystem(3, NQN).unwrap();
    ann.subsystem(Action::Add, 3).unwrap();
    let mut c4 = ctrl("nvme4", NQN, "live", 7);
    tree.add_controller(&c4).unwrap();
    ann.controller(Action::Add, &c4).unwrap();
    let path = ns("nvme4c4n1", 1, DevNum::new(259, 8), 90);
    ann.disk(Action::Add, &tree.add_path("nvme4", &path).unwrap(), &path)
        .unwrap();
    let head = ns("nvme3n1", 1, DevNum::new(259, 9), 91);
    let hp = tree.add_head(3, &head).unwrap();
    assert_eq!(hp, format!("{}/nvme3n1", subsystem_devpath("nvme-subsys3")));
    ann.disk(Action::Add, &hp, &head).unwrap();
    let nqn = Nqn::parse(NQN).unwrap();
    let d = h.wait_for_namespace(&nqn, 1, DEADLINE).await.unwrap();
    assert_eq!(
        d.name, "nvme3n1",
        "the head is the volume's device, not the hidden path"
    );
    assert_eq!(d.controller.as_deref(), Some("nvme4"));
    tree.set_controller_state("nvme4", "connecting").unwrap();
    c4.state = "connecting".into();
    ann.controller(Action::Change, &c4).unwrap();
    expect_event(&mut rx, "ControllerState to connecting", |e| {
        matches!(
            e,
            DeviceEvent::ControllerState {
                new: ControllerState::Connecting,
                ..
            }
        )
    })
    .await;
    assert_eq!(
        h.resolve(&nqn, Some(1)).unwrap().state,
        Some(ControllerState::Connecting)
    );
}

#[tokio::test]
async fn wait_for_namespace_times_out_when_nothing_appears() {
    rds_testkit::require_private_namespaces();
    let _turn = SERIAL.lock().await;
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let (h, _rx) =
        spawn(WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Udev)).unwrap();
    let nqn = Nqn::parse(NQN).unwrap();
    let wait = std::time::Duration::from_millis(50);
    assert_eq!(
        h.wait_for_namespace(&nqn, 1, wait).await,
        Err(WaitError::Timeout {
            nqn: NQN.into(),
            nsid: 1,
            waited: wait
        })
    );
}

#[tokio::test]
async fn connecting_state_without_a_uevent_is_found_by_the_state_recheck() {
    rds_testkit::require_private_namespaces();
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.add_subsystem(0, NQN).unwrap();
    tree.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    // Kernel group only, so no synthetic event of another test can reach this watcher.
    let cfg = WatcherConfig::new(sys.path(), run.path())
        .with_sources(SourceKind::Kernel)
        .with_state_poll(Some(std::time::Duration::from_millis(10)));
    let (h, mut rx) = spawn(cfg).unwrap();
    skip_replay(&mut rx).await;
    // The kernel sends no uevent when a fabrics controller starts reconnecting.
    tree.set_controller_state("nvme0", "connecting").unwrap();
    expect_event(
        &mut rx,
        "ControllerState live -> connecting from the re-check",
        |e| {
            matches!(
                e,
                DeviceEvent::ControllerState {
                    old: ControllerState::Live,
                    new: ControllerState::Connecting,
                    ..
                }
            )
        },
    )
    .await;
    assert_eq!(
        h.controller("nvme0").map(|c| c.state),
        Some(ControllerState::Connecting)
    );
}
