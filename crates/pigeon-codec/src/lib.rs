//! Sans-IO MQTT wire format for protocol levels 3 (3.1, "MQIsdp"), 4 (3.1.1) and 5 (5.0).
//!
//! # Layout
//! - `packet`: the fifteen control packets and their fields, one model for every level.
//! - `properties`: the MQTT 5 property sets, one struct per group of packets that share them.
//! - `reason`: reason codes, and the mapping to 3.1.1 CONNACK return codes.
//! - `decode`: `Decoder`, which takes bytes from a growing buffer; `Ok(None)` means "need more".
//! - `encode`: writes packets; a PUBLISH head can be written apart from its shared payload.
//! - `topic`: topic name and topic filter rules, shared with the broker.
//! - `error`: `DecodeError`, every malformed-packet rule mapped to the reason code it earns.
//!
//! Nothing here touches a socket or a clock. Payloads, topics and strings are `Bytes` views of the
//! read buffer: decoding never copies them.

mod decode;
mod encode;
mod error;
pub mod packet;
pub mod properties;
pub mod reason;
mod string;
pub mod topic;

pub use decode::Decoder;
pub use encode::{encode, encode_publish_head, encoded_len, publish_head_len, PublishHead};
pub use error::DecodeError;
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
pub use string::ByteStr;
