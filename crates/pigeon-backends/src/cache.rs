//! `TtlCache`: answers of the external auth backends (HTTP, Redis, PostgreSQL, JWT grants) kept
//! for a time, so a PUBLISH checked again does not wait on the network.
//!
//! Bounded: at `max_entries` an insert first drops the expired entries of its shard, then, if
//! the shard is still full, one entry of it. The map is split in shards, each behind a
//! `std::sync::Mutex`: a lookup holds one shard's lock for a hash-map probe and never across an
//! `.await`, and connection tasks that look up different keys rarely meet on the same lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

struct Entry<V> {
    value: V,
    expires: Instant,
    /// A background refresh of this entry is under way (see `claim_refresh`).
    refreshing: bool,
}

pub(crate) struct TtlCache<K, V> {
    shards: Vec<Mutex<HashMap<K, Entry<V>>>>,
    hasher: RandomState,
    ttl: Duration,
    max_per_shard: usize,
}

/// A cached value and whether its time is still running.
pub(crate) struct Cached<V> {
    pub(crate) value: V,
    pub(crate) fresh: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// `ttl` zero: nothing is kept.
    pub(crate) fn new(ttl: Duration, max_entries: usize) -> TtlCache<K, V> {
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            ttl,
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while a shard was locked left a map in a valid state: keep using it.
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value while its time runs.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let shard = self.shard(key);
        shard
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.value.clone())
    }

    /// The value, fresh or expired (kept until evicted or replaced).
    pub(crate) fn get_any(&self, key: &K) -> Option<Cached<V>> {
        let now = Instant::now();
        let shard = self.shard(key);
        shard.get(key).map(|e| Cached {
            value: e.value.clone(),
            fresh: e.expires > now,
        })
    }

    /// Marks an expired entry as being refreshed; false if it is fresh, absent or already
    /// being refreshed, so one caller at a time starts a refresh.
    pub(crate) fn claim_refresh(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(e) if e.expires <= now && !e.refreshing => {
                e.refreshing = true;
                true
            }
            _ => false,
        }
    }

    /// Keeps `value` for the cache's TTL.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.insert_for(key, value, self.ttl);
    }

    /// Keeps `value` for `ttl` instead of the cache's TTL (a token's remaining lifetime; a
    /// failed lookup retried sooner).
    pub(crate) fn insert_for(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let expires = now + ttl;
        let mut shard = self.shard(&key);
        if shard.len() >= self.max_per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= self.max_per_shard {
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                value,
                expires,
                refreshing: false,
            },
        );
    }

    /// Forgets every entry (SIGHUP).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("not poisoned").len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let cache: TtlCache<u32, u32> = TtlCache::new(Duration::from_millis(30), 32);
        cache.insert(1, 10);
        assert_eq!(cache.get(&1), Some(10));
        for i in 0..1000 {
            cache.insert(i, i);
        }
        assert!(cache.len() <= 32, "{}", cache.len());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&999), None);
        let stale = cache.get_any(&999).expect("kept until replaced");
        assert!(!stale.fresh);
        assert!(cache.claim_refresh(&999));
        assert!(!cache.claim_refresh(&999), "one refresh at a time");
        cache.insert(999, 1);
        assert!(cache.get_any(&999).expect("present").fresh);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn zero_ttl_keeps_nothing() {
        let cache: TtlCache<u32, u32> = TtlCache::new(Duration::ZERO, 32);
        cache.insert(1, 1);
        assert_eq!(cache.get_any(&1).map(|c| c.value), None);
        assert!(!cache.enabled());
    }
}
