//! MountTable indexes and diff, driven with synthetic entries (pure, no kernel).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rds_mounts::mountinfo::MountInfo;
use rds_mounts::table::{diff, MountChange, MountTable};
use rds_types::DevNum;

fn mount(id: u32, parent: u32, dev: (u32, u32), point: &str) -> MountInfo {
    MountInfo {
        id,
        parent_id: parent,
        dev: DevNum::new(dev.0, dev.1),
        root: PathBuf::from("/"),
        mount_point: PathBuf::from(point),
        mount_options: "rw,relatime".into(),
        optional: vec![],
        fs_type: "ext4".into(),
        source: Some("/dev/loop0".into()),
        super_options: "rw".into(),
        unique_id: None,
    }
}

fn recount(t: &MountTable) -> (HashMap<DevNum, usize>, HashMap<PathBuf, usize>) {
    let mut d = HashMap::new();
    let mut p = HashMap::new();
    for m in t.iter() {
        *d.entry(m.dev).or_insert(0) += 1;
        *p.entry(m.mount_point.clone()).or_insert(0) += 1;
    }
    (d, p)
}

#[test]
fn counts_follow_inserts_and_removes() {
    let mut t = MountTable::new();
    t.insert(mount(1, 1, (8, 1), "/"));
    t.insert(mount(2, 1, (7, 0), "/a"));
    t.insert(mount(3, 1, (7, 0), "/b"));
    t.insert(mount(4, 2, (7, 0), "/a"));
    assert_eq!(t.device_count(DevNum::new(7, 0)), 3);
    assert_eq!(t.mount_point_count(Path::new("/a")), 2);
    t.remove(2);
    assert_eq!(t.device_count(DevNum::new(7, 0)), 2);
    assert_eq!(t.mount_point_count(Path::new("/a")), 1);
    assert_eq!(
        t.device_count(DevNum::new(9, 9)),
        0,
        "unknown devices count zero"
    );
}

#[test]
fn replacing_an_id_moves_it_between_index_keys() {
    let mut t = MountTable::new();
    t.insert(mount(2, 1, (7, 0), "/a"));
    let old = t.insert(mount(2, 1, (7, 1), "/b"));
    assert_eq!(old.map(|m| m.mount_point), Some(PathBuf::from("/a")));
    assert_eq!(t.device_count(DevNum::new(7, 0)), 0);
    assert_eq!(t.mount_point_count(Path::new("/a")), 0);
    assert_eq!(
        t.on_device(DevNum::new(7, 1))
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn top_at_returns_the_mount_stacked_last() {
    let mut t = MountTable::new();
    t.insert(mount(10, 1, (7, 0), "/a"));
    t.insert(mount(5, 10, (7, 1), "/a")); // a reused, smaller id stacked on top
    assert_eq!(t.top_at(Path::new("/a")).map(|m| m.id), Some(5));
}

#[test]
fn unique_ids_are_indexed() {
    let mut t = MountTable::new();
    let mut m = mount(2, 1, (7, 0), "/a");
    m.unique_id = Some(0x1_0000_0042);
    t.insert(m);
    assert_eq!(t.get_by_unique(0x1_0000_0042).map(|m| m.id), Some(2));
    t.remove(2);
    assert!(t.get_by_unique(0x1_0000_0042).is_none());
}

#[test]
fn diff_reports_attach_detach_and_changes_in_replay_order() {
    let old: MountTable = [
        mount(1, 1, (8, 1), "/"),
        mount(2, 1, (7, 0), "/a"),
        mount(3, 2, (7, 1), "/a/x"),
    ]
    .into_iter()
    .collect();
    let mut ro = mount(2, 1, (7, 0), "/a");
    ro.mount_options = "ro,relatime".into();
    let new: MountTable = [
        mount(1, 1, (8, 1), "/"),
        ro.clone(),
        mount(5, 1, (7, 2), "/b"),
        mount(6, 5, (7, 3), "/b/c"),
    ]
    .into_iter()
    .collect();
    let changes = diff(&old, &new);
    let kinds: Vec<(char, u32)> = changes
        .iter()
        .map(|c| match c {
            MountChange::Attached(m) => ('+', m.id),
            MountChange::Detached(m) => ('-', m.id),
            MountChange::Changed { new, .. } => ('~', new.id),
        })
        .collect();
    assert_eq!(kinds, vec![('-', 3), ('~', 2), ('+', 5), ('+', 6)]);
}

#[test]
fn a_reused_id_on_another_device_is_a_detach_and_an_attach() {
    let old: MountTable = [mount(2, 1, (7, 0), "/a")].into_iter().collect();
    let new: MountTable = [mount(2, 1, (7, 9), "/a")].into_iter().collect();
    let changes = diff(&old, &new);
    assert!(
        matches!(
            changes.as_slice(),
            [MountChange::Detached(_), MountChange::Attached(_)]
        ),
        "{changes:?}"
    );
}

#[test]
fn children_detach_before_their_parents() {
    let old: MountTable = [
        mount(3, 2, (7, 1), "/a/x"),
        mount(2, 1, (7, 0), "/a"),
        mount(4, 3, (7, 1), "/a/x/y"),
    ]
    .into_iter()
    .collect();
    let ids: Vec<u32> = diff(&old, &MountTable::new())
        .iter()
        .map(|c| c.mount().id)
        .collect();
    assert_eq!(ids, vec![4, 3, 2]);
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        id: u32,
        parent: u32,
        dev: u32,
        point: u8,
    },
    Remove(u32),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0u32..40, 0u32..40, 0u32..4, 0u8..6).prop_map(|(id, parent, dev, point)| Op::Insert {
                id,
                parent,
                dev,
                point
            }),
            (0u32..40).prop_map(Op::Remove),
        ],
        0..200,
    )
}

fn build(ops: &[Op]) -> MountTable {
    let mut t = MountTable::new();
    for op in ops {
        match *op {
            Op::Insert {
                id,
                parent,
                dev,
                point,
            } => {
                t.insert(mount(id, parent, (7, dev), &format!("/p{point}")));
            }
            Op::Remove(id) => {
                t.remove(id);
            }
        }
    }
    t
}

proptest! {
    #[test]
    fn counts_always_equal_a_recount(ops in ops()) {
        let t = build(&ops);
        let (devs, points) = recount(&t);
        let got_devs: HashMap<DevNum, usize> = t.device_counts().collect();
        let got_points: HashMap<PathBuf, usize> = t.mount_point_counts().map(|(p, n)| (p.to_path_buf(), n)).collect();
        prop_assert_eq!(got_devs, devs.clone());
        prop_assert_eq!(got_points, points);
        for (d, n) in devs {
            prop_assert_eq!(t.device_count(d), n);
            prop_assert_eq!(t.on_device(d).count(), n);
        }
    }

    #[test]
    fn applying_a_diff_turns_old_into_new(a in ops(), b in ops()) {
        let old = build(&a);
        let new = build(&b);
        let mut replay = old.clone();
        for c in diff(&old, &new) {
            replay.apply(&c);
        }
        prop_assert_eq!(&replay, &new);
        let entries: Vec<MountInfo> = new.iter().cloned().collect();
        prop_assert_eq!(old.diff_entries(&entries), diff(&old, &new));
        prop_assert!(diff(&new, &new).is_empty(), "a table does not differ from itself");
    }
}

#[test]
fn a_reused_id_and_device_with_another_source_is_a_detach_and_an_attach() {
    use rds_mounts::mountinfo::parse_table;
    use rds_mounts::table::{MountChange, MountTable};
    // Between two reads another test's tmpfs (id 40, dev 0:50) went and a new one came with
    // the same id and the same anonymous device number: not a move.
    let old = parse_table(b"40 1 0:50 / /tmp/a rw - tmpfs other-src rw,size=1024k\n");
    let new = parse_table(b"40 1 0:50 / /tmp/b rw - tmpfs my-src rw,size=1024k\n");
    let mut t = MountTable::new();
    for m in old.entries {
        t.insert(m);
    }
    let changes = t.diff_entries(&new.entries);
    assert!(
        changes.iter().any(
            |c| matches!(c, MountChange::Attached(m) if m.mount_point.as_os_str() == "/tmp/b")
        ),
        "the new mount is an attach: {changes:?}"
    );
    assert!(changes
        .iter()
        .any(|c| matches!(c, MountChange::Detached(m) if m.mount_point.as_os_str() == "/tmp/a")));
    // A move keeps device, root, type and source: still a change of mount point.
    let moved = parse_table(b"40 1 0:50 / /tmp/c rw - tmpfs other-src rw,size=1024k\n");
    let changes = t.diff_entries(&moved.entries);
    assert!(
        matches!(changes.as_slice(), [MountChange::Changed { .. }]),
        "{changes:?}"
    );
}
