//! Sessions across connections: what survives a disconnect, what a clean start discards, session
//! expiry, and the QoS 1/2 exchanges that resume after a reconnect.

mod common;
mod support;

use common::Broker;
use pigeon_codec::{Packet, Protocol, Publish, QoS, ReasonCode};
use std::time::Duration;
use support::*;

/// A rumqttc 3.1.1 client with clean session off, connected: its event loop and CONNACK.
async fn rumqttc_persistent(
    port: u16,
    id: &str,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop, rumqttc::ConnAck) {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let event = tokio::time::timeout(Duration::from_secs(5), events.poll())
        .await
        .expect("CONNACK within 5 s")
        .expect("connection accepted");
    match event {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => (client, events, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Drives the event loop until `n` PUBLISH packets came in (rumqttc acknowledges them).
async fn rumqttc_receive(events: &mut rumqttc::EventLoop, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < n {
            let event = events.poll().await.expect("event loop");
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                got.push(p);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} messages within 5 s, got {}", got.len()));
    got
}

/// Drives the event loop until rumqttc has sent `request` and the broker answered.
async fn rumqttc_until_suback(events: &mut rumqttc::EventLoop) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.poll().await.expect("event loop");
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = event {
                return;
            }
        }
    })
    .await
    .expect("SUBACK within 5 s");
}

async fn rumqttc_disconnect(client: &rumqttc::AsyncClient, events: &mut rumqttc::EventLoop) {
    client.disconnect().await.expect("disconnect request");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("DISCONNECT sent within 5 s");
}

// [MQTT-3.1.2-4], [MQTT-3.2.2-2] (3.1.1): with clean session 0 the subscription outlives the
// connection, QoS 1 and 2 messages published meanwhile are kept, and the reconnect gets session
// present 1 and the messages in the order they were published [MQTT-4.6.0-6] (5.0 numbering).
#[tokio::test]
async fn persistent_session_delivers_offline_qos1_and_qos2_messages_in_order_in_3_1_1() {
    let broker = Broker::start().await;
    let (client, mut events, ack) = rumqttc_persistent(broker.port(), "keeper").await;
    assert!(!ack.session_present);
    client
        .subscribe("offline/#", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe request");
    rumqttc_until_suback(&mut events).await;
    rumqttc_disconnect(&client, &mut events).await;
    drop(events);
    wait_offline(&broker.broker, "keeper").await;

    let (mut publisher, _) = connected(broker.addr, Protocol::V3_1_1, "pub", true, |_| {}).await;
    for i in 1..=6u16 {
        let qos = if i % 2 == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publish(&mut publisher, "offline/x", &format!("m{i}"), qos, i).await;
    }

    let (_client, mut events, ack) = rumqttc_persistent(broker.port(), "keeper").await;
    assert!(
        ack.session_present,
        "session present after a persistent session"
    );
    let got = rumqttc_receive(&mut events, 6).await;
    let payloads: Vec<_> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["m1", "m2", "m3", "m4", "m5", "m6"]);
    let qos: Vec<_> = got.iter().map(|p| p.qos).collect();
    use rumqttc::QoS::{AtLeastOnce as Q1, ExactlyOnce as Q2};
    assert_eq!(qos, [Q1, Q2, Q1, Q2, Q1, Q2]);
}

// [MQTT-3.1.2-5], [MQTT-3.1.2-23], [MQTT-3.2.2-3] (5.0): a session with a Session Expiry Interval
// above 0 outlives the connection the same way.
#[tokio::test]
async fn session_with_expiry_delivers_offline_messages_in_order_in_5() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "keeper5", true, expiry(60)).await;
    subscribe(&mut sub, "offline/#", QoS::ExactlyOnce).await;
    disconnect(&mut sub, |_| {}).await;
    expect_closed(&mut sub).await;
    wait_offline(&broker.broker, "keeper5").await;

    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub5", true, |_| {}).await;
    publish(&mut publisher, "offline/a", "first", QoS::ExactlyOnce, 1).await;
    publish(&mut publisher, "offline/b", "second", QoS::AtLeastOnce, 2).await;
    publish(&mut publisher, "offline/a", "third", QoS::ExactlyOnce, 3).await;

    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "keeper5", false, expiry(60)).await;
    assert!(ack.session_present);
    let got: Vec<_> = receive_messages(&mut sub, 3)
        .await
        .iter()
        .map(|p| (payload(p).to_owned(), p.qos))
        .collect();
    assert_eq!(
        got,
        [
            ("first".to_owned(), QoS::ExactlyOnce),
            ("second".to_owned(), QoS::AtLeastOnce),
            ("third".to_owned(), QoS::ExactlyOnce),
        ]
    );
    sub.expect_silence(Duration::from_millis(100)).await;
}

// QoS 0 messages are not kept for an offline client unless `queue_qos0` says so (the 5.0 text
// lets the server choose; mosquitto's default is the same).
#[tokio::test]
async fn qos0_messages_are_not_queued_for_an_offline_session() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "q0", false, |_| {}).await;
    subscribe(&mut sub, "q0/t", QoS::AtLeastOnce).await;
    drop(sub);
    wait_offline(&broker.broker, "q0").await;

    let (mut publisher, _) = connected(broker.addr, Protocol::V3_1_1, "pub", true, |_| {}).await;
    publish(&mut publisher, "q0/t", "zero", QoS::AtMostOnce, 0).await;
    publish(&mut publisher, "q0/t", "one", QoS::AtLeastOnce, 1).await;

    let (mut sub, ack) = connected(broker.addr, Protocol::V3_1_1, "q0", false, |_| {}).await;
    assert!(ack.session_present);
    let p = receive_and_ack(&mut sub).await;
    assert_eq!(payload(&p), "one");
    sub.expect_silence(Duration::from_millis(100)).await;
}

// [MQTT-3.1.2-6] (3.1.1): clean session 1 discards the stored session: session present 0, none
// of its messages, none of its subscriptions; and that session ends with its connection.
#[tokio::test]
async fn clean_session_discards_the_stored_session_in_3_1_1() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "cs", false, |_| {}).await;
    subscribe(&mut sub, "cs/t", QoS::AtLeastOnce).await;
    drop(sub);
    wait_offline(&broker.broker, "cs").await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V3_1_1, "pub", true, |_| {}).await;
    publish(&mut publisher, "cs/t", "old", QoS::AtLeastOnce, 1).await;

    let (mut sub, ack) = connected(broker.addr, Protocol::V3_1_1, "cs", true, |_| {}).await;
    assert!(!ack.session_present);
    sub.expect_silence(Duration::from_millis(100)).await;
    // The old subscription is gone too.
    publish(&mut publisher, "cs/t", "new", QoS::AtLeastOnce, 2).await;
    sub.expect_silence(Duration::from_millis(100)).await;
    disconnect(&mut sub, |_| {}).await;
    expect_closed(&mut sub).await;
    wait_offline(&broker.broker, "cs").await;

    let (_sub, ack) = connected(broker.addr, Protocol::V3_1_1, "cs", false, |_| {}).await;
    assert!(
        !ack.session_present,
        "a clean session ends with its connection"
    );
}

// [MQTT-3.1.2-4], [MQTT-3.2.2-2] (5.0): Clean Start 1 discards the stored session.
#[tokio::test]
async fn clean_start_discards_the_stored_session_in_5() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "cs5", true, expiry(60)).await;
    subscribe(&mut sub, "cs5/t", QoS::AtLeastOnce).await;
    drop(sub);
    wait_offline(&broker.broker, "cs5").await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    publish(&mut publisher, "cs5/t", "old", QoS::AtLeastOnce, 1).await;

    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "cs5", true, expiry(60)).await;
    assert!(!ack.session_present);
    publish(&mut publisher, "cs5/t", "new", QoS::AtLeastOnce, 2).await;
    sub.expect_silence(Duration::from_millis(100)).await;
}

// [MQTT-3.1.2-5] (5.0): a reconnect before the Session Expiry Interval ends resumes the session.
#[tokio::test(start_paused = true)]
async fn session_survives_a_reconnect_within_its_expiry_interval() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "exp", true, expiry(2)).await;
    subscribe(&mut sub, "exp/t", QoS::AtLeastOnce).await;
    drop(sub);
    wait_offline(&broker.broker, "exp").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "exp", false, expiry(2)).await;
    assert!(ack.session_present);
    // The old expiry timer must not end the resumed session when it fires.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    publish(&mut publisher, "exp/t", "kept", QoS::AtLeastOnce, 1).await;
    assert_eq!(payload(&receive_and_ack(&mut sub).await), "kept");
}

// [MQTT-4.1.0-2] (5.0): the session is discarded once the connection is closed and the Session
// Expiry Interval has passed: a reconnect gets session present 0 and none of the subscriptions.
#[tokio::test(start_paused = true)]
async fn session_is_gone_after_its_expiry_interval() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "exp", true, expiry(2)).await;
    subscribe(&mut sub, "exp/t", QoS::AtLeastOnce).await;
    drop(sub);
    wait_offline(&broker.broker, "exp").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "exp", false, expiry(2)).await;
    assert!(!ack.session_present);
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    publish(&mut publisher, "exp/t", "lost", QoS::AtLeastOnce, 1).await;
    sub.expect_silence(Duration::from_millis(100)).await;
}

// 5.0 section 3.14.2.2.2: DISCONNECT may change the Session Expiry Interval; a lower value ends
// the session sooner.
#[tokio::test(start_paused = true)]
async fn disconnect_can_lower_the_session_expiry() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "lower", true, expiry(3600)).await;
    subscribe(&mut sub, "lower/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub, |d| d.properties.session_expiry_interval = Some(1)).await;
    expect_closed(&mut sub).await;
    wait_offline(&broker.broker, "lower").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_sub, ack) = connected(broker.addr, Protocol::V5, "lower", false, expiry(60)).await;
    assert!(
        !ack.session_present,
        "DISCONNECT's expiry of 1 s ended the session"
    );

    // 0 in DISCONNECT ends the session with the connection.
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "zero", true, expiry(3600)).await;
    disconnect(&mut sub, |d| d.properties.session_expiry_interval = Some(0)).await;
    expect_closed(&mut sub).await;
    wait_offline(&broker.broker, "zero").await;
    let (_sub, ack) = connected(broker.addr, Protocol::V5, "zero", false, expiry(60)).await;
    assert!(!ack.session_present);
}

// 5.0 section 3.14.2.2.2: "If the Session Expiry Interval in the CONNECT packet was zero, then it
// is a Protocol Error to set a non-zero Session Expiry Interval in the DISCONNECT packet". The
// broker answers DISCONNECT 0x82 and the session still ends with the connection.
#[tokio::test]
async fn disconnect_setting_expiry_after_connect_had_zero_is_a_protocol_error() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "sneaky", true, |_| {}).await;
    subscribe(&mut sub, "sneaky/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub, |d| {
        d.properties.session_expiry_interval = Some(300)
    })
    .await;
    expect_disconnect(&mut sub, ReasonCode::PROTOCOL_ERROR).await;
    wait_offline(&broker.broker, "sneaky").await;
    let (_sub, ack) = connected(broker.addr, Protocol::V5, "sneaky", false, expiry(60)).await;
    assert!(!ack.session_present);
}

// The rule above is about the client's CONNECT: a client that asked for a session expiry the
// broker lowered to 0 (`max_session_expiry = 0`) may still send one in DISCONNECT. It is lowered
// the same way, and the session ends with the connection.
#[tokio::test]
async fn disconnect_expiry_is_allowed_when_the_broker_lowered_the_connect_one_to_zero() {
    let broker = Broker::start_with(|c| c.mqtt.max_session_expiry = 0).await;
    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "capped", true, expiry(100)).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(0));
    subscribe(&mut sub, "capped/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub, |d| {
        d.properties.session_expiry_interval = Some(100)
    })
    .await;
    expect_closed(&mut sub).await;
    wait_offline(&broker.broker, "capped").await;
    let (_sub, ack) = connected(broker.addr, Protocol::V5, "capped", false, expiry(100)).await;
    assert!(!ack.session_present);
}

// [MQTT-4.4.0-1], [MQTT-3.3.1-1]: a QoS 1 PUBLISH the client never acknowledged is sent again
// after the reconnect, with DUP set and the same packet identifier.
#[tokio::test]
async fn unacknowledged_qos1_is_resent_with_dup_and_same_id_after_reconnect() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let broker = Broker::start().await;
        let (mut sub, _) = connected(broker.addr, protocol, "slow", false, expiry(60)).await;
        subscribe(&mut sub, "dup/t", QoS::AtLeastOnce).await;
        let (mut publisher, _) = connected(broker.addr, protocol, "pub", true, |_| {}).await;
        publish(&mut publisher, "dup/t", "again", QoS::AtLeastOnce, 1).await;
        let first = expect_publish(&mut sub).await;
        assert!(!first.dup, "{protocol:?}: first delivery has DUP 0");
        drop(sub); // no PUBACK
        wait_offline(&broker.broker, "slow").await;

        let (mut sub, connack) = connected(broker.addr, protocol, "slow", false, expiry(60)).await;
        assert!(connack.session_present);
        let again = expect_publish(&mut sub).await;
        assert!(again.dup, "{protocol:?}: resent PUBLISH has DUP 1");
        assert_eq!(again.packet_id, first.packet_id, "{protocol:?}");
        assert_eq!((again.topic.as_str(), payload(&again)), ("dup/t", "again"));
        assert_eq!(again.qos, QoS::AtLeastOnce);
        sub.send(&Packet::PubAck(ack(again.packet_id))).await;
        // Acknowledged now: a further reconnect sends nothing.
        ping(&mut sub).await;
        drop(sub);
        wait_offline(&broker.broker, "slow").await;
        let (mut sub, _) = connected(broker.addr, protocol, "slow", false, expiry(60)).await;
        sub.expect_silence(Duration::from_millis(100)).await;
    }
}

// [MQTT-3.3.4-9] (5.0): the messages resent after a reconnect count against the Receive Maximum
// of the new connection, which may be lower than the old one's. The broker resends that many,
// and the next one (DUP, its original id) as each is acknowledged, then the queued ones.
#[tokio::test]
async fn resent_messages_keep_to_the_new_receive_maximum() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "narrow", true, expiry(60)).await;
    subscribe(&mut sub, "narrow/t", QoS::AtLeastOnce).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    for i in 1..=4u16 {
        let text = format!("m{i}");
        publish(&mut publisher, "narrow/t", &text, QoS::AtLeastOnce, i).await;
    }
    let first: Vec<Publish> = vec![
        expect_publish(&mut sub).await,
        expect_publish(&mut sub).await,
        expect_publish(&mut sub).await,
        expect_publish(&mut sub).await,
    ];
    drop(sub); // none acknowledged
    wait_offline(&broker.broker, "narrow").await;
    publish(&mut publisher, "narrow/t", "m5", QoS::AtLeastOnce, 5).await;

    let (mut sub, connack) = connected(broker.addr, Protocol::V5, "narrow", false, |c| {
        c.properties.session_expiry_interval = Some(60);
        c.properties.receive_maximum = Some(2);
    })
    .await;
    assert!(connack.session_present);
    let mut window = vec![
        expect_publish(&mut sub).await,
        expect_publish(&mut sub).await,
    ];
    sub.expect_silence(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let p = window.remove(0);
        sub.send(&Packet::PubAck(ack(p.packet_id))).await;
        got.push(p);
        if got.len() + window.len() < 5 {
            window.push(expect_publish(&mut sub).await);
            // No third one while two are unacknowledged.
            sub.expect_silence(Duration::from_millis(50)).await;
        }
    }
    sub.expect_silence(Duration::from_millis(100)).await;
    let seen: Vec<_> = got.iter().map(|p| (payload(p).to_owned(), p.dup)).collect();
    let expected: Vec<_> = [
        ("m1", true),
        ("m2", true),
        ("m3", true),
        ("m4", true),
        ("m5", false),
    ]
    .iter()
    .map(|(t, d)| (t.to_string(), *d))
    .collect();
    assert_eq!(seen, expected);
    let ids: Vec<u16> = got[..4].iter().map(|p| p.packet_id).collect();
    let first_ids: Vec<u16> = first.iter().map(|p| p.packet_id).collect();
    assert_eq!(ids, first_ids, "resent under their original ids");
}

// [MQTT-4.4.0-1], [MQTT-4.6.0-6] (5.0): after a reconnect the unacknowledged messages come
// first, in the order they were first sent, then the ones that waited in the queue.
#[tokio::test]
async fn resent_messages_come_before_queued_ones_in_order() {
    let broker = Broker::start_with(|c| c.limits.max_inflight = 2).await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "order", true, expiry(60)).await;
    subscribe(&mut sub, "order/t", QoS::AtLeastOnce).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    for i in 1..=4u16 {
        publish(
            &mut publisher,
            "order/t",
            &format!("m{i}"),
            QoS::AtLeastOnce,
            i,
        )
        .await;
    }
    // m1 and m2 fill the window; m3 and m4 wait in the session queue.
    let m1 = expect_publish(&mut sub).await;
    let m2 = expect_publish(&mut sub).await;
    assert_eq!((payload(&m1), payload(&m2)), ("m1", "m2"));
    drop(sub);
    wait_offline(&broker.broker, "order").await;
    publish(&mut publisher, "order/t", "m5", QoS::AtLeastOnce, 5).await;

    let (mut sub, _) = connected(broker.addr, Protocol::V5, "order", false, expiry(60)).await;
    let got: Vec<_> = receive_messages(&mut sub, 5)
        .await
        .iter()
        .map(|p| (payload(p).to_owned(), p.dup))
        .collect();
    let expected: Vec<_> = [
        ("m1", true),
        ("m2", true),
        ("m3", false),
        ("m4", false),
        ("m5", false),
    ]
    .iter()
    .map(|(t, d)| (t.to_string(), *d))
    .collect();
    assert_eq!(got, expected);
}

// [MQTT-4.4.0-1]: a QoS 2 PUBLISH not yet acknowledged with PUBREC is resent with DUP; once PUBREL
// has been sent, the PUBREL is what is resent [MQTT-4.3.3-6], never the PUBLISH.
#[tokio::test]
async fn qos2_exchange_resumes_after_reconnect() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "q2", false, |_| {}).await;
    subscribe(&mut sub, "q2/t", QoS::ExactlyOnce).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V3_1_1, "pub", true, |_| {}).await;
    publish(&mut publisher, "q2/t", "exactly", QoS::ExactlyOnce, 9).await;

    // Stage 1: PUBLISH received, no PUBREC.
    let first = expect_publish(&mut sub).await;
    drop(sub);
    wait_offline(&broker.broker, "q2").await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "q2", false, |_| {}).await;
    let again = expect_publish(&mut sub).await;
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);

    // Stage 2: PUBREC sent, PUBREL received, no PUBCOMP.
    sub.send(&Packet::PubRec(ack(again.packet_id))).await;
    match sub.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, first.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(sub);
    wait_offline(&broker.broker, "q2").await;
    let (mut sub, connack) = connected(broker.addr, Protocol::V3_1_1, "q2", false, |_| {}).await;
    assert!(connack.session_present);
    match sub.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, first.packet_id),
        other => panic!("expected the PUBREL resent, got {other:?}"),
    }
    sub.send(&Packet::PubComp(ack(first.packet_id))).await;
    ping(&mut sub).await;
    drop(sub);
    wait_offline(&broker.broker, "q2").await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "q2", false, |_| {}).await;
    sub.expect_silence(Duration::from_millis(100)).await;
}

// [MQTT-4.3.3-10] (5.0; MQTT-4.3.3-2 in 3.1.1): until PUBREL, a resent QoS 2 PUBLISH with the
// same packet id is acknowledged with PUBREC again and not delivered twice. PUBREL gets PUBCOMP
// [MQTT-4.3.3-11], after which the id starts a new message [MQTT-4.3.3-12].
#[tokio::test]
async fn inbound_qos2_publish_is_delivered_exactly_once() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let broker = Broker::start().await;
        let (mut sub, _) = connected(broker.addr, protocol, "sub", true, |_| {}).await;
        subscribe(&mut sub, "once/t", QoS::ExactlyOnce).await;
        let (mut publisher, _) = connected(broker.addr, protocol, "pub", true, |_| {}).await;
        let mut p = message("once/t", "only once", QoS::ExactlyOnce, 5);
        publisher.send(&Packet::Publish(p.clone())).await;
        match publisher.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, 5),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        p.dup = true;
        publisher.send(&Packet::Publish(p.clone())).await;
        match publisher.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, 5),
            other => panic!("expected PUBREC for the resend, got {other:?}"),
        }
        publisher.send(&Packet::PubRel(ack(5))).await;
        match publisher.recv().await {
            Some(Packet::PubComp(c)) => assert_eq!(c.packet_id, 5),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        assert_eq!(payload(&receive_and_ack(&mut sub).await), "only once");
        sub.expect_silence(Duration::from_millis(100)).await;

        // After PUBCOMP, id 5 is a new message.
        publish(&mut publisher, "once/t", "new", QoS::ExactlyOnce, 5).await;
        assert_eq!(
            payload(&receive_and_ack(&mut sub).await),
            "new",
            "{protocol:?}"
        );
    }
}

// The receiver's QoS 2 state is session state: a publisher that reconnects to its session and
// resends the PUBLISH whose PUBREC it lost does not cause a second delivery.
#[tokio::test]
async fn inbound_qos2_resent_after_reconnect_is_delivered_once() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "sub", true, |_| {}).await;
    subscribe(&mut sub, "once/t", QoS::ExactlyOnce).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, expiry(60)).await;
    let mut p = message("once/t", "across", QoS::ExactlyOnce, 7);
    publisher.send(&Packet::Publish(p.clone())).await;
    match publisher.recv().await {
        Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    drop(publisher);
    wait_offline(&broker.broker, "pub").await;
    let (mut publisher, connack) =
        connected(broker.addr, Protocol::V5, "pub", false, expiry(60)).await;
    assert!(connack.session_present);
    p.dup = true;
    publisher.send(&Packet::Publish(p)).await;
    match publisher.recv().await {
        Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.send(&Packet::PubRel(ack(7))).await;
    match publisher.recv().await {
        Some(Packet::PubComp(c)) => {
            assert_eq!(c.packet_id, 7);
            assert_eq!(c.reason, ReasonCode::SUCCESS);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    assert_eq!(payload(&receive_and_ack(&mut sub).await), "across");
    sub.expect_silence(Duration::from_millis(100)).await;
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The admin API (`[http] admin_token`): the sessions with whether each is connected, the
/// figures of `/metrics`, disconnecting a client with 0x98 (Administrative action) while its
/// persistent session stays, and that session's subscriptions and queued messages. A request without the token, or with another, gets 401.
#[tokio::test]
async fn admin_api_lists_sessions_and_disconnects_a_client() {
    const TOKEN: &str = "s3cret-token";
    let broker = Broker::start_with(|c| {
        c.http = Some(pigeon_server::config::HttpConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            admin_token: Some(TOKEN.to_owned()),
            ..Default::default()
        })
    })
    .await;
    let api = broker.http.expect("HTTP listener");
    let (mut alice, _) = connected(broker.addr, Protocol::V5, "alice", true, |_| {}).await;
    let (mut keeper, _) = connected(broker.addr, Protocol::V5, "keeper", true, |c| {
        c.properties.session_expiry_interval = Some(600)
    })
    .await;
    subscribe(&mut keeper, "orders/#", QoS::AtLeastOnce).await;

    for token in [None, Some("wrong"), Some("s3cret-toke")] {
        let (status, _) = common::http(api, "GET", "/api/v1/clients", token).await;
        assert_eq!(status, 401, "token {token:?}");
    }
    // The rest of the HTTP listener needs no token.
    assert_eq!(
        common::http(api, "GET", "/health", None).await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(common::http(api, "GET", "/metrics", None).await.0, 200);
    let (status, body) = common::http(api, "GET", "/api/v1/clients", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"total": 2, "clients": [
            {"client_id": "alice", "connected": true},
            {"client_id": "keeper", "connected": true},
        ], "next": null})
    );
    // Page by page, and filtered by a part of the id.
    let page = |query: &'static str| async move {
        let path = format!("/api/v1/clients?{query}");
        let (status, body) = common::http(api, "GET", &path, Some(TOKEN)).await;
        assert_eq!(status, 200, "{query}: {body}");
        let page = json(&body);
        let ids: Vec<String> = page["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .map(|c| c["client_id"].as_str().expect("id").to_owned())
            .collect();
        (ids, page["next"].clone())
    };
    assert_eq!(
        page("limit=1").await,
        (vec!["alice".into()], "alice".into())
    );
    assert_eq!(
        page("limit=1&after=alice").await,
        (vec!["keeper".into()], serde_json::Value::Null)
    );
    assert_eq!(
        page("contains=e%65p").await,
        (vec!["keeper".into()], serde_json::Value::Null)
    );
    let (status, _) = common::http(api, "GET", "/api/v1/clients?after=%FF", Some(TOKEN)).await;
    assert_eq!(status, 400);
    let (_, body) = common::http(api, "GET", "/api/v1/stats", Some(TOKEN)).await;
    let stats = json(&body);
    assert_eq!(stats["sessions"], 2, "{body}");
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"), "{body}");
    assert!(stats["uptime_seconds"].is_u64(), "{body}");
    // The dashboard page loads without the token (a browser navigation carries none) and asks
    // for it; tests/browser/run.mjs drives it in Chromium.
    let (status, body) = common::http(api, "GET", "/dashboard", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Pigeon dashboard</title>"), "{body}");

    let (status, _) = common::http(api, "DELETE", "/api/v1/clients/keeper", Some(TOKEN)).await;
    assert_eq!(status, 204);
    expect_disconnect(&mut keeper, ReasonCode::ADMINISTRATIVE_ACTION).await;
    wait_offline(&broker.broker, "keeper").await;
    // Offline, its session keeps its subscription and queues what is published to it, by a
    // client or through the API.
    publish(&mut alice, "orders/1", "for keeper", QoS::AtLeastOnce, 1).await;
    let one = r#"{"topic": "orders/2", "payload": "from the API", "qos": 1}"#;
    let (status, body) =
        common::http_with_body(api, "POST", "/api/v1/publish", Some(TOKEN), one).await;
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"routed": 1}))
    );
    let (status, body) = common::http(api, "GET", "/api/v1/clients/keeper", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({
            "client_id": "keeper", "connected": false, "session_expiry_interval": 600,
            "subscriptions": [{"topic": "orders/#", "qos": 1, "no_local": false,
                               "retain_as_published": false, "retain_handling": 0}],
            "queued_messages": 2, "queued_bytes": 38, "inflight": 0,
        })
    );
    let (status, _) = common::http(api, "DELETE", "/api/v1/clients/keeper", Some(TOKEN)).await;
    assert_eq!(status, 404, "not connected any more");

    // A backend's batch, text and binary; alice gets both.
    subscribe(&mut alice, "news/#", QoS::AtLeastOnce).await;
    let batch = r#"[{"topic": "news/a", "payload": "hi"},
        {"topic": "news/b", "payload": "/wA=", "payload_encoding": "base64", "qos": 1}]"#;
    let (status, body) =
        common::http_with_body(api, "POST", "/api/v1/publish", Some(TOKEN), batch).await;
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!([{"routed": 1}, {"routed": 1}]))
    );
    let got = expect_publish(&mut alice).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("news/a", &b"hi"[..])
    );
    let got = receive_and_ack(&mut alice).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("news/b", &[0xff, 0][..])
    );
    // A bad message in a batch publishes none of it, and says which and why.
    for (request, why) in [
        (
            r#"{"topic": "news/#"}"#,
            "`news/#` is not a valid topic name",
        ),
        (
            r#"{"topic": "$SYS/x"}"#,
            "topics starting with $ are the broker's",
        ),
        (r#"{"topic": "news/c", "qos": 3}"#, "qos 3: not 0, 1 or 2"),
        (
            r#"[{"topic": "news/c"}, {"topic": "news/d", "payload": "%", "payload_encoding": "base64"}]"#,
            "message 1: payload: not base64",
        ),
        (
            r#"{"topic": "news/c", "colour": "red"}"#,
            "unknown field `colour`",
        ),
        ("not json", "not JSON"),
    ] {
        let (status, body) =
            common::http_with_body(api, "POST", "/api/v1/publish", Some(TOKEN), request).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(body.contains(why), "{request}: {body}");
    }
    // The limits of a client's PUBLISH hold here too (128 topic levels by default).
    let deep = format!(r#"{{"topic": "{}"}}"#, vec!["l"; 129].join("/"));
    let (status, body) =
        common::http_with_body(api, "POST", "/api/v1/publish", Some(TOKEN), &deep).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("129 topic levels, over limits.max_topic_levels (128)"),
        "{body}"
    );
    alice.expect_silence(Duration::from_millis(100)).await;
    let (status, _) = common::http_with_body(
        api,
        "POST",
        "/api/v1/publish",
        None,
        r#"{"topic": "news/x"}"#,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = common::http(api, "GET", "/api/v1/clients/nobody", Some(TOKEN)).await;
    assert_eq!(status, 404);
    broker.stop().await;
}

/// Without `admin_token` the admin API and the dashboard are off: 404 whatever the request
/// carries.
#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let broker = Broker::start_with(|c| {
        c.http = Some(pigeon_server::config::HttpConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            ..Default::default()
        })
    })
    .await;
    let api = broker.http.expect("HTTP listener");
    for token in [None, Some("anything")] {
        let (status, body) = common::http(api, "GET", "/api/v1/clients", token).await;
        assert_eq!(status, 404, "{body}");
    }
    let (status, body) = common::http(api, "GET", "/dashboard", None).await;
    assert_eq!(
        (status, body.as_str()),
        (404, "admin API off: set admin_token in [http]\n")
    );
    broker.stop().await;
}
