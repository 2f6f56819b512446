//! Quality of service through the real broker: the QoS 0/1/2 exchanges in both directions,
//! packet identifiers, QoS downgrade to the subscription, and the 5.0 reason codes on the way.

mod common;
mod flows;

use bytes::Bytes;
use common::Broker;
use flows::*;
use pigeon_codec::{ConnectProperties, Packet, Protocol, PubResp, QoS, ReasonCode};
use std::collections::HashSet;
use std::time::Duration;

/// Polls a rumqttc 3.1.1 event loop until `n` messages arrived.
async fn rumqttc_v4_receive(events: &mut rumqttc::EventLoop, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < n {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.expect("event loop")
            {
                got.push(p);
            }
        }
    })
    .await
    .expect("messages within 5 s");
    got
}

#[tokio::test]
async fn rumqttc_v4_round_trips_at_every_qos() {
    let broker = Broker::start().await;
    let mut opts = rumqttc::MqttOptions::new("q-v4", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("q/#", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    for (i, q) in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        client
            .publish(format!("q/{i}"), q, false, format!("p{i}"))
            .await
            .expect("publish");
    }
    let mut got = rumqttc_v4_receive(&mut events, 3).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let got: Vec<(String, Vec<u8>, rumqttc::QoS)> = got
        .into_iter()
        .map(|p| (p.topic, p.payload.to_vec(), p.qos))
        .collect();
    assert_eq!(
        got,
        vec![
            ("q/0".into(), b"p0".to_vec(), rumqttc::QoS::AtMostOnce),
            ("q/1".into(), b"p1".to_vec(), rumqttc::QoS::AtLeastOnce),
            ("q/2".into(), b"p2".to_vec(), rumqttc::QoS::ExactlyOnce),
        ]
    );
    broker.stop().await;
}

#[tokio::test]
async fn rumqttc_v5_round_trips_at_every_qos() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = Broker::start().await;
    let mut opts = rumqttc::v5::MqttOptions::new("q-v5", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 10);
    client
        .subscribe("q/#", Q5::ExactlyOnce)
        .await
        .expect("subscribe");
    for (i, q) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        client
            .publish(format!("q/{i}"), q, false, format!("p{i}"))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < 3 {
            if let rumqttc::v5::Event::Incoming(P5::Publish(p)) =
                events.poll().await.expect("event loop")
            {
                got.push((p.topic.to_vec(), p.payload.to_vec(), p.qos));
            }
        }
    })
    .await
    .expect("messages within 5 s");
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            (b"q/0".to_vec(), b"p0".to_vec(), Q5::AtMostOnce),
            (b"q/1".to_vec(), b"p1".to_vec(), Q5::AtLeastOnce),
            (b"q/2".to_vec(), b"p2".to_vec(), Q5::ExactlyOnce),
        ]
    );
    broker.stop().await;
}

/// The publisher's side: PUBACK for QoS 1, PUBREC then PUBCOMP for QoS 2, each with the
/// PUBLISH's packet identifier ([MQTT-4.3.2-4], [MQTT-4.3.3-8], [MQTT-4.3.3-11] in 5.0).
#[tokio::test]
async fn publisher_exchanges_carry_the_packet_identifier() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = connect(broker.addr, protocol, "flow-sub").await;
        subscribe(&mut sub, "flow", QoS::ExactlyOnce).await;
        let mut publisher = connect(broker.addr, protocol, "flow-pub").await;

        publisher
            .send(&Packet::Publish(pigeon_codec::Publish {
                packet_id: 0x1234,
                ..message("flow", b"one", QoS::AtLeastOnce)
            }))
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!((a.packet_id, a.reason), (0x1234, ReasonCode::SUCCESS))
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }

        publisher
            .send(&Packet::Publish(pigeon_codec::Publish {
                packet_id: 0xFFFF,
                ..message("flow", b"two", QoS::ExactlyOnce)
            }))
            .await;
        match publisher.recv().await {
            Some(Packet::PubRec(r)) => {
                assert_eq!((r.packet_id, r.reason), (0xFFFF, ReasonCode::SUCCESS))
            }
            other => panic!("expected PUBREC, got {other:?}"),
        }
        publisher
            .send(&Packet::PubRel(PubResp {
                packet_id: 0xFFFF,
                ..Default::default()
            }))
            .await;
        match publisher.recv().await {
            Some(Packet::PubComp(c)) => {
                assert_eq!((c.packet_id, c.reason), (0xFFFF, ReasonCode::SUCCESS))
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        let got = exactly(&mut sub, 2).await;
        assert_eq!(payloads(&got), ["one", "two"]);
    }
    broker.stop().await;
}

/// The subscriber's side: every QoS 1/2 PUBLISH the broker sends has a non-zero packet
/// identifier unused by any other in flight, PUBREL included ([MQTT-2.2.1-4]); PUBREC gets a
/// PUBREL with the same identifier ([MQTT-4.3.3-4]), and after PUBCOMP the exchange is over.
#[tokio::test]
async fn subscriber_exchanges_use_distinct_nonzero_packet_identifiers() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = connect(broker.addr, protocol, "ids-sub").await;
        subscribe(&mut sub, "ids/#", QoS::ExactlyOnce).await;
        let mut publisher = connect(broker.addr, protocol, "ids-pub").await;
        for i in 0..10 {
            publish(&mut publisher, message("ids/2", &[i], QoS::ExactlyOnce)).await;
        }
        // Ten QoS 2 deliveries, unacknowledged.
        let mut q2 = Vec::new();
        for _ in 0..10 {
            match sub.recv().await {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.qos, QoS::ExactlyOnce);
                    assert!(!p.dup);
                    q2.push(p.packet_id);
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        // PUBREC each: the broker answers PUBREL with the same identifier.
        for &id in &q2 {
            sub.send(&Packet::PubRec(PubResp {
                packet_id: id,
                ..Default::default()
            }))
            .await;
            match sub.recv().await {
                Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, id),
                other => panic!("expected PUBREL {id}, got {other:?}"),
            }
        }
        // Twenty QoS 1 deliveries while the ten PUBRELs are unanswered.
        for i in 0..20 {
            publish(&mut publisher, message("ids/1", &[i], QoS::AtLeastOnce)).await;
        }
        let mut q1 = Vec::new();
        for _ in 0..20 {
            match sub.recv().await {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.qos, QoS::AtLeastOnce);
                    q1.push(p.packet_id);
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        let all: Vec<u16> = q2.iter().chain(&q1).copied().collect();
        assert!(all.iter().all(|&id| id != 0), "{all:?}");
        assert_eq!(
            all.iter().collect::<HashSet<_>>().len(),
            all.len(),
            "identifiers in flight are distinct: {all:?}"
        );
        for &id in &q2 {
            sub.send(&Packet::PubComp(PubResp {
                packet_id: id,
                ..Default::default()
            }))
            .await;
        }
        for &id in &q1 {
            sub.send(&Packet::PubAck(PubResp {
                packet_id: id,
                ..Default::default()
            }))
            .await;
        }
        // Everything acknowledged: nothing is resent, and the session holds nothing in flight.
        expect_no_publish(&mut sub).await;
        let session = broker.broker.session("ids-sub").expect("session");
        assert!(session.lock().inflight.is_empty());
    }
    broker.stop().await;
}

/// [MQTT-3.8.4-8] (5.0): a message goes out at the lower of its QoS and the subscription's.
#[tokio::test]
async fn delivery_qos_is_the_lower_of_message_and_subscription() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut subs = Vec::new();
        for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut raw = connect(broker.addr, protocol, &format!("down-{}", sub_qos as u8)).await;
            subscribe(&mut raw, "down", sub_qos).await;
            subscribe_sentinel(&mut raw).await;
            subs.push((raw, sub_qos));
        }
        let mut publisher = connect(broker.addr, protocol, "down-pub").await;
        for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publish(&mut publisher, message("down", b"m", pub_qos)).await;
        }
        publish_sentinel(&mut publisher).await;
        for (raw, sub_qos) in &mut subs {
            let got: Vec<QoS> = until_sentinel(raw).await.iter().map(|p| p.qos).collect();
            let want: Vec<QoS> = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .into_iter()
                .map(|pub_qos| pub_qos.min(*sub_qos))
                .collect();
            assert_eq!(got, want, "{protocol:?}, subscription at {sub_qos:?}");
        }
    }
    broker.stop().await;
}

/// 5.0 PUBACK/PUBREC 0x10 "No matching subscribers" when nobody subscribes (a MAY, which
/// mosquitto also does); 0x00 once someone does. 3.1.1 acknowledgements carry no reason.
#[tokio::test]
async fn acknowledgement_says_when_nobody_subscribes() {
    let broker = Broker::start().await;
    let mut p5 = connect(broker.addr, Protocol::V5, "nms-5").await;
    let mut p3 = connect(broker.addr, Protocol::V3_1_1, "nms-3").await;
    for q in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let ack = publish(&mut p5, message("nobody", b"m", q))
            .await
            .expect("ack");
        assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS, "{q:?}");
        let ack = publish(&mut p3, message("nobody", b"m", q))
            .await
            .expect("ack");
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "{q:?}");
    }
    let mut sub = connect(broker.addr, Protocol::V3_1_1, "nms-sub").await;
    subscribe(&mut sub, "nobody", QoS::AtMostOnce).await;
    for q in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let ack = publish(&mut p5, message("nobody", b"m", q))
            .await
            .expect("ack");
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "{q:?}");
    }
    assert_eq!(exactly(&mut sub, 2).await.len(), 2);
    broker.stop().await;
}

/// A PUBREL for an identifier the broker does not hold still gets a PUBCOMP ([MQTT-4.3.3-11]),
/// with 0x92 "Packet Identifier not found" in 5.0.
#[tokio::test]
async fn pubrel_for_an_unknown_identifier_gets_pubcomp() {
    let broker = Broker::start().await;
    for (protocol, reason) in [
        (Protocol::V3_1_1, ReasonCode::SUCCESS),
        (Protocol::V5, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
    ] {
        let mut raw = connect(broker.addr, protocol, "pubrel").await;
        raw.send(&Packet::PubRel(PubResp {
            packet_id: 77,
            ..Default::default()
        }))
        .await;
        match raw.recv().await {
            Some(Packet::PubComp(c)) => assert_eq!((c.packet_id, c.reason), (77, reason)),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        // The connection carries on.
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.recv().await, Some(Packet::PingResp));
    }
    broker.stop().await;
}

/// A PUBLISH resent with the same identifier before PUBREL is acknowledged again and not
/// delivered again ([MQTT-4.3.3-10]); after PUBCOMP the identifier starts a new message
/// ([MQTT-4.3.3-12]).
#[tokio::test]
async fn a_resent_qos2_publish_is_delivered_once() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = connect(broker.addr, protocol, "once-sub").await;
        subscribe(&mut sub, "once", QoS::ExactlyOnce).await;
        subscribe_sentinel(&mut sub).await;
        let mut publisher = connect(broker.addr, protocol, "once-pub").await;
        let first = pigeon_codec::Publish {
            packet_id: 5,
            ..message("once", b"first", QoS::ExactlyOnce)
        };
        for dup in [false, true, true] {
            publisher
                .send(&Packet::Publish(pigeon_codec::Publish {
                    dup,
                    ..first.clone()
                }))
                .await;
            match publisher.recv().await {
                Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, 5),
                other => panic!("expected PUBREC, got {other:?}"),
            }
        }
        publisher
            .send(&Packet::PubRel(PubResp {
                packet_id: 5,
                ..Default::default()
            }))
            .await;
        match publisher.recv().await {
            Some(Packet::PubComp(c)) => {
                assert_eq!((c.packet_id, c.reason), (5, ReasonCode::SUCCESS))
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        assert_eq!(
            payloads(&received(&mut publisher, &mut sub).await),
            ["first"]
        );
        // Identifier 5 again, after PUBCOMP: a new message.
        let second = pigeon_codec::Publish {
            packet_id: 5,
            payload: Bytes::from_static(b"second"),
            ..first.clone()
        };
        publish(&mut publisher, second).await;
        assert_eq!(
            payloads(&received(&mut publisher, &mut sub).await),
            ["second"]
        );
    }
    broker.stop().await;
}

/// 5.0: the sender sends PUBREL only for a PUBREC below 0x80 ([MQTT-4.3.3-4]); a PUBREC of 0x80
/// or more acknowledges the PUBLISH, which is not resent ([MQTT-4.4.0-2]), and frees its slot in
/// the client's Receive Maximum ([MQTT-3.3.4-9]).
#[tokio::test]
async fn a_pubrec_with_an_error_ends_the_exchange() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_with(broker.addr, Protocol::V5, "rec-err", true, |c| {
        c.properties = ConnectProperties {
            receive_maximum: Some(1),
            ..Default::default()
        }
    })
    .await;
    subscribe(&mut sub, "rec", QoS::ExactlyOnce).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "rec-pub").await;
    publish(&mut publisher, message("rec", b"refused", QoS::ExactlyOnce)).await;
    publish(
        &mut publisher,
        message("rec", b"accepted", QoS::ExactlyOnce),
    )
    .await;

    let first = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(&first.payload[..], b"refused");
    sub.send(&Packet::PubRec(PubResp {
        packet_id: first.packet_id,
        reason: ReasonCode::UNSPECIFIED_ERROR,
        properties: Default::default(),
    }))
    .await;
    // No PUBREL; the window of one is free again, so the second message comes.
    let second = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the second PUBLISH and no PUBREL, got {other:?}"),
    };
    assert_eq!(&second.payload[..], b"accepted");
    assert!(!second.dup);
    sub.send(&Packet::PubRec(PubResp {
        packet_id: second.packet_id,
        ..Default::default()
    }))
    .await;
    match sub.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, second.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubResp {
        packet_id: second.packet_id,
        ..Default::default()
    }))
    .await;
    expect_no_publish(&mut sub).await;
    broker.stop().await;
}

/// The in-flight window: with Receive Maximum 2, the third QoS 1 message waits for an ack
/// ([MQTT-3.3.4-9]); QoS 0 messages queued behind it wait too, keeping order.
#[tokio::test]
async fn receive_maximum_bounds_unacknowledged_deliveries() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_with(broker.addr, Protocol::V5, "window", true, |c| {
        c.properties.receive_maximum = Some(2);
    })
    .await;
    subscribe(&mut sub, "w", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "window-pub").await;
    for i in 0..4u8 {
        publish(&mut publisher, message("w", &[b'0' + i], QoS::AtLeastOnce)).await;
    }
    let mut ids = Vec::new();
    for want in [b"0", b"1"] {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], want);
                ids.push(p.packet_id);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    sub.expect_silence(Duration::from_millis(200)).await;
    sub.send(&Packet::PubAck(PubResp {
        packet_id: ids[0],
        ..Default::default()
    }))
    .await;
    let third = next_publish(&mut sub).await;
    assert_eq!(&third.payload[..], b"2");
    sub.send(&Packet::PubAck(PubResp {
        packet_id: ids[1],
        ..Default::default()
    }))
    .await;
    assert_eq!(payloads(&exactly(&mut sub, 1).await), ["3"]);
    broker.stop().await;
}

/// [MQTT-3.3.1-3]: the DUP flag of an outgoing PUBLISH says only whether that PUBLISH is a
/// retransmission; a publisher's DUP 1 is not forwarded.
#[tokio::test]
async fn the_dup_flag_is_not_forwarded() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, Protocol::V5, "dup-sub").await;
    subscribe(&mut sub, "dup", QoS::ExactlyOnce).await;
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, Protocol::V3_1_1, "dup-pub").await;
    for q in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut p = message("dup", b"m", q);
        p.dup = true;
        publish(&mut publisher, p).await;
    }
    let got = received(&mut publisher, &mut sub).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|p| !p.dup), "{got:?}");
    broker.stop().await;
}

/// [MQTT-3.3.4-9]: a QoS 2 delivery holds its place in the client's Receive Maximum until
/// PUBCOMP, through the PUBREL stage.
#[tokio::test]
async fn a_qos2_delivery_holds_its_window_slot_until_pubcomp() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_with(broker.addr, Protocol::V5, "slot", true, |c| {
        c.properties.receive_maximum = Some(1);
    })
    .await;
    subscribe(&mut sub, "slot", QoS::ExactlyOnce).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "slot-pub").await;
    publish(&mut publisher, message("slot", b"1", QoS::ExactlyOnce)).await;
    publish(&mut publisher, message("slot", b"2", QoS::ExactlyOnce)).await;
    let first = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(&first.payload[..], b"1");
    let resp = PubResp {
        packet_id: first.packet_id,
        ..Default::default()
    };
    sub.send(&Packet::PubRec(resp.clone())).await;
    match sub.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, first.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.expect_silence(Duration::from_millis(200)).await;
    sub.send(&Packet::PubComp(resp)).await;
    assert_eq!(payloads(&exactly(&mut sub, 1).await), ["2"]);
    broker.stop().await;
}
