//! Counters the broker keeps for logs, `$SYS` and metrics. Relaxed atomics: each is a tally,
//! never used to order other memory.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct Stats {
    /// Messages accepted for routing (client publishes, wills, in-process publishes).
    pub messages_received: AtomicU64,
    /// PUBLISH packets written to clients.
    pub messages_sent: AtomicU64,
    /// Deliveries dropped: queue full, offline QoS 0, too large for the client.
    pub messages_dropped: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_current: AtomicU64,
}
