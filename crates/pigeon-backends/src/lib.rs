//! Adapters behind the ports of `pigeon-core`.
//!
//! # Layout
//! - `embedded`: the default store, a redb file in the data directory.
//! - `record`: the byte layout of stored sessions, queue entries and messages.

pub mod embedded;
mod record;

pub use embedded::EmbeddedStore;
