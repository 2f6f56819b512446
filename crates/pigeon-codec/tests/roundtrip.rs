//! Round trips for every packet type at every protocol level, with generated packets.
//!
//! Each generator produces only what is valid at its level (3.x: no properties, SUBACK codes
//! 0/1/2/0x80, empty UNSUBACK codes, no AUTH). For each packet: encode then decode gives the same
//! value, decode then encode gives the same bytes, `encoded_len` is the number of bytes written,
//! and feeding the bytes one at a time yields `Ok(None)` until the last one.

use bytes::{Bytes, BytesMut};
use pigeon_codec::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

const LEVELS: [Protocol; 3] = [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5];

fn text() -> impl Strategy<Value = ByteStr> {
    // Multi-byte characters included, U+0000 excluded (MQTT-1.5.4-2).
    "[a-zA-Z0-9 /ü€😀_-]{0,12}".prop_map(ByteStr::from)
}

fn topic_name() -> impl Strategy<Value = ByteStr> {
    "[a-z0-9/ü$]{1,12}".prop_map(ByteStr::from)
}

fn topic_filter() -> impl Strategy<Value = ByteStr> {
    let level = prop_oneof![3 => "[a-z0-9ü]{0,4}", 1 => Just("+".to_string())];
    (vec(level, 1..4), any::<bool>(), any::<bool>()).prop_map(|(levels, hash, shared)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        if f.is_empty() {
            // A filter has at least one character (MQTT-4.7.3-1).
            f.push('+');
        }
        if shared {
            f = format!("$share/group/{f}");
        }
        ByteStr::from(f)
    })
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn sub_id() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

fn users(v5: bool) -> BoxedStrategy<UserProperties> {
    if v5 {
        vec((text(), text()), 0..3).boxed()
    } else {
        Just(Vec::new()).boxed()
    }
}

/// Properties at 5.0, their default at 3.x.
fn v5_or_default<T: Default + Clone + std::fmt::Debug + 'static>(
    v5: bool,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if v5 {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

/// An authentication method with optional data, or neither (data alone is a Protocol Error).
fn auth_pair() -> impl Strategy<Value = (Option<ByteStr>, Option<Bytes>)> {
    prop_oneof![
        Just((None, None)),
        (text(), of(binary())).prop_map(|(m, d)| (Some(m), d)),
    ]
}

fn ack_properties(v5: bool) -> BoxedStrategy<AckProperties> {
    v5_or_default(
        v5,
        (of(text()), users(true)).prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        }),
    )
}

fn reason(v5: bool) -> BoxedStrategy<ReasonCode> {
    v5_or_default(v5, any::<u8>().prop_map(ReasonCode))
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let properties = v5_or_default(
        v5,
        (
            (
                of(any::<u32>()),
                of(1..=u16::MAX),
                of(1..=u32::MAX),
                of(any::<u16>()),
            ),
            (of(0..=1u8), of(0..=1u8), users(true), auth_pair()),
        )
            .prop_map(
                |((sei, rm, mps, tam), (rri, rpi, user_properties, (am, ad)))| ConnectProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_packet_size: mps,
                    topic_alias_maximum: tam,
                    request_response_information: rri,
                    request_problem_information: rpi,
                    user_properties,
                    authentication_method: am,
                    authentication_data: ad,
                },
            ),
    );
    let will_properties = v5_or_default(
        v5,
        (
            (of(any::<u32>()), of(0..=1u8), of(any::<u32>()), of(text())),
            (of(topic_name()), of(binary()), users(true)),
        )
            .prop_map(
                |((wdi, pfi, mei, ct), (rt, cd, user_properties))| WillProperties {
                    will_delay_interval: wdi,
                    payload_format_indicator: pfi,
                    message_expiry_interval: mei,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd,
                    user_properties,
                },
            ),
    );
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        will_properties,
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    let credentials = (of(text()), of(binary())).prop_map(move |(u, p)| {
        // 3.1.1 forbids a password without a user name (MQTT-3.1.2-22); 5.0 allows it.
        if u.is_none() && !v5 {
            (None, None)
        } else {
            (u, p)
        }
    });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will),
        credentials,
        properties,
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, (username, password), properties)| {
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let code = if v5 {
        any::<u8>().boxed()
    } else {
        (0..=5u8).boxed()
    };
    let properties = v5_or_default(
        v5,
        (
            (
                of(any::<u32>()),
                of(1..=u16::MAX),
                of(0..=1u8),
                of(any::<bool>()),
            ),
            (
                of(1..=u32::MAX),
                of(text()),
                of(any::<u16>()),
                of(text()),
                users(true),
            ),
            (
                of(any::<bool>()),
                of(any::<bool>()),
                of(any::<bool>()),
                of(any::<u16>()),
            ),
            (of(text()), of(text()), auth_pair()),
        )
            .prop_map(
                |(
                    (sei, rm, mq, ra),
                    (mps, aci, tam, rs, up),
                    (wsa, sia, ssa, ska),
                    (ri, sr, (am, ad)),
                )| {
                    ConnAckProperties {
                        session_expiry_interval: sei,
                        receive_maximum: rm,
                        maximum_qos: mq,
                        retain_available: ra,
                        maximum_packet_size: mps,
                        assigned_client_identifier: aci,
                        topic_alias_maximum: tam,
                        reason_string: rs,
                        user_properties: up,
                        wildcard_subscription_available: wsa,
                        subscription_identifiers_available: sia,
                        shared_subscription_available: ssa,
                        server_keep_alive: ska,
                        response_information: ri,
                        server_reference: sr,
                        authentication_method: am,
                        authentication_data: ad,
                    }
                },
            ),
    );
    (any::<bool>(), code, properties).prop_map(|(session_present, code, properties)| {
        Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode(code),
            properties,
        })
    })
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let properties = v5_or_default(
        v5,
        (
            (
                of(0..=1u8),
                of(any::<u32>()),
                of(1..=u16::MAX),
                of(topic_name()),
            ),
            (of(binary()), users(true), vec(sub_id(), 0..3), of(text())),
        )
            .prop_map(
                |((pfi, mei, ta, rt), (cd, up, sids, ct))| PublishProperties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: mei,
                    topic_alias: ta,
                    response_topic: rt,
                    correlation_data: cd,
                    user_properties: up,
                    subscription_identifiers: sids,
                    content_type: ct,
                },
            ),
    );
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        properties,
        binary(),
    )
        .prop_map(
            |(qos, dup, retain, topic, drop_topic, pid, properties, payload)| {
                // 5.0: an alias may stand in for the topic (section 3.3.2.3.4).
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    ByteStr::default()
                } else {
                    topic
                };
                let at_most_once = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { pid },
                    properties,
                    payload,
                })
            },
        )
}

fn pub_resp(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    (0..4u8, packet_id(), reason(v5), ack_properties(v5)).prop_map(
        |(which, packet_id, reason, properties)| {
            let resp = PubResp {
                packet_id,
                reason,
                properties,
            };
            match which {
                0 => Packet::PubAck(resp),
                1 => Packet::PubRec(resp),
                2 => Packet::PubRel(resp),
                _ => Packet::PubComp(resp),
            }
        },
    )
}

fn subscription_options(v5: bool) -> BoxedStrategy<SubscriptionOptions> {
    if !v5 {
        return qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed();
    }
    let rh = prop_oneof![
        Just(RetainHandling::OnSubscribe),
        Just(RetainHandling::OnNewSubscribe),
        Just(RetainHandling::Never)
    ];
    (qos(), any::<bool>(), any::<bool>(), rh)
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
        .boxed()
}

fn subscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let properties = v5_or_default(
        v5,
        (of(sub_id()), users(true)).prop_map(|(subscription_identifier, user_properties)| {
            SubscribeProperties {
                subscription_identifier,
                user_properties,
            }
        }),
    );
    let filter = (topic_filter(), subscription_options(v5)).prop_map(|(f, mut o)| {
        // No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4).
        if f.starts_with("$share/") {
            o.no_local = false;
        }
        (f, o)
    });
    (packet_id(), vec(filter, 1..4), properties).prop_map(|(packet_id, filters, properties)| {
        Packet::Subscribe(Subscribe {
            packet_id,
            filters,
            properties,
        })
    })
}

fn suback(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let code = if v5 {
        any::<u8>().boxed()
    } else {
        prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)].boxed()
    };
    (
        packet_id(),
        vec(code.prop_map(ReasonCode), 1..4),
        ack_properties(v5),
    )
        .prop_map(|(packet_id, return_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                return_codes,
                properties,
            })
        })
}

fn unsubscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let properties = v5_or_default(
        v5,
        users(true).prop_map(|user_properties| UnsubscribeProperties { user_properties }),
    );
    (packet_id(), vec(topic_filter(), 1..4), properties).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        },
    )
}

fn unsuback(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let codes = if v5 {
        vec(any::<u8>().prop_map(ReasonCode), 1..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), codes, ack_properties(v5)).prop_map(|(packet_id, reason_codes, properties)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reason_codes,
            properties,
        })
    })
}

fn disconnect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let properties = v5_or_default(
        v5,
        (of(any::<u32>()), of(text()), users(true), of(text())).prop_map(|(sei, rs, up, sr)| {
            DisconnectProperties {
                session_expiry_interval: sei,
                reason_string: rs,
                user_properties: up,
                server_reference: sr,
            }
        }),
    );
    (reason(v5), properties)
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    let properties =
        (auth_pair(), of(text()), users(true)).prop_map(|((am, ad), rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        });
    (any::<u8>(), properties).prop_map(|(reason, properties)| {
        Packet::Auth(Auth {
            reason: ReasonCode(reason),
            properties,
        })
    })
}

fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(protocol),
        connack(protocol),
        publish(protocol),
        pub_resp(protocol),
        subscribe(protocol),
        suback(protocol),
        unsubscribe(protocol),
        unsuback(protocol),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(protocol),
    ];
    if protocol.is_v5() {
        prop_oneof![10 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn any_level() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(LEVELS[0]), Just(LEVELS[1]), Just(LEVELS[2])]
}

fn decoder_for(packet: &Packet, protocol: Protocol) -> Decoder {
    match packet {
        // A server-side decoder learns the level from CONNECT.
        Packet::Connect(_) => Decoder::new(1 << 20),
        _ => Decoder::with_protocol(protocol, 1 << 20),
    }
}

fn check_round_trip(packet: &Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf);
    let bytes = buf.clone().freeze();
    prop_assert_eq!(bytes.len(), encoded_len(packet, protocol));

    // Encode then decode: the same value, the whole buffer consumed.
    let mut decoder = decoder_for(packet, protocol);
    let decoded = decoder
        .decode(&mut buf)
        .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
    prop_assert_eq!(decoded.as_ref(), Some(packet));
    prop_assert!(buf.is_empty());
    if let Packet::Connect(c) = packet {
        prop_assert_eq!(decoder.protocol(), Some(c.protocol));
    }

    // Decode then encode: the same bytes.
    let mut again = BytesMut::new();
    encode(&decoded.expect("checked above"), protocol, &mut again);
    prop_assert_eq!(&again[..], &bytes[..]);

    // One byte at a time: nothing until the last byte, nothing consumed meanwhile.
    let mut decoder = decoder_for(packet, protocol);
    let mut growing = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        growing.extend_from_slice(&[b]);
        let result = decoder
            .decode(&mut growing)
            .map_err(|e| TestCaseError::fail(format!("byte {i}: {e}")))?;
        if i + 1 < bytes.len() {
            prop_assert!(
                result.is_none(),
                "a packet after {} of {} bytes",
                i + 1,
                bytes.len()
            );
            prop_assert_eq!(growing.len(), i + 1);
        } else {
            prop_assert_eq!(result.as_ref(), Some(packet));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mqtt_3_1_packets_round_trip(packet in packet(Protocol::V3_1)) {
        check_round_trip(&packet, Protocol::V3_1)?;
    }

    #[test]
    fn mqtt_3_1_1_packets_round_trip(packet in packet(Protocol::V3_1_1)) {
        check_round_trip(&packet, Protocol::V3_1_1)?;
    }

    #[test]
    fn mqtt_5_packets_round_trip(packet in packet(Protocol::V5)) {
        check_round_trip(&packet, Protocol::V5)?;
    }

    /// A PUBLISH head written apart from its payload, with per-subscriber alias, expiry and
    /// subscription identifiers, decodes to the publish those fields describe.
    #[test]
    fn publish_head_overrides_round_trip(
        protocol in any_level(),
        packet in publish(Protocol::V5),
        alias in of(1..=u16::MAX),
        expiry in of(any::<u32>()),
        sids in vec(sub_id(), 0..3),
    ) {
        let Packet::Publish(publish) = packet else { unreachable!("publish() makes PUBLISHes") };
        let topic = if publish.topic.is_empty() { ByteStr::from("t") } else { publish.topic.clone() };
        let head = PublishHead {
            topic: &topic,
            topic_alias: alias,
            message_expiry_interval: expiry,
            subscription_identifiers: &sids,
            ..PublishHead::of(&publish)
        };
        let mut buf = BytesMut::new();
        encode_publish_head(&head, protocol, &mut buf);
        buf.extend_from_slice(&publish.payload);
        prop_assert_eq!(buf.len(), publish_head_len(&head, protocol));

        let mut expected = Publish { topic: topic.clone(), ..publish.clone() };
        if protocol.is_v5() {
            expected.properties.topic_alias = alias;
            expected.properties.message_expiry_interval = expiry;
            expected.properties.subscription_identifiers = sids.clone();
        } else {
            expected.properties = PublishProperties::default();
        }
        let decoded = Decoder::with_protocol(protocol, 1 << 20)
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, Some(Packet::Publish(expected)));
    }
}

/// Every packet type is produced by the generators at every level (AUTH only at 5.0), so the
/// properties above cover them all.
#[test]
fn generators_cover_every_packet_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    for protocol in LEVELS {
        let mut runner = TestRunner::deterministic();
        let strategy = packet(protocol);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            seen.insert(
                strategy
                    .new_tree(&mut runner)
                    .expect("generate")
                    .current()
                    .name(),
            );
        }
        let expected = if protocol.is_v5() { 15 } else { 14 };
        assert_eq!(seen.len(), expected, "{protocol:?}: {seen:?}");
    }
}

/// Two packets back to back in one buffer come out one per call.
#[test]
fn consecutive_packets_decode_one_at_a_time() {
    let mut buf = BytesMut::new();
    encode(&Packet::PingReq, Protocol::V5, &mut buf);
    encode(
        &Packet::PubAck(PubResp {
            packet_id: 3,
            ..PubResp::default()
        }),
        Protocol::V5,
        &mut buf,
    );
    let mut decoder = Decoder::with_protocol(Protocol::V5, 1024);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::PubAck(PubResp {
            packet_id: 3,
            ..PubResp::default()
        })))
    );
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

/// The payload and topic are views of the read buffer, not copies.
#[test]
fn publish_payload_shares_the_read_buffer() {
    let publish = Publish {
        topic: ByteStr::from("a/b"),
        payload: Bytes::from(vec![7u8; 256]),
        ..Publish::default()
    };
    let mut buf = BytesMut::new();
    encode(&Packet::Publish(publish), Protocol::V3_1_1, &mut buf);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Packet::Publish(p))) =
        Decoder::with_protocol(Protocol::V3_1_1, 1024).decode(&mut buf)
    else {
        panic!("a PUBLISH");
    };
    for ptr in [
        p.payload.as_ptr() as usize,
        p.topic.as_bytes().as_ptr() as usize,
    ] {
        assert!(
            (start..end).contains(&ptr),
            "a copy at {ptr:#x}, buffer {start:#x}..{end:#x}"
        );
    }
}
