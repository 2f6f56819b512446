//! Encoding packets into a write buffer.

use crate::packet::{Packet, Protocol, QoS};
use crate::properties::PublishProperties;
use bytes::BytesMut;

/// Everything of an outgoing PUBLISH but its payload, borrowed, so the broker can send one shared
/// message to many subscribers, each with its own packet id, QoS, flags, alias and subscription
/// identifiers, without cloning properties or copying the payload.
#[derive(Debug, Clone, Copy)]
pub struct PublishHead<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when `topic_alias` names an alias this connection already set.
    pub topic: &'a str,
    /// Ignored for QoS 0.
    pub packet_id: u16,
    /// The pass-through properties; its `topic_alias`, `message_expiry_interval` and
    /// `subscription_identifiers` are ignored in favour of the three fields below.
    pub properties: &'a PublishProperties,
    pub topic_alias: Option<u16>,
    pub message_expiry_interval: Option<u32>,
    pub subscription_identifiers: &'a [u32],
    pub payload_len: usize,
}

/// Writes the fixed header and variable header of a PUBLISH; the caller writes `payload_len`
/// payload bytes after it. Properties are written only for 5.0.
pub fn encode_publish_head(head: &PublishHead<'_>, protocol: Protocol, buf: &mut BytesMut) {
    let _ = (head, protocol, buf);
}

/// Writes `packet` as `protocol` speaks it. 5.0-only fields are left out for 3.x.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    let _ = (packet, protocol, buf);
}

/// The whole size `packet` takes on the wire, for Maximum Packet Size checks.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let _ = (packet, protocol);
    0
}

/// The whole size of a PUBLISH described by `head` (fixed header, variable header, payload), so the
/// broker can skip a subscriber whose Maximum Packet Size it would exceed (MQTT-3.1.2-24).
pub fn publish_head_len(head: &PublishHead<'_>, protocol: Protocol) -> usize {
    let _ = (head, protocol);
    0
}
