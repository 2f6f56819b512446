//! Test infrastructure for the cluster tests (crates/pigeon/tests/cluster.rs): real processes on
//! loopback and clients that speak to them byte for byte.
//!
//! # Layout
//! - `procs`: redis-server, Pigeon nodes, aedes nodes, the PHP and Python injectors
//! - `mqtt`: an MQTT 3.1.1/5.0 client over pigeon-codec with bounded waits
//! - `resp`: a RESP client to inject bus messages and watch what nodes publish
//! - `msgpack`: the encoder/decoder for bus envelopes
#![allow(dead_code, unreachable_pub)]

pub mod mqtt;
pub mod msgpack;
pub mod procs;
pub mod resp;
