//! The pure model and the sysfs scanner over trees written by `NvmeTree` (no privileges).

mod common;

use common::devices::{ctrl, ns, NQN};
use rds_devices::model::{DeviceEvent, Model, Observation};
use rds_devices::scan::SysfsReader;
use rds_devices::ControllerState;
use rds_fabric::emulated::tree::NvmeTree;
use rds_types::{BlockIdentity, DevNum, DiskSeq};

fn tree() -> (tempfile::TempDir, NvmeTree, SysfsReader) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = NvmeTree::new(dir.path());
    let r = SysfsReader::new(dir.path());
    (dir, t, r)
}

fn scan_into(model: &mut Model, r: &SysfsReader) -> Vec<DeviceEvent> {
    model.reconcile(r.scan().expect("scan of a tempdir tree"))
}

#[test]
fn scan_reads_non_multipath_layout_and_resolves_the_nqn() {
    let (_d, t, r) = tree();
    t.set_multipath(false).unwrap();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    t.add_namespace("nvme0", &ns("nvme0n1", 1, DevNum::new(259, 3), 41))
        .unwrap();
    let mut m = Model::new();
    let evs = scan_into(&mut m, &r);
    assert!(
        evs.contains(&DeviceEvent::NamespaceAdded {
            nqn: NQN.into(),
            nsid: 1,
            name: "nvme0n1".into(),
            identity: BlockIdentity {
                dev: DevNum::new(259, 3),
                diskseq: Some(DiskSeq(41))
            },
            ids: rds_types::NamespaceIds::new(
                Some("0b5a6c1e-1234-4d2b-9c3a-000000000001".into()),
                None,
                Some("uuid.0b5a6c1e-1234-4d2b-9c3a-000000000001".into())
            ),
        }),
        "scan replay should announce the namespace with its identifiers: {evs:?}"
    );
    assert_eq!(evs.last(), Some(&DeviceEvent::Resynced));
    let d = m
        .resolve(NQN, Some(1))
        .expect("NQN resolves after the scan");
    assert_eq!(d.name, "nvme0n1");
    assert_eq!(d.controller.as_deref(), Some("nvme0"));
    assert_eq!(d.state, Some(ControllerState::Live));
    assert_eq!(d.dev_path_name, "nvme0n1");
    let c = &m.controllers_for(NQN)[0];
    assert_eq!(c.address_field("traddr"), Some("10.0.0.5"));
    assert_eq!(c.address_field("trsvcid"), Some("4420"));
    assert_eq!(c.cntlid, Some(1));
    assert_eq!(c.transport, "tcp");
}

#[test]
fn scan_reads_multipath_heads_and_never_resolves_hidden_paths() {
    let (_d, t, r) = tree();
    t.set_multipath(true).unwrap();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "connecting", 1))
        .unwrap();
    t.add_controller(&ctrl("nvme1", NQN, "live", 2)).unwrap();
    t.add_head(0, &ns("nvme0n1", 1, DevNum::new(259, 1), 40))
        .unwrap();
    t.add_path("nvme0", &ns("nvme0c0n1", 1, DevNum::new(259, 2), 41))
        .unwrap();
    t.add_path("nvme1", &ns("nvme1c1n1", 1, DevNum::new(259, 4), 42))
        .unwrap();
    let mut m = Model::new();
    scan_into(&mut m, &r);
    let d = m.resolve(NQN, None).expect("head resolves");
    assert_eq!(
        d.name, "nvme0n1",
        "the head, not a hidden path, is the device"
    );
    assert_eq!(d.identity.dev, DevNum::new(259, 1));
    assert_eq!(
        (d.controller.as_deref(), d.state),
        (Some("nvme1"), Some(ControllerState::Live)),
        "a head reports its best path's controller"
    );
    assert!(
        m.block_by_name("nvme0c0n1").is_none(),
        "a hidden path has no device number on the kernel (6.12): never a block of the model"
    );
}

#[test]
fn same_name_with_new_diskseq_is_removed_then_added() {
    let (_d, t, r) = tree();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    t.add_namespace("nvme0", &ns("nvme0n1", 1, DevNum::new(259, 3), 41))
        .unwrap();
    let mut m = Model::new();
    scan_into(&mut m, &r);
    t.add_namespace("nvme0", &ns("nvme0n1", 1, DevNum::new(259, 3), 57))
        .unwrap();
    let evs = scan_into(&mut m, &r);
    let removed = evs
        .iter()
        .position(|e| matches!(e, DeviceEvent::NamespaceRemoved { identity, .. } if identity.diskseq == Some(DiskSeq(41))));
    let added = evs
        .iter()
        .position(|e| matches!(e, DeviceEvent::NamespaceAdded { identity, .. } if identity.diskseq == Some(DiskSeq(57))));
    assert!(
        matches!((removed, added), (Some(a), Some(b)) if a < b),
        "expected the old incarnation removed before the new one is added: {evs:?}"
    );
    assert_eq!(
        m.resolve(NQN, Some(1)).unwrap().identity.diskseq,
        Some(DiskSeq(57))
    );
}

#[test]
fn controller_state_change_is_reported_with_old_and_new() {
    let (_d, t, r) = tree();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    let mut m = Model::new();
    scan_into(&mut m, &r);
    t.set_controller_state("nvme0", "connecting").unwrap();
    let obs = r
        .controller("nvme0", "/devices/virtual/nvme-fabrics/ctl/nvme0")
        .expect("controller readable");
    let evs = m.apply(Observation::ControllerUp(obs.clone()));
    assert_eq!(
        evs,
        vec![DeviceEvent::ControllerState {
            name: "nvme0".into(),
            nqn: NQN.into(),
            old: ControllerState::Live,
            new: ControllerState::Connecting
        }]
    );
    assert!(
        m.apply(Observation::ControllerUp(obs)).is_empty(),
        "applying the same observation twice emits nothing"
    );
}

#[test]
fn controller_removal_takes_its_namespaces_with_it() {
    let (_d, t, r) = tree();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    t.add_namespace("nvme0", &ns("nvme0n1", 1, DevNum::new(259, 3), 41))
        .unwrap();
    let mut m = Model::new();
    scan_into(&mut m, &r);
    let evs = m.apply(Observation::ControllerGone {
        name: "nvme0".into(),
    });
    assert!(evs
        .iter()
        .any(|e| matches!(e, DeviceEvent::NamespaceRemoved { name, .. } if name == "nvme0n1")));
    assert!(matches!(evs.last(), Some(DeviceEvent::ControllerRemoved(c)) if c.name == "nvme0"));
    assert!(m.resolve(NQN, Some(1)).is_none());
    assert!(m.block(DevNum::new(259, 3)).is_none());
}

#[test]
fn all_controller_states_parse_from_their_kernel_strings() {
    for (s, st) in [
        ("new", ControllerState::New),
        ("live", ControllerState::Live),
        ("resetting", ControllerState::Resetting),
        ("connecting", ControllerState::Connecting),
        ("deleting", ControllerState::Deleting),
        ("deleting (no IO)", ControllerState::DeletingNoIo),
        ("dead", ControllerState::Dead),
    ] {
        assert_eq!(ControllerState::parse(&format!("{s}\n")), st);
        assert_eq!(st.as_str(), s);
    }
    assert_eq!(
        ControllerState::parse("frozen"),
        ControllerState::Unknown("frozen".into())
    );
}

#[test]
fn scan_skips_entries_whose_attributes_vanished() {
    let (d, t, r) = tree();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    t.add_controller(&ctrl("nvme1", NQN, "live", 2)).unwrap();
    t.add_namespace("nvme0", &ns("nvme0n1", 1, DevNum::new(259, 3), 41))
        .unwrap();
    // nvme1 is being torn down: its state is gone; nvme0n1's dev too; a dangling block link.
    std::fs::remove_file(t.controller_dir("nvme1").join("state")).unwrap();
    std::fs::remove_file(d.path().join("block/nvme0n1/dev")).unwrap();
    std::os::unix::fs::symlink(
        "../devices/virtual/block/gone0",
        d.path().join("block/gone0"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../../devices/virtual/block/gone0",
        d.path().join("class/block/gone0"),
    )
    .unwrap();
    let snap = r.scan().expect("a racing removal is not a scan error");
    let names: Vec<_> = snap.controllers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["nvme0"]);
    assert!(
        snap.blocks.is_empty(),
        "no complete block device: {:?}",
        snap.blocks
    );
}

#[test]
fn removing_from_the_tree_is_seen_by_the_next_scan() {
    let (_d, t, r) = tree();
    t.add_subsystem(0, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    t.add_namespace("nvme0", &ns("nvme0n1", 1, DevNum::new(259, 3), 41))
        .unwrap();
    let mut m = Model::new();
    scan_into(&mut m, &r);
    t.remove_controller("nvme0").unwrap();
    let evs = scan_into(&mut m, &r);
    assert!(evs
        .iter()
        .any(|e| matches!(e, DeviceEvent::ControllerRemoved(c) if c.name == "nvme0")));
    assert_eq!(m.to_snapshot(), r.scan().unwrap(), "model equals the tree");
    t.remove_subsystem(0).unwrap();
    assert!(r.scan().unwrap().subsystems.is_empty());
}

#[test]
fn subsystem_removal_takes_its_multipath_heads_with_it() {
    let (_d, t, r) = tree();
    t.set_multipath(true).unwrap();
    t.add_subsystem(2, NQN).unwrap();
    t.add_controller(&ctrl("nvme0", NQN, "live", 1)).unwrap();
    t.add_head(2, &ns("nvme2n1", 1, DevNum::new(259, 1), 40))
        .unwrap();
    let mut m = Model::new();
    scan_into(&mut m, &r);
    assert!(m.resolve(NQN, Some(1)).is_some());
    let evs = m.apply(Observation::SubsystemGone {
        name: "nvme-subsys2".into(),
    });
    assert!(
        evs.iter()
            .any(|e| matches!(e, DeviceEvent::NamespaceRemoved { name, .. } if name == "nvme2n1")),
        "the head must be reported removed with its subsystem: {evs:?}"
    );
    assert!(m.resolve(NQN, Some(1)).is_none());
}
