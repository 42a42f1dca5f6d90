//! Small bounded maps with expiry, time passed in. Used for the PV → PVC resolution (so every event
//! does not cost a GET) and for the per-object event series.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A map whose entries expire `ttl` after they were written, holding at most `capacity` entries
/// (the oldest written goes first).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    map: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash + Clone, V> TtlCache<K, V> {
    /// An empty cache. A capacity of 0 is treated as 1.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            map: HashMap::new(),
        }
    }

    /// The live value for `k`, if any.
    pub fn get(&self, k: &K, now: Instant) -> Option<&V> {
        self.map
            .get(k)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(v, _)| v)
    }

    /// Writes `v` for `k`, stamped `now`, making room if needed.
    pub fn insert(&mut self, k: K, v: V, now: Instant) {
        if !self.map.contains_key(&k) && self.map.len() >= self.capacity {
            let ttl = self.ttl;
            self.map
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.map.len() >= self.capacity {
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&oldest);
                }
            }
        }
        self.map.insert(k, (v, now));
    }

    /// Re-stamps a live entry as written `now`.
    pub fn touch(&mut self, k: &K, now: Instant) {
        if let Some((_, at)) = self.map.get_mut(k) {
            *at = now;
        }
    }

    /// Forgets `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    /// Entries held, expired ones included until they are pushed out.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_served_until_its_ttl_then_expires() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(60), 8);
        c.insert("pv", 1, t0);
        assert_eq!(
            c.get(&"pv", t0 + Duration::from_secs(59)),
            Some(&1),
            "live before ttl"
        );
        assert_eq!(
            c.get(&"pv", t0 + Duration::from_secs(60)),
            None,
            "expired at ttl"
        );
    }

    #[test]
    fn touch_extends_the_life_of_an_entry() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(60), 8);
        c.insert("pv", 1, t0);
        c.touch(&"pv", t0 + Duration::from_secs(50));
        assert_eq!(
            c.get(&"pv", t0 + Duration::from_secs(100)),
            Some(&1),
            "touched at 50 s"
        );
    }

    #[test]
    fn full_cache_drops_expired_entries_first_then_the_oldest() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = TtlCache::new(s(60), 2);
        c.insert("a", 1, t0);
        c.insert("b", 2, t0 + s(10));
        c.insert("c", 3, t0 + s(20));
        assert_eq!(c.len(), 2, "capacity must be respected");
        assert_eq!(
            c.get(&"a", t0 + s(20)),
            None,
            "the oldest entry must go first"
        );
        assert_eq!(c.get(&"b", t0 + s(20)), Some(&2));
        assert_eq!(c.get(&"c", t0 + s(20)), Some(&3));
    }

    #[test]
    fn rewriting_an_existing_key_never_evicts_another() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(60), 2);
        c.insert("a", 1, t0);
        c.insert("b", 2, t0);
        c.insert("a", 3, t0);
        assert_eq!((c.get(&"a", t0), c.get(&"b", t0)), (Some(&3), Some(&2)));
    }
}
