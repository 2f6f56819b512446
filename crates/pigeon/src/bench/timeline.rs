//! The run's clock and measured window, payload time stamps, and the pacer behind `--rate`.
//!
//! All connections of a run share one `Instant` (the epoch) and stamp each payload with the
//! nanoseconds since it, so publisher and subscriber need no clock agreement, and a receiver can
//! tell a message sent in the measured window `[window_start, window_end)` from a warmup one.

use std::time::Duration;
use tokio::time::Instant;

/// Bytes at the front of every payload: the send time, big-endian nanoseconds since the epoch.
pub(crate) const STAMP_LEN: usize = 8;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    epoch: Instant,
    /// Nanoseconds since the epoch.
    pub(crate) window_start: u64,
    /// Nanoseconds since the epoch.
    pub(crate) window_end: u64,
}

impl Timeline {
    /// Starts the clock now: warmup first, then the measured window.
    pub(crate) fn start(warmup: Duration, duration: Duration) -> Timeline {
        let window_start = warmup.as_nanos() as u64;
        Timeline {
            epoch: Instant::now(),
            window_start,
            window_end: window_start + duration.as_nanos() as u64,
        }
    }

    /// Nanoseconds since the epoch.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn in_window(&self, stamp: u64) -> bool {
        (self.window_start..self.window_end).contains(&stamp)
    }

    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// The stamp at the front of `payload`; `None` for a payload that is not ours (too short).
pub(crate) fn read_stamp(payload: &[u8]) -> Option<u64> {
    let head: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// Schedules messages at a fixed rate: message `k` is due at `start + k * period`.
///
/// A message's stamp is its due time, not the time it left: when the sender falls behind (a full
/// QoS 1 window, a busy core), the wait counts as latency instead of silently lowering the offered
/// rate (the "coordinated omission" trap).
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    start: u64,
    period: f64,
    issued: u64,
}

impl Pacer {
    /// `start` in nanoseconds since the epoch; `rate` in messages per second (positive).
    pub(crate) fn new(start: u64, rate: f64) -> Pacer {
        Pacer {
            start,
            period: 1e9 / rate,
            issued: 0,
        }
    }

    fn due_at(&self, k: u64) -> u64 {
        self.start + (k as f64 * self.period) as u64
    }

    /// Messages due by `now` and not taken yet.
    pub(crate) fn due(&self, now: u64) -> u64 {
        if now < self.start {
            return 0;
        }
        let due = ((now - self.start) as f64 / self.period) as u64 + 1;
        due.saturating_sub(self.issued)
    }

    /// Takes the next message and returns its due time, which is its stamp.
    pub(crate) fn take(&mut self) -> u64 {
        let at = self.due_at(self.issued);
        self.issued += 1;
        at
    }

    /// When the next message is due.
    pub(crate) fn next_due(&self) -> u64 {
        self.due_at(self.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_releases_messages_on_schedule() {
        // 1000 msg/s from t = 5 ms: one message per millisecond.
        let mut p = Pacer::new(5_000_000, 1000.0);
        assert_eq!(p.due(4_999_999), 0);
        assert_eq!(p.due(5_000_000), 1);
        assert_eq!(p.due(7_500_000), 3);
        assert_eq!(p.take(), 5_000_000);
        assert_eq!(p.take(), 6_000_000);
        assert_eq!(p.due(7_500_000), 1);
        assert_eq!(p.next_due(), 7_000_000);
    }

    #[test]
    fn stamps_round_trip() {
        let mut payload = 123_456_789u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0; 8]);
        assert_eq!(read_stamp(&payload), Some(123_456_789));
        assert_eq!(read_stamp(&[1, 2, 3]), None);
    }

    #[test]
    fn window_is_half_open() {
        let t = Timeline::start(Duration::from_secs(1), Duration::from_secs(2));
        assert!(!t.in_window(999_999_999));
        assert!(t.in_window(1_000_000_000));
        assert!(!t.in_window(3_000_000_000));
    }
}
