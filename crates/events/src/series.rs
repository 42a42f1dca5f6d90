//! Keeps repeats of one event in one Kubernetes event series.
//!
//! kube's `Recorder` turns a repeat into a PATCH of the first event (`series.count` + 1) when its
//! key matches, but in kube 5 that key is (type, action, reason, reporter, regarding, related):
//! **the note is not in it**, and the patched event keeps the *first* note. With a single
//! `Recorder`, "recovery attempt 3 failed: EIO" would be folded into the series of "attempt 1
//! failed: timeout" and users would never read it. So the sink keeps one `Recorder` per
//! (object, reason, type, action) together with the note it last published: the same note again
//! reuses that `Recorder` (series, PATCH); a different note replaces it with a fresh one (a new
//! event, CREATE). Entries expire with kube's own series cache lifetime, after which kube would
//! start a new event anyway.

use std::time::{Duration, Instant};

use crate::cache::TtlCache;
use crate::event::{EventReason, EventType};
use crate::target::EventTarget;

/// kube-runtime's series cache lifetime (`CACHE_TTL`, 6 minutes).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// What makes two events candidates for one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The involved object.
    pub target: EventTarget,
    /// Why.
    pub reason: EventReason,
    /// Severity.
    pub type_: EventType,
    /// What was being done.
    pub action: String,
}

/// Publisher per series key, generic over the publisher so the choice is testable without kube.
#[derive(Debug)]
pub struct SeriesBook<R> {
    slots: TtlCache<SeriesKey, (String, R)>,
}

impl<R: Clone> SeriesBook<R> {
    /// At most `capacity` series tracked at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: TtlCache::new(SERIES_TTL, capacity),
        }
    }

    /// The publisher to use for an event with `key` and `note`: the existing one when it last
    /// published this very note (a repeat), otherwise a new one from `make`.
    pub fn publisher_for(
        &mut self,
        key: &SeriesKey,
        note: &str,
        now: Instant,
        make: impl FnOnce() -> R,
    ) -> R {
        if let Some((last_note, publisher)) = self.slots.get(key, now) {
            if last_note == note {
                let p = publisher.clone();
                self.slots.touch(key, now);
                return p;
            }
        }
        let p = make();
        self.slots
            .insert(key.clone(), (note.to_owned(), p.clone()), now);
        p
    }

    /// Forgets the series for `key` (after a failed publish: the next event starts afresh rather
    /// than patching an event that may not exist).
    pub fn forget(&mut self, key: &SeriesKey) {
        self.slots.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ClaimRef;
    use std::cell::Cell;

    fn key(reason: EventReason) -> SeriesKey {
        SeriesKey {
            target: EventTarget::Claim(ClaimRef {
                namespace: "ns".into(),
                name: "data".into(),
                uid: Some("u".into()),
            }),
            reason,
            type_: EventType::Warning,
            action: "Monitor".into(),
        }
    }

    /// Hands out publisher ids 1, 2, 3, … so tests can see when a new one was made.
    fn counter() -> impl Fn() -> u32 {
        let next = Cell::new(0);
        move || {
            next.set(next.get() + 1);
            next.get()
        }
    }

    #[test]
    fn same_note_reuses_the_publisher_so_repeats_form_a_series() {
        let t0 = Instant::now();
        let mk = counter();
        let mut b = SeriesBook::new(16);
        let k = key(EventReason::StaleMountDetected);
        let first = b.publisher_for(&k, "dead", t0, &mk);
        let again = b.publisher_for(&k, "dead", t0 + Duration::from_secs(1), &mk);
        assert_eq!(
            (first, again),
            (1, 1),
            "an identical repeat must reuse publisher 1"
        );
    }

    #[test]
    fn different_note_gets_a_fresh_publisher_so_the_new_text_is_shown() {
        let t0 = Instant::now();
        let mk = counter();
        let mut b = SeriesBook::new(16);
        let k = key(EventReason::RecoveryFailed);
        assert_eq!(b.publisher_for(&k, "attempt 1: timeout", t0, &mk), 1);
        assert_eq!(
            b.publisher_for(&k, "attempt 3: EIO", t0, &mk),
            2,
            "a new note must not be folded into the old series"
        );
        assert_eq!(
            b.publisher_for(&k, "attempt 3: EIO", t0, &mk),
            2,
            "then it repeats"
        );
    }

    #[test]
    fn different_reasons_on_one_object_are_separate_series() {
        let t0 = Instant::now();
        let mk = counter();
        let mut b = SeriesBook::new(16);
        let a = b.publisher_for(&key(EventReason::MountStorm), "n", t0, &mk);
        let c = b.publisher_for(&key(EventReason::MountFailure), "n", t0, &mk);
        assert_ne!(a, c, "distinct reasons must not share a series");
    }

    #[test]
    fn series_expires_with_kubes_cache_lifetime() {
        let t0 = Instant::now();
        let mk = counter();
        let mut b = SeriesBook::new(16);
        let k = key(EventReason::MountStorm);
        b.publisher_for(&k, "n", t0, &mk);
        assert_eq!(
            b.publisher_for(&k, "n", t0 + SERIES_TTL, &mk),
            2,
            "expired: new series"
        );
    }

    #[test]
    fn forget_starts_a_new_series() {
        let t0 = Instant::now();
        let mk = counter();
        let mut b = SeriesBook::new(16);
        let k = key(EventReason::MountStorm);
        b.publisher_for(&k, "n", t0, &mk);
        b.forget(&k);
        assert_eq!(
            b.publisher_for(&k, "n", t0, &mk),
            2,
            "after forget: new series"
        );
    }
}
