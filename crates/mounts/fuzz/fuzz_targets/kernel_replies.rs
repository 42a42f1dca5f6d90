//! Fuzz the decoders of kernel replies (statmount buffers, fanotify event streams): they must
//! never panic or read out of bounds, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rds_mounts::fuzzing::{decode_fanotify, decode_statmount};

fuzz_target!(|data: &[u8]| {
    let _ = decode_statmount(data);
    let mut out = Vec::new();
    decode_fanotify(data, &mut out);
});
