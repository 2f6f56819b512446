//! Packet flows on top of `common::Raw` for the publish/subscribe test files (pubsub, qos, retain,
//! shared, properties): connect, subscribe, publish with its acknowledgements, and receive with
//! the subscriber's acknowledgements, so each test states only what it checks.
#![allow(dead_code, unreachable_pub)]

use super::common::Raw;
use bytes::Bytes;
use pigeon_codec::{
    ByteStr, ConnAck, Connect, Packet, Protocol, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscribeProperties, SubscriptionOptions, Unsubscribe,
};
use std::net::SocketAddr;
use std::time::Duration;

/// Connects with clean start and asserts the CONNACK accepts.
pub async fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Raw {
    connect_with(addr, protocol, client_id, true, |_| {})
        .await
        .0
}

/// Connects, asserts the CONNACK accepts, and returns it.
pub async fn connect_with(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    clean_start: bool,
    f: impl FnOnce(&mut Connect),
) -> (Raw, ConnAck) {
    let (raw, ack) = Raw::mqtt_connect(addr, protocol, client_id, clean_start, f).await;
    let Packet::ConnAck(ack) = ack else {
        panic!("{client_id}: expected CONNACK, got {ack:?}")
    };
    assert_eq!(
        ack.code,
        ReasonCode::SUCCESS,
        "{client_id}: CONNACK refused"
    );
    (raw, ack)
}

pub fn qos(q: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: q,
        ..Default::default()
    }
}

/// The next packet that is not a PUBREL; a PUBREL (owed for a QoS 2 delivery read earlier) gets
/// its PUBCOMP on the way.
pub async fn recv_skipping_pubrel(raw: &mut Raw) -> Option<Packet> {
    loop {
        match raw.recv().await {
            Some(Packet::PubRel(r)) => {
                raw.send(&Packet::PubComp(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                }))
                .await
            }
            other => return other,
        }
    }
}

/// Sends one SUBSCRIBE and returns the SUBACK's codes.
pub async fn subscribe_all(
    raw: &mut Raw,
    filters: &[(&str, SubscriptionOptions)],
    id: Option<u32>,
) -> Vec<ReasonCode> {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: filters
            .iter()
            .map(|(f, o)| (ByteStr::from(*f), *o))
            .collect(),
        properties: SubscribeProperties {
            subscription_identifier: id,
            ..Default::default()
        },
    }))
    .await;
    match recv_skipping_pubrel(raw).await {
        Some(Packet::SubAck(s)) => {
            assert_eq!(s.packet_id, 1);
            s.return_codes
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Subscribes to one filter and asserts the QoS is granted.
pub async fn subscribe(raw: &mut Raw, filter: &str, q: QoS) {
    subscribe_opts(raw, filter, qos(q)).await;
}

/// Subscribes to one filter with options and asserts the QoS is granted.
pub async fn subscribe_opts(raw: &mut Raw, filter: &str, options: SubscriptionOptions) {
    let codes = subscribe_all(raw, &[(filter, options)], None).await;
    assert_eq!(
        codes,
        vec![ReasonCode(options.qos as u8)],
        "SUBACK for {filter}"
    );
}

/// Sends one UNSUBSCRIBE and returns the UNSUBACK's codes (empty before 5.0).
pub async fn unsubscribe(raw: &mut Raw, filters: &[&str]) -> Vec<ReasonCode> {
    raw.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: filters.iter().map(|f| ByteStr::from(*f)).collect(),
        properties: Default::default(),
    }))
    .await;
    match recv_skipping_pubrel(raw).await {
        Some(Packet::UnsubAck(u)) => {
            assert_eq!(u.packet_id, 2);
            u.reason_codes
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

/// A PUBLISH as a client sends it; packet id 1 for QoS 1 and 2.
pub fn message(topic: &str, payload: &[u8], q: QoS) -> Publish {
    Publish {
        qos: q,
        topic: ByteStr::from(topic),
        packet_id: if q == QoS::AtMostOnce { 0 } else { 1 },
        payload: Bytes::copy_from_slice(payload),
        ..Default::default()
    }
}

/// Publishes and completes the publisher's side of the exchange: nothing for QoS 0, PUBACK for
/// QoS 1, PUBREC/PUBREL/PUBCOMP for QoS 2. Returns the PUBACK or PUBREC. The client must not
/// be subscribed to the topic (a delivery to itself would arrive among the acknowledgements).
pub async fn publish(raw: &mut Raw, p: Publish) -> Option<PubResp> {
    let (q, id) = (p.qos, p.packet_id);
    raw.send(&Packet::Publish(p)).await;
    match q {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => match recv_skipping_pubrel(raw).await {
            Some(Packet::PubAck(a)) if a.packet_id == id => Some(a),
            other => panic!("expected PUBACK {id}, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            let rec = match recv_skipping_pubrel(raw).await {
                Some(Packet::PubRec(r)) if r.packet_id == id => r,
                other => panic!("expected PUBREC {id}, got {other:?}"),
            };
            if rec.reason.is_error() {
                return Some(rec);
            }
            raw.send(&Packet::PubRel(PubResp {
                packet_id: id,
                ..Default::default()
            }))
            .await;
            match raw.recv().await {
                Some(Packet::PubComp(c)) if c.packet_id == id => {
                    assert_eq!(c.reason, ReasonCode::SUCCESS)
                }
                other => panic!("expected PUBCOMP {id}, got {other:?}"),
            }
            Some(rec)
        }
    }
}

/// Publishes with QoS 1 and waits for the PUBACK: once it arrives the broker has routed the
/// message, so every matching session has it queued.
pub async fn publish_q1(raw: &mut Raw, topic: &str, payload: &[u8]) {
    publish(raw, message(topic, payload, QoS::AtLeastOnce)).await;
}

/// The next PUBLISH, acknowledged as a subscriber does (PUBACK, or PUBREC; a PUBREL met on the
/// way gets its PUBCOMP). Panics on any other packet or when nothing comes within 5 s.
pub async fn next_publish(raw: &mut Raw) -> Publish {
    match recv_skipping_pubrel(raw).await {
        Some(Packet::Publish(p)) => {
            ack(raw, &p).await;
            p
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Sends the subscriber's first acknowledgement of `p`.
pub async fn ack(raw: &mut Raw, p: &Publish) {
    let resp = PubResp {
        packet_id: p.packet_id,
        ..Default::default()
    };
    match p.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => raw.send(&Packet::PubAck(resp)).await,
        QoS::ExactlyOnce => raw.send(&Packet::PubRec(resp)).await,
    }
}

/// The topic that marks the end of a test's messages: a subscriber that also subscribes to it
/// (`subscribe_sentinel`) and reads until it (`until_sentinel`) has seen everything the same
/// publisher sent before `publish_sentinel`, since one publisher's messages reach a subscriber in
/// order. No waiting out a silence, and an extra copy cannot arrive later unseen.
pub const SENTINEL: &str = "end";

pub async fn subscribe_sentinel(raw: &mut Raw) {
    subscribe(raw, SENTINEL, QoS::AtLeastOnce).await;
}

pub async fn publish_sentinel(raw: &mut Raw) {
    publish_q1(raw, SENTINEL, b"").await;
}

/// Every PUBLISH before the sentinel, acknowledged.
pub async fn until_sentinel(raw: &mut Raw) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let p = next_publish(raw).await;
        if p.topic.as_str() == SENTINEL {
            return got;
        }
        got.push(p);
    }
}

/// What `sub` received from `publisher` (and the broker) since the last call: `publisher` sends
/// the sentinel, `sub` (subscribed to it) reads up to it.
pub async fn received(publisher: &mut Raw, sub: &mut Raw) -> Vec<Publish> {
    publish_sentinel(publisher).await;
    until_sentinel(sub).await
}

/// `n` PUBLISHes, acknowledged, then nothing more within 200 ms.
pub async fn exactly(raw: &mut Raw, n: usize) -> Vec<Publish> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next_publish(raw).await);
    }
    expect_no_publish(raw).await;
    got
}

/// Asserts that no PUBLISH arrives within 200 ms (a PUBREL owed for an earlier one is answered).
pub async fn expect_no_publish(raw: &mut Raw) {
    loop {
        match raw.recv_within(Duration::from_millis(200)).await {
            Err(()) => return,
            Ok(Some(Packet::PubRel(r))) => {
                raw.send(&Packet::PubComp(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                }))
                .await
            }
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

/// Asserts that the broker closes the connection: after a DISCONNECT with `reason` for 5.0,
/// without one before 5.0 (which has no server DISCONNECT).
pub async fn expect_closed(raw: &mut Raw, reason: ReasonCode) {
    if raw.protocol.is_v5() {
        match raw.recv().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "DISCONNECT reason"),
            other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
        }
    }
    match raw.recv().await {
        None => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// Payloads as text, for readable assertions.
pub fn payloads(ps: &[Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// Topics, sorted, for order-free assertions.
pub fn topics(ps: &[Publish]) -> Vec<String> {
    let mut t: Vec<String> = ps.iter().map(|p| p.topic.to_string()).collect();
    t.sort();
    t
}
