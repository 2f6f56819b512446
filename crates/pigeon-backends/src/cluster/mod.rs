//! The Redis bus shared with aedes nodes (mqemitter-redis) and with publishers that write its
//! format, such as the PHP backend.
//!
//! # Layout
//! - `wire`: the `{id, msg}` msgpack envelope, decoded from untrusted input and encoded the way
//!   aedes writes it.
//! - `pattern`: the Redis channel or glob pattern that carries the topics of one topic filter.
//! - `dedupe`: the envelope ids seen recently, so each message is delivered once.
//!
//! - `sessions`: session ownership in a shared Redis store, heartbeats, adoption of a dead
//!   node's sessions.
//! - `bus`: the adapter behind `ClusterBus`: Redis connections, outbox, routing of what arrives.
//!
//! Only `bus` does I/O; nothing else here does I/O or reads a clock: callers pass bytes and `Instant`s.

pub mod bus;
pub mod dedupe;
pub mod pattern;
pub mod sessions;
pub mod wire;
