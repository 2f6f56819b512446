//! Encoding packets into a write buffer.
//!
//! Every body is described once, against a `Sink`: a counting sink gives lengths (remaining
//! length, property length, `encoded_len`) and `BytesMut` writes the bytes, so the two cannot
//! disagree and properties need no scratch buffer. 5.0 acknowledgements use their short forms when
//! the reason is Success and there are no properties, which makes decode-then-encode of canonical
//! input give back the same bytes.

use crate::decode::kind;
use crate::packet::*;
use crate::properties::*;
use crate::string::ByteStr;
use bytes::{Bytes, BytesMut};

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

impl<'a> PublishHead<'a> {
    /// The head of `publish` as it stands, its own properties included.
    pub fn of(publish: &'a Publish) -> PublishHead<'a> {
        PublishHead {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: &publish.topic,
            packet_id: publish.packet_id,
            properties: &publish.properties,
            topic_alias: publish.properties.topic_alias,
            message_expiry_interval: publish.properties.message_expiry_interval,
            subscription_identifiers: &publish.properties.subscription_identifiers,
            payload_len: publish.payload.len(),
        }
    }
}

/// Writes the fixed header and variable header of a PUBLISH; the caller writes `payload_len`
/// payload bytes after it. Properties are written only for 5.0. DUP is written only for QoS 1
/// and 2 (MQTT-3.3.1-2), so a message downgraded to QoS 0 for one subscriber stays valid.
///
/// # Panics
/// If the topic or a property string is longer than 65,535 bytes, or the packet longer than
/// 268,435,455 bytes: the wire cannot express either.
#[inline]
pub fn encode_publish_head(head: &PublishHead<'_>, protocol: Protocol, buf: &mut BytesMut) {
    // The hot path of fan-out: lengths are computed directly rather than through a counting
    // pass, and the header is written with fixed-size stores.
    let props_len = publish_properties_len(head, protocol);
    let remaining = publish_remaining_len(head, protocol, props_len);
    let mut first = (kind::PUBLISH << 4) | ((head.qos as u8) << 1) | u8::from(head.retain);
    if head.dup && head.qos != QoS::AtMostOnce {
        first |= 0b1000;
    }
    let topic_len = u16::try_from(head.topic.len()).expect("topic longer than 65,535 bytes");
    // Room for the payload too, so the caller's append does not grow the buffer a second time.
    buf.reserve(1 + varint_len(remaining) + remaining);
    if remaining < 128 {
        // First byte, one-byte remaining length and topic length in one store.
        let [hi, lo] = topic_len.to_be_bytes();
        buf.extend_from_slice(&[first, remaining as u8, hi, lo]);
    } else {
        buf.extend_from_slice(&[first]);
        buf.varint(remaining);
        buf.extend_from_slice(&topic_len.to_be_bytes());
    }
    buf.extend_from_slice(head.topic.as_bytes());
    if head.qos != QoS::AtMostOnce {
        buf.extend_from_slice(&head.packet_id.to_be_bytes());
    }
    if protocol.is_v5() {
        buf.varint(props_len);
        HeadProperties(head).visit(buf);
    }
}

/// The whole size of a PUBLISH described by `head` (fixed header, variable header, payload), so the
/// broker can skip a subscriber whose Maximum Packet Size it would exceed (MQTT-3.1.2-24).
pub fn publish_head_len(head: &PublishHead<'_>, protocol: Protocol) -> usize {
    let remaining = publish_remaining_len(head, protocol, publish_properties_len(head, protocol));
    1 + varint_len(remaining) + remaining
}

fn publish_properties_len(head: &PublishHead<'_>, protocol: Protocol) -> usize {
    if protocol.is_v5() {
        properties_len(&HeadProperties(head))
    } else {
        0
    }
}

/// Topic, packet identifier, properties and payload.
fn publish_remaining_len(head: &PublishHead<'_>, protocol: Protocol, props_len: usize) -> usize {
    let mut len = 2 + head.topic.len() + head.payload_len;
    if head.qos != QoS::AtMostOnce {
        len += 2;
    }
    if protocol.is_v5() {
        len += varint_len(props_len) + props_len;
    }
    len
}

/// Writes `packet` as `protocol` speaks it. 5.0-only fields are left out for 3.x. A CONNECT is
/// written at its own `protocol` field's level, since it is the packet that sets the level.
///
/// # Panics
/// If a string or binary field is longer than 65,535 bytes, or the packet longer than
/// 268,435,455 bytes: the wire cannot express either.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    if let Packet::Publish(publish) = packet {
        encode_publish_head(&PublishHead::of(publish), protocol, buf);
        buf.extend_from_slice(&publish.payload);
        return;
    }
    let remaining = body_len(packet, protocol);
    buf.reserve(1 + varint_len(remaining) + remaining);
    buf.extend_from_slice(&[first_byte(packet)]);
    buf.varint(remaining);
    body(packet, protocol, buf);
}

/// The whole size `packet` takes on the wire, for Maximum Packet Size checks.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    if let Packet::Publish(publish) = packet {
        return publish_head_len(&PublishHead::of(publish), protocol);
    }
    let remaining = body_len(packet, protocol);
    1 + varint_len(remaining) + remaining
}

fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    let mut count = Count::default();
    body(packet, protocol, &mut count);
    count.len
}

fn first_byte(packet: &Packet) -> u8 {
    let (ptype, flags) = match packet {
        Packet::Connect(_) => (kind::CONNECT, 0),
        Packet::ConnAck(_) => (kind::CONNACK, 0),
        Packet::Publish(p) => {
            let dup = u8::from(p.dup && p.qos != QoS::AtMostOnce);
            (
                kind::PUBLISH,
                (dup << 3) | ((p.qos as u8) << 1) | u8::from(p.retain),
            )
        }
        Packet::PubAck(_) => (kind::PUBACK, 0),
        Packet::PubRec(_) => (kind::PUBREC, 0),
        Packet::PubRel(_) => (kind::PUBREL, 0b0010),
        Packet::PubComp(_) => (kind::PUBCOMP, 0),
        Packet::Subscribe(_) => (kind::SUBSCRIBE, 0b0010),
        Packet::SubAck(_) => (kind::SUBACK, 0),
        Packet::Unsubscribe(_) => (kind::UNSUBSCRIBE, 0b0010),
        Packet::UnsubAck(_) => (kind::UNSUBACK, 0),
        Packet::PingReq => (kind::PINGREQ, 0),
        Packet::PingResp => (kind::PINGRESP, 0),
        Packet::Disconnect(_) => (kind::DISCONNECT, 0),
        Packet::Auth(_) => (kind::AUTH, 0),
    };
    (ptype << 4) | flags
}

/// Everything after the fixed header, for every packet but PUBLISH.
fn body<S: Sink>(packet: &Packet, protocol: Protocol, s: &mut S) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => connect_body(c, s),
        Packet::ConnAck(c) => {
            s.u8(u8::from(c.session_present));
            s.u8(c.code.0);
            if v5 {
                s.properties(&c.properties);
            }
        }
        Packet::Publish(p) => {
            // Not reached: `encode` and `encoded_len` take PUBLISH through its head.
            let head = PublishHead::of(p);
            s.string(head.topic);
            if head.qos != QoS::AtMostOnce {
                s.u16(head.packet_id);
            }
            if v5 {
                s.properties(&HeadProperties(&head));
            }
            s.raw(&p.payload);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            s.u16(r.packet_id);
            if v5 {
                short_reason(r.reason, &r.properties, s);
            }
        }
        Packet::Subscribe(sub) => {
            s.u16(sub.packet_id);
            if v5 {
                s.properties(&sub.properties);
            }
            for (filter, options) in &sub.filters {
                s.string(filter);
                s.u8(options_byte(options, protocol));
            }
        }
        Packet::SubAck(ack) => {
            s.u16(ack.packet_id);
            if v5 {
                s.properties(&ack.properties);
            }
            for code in &ack.return_codes {
                s.u8(code.0);
            }
        }
        Packet::Unsubscribe(unsub) => {
            s.u16(unsub.packet_id);
            if v5 {
                s.properties(&unsub.properties);
            }
            for filter in &unsub.filters {
                s.string(filter);
            }
        }
        Packet::UnsubAck(ack) => {
            s.u16(ack.packet_id);
            if v5 {
                s.properties(&ack.properties);
                for code in &ack.reason_codes {
                    s.u8(code.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                short_reason(d.reason, &d.properties, s);
            }
        }
        Packet::Auth(a) => short_reason(a.reason, &a.properties, s),
    }
}

/// The 5.0 short forms: nothing for Success without properties, the reason alone without
/// properties, else both (sections 3.4.2.1, 3.14.2.1, 3.15.2.1).
fn short_reason<S: Sink, P: Properties>(reason: crate::ReasonCode, properties: &P, s: &mut S) {
    let props_len = properties_len(properties);
    if props_len == 0 {
        if reason.0 != 0 {
            s.u8(reason.0);
        }
        return;
    }
    s.u8(reason.0);
    s.varint(props_len);
    properties.visit(s);
}

fn options_byte(o: &SubscriptionOptions, protocol: Protocol) -> u8 {
    let qos = o.qos as u8;
    if !protocol.is_v5() {
        return qos;
    }
    qos | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn connect_body<S: Sink>(c: &Connect, s: &mut S) {
    let v5 = c.protocol.is_v5();
    match c.protocol {
        Protocol::V3_1 => s.string("MQIsdp"),
        Protocol::V3_1_1 | Protocol::V5 => s.string("MQTT"),
    }
    s.u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0x04 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        s.properties(&c.properties);
    }
    s.string(&c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            s.properties(&will.properties);
        }
        s.string(&will.topic);
        s.binary(&will.payload);
    }
    if let Some(username) = &c.username {
        s.string(username);
    }
    if let Some(password) = &c.password {
        s.binary(password);
    }
}

/// Variable byte integer size (section 1.5.5).
fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

const MAX_VARINT: usize = 268_435_455;

/// Writes `v` as a variable byte integer into `out` (at least 4 bytes); returns the bytes used.
#[inline]
fn write_varint(out: &mut [u8], v: usize) -> usize {
    assert!(
        v <= MAX_VARINT,
        "packet or property section longer than 268,435,455 bytes"
    );
    let mut v = v;
    let mut i = 0;
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Where a body goes: counted or written.
trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn raw(&mut self, b: &[u8]);
    fn varint(&mut self, v: usize);

    #[inline(always)]
    fn binary(&mut self, b: &[u8]) {
        let len = u16::try_from(b.len()).expect("string or binary field longer than 65,535 bytes");
        self.u16(len);
        self.raw(b);
    }

    #[inline(always)]
    fn string(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }

    /// Property Length then the properties.
    fn properties<P: Properties>(&mut self, p: &P)
    where
        Self: Sized,
    {
        self.varint(properties_len(p));
        p.visit(self);
    }

    #[inline(always)]
    fn prop_u8(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.u8(id);
            self.u8(v);
        }
    }

    #[inline(always)]
    fn prop_bool(&mut self, id: u8, v: Option<bool>) {
        self.prop_u8(id, v.map(u8::from));
    }

    #[inline(always)]
    fn prop_u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.u8(id);
            self.u16(v);
        }
    }

    #[inline(always)]
    fn prop_u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.u8(id);
            self.u32(v);
        }
    }

    #[inline(always)]
    fn prop_varint(&mut self, id: u8, v: u32) {
        self.u8(id);
        self.varint(v as usize);
    }

    #[inline(always)]
    fn prop_str(&mut self, id: u8, v: Option<&ByteStr>) {
        if let Some(v) = v {
            self.u8(id);
            self.string(v);
        }
    }

    #[inline(always)]
    fn prop_bin(&mut self, id: u8, v: Option<&Bytes>) {
        if let Some(v) = v {
            self.u8(id);
            self.binary(v);
        }
    }

    #[inline(always)]
    fn user_properties(&mut self, list: &UserProperties) {
        for (k, v) in list {
            self.u8(id::USER_PROPERTY);
            self.string(k);
            self.string(v);
        }
    }
}

/// Counts bytes; used for every length prefix before the bytes are written.
#[derive(Default)]
struct Count {
    len: usize,
}

impl Sink for Count {
    /// One visit instead of the default's two (length, then contents): counting a property set
    /// needs only its length.
    #[inline(always)]
    fn properties<P: Properties>(&mut self, p: &P) {
        let len = properties_len(p);
        self.len += varint_len(len) + len;
    }

    #[inline(always)]
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    #[inline(always)]
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    #[inline(always)]
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    #[inline(always)]
    fn raw(&mut self, b: &[u8]) {
        self.len += b.len();
    }
    #[inline(always)]
    fn varint(&mut self, v: usize) {
        self.len += varint_len(v);
    }
}

// Fixed-size writes go through `extend_from_slice` with a constant length, which inlines to a
// store; `BufMut::put_u16` and friends reach `BytesMut::put_slice`, which is not inlined and
// copies with a `memcpy` call (seen in the CONNECT encode profile).
impl Sink for BytesMut {
    #[inline(always)]
    fn u8(&mut self, v: u8) {
        self.extend_from_slice(&[v]);
    }
    #[inline(always)]
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    #[inline(always)]
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    #[inline(always)]
    fn raw(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    #[inline(always)]
    fn varint(&mut self, v: usize) {
        if v < 128 {
            // Most property sections and many packets: one byte, no scratch copy.
            self.extend_from_slice(&[v as u8]);
            return;
        }
        let mut bytes = [0u8; 4];
        let n = write_varint(&mut bytes, v);
        self.extend_from_slice(&bytes[..n]);
    }
}

/// A property set, written in ascending identifier order.
trait Properties {
    fn visit<S: Sink>(&self, s: &mut S);
}

fn properties_len<P: Properties>(p: &P) -> usize {
    let mut count = Count::default();
    p.visit(&mut count);
    count.len
}

impl Properties for ConnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        s.prop_str(
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        s.prop_bin(id::AUTHENTICATION_DATA, self.authentication_data.as_ref());
        s.prop_u8(
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        s.prop_u8(
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        s.prop_u16(id::RECEIVE_MAXIMUM, self.receive_maximum);
        s.prop_u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        s.user_properties(&self.user_properties);
        s.prop_u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
    }
}

impl Properties for WillProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u8(id::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        s.prop_u32(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        s.prop_str(id::CONTENT_TYPE, self.content_type.as_ref());
        s.prop_str(id::RESPONSE_TOPIC, self.response_topic.as_ref());
        s.prop_bin(id::CORRELATION_DATA, self.correlation_data.as_ref());
        s.prop_u32(id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        s.user_properties(&self.user_properties);
    }
}

impl Properties for ConnAckProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        s.prop_str(
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        );
        s.prop_u16(id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        s.prop_str(
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        s.prop_bin(id::AUTHENTICATION_DATA, self.authentication_data.as_ref());
        s.prop_str(id::RESPONSE_INFORMATION, self.response_information.as_ref());
        s.prop_str(id::SERVER_REFERENCE, self.server_reference.as_ref());
        s.prop_str(id::REASON_STRING, self.reason_string.as_ref());
        s.prop_u16(id::RECEIVE_MAXIMUM, self.receive_maximum);
        s.prop_u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        s.prop_u8(id::MAXIMUM_QOS, self.maximum_qos);
        s.prop_bool(id::RETAIN_AVAILABLE, self.retain_available);
        s.user_properties(&self.user_properties);
        s.prop_u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        s.prop_bool(
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        s.prop_bool(
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        s.prop_bool(
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}

/// A PUBLISH head's properties: alias, expiry and subscription identifiers come from the head.
struct HeadProperties<'h, 'a>(&'h PublishHead<'a>);

impl Properties for HeadProperties<'_, '_> {
    fn visit<S: Sink>(&self, s: &mut S) {
        let head = self.0;
        let p = head.properties;
        s.prop_u8(id::PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
        s.prop_u32(id::MESSAGE_EXPIRY_INTERVAL, head.message_expiry_interval);
        s.prop_str(id::CONTENT_TYPE, p.content_type.as_ref());
        s.prop_str(id::RESPONSE_TOPIC, p.response_topic.as_ref());
        s.prop_bin(id::CORRELATION_DATA, p.correlation_data.as_ref());
        for &sid in head.subscription_identifiers {
            s.prop_varint(id::SUBSCRIPTION_IDENTIFIER, sid);
        }
        s.prop_u16(id::TOPIC_ALIAS, head.topic_alias);
        s.user_properties(&p.user_properties);
    }
}

impl Properties for AckProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_str(id::REASON_STRING, self.reason_string.as_ref());
        s.user_properties(&self.user_properties);
    }
}

impl Properties for SubscribeProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        if let Some(sid) = self.subscription_identifier {
            s.prop_varint(id::SUBSCRIPTION_IDENTIFIER, sid);
        }
        s.user_properties(&self.user_properties);
    }
}

impl Properties for UnsubscribeProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.user_properties(&self.user_properties);
    }
}

impl Properties for DisconnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        s.prop_str(id::SERVER_REFERENCE, self.server_reference.as_ref());
        s.prop_str(id::REASON_STRING, self.reason_string.as_ref());
        s.user_properties(&self.user_properties);
    }
}

impl Properties for AuthProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        s.prop_str(
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        s.prop_bin(id::AUTHENTICATION_DATA, self.authentication_data.as_ref());
        s.prop_str(id::REASON_STRING, self.reason_string.as_ref());
        s.user_properties(&self.user_properties);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_the_written_size() {
        for v in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut buf = BytesMut::new();
            buf.varint(v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn publish_head_then_payload_equals_encode() {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            topic: ByteStr::from("a/b"),
            packet_id: 7,
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        };
        let mut whole = BytesMut::new();
        encode(&Packet::Publish(publish.clone()), Protocol::V5, &mut whole);
        let mut split = BytesMut::new();
        encode_publish_head(&PublishHead::of(&publish), Protocol::V5, &mut split);
        split.extend_from_slice(&publish.payload);
        assert_eq!(whole, split);
        assert_eq!(
            publish_head_len(&PublishHead::of(&publish), Protocol::V5),
            whole.len()
        );
    }
}
