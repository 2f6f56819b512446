//! `SeenIds`: the envelope ids seen lately, so a message that reaches us more than once (one copy
//! per matching Redis subscription, or published twice) is delivered once.
//!
//! mqemitter-redis keeps the same memory in an LRU of 10 000 ids for 60 s. Here ids are kept in
//! arrival order: a set answers "seen?", a queue says which id expires next, and both shrink
//! from the front. Each id is pushed and popped once, so `first_time` is O(1) amortized.
//!
//! The TTL runs from the first sighting; later copies do not extend it. At capacity the oldest id
//! is dropped even if its TTL still runs: memory stays at `capacity` ids, and a copy of a dropped
//! id that arrives later is delivered again.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// As mqemitter-redis (`ttlLRUCache`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Ten times mqemitter-redis's 10 000: a busy bus turns over more than 10 000 ids a minute.
pub const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct SeenIds {
    ttl: Duration,
    capacity: usize,
    /// Exactly the ids in `order`. The set (a randomly keyed SipHash) and the queue share each
    /// id's one allocation through the `Arc`.
    seen: HashSet<Arc<[u8]>>,
    /// Oldest first, with the time each id was first seen.
    order: VecDeque<(Instant, Arc<[u8]>)>,
}

impl SeenIds {
    /// Remembers up to `capacity` ids for `ttl` each. `capacity` 0 remembers nothing.
    pub fn new(ttl: Duration, capacity: usize) -> SeenIds {
        SeenIds {
            ttl,
            capacity,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `id` is seen within the TTL, false for a copy. `now` should not go
    /// back in time; if it does, nothing expires until it passes the newest id's time again.
    pub fn first_time(&mut self, id: &[u8], now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains(id) {
            return false;
        }
        if self.capacity == 0 {
            return true;
        }
        while self.order.len() >= self.capacity {
            self.pop_oldest();
        }
        let id: Arc<[u8]> = Arc::from(id);
        self.seen.insert(Arc::clone(&id));
        self.order.push_back((now, id));
        true
    }

    /// How many ids are remembered (expired ones count until the next `first_time`).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((seen_at, _)) = self.order.front() {
            if now.saturating_duration_since(*seen_at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.seen.remove(&id);
        }
    }
}

impl Default for SeenIds {
    fn default() -> SeenIds {
        SeenIds::new(DEFAULT_TTL, DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_within_the_ttl_is_dropped() {
        let mut ids = SeenIds::default();
        let t0 = Instant::now();
        assert!(ids.first_time(b"a", t0));
        assert!(!ids.first_time(b"a", t0));
        assert!(!ids.first_time(b"a", t0 + Duration::from_secs(59)));
        assert!(ids.first_time(b"b", t0 + Duration::from_secs(59)));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn an_id_is_new_again_once_its_ttl_has_run() {
        let mut ids = SeenIds::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        assert!(ids.first_time(b"a", t0));
        assert!(ids.first_time(b"b", t0 + Duration::from_secs(30)));
        // Copies do not extend the TTL.
        assert!(!ids.first_time(b"a", t0 + Duration::from_secs(59)));
        assert!(ids.first_time(b"a", t0 + Duration::from_secs(60)));
        assert!(!ids.first_time(b"b", t0 + Duration::from_secs(60)));
        assert!(!ids.first_time(b"a", t0 + Duration::from_secs(119)));
        assert!(ids.first_time(b"b", t0 + Duration::from_secs(120)));
    }

    #[test]
    fn at_capacity_the_oldest_id_goes() {
        let mut ids = SeenIds::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert!(ids.first_time(b"a", t0));
        assert!(ids.first_time(b"b", t0));
        assert!(ids.first_time(b"c", t0));
        assert_eq!(ids.len(), 2);
        assert!(!ids.first_time(b"b", t0));
        assert!(!ids.first_time(b"c", t0));
        assert!(ids.first_time(b"a", t0), "a was dropped for c");
        assert!(!ids.first_time(b"c", t0));
    }

    #[test]
    fn memory_stays_within_capacity() {
        let mut ids = SeenIds::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        for n in 0..50_000u32 {
            let now = t0 + Duration::from_millis(u64::from(n));
            assert!(ids.first_time(&n.to_be_bytes(), now));
            assert!(ids.len() <= 1000);
            assert_eq!(ids.seen.len(), ids.order.len());
        }
        assert!(ids.order.capacity() < 2048, "{}", ids.order.capacity());
        assert!(ids.seen.capacity() < 4096, "{}", ids.seen.capacity());
        // With a short TTL, expiry keeps it smaller still.
        let mut short = SeenIds::new(Duration::from_millis(10), 1000);
        for n in 0..50_000u32 {
            let now = t0 + Duration::from_millis(u64::from(n));
            short.first_time(&n.to_be_bytes(), now);
            assert!(short.len() <= 10);
        }
    }

    #[test]
    fn zero_capacity_remembers_nothing_and_time_going_back_is_harmless() {
        let mut none = SeenIds::new(Duration::from_secs(60), 0);
        let t0 = Instant::now();
        assert!(none.first_time(b"a", t0));
        assert!(none.first_time(b"a", t0));
        assert!(none.is_empty());

        let mut ids = SeenIds::default();
        let later = t0 + Duration::from_secs(5);
        assert!(ids.first_time(b"a", later));
        assert!(!ids.first_time(b"a", t0));
        assert!(ids.first_time(b"b", t0));
    }
}
