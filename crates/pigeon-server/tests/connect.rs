//! CONNECT and CONNACK: protocol levels, refusals, client identifiers, the connect timeout, the
//! limits a 5.0 CONNACK announces, keep-alive limits, session takeover and enhanced auth.

mod common;
mod support;

use common::{Broker, Raw};
use pigeon_codec::{Packet, Protocol, QoS, ReasonCode};
use std::time::Duration;
use support::*;

/// A CONNECT with protocol name "MQTT", the given level, clean session, keep alive 60, id "lvl".
fn connect_bytes(level: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3C];
    if level == 5 {
        body.push(0x00); // no properties
    }
    body.extend_from_slice(&[0x00, 0x03, b'l', b'v', b'l']);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

async fn rumqttc_v311_connack(
    port: u16,
    opts: impl FnOnce(&mut rumqttc::MqttOptions),
) -> rumqttc::ConnAck {
    let mut o = rumqttc::MqttOptions::new("rumqttc-311", "127.0.0.1", port);
    opts(&mut o);
    let (_client, mut events) = rumqttc::AsyncClient::new(o, 10);
    let event = tokio::time::timeout(Duration::from_secs(5), events.poll())
        .await
        .expect("CONNACK within 5 s")
        .expect("connection accepted");
    match event {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn rumqttc_v5_connack(
    port: u16,
    opts: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> rumqttc::v5::mqttbytes::v5::ConnAck {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let mut o = rumqttc::v5::MqttOptions::new("rumqttc-5", "127.0.0.1", port);
    opts(&mut o);
    let (_client, mut events) = rumqttc::v5::AsyncClient::new(o, 10);
    let event = tokio::time::timeout(Duration::from_secs(5), events.poll())
        .await
        .expect("CONNACK within 5 s")
        .expect("connection accepted");
    match event {
        rumqttc::v5::Event::Incoming(P5::ConnAck(ack)) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn mqtt_3_1_connect_with_mqisdp_name_is_accepted() {
    let broker = Broker::start().await;
    let (mut raw, ack) = connected(broker.addr, Protocol::V3_1, "v31", true, |_| {}).await;
    assert!(!ack.session_present);
    ping(&mut raw).await;
    // 3.1's CONNACK has no Session Present flag (the byte is reserved there), even when a
    // session is resumed.
    let (kept, _) = connected(broker.addr, Protocol::V3_1, "v31-kept", false, |_| {}).await;
    drop(kept);
    wait_offline(&broker.broker, "v31-kept").await;
    let (mut raw, ack) = connected(broker.addr, Protocol::V3_1, "v31-kept", false, |_| {}).await;
    assert!(!ack.session_present);
    ping(&mut raw).await;
}

#[tokio::test]
async fn mqtt_3_1_1_connect_is_accepted() {
    let broker = Broker::start().await;
    let ack = rumqttc_v311_connack(broker.port(), |_| {}).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    assert!(!ack.session_present);
}

#[tokio::test]
async fn mqtt_5_connect_is_accepted() {
    let broker = Broker::start().await;
    let ack = rumqttc_v5_connack(broker.port(), |_| {}).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    assert!(!ack.session_present);
}

// [MQTT-3.1.2-2] (3.1.1): an unsupported protocol level gets CONNACK return code 0x01, then the
// connection is closed.
#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1_then_close() {
    let broker = Broker::start().await;
    for level in [2u8, 6, 0x7F] {
        let mut raw = Raw::connect(broker.addr, Protocol::V3_1_1).await;
        raw.send_bytes(&connect_bytes(level)).await;
        match raw.recv().await {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(
                    ack.code,
                    ReasonCode::V3_UNACCEPTABLE_PROTOCOL_VERSION,
                    "level {level}"
                );
                assert!(!ack.session_present);
            }
            other => panic!("level {level}: expected CONNACK, got {other:?}"),
        }
        expect_closed(&mut raw).await;
    }
}

// [MQTT-3.1.0-1]: the first packet must be CONNECT; anything else closes the connection, with no
// CONNACK (no protocol level is known yet).
#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection() {
    let broker = Broker::start().await;
    let cases: [&[u8]; 3] = [
        &[0xC0, 0x00],                                     // PINGREQ
        &[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'],       // PUBLISH QoS 0
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00], // SUBSCRIBE
    ];
    for bytes in cases {
        let mut raw = Raw::connect(broker.addr, Protocol::V3_1_1).await;
        raw.send_bytes(bytes).await;
        expect_closed(&mut raw).await;
    }
}

// [MQTT-3.1.0-2]: a second CONNECT is a protocol error and closes the connection.
#[tokio::test]
async fn second_connect_closes_a_3_1_1_connection() {
    let broker = Broker::start().await;
    let (mut raw, _) = connected(broker.addr, Protocol::V3_1_1, "twice", true, |_| {}).await;
    raw.send_bytes(&connect_bytes(4)).await;
    expect_closed(&mut raw).await;
}

// [MQTT-3.1.0-2]: in 5.0 the client learns why: DISCONNECT 0x82 (Protocol Error).
#[tokio::test]
async fn second_connect_gets_disconnect_protocol_error_in_5() {
    let broker = Broker::start().await;
    let (mut raw, _) = connected(broker.addr, Protocol::V5, "twice5", true, |_| {}).await;
    raw.send_bytes(&connect_bytes(5)).await;
    expect_disconnect(&mut raw, ReasonCode::PROTOCOL_ERROR).await;
}

// [MQTT-3.1.3-6] (3.1.1): an empty client id with clean session 1 is accepted, and the broker
// assigns an id of its own.
#[tokio::test]
async fn empty_client_id_with_clean_session_is_accepted_in_3_1_1() {
    let broker = Broker::start().await;
    let (mut a, _) = connected(broker.addr, Protocol::V3_1_1, "", true, |_| {}).await;
    let (mut b, _) = connected(broker.addr, Protocol::V3_1_1, "", true, |_| {}).await;
    // Two clients without an id do not take each other over.
    ping(&mut a).await;
    ping(&mut b).await;
    assert_eq!(broker.broker.session_count(), 2);
}

// [MQTT-3.1.3-8] (3.1.1): an empty client id with clean session 0 gets return code 0x02
// (Identifier rejected), then the connection is closed.
#[tokio::test]
async fn empty_client_id_without_clean_session_is_rejected_in_3_1_1() {
    let broker = Broker::start().await;
    let ack = refused(broker.addr, Protocol::V3_1_1, "", false, |_| {}).await;
    assert_eq!(ack.code, ReasonCode::V3_IDENTIFIER_REJECTED);
}

// [MQTT-3.1.3-7], [MQTT-3.2.2-16]: a 5.0 client with an empty id is told the id it was given.
#[tokio::test]
async fn empty_client_id_gets_an_assigned_client_identifier_in_5() {
    let broker = Broker::start().await;
    let (mut a, ack_a) = connected(broker.addr, Protocol::V5, "", true, |_| {}).await;
    let (mut b, ack_b) = connected(broker.addr, Protocol::V5, "", false, expiry(60)).await;
    let id_a = ack_a
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    let id_b = ack_b
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "assigned ids are unique");
    assert!(
        broker.broker.session(&id_a).is_some(),
        "the session lives under the assigned id"
    );
    ping(&mut a).await;
    ping(&mut b).await;
}

#[tokio::test]
async fn a_client_with_an_id_gets_no_assigned_client_identifier() {
    let broker = Broker::start().await;
    let (_raw, ack) = connected(broker.addr, Protocol::V5, "named", true, |_| {}).await;
    assert_eq!(ack.properties.assigned_client_identifier, None);
}

// A socket that never completes a CONNECT is closed after `connect_timeout`, and not before.
#[tokio::test(start_paused = true)]
async fn connection_without_connect_is_closed_after_connect_timeout() {
    let broker = Broker::start_with(|c| c.limits.connect_timeout = 8).await;
    let mut silent = Raw::connect(broker.addr, Protocol::V3_1_1).await;
    // Half a CONNECT: the timer covers the whole packet, not the first byte.
    let mut partial = Raw::connect(broker.addr, Protocol::V3_1_1).await;
    partial.send_bytes(&connect_bytes(4)[..5]).await;
    silent.expect_silence(Duration::from_secs(7)).await;
    expect_closed_within(&mut silent, Duration::from_secs(30)).await;
    expect_closed_within(&mut partial, Duration::from_secs(30)).await;
}

// 5.0 section 3.2.2.3: the CONNACK tells the client the broker's Receive Maximum, Maximum Packet
// Size and Topic Alias Maximum, which come from the configuration.
#[tokio::test]
async fn connack_properties_match_the_configuration() {
    let broker = Broker::start_with(|c| {
        c.limits.max_inflight = 7;
        c.limits.max_packet_size = 4096;
        c.mqtt.topic_alias_maximum = 9;
    })
    .await;
    let ack = rumqttc_v5_connack(broker.port(), |_| {}).await;
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(7));
    assert_eq!(p.max_packet_size, Some(4096));
    assert_eq!(p.topic_alias_max, Some(9));

    let (_raw, ack) = connected(broker.addr, Protocol::V5, "props", true, |_| {}).await;
    assert_eq!(ack.properties.receive_maximum, Some(7));
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
    assert_eq!(ack.properties.topic_alias_maximum, Some(9));
}

// [MQTT-3.1.2-21] (5.0): a keep alive above max_keepalive (or 0) is replaced by the Server Keep
// Alive the CONNACK carries; one within the limit is left alone.
#[tokio::test]
async fn keep_alive_above_max_keepalive_gets_server_keep_alive_in_5() {
    let broker = Broker::start_with(|c| c.limits.max_keepalive = 30).await;
    for (asked, told) in [(60u16, Some(30u16)), (0, Some(30)), (30, None), (10, None)] {
        let (_raw, ack) = connected(broker.addr, Protocol::V5, "ka5", true, |c| {
            c.keep_alive = asked
        })
        .await;
        assert_eq!(ack.properties.server_keep_alive, told, "keep alive {asked}");
    }
}

// 3.1.1 has no way to tell the client another keep alive: the broker refuses it with return code
// 0x02, as mosquitto does; a keep alive within the limit is accepted.
#[tokio::test]
async fn keep_alive_above_max_keepalive_is_refused_in_3_1_1() {
    let broker = Broker::start_with(|c| c.limits.max_keepalive = 30).await;
    let ack = refused(broker.addr, Protocol::V3_1_1, "ka311", true, |c| {
        c.keep_alive = 31
    })
    .await;
    assert_eq!(ack.code, ReasonCode::V3_IDENTIFIER_REJECTED);
    let ack = rumqttc_v311_connack(broker.port(), |o| {
        o.set_keep_alive(Duration::from_secs(20));
    })
    .await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
}

// [MQTT-3.1.4-3] (5.0): a second connection with the same client id takes the session over; the
// first gets DISCONNECT 0x8E (Session taken over) and is closed, the second works.
#[tokio::test]
async fn second_connection_with_same_client_id_takes_over_in_5() {
    let broker = Broker::start().await;
    let (mut first, _) = connected(broker.addr, Protocol::V5, "twin", true, |_| {}).await;
    let (mut second, _) = connected(broker.addr, Protocol::V5, "twin", true, |_| {}).await;
    expect_disconnect(&mut first, ReasonCode::SESSION_TAKEN_OVER).await;
    subscribe(&mut second, "twin/t", QoS::AtLeastOnce).await;
    publish(&mut second, "twin/t", "still here", QoS::AtLeastOnce, 3).await;
    let p = receive_and_ack(&mut second).await;
    assert_eq!(payload(&p), "still here");
}

// [MQTT-3.1.4-2] (3.1.1): the existing client is disconnected; its session goes to the new one.
#[tokio::test]
async fn second_connection_with_same_client_id_takes_over_in_3_1_1() {
    let broker = Broker::start().await;
    let (mut first, _) = connected(broker.addr, Protocol::V3_1_1, "twin", false, |_| {}).await;
    subscribe(&mut first, "twin/t", QoS::AtLeastOnce).await;
    let (mut second, ack) = connected(broker.addr, Protocol::V3_1_1, "twin", false, |_| {}).await;
    assert!(
        ack.session_present,
        "the new connection resumes the session"
    );
    expect_closed(&mut first).await;
    // The subscription made on the first connection serves the second.
    let (mut publisher, _) = connected(broker.addr, Protocol::V3_1_1, "pub", true, |_| {}).await;
    publish(
        &mut publisher,
        "twin/t",
        "to the new one",
        QoS::AtLeastOnce,
        1,
    )
    .await;
    let p = receive_and_ack(&mut second).await;
    assert_eq!(payload(&p), "to the new one");
}

// [MQTT-4.12.0-1]: an authentication method the broker does not support gets CONNACK 0x8C (Bad
// authentication method), then the connection is closed.
#[tokio::test]
async fn enhanced_authentication_method_is_refused_with_0x8c() {
    let broker = Broker::start().await;
    let ack = refused(broker.addr, Protocol::V5, "auth", true, |c| {
        c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    })
    .await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert_eq!(
        broker.broker.session_count(),
        0,
        "a refused client has no session"
    );
}

// 5.0 section 3.1.4: "Clients are allowed to send further MQTT Control Packets immediately after
// sending a CONNECT packet". CONNECT, SUBSCRIBE and PINGREQ in one write are all answered.
#[tokio::test]
async fn packets_sent_right_behind_connect_are_served() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut raw = Raw::connect(broker.addr, protocol).await;
        let mut bytes = bytes::BytesMut::new();
        let connect = pigeon_codec::Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: "eager".into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        pigeon_codec::encode(&Packet::Connect(Box::new(connect)), protocol, &mut bytes);
        let subscribe = pigeon_codec::Subscribe {
            packet_id: 4,
            filters: vec![("eager/t".into(), Default::default())],
            properties: Default::default(),
        };
        pigeon_codec::encode(&Packet::Subscribe(subscribe), protocol, &mut bytes);
        pigeon_codec::encode(&Packet::PingReq, protocol, &mut bytes);
        raw.send_bytes(&bytes).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::SUCCESS),
            other => panic!("{protocol:?}: expected CONNACK, got {other:?}"),
        }
        match raw.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.packet_id, 4),
            other => panic!("{protocol:?}: expected SUBACK, got {other:?}"),
        }
        match raw.recv().await {
            Some(Packet::PingResp) => {}
            other => panic!("{protocol:?}: expected PINGRESP, got {other:?}"),
        }
    }
}
