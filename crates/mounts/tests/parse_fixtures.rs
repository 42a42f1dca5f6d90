//! The mountinfo parser on byte fixtures captured from this kernel (Linux 6.18) in a private
//! mount namespace holding paths with spaces, tabs, newlines, backslashes and non-UTF-8
//! bytes, overlays, tmpfs with an empty source, bind mounts of subtrees, and shared, slave,
//! shared+slave and unbindable propagation.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rds_mounts::mountinfo::{parse_line, parse_table, MountInfo, OptionalField, ParseErrorKind};
use rds_types::DevNum;

const SPECIAL: &[u8] = include_bytes!("fixtures/private_ns_special_paths.mountinfo");
const HOST: &[u8] = include_bytes!("fixtures/host_namespace.mountinfo");

fn special() -> Vec<MountInfo> {
    let t = parse_table(SPECIAL);
    assert!(
        t.errors.is_empty(),
        "the real fixture should parse cleanly: {:?}",
        t.errors
    );
    t.entries
}

fn at(entries: &[MountInfo], mount_point: &[u8]) -> MountInfo {
    entries
        .iter()
        .find(|m| m.mount_point.as_os_str().as_bytes() == mount_point)
        .unwrap_or_else(|| {
            panic!(
                "no entry mounted at {:?}",
                String::from_utf8_lossy(mount_point)
            )
        })
        .clone()
}

#[test]
fn every_line_of_the_real_fixtures_parses() {
    let lines = SPECIAL.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(special().len(), lines, "one entry per line expected");
    let host = parse_table(HOST);
    assert!(host.errors.is_empty(), "{:?}", host.errors);
    assert_eq!(
        host.entries.len(),
        HOST.iter().filter(|&&b| b == b'\n').count()
    );
}

#[test]
fn octal_escapes_in_mount_points_decode_to_the_exact_bytes() {
    let e = special();
    for (name, raw) in [
        ("space", &b"/tmp/mntfix/base/with space"[..]),
        ("tab", b"/tmp/mntfix/base/with\ttab"),
        ("newline", b"/tmp/mntfix/base/with\nnewline"),
        ("backslash", b"/tmp/mntfix/base/back\\slash"),
        ("non-utf8", b"/tmp/mntfix/base/\xffnonutf8"),
    ] {
        let m = at(&e, raw);
        assert_eq!(m.fs_type, "tmpfs", "{name}: fs type");
        assert_eq!(m.parent_id, 63, "{name}: parent is the base tmpfs");
    }
}

#[test]
fn escaped_sources_decode_and_empty_sources_are_none() {
    let e = special();
    assert_eq!(
        at(&e, b"/tmp/mntfix/base/with space").source.as_deref(),
        Some("src with space")
    );
    assert_eq!(
        at(&e, b"/tmp/mntfix/base/back\\slash").source.as_deref(),
        Some("bs\\fs")
    );
    assert_eq!(
        at(&e, b"/tmp/mntfix/base/empty").source,
        None,
        "tmpfs mounted with an empty source"
    );
}

#[test]
fn bind_mount_of_a_subtree_keeps_the_device_and_the_decoded_root() {
    let e = special();
    let base = at(&e, b"/tmp/mntfix/base");
    let bind = at(&e, b"/tmp/mntfix/base/bind");
    assert_eq!(
        bind.dev, base.dev,
        "a bind mount shares its superblock's device"
    );
    assert_eq!(bind.root, Path::new("/sub"));
    let sub = at(&e, b"/tmp/mntfix/base/subbind");
    assert_eq!(sub.root, Path::new("/sub/dir with space"));
    assert!(
        sub.is_read_only(),
        "remounted bind,ro: per-mount ro expected"
    );
    assert!(!sub.is_super_read_only(), "the superblock stays rw");
    for f in ["nosuid", "nodev", "noexec", "relatime"] {
        assert!(sub.mount_flag(f), "{f} expected in {}", sub.mount_options);
    }
    assert_eq!(sub.super_option("size").as_deref(), Some("4096k"));
}

#[test]
fn propagation_tags_are_typed() {
    let e = special();
    assert_eq!(
        at(&e, b"/tmp/mntfix/base/shared").optional,
        vec![OptionalField::Shared(1)]
    );
    assert_eq!(at(&e, b"/tmp/mntfix/base/slave").master_group(), Some(1));
    let both = at(&e, b"/tmp/mntfix/base/slaveshared");
    assert_eq!(
        both.optional,
        vec![OptionalField::Shared(2), OptionalField::Master(1)]
    );
    assert!(at(&e, b"/tmp/mntfix/base/unb").is_unbindable());
    assert!(
        at(&e, b"/tmp/mntfix/base").optional.is_empty(),
        "private mounts have no tags"
    );
}

#[test]
fn overlay_options_with_escaped_commas_stay_one_option() {
    let e = special();
    let ov = at(&e, b"/tmp/mntfix/base/ov2/merged");
    assert_eq!(ov.fs_type, "overlay");
    assert_eq!(
        ov.super_option("lowerdir").as_deref(),
        Some("/tmp/mntfix/base/ov2/low\\,er x"),
        "\\054 must not split the lowerdir value"
    );
    assert_eq!(
        ov.super_option("upperdir").as_deref(),
        Some("/tmp/mntfix/base/ov2/upper")
    );
    assert!(ov.super_flag("rw"));
}

#[test]
fn read_only_tmpfs_is_read_only_both_ways() {
    let ro = at(&special(), b"/tmp/mntfix/base/ro");
    assert!(ro.is_read_only() && ro.is_super_read_only());
    assert_eq!(ro.dev.major, 0, "tmpfs has an anonymous device");
}

#[test]
fn borrowed_entries_decode_lazily_to_the_same_values() {
    for line in SPECIAL.split_inclusive(|&b| b == b'\n') {
        let e = parse_line(line).expect("real line parses");
        let owned = e.to_owned();
        assert_eq!(e.mount_point.to_path_buf(), owned.mount_point);
        assert!(e
            .mount_point
            .eq_decoded(owned.mount_point.as_os_str().as_bytes()));
        assert_eq!(e.optional().collect::<Vec<_>>(), owned.optional);
    }
}

#[test]
fn owned_entries_print_back_to_the_kernel_bytes() {
    for line in SPECIAL.split_inclusive(|&b| b == b'\n') {
        let m = parse_line(line).unwrap().to_owned();
        let mut printed = m.to_line();
        printed.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&printed),
            String::from_utf8_lossy(line),
            "re-printing a parsed line should give the kernel's bytes"
        );
    }
}

#[test]
fn truncated_final_line_is_an_error_for_that_line_only() {
    let cut = &SPECIAL[..SPECIAL.len() - 10];
    let t = parse_table(cut);
    let lines = SPECIAL.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(t.entries.len(), lines - 1, "all complete lines still parse");
    assert_eq!(t.errors.len(), 1);
    assert_eq!(t.errors[0].line, lines);
    assert_eq!(t.errors[0].kind, ParseErrorKind::Truncated);
}

#[test]
fn a_cut_that_looks_valid_is_still_rejected() {
    // Cut inside the super options: "rw,size=4096k" -> "rw,size=40"; syntactically fine.
    let line = b"63 43 0:39 / /tmp/mntfix/base rw,relatime - tmpfs rdsfix rw,size=40";
    assert!(parse_line(line).is_ok(), "parse_line alone cannot know");
    let t = parse_table(line);
    assert!(
        t.entries.is_empty(),
        "parse_table must not accept it: {:?}",
        t.entries
    );
    assert_eq!(t.errors[0].kind, ParseErrorKind::Truncated);
}

#[test]
fn malformed_lines_name_their_line_number_and_reason() {
    let input = b"22 27 0:21 / /proc rw - proc proc rw\n\
        x 27 0:21 / /a rw - proc proc rw\n\
        22 27 0-21 / /b rw - proc proc rw\n\
        22 27 0:21 / /c rw shared:1 proc proc rw\n\
        22 27 0:21 / /d rw - proc proc rw extra\n\
        22 27 0:21 / rel rw - proc proc rw\n\
        22 27 0:21 / /e rw - proc\n\
        \n";
    let t = parse_table(input);
    assert_eq!(t.entries.len(), 1);
    let kinds: Vec<_> = t.errors.iter().map(|e| (e.line, e.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (
                2,
                ParseErrorKind::BadNumber {
                    field: "mount id",
                    text: "x".into()
                }
            ),
            (3, ParseErrorKind::BadDevice("0-21".into())),
            (4, ParseErrorKind::MissingSeparator),
            (5, ParseErrorKind::TrailingFields(1)),
            (6, ParseErrorKind::RelativeMountPoint("rel".into())),
            (7, ParseErrorKind::MissingField("mount source")),
            (8, ParseErrorKind::Empty),
        ]
    );
    assert!(
        t.errors[0].to_string().contains("line 2"),
        "{}",
        t.errors[0]
    );
}

#[test]
fn device_numbers_are_parsed_exactly() {
    let e = parse_line(b"1 2 259:1048575 / /x rw - ext4 /dev/nvme0n1 rw\n").unwrap();
    assert_eq!(e.dev, DevNum::new(259, 1_048_575));
    assert!(
        parse_line(b"1 2 259:4294967296 / /x rw - ext4 /dev/x rw").is_err(),
        "minor overflow"
    );
}

#[test]
fn path_bytes_survive_as_os_strings() {
    let e = parse_line(b"1 2 0:1 / /a\\377b rw - tmpfs t rw")
        .unwrap()
        .to_owned();
    assert_eq!(e.mount_point.as_os_str(), OsStr::from_bytes(b"/a\xffb"));
}

#[test]
fn doubled_spaces_between_optional_fields_do_not_shift_them() {
    let e = parse_line(b"1 2 0:1 / /x rw  shared:7 - tmpfs t rw").unwrap();
    assert_eq!(
        e.optional().collect::<Vec<_>>(),
        vec![OptionalField::Shared(7)]
    );
}
