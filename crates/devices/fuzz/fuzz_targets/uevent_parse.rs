//! `cargo +nightly fuzz run uevent_parse` (from crates/devices): the uevent parser must never
//! panic, and whatever it accepts must survive a re-encode/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rds_devices::uevent::{encode_libudev, parse, MAX_UEVENT_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = parse(data) {
        let props: Vec<(&str, &str)> = ev.props.iter().collect();
        let encoded = encode_libudev(&props);
        if encoded.len() > MAX_UEVENT_LEN {
            return; // lossy UTF-8 replacement or header-derived fields can grow a message
        }
        let again = parse(&encoded).expect("re-encoded uevent parses");
        assert_eq!(again.props, ev.props);
        assert_eq!(again.dev, ev.dev);
        assert_eq!(again.diskseq, ev.diskseq);
    }
});
