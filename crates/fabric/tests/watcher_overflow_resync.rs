//! Forced ENOBUFS: a tiny receive buffer and a burst of injected messages. The watcher must
//! report the loss (Overflow), resync from sysfs (Resynced), and end with an exact model.
//! Privileged: runs in private mount and network namespaces.

rds_testkit::private_namespaces!();

mod common;

use common::devices::{ctrl, expect_event, ns, skip_replay, Injector, NQN};
use rds_devices::scan::SysfsReader;
use rds_devices::{spawn, DeviceEvent, SourceKind, WatcherConfig};
use rds_fabric::emulated::tree::NvmeTree;
use rds_types::DevNum;

const CONTROLLERS: u32 = 40;

#[tokio::test]
async fn burst_past_a_tiny_receive_buffer_overflows_and_resync_leaves_the_model_exact() {
    rds_testkit::require_private_namespaces();
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    let cfg = WatcherConfig::new(sys.path(), run.path())
        .with_sources(SourceKind::Udev)
        .with_rcvbuf(1);
    let (h, mut rx) = spawn(cfg).unwrap();
    skip_replay(&mut rx).await;

    // Build the final tree first, then announce it in one burst without yielding to the
    // runtime: the watcher cannot drain its socket meanwhile.
    let mut inj = Injector::new();
    inj.send(
        "add",
        &tree.add_subsystem(0, NQN).unwrap(),
        "nvme-subsystem",
        &[],
    );
    for i in 0..CONTROLLERS {
        let name = format!("nvme{i}");
        let c = tree
            .add_controller(&ctrl(&name, NQN, "live", i as u16 + 1))
            .unwrap();
        inj.send("add", &c, "nvme", &[]);
        let n = ns(
            &format!("{name}n1"),
            1,
            DevNum::new(259, i),
            100 + u64::from(i),
        );
        let p = tree.add_namespace(&name, &n).unwrap();
        inj.disk("add", &p, &n);
    }
    // Half of the controllers then go connecting, a quarter are deleted.
    for i in 0..CONTROLLERS / 2 {
        let name = format!("nvme{i}");
        if i % 2 == 0 {
            tree.remove_controller(&name).unwrap();
            inj.send(
                "remove",
                &rds_fabric::emulated::tree::controller_devpath(&name),
                "nvme",
                &[],
            );
        } else {
            tree.set_controller_state(&name, "connecting").unwrap();
            inj.send(
                "change",
                &rds_fabric::emulated::tree::controller_devpath(&name),
                "nvme",
                &[],
            );
        }
    }

    expect_event(&mut rx, "Overflow after the burst", |e| {
        matches!(e, DeviceEvent::Overflow)
    })
    .await;
    expect_event(&mut rx, "Resynced after the overflow", |e| {
        matches!(e, DeviceEvent::Resynced)
    })
    .await;
    let truth = SysfsReader::new(sys.path()).scan().unwrap();
    assert_eq!(
        truth.controllers.len(),
        (CONTROLLERS - CONTROLLERS / 4) as usize
    );
    assert_eq!(
        h.snapshot(),
        truth,
        "after the resync the model must equal the sysfs tree exactly"
    );
}

#[tokio::test]
async fn forced_resync_reports_differences_then_resynced() {
    rds_testkit::require_private_namespaces();
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    // Kernel group only: no injected events can reach this watcher; only the resync sees the
    // tree change.
    let (h, mut rx) =
        spawn(WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Kernel)).unwrap();
    skip_replay(&mut rx).await;
    tree.add_subsystem(0, "nqn.2000-02.com.mikrotik:pvc-forced")
        .unwrap();
    tree.add_controller(&ctrl(
        "nvme9",
        "nqn.2000-02.com.mikrotik:pvc-forced",
        "live",
        1,
    ))
    .unwrap();
    h.resync().await.expect("resync");
    let ev = expect_event(&mut rx, "ControllerAdded from the resync", |e| {
        matches!(e, DeviceEvent::ControllerAdded(_))
    })
    .await;
    assert!(matches!(ev, DeviceEvent::ControllerAdded(c) if c.name == "nvme9"));
    expect_event(&mut rx, "Resynced", |e| matches!(e, DeviceEvent::Resynced)).await;
    assert!(h.controller("nvme9").is_some());
}

#[tokio::test]
async fn a_reader_that_falls_behind_never_stalls_the_model_and_is_told_what_it_missed() {
    rds_testkit::require_private_namespaces();
    let sys = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.add_subsystem(0, NQN).unwrap();
    for i in 0..5u32 {
        tree.add_controller(&ctrl(&format!("nvme{i}"), NQN, "live", i as u16 + 1))
            .unwrap();
    }
    let mut cfg = WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Kernel);
    cfg.channel_capacity = 2;
    let (h, mut rx) = spawn(cfg).unwrap();
    // Nobody reads yet: the replay alone overfills the channel. The model must still move.
    tree.add_controller(&ctrl("nvme7", NQN, "live", 8)).unwrap();
    tokio::time::timeout(common::devices::DEADLINE, h.resync())
        .await
        .expect("a full event channel must not block the watcher")
        .unwrap();
    assert!(
        h.controller("nvme7").is_some(),
        "model updated by the resync"
    );
    let mut missed = None;
    while let Ok(Some(ev)) = tokio::time::timeout(common::devices::DEADLINE, rx.recv()).await {
        if let DeviceEvent::Lagged { missed: n } = ev {
            missed = Some(n);
            break;
        }
    }
    assert!(
        matches!(missed, Some(n) if n > 0),
        "the reader should be told it missed events, got {missed:?}"
    );
}
