//! Uevent parser on real kernel fixtures and malformed input (pure, no privileges).

use proptest::prelude::*;
use rds_devices::uevent::{
    self, encode_kernel, encode_libudev, murmur_hash2, parse, Action, Origin, ParseError,
    LIBUDEV_HEADER_LEN, MAX_UEVENT_LEN,
};
use rds_types::{DevNum, DiskSeq};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

#[test]
fn kernel_loop_add_fixture_yields_device_number_and_diskseq() {
    let ev = parse(&fixture("loop_add.bin")).expect("real kernel add parses");
    assert_eq!(ev.origin, Origin::Kernel);
    assert_eq!(ev.action, Action::Add);
    assert_eq!(ev.devpath, "/devices/virtual/block/loop200");
    assert_eq!(ev.subsystem, "block");
    assert_eq!(ev.devtype.as_deref(), Some("disk"));
    assert_eq!(ev.devname.as_deref(), Some("loop200"));
    assert_eq!(ev.dev, Some(DevNum::new(7, 200)));
    assert_eq!(ev.diskseq, Some(DiskSeq(29)));
    assert_eq!(ev.seqnum, Some(860));
}

#[test]
fn kernel_loop_change_and_remove_fixtures_carry_their_diskseq() {
    let cfg = parse(&fixture("loop_configure_change.bin")).unwrap();
    assert_eq!(
        (cfg.action.clone(), cfg.diskseq),
        (Action::Change, Some(DiskSeq(30)))
    );
    let media = parse(&fixture("loop_clr_fd_media_change.bin")).unwrap();
    assert_eq!(media.get("DISK_MEDIA_CHANGE"), Some("1"));
    let rm = parse(&fixture("loop_remove.bin")).unwrap();
    assert_eq!(
        (rm.action, rm.diskseq, rm.seqnum),
        (Action::Remove, Some(DiskSeq(31)), Some(865))
    );
}

#[test]
fn properties_keep_kernel_order() {
    let ev = parse(&fixture("loop_add.bin")).unwrap();
    let keys: Vec<&str> = ev.props.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "ACTION",
            "DEVPATH",
            "SUBSYSTEM",
            "MAJOR",
            "MINOR",
            "DEVNAME",
            "DEVTYPE",
            "DISKSEQ",
            "SEQNUM"
        ]
    );
}

#[test]
fn nvme_controller_fixtures_expose_transport_properties() {
    let ev = parse(&fixture("nvme_ctrl_add.bin")).unwrap();
    assert_eq!(ev.subsystem, "nvme");
    assert_eq!(ev.kernel_name(), "nvme0");
    assert_eq!(ev.get("NVME_TRTYPE"), Some("tcp"));
    assert_eq!(ev.get("NVME_TRADDR"), Some("10.0.0.5"));
    let ch = parse(&fixture("nvme_ctrl_change_connected.bin")).unwrap();
    assert_eq!(ch.action, Action::Change);
    assert_eq!(ch.get("NVME_EVENT"), Some("connected"));
    assert_eq!(
        parse(&fixture("nvme_ctrl_remove.bin")).unwrap().action,
        Action::Remove
    );
}

#[test]
fn nvme_namespace_fixtures_parse_as_block_disks() {
    for (f, dev, seq) in [
        ("nvme_ns_add.bin", DevNum::new(259, 3), 41),
        ("nvme_ns_remove.bin", DevNum::new(259, 3), 41),
        ("nvme_head_add.bin", DevNum::new(259, 1), 40),
    ] {
        let ev = parse(&fixture(f)).unwrap();
        assert_eq!(ev.subsystem, "block", "{f}");
        assert_eq!(ev.dev, Some(dev), "{f}");
        assert_eq!(ev.diskseq, Some(DiskSeq(seq)), "{f}");
    }
    let sub = parse(&fixture("nvme_subsys_add.bin")).unwrap();
    assert_eq!(sub.subsystem, "nvme-subsystem");
}

#[test]
fn truncated_kernel_message_keeps_complete_properties() {
    let full = fixture("loop_add.bin");
    // Cut in the middle of "SEQNUM=860".
    let cut = full.len() - 3;
    let ev = parse(&full[..cut]).expect("a message cut in its last value still parses");
    assert_eq!(ev.dev, Some(DevNum::new(7, 200)));
    assert_eq!(ev.seqnum, Some(8), "the cut value is what was received");
}

#[test]
fn truncated_before_subsystem_is_missing_a_field() {
    let full = fixture("loop_add.bin");
    let at = full
        .windows(9)
        .position(|w| w == b"SUBSYSTEM")
        .expect("fixture has SUBSYSTEM");
    assert_eq!(parse(&full[..at]), Err(ParseError::Missing("SUBSYSTEM")));
}

#[test]
fn oversized_message_is_rejected() {
    let mut big = fixture("loop_add.bin");
    big.resize(MAX_UEVENT_LEN + 1, b'x');
    assert_eq!(parse(&big), Err(ParseError::Oversized(MAX_UEVENT_LEN + 1)));
}

#[test]
fn entries_without_equals_sign_are_skipped() {
    let msg = b"add@/devices/virtual/block/loop9\0ACTION=add\0GARBAGE\0DEVPATH=/devices/virtual/block/loop9\0SUBSYSTEM=block\0=novalue\0MAJOR=7\0MINOR=9\0";
    let ev = parse(msg).expect("stray entries do not spoil the message");
    assert_eq!(ev.dev, Some(DevNum::new(7, 9)));
    assert!(ev.get("GARBAGE").is_none());
    assert_eq!(ev.props.len(), 5);
}

#[test]
fn non_utf8_identity_field_rejects_the_message() {
    let msg = b"add@/devices/virtual/block/loop9\0ACTION=add\0DEVPATH=/devices/virtual/block/loop9\0SUBSYSTEM=block\0DEVNAME=loop\xff\0";
    assert_eq!(parse(msg), Err(ParseError::NotUtf8("DEVNAME")));
}

#[test]
fn non_utf8_informational_value_is_kept_lossily() {
    let msg = b"add@/devices/virtual/block/loop9\0ACTION=add\0DEVPATH=/devices/virtual/block/loop9\0SUBSYSTEM=block\0PARTNAME=a\xffb\0";
    let ev = parse(msg).unwrap();
    assert_eq!(ev.get("PARTNAME"), Some("a\u{fffd}b"));
}

#[test]
fn message_without_header_is_rejected() {
    assert_eq!(parse(b"ACTION=add\0"), Err(ParseError::NoHeader));
    assert_eq!(parse(b""), Err(ParseError::Empty));
}

#[test]
fn bad_device_numbers_are_reported() {
    let msg = b"add@/x\0ACTION=add\0DEVPATH=/x\0SUBSYSTEM=block\0MAJOR=seven\0MINOR=1\0";
    assert!(matches!(
        parse(msg),
        Err(ParseError::Invalid { field: "MAJOR", .. })
    ));
    let msg = b"add@/x\0ACTION=add\0DEVPATH=/x\0SUBSYSTEM=block\0MINOR=1\0";
    assert_eq!(parse(msg), Err(ParseError::Missing("MAJOR")));
}

fn libudev_loop_props() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ACTION", "add"),
        ("DEVPATH", "/devices/virtual/block/loop200"),
        ("SUBSYSTEM", "block"),
        ("DEVNAME", "/dev/loop200"),
        ("DEVTYPE", "disk"),
        ("DISKSEQ", "29"),
        ("SEQNUM", "860"),
        ("MAJOR", "7"),
        ("MINOR", "200"),
        ("USEC_INITIALIZED", "123456"),
    ]
}

#[test]
fn libudev_header_is_laid_out_as_libudev_expects() {
    let msg = encode_libudev(&libudev_loop_props());
    assert_eq!(&msg[..8], b"libudev\0");
    assert_eq!(&msg[8..12], &0xfeed_cafeu32.to_be_bytes());
    assert_eq!(u32::from_ne_bytes(msg[12..16].try_into().unwrap()), 40);
    assert_eq!(u32::from_ne_bytes(msg[16..20].try_into().unwrap()), 40);
    assert_eq!(
        u32::from_ne_bytes(msg[20..24].try_into().unwrap()) as usize,
        msg.len() - LIBUDEV_HEADER_LEN
    );
    assert_eq!(&msg[24..28], &murmur_hash2(b"block").to_be_bytes());
    assert_eq!(&msg[28..32], &murmur_hash2(b"disk").to_be_bytes());
    assert_eq!(&msg[32..40], &[0u8; 8]);
}

#[test]
fn libudev_message_parses_with_udev_devname() {
    let ev = parse(&encode_libudev(&libudev_loop_props())).unwrap();
    assert_eq!(ev.origin, Origin::Udev);
    assert_eq!(ev.devname.as_deref(), Some("/dev/loop200"));
    assert_eq!(
        ev.kernel_name(),
        "loop200",
        "udev's DEVNAME is a path; the kernel name is its last component"
    );
    assert_eq!(ev.dev, Some(DevNum::new(7, 200)));
    assert_eq!(ev.diskseq, Some(DiskSeq(29)));
}

#[test]
fn libudev_truncated_header_and_bad_magic_are_rejected() {
    let msg = encode_libudev(&libudev_loop_props());
    assert_eq!(parse(&msg[..20]), Err(ParseError::TruncatedHeader(20)));
    let mut bad = msg.clone();
    bad[8] = 0;
    assert!(matches!(parse(&bad), Err(ParseError::BadMagic(_))));
    let mut short = msg.clone();
    short.truncate(msg.len() - 10);
    assert!(
        matches!(parse(&short), Err(ParseError::BadPropertiesRange { .. })),
        "properties length beyond the message must be refused"
    );
}

#[test]
fn murmur_hash2_matches_the_reference_implementation() {
    // Values of the canonical MurmurHash2(key, len, seed 0), as libudev computes them.
    assert_eq!(murmur_hash2(b""), 0);
    assert_eq!(murmur_hash2(b"block"), murmur_ref(b"block"));
    assert_eq!(
        murmur_hash2(b"nvme-subsystem"),
        murmur_ref(b"nvme-subsystem")
    );
}

/// A literal transcription of Austin Appleby's MurmurHash2 with a pointer-walking loop, as a
/// second implementation to compare against.
fn murmur_ref(key: &[u8]) -> u32 {
    let m: u32 = 0x5bd1e995;
    let mut len = key.len();
    let mut h: u32 = len as u32;
    let mut i = 0;
    while len >= 4 {
        let mut k = u32::from(key[i])
            | u32::from(key[i + 1]) << 8
            | u32::from(key[i + 2]) << 16
            | u32::from(key[i + 3]) << 24;
        k = k.wrapping_mul(m);
        k ^= k >> 24;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
        i += 4;
        len -= 4;
    }
    match len {
        3 => {
            h ^= u32::from(key[i + 2]) << 16;
            h ^= u32::from(key[i + 1]) << 8;
            h ^= u32::from(key[i]);
            h = h.wrapping_mul(m);
        }
        2 => {
            h ^= u32::from(key[i + 1]) << 8;
            h ^= u32::from(key[i]);
            h = h.wrapping_mul(m);
        }
        1 => {
            h ^= u32::from(key[i]);
            h = h.wrapping_mul(m);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h
}

proptest! {
    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn parser_never_panics_on_libudev_prefixed_bytes(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut msg = b"libudev\0".to_vec();
        msg.extend_from_slice(&tail);
        let _ = parse(&msg);
    }

    #[test]
    fn kernel_and_libudev_encodings_round_trip(
        name in "[a-z]{1,8}[0-9]{1,3}",
        major in 0u32..4096,
        minor in 0u32..1_000_000,
        seq in 1u64..u64::MAX,
        extra in proptest::collection::vec(("[A-Z_]{1,12}", "[ -~&&[^=]]{0,40}"), 0..8),
    ) {
        let devpath = format!("/devices/virtual/block/{name}");
        let (ma, mi, sq) = (major.to_string(), minor.to_string(), seq.to_string());
        let mut props: Vec<(&str, &str)> = vec![
            ("ACTION", "change"), ("DEVPATH", &devpath), ("SUBSYSTEM", "block"),
            ("MAJOR", &ma), ("MINOR", &mi), ("DISKSEQ", &sq), ("SEQNUM", &sq),
        ];
        let reserved = ["ACTION", "DEVPATH", "SUBSYSTEM", "MAJOR", "MINOR", "DISKSEQ", "SEQNUM", "DEVNAME", "DEVTYPE"];
        for (k, v) in &extra {
            if !reserved.contains(&k.as_str()) && !props.iter().any(|(pk, _)| pk == k) {
                props.push((k, v));
            }
        }
        for msg in [encode_kernel(&props), encode_libudev(&props)] {
            let ev = uevent::parse(&msg).expect("encoded message parses");
            prop_assert_eq!(ev.dev, Some(DevNum::new(major, minor)));
            prop_assert_eq!(ev.diskseq, Some(DiskSeq(seq)));
            let got: Vec<(&str, &str)> = ev.props.iter().collect();
            prop_assert_eq!(got, props.clone());
        }
    }
}
