//! Property tests of the mountinfo parser: escaping round-trips for arbitrary bytes, printed
//! entries parse back to themselves, and no input makes it panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use proptest::prelude::*;
use rds_mounts::mountinfo::{escape, parse_line, parse_table, unescape, MountInfo, OptionalField};
use rds_types::DevNum;

fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Bias towards the characters the kernel escapes.
    prop::collection::vec(
        prop_oneof![
            Just(b' '),
            Just(b'\t'),
            Just(b'\n'),
            Just(b'\\'),
            Just(b'/'),
            any::<u8>().prop_filter("no NUL in paths", |b| *b != 0),
        ],
        0..40,
    )
}

fn optional() -> impl Strategy<Value = OptionalField> {
    prop_oneof![
        any::<u32>().prop_map(OptionalField::Shared),
        any::<u32>().prop_map(OptionalField::Master),
        any::<u32>().prop_map(OptionalField::PropagateFrom),
        Just(OptionalField::Unbindable),
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9._]{1,12}"
}

fn mount_info() -> impl Strategy<Value = MountInfo> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        path_bytes(),
        path_bytes(),
        prop::collection::vec(optional(), 0..3),
        text(),
        prop::option::of(path_bytes().prop_filter("non-empty, utf-8", |b| {
            !b.is_empty() && std::str::from_utf8(b).is_ok()
        })),
        "(rw|ro)(,[a-z]{1,8}(=[a-z0-9]{0,6})?){0,4}",
    )
        .prop_map(
            |((id, parent, ma, mi), root, mp, optional, fs, source, sopts)| {
                let mut mount_point = b"/".to_vec();
                mount_point.extend(mp);
                MountInfo {
                    id,
                    parent_id: parent,
                    dev: DevNum::new(ma, mi),
                    root: PathBuf::from(OsStr::from_bytes(&root)),
                    mount_point: PathBuf::from(OsStr::from_bytes(&mount_point)),
                    mount_options: "rw,relatime".into(),
                    optional,
                    fs_type: fs,
                    source: source.map(|s| String::from_utf8(s).expect("filtered utf-8")),
                    super_options: sopts,
                    unique_id: None,
                }
            },
        )
}

proptest! {
    #[test]
    fn unescape_inverts_escape_for_any_bytes(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let escaped = escape(&b);
        prop_assert!(!escaped.iter().any(|c| matches!(c, b' ' | b'\t' | b'\n')),
            "escaped bytes must hold no field or line separator");
        prop_assert_eq!(unescape(&escaped).into_owned(), b);
    }

    #[test]
    fn printed_entries_parse_back_to_themselves(m in mount_info()) {
        let mut line = m.to_line();
        line.push(b'\n');
        let parsed = parse_line(&line).map(|e| e.to_owned());
        prop_assert_eq!(parsed, Ok(m.clone()));
        let table = parse_table(&line);
        prop_assert_eq!(table.entries, vec![m]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let t = parse_table(&b);
        let lines = b.split_inclusive(|&c| c == b'\n').count();
        prop_assert_eq!(t.entries.len() + t.errors.len(), lines, "one outcome per line");
        let _ = parse_line(&b);
        let _ = unescape(&b);
    }

    #[test]
    fn mutated_real_lines_never_panic(pos in 0usize..120, byte in any::<u8>()) {
        let mut line = b"72 63 0:46 /a\\040b /tmp/mntfix/base/shared rw,relatime shared:1 master:2 - tmpfs sharedfs rw,size=4k\n".to_vec();
        let p = pos % line.len();
        line[p] = byte;
        let _ = parse_table(&line);
    }
}
