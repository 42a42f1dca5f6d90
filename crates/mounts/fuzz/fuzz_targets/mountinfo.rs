//! Fuzz the mountinfo parser: it must never panic, must account for every line, and every
//! entry it accepts must print back to a line that parses to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rds_mounts::mountinfo::{parse_line, parse_table, unescape};

fuzz_target!(|data: &[u8]| {
    let table = parse_table(data);
    let lines = data.split_inclusive(|&b| b == b'\n').count();
    assert_eq!(table.entries.len() + table.errors.len(), lines);
    for e in &table.entries {
        let mut line = e.to_line();
        line.push(b'\n');
        let again = parse_line(&line).expect("a printed entry parses").to_owned();
        assert!(again.same_mount_state(e), "{e:?} printed as {line:?} parsed as {again:?}");
    }
    let _ = unescape(data);
});
