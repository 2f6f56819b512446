//! The mqemitter-redis envelope `{id, msg}` in msgpack: what aedes nodes and the PHP backend put
//! on Redis, and what we put there for them.
//!
//! `decode` takes what msgpack-lite and PHP's msgpack extension write: every int width, floats
//! with integral values, nil for anything optional, str or bin for `id` and `payload` (the bytes
//! of a str are kept as they are, UTF-8 or not). `encode` writes the keys aedes writes, in its
//! order, except that the payload is always bin: aedes turns a str payload into text.
//!
//! Input is untrusted (anyone who can publish on Redis writes it): decoding never panics, checks
//! each claimed length against the bytes left before taking them, and follows at most
//! `MAX_DEPTH` nested arrays and maps. The whole input is checked as msgpack before any field is
//! read, so a malformed message always earns a "not msgpack" error.

use bytes::Bytes;
use pigeon_codec::{topic, ByteStr, PublishProperties, QoS};
use std::collections::HashMap;
use std::fmt;

/// The most arrays and maps `decode` follows inside one another; the envelope is the first.
pub const MAX_DEPTH: usize = 32;

/// A PUBLISH as it travels on the bus (the `msg` of an envelope, with the envelope's `id`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BusPublish {
    /// The envelope id that receivers dedupe on; `None` when the envelope has none. `encode`
    /// takes the id to write as an argument and does not read this field.
    pub id: Option<Bytes>,
    /// A valid topic name: what receivers route on (the Redis channel is ignored).
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// The node that accepted the PUBLISH; with `broker_counter` it orders messages per node.
    pub broker_id: Option<String>,
    pub broker_counter: Option<u64>,
    /// The publishing client; absent on `$SYS` traffic and on PHP messages.
    pub client_id: Option<ByteStr>,
    /// `topic_alias` and `subscription_identifiers` are neither read nor written.
    pub properties: PublishProperties,
}

/// Why a bus message was not taken. The messages are written for a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not msgpack: truncated at byte {at}")]
    Truncated { at: usize },
    #[error("not msgpack: 0xc1 at byte {at} is no msgpack type")]
    Reserved { at: usize },
    #[error("not msgpack: more than {MAX_DEPTH} nested arrays and maps at byte {at}")]
    TooDeep { at: usize },
    #[error("not msgpack: {extra} bytes after the value that ends at byte {end}")]
    Trailing { end: usize, extra: usize },
    #[error("envelope is {found}, not map")]
    EnvelopeNotMap { found: &'static str },
    #[error("no `msg` map")]
    NoMsg,
    #[error("no `topic` in msg")]
    NoTopic,
    #[error("{field} is {found}, not {expected}")]
    WrongType {
        field: &'static str,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{field} `{value}` is not a valid topic name")]
    InvalidTopic { field: &'static str, value: String },
    #[error("{field} `{value}` is not UTF-8 without U+0000")]
    InvalidString { field: &'static str, value: String },
    #[error("{field} {value} out of range")]
    OutOfRange { field: &'static str, value: String },
    #[error("cmd `{0}` is not a publish")]
    NotPublish(String),
}

/// Reads one envelope. `bytes` must hold exactly one msgpack value: msgpack-lite would ignore
/// bytes after it, but no encoder writes them, so they mark a damaged message.
pub fn decode(bytes: &[u8]) -> Result<BusPublish, WireError> {
    let mut check = Reader::new(bytes);
    check.skip_value(1)?;
    if check.pos < bytes.len() {
        return Err(WireError::Trailing {
            end: check.pos,
            extra: bytes.len() - check.pos,
        });
    }
    Reader::new(bytes).envelope()
}

/// Writes the envelope `{id, msg}` for `msg`, as aedes does (see `encode_into`).
pub fn encode(id: &str, msg: &BusPublish) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + id.len() + msg.topic.len() + msg.payload.len());
    encode_into(&mut out, id, msg);
    out
}

/// Appends the envelope `{id, msg}` to `out`, so a publisher can reuse one buffer.
///
/// `msg` keys, in aedes order: `cmd`, `brokerId`, `brokerCounter` (both when set), `topic`,
/// `payload` (always bin), `qos`, `retain`, `dup`, `messageId: nil` (when qos > 0, as aedes),
/// `clientId` (when set), then `properties` when one of them is set. Ints take their smallest
/// form; a counter of 2^31 or more is a uint, where msgpack-lite would write a float64.
pub fn encode_into(out: &mut Vec<u8>, id: &str, msg: &BusPublish) {
    let props = &msg.properties;
    let with_props = props.payload_format_indicator.is_some()
        || props.message_expiry_interval.is_some()
        || props.response_topic.is_some()
        || props.correlation_data.is_some()
        || !props.user_properties.is_empty()
        || props.content_type.is_some();
    let entries = 6
        + usize::from(msg.broker_id.is_some())
        + usize::from(msg.broker_counter.is_some())
        + usize::from(msg.qos != QoS::AtMostOnce)
        + usize::from(msg.client_id.is_some())
        + usize::from(with_props);

    put_map(out, 2);
    put_str(out, "id");
    put_str(out, id);
    put_str(out, "msg");
    put_map(out, entries);
    put_str(out, "cmd");
    put_str(out, "publish");
    if let Some(broker_id) = &msg.broker_id {
        put_str(out, "brokerId");
        put_str(out, broker_id);
    }
    if let Some(counter) = msg.broker_counter {
        put_str(out, "brokerCounter");
        put_uint(out, counter);
    }
    put_str(out, "topic");
    put_str(out, &msg.topic);
    put_str(out, "payload");
    put_bin(out, &msg.payload);
    put_str(out, "qos");
    put_uint(out, msg.qos as u64);
    put_str(out, "retain");
    put_bool(out, msg.retain);
    put_str(out, "dup");
    put_bool(out, msg.dup);
    if msg.qos != QoS::AtMostOnce {
        put_str(out, "messageId");
        out.push(NIL);
    }
    if let Some(client_id) = &msg.client_id {
        put_str(out, "clientId");
        put_str(out, client_id);
    }
    if with_props {
        put_properties(out, props);
    }
}

/// Names as mqtt-packet (MQTT.js) gives them, which is what aedes carries.
fn put_properties(out: &mut Vec<u8>, props: &PublishProperties) {
    let entries = usize::from(props.payload_format_indicator.is_some())
        + usize::from(props.message_expiry_interval.is_some())
        + usize::from(props.response_topic.is_some())
        + usize::from(props.correlation_data.is_some())
        + usize::from(!props.user_properties.is_empty())
        + usize::from(props.content_type.is_some());
    put_str(out, "properties");
    put_map(out, entries);
    if let Some(indicator) = props.payload_format_indicator {
        // mqtt-packet reads this byte as a boolean.
        put_str(out, "payloadFormatIndicator");
        put_bool(out, indicator != 0);
    }
    if let Some(interval) = props.message_expiry_interval {
        put_str(out, "messageExpiryInterval");
        put_uint(out, interval.into());
    }
    if let Some(response_topic) = &props.response_topic {
        put_str(out, "responseTopic");
        put_str(out, response_topic);
    }
    if let Some(data) = &props.correlation_data {
        put_str(out, "correlationData");
        put_bin(out, data);
    }
    if !props.user_properties.is_empty() {
        put_str(out, "userProperties");
        put_user_properties(out, &props.user_properties);
    }
    if let Some(content_type) = &props.content_type {
        put_str(out, "contentType");
        put_str(out, content_type);
    }
}

/// mqtt-packet's form: one map entry per key, in order of first appearance; a key that repeats
/// maps to an array of its values.
fn put_user_properties(out: &mut Vec<u8>, pairs: &[(ByteStr, ByteStr)]) {
    let mut keys: Vec<&str> = Vec::new();
    let mut values: HashMap<&str, Vec<&str>> = HashMap::new();
    for (key, value) in pairs {
        values
            .entry(key.as_str())
            .or_insert_with(|| {
                keys.push(key.as_str());
                Vec::new()
            })
            .push(value.as_str());
    }
    put_map(out, keys.len());
    for key in keys {
        put_str(out, key);
        match values.get(key).map(Vec::as_slice) {
            Some([one]) => put_str(out, one),
            Some(many) => {
                put_array(out, many.len());
                for value in many {
                    put_str(out, value);
                }
            }
            None => put_str(out, ""),
        }
    }
}

const NIL: u8 = 0xc0;

fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(if value { 0xc3 } else { 0xc2 });
}

fn put_uint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else if let Ok(v) = u8::try_from(value) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = u16::try_from(value) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(value) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// The head of a str, bin, array or map: `fix` is the base marker and largest length of the fix
/// form (bin has none), then the markers for 8-bit (str and bin only), 16-bit and 32-bit lengths.
fn put_head(
    out: &mut Vec<u8>,
    len: usize,
    fix: Option<(u8, usize)>,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) {
    if let Some((base, max)) = fix {
        if len <= max {
            out.push(base | len as u8);
            return;
        }
    }
    if let (Some(marker), Ok(n)) = (m8, u8::try_from(len)) {
        out.extend_from_slice(&[marker, n]);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(m16);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        // MQTT packets stop at 256 MiB and topics at 64 KiB: nothing we write reaches 4 GiB.
        let n = u32::try_from(len).expect("msgpack length under 4 GiB");
        out.push(m32);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_head(out, s.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
    out.extend_from_slice(s.as_bytes());
}

fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    put_head(out, b.len(), None, Some(0xc4), 0xc5, 0xc6);
    out.extend_from_slice(b);
}

fn put_map(out: &mut Vec<u8>, entries: usize) {
    put_head(out, entries, Some((0x80, 15)), None, 0xde, 0xdf);
}

fn put_array(out: &mut Vec<u8>, len: usize) {
    put_head(out, len, Some((0x90, 15)), None, 0xdc, 0xdd);
}

/// A msgpack number, ints kept exact: `I` only for negative ones.
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn signed(v: i64) -> Num {
        u64::try_from(v).map_or(Num::I(v), Num::U)
    }

    /// The value if it is a whole number in `0..=max` (msgpack-lite writes large ints as float64).
    fn whole(self, max: u64) -> Option<u64> {
        let v = match self {
            Num::U(v) => v,
            Num::I(_) => return None,
            // 2^64 is the first float past u64; NaN and the infinities fail the fract test.
            Num::F(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                f as u64
            }
            Num::F(_) => return None,
        };
        (v <= max).then_some(v)
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::U(v) => write!(f, "{v}"),
            Num::I(v) => write!(f, "{v}"),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

/// One msgpack item. Strings and binaries are already taken; arrays and maps carry only their
/// length, and their elements follow in the input.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Nil,
    Bool(bool),
    Num(Num),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext,
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Num(Num::F(_)) => "float",
            Value::Num(_) => "int",
            Value::Str(_) => "str",
            Value::Bin(_) => "bin",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Ext => "ext",
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// The next `n` bytes; `at` is where the item that needs them starts.
    fn take(&mut self, n: usize, at: usize) -> Result<&'a [u8], WireError> {
        let rest = &self.buf[self.pos..];
        if n > rest.len() {
            return Err(WireError::Truncated { at });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self, at: usize) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, at)?);
        Ok(out)
    }

    /// A 1-, 2- or 4-byte big-endian length.
    fn len(&mut self, width: usize, at: usize) -> Result<usize, WireError> {
        let n = match width {
            1 => u32::from(self.array::<1>(at)?[0]),
            2 => u32::from(u16::from_be_bytes(self.array(at)?)),
            _ => u32::from_be_bytes(self.array(at)?),
        };
        // Past usize (16-bit targets), the length cannot fit in the input either.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn next(&mut self) -> Result<Value<'a>, WireError> {
        let at = self.pos;
        let [marker] = self.array(at)?;
        Ok(match marker {
            0x00..=0x7f => Value::Num(Num::U(marker.into())),
            0x80..=0x8f => Value::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Value::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Value::Str(self.take(usize::from(marker & 0x1f), at)?),
            0xc0 => Value::Nil,
            0xc1 => return Err(WireError::Reserved { at }),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4), at)?;
                Value::Bin(self.take(n, at)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7), at)?;
                self.take(1, at)?; // the ext type
                self.take(n, at)?;
                Value::Ext
            }
            0xca => Value::Num(Num::F(f32::from_be_bytes(self.array(at)?).into())),
            0xcb => Value::Num(Num::F(f64::from_be_bytes(self.array(at)?))),
            0xcc => Value::Num(Num::U(u8::from_be_bytes(self.array(at)?).into())),
            0xcd => Value::Num(Num::U(u16::from_be_bytes(self.array(at)?).into())),
            0xce => Value::Num(Num::U(u32::from_be_bytes(self.array(at)?).into())),
            0xcf => Value::Num(Num::U(u64::from_be_bytes(self.array(at)?))),
            0xd0 => Value::Num(Num::signed(i8::from_be_bytes(self.array(at)?).into())),
            0xd1 => Value::Num(Num::signed(i16::from_be_bytes(self.array(at)?).into())),
            0xd2 => Value::Num(Num::signed(i32::from_be_bytes(self.array(at)?).into())),
            0xd3 => Value::Num(Num::signed(i64::from_be_bytes(self.array(at)?))),
            0xd4..=0xd8 => {
                // fixext 1, 2, 4, 8, 16: the type byte, then the data.
                self.take(1 + (1 << (marker - 0xd4)), at)?;
                Value::Ext
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9), at)?;
                Value::Str(self.take(n, at)?)
            }
            0xdc => Value::Array(self.len(2, at)?),
            0xdd => Value::Array(self.len(4, at)?),
            0xde => Value::Map(self.len(2, at)?),
            0xdf => Value::Map(self.len(4, at)?),
            0xe0..=0xff => Value::Num(Num::I(i64::from(marker as i8))),
        })
    }

    /// Reads and drops one value at nesting level `level` (the envelope is level 1).
    fn skip_value(&mut self, level: usize) -> Result<(), WireError> {
        let at = self.pos;
        let value = self.next()?;
        self.skip_rest(value, level, at)
    }

    /// Drops the elements of `value` (read at `at`) if it is an array or a map. Every element
    /// takes at least one byte, so a claimed count larger than the input ends in `Truncated`
    /// after at most one pass over the input, and nothing is allocated for it.
    fn skip_rest(&mut self, value: Value<'a>, level: usize, at: usize) -> Result<(), WireError> {
        let (count, per_entry) = match value {
            Value::Array(n) => (n, 1),
            Value::Map(n) => (n, 2),
            _ => return Ok(()),
        };
        if level > MAX_DEPTH {
            return Err(WireError::TooDeep { at });
        }
        for _ in 0..count {
            for _ in 0..per_entry {
                self.skip_value(level + 1)?;
            }
        }
        Ok(())
    }

    /// A map key at `level`: `Some` for a str key, `None` (key dropped) for any other type.
    fn key(&mut self, level: usize) -> Result<Option<&'a [u8]>, WireError> {
        let at = self.pos;
        match self.next()? {
            Value::Str(name) => Ok(Some(name)),
            other => {
                self.skip_rest(other, level, at)?;
                Ok(None)
            }
        }
    }

    fn envelope(&mut self) -> Result<BusPublish, WireError> {
        let entries = match self.next()? {
            Value::Map(n) => n,
            other => {
                return Err(WireError::EnvelopeNotMap {
                    found: other.kind(),
                })
            }
        };
        let mut id = None;
        let mut msg = None;
        for _ in 0..entries {
            match self.key(2)? {
                Some(b"id") => {
                    id = match self.next()? {
                        Value::Str(b) | Value::Bin(b) => Some(Bytes::copy_from_slice(b)),
                        Value::Nil => None,
                        other => return Err(wrong_type("id", other, "str or bin")),
                    }
                }
                Some(b"msg") => {
                    msg = match self.next()? {
                        Value::Map(n) => Some(self.msg(n)?),
                        Value::Nil => None,
                        other => return Err(wrong_type("msg", other, "map")),
                    }
                }
                _ => self.skip_value(2)?,
            }
        }
        let mut msg = msg.ok_or(WireError::NoMsg)?;
        msg.id = id;
        Ok(msg)
    }

    /// The `n` entries of `msg` (level 2; its values are level 3).
    fn msg(&mut self, n: usize) -> Result<BusPublish, WireError> {
        let mut out = BusPublish::default();
        let mut topic = None;
        let mut message_expiry = None;
        for _ in 0..n {
            let Some(key) = self.key(3)? else {
                self.skip_value(3)?;
                continue;
            };
            let at = self.pos;
            let value = self.next()?;
            match key {
                b"cmd" => match value {
                    Value::Str(b"publish") | Value::Nil => {}
                    Value::Str(other) => return Err(WireError::NotPublish(shown(other))),
                    other => return Err(wrong_type("cmd", other, "str")),
                },
                b"topic" => match value {
                    Value::Str(b) => topic = Some(topic_name("topic", b)?),
                    other => return Err(wrong_type("topic", other, "str")),
                },
                b"payload" => {
                    out.payload = match value {
                        Value::Str(b) | Value::Bin(b) => Bytes::copy_from_slice(b),
                        Value::Nil => Bytes::new(),
                        other => return Err(wrong_type("payload", other, "str or bin")),
                    }
                }
                b"qos" => {
                    out.qos = match value {
                        Value::Nil => QoS::AtMostOnce,
                        other => {
                            let qos = number("qos", other, 2)?;
                            QoS::from_u8(qos as u8).unwrap_or_default()
                        }
                    }
                }
                b"retain" => out.retain = flag("retain", value)?,
                b"dup" => out.dup = flag("dup", value)?,
                b"brokerId" => {
                    out.broker_id = match value {
                        Value::Str(b) => Some(String::from_utf8(b.to_vec()).map_err(|_| {
                            WireError::InvalidString {
                                field: "brokerId",
                                value: shown(b),
                            }
                        })?),
                        Value::Nil => None,
                        other => return Err(wrong_type("brokerId", other, "str")),
                    }
                }
                b"brokerCounter" => {
                    out.broker_counter = match value {
                        Value::Nil => None,
                        other => Some(number("brokerCounter", other, u64::MAX)?),
                    }
                }
                b"clientId" => out.client_id = optional_string("clientId", value)?,
                b"messageExpiry" => {
                    message_expiry = match value {
                        Value::Nil => None,
                        other => Some(number("messageExpiry", other, u32::MAX.into())? as u32),
                    }
                }
                b"properties" => match value {
                    Value::Map(n) => self.properties(n, &mut out.properties)?,
                    Value::Nil => {}
                    other => return Err(wrong_type("properties", other, "map")),
                },
                // messageId (each receiver numbers its own deliveries), nl, and keys we do not know.
                _ => self.skip_rest(value, 3, at)?,
            }
        }
        out.topic = topic.ok_or(WireError::NoTopic)?;
        if out.properties.message_expiry_interval.is_none() {
            out.properties.message_expiry_interval = message_expiry;
        }
        Ok(out)
    }

    /// The `n` entries of `msg.properties` (level 3; its values are level 4).
    fn properties(&mut self, n: usize, props: &mut PublishProperties) -> Result<(), WireError> {
        for _ in 0..n {
            let Some(key) = self.key(4)? else {
                self.skip_value(4)?;
                continue;
            };
            let at = self.pos;
            let value = self.next()?;
            match key {
                b"payloadFormatIndicator" => {
                    props.payload_format_indicator = match value {
                        Value::Bool(b) => Some(u8::from(b)),
                        Value::Nil => None,
                        other => Some(number("properties.payloadFormatIndicator", other, 1)? as u8),
                    }
                }
                b"messageExpiryInterval" => {
                    props.message_expiry_interval = match value {
                        Value::Nil => None,
                        other => Some(number(
                            "properties.messageExpiryInterval",
                            other,
                            u32::MAX.into(),
                        )? as u32),
                    }
                }
                b"responseTopic" => {
                    props.response_topic = match value {
                        Value::Str(b) => Some(topic_name("properties.responseTopic", b)?),
                        Value::Nil => None,
                        other => return Err(wrong_type("properties.responseTopic", other, "str")),
                    }
                }
                b"correlationData" => {
                    props.correlation_data = match value {
                        Value::Str(b) | Value::Bin(b) => Some(Bytes::copy_from_slice(b)),
                        Value::Nil => None,
                        other => {
                            return Err(wrong_type(
                                "properties.correlationData",
                                other,
                                "bin or str",
                            ))
                        }
                    }
                }
                b"userProperties" => match value {
                    Value::Map(n) => self.user_properties(n, &mut props.user_properties)?,
                    Value::Nil => {}
                    other => return Err(wrong_type("properties.userProperties", other, "map")),
                },
                b"contentType" => {
                    props.content_type = optional_string("properties.contentType", value)?
                }
                // topicAlias is the sender's connection's business; subscriptionIdentifier
                // belongs to each receiver's subscriptions.
                _ => self.skip_rest(value, 4, at)?,
            }
        }
        Ok(())
    }

    /// `n` entries of key → str or array of str (level 4; arrays are level 5). Pairs are kept in
    /// input order; no capacity is reserved from the claimed `n`.
    fn user_properties(
        &mut self,
        n: usize,
        pairs: &mut Vec<(ByteStr, ByteStr)>,
    ) -> Result<(), WireError> {
        const FIELD: &str = "properties.userProperties";
        for _ in 0..n {
            let key = match self.next()? {
                Value::Str(b) => mqtt_string(FIELD, b)?,
                other => return Err(wrong_type(FIELD, other, "str key")),
            };
            match self.next()? {
                Value::Str(b) => pairs.push((key, mqtt_string(FIELD, b)?)),
                Value::Array(m) => {
                    for _ in 0..m {
                        match self.next()? {
                            Value::Str(b) => pairs.push((key.clone(), mqtt_string(FIELD, b)?)),
                            other => return Err(wrong_type(FIELD, other, "str")),
                        }
                    }
                }
                other => return Err(wrong_type(FIELD, other, "str or array of str")),
            }
        }
        Ok(())
    }
}

fn wrong_type(field: &'static str, found: Value<'_>, expected: &'static str) -> WireError {
    WireError::WrongType {
        field,
        found: found.kind(),
        expected,
    }
}

/// A whole number in `0..=max`, written as any int or float.
fn number(field: &'static str, value: Value<'_>, max: u64) -> Result<u64, WireError> {
    match value {
        Value::Num(n) => n.whole(max).ok_or_else(|| WireError::OutOfRange {
            field,
            value: n.to_string(),
        }),
        other => Err(wrong_type(field, other, "int")),
    }
}

/// A bool. Nil is false, and the ints 0 and 1 are taken too: aedes only tests truthiness, and
/// PHP code may well write `'retain' => 0`.
fn flag(field: &'static str, value: Value<'_>) -> Result<bool, WireError> {
    match value {
        Value::Bool(b) => Ok(b),
        Value::Nil => Ok(false),
        Value::Num(_) => Ok(number(field, value, 1)? == 1),
        other => Err(wrong_type(field, other, "bool")),
    }
}

fn optional_string(field: &'static str, value: Value<'_>) -> Result<Option<ByteStr>, WireError> {
    match value {
        Value::Str(b) => Ok(Some(mqtt_string(field, b)?)),
        Value::Nil => Ok(None),
        other => Err(wrong_type(field, other, "str")),
    }
}

fn mqtt_string(field: &'static str, b: &[u8]) -> Result<ByteStr, WireError> {
    ByteStr::from_utf8(Bytes::copy_from_slice(b)).ok_or_else(|| WireError::InvalidString {
        field,
        value: shown(b),
    })
}

fn topic_name(field: &'static str, b: &[u8]) -> Result<ByteStr, WireError> {
    match ByteStr::from_utf8(Bytes::copy_from_slice(b)) {
        Some(name) if topic::valid_topic_name(&name) => Ok(name),
        _ => Err(WireError::InvalidTopic {
            field,
            value: shown(b),
        }),
    }
}

/// Input text for an error message: lossy UTF-8, control characters escaped, at most 64 chars.
fn shown(b: &[u8]) -> String {
    const MAX: usize = 64;
    let text = String::from_utf8_lossy(b);
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE_1: &str = "82a26964b87a7836637930596f524e657a2f7771582b4d687a71512f37a36d73678aa3636d64a77075626c697368a862726f6b65724964a6616564657341ad62726f6b6572436f756e74657208a5746f706963aa636861742f726f6f6d31a77061796c6f6164c40868656c6c6f207131a3716f7301a672657461696ec2a3647570c2a96d6573736167654964c0a8636c69656e744964a97075622d3134373636";
    const EXAMPLE_2: &str = "82a26964d92430623563376533652d386135652d346331622d396135352d336332663264376634653131a36d736786a3636d64a77075626c697368a672657461696ec2a3716f7301a5746f706963aa636861742f726f6f6d31a77061796c6f6164ad7b2274657874223a226869227da96d657373616765496400";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn s(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, text);
        out
    }

    /// An envelope with id "x" around a msg map of the given keys and raw msgpack values.
    fn envelope(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = hex("82a26964a178a36d7367");
        put_map(&mut out, entries.len());
        for (key, value) in entries {
            put_str(&mut out, key);
            out.extend_from_slice(value);
        }
        out
    }

    fn with_topic<'a>(entries: &[(&'a str, &'a [u8])]) -> Vec<u8> {
        let topic = s("t");
        let mut all = vec![("topic", topic.as_slice())];
        all.extend_from_slice(entries);
        envelope(&all)
    }

    fn example_1() -> BusPublish {
        BusPublish {
            id: Some(Bytes::from_static(b"zx6cy0YoRNez/wqX+MhzqQ/7")),
            topic: ByteStr::from("chat/room1"),
            payload: Bytes::from_static(b"hello q1"),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            broker_id: Some("aedesA".to_owned()),
            broker_counter: Some(8),
            client_id: Some(ByteStr::from("pub-14766")),
            properties: PublishProperties::default(),
        }
    }

    #[test]
    fn decodes_the_aedes_capture() {
        let bytes = hex(EXAMPLE_1);
        assert_eq!(bytes.len(), 160);
        assert_eq!(decode(&bytes), Ok(example_1()));
    }

    #[test]
    fn decodes_the_php_capture() {
        let msg = decode(&hex(EXAMPLE_2)).expect("decodes");
        assert_eq!(
            msg,
            BusPublish {
                id: Some(Bytes::from_static(b"0b5c7e3e-8a5e-4c1b-9a55-3c2f2d7f4e11")),
                topic: ByteStr::from("chat/room1"),
                payload: Bytes::from_static(br#"{"text":"hi"}"#),
                qos: QoS::AtLeastOnce,
                retain: false,
                dup: false,
                broker_id: None,
                broker_counter: None,
                client_id: None,
                properties: PublishProperties::default(),
            }
        );
    }

    #[test]
    fn encodes_the_aedes_capture_byte_for_byte() {
        assert_eq!(
            encode("zx6cy0YoRNez/wqX+MhzqQ/7", &example_1()),
            hex(EXAMPLE_1)
        );
        let mut buf = b"kept".to_vec();
        encode_into(&mut buf, "zx6cy0YoRNez/wqX+MhzqQ/7", &example_1());
        assert_eq!(&buf[..4], b"kept");
        assert_eq!(buf[4..], hex(EXAMPLE_1));
    }

    #[test]
    fn qos_0_has_no_message_id_and_retain_is_c3() {
        let msg = BusPublish {
            qos: QoS::AtMostOnce,
            retain: true,
            ..example_1()
        };
        let bytes = encode("i", &msg);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("messageId"));
        assert!(bytes.windows(8).any(|w| w == b"\xa6retain\xc3"));
        assert_eq!(bytes[10], 0x89, "msg map of 9 entries");
        assert_eq!(decode(&bytes).expect("decodes").qos, QoS::AtMostOnce);
    }

    #[test]
    fn qos_is_read_from_every_number_form() {
        let ones = [
            "01",
            "cc01",
            "cd0001",
            "ce00000001",
            "cf0000000000000001",
            "d001",
            "d10001",
            "d200000001",
            "d30000000000000001",
            "ca3f800000",
            "cb3ff0000000000000",
        ];
        for form in ones {
            let msg = decode(&with_topic(&[("qos", &hex(form))])).expect(form);
            assert_eq!(msg.qos, QoS::AtLeastOnce, "{form}");
        }
        for form in ["02", "cc02", "d30000000000000002", "cb4000000000000000"] {
            let msg = decode(&with_topic(&[("qos", &hex(form))])).expect(form);
            assert_eq!(msg.qos, QoS::ExactlyOnce, "{form}");
        }
        let missing = decode(&with_topic(&[])).expect("no qos");
        assert_eq!(missing.qos, QoS::AtMostOnce);
        let nil = decode(&with_topic(&[("qos", &[0xc0])])).expect("nil qos");
        assert_eq!(nil.qos, QoS::AtMostOnce);
        for (form, shown) in [
            ("03", "3"),
            ("ff", "-1"),
            ("d0ff", "-1"),
            ("d3ffffffffffffffff", "-1"),
            ("cdffff", "65535"),
            ("ca3fc00000", "1.5"),
            ("cb3ff8000000000000", "1.5"),
            ("cb7ff8000000000000", "NaN"),
        ] {
            let err = decode(&with_topic(&[("qos", &hex(form))])).expect_err(form);
            assert_eq!(
                err.to_string(),
                format!("qos {shown} out of range"),
                "{form}"
            );
        }
        let err = decode(&with_topic(&[("qos", &s("1"))])).expect_err("str qos");
        assert_eq!(err.to_string(), "qos is str, not int");
    }

    #[test]
    fn broker_counter_is_read_from_every_number_form() {
        let cases = [
            ("08", 8),
            ("7f", 127),
            ("cc80", 128),
            ("cdffff", 65_535),
            ("ce80000000", 1 << 31),
            ("cf0000010000000000", 1 << 40),
            ("cfffffffffffffffff", u64::MAX),
            ("d07f", 127),
            ("d17fff", 32_767),
            ("d27fffffff", (1 << 31) - 1),
            ("d3000000e8d4a51000", 1_000_000_000_000),
            ("ca4f000000", 1 << 31),
            // msgpack-lite writes 2^31 and above as float64.
            ("cb41e0000000000000", 1 << 31),
            ("cb4330000000000000", 1 << 52),
        ];
        for (form, expected) in cases {
            let msg = decode(&with_topic(&[("brokerCounter", &hex(form))])).expect(form);
            assert_eq!(msg.broker_counter, Some(expected), "{form}");
        }
        for form in [
            "e0",
            "d080",
            "d18000",
            "d280000000",
            "d38000000000000000",
            "cb3fe0000000000000",
            "cb43f0000000000000",
            "cbfff0000000000000",
        ] {
            let err = decode(&with_topic(&[("brokerCounter", &hex(form))])).expect_err(form);
            assert!(
                matches!(
                    err,
                    WireError::OutOfRange {
                        field: "brokerCounter",
                        ..
                    }
                ),
                "{form}: {err}"
            );
        }
    }

    #[test]
    fn large_counters_are_written_as_uint() {
        for (counter, head) in [
            (127, "7f"),
            (128, "cc80"),
            (65_535, "cdffff"),
            (1 << 31, "ce80000000"),
            (1 << 32, "cf0000000100000000"),
        ] {
            let msg = BusPublish {
                broker_counter: Some(counter),
                ..example_1()
            };
            let bytes = encode("i", &msg);
            let mut expected = s("brokerCounter");
            expected.extend_from_slice(&hex(head));
            assert!(
                bytes.windows(expected.len()).any(|w| w == expected),
                "{counter}"
            );
            assert_eq!(
                decode(&bytes).expect("decodes").broker_counter,
                Some(counter)
            );
        }
    }

    #[test]
    fn a_str_payload_keeps_its_bytes() {
        let payload = [0xa4, 0xff, 0xd8, 0x00, 0xff];
        let msg = decode(&with_topic(&[("payload", &payload)])).expect("decodes");
        assert_eq!(msg.payload.as_ref(), &[0xff, 0xd8, 0x00, 0xff]);
        let nil = decode(&with_topic(&[("payload", &[0xc0])])).expect("nil");
        assert!(nil.payload.is_empty());
        let missing = decode(&with_topic(&[])).expect("missing");
        assert!(missing.payload.is_empty());
    }

    #[test]
    fn payloads_are_bin_of_the_smallest_form() {
        for (len, head) in [
            (0, "c400"),
            (255, "c4ff"),
            (256, "c50100"),
            (70_000, "c600011170"),
        ] {
            let msg = BusPublish {
                payload: Bytes::from(vec![7; len]),
                ..example_1()
            };
            let bytes = encode("i", &msg);
            let mut expected = s("payload");
            expected.extend_from_slice(&hex(head));
            assert!(
                bytes.windows(expected.len()).any(|w| w == expected),
                "{len}"
            );
            assert_eq!(decode(&bytes).expect("decodes").payload.len(), len);
        }
    }

    #[test]
    fn strings_of_every_length_form_round_trip() {
        for (len, head) in [(31, 0xa0 | 31), (32, 0xd9), (256, 0xda), (70_000, 0xdb)] {
            let text = "c".repeat(len);
            let bytes = s(&text);
            assert_eq!(bytes[0], head, "{len}");
            let msg = decode(&with_topic(&[("clientId", &bytes)])).expect("decodes");
            assert_eq!(msg.client_id.as_deref(), Some(text.as_str()));
        }
    }

    #[test]
    fn unknown_keys_of_every_type_are_skipped() {
        let values = [
            "c0",
            "c3",
            "7f",
            "e0",
            "ca3f800000",
            "cb3ff0000000000000",
            "d3ffffffffffffffff",
            "a3616263",
            "d903616263",
            "da0003616263",
            "db00000003616263",
            "c403010203",
            "c50003010203",
            "c600000003010203",
            "d40101",
            "d5010102",
            "d60101020304",
            "d7010102030405060708",
            "d801000102030405060708090a0b0c0d0e0f",
            "c70201aabb",
            "c8000201aabb",
            "c900000002ffaabb",
            "93019291a17890c0",
            "dc000201c0",
            "dd00000001c0",
            "82a161928081c0c001c3",
            "de0001a161c0",
            "df00000001a161c0",
        ];
        for value in values {
            let v = hex(value);
            let bytes = envelope(&[
                ("before", &v),
                ("topic", &s("a/b")),
                ("messageId", &v),
                ("qos", &[2]),
                ("after", &v),
            ]);
            let msg = decode(&bytes).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(msg.topic.as_str(), "a/b");
            assert_eq!(msg.qos, QoS::ExactlyOnce, "{value}");
        }
        // Keys that are not strings, in the envelope and in msg.
        let mut bytes = hex("8301c0a26964a178a36d736782");
        bytes.extend_from_slice(&hex("91c0a3616263"));
        bytes.extend_from_slice(&s("topic"));
        bytes.extend_from_slice(&s("x"));
        let msg = decode(&bytes).expect("decodes");
        assert_eq!(msg.topic.as_str(), "x");
        assert_eq!(msg.id.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn ids_are_str_bin_or_absent() {
        let mut bin_id = hex("82a26964c403616263a36d7367");
        bin_id.extend_from_slice(&hex("81"));
        bin_id.extend_from_slice(&s("topic"));
        bin_id.extend_from_slice(&s("t"));
        assert_eq!(
            decode(&bin_id).expect("bin id").id.as_deref(),
            Some(&b"abc"[..])
        );
        let mut no_id = hex("81a36d7367");
        no_id.extend_from_slice(&hex("81"));
        no_id.extend_from_slice(&s("topic"));
        no_id.extend_from_slice(&s("t"));
        assert_eq!(decode(&no_id).expect("no id").id, None);
    }

    #[test]
    fn properties_are_read_with_mqtt_packet_names() {
        let mut props = Vec::new();
        put_map(&mut props, 8);
        put_str(&mut props, "payloadFormatIndicator");
        put_bool(&mut props, true);
        put_str(&mut props, "messageExpiryInterval");
        props.extend_from_slice(&hex("cd0e10"));
        put_str(&mut props, "responseTopic");
        put_str(&mut props, "reply/to");
        put_str(&mut props, "correlationData");
        put_str(&mut props, "corr");
        put_str(&mut props, "topicAlias");
        props.push(3);
        put_str(&mut props, "subscriptionIdentifier");
        props.extend_from_slice(&hex("920102"));
        put_str(&mut props, "userProperties");
        put_map(&mut props, 2);
        put_str(&mut props, "a");
        put_array(&mut props, 2);
        put_str(&mut props, "1");
        put_str(&mut props, "2");
        put_str(&mut props, "b");
        put_str(&mut props, "3");
        put_str(&mut props, "contentType");
        put_str(&mut props, "text/plain");
        let msg = decode(&with_topic(&[("properties", &props)])).expect("decodes");
        assert_eq!(
            msg.properties,
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(3600),
                topic_alias: None,
                response_topic: Some(ByteStr::from("reply/to")),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: vec![
                    (ByteStr::from("a"), ByteStr::from("1")),
                    (ByteStr::from("a"), ByteStr::from("2")),
                    (ByteStr::from("b"), ByteStr::from("3")),
                ],
                subscription_identifiers: Vec::new(),
                content_type: Some(ByteStr::from("text/plain")),
            }
        );

        let mut int_indicator = Vec::new();
        put_map(&mut int_indicator, 1);
        put_str(&mut int_indicator, "payloadFormatIndicator");
        int_indicator.push(0);
        let msg = decode(&with_topic(&[("properties", &int_indicator)])).expect("int");
        assert_eq!(msg.properties.payload_format_indicator, Some(0));

        let mut bad_topic = Vec::new();
        put_map(&mut bad_topic, 1);
        put_str(&mut bad_topic, "responseTopic");
        put_str(&mut bad_topic, "r/#");
        let err = decode(&with_topic(&[("properties", &bad_topic)])).expect_err("wildcard");
        assert_eq!(
            err.to_string(),
            "properties.responseTopic `r/#` is not a valid topic name"
        );
    }

    #[test]
    fn message_expiry_fills_in_for_a_missing_property() {
        let msg = decode(&with_topic(&[("messageExpiry", &[60])])).expect("decodes");
        assert_eq!(msg.properties.message_expiry_interval, Some(60));

        let mut props = Vec::new();
        put_map(&mut props, 1);
        put_str(&mut props, "messageExpiryInterval");
        props.push(5);
        let both = with_topic(&[("messageExpiry", &[60]), ("properties", &props)]);
        let msg = decode(&both).expect("decodes");
        assert_eq!(msg.properties.message_expiry_interval, Some(5));
    }

    #[test]
    fn properties_are_written_with_mqtt_packet_names() {
        let msg = BusPublish {
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(70_000),
                topic_alias: Some(4),
                response_topic: Some(ByteStr::from("r")),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![
                    (ByteStr::from("k"), ByteStr::from("1")),
                    (ByteStr::from("j"), ByteStr::from("2")),
                    (ByteStr::from("k"), ByteStr::from("3")),
                ],
                subscription_identifiers: vec![9],
                content_type: Some(ByteStr::from("c")),
            },
            ..example_1()
        };
        let bytes = encode("i", &msg);
        let mut expected = s("properties");
        put_map(&mut expected, 6);
        put_str(&mut expected, "payloadFormatIndicator");
        put_bool(&mut expected, true);
        put_str(&mut expected, "messageExpiryInterval");
        expected.extend_from_slice(&hex("ce00011170"));
        put_str(&mut expected, "responseTopic");
        put_str(&mut expected, "r");
        put_str(&mut expected, "correlationData");
        expected.extend_from_slice(&hex("c4020001"));
        put_str(&mut expected, "userProperties");
        expected.extend_from_slice(&hex("82a16b92a131a133a16aa132"));
        put_str(&mut expected, "contentType");
        put_str(&mut expected, "c");
        assert!(bytes.ends_with(&expected));
        assert_eq!(bytes[10], 0x8b, "msg map of 11 entries");
    }

    #[test]
    fn not_msgpack_is_an_error() {
        assert_eq!(
            decode(b""),
            Err(WireError::Truncated { at: 0 }),
            "empty input"
        );
        assert_eq!(
            decode(b"hello").expect_err("hello").to_string(),
            "not msgpack: 4 bytes after the value that ends at byte 1"
        );
        let full = hex(EXAMPLE_1);
        for cut in 1..full.len() {
            let err = decode(&full[..cut]).expect_err("truncated");
            assert!(matches!(err, WireError::Truncated { .. }), "{cut}: {err}");
        }
        assert_eq!(
            decode(&full[..17]).expect_err("cut").to_string(),
            "not msgpack: truncated at byte 4"
        );
        assert_eq!(
            decode(&hex("c1")),
            Err(WireError::Reserved { at: 0 }),
            "0xc1"
        );
        let mut trailing = full;
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(WireError::Trailing { end: 160, extra: 1 })
        ));
    }

    #[test]
    fn claimed_lengths_beyond_the_input_are_truncation() {
        for head in [
            "dbffffffff6162",
            "c6ffffffff6162",
            "c9ffffffff016162",
            "ddffffffffc0c0",
            "dfffffffffc0c0",
            "82a26964dbffffffff",
        ] {
            let err = decode(&hex(head)).expect_err(head);
            assert!(matches!(err, WireError::Truncated { .. }), "{head}: {err}");
        }
        // The same claims inside msg, and a claimed user-property count.
        let mut huge = envelope(&[("topic", &s("t")), ("payload", &hex("dbffffffff"))]);
        huge.extend_from_slice(b"ab");
        assert!(matches!(decode(&huge), Err(WireError::Truncated { .. })));
        let mut props = Vec::new();
        put_map(&mut props, 1);
        put_str(&mut props, "userProperties");
        props.extend_from_slice(&hex("dfffffffff"));
        let bytes = with_topic(&[("properties", &props)]);
        assert!(matches!(decode(&bytes), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn nesting_is_limited() {
        let nested = |depth: usize| {
            let mut v = vec![0x91; depth - 1];
            v.push(0x90);
            v
        };
        // The envelope and msg are the first two levels.
        let ok = nested(MAX_DEPTH - 2);
        let msg = decode(&with_topic(&[("deep", &ok)])).expect("32 levels");
        assert_eq!(msg.topic.as_str(), "t");
        let deep = nested(MAX_DEPTH - 1);
        let err = decode(&with_topic(&[("deep", &deep)])).expect_err("too deep");
        assert!(matches!(err, WireError::TooDeep { .. }), "{err}");
        let bomb = vec![0x91; 1_000_000];
        assert!(matches!(decode(&bomb), Err(WireError::TooDeep { at: 32 })));
    }

    #[test]
    fn envelopes_without_a_publish_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (hex("93010203"), "envelope is array, not map"),
            (hex("81a26964a178"), "no `msg` map"),
            (hex("82a26964a178a36d7367c0"), "no `msg` map"),
            (hex("82a26964a178a36d7367a161"), "msg is str, not map"),
            (hex("82a2696401a36d736780"), "id is int, not str or bin"),
            (envelope(&[("qos", &[1])]), "no `topic` in msg"),
            (
                envelope(&[("topic", &hex("c403612f62"))]),
                "topic is bin, not str",
            ),
            (
                envelope(&[("topic", &s("a/+"))]),
                "topic `a/+` is not a valid topic name",
            ),
            (
                envelope(&[("topic", &s("a/#"))]),
                "topic `a/#` is not a valid topic name",
            ),
            (
                envelope(&[("topic", &s(""))]),
                "topic `` is not a valid topic name",
            ),
            (
                envelope(&[("topic", &hex("a3610062"))]),
                "topic `a\\0b` is not a valid topic name",
            ),
            (
                envelope(&[("topic", &hex("a2ff61"))]),
                "topic `\u{fffd}a` is not a valid topic name",
            ),
            (with_topic(&[("qos", &[3])]), "qos 3 out of range"),
            (
                with_topic(&[("cmd", &s("pubrel"))]),
                "cmd `pubrel` is not a publish",
            ),
            (with_topic(&[("cmd", &[1])]), "cmd is int, not str"),
            (with_topic(&[("retain", &[2])]), "retain 2 out of range"),
            (with_topic(&[("dup", &s("yes"))]), "dup is str, not bool"),
            (
                with_topic(&[("payload", &[1])]),
                "payload is int, not str or bin",
            ),
            (
                with_topic(&[("clientId", &hex("a2ff61"))]),
                "clientId `\u{fffd}a` is not UTF-8 without U+0000",
            ),
            (
                with_topic(&[("brokerId", &[1])]),
                "brokerId is int, not str",
            ),
            (
                with_topic(&[("properties", &[1])]),
                "properties is int, not map",
            ),
        ];
        for (bytes, message) in cases {
            let err = decode(&bytes).expect_err(message);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn retain_and_dup_take_bools_nil_and_0_or_1() {
        let msg = decode(&with_topic(&[("retain", &[0xc3]), ("dup", &[1])])).expect("decodes");
        assert!(msg.retain && msg.dup);
        let msg = decode(&with_topic(&[("retain", &[0xc0]), ("dup", &[0])])).expect("decodes");
        assert!(!msg.retain && !msg.dup);
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let topic = format!("{}/+", "a".repeat(100));
        let err = decode(&envelope(&[("topic", &s(&topic))])).expect_err("wildcard");
        let text = err.to_string();
        assert!(text.contains(&format!("`{}…`", "a".repeat(64))), "{text}");
    }

    /// mqtt-packet groups repeated keys: the order after a round trip.
    fn grouped(pairs: &[(ByteStr, ByteStr)]) -> Vec<(ByteStr, ByteStr)> {
        let mut out: Vec<(ByteStr, ByteStr)> = Vec::new();
        for (key, _) in pairs {
            if out.iter().any(|(k, _)| k == key) {
                continue;
            }
            out.extend(pairs.iter().filter(|(k, _)| k == key).cloned());
        }
        out
    }

    fn text(pattern: &'static str) -> impl Strategy<Value = ByteStr> {
        pattern.prop_map(ByteStr::from)
    }

    fn properties() -> impl Strategy<Value = PublishProperties> {
        (
            proptest::option::of(0u8..=1),
            proptest::option::of(any::<u32>()),
            proptest::option::of(text("[a-z/]{0,5}[a-z]")),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::collection::vec((text("[a-c]{0,2}"), text("[a-zé€ ]{0,40}")), 0..6),
            proptest::option::of(text("[a-z/;=]{0,20}")),
        )
            .prop_map(
                |(pfi, expiry, response, corr, user, content)| PublishProperties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: expiry,
                    response_topic: response,
                    correlation_data: corr.map(Bytes::from),
                    user_properties: user,
                    content_type: content,
                    ..PublishProperties::default()
                },
            )
    }

    fn bus_publish() -> impl Strategy<Value = BusPublish> {
        (
            text("[a-z0-9$/ é]{0,40}[a-z]"),
            proptest::collection::vec(any::<u8>(), 0..300),
            0u8..=2,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of("[a-zA-Z0-9-]{0,40}"),
            proptest::option::of(any::<u64>()),
            proptest::option::of(text("[a-zA-Z0-9-]{0,40}")),
            properties(),
        )
            .prop_map(
                |(topic, payload, qos, retain, dup, broker_id, counter, client_id, props)| {
                    BusPublish {
                        id: None,
                        topic,
                        payload: Bytes::from(payload),
                        qos: QoS::from_u8(qos).unwrap_or_default(),
                        retain,
                        dup,
                        broker_id,
                        broker_counter: counter,
                        client_id,
                        properties: props,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_message_back(
            msg in bus_publish(),
            id in "[a-zA-Z0-9/+-]{1,40}",
        ) {
            let bytes = encode(&id, &msg);
            let mut expected = msg.clone();
            expected.id = Some(Bytes::from(id.into_bytes()));
            expected.properties.user_properties = grouped(&msg.properties.user_properties);
            prop_assert_eq!(decode(&bytes), Ok(expected));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_a_damaged_capture(
            edits in proptest::collection::vec((0usize..160, any::<u8>()), 1..6),
            cut in 1usize..=160,
        ) {
            let mut bytes = hex(EXAMPLE_1);
            for (at, byte) in edits {
                bytes[at] = byte;
            }
            bytes.truncate(cut);
            let _ = decode(&bytes);
        }
    }
}
