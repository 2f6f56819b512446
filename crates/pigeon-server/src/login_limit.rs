//! Failed-login limiting per client IP address.
//!
//! After `max_failures` refused logins from one address within `window`, that address is banned
//! for `ban`: its CONNECTs are refused (0x8A Banned / 3.1.1 return code 5) before any backend
//! is asked, so a password guesser costs the broker one map lookup per try. A login that
//! succeeds clears the address's count.
//! Memory is bounded: at most `capacity` addresses are tracked. When the map is full, entries
//! whose window and ban have passed go first, then entries that are not banned; if every entry is
//! a live ban, new addresses are not tracked until bans expire (limiting then fails open for them,
//! never closed for everyone). The map sits behind a `std::sync::Mutex`, held for a lookup and
//! never across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::time::{Duration, Instant};

/// Addresses tracked at most.
pub(crate) const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    ban: Duration,
    capacity: usize,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl LoginLimiter {
    /// `max_failures` 0 turns limiting off.
    pub(crate) fn new(
        max_failures: u32,
        window: Duration,
        ban: Duration,
        capacity: usize,
    ) -> LoginLimiter {
        LoginLimiter {
            max_failures,
            window,
            ban,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` stays banned, if it is.
    pub(crate) fn banned(&self, ip: IpAddr) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let now = Instant::now();
        let entries = self.entries();
        let until = entries.get(&ip)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a refused login; true when this one starts a ban.
    pub(crate) fn failed(&self, ip: IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let now = Instant::now();
        let mut entries = self.entries();
        if !entries.contains_key(&ip) && entries.len() >= self.capacity {
            self.make_room(&mut entries, now);
            if entries.len() >= self.capacity {
                return false;
            }
        }
        let entry = entries.entry(ip).or_insert(Entry {
            failures: 0,
            window_start: now,
            banned_until: None,
        });
        if entry.banned_until.is_some_and(|until| until <= now)
            || now.duration_since(entry.window_start) > self.window
        {
            *entry = Entry {
                failures: 0,
                window_start: now,
                banned_until: None,
            };
        }
        entry.failures += 1;
        if entry.failures >= self.max_failures && entry.banned_until.is_none() {
            entry.banned_until = Some(now + self.ban);
            return true;
        }
        false
    }

    /// A login from `ip` succeeded: its count starts over.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let mut entries = self.entries();
        if entries.get(&ip).is_some_and(|e| e.banned_until.is_none()) {
            entries.remove(&ip);
        }
    }

    fn make_room(&self, entries: &mut HashMap<IpAddr, Entry>, now: Instant) {
        let window = self.window;
        entries.retain(|_, e| match e.banned_until {
            Some(until) => until > now,
            None => now.duration_since(e.window_start) <= window,
        });
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.banned_until.is_some());
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn bans_after_failures_within_the_window_then_forgives() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60), Duration::from_secs(30), 16);
        assert!(!limiter.failed(ip(1)));
        assert!(!limiter.failed(ip(1)));
        assert!(limiter.failed(ip(1)));
        assert!(limiter.banned(ip(1)).is_some());
        assert!(limiter.banned(ip(2)).is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(limiter.banned(ip(1)).is_none());
        // Failures spread beyond the window never add up to a ban.
        for _ in 0..5 {
            assert!(!limiter.failed(ip(3)));
            assert!(!limiter.failed(ip(3)));
            tokio::time::advance(Duration::from_secs(61)).await;
        }
        // Success starts the count over.
        limiter.failed(ip(4));
        limiter.failed(ip(4));
        limiter.succeeded(ip(4));
        assert!(!limiter.failed(ip(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60), Duration::from_secs(60), 100);
        for n in 0..10_000 {
            limiter.failed(ip(n));
        }
        assert!(limiter.tracked() <= 100);
        // Live bans are kept when room is made.
        let limiter = LoginLimiter::new(1, Duration::from_secs(60), Duration::from_secs(60), 10);
        for n in 0..10 {
            assert!(limiter.failed(ip(n)));
        }
        assert!(
            !limiter.failed(ip(99)),
            "not tracked while every entry is a live ban"
        );
        assert!(limiter.banned(ip(0)).is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limiter.failed(ip(99)));
    }
}
