//! Property tests: the decoder never panics, never loops, and round-trips what it is given.

use proptest::prelude::*;
use rds_fserror::parse::{encode, events, ErrorInfo, Fsid};
use rds_fserror::sys::{FAN_FS_ERROR, FAN_NOFD};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Each yielded item consumes at least one metadata header, so the count is bounded.
        let n = events(&bytes).count();
        prop_assert!(n <= bytes.len() / 24 + 1, "{n} items from {} bytes", bytes.len());
    }

    #[test]
    fn decoder_never_panics_on_mutated_valid_events(
        errno in any::<i32>(), count in any::<u32>(), a in any::<i32>(), b in any::<i32>(),
        handle in proptest::collection::vec(any::<u8>(), 0..64),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let mut buf = encode::event(FAN_FS_ERROR, FAN_NOFD, 0,
            &[encode::fid(Fsid([a, b]), 1, &handle), encode::error(errno, count)]);
        buf.extend(buf.clone());
        for (at, v) in flips {
            let i = at % buf.len();
            buf[i] = v;
        }
        let end = cut % (buf.len() + 1);
        let _ = events(&buf[..end]).count();
    }

    #[test]
    fn well_formed_events_round_trip(
        errno in any::<i32>(), count in any::<u32>(), a in any::<i32>(), b in any::<i32>(),
        handle in proptest::collection::vec(any::<u8>(), 0..128),
        n in 1usize..8,
    ) {
        let one = encode::event(FAN_FS_ERROR, FAN_NOFD, 0,
            &[encode::error(errno, count), encode::fid(Fsid([a, b]), 1, &handle)]);
        let buf: Vec<u8> = std::iter::repeat_n(one, n).flatten().collect();
        let got: Vec<_> = events(&buf).collect();
        prop_assert_eq!(got.len(), n);
        for ev in got {
            let ev = ev.expect("well-formed event decodes");
            prop_assert_eq!(ev.fsid, Some(Fsid([a, b])));
            prop_assert_eq!(ev.error, Some(ErrorInfo { errno, count }));
        }
    }
}
