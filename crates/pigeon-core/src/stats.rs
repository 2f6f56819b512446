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
    /// The cluster bus: 1 while connected to Redis, else 0.
    pub bus_connected: AtomicU64,
    /// Messages this node put on the bus.
    pub bus_published: AtomicU64,
    /// Messages from the bus routed here (after dedupe).
    pub bus_received: AtomicU64,
    /// Bus messages seen again (same id) and dropped.
    pub bus_duplicates: AtomicU64,
    /// Bus messages that could not be read (not msgpack, no `msg`, bad topic...), dropped.
    pub bus_malformed: AtomicU64,
    /// Local messages that never reached the bus: its outbox was full during an outage.
    pub bus_dropped: AtomicU64,
    /// Times the bus connection was (re)established.
    pub bus_connects: AtomicU64,
}
