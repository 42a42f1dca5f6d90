//! The kernel-reply decoders on arbitrary and kernel-shaped input.

use proptest::prelude::*;

proptest! {
    #[test]
    fn statmount_decoder_never_panics_on_arbitrary_replies(mut b in prop::collection::vec(any::<u8>(), 0..1200), size in 0u32..1400) {
        if b.len() >= 4 {
            b[..4].copy_from_slice(&size.to_ne_bytes());
        }
        let _ = crate::sys::decode_statmount(&b);
    }

    #[test]
    fn fanotify_decoder_never_panics_and_finds_at_most_one_event_per_record(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut out = Vec::new();
        crate::sys::decode_fanotify(&b, &mut out);
        prop_assert!(out.len() <= b.len() / 24 * 8 + 1);
    }
}

#[test]
fn a_kernel_shaped_fanotify_record_decodes_to_its_mount_id() {
    // 24-byte metadata + 16-byte mount info record, as measured on Linux 6.18.
    let mut ev = Vec::new();
    ev.extend_from_slice(&40u32.to_ne_bytes()); // event_len
    ev.extend_from_slice(&[3, 0]); // vers, reserved
    ev.extend_from_slice(&24u16.to_ne_bytes()); // metadata_len
    ev.extend_from_slice(&crate::sys::FAN_MNT_DETACH.to_ne_bytes());
    ev.extend_from_slice(&(-1i32).to_ne_bytes()); // FAN_NOFD
    ev.extend_from_slice(&0i32.to_ne_bytes()); // pid
    ev.extend_from_slice(&[crate::sys::FAN_EVENT_INFO_TYPE_MNT, 0]);
    ev.extend_from_slice(&16u16.to_ne_bytes());
    ev.extend_from_slice(&[0; 4]);
    ev.extend_from_slice(&0x1_0000_0123u64.to_ne_bytes());
    let mut out = Vec::new();
    crate::sys::decode_fanotify(&ev, &mut out);
    assert_eq!(out, vec![crate::sys::FanMountEvent::Detach(0x1_0000_0123)]);
}
