//! Configured bounds and the client's own limits: packet size both ways, connection count, the
//! offline queue, the in-flight window and the 5.0 Receive Maximum.

mod common;
mod support;

use bytes::{Bytes, BytesMut};
use common::{Broker, Raw};
use pigeon_codec::{encode, encoded_len, Packet, Protocol, Publish, QoS, ReasonCode};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A QoS 1 PUBLISH on `t` whose encoded size at `protocol` is exactly `size` bytes.
fn publish_of_size(protocol: Protocol, size: usize) -> Publish {
    let mut p = message("t", "", QoS::AtLeastOnce, 1);
    let head = encoded_len(&Packet::Publish(p.clone()), protocol);
    // The remaining length may take one more byte as the payload grows; shrink until it fits.
    let mut payload_len = size - head;
    loop {
        p.payload = Bytes::from(vec![b'x'; payload_len]);
        let len = encoded_len(&Packet::Publish(p.clone()), protocol);
        if len <= size {
            assert_eq!(len, size, "no payload length gives exactly {size} bytes");
            return p;
        }
        payload_len -= len - size;
    }
}

// 5.0 section 3.2.2.3.6: a client sending a packet larger than the Maximum Packet Size the
// broker announced gets DISCONNECT 0x95 (Packet too large) and is closed; 3.1.1 is just closed.
// A PUBLISH of exactly the maximum is accepted.
#[tokio::test]
async fn publish_larger_than_max_packet_size_closes_the_connection() {
    let broker = Broker::start_with(|c| c.limits.max_packet_size = 1024).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (mut raw, _) = connected(broker.addr, protocol, "big", true, |_| {}).await;
        raw.send(&Packet::Publish(publish_of_size(protocol, 1024)))
            .await;
        match raw.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, 1),
            other => {
                panic!("{protocol:?}: a PUBLISH of exactly the maximum is accepted, got {other:?}")
            }
        }
        raw.send(&Packet::Publish(publish_of_size(protocol, 1025)))
            .await;
        expect_closed_for(&mut raw, ReasonCode::PACKET_TOO_LARGE).await;
    }
}

// A packet announced too large is refused from its fixed header: the broker does not wait for
// (or buffer) a body that would exceed the limit.
#[tokio::test]
async fn oversized_packet_is_refused_before_its_body_arrives() {
    let broker = Broker::start_with(|c| c.limits.max_packet_size = 1024).await;
    let (mut raw, _) = connected(broker.addr, Protocol::V5, "header", true, |_| {}).await;
    // PUBLISH announcing a remaining length of 1 MiB; no body follows.
    raw.send_bytes(&[0x30, 0x80, 0x80, 0x40]).await;
    expect_disconnect(&mut raw, ReasonCode::PACKET_TOO_LARGE).await;
}

// 5.0: the N+1th connection gets CONNACK 0x97 (Quota exceeded); 3.1.1: return code 3 (Server
// unavailable). A place freed by a client that leaves is taken again.
#[tokio::test]
async fn connection_over_max_connections_is_refused() {
    let broker = Broker::start_with(|c| c.limits.max_connections = 2).await;
    let (mut a, _) = connected(broker.addr, Protocol::V5, "a", true, |_| {}).await;
    let (mut b, _) = connected(broker.addr, Protocol::V3_1_1, "b", true, |_| {}).await;
    let ack = refused(broker.addr, Protocol::V5, "c", true, |_| {}).await;
    assert_eq!(ack.code, ReasonCode::QUOTA_EXCEEDED);
    let ack = refused(broker.addr, Protocol::V3_1_1, "d", true, |_| {}).await;
    assert_eq!(ack.code, ReasonCode::V3_SERVER_UNAVAILABLE);
    ping(&mut a).await;
    ping(&mut b).await;

    disconnect(&mut b, |_| {}).await;
    expect_closed(&mut b).await;
    let current = &broker.broker.stats.connections_current;
    for _ in 0..1000 {
        if current.load(Ordering::Relaxed) <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut e, _) = connected(broker.addr, Protocol::V5, "e", true, |_| {}).await;
    ping(&mut e).await;
}

/// A persistent 5.0 subscriber to `q/#` at QoS 1, offline when this returns.
async fn offline_subscriber(broker: &Broker, id: &str) {
    let (mut sub, _) = connected(broker.addr, Protocol::V5, id, true, expiry(300)).await;
    subscribe(&mut sub, "q/#", QoS::AtLeastOnce).await;
    drop(sub);
    wait_offline(&broker.broker, id).await;
}

// `max_queued_messages` bounds what an offline session keeps; once full, newer messages are
// dropped (mosquitto's `max_queued_messages` policy), and the oldest are delivered.
#[tokio::test]
async fn offline_queue_keeps_at_most_max_queued_messages_dropping_the_newest() {
    let broker = Broker::start_with(|c| c.limits.max_queued_messages = 3).await;
    offline_subscriber(&broker, "full").await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    for i in 1..=5u16 {
        publish(&mut publisher, "q/t", &format!("m{i}"), QoS::AtLeastOnce, i).await;
    }
    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "full", false, expiry(300)).await;
    assert!(ack.session_present);
    let got: Vec<_> = receive_messages(&mut sub, 3)
        .await
        .iter()
        .map(|p| payload(p).to_owned())
        .collect();
    assert_eq!(got, ["m1", "m2", "m3"]);
    sub.expect_silence(Duration::from_millis(100)).await;
    assert!(broker.broker.stats.messages_dropped.load(Ordering::Relaxed) >= 2);
}

// With QoS 0 queued offline (`queue_qos0`), a full queue makes room for a QoS 1 message by
// evicting the oldest QoS 0 one; a QoS 0 message arriving at a full queue is dropped.
#[tokio::test]
async fn full_queue_evicts_qos0_before_qos1() {
    let broker = Broker::start_with(|c| {
        c.limits.max_queued_messages = 3;
        c.mqtt.queue_qos0 = true;
    })
    .await;
    offline_subscriber(&broker, "mixed").await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    let sends = [
        ("a", QoS::AtMostOnce),
        ("b", QoS::AtLeastOnce),
        ("c", QoS::AtMostOnce),
        ("d", QoS::AtLeastOnce), // full: evicts "a"
        ("e", QoS::AtLeastOnce), // full: evicts "c"
        ("f", QoS::AtMostOnce),  // full, nothing to evict for QoS 0: dropped
        ("g", QoS::AtLeastOnce), // full of QoS 1: dropped
    ];
    for (i, (text, qos)) in sends.into_iter().enumerate() {
        publish(&mut publisher, "q/t", text, qos, i as u16 + 1).await;
    }
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "mixed", false, expiry(300)).await;
    let got: Vec<_> = receive_messages(&mut sub, 3)
        .await
        .iter()
        .map(|p| (payload(p).to_owned(), p.qos))
        .collect();
    assert_eq!(
        got,
        [
            ("b".to_owned(), QoS::AtLeastOnce),
            ("d".to_owned(), QoS::AtLeastOnce),
            ("e".to_owned(), QoS::AtLeastOnce)
        ]
    );
    sub.expect_silence(Duration::from_millis(100)).await;
}

/// Publishes `n` QoS `qos` messages "m1".."mn" to `q/t`.
async fn publish_n(broker: &Broker, n: u16, qos: QoS) {
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    for i in 1..=n {
        publish(&mut publisher, "q/t", &format!("m{i}"), qos, i).await;
    }
}

async fn expect_payload(raw: &mut Raw, text: &str) -> Publish {
    let p = expect_publish(raw).await;
    assert_eq!(payload(&p), text);
    p
}

// `max_inflight` bounds the QoS 1 and 2 messages sent and not yet acknowledged; each PUBACK lets
// the next one go.
#[tokio::test]
async fn max_inflight_holds_back_deliveries_until_acknowledged() {
    let broker = Broker::start_with(|c| c.limits.max_inflight = 2).await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "slow", true, |_| {}).await;
    subscribe(&mut sub, "q/#", QoS::AtLeastOnce).await;
    publish_n(&broker, 4, QoS::AtLeastOnce).await;
    let m1 = expect_payload(&mut sub, "m1").await;
    let m2 = expect_payload(&mut sub, "m2").await;
    sub.expect_silence(Duration::from_millis(100)).await;
    sub.send(&Packet::PubAck(ack(m1.packet_id))).await;
    let m3 = expect_payload(&mut sub, "m3").await;
    sub.expect_silence(Duration::from_millis(100)).await;
    // Control packets are not held back by the full window [MQTT-3.3.4-10] (5.0).
    ping(&mut sub).await;
    sub.send(&Packet::PubAck(ack(m2.packet_id))).await;
    sub.send(&Packet::PubAck(ack(m3.packet_id))).await;
    expect_payload(&mut sub, "m4").await;
}

// A QoS 2 delivery holds its place in the window until PUBCOMP, not PUBREC.
#[tokio::test]
async fn qos2_delivery_holds_its_inflight_place_until_pubcomp() {
    let broker = Broker::start_with(|c| c.limits.max_inflight = 1).await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "slow2", true, |_| {}).await;
    subscribe(&mut sub, "q/#", QoS::ExactlyOnce).await;
    publish_n(&broker, 2, QoS::ExactlyOnce).await;
    let m1 = expect_payload(&mut sub, "m1").await;
    sub.send(&Packet::PubRec(ack(m1.packet_id))).await;
    match sub.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, m1.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.expect_silence(Duration::from_millis(100)).await;
    sub.send(&Packet::PubComp(ack(m1.packet_id))).await;
    expect_payload(&mut sub, "m2").await;
}

// [MQTT-3.3.4-9] (5.0): no more than the client's Receive Maximum unacknowledged QoS 1/2 PUBLISH
// packets, even when `max_inflight` allows more.
#[tokio::test]
async fn client_receive_maximum_is_respected() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "small", true, |c| {
        c.properties.receive_maximum = Some(1)
    })
    .await;
    subscribe(&mut sub, "q/#", QoS::AtLeastOnce).await;
    publish_n(&broker, 3, QoS::AtLeastOnce).await;
    let m1 = expect_payload(&mut sub, "m1").await;
    sub.expect_silence(Duration::from_millis(100)).await;
    sub.send(&Packet::PubAck(ack(m1.packet_id))).await;
    let m2 = expect_payload(&mut sub, "m2").await;
    sub.expect_silence(Duration::from_millis(100)).await;
    sub.send(&Packet::PubAck(ack(m2.packet_id))).await;
    expect_payload(&mut sub, "m3").await;
}

// [MQTT-3.1.2-24], [MQTT-3.1.2-25] (5.0): a message larger than the client's Maximum Packet Size
// is not sent to that client, which then gets the next one as if the large one had been
// delivered (it does not hold an in-flight place); other subscribers get it.
#[tokio::test]
async fn message_over_the_client_maximum_packet_size_is_skipped_for_that_client() {
    let broker = Broker::start().await;
    let (mut small, _) = connected(broker.addr, Protocol::V5, "small", true, |c| {
        c.properties.maximum_packet_size = Some(64);
        c.properties.receive_maximum = Some(1);
    })
    .await;
    subscribe(&mut small, "q/#", QoS::AtLeastOnce).await;
    let (mut large, _) = connected(broker.addr, Protocol::V5, "large", true, |_| {}).await;
    subscribe(&mut large, "q/#", QoS::AtLeastOnce).await;

    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    let big = "x".repeat(100);
    publish(&mut publisher, "q/t", &big, QoS::AtLeastOnce, 1).await;
    publish(&mut publisher, "q/t", "small enough", QoS::AtLeastOnce, 2).await;

    let got = receive_and_ack(&mut small).await;
    assert_eq!(payload(&got), "small enough");
    small.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(payload(&receive_and_ack(&mut large).await), big);
    assert_eq!(payload(&receive_and_ack(&mut large).await), "small enough");
}

// [MQTT-3.1.2-25] (5.0): an unacknowledged message resent after a reconnect whose new Maximum
// Packet Size it exceeds is discarded "as if it had completed sending": it does not keep its
// in-flight place, so the next message gets through.
#[tokio::test]
async fn resent_message_over_the_new_maximum_packet_size_is_discarded() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V5, "shrinks", true, expiry(60)).await;
    subscribe(&mut sub, "q/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    let big = "x".repeat(100);
    publish(&mut publisher, "q/t", &big, QoS::AtLeastOnce, 1).await;
    assert_eq!(payload(&expect_publish(&mut sub).await), big);
    drop(sub); // no PUBACK
    wait_offline(&broker.broker, "shrinks").await;

    let (mut sub, ack) = connected(broker.addr, Protocol::V5, "shrinks", false, |c| {
        c.properties.session_expiry_interval = Some(60);
        c.properties.maximum_packet_size = Some(64);
        c.properties.receive_maximum = Some(1);
    })
    .await;
    assert!(ack.session_present);
    publish(&mut publisher, "q/t", "small", QoS::AtLeastOnce, 2).await;
    let p = receive_and_ack(&mut sub).await;
    assert_eq!((payload(&p), p.dup), ("small", false));
    sub.expect_silence(Duration::from_millis(100)).await;
}

// [MQTT-3.3.4-7] (5.0): a client sending more QoS 1 and 2 PUBLISH packets than the Receive
// Maximum we announced gets DISCONNECT 0x93 (sections 3.3.4, 4.13). A client still writing then (a
// PUBREL for each PUBREC, as the Paho interoperability suite's client does) can write on, reads
// every PUBREC and the DISCONNECT, and then a clean end of stream: the broker reads on until the
// client closes, where closing on unread input would have made the kernel answer with a reset.
#[tokio::test]
async fn client_past_our_receive_maximum_reads_why_while_it_still_writes() {
    let broker = Broker::start_with(|c| c.limits.max_inflight = 4).await;
    let (mut raw, _) = connected(broker.addr, Protocol::V5, "eager", true, |_| {}).await;
    let mut burst = BytesMut::new();
    for id in 1..=5 {
        let p = message("t", "x", QoS::ExactlyOnce, id);
        encode(&Packet::Publish(p), Protocol::V5, &mut burst);
    }
    raw.send_bytes(&burst).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut pubrels = BytesMut::new();
    for id in 1..=4 {
        encode(&Packet::PubRel(ack(id)), Protocol::V5, &mut pubrels);
    }
    // Two writes apart: a reset answering the first would fail the second.
    for round in 0..2 {
        if let Err(e) = raw.stream.write_all(&pubrels).await {
            panic!("write {round} after the DISCONNECT failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for id in 1..=4 {
        match raw.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, id),
            other => panic!("expected PUBREC {id}, got {other:?}"),
        }
    }
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    let mut rest = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), raw.stream.read(&mut rest)).await {
        Ok(Ok(0)) => {}
        other => panic!("expected a clean end of stream after the DISCONNECT, got {other:?}"),
    }
}
