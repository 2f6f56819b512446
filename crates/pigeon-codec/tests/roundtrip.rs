//! Round trips: encode then decode gives the same packet, decode then encode the same bytes.

use bytes::{Bytes, BytesMut};
use pigeon_codec::*;

fn s(v: &str) -> ByteStr {
    ByteStr::from(v)
}

fn samples(protocol: Protocol) -> Vec<Packet> {
    let v5 = protocol.is_v5();
    let users = if v5 {
        vec![(s("k"), s("v")), (s("k"), s("w"))]
    } else {
        vec![]
    };
    let ack_props = if v5 {
        AckProperties {
            reason_string: Some(s("why")),
            user_properties: users.clone(),
        }
    } else {
        AckProperties::default()
    };
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: s("client"),
        will: Some(Will {
            topic: s("will/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(60),
                    content_type: Some(s("text/plain")),
                    response_topic: Some(s("r/t")),
                    correlation_data: Some(Bytes::from_static(b"c")),
                    user_properties: users.clone(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pw")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(100),
                receive_maximum: Some(10),
                maximum_packet_size: Some(1000),
                topic_alias_maximum: Some(5),
                request_response_information: Some(1),
                request_problem_information: Some(0),
                user_properties: users.clone(),
                authentication_method: Some(s("m")),
                authentication_data: Some(Bytes::from_static(b"d")),
            }
        } else {
            ConnectProperties::default()
        },
    };
    let mut out = vec![
        Packet::Connect(Box::new(connect)),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode(0),
            properties: if v5 {
                ConnAckProperties {
                    session_expiry_interval: Some(1),
                    receive_maximum: Some(2),
                    maximum_qos: Some(1),
                    retain_available: Some(true),
                    maximum_packet_size: Some(3),
                    assigned_client_identifier: Some(s("id")),
                    topic_alias_maximum: Some(4),
                    reason_string: Some(s("r")),
                    user_properties: users.clone(),
                    wildcard_subscription_available: Some(false),
                    subscription_identifiers_available: Some(true),
                    shared_subscription_available: Some(true),
                    server_keep_alive: Some(5),
                    response_information: Some(s("ri")),
                    server_reference: Some(s("sr")),
                    authentication_method: Some(s("am")),
                    authentication_data: Some(Bytes::from_static(b"ad")),
                }
            } else {
                ConnAckProperties::default()
            },
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("a/b"),
            packet_id: 9,
            properties: if v5 {
                PublishProperties {
                    payload_format_indicator: Some(0),
                    message_expiry_interval: Some(7),
                    topic_alias: Some(3),
                    response_topic: Some(s("resp")),
                    correlation_data: Some(Bytes::from_static(b"x")),
                    user_properties: users.clone(),
                    subscription_identifiers: vec![1, 268_435_455],
                    content_type: Some(s("ct")),
                }
            } else {
                PublishProperties::default()
            },
            payload: Bytes::from_static(b"payload"),
        }),
        Packet::Publish(Publish {
            topic: s("q0"),
            payload: Bytes::new(),
            ..Publish::default()
        }),
        Packet::PubAck(PubResp {
            packet_id: 1,
            reason: ReasonCode(0),
            properties: AckProperties::default(),
        }),
        Packet::PubRec(PubResp {
            packet_id: 2,
            reason: ReasonCode(0),
            properties: ack_props.clone(),
        }),
        Packet::PubRel(PubResp {
            packet_id: 3,
            reason: ReasonCode(0),
            properties: AckProperties::default(),
        }),
        Packet::PubComp(PubResp {
            packet_id: 4,
            reason: ReasonCode(0),
            properties: AckProperties::default(),
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 5,
            filters: vec![
                (
                    s("a/+"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::Never
                        } else {
                            RetainHandling::OnSubscribe
                        },
                    },
                ),
                (s("$share/g/#"), SubscriptionOptions::default()),
            ],
            properties: if v5 {
                SubscribeProperties {
                    subscription_identifier: Some(99),
                    user_properties: users.clone(),
                }
            } else {
                SubscribeProperties::default()
            },
        }),
        Packet::SubAck(SubAck {
            packet_id: 5,
            return_codes: vec![ReasonCode(1), ReasonCode(0x80)],
            properties: ack_props.clone(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            filters: vec![s("a/+"), s("b")],
            properties: UnsubscribeProperties {
                user_properties: users.clone(),
            },
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reason_codes: if v5 {
                vec![ReasonCode(0), ReasonCode(0x11)]
            } else {
                vec![]
            },
            properties: ack_props,
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        out.push(Packet::PubAck(PubResp {
            packet_id: 1,
            reason: ReasonCode(0x10),
            properties: AckProperties::default(),
        }));
        out.push(Packet::Disconnect(Disconnect {
            reason: ReasonCode(4),
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some(s("r")),
                user_properties: users.clone(),
                server_reference: Some(s("o")),
            },
        }));
        out.push(Packet::Disconnect(Disconnect {
            reason: ReasonCode(0x8E),
            properties: DisconnectProperties::default(),
        }));
        out.push(Packet::Auth(Auth::default()));
        out.push(Packet::Auth(Auth {
            reason: ReasonCode(0x18),
            properties: AuthProperties {
                authentication_method: Some(s("m")),
                authentication_data: Some(Bytes::from_static(b"d")),
                reason_string: Some(s("r")),
                user_properties: users,
            },
        }));
    }
    out
}

#[test]
fn every_packet_at_every_level_round_trips() {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        for packet in samples(protocol) {
            let mut buf = BytesMut::new();
            encode(&packet, protocol, &mut buf);
            assert_eq!(
                buf.len(),
                encoded_len(&packet, protocol),
                "{protocol:?} {packet:?}"
            );
            let bytes = buf.clone();
            let mut decoder = Decoder::with_protocol(protocol, 1 << 20);
            let decoded = decoder
                .decode(&mut buf)
                .unwrap_or_else(|e| panic!("{protocol:?} {packet:?}: {e}"));
            assert_eq!(decoded.as_ref(), Some(&packet), "{protocol:?}");
            assert!(buf.is_empty());
            let mut again = BytesMut::new();
            encode(&packet, protocol, &mut again);
            assert_eq!(again, bytes);
        }
    }
}
