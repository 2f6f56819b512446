//! Malformed and protocol-violating input, one row per rule: raw bytes in, reason code out.
//!
//! Rows are named after the normative statement where the specification numbers it. Labels
//! differ between 3.1.1 and 5.0 for the same rule, so a row says which document it quotes when
//! the label is not shared. Valid rows sit beside the invalid ones where a rule has an edge
//! (3.1 "MQIsdp", a 5.0 password without user name, the 5.0 short forms).
//! The first rows are the probe cases from docs deps.md section 1.

use bytes::BytesMut;
use pigeon_codec::{DecodeError, Decoder, Protocol, ReasonCode};

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;
const TOPIC_NAME: ReasonCode = ReasonCode::TOPIC_NAME_INVALID;
const TOPIC_FILTER: ReasonCode = ReasonCode::TOPIC_FILTER_INVALID;
const TOO_LARGE: ReasonCode = ReasonCode::PACKET_TOO_LARGE;
const VERSION: ReasonCode = ReasonCode::UNSUPPORTED_PROTOCOL_VERSION;

const MAX: u32 = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Level {
    /// `Decoder::new`: the level comes from CONNECT.
    Server,
    At(Protocol),
}
use Level::Server;
const V3: Level = Level::At(Protocol::V3_1);
const V4: Level = Level::At(Protocol::V3_1_1);
const V5: Level = Level::At(Protocol::V5);

#[derive(Debug)]
enum Want {
    /// This many packets decode and the buffer is used up.
    Packets(usize),
    Code(ReasonCode),
}
use Want::{Code, Packets};

struct Case {
    name: &'static str,
    level: Level,
    bytes: Vec<u8>,
    want: Want,
}

fn case(name: &'static str, level: Level, bytes: Vec<u8>, want: Want) -> Case {
    Case {
        name,
        level,
        bytes,
        want,
    }
}

/// A packet: first byte, remaining length, body.
fn p(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field.
fn st(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A property section: its length, then the properties.
fn props(b: &[u8]) -> Vec<u8> {
    assert!(b.len() < 128, "one-byte property length in this table");
    [&[b.len() as u8][..], b].concat()
}

fn connect(
    name: &[u8],
    level: u8,
    flags: u8,
    properties: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = st(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if let Some(pr) = properties {
        body.extend(props(pr));
    }
    body.extend_from_slice(payload);
    p(0x10, &body)
}

fn connect4(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, None, payload)
}

fn connect5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 5, flags, Some(properties), payload)
}

/// A client id "id".
fn cid() -> Vec<u8> {
    st(b"id")
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// 5.0 PUBLISH QoS 0 to `topic` with `properties` and payload "x".
fn publish5(topic: &[u8], properties: &[u8]) -> Vec<u8> {
    p(0x30, &cat(&[&st(topic), &props(properties), b"x"]))
}

/// 5.0 SUBSCRIBE id 1 with `properties` and (filter, options) pairs.
fn subscribe5(properties: &[u8], filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend(props(properties));
    for (f, o) in filters {
        body.extend(st(f));
        body.push(*o);
    }
    p(0x82, &body)
}

fn subscribe4(filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = vec![0, 1];
    for (f, o) in filters {
        body.extend(st(f));
        body.push(*o);
    }
    p(0x82, &body)
}

fn cases() -> Vec<Case> {
    let conn4 = connect4(0x02, &cid());
    vec![
        // --- deps.md section 1 probe cases ---------------------------------------------------
        case("CONNECT 3.1 MQIsdp level 3 is valid", Server, connect(b"MQIsdp", 3, 0x02, None, &cid()), Packets(1)),
        case("[MQTT-3.1.2-3] CONNECT reserved flag set", Server, connect4(0x03, &cid()), Code(MALFORMED)),
        case(
            "[MQTT-3.1.2-22] (3.1.1) password without user name",
            Server,
            connect4(0x42, &cat(&[&cid(), &st(b"pw")])),
            Code(PROTOCOL),
        ),
        case("[MQTT-1.5.4-2] client id with U+0000", Server, connect4(0x02, &st(b"a\0b")), Code(MALFORMED)),
        case("protocol level 9", Server, connect(b"MQTT", 9, 0x02, None, &cid()), Code(VERSION)),
        case("[MQTT-3-8.3-4] (3.1.1) SUBSCRIBE reserved option bits", V4, subscribe4(&[(b"a", 0x04)]), Code(MALFORMED)),
        case("[MQTT-2.2.1-3] SUBSCRIBE packet identifier 0", V4, p(0x82, &cat(&[&[0, 0], &st(b"a"), &[0]])), Code(PROTOCOL)),
        case("[MQTT-2.2.1-3] PUBLISH QoS 1 packet identifier 0", V4, p(0x32, &cat(&[&st(b"a"), &[0, 0]])), Code(PROTOCOL)),
        case("[MQTT-3.3.1-2] PUBLISH QoS 0 with DUP", V4, p(0x38, &st(b"a")), Code(MALFORMED)),
        case("[MQTT-2.1.3-1] SUBSCRIBE header flags 0", V4, p(0x80, &cat(&[&[0, 1], &st(b"a"), &[0]])), Code(MALFORMED)),
        case("[MQTT-2.1.3-1] PUBREL header flags 0", V4, p(0x60, &[0, 1]), Code(MALFORMED)),
        case(
            "v5 duplicate Session Expiry Interval",
            Server,
            connect5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &cid()),
            Code(PROTOCOL),
        ),
        case("v5 Receive Maximum 0", Server, connect5(0x02, &[0x21, 0, 0], &cid()), Code(PROTOCOL)),
        case("v5 Maximum Packet Size 0", Server, connect5(0x02, &[0x27, 0, 0, 0, 0], &cid()), Code(PROTOCOL)),
        case("[MQTT-3.3.2-8] v5 Topic Alias 0", V5, publish5(b"a", &[0x23, 0, 0]), Code(ReasonCode::TOPIC_ALIAS_INVALID)),
        case("[MQTT-3.8.3-5] v5 SUBSCRIBE reserved option bits", V5, subscribe5(&[], &[(b"a", 0xC0)]), Code(MALFORMED)),
        // --- CONNECT -----------------------------------------------------------------------
        case("CONNECT 3.1.1 is valid", Server, conn4.clone(), Packets(1)),
        case("CONNECT 5.0 is valid", Server, connect5(0x02, &[], &cid()), Packets(1)),
        case(
            "CONNECT 3.1 client id over 23 characters is accepted (as mosquitto does)",
            Server,
            connect(b"MQIsdp", 3, 0x02, None, &st(b"a-client-id-longer-than-23-characters")),
            Packets(1),
        ),
        case(
            "v5 password without user name is valid (section 3.1.2.9)",
            Server,
            connect5(0x42, &[], &cat(&[&cid(), &st(b"pw")])),
            Packets(1),
        ),
        case("[MQTT-3.1.0-1] first packet is not CONNECT", Server, p(0xC0, &[]), Code(PROTOCOL)),
        case("[MQTT-3.1.0-2] second CONNECT", Server, cat(&[&conn4, &conn4]), Code(PROTOCOL)),
        case("[MQTT-3.1.2-1] protocol name not MQTT", Server, connect(b"MQTX", 4, 0x02, None, &cid()), Code(VERSION)),
        case("protocol name MQTT with level 3", Server, connect(b"MQTT", 3, 0x02, None, &cid()), Code(VERSION)),
        case("protocol name MQIsdp with level 4", Server, connect(b"MQIsdp", 4, 0x02, None, &cid()), Code(VERSION)),
        case("bridge bit on protocol level (0x84)", Server, connect(b"MQTT", 0x84, 0x02, None, &cid()), Code(VERSION)),
        case("[MQTT-3.1.2-11] (5.0) Will QoS without Will Flag", Server, connect4(0x0A, &cid()), Code(MALFORMED)),
        case("[MQTT-3.1.2-13] (5.0) Will Retain without Will Flag", Server, connect4(0x22, &cid()), Code(MALFORMED)),
        case(
            "[MQTT-3.1.2-12] (5.0) Will QoS 3",
            Server,
            connect4(0x1E, &cat(&[&cid(), &st(b"w"), &st(b"m")])),
            Code(MALFORMED),
        ),
        case(
            "Will Topic with a wildcard (section 4.7.1)",
            Server,
            connect4(0x06, &cat(&[&cid(), &st(b"w/#"), &st(b"m")])),
            Code(TOPIC_NAME),
        ),
        case(
            "[MQTT-4.7.3-1] empty Will Topic",
            Server,
            connect4(0x06, &cat(&[&cid(), &st(b""), &st(b"m")])),
            Code(TOPIC_NAME),
        ),
        case("[MQTT-1.5.4-1] client id not UTF-8", Server, connect4(0x02, &st(&[0xC3, 0x28])), Code(MALFORMED)),
        case(
            "[MQTT-1.5.4-1] client id with an encoded surrogate U+D800",
            Server,
            connect4(0x02, &st(&[0xED, 0xA0, 0x80])),
            Code(MALFORMED),
        ),
        case("CONNECT missing its client id", Server, connect4(0x02, &[]), Code(MALFORMED)),
        case("CONNECT with a user name flag but no user name", Server, connect4(0x82, &cid()), Code(MALFORMED)),
        case("CONNECT with bytes after its payload", Server, connect4(0x02, &cat(&[&cid(), &[0]])), Code(MALFORMED)),
        case(
            "v5 Request Problem Information 2",
            Server,
            connect5(0x02, &[0x17, 2], &cid()),
            Code(PROTOCOL),
        ),
        case(
            "v5 Request Response Information 2",
            Server,
            connect5(0x02, &[0x19, 2], &cid()),
            Code(PROTOCOL),
        ),
        case(
            "v5 Authentication Data without Authentication Method",
            Server,
            connect5(0x02, &cat(&[&[0x16], &st(b"d")]), &cid()),
            Code(PROTOCOL),
        ),
        case(
            "v5 Topic Alias on CONNECT: identifier not valid for the packet (section 2.2.2.2)",
            Server,
            connect5(0x02, &[0x23, 0, 1], &cid()),
            Code(MALFORMED),
        ),
        case("v5 unknown property identifier 0x05", Server, connect5(0x02, &[0x05, 0], &cid()), Code(MALFORMED)),
        case(
            "v5 property length past the end of the packet",
            Server,
            p(0x10, &cat(&[&st(b"MQTT"), &[5, 2, 0, 60, 50], &cid()])),
            Code(MALFORMED),
        ),
        case(
            "v5 user property may repeat",
            Server,
            connect5(0x02, &cat(&[&[0x26], &st(b"k"), &st(b"v"), &[0x26], &st(b"k"), &st(b"v")]), &cid()),
            Packets(1),
        ),
        case(
            "v5 will Payload Format Indicator 2",
            Server,
            connect5(0x06, &[], &cat(&[&cid(), &props(&[0x01, 2]), &st(b"w"), &st(b"m")])),
            Code(PROTOCOL),
        ),
        case(
            "[MQTT-3.3.2-14] v5 will Response Topic with a wildcard",
            Server,
            connect5(0x06, &[], &cat(&[&cid(), &props(&cat(&[&[0x08], &st(b"r/+")])), &st(b"w"), &st(b"m")])),
            Code(PROTOCOL),
        ),
        case(
            "v5 will property not valid for a will (Session Expiry Interval)",
            Server,
            connect5(0x06, &[], &cat(&[&cid(), &props(&[0x11, 0, 0, 0, 1]), &st(b"w"), &st(b"m")])),
            Code(MALFORMED),
        ),
        // --- fixed header ----------------------------------------------------------------------
        case("[MQTT-2.1.3-1] UNSUBSCRIBE header flags 0", V4, p(0xA0, &cat(&[&[0, 1], &st(b"a")])), Code(MALFORMED)),
        case("[MQTT-2.1.3-1] PINGREQ header flags 1", V4, p(0xC1, &[]), Code(MALFORMED)),
        case("[MQTT-2.1.3-1] PUBACK header flags 2", V4, p(0x42, &[0, 1]), Code(MALFORMED)),
        case("[MQTT-2.1.3-1] CONNECT header flags 1", Server, cat(&[&[0x11], &conn4[1..]]), Code(MALFORMED)),
        case("packet type 0", V4, p(0x00, &[]), Code(MALFORMED)),
        case("packet type 15 (AUTH) in 3.1.1", V4, p(0xF0, &[]), Code(MALFORMED)),
        case("packet type 15 (AUTH) in 3.1", V3, p(0xF0, &[]), Code(MALFORMED)),
        case("[MQTT-3.3.1-4] PUBLISH QoS 3", V4, p(0x36, &cat(&[&st(b"a"), &[0, 1]])), Code(MALFORMED)),
        case(
            "remaining length over four bytes",
            V4,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            Code(MALFORMED),
        ),
        case("remaining length over the maximum packet size", V4, vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F], Code(TOO_LARGE)),
        case(
            "partial remaining length already over the maximum packet size",
            V4,
            vec![0x30, 0x80, 0x80, 0xC0],
            Code(TOO_LARGE),
        ),
        case("PUBACK longer than its contents (3.1.1)", V4, p(0x40, &[0, 1, 0]), Code(MALFORMED)),
        case("PUBACK shorter than its packet identifier", V4, p(0x40, &[0]), Code(MALFORMED)),
        case("PINGREQ with a body", V4, p(0xC0, &[0]), Code(MALFORMED)),
        case("PINGRESP with a body", V5, p(0xD0, &[0]), Code(MALFORMED)),
        case("DISCONNECT with a body in 3.1.1", V4, p(0xE0, &[0]), Code(MALFORMED)),
        // --- PUBLISH ---------------------------------------------------------------------------
        case("[MQTT-3.3.2-2] PUBLISH topic with +", V4, p(0x30, &st(b"a/+")), Code(TOPIC_NAME)),
        case("[MQTT-3.3.2-2] PUBLISH topic with #", V3, p(0x30, &st(b"#")), Code(TOPIC_NAME)),
        case("[MQTT-3.3.2-2] v5 PUBLISH topic with +", V5, publish5(b"+", &[]), Code(TOPIC_NAME)),
        case("[MQTT-4.7.3-1] empty PUBLISH topic in 3.1.1", V4, p(0x30, &st(b"")), Code(TOPIC_NAME)),
        case("v5 empty PUBLISH topic without Topic Alias", V5, publish5(b"", &[]), Code(PROTOCOL)),
        case("v5 empty PUBLISH topic with Topic Alias is valid", V5, publish5(b"", &[0x23, 0, 1]), Packets(1)),
        case("[MQTT-1.5.4-2] PUBLISH topic with U+0000", V4, p(0x30, &st(b"a\0")), Code(MALFORMED)),
        case("PUBLISH topic length past the end", V4, p(0x30, &[0, 9, b'a']), Code(MALFORMED)),
        case("PUBLISH QoS 1 without packet identifier", V4, p(0x32, &st(b"a")), Code(MALFORMED)),
        case(
            "v5 duplicate Message Expiry Interval",
            V5,
            publish5(b"a", &[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]),
            Code(PROTOCOL),
        ),
        case("v5 PUBLISH Payload Format Indicator 2", V5, publish5(b"a", &[0x01, 2]), Code(PROTOCOL)),
        case("v5 PUBLISH Subscription Identifier 0", V5, publish5(b"a", &[0x0B, 0]), Code(PROTOCOL)),
        case("v5 PUBLISH Subscription Identifier may repeat", V5, publish5(b"a", &[0x0B, 1, 0x0B, 2]), Packets(1)),
        case(
            "v5 variable byte integer over four bytes",
            V5,
            publish5(b"a", &[0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Code(MALFORMED),
        ),
        case(
            "v5 Session Expiry Interval on PUBLISH: identifier not valid for the packet (section 2.2.2.2)",
            V5,
            publish5(b"a", &[0x11, 0, 0, 0, 1]),
            Code(MALFORMED),
        ),
        case(
            "[MQTT-3.3.2-14] v5 PUBLISH Response Topic with a wildcard",
            V5,
            publish5(b"a", &cat(&[&[0x08], &st(b"r/#")])),
            Code(PROTOCOL),
        ),
        case("v5 PUBLISH duplicate Topic Alias", V5, publish5(b"a", &[0x23, 0, 1, 0x23, 0, 2]), Code(PROTOCOL)),
        // --- SUBSCRIBE -------------------------------------------------------------------------
        case("[MQTT-3-8.3-4] (3.1.1) SUBSCRIBE requested QoS 3", V4, subscribe4(&[(b"a", 3)]), Code(MALFORMED)),
        case("v5 Subscription Options Maximum QoS 3 (section 3.8.3.1)", V5, subscribe5(&[], &[(b"a", 3)]), Code(PROTOCOL)),
        case("v5 Retain Handling 3 (section 3.8.3.1)", V5, subscribe5(&[], &[(b"a", 0x30)]), Code(PROTOCOL)),
        case("[MQTT-3.8.3-4] (5.0) No Local on a Shared Subscription", V5, subscribe5(&[], &[(b"$share/g/a", 0x04)]), Code(PROTOCOL)),
        case("[MQTT-3.8.3-3] (3.1.1) SUBSCRIBE without a topic filter", V4, p(0x82, &[0, 1]), Code(PROTOCOL)),
        case("[MQTT-3.8.3-2] (5.0) SUBSCRIBE without a topic filter", V5, subscribe5(&[], &[]), Code(PROTOCOL)),
        case("SUBSCRIBE filter a/#/b: # not last (section 4.7.1.2)", V4, subscribe4(&[(b"a/#/b", 0)]), Code(TOPIC_FILTER)),
        case("SUBSCRIBE filter a+ (section 4.7.1.2)", V4, subscribe4(&[(b"a+", 0)]), Code(TOPIC_FILTER)),
        case("SUBSCRIBE empty filter", V4, subscribe4(&[(b"", 0)]), Code(TOPIC_FILTER)),
        case("SUBSCRIBE $share without a filter", V5, subscribe5(&[], &[(b"$share/g", 0)]), Code(TOPIC_FILTER)),
        case("SUBSCRIBE $share/group/filter is valid in 3.1.1", V4, subscribe4(&[(b"$share/g/a/+", 1)]), Packets(1)),
        case("SUBSCRIBE filter without its options byte", V4, p(0x82, &cat(&[&[0, 1], &st(b"a")])), Code(MALFORMED)),
        case("v5 SUBSCRIBE Subscription Identifier 0", V5, subscribe5(&[0x0B, 0], &[(b"a", 0)]), Code(PROTOCOL)),
        case(
            "v5 SUBSCRIBE Subscription Identifier twice",
            V5,
            subscribe5(&[0x0B, 1, 0x0B, 2], &[(b"a", 0)]),
            Code(PROTOCOL),
        ),
        case(
            "v5 Topic Alias on SUBSCRIBE: identifier not valid for the packet (section 2.2.2.2)",
            V5,
            subscribe5(&[0x23, 0, 1], &[(b"a", 0)]),
            Code(MALFORMED),
        ),
        // --- UNSUBSCRIBE -----------------------------------------------------------------------
        case("[MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter", V4, p(0xA2, &[0, 1]), Code(PROTOCOL)),
        case("[MQTT-3.10.3-2] v5 UNSUBSCRIBE without a topic filter", V5, p(0xA2, &[0, 1, 0]), Code(PROTOCOL)),
        case("UNSUBSCRIBE filter a/#/b", V4, p(0xA2, &cat(&[&[0, 1], &st(b"a/#/b")])), Code(TOPIC_FILTER)),
        case("[MQTT-2.2.1-3] UNSUBSCRIBE packet identifier 0", V4, p(0xA2, &cat(&[&[0, 0], &st(b"a")])), Code(PROTOCOL)),
        // --- acknowledgements and the rest -----------------------------------------------------
        case("[MQTT-2.2.1-3] PUBACK packet identifier 0", V4, p(0x40, &[0, 0]), Code(PROTOCOL)),
        case("[MQTT-3.9.3-2] (3.1.1) SUBACK return code 3", V4, p(0x90, &[0, 1, 3]), Code(MALFORMED)),
        case("UNSUBACK with a payload in 3.1.1", V4, p(0xB0, &[0, 1, 0]), Code(MALFORMED)),
        case("v5 PUBACK remaining length 2 is Success", V5, p(0x40, &[0, 1]), Packets(1)),
        case("v5 PUBREC remaining length 3 has no properties", V5, p(0x50, &[0, 1, 0x10]), Packets(1)),
        case("v5 DISCONNECT remaining length 0 is Normal", V5, p(0xE0, &[]), Packets(1)),
        case("v5 AUTH remaining length 0 is Success", V5, p(0xF0, &[]), Packets(1)),
        case(
            "v5 Topic Alias on PUBACK: identifier not valid for the packet (section 2.2.2.2)",
            V5,
            p(0x40, &[0, 1, 0, 3, 0x23, 0, 1]),
            Code(MALFORMED),
        ),
        case("v5 CONNACK Maximum QoS 2", V5, p(0x20, &[0, 0, 2, 0x24, 2]), Code(PROTOCOL)),
        case("v5 CONNACK Retain Available 2", V5, p(0x20, &[0, 0, 2, 0x25, 2]), Code(PROTOCOL)),
        case("CONNACK reserved acknowledge flags (section 3.2.2.1)", V4, p(0x20, &[2, 0]), Code(MALFORMED)),
        case(
            "v5 DISCONNECT duplicate Reason String",
            V5,
            p(0xE0, &cat(&[&[0], &props(&cat(&[&[0x1F], &st(b"a"), &[0x1F], &st(b"b")]))])),
            Code(PROTOCOL),
        ),
        case(
            "v5 AUTH Authentication Data without Authentication Method",
            V5,
            p(0xF0, &cat(&[&[0x18], &props(&cat(&[&[0x16], &st(b"d")]))])),
            Code(PROTOCOL),
        ),
    ]
}

fn run(case: &Case) -> Result<usize, DecodeError> {
    let mut decoder = match case.level {
        Server => Decoder::new(MAX),
        Level::At(protocol) => Decoder::with_protocol(protocol, MAX),
    };
    let mut buf = BytesMut::from(&case.bytes[..]);
    let mut packets = 0;
    while let Some(_packet) = decoder.decode(&mut buf)? {
        packets += 1;
    }
    assert!(
        buf.is_empty(),
        "{}: {} bytes left undecoded",
        case.name,
        buf.len()
    );
    Ok(packets)
}

#[test]
fn each_rule_earns_its_reason_code() {
    let mut failures = Vec::new();
    let all = cases();
    for case in &all {
        let got = run(case);
        let ok = match (&case.want, &got) {
            (Packets(n), Ok(m)) => n == m,
            (Code(code), Err(e)) => e.reason_code() == *code,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{}: want {:?}, got {:?}",
                case.name, case.want, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// Where a row names a statement, the refusal names it too, so a log line leads to the rule.
#[test]
fn refusals_name_their_statement() {
    let mut failures = Vec::new();
    for case in cases() {
        let Some(label) = case
            .name
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with("[MQTT-"))
        else {
            continue;
        };
        // The variants without a detail text (protocol name and level, packet size) are exempt.
        if let Err(
            e @ (DecodeError::Malformed(_)
            | DecodeError::Protocol(_)
            | DecodeError::TopicNameInvalid(_)
            | DecodeError::TopicFilterInvalid(_)
            | DecodeError::TopicAliasInvalid(_)),
        ) = run(&case)
        {
            if !e.to_string().contains(label) {
                failures.push(format!("{}: {e}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Truncating a valid packet anywhere gives `Ok(None)` and consumes nothing.
#[test]
fn every_prefix_of_a_valid_packet_needs_more() {
    for case in cases().into_iter().filter(|c| matches!(c.want, Packets(1))) {
        for cut in 0..case.bytes.len() {
            let mut decoder = match case.level {
                Server => Decoder::new(MAX),
                Level::At(protocol) => Decoder::with_protocol(protocol, MAX),
            };
            let mut buf = BytesMut::from(&case.bytes[..cut]);
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(None),
                "{} cut at {cut}",
                case.name
            );
            assert_eq!(buf.len(), cut);
        }
    }
}
