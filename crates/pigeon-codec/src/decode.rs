//! Decoding from a growing read buffer.
//!
//! The fixed header is checked as soon as its bytes arrive (packet type, reserved flags, size
//! limit), so an oversized or nonsensical packet is refused before its body is buffered. A whole
//! packet is then split off the buffer as one `Bytes`, and every string, binary field and payload
//! is a slice of it: decoding copies nothing. Rules that need state across packets (topic alias
//! ranges, receive maximum, packet identifiers in use) belong to the broker, not here.

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::*;
use crate::reason::ReasonCode;
use crate::string::ByteStr;
use crate::topic;
use bytes::{Buf, Bytes, BytesMut};

type Result<T> = std::result::Result<T, DecodeError>;

/// Packet type numbers (the high nibble of the first byte).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
    pub(crate) const AUTH: u8 = 15;
}

/// Decodes packets for one connection. It learns the protocol level from CONNECT (server side)
/// or is told it (client side), and refuses a packet larger than `max_packet_size` from its fixed
/// header alone.
#[derive(Debug, Clone)]
pub struct Decoder {
    protocol: Option<Protocol>,
    max_packet_size: u32,
    /// Set when the protocol was learned from a CONNECT on this decoder: a second CONNECT on the
    /// same connection is then refused (MQTT-3.1.0-2).
    learned_from_connect: bool,
    /// The protocol the last CONNECT named, kept even when the rest of that CONNECT is refused,
    /// so the server can answer a broken 5.0 CONNECT with a 5.0 CONNACK.
    connect_protocol: Option<Protocol>,
}

impl Decoder {
    /// Server side: the protocol is not known until CONNECT, the only packet accepted before it.
    pub fn new(max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: None,
            max_packet_size,
            learned_from_connect: false,
            connect_protocol: None,
        }
    }

    /// Client side, or a server that already read CONNECT.
    pub fn with_protocol(protocol: Protocol, max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: Some(protocol),
            max_packet_size,
            learned_from_connect: false,
            connect_protocol: None,
        }
    }

    /// Server side, after CONNECT was read (by another decoder): a second CONNECT is refused.
    pub fn after_connect(protocol: Protocol, max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: Some(protocol),
            max_packet_size,
            learned_from_connect: true,
            connect_protocol: None,
        }
    }

    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// The protocol named by the last CONNECT this decoder took in, whether or not the rest of
    /// it decoded.
    pub fn connect_protocol(&self) -> Option<Protocol> {
        self.connect_protocol
    }

    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Takes one whole packet off the front of `buf`. `Ok(None)`: not enough bytes yet (nothing is
    /// consumed). `Err`: the connection must close; with 5.0, after a DISCONNECT carrying
    /// `err.reason_code()`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let ptype = first >> 4;
        let flags = first & 0x0F;

        // Refuse on the first byte: a peer that does not open with CONNECT, or that sends a second
        // one, gains nothing by making us wait for the rest.
        match (self.protocol, ptype) {
            (None, kind::CONNECT) => {}
            (None, _) => {
                return Err(DecodeError::Protocol(
                    "first packet must be CONNECT [MQTT-3.1.0-1]",
                ))
            }
            (Some(_), kind::CONNECT) if self.learned_from_connect => {
                return Err(DecodeError::Protocol(
                    "second CONNECT on a connection [MQTT-3.1.0-2]",
                ));
            }
            (Some(_), _) => {}
        }
        // Before CONNECT only CONNECT gets this far, and its flag rule is the same at every level.
        let protocol = self.protocol.unwrap_or(Protocol::V5);
        check_fixed_header(ptype, flags, protocol)?;

        let max = self.max_packet_size;
        let (remaining, len_bytes) = match remaining_length(&buf[1..])? {
            Length::Complete { value, bytes } => (value, bytes),
            Length::Partial { at_least, bytes } => {
                // The continuation bit promises at least one more length byte.
                let size = 1 + bytes + 1 + at_least;
                if size > max as usize {
                    return Err(DecodeError::PacketTooLarge { size, max });
                }
                return Ok(None);
            }
        };
        let size = 1 + len_bytes + remaining;
        if size > max as usize {
            return Err(DecodeError::PacketTooLarge { size, max });
        }
        if buf.len() < size {
            return Ok(None);
        }

        // One `Bytes` for the packet; every field below is a reference-counted slice of it.
        let frame = buf.split_to(size).freeze();
        if ptype == kind::PUBLISH {
            // The hot path: built straight into the return value (a `Packet` is a few hundred
            // bytes, and each intermediate move showed as a memcpy in the decode profile).
            return read_publish(frame, 1 + len_bytes, flags, protocol);
        }
        let mut r = Reader {
            buf: &frame,
            pos: 1 + len_bytes,
            end: size,
        };
        let packet = match ptype {
            kind::CONNECT => {
                self.connect_protocol = named_protocol(&frame[1 + len_bytes..]);
                let connect = read_connect(&mut r)?;
                if self.protocol.is_none() {
                    self.protocol = Some(connect.protocol);
                    self.learned_from_connect = true;
                }
                Packet::Connect(Box::new(connect))
            }
            kind::CONNACK => Packet::ConnAck(read_connack(&mut r, protocol)?),
            kind::PUBACK => Packet::PubAck(read_pub_resp(&mut r, protocol)?),
            kind::PUBREC => Packet::PubRec(read_pub_resp(&mut r, protocol)?),
            kind::PUBREL => Packet::PubRel(read_pub_resp(&mut r, protocol)?),
            kind::PUBCOMP => Packet::PubComp(read_pub_resp(&mut r, protocol)?),
            kind::SUBSCRIBE => Packet::Subscribe(read_subscribe(&mut r, protocol)?),
            kind::SUBACK => Packet::SubAck(read_suback(&mut r, protocol)?),
            kind::UNSUBSCRIBE => Packet::Unsubscribe(read_unsubscribe(&mut r, protocol)?),
            kind::UNSUBACK => Packet::UnsubAck(read_unsuback(&mut r, protocol)?),
            kind::PINGREQ => Packet::PingReq,
            kind::PINGRESP => Packet::PingResp,
            kind::DISCONNECT => Packet::Disconnect(read_disconnect(&mut r, protocol)?),
            kind::AUTH => Packet::Auth(read_auth(&mut r)?),
            // Type 0 was refused with the fixed header, and PUBLISH returned above.
            _ => return Err(DecodeError::Malformed("reserved packet type 0")),
        };
        r.finish()?;
        Ok(Some(packet))
    }
}

/// The protocol a CONNECT's variable header names, before anything after the level is read.
fn named_protocol(body: &[u8]) -> Option<Protocol> {
    match body {
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, ..] => Some(Protocol::V3_1),
        [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Some(Protocol::V3_1_1),
        [0, 4, b'M', b'Q', b'T', b'T', 5, ..] => Some(Protocol::V5),
        _ => None,
    }
}

/// Packet type and the four flag bits (MQTT-2.1.3-1; PUBLISH flags in section 3.3.1).
fn check_fixed_header(ptype: u8, flags: u8, protocol: Protocol) -> Result<()> {
    match ptype {
        0 => Err(DecodeError::Malformed("reserved packet type 0")),
        kind::AUTH if !protocol.is_v5() => Err(DecodeError::Malformed(
            "packet type 15 (AUTH) exists only in 5.0",
        )),
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::Malformed(
                    "PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]",
                ));
            }
            Ok(())
        }
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE if flags != 0b0010 => Err(
            DecodeError::Malformed("reserved flags in fixed header [MQTT-2.1.3-1]"),
        ),
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Ok(()),
        _ if flags != 0 => Err(DecodeError::Malformed(
            "reserved flags in fixed header [MQTT-2.1.3-1]",
        )),
        _ => Ok(()),
    }
}

enum Length {
    Complete {
        value: usize,
        bytes: usize,
    },
    /// The bytes so far all carry the continuation bit; `at_least` is the value they add up to.
    Partial {
        at_least: usize,
        bytes: usize,
    },
}

/// The remaining length (a variable byte integer, at most four bytes) from the bytes after the
/// first one. Non-minimal encodings are accepted, as the 3.1.1 text and mosquitto allow.
fn remaining_length(bytes: &[u8]) -> Result<Length> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Length::Complete {
                value,
                bytes: i + 1,
            });
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "remaining length longer than four bytes (section 1.5.5)",
        ));
    }
    Ok(Length::Partial {
        at_least: value,
        bytes: bytes.len(),
    })
}

/// A cursor over one packet's bytes; reads past `end` are a body shorter than its contents.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

const SHORT: DecodeError = DecodeError::Malformed("packet shorter than its contents");
const BAD_STRING: DecodeError = DecodeError::Malformed(
    "string not well-formed UTF-8 or with U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2]",
);

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn has_more(&self) -> bool {
        self.pos < self.end
    }

    fn advance(&mut self, n: usize) -> Result<usize> {
        if self.remaining() < n {
            return Err(SHORT);
        }
        let at = self.pos;
        self.pos += n;
        Ok(at)
    }

    fn u8(&mut self) -> Result<u8> {
        let at = self.advance(1)?;
        Ok(self.buf[at])
    }

    fn u16(&mut self) -> Result<u16> {
        let at = self.advance(2)?;
        Ok(u16::from_be_bytes([self.buf[at], self.buf[at + 1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let at = self.advance(4)?;
        let b = &self.buf[at..at + 4];
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer (section 1.5.5), at most four bytes.
    fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than four bytes (section 1.5.5)",
        ))
    }

    /// The next `n` bytes as a slice of the packet (no copy).
    fn bytes(&mut self, n: usize) -> Result<Bytes> {
        let at = self.advance(n)?;
        Ok(self.buf.slice(at..at + n))
    }

    /// Binary Data: a two-byte length and that many bytes.
    fn binary(&mut self) -> Result<Bytes> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// A UTF-8 Encoded String.
    fn string(&mut self) -> Result<ByteStr> {
        ByteStr::from_utf8(self.binary()?).ok_or(BAD_STRING)
    }

    /// A sub-reader over the next `n` bytes.
    fn take(&mut self, n: usize) -> Result<Reader<'a>> {
        let at = self.advance(n)?;
        Ok(Reader {
            buf: self.buf,
            pos: at,
            end: at + n,
        })
    }

    /// The packet must end where its contents end.
    fn finish(&self) -> Result<()> {
        if self.has_more() {
            return Err(DecodeError::Malformed(
                "bytes after the end of the packet's contents",
            ));
        }
        Ok(())
    }

    fn packet_id(&mut self) -> Result<u16> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol(
                "packet identifier 0 [MQTT-2.2.1-3] (5.0), [MQTT-2.3.1-1] (3.1.1)",
            )),
            id => Ok(id),
        }
    }

    /// The Property Length and a reader over the properties it covers.
    fn properties(&mut self) -> Result<Reader<'a>> {
        let n = self.varint()?;
        self.take(n as usize)
            .map_err(|_| DecodeError::Malformed("property length beyond the end of the packet"))
    }

    fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Protocol(
                "a 0-or-1 property with another value",
            )),
        }
    }

    fn zero_or_one(&mut self) -> Result<u8> {
        self.flag().map(u8::from)
    }

    fn pair(&mut self) -> Result<(ByteStr, ByteStr)> {
        Ok((self.string()?, self.string()?))
    }

    /// A topic name as a property value (Response Topic): no wildcards, not empty.
    fn topic_name_property(&mut self) -> Result<ByteStr> {
        let t = self.string()?;
        if !topic::valid_topic_name(&t) {
            return Err(DecodeError::Protocol(
                "Response Topic is not a valid topic name [MQTT-3.3.2-14]",
            ));
        }
        Ok(t)
    }
}

const NOT_ALLOWED: DecodeError =
    DecodeError::Malformed("property identifier not valid for this packet type (section 2.2.2.2)");

/// Sets a property that may appear at most once.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(
            "property included more than once (section 2.2.2.2)",
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn non_zero_u16(v: u16, what: &'static str) -> Result<u16> {
    if v == 0 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

fn non_zero_u32(v: u32, what: &'static str) -> Result<u32> {
    if v == 0 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

const RECEIVE_MAXIMUM_ZERO: &str = "Receive Maximum of 0 (section 3.1.2.11.3)";
const MAXIMUM_PACKET_SIZE_ZERO: &str = "Maximum Packet Size of 0 (section 3.1.2.11.4)";
const AUTH_DATA_WITHOUT_METHOD: &str = "Authentication Data without Authentication Method";

fn read_connect_properties(r: &mut Reader<'_>) -> Result<ConnectProperties> {
    let mut p = ConnectProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
            id::RECEIVE_MAXIMUM => once(
                &mut p.receive_maximum,
                non_zero_u16(r.u16()?, RECEIVE_MAXIMUM_ZERO)?,
            )?,
            id::MAXIMUM_PACKET_SIZE => {
                once(
                    &mut p.maximum_packet_size,
                    non_zero_u32(r.u32()?, MAXIMUM_PACKET_SIZE_ZERO)?,
                )?;
            }
            id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?)?,
            id::REQUEST_RESPONSE_INFORMATION => {
                once(&mut p.request_response_information, r.zero_or_one()?)?
            }
            id::REQUEST_PROBLEM_INFORMATION => {
                once(&mut p.request_problem_information, r.zero_or_one()?)?
            }
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
            id::AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
            _ => return Err(NOT_ALLOWED),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(AUTH_DATA_WITHOUT_METHOD));
    }
    Ok(p)
}

fn read_will_properties(r: &mut Reader<'_>) -> Result<WillProperties> {
    let mut p = WillProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?)?,
            id::PAYLOAD_FORMAT_INDICATOR => {
                once(&mut p.payload_format_indicator, r.zero_or_one()?)?
            }
            id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?)?,
            id::CONTENT_TYPE => once(&mut p.content_type, r.string()?)?,
            id::RESPONSE_TOPIC => once(&mut p.response_topic, r.topic_name_property()?)?,
            id::CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?)?,
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

fn read_connack_properties(r: &mut Reader<'_>) -> Result<ConnAckProperties> {
    let mut p = ConnAckProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
            id::RECEIVE_MAXIMUM => once(
                &mut p.receive_maximum,
                non_zero_u16(r.u16()?, RECEIVE_MAXIMUM_ZERO)?,
            )?,
            id::MAXIMUM_QOS => once(&mut p.maximum_qos, r.zero_or_one()?)?,
            id::RETAIN_AVAILABLE => once(&mut p.retain_available, r.flag()?)?,
            id::MAXIMUM_PACKET_SIZE => {
                once(
                    &mut p.maximum_packet_size,
                    non_zero_u32(r.u32()?, MAXIMUM_PACKET_SIZE_ZERO)?,
                )?;
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => once(&mut p.assigned_client_identifier, r.string()?)?,
            id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?)?,
            id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.wildcard_subscription_available, r.flag()?)?
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                once(&mut p.subscription_identifiers_available, r.flag()?)?
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.shared_subscription_available, r.flag()?)?
            }
            id::SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?)?,
            id::RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?)?,
            id::SERVER_REFERENCE => once(&mut p.server_reference, r.string()?)?,
            id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
            id::AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
            _ => return Err(NOT_ALLOWED),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(AUTH_DATA_WITHOUT_METHOD));
    }
    Ok(p)
}

fn read_publish_properties(r: &mut Reader<'_>) -> Result<PublishProperties> {
    let mut p = PublishProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::PAYLOAD_FORMAT_INDICATOR => {
                once(&mut p.payload_format_indicator, r.zero_or_one()?)?
            }
            id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?)?,
            id::TOPIC_ALIAS => {
                let alias = r.u16()?;
                if alias == 0 {
                    // 0x94 as for an alias above the maximum, which is what mosquitto answers.
                    return Err(DecodeError::TopicAliasInvalid(
                        "Topic Alias of 0 [MQTT-3.3.2-8]",
                    ));
                }
                once(&mut p.topic_alias, alias)?;
            }
            id::RESPONSE_TOPIC => once(&mut p.response_topic, r.topic_name_property()?)?,
            id::CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?)?,
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let sid = non_zero_u32(
                    r.varint()?,
                    "Subscription Identifier of 0 (section 3.3.2.3.8)",
                )?;
                p.subscription_identifiers.push(sid);
            }
            id::CONTENT_TYPE => once(&mut p.content_type, r.string()?)?,
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

fn read_ack_properties(r: &mut Reader<'_>) -> Result<AckProperties> {
    let mut p = AckProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

fn read_subscribe_properties(r: &mut Reader<'_>) -> Result<SubscribeProperties> {
    let mut p = SubscribeProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::SUBSCRIPTION_IDENTIFIER => {
                let sid = non_zero_u32(
                    r.varint()?,
                    "Subscription Identifier of 0 (section 3.8.2.1.2)",
                )?;
                once(&mut p.subscription_identifier, sid)?;
            }
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

fn read_unsubscribe_properties(r: &mut Reader<'_>) -> Result<UnsubscribeProperties> {
    let mut p = UnsubscribeProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

fn read_disconnect_properties(r: &mut Reader<'_>) -> Result<DisconnectProperties> {
    let mut p = DisconnectProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
            id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            id::SERVER_REFERENCE => once(&mut p.server_reference, r.string()?)?,
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

fn read_auth_properties(r: &mut Reader<'_>) -> Result<AuthProperties> {
    let mut p = AuthProperties::default();
    let mut r = r.properties()?;
    while r.has_more() {
        match r.u8()? {
            id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
            id::AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
            id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
            id::USER_PROPERTY => p.user_properties.push(r.pair()?),
            _ => return Err(NOT_ALLOWED),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(AUTH_DATA_WITHOUT_METHOD));
    }
    Ok(p)
}

fn read_connect(r: &mut Reader<'_>) -> Result<Connect> {
    // The name is compared as raw bytes: a name that is not "MQTT"/"MQIsdp" is refused as such,
    // whatever its encoding.
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => Protocol::V3_1,
        (b"MQTT", 4) => Protocol::V3_1_1,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQTT" | b"MQIsdp", level) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::UnknownProtocolName),
    };

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed(
            "reserved flag in CONNECT is not 0 [MQTT-3.1.2-3]",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::Malformed(
            "Will QoS set without the Will Flag [MQTT-3.1.2-11] (5.0)",
        ));
    }
    if !will_flag && will_retain {
        return Err(DecodeError::Malformed(
            "Will Retain set without the Will Flag [MQTT-3.1.2-13] (5.0)",
        ));
    }
    let will_qos =
        QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("Will QoS 3 [MQTT-3.1.2-12] (5.0)"))?;
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::Protocol(
            "Password Flag set without the User Name Flag [MQTT-3.1.2-22] (3.1.1)",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        read_connect_properties(r)?
    } else {
        ConnectProperties::default()
    };

    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            read_will_properties(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::TopicNameInvalid(
                "empty Will Topic [MQTT-4.7.3-1]",
            ));
        }
        if !topic::valid_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid(
                "wildcard in the Will Topic (section 4.7.1)",
            ));
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn read_connack(r: &mut Reader<'_>, protocol: Protocol) -> Result<ConnAck> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed(
            "reserved Connect Acknowledge Flags are not 0 (section 3.2.2.1)",
        ));
    }
    let code = ReasonCode(r.u8()?);
    let properties = if protocol.is_v5() {
        read_connack_properties(r)?
    } else {
        ConnAckProperties::default()
    };
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code,
        properties,
    })
}

/// A whole PUBLISH from its frame; `start` is where the variable header begins.
fn read_publish(
    frame: Bytes,
    start: usize,
    flags: u8,
    protocol: Protocol,
) -> Result<Option<Packet>> {
    let mut reader = Reader {
        buf: &frame,
        pos: start,
        end: frame.len(),
    };
    let r = &mut reader;
    let dup = flags & 0b1000 != 0;
    // QoS 3 was refused with the fixed header.
    let qos = QoS::from_u8((flags >> 1) & 0b11)
        .ok_or(DecodeError::Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"))?;
    let retain = flags & 0b0001 != 0;
    let topic = r.string()?;
    if topic::has_wildcard(&topic) {
        return Err(DecodeError::TopicNameInvalid(
            "wildcard in a PUBLISH topic name [MQTT-3.3.2-2]",
        ));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if protocol.is_v5() {
        read_publish_properties(r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        if !protocol.is_v5() {
            return Err(DecodeError::TopicNameInvalid(
                "empty PUBLISH topic name [MQTT-4.7.3-1]",
            ));
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "empty PUBLISH topic name without a Topic Alias (section 3.3.2.1)",
            ));
        }
    }
    // The payload is the rest of the packet. Taking it by moving the frame in and advancing past
    // the header, instead of slicing and dropping the frame, saves two reference-count updates
    // on every PUBLISH.
    let payload_at = reader.pos;
    let mut payload = frame;
    payload.advance(payload_at);
    Ok(Some(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })))
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In 5.0 a remaining length of 2 means Success and no
/// properties, 3 means a reason code and no properties (section 3.4.2.1).
fn read_pub_resp(r: &mut Reader<'_>, protocol: Protocol) -> Result<PubResp> {
    let packet_id = r.packet_id()?;
    let mut resp = PubResp {
        packet_id,
        ..PubResp::default()
    };
    if protocol.is_v5() && r.has_more() {
        resp.reason = ReasonCode(r.u8()?);
        if r.has_more() {
            resp.properties = read_ack_properties(r)?;
        }
    }
    Ok(resp)
}

fn read_subscribe(r: &mut Reader<'_>, protocol: Protocol) -> Result<Subscribe> {
    let packet_id = r.packet_id()?;
    let properties = if protocol.is_v5() {
        read_subscribe_properties(r)?
    } else {
        SubscribeProperties::default()
    };
    if !r.has_more() {
        return Err(DecodeError::Protocol(
            "SUBSCRIBE without a topic filter [MQTT-3.8.3-3] (3.1.1), [MQTT-3.8.3-2] (5.0)",
        ));
    }
    // Grows with what has arrived, never with a declared count.
    let mut filters = Vec::new();
    while r.has_more() {
        let filter = r.string()?;
        let options = read_subscription_options(r.u8()?, protocol)?;
        if !topic::valid_topic_filter(&filter) {
            return Err(DecodeError::TopicFilterInvalid(
                "SUBSCRIBE topic filter is not valid (section 4.7)",
            ));
        }
        if options.no_local && topic::parse_shared(&filter).is_some() {
            return Err(DecodeError::Protocol(
                "No Local on a Shared Subscription [MQTT-3.8.3-4]",
            ));
        }
        filters.push((filter, options));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_subscription_options(byte: u8, protocol: Protocol) -> Result<SubscriptionOptions> {
    if !protocol.is_v5() {
        if byte & 0xFC != 0 {
            return Err(DecodeError::Malformed(
                "reserved bits in SUBSCRIBE requested QoS [MQTT-3-8.3-4] (3.1.1)",
            ));
        }
        let qos = QoS::from_u8(byte).ok_or(DecodeError::Malformed(
            "SUBSCRIBE requested QoS 3 [MQTT-3-8.3-4] (3.1.1)",
        ))?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    if byte & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "reserved bits in Subscription Options [MQTT-3.8.3-5]",
        ));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::Protocol(
        "Subscription Options Maximum QoS 3 (section 3.8.3.1)",
    ))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscribe,
        2 => RetainHandling::Never,
        _ => return Err(DecodeError::Protocol("Retain Handling 3 (section 3.8.3.1)")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn read_suback(r: &mut Reader<'_>, protocol: Protocol) -> Result<SubAck> {
    let packet_id = r.packet_id()?;
    let properties = if protocol.is_v5() {
        read_ack_properties(r)?
    } else {
        AckProperties::default()
    };
    let mut return_codes = Vec::new();
    while r.has_more() {
        let code = ReasonCode(r.u8()?);
        if !protocol.is_v5() && !matches!(code.0, 0 | 1 | 2 | 0x80) {
            return Err(DecodeError::Malformed(
                "SUBACK return code other than 0, 1, 2, 0x80 [MQTT-3.9.3-2] (3.1.1)",
            ));
        }
        return_codes.push(code);
    }
    Ok(SubAck {
        packet_id,
        return_codes,
        properties,
    })
}

fn read_unsubscribe(r: &mut Reader<'_>, protocol: Protocol) -> Result<Unsubscribe> {
    let packet_id = r.packet_id()?;
    let properties = if protocol.is_v5() {
        read_unsubscribe_properties(r)?
    } else {
        UnsubscribeProperties::default()
    };
    if !r.has_more() {
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
        ));
    }
    let mut filters = Vec::new();
    while r.has_more() {
        let filter = r.string()?;
        if !topic::valid_topic_filter(&filter) {
            return Err(DecodeError::TopicFilterInvalid(
                "UNSUBSCRIBE topic filter is not valid (section 4.7)",
            ));
        }
        filters.push(filter);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_unsuback(r: &mut Reader<'_>, protocol: Protocol) -> Result<UnsubAck> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        ..UnsubAck::default()
    };
    if protocol.is_v5() {
        ack.properties = read_ack_properties(r)?;
        while r.has_more() {
            ack.reason_codes.push(ReasonCode(r.u8()?));
        }
    }
    Ok(ack)
}

/// 3.x: no body. 5.0: remaining length 0 means Normal disconnection, 1 means no properties.
fn read_disconnect(r: &mut Reader<'_>, protocol: Protocol) -> Result<Disconnect> {
    let mut d = Disconnect::default();
    if protocol.is_v5() && r.has_more() {
        d.reason = ReasonCode(r.u8()?);
        if r.has_more() {
            d.properties = read_disconnect_properties(r)?;
        }
    }
    Ok(d)
}

/// 5.0 only (checked with the fixed header). Remaining length 0 means Success.
fn read_auth(r: &mut Reader<'_>) -> Result<Auth> {
    let mut a = Auth::default();
    if r.has_more() {
        a.reason = ReasonCode(r.u8()?);
        if r.has_more() {
            a.properties = read_auth_properties(r)?;
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_boundaries() {
        let cases: [(&[u8], usize, usize); 6] = [
            (&[0x00], 0, 1),
            (&[0x7F], 127, 1),
            (&[0x80, 0x01], 128, 2),
            (&[0xFF, 0x7F], 16_383, 2),
            (&[0x80, 0x80, 0x01], 16_384, 3),
            (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455, 4),
        ];
        for (bytes, value, len) in cases {
            match remaining_length(bytes).expect("valid") {
                Length::Complete { value: v, bytes: n } => {
                    assert_eq!((v, n), (value, len), "{bytes:?}")
                }
                Length::Partial { .. } => panic!("partial {bytes:?}"),
            }
        }
        assert!(remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(matches!(
            remaining_length(&[0xFF, 0xFF]),
            Ok(Length::Partial {
                at_least: 16_383,
                bytes: 2
            })
        ));
    }

    #[test]
    fn a_refused_connect_still_names_its_protocol() {
        // 5.0 CONNECT with the reserved flag set [MQTT-3.1.2-3].
        let mut buf = BytesMut::from(
            &[
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3C, 0x00, 0x00,
                0x02, b'i', b'd',
            ][..],
        );
        let mut d = Decoder::new(1024);
        assert!(matches!(d.decode(&mut buf), Err(DecodeError::Malformed(_))));
        assert_eq!(d.protocol(), None);
        assert_eq!(d.connect_protocol(), Some(Protocol::V5));
    }

    #[test]
    fn empty_buffer_needs_more() {
        let mut d = Decoder::new(1024);
        assert_eq!(d.decode(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn partial_length_over_the_maximum_is_refused_early() {
        let mut d = Decoder::with_protocol(Protocol::V3_1_1, 1024);
        // Three continuation bytes: at least 2 MiB, refused before the fourth arrives.
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(DecodeError::PacketTooLarge { .. })
        ));
        assert_eq!(buf.len(), 4);
    }
}
