//! Steps the connect, session, will, keep-alive, malformed and limits tests share, on top of the
//! `common` harness: building packets, expecting a packet of one kind, and waiting for the broker
//! to see a client leave (a closed socket tells the client before the broker has detached it).
#![allow(dead_code, unreachable_pub)]

use crate::common::Raw;
use bytes::Bytes;
use pigeon_codec::{
    ByteStr, ConnAck, Disconnect, Packet, Protocol, PubResp, Publish, QoS, ReasonCode, SubAck,
    Subscribe, SubscriptionOptions,
};
use std::net::SocketAddr;
use std::time::Duration;

/// CONNECT, expecting a successful CONNACK.
pub async fn connected(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    clean_start: bool,
    f: impl FnOnce(&mut pigeon_codec::Connect),
) -> (Raw, ConnAck) {
    let (raw, ack) = Raw::mqtt_connect(addr, protocol, client_id, clean_start, f).await;
    let Packet::ConnAck(ack) = ack else {
        panic!("expected CONNACK, got {ack:?}")
    };
    assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK for {client_id}");
    (raw, ack)
}

/// CONNECT expecting a refusal: the CONNACK, then the connection closed.
pub async fn refused(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    clean_start: bool,
    f: impl FnOnce(&mut pigeon_codec::Connect),
) -> ConnAck {
    let (mut raw, ack) = Raw::mqtt_connect(addr, protocol, client_id, clean_start, f).await;
    let Packet::ConnAck(ack) = ack else {
        panic!("expected CONNACK, got {ack:?}")
    };
    assert!(!ack.session_present, "a refusal never has session present");
    expect_closed(&mut raw).await;
    ack
}

/// A 5.0 CONNECT with this Session Expiry Interval.
pub fn expiry(secs: u32) -> impl FnOnce(&mut pigeon_codec::Connect) {
    move |c| c.properties.session_expiry_interval = Some(secs)
}

pub async fn subscribe(raw: &mut Raw, filter: &str, qos: QoS) -> SubAck {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            ByteStr::from(filter),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    }))
    .await;
    match raw.recv().await {
        Some(Packet::SubAck(s)) => {
            assert!(
                !s.return_codes[0].is_error(),
                "subscribe to {filter} refused: {:?}",
                s.return_codes
            );
            s
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

pub fn message(topic: &str, payload: &str, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        qos,
        topic: ByteStr::from(topic),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

/// Publishes and completes the exchange for its QoS, so the broker has routed the message when
/// this returns.
pub async fn publish(raw: &mut Raw, topic: &str, payload: &str, qos: QoS, packet_id: u16) {
    raw.send(&Packet::Publish(message(topic, payload, qos, packet_id)))
        .await;
    match qos {
        QoS::AtMostOnce => {
            // A PINGREQ round trip: the broker handles packets in order, so the PUBLISH is routed.
            raw.send(&Packet::PingReq).await;
            match raw.recv().await {
                Some(Packet::PingResp) => {}
                other => panic!("expected PINGRESP, got {other:?}"),
            }
        }
        QoS::AtLeastOnce => match raw.recv().await {
            Some(Packet::PubAck(a)) if a.packet_id == packet_id => {}
            other => panic!("expected PUBACK {packet_id}, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            match raw.recv().await {
                Some(Packet::PubRec(r)) if r.packet_id == packet_id => {}
                other => panic!("expected PUBREC {packet_id}, got {other:?}"),
            }
            raw.send(&Packet::PubRel(ack(packet_id))).await;
            match raw.recv().await {
                Some(Packet::PubComp(c)) if c.packet_id == packet_id => {}
                other => panic!("expected PUBCOMP {packet_id}, got {other:?}"),
            }
        }
    }
}

pub fn ack(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        ..Default::default()
    }
}

pub async fn expect_publish(raw: &mut Raw) -> Publish {
    match raw.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Receives a PUBLISH and acknowledges it as its QoS asks (QoS 2 through PUBCOMP).
pub async fn receive_and_ack(raw: &mut Raw) -> Publish {
    receive_messages(raw, 1).await.remove(0)
}

/// Receives `n` PUBLISH packets, acknowledging each as its QoS asks, and returns once every QoS 2
/// exchange among them has reached PUBCOMP. The broker may send the next PUBLISH before the
/// PUBREL of the one before, so acknowledgements are matched as packets come.
pub async fn receive_messages(raw: &mut Raw, n: usize) -> Vec<Publish> {
    let mut got = Vec::with_capacity(n);
    let mut awaiting_pubrel = Vec::new();
    while got.len() < n || !awaiting_pubrel.is_empty() {
        match raw.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(got.len() < n, "more than {n} PUBLISH packets: {p:?}");
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(ack(p.packet_id))).await,
                    QoS::ExactlyOnce => {
                        raw.send(&Packet::PubRec(ack(p.packet_id))).await;
                        awaiting_pubrel.push(p.packet_id);
                    }
                }
                got.push(p);
            }
            Some(Packet::PubRel(r)) => {
                let pos = awaiting_pubrel
                    .iter()
                    .position(|id| *id == r.packet_id)
                    .unwrap_or_else(|| panic!("PUBREL for unknown id {}", r.packet_id));
                awaiting_pubrel.remove(pos);
                raw.send(&Packet::PubComp(ack(r.packet_id))).await;
            }
            other => panic!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
    got
}

pub fn payload(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).expect("test payloads are text")
}

/// The connection is closed by the broker with no packet before the close.
pub async fn expect_closed(raw: &mut Raw) {
    if let Some(p) = raw.recv().await {
        panic!("expected the connection closed, got {p:?}");
    }
}

/// Like `expect_closed`, allowing up to `d` (for broker timers longer than `recv`'s 5 s).
pub async fn expect_closed_within(raw: &mut Raw, d: Duration) {
    match raw.recv_within(d).await {
        Ok(None) => {}
        Ok(Some(p)) => panic!("expected the connection closed, got {p:?}"),
        Err(()) => panic!("connection still open after {d:?}"),
    }
}

/// A 5.0 DISCONNECT with `reason` from the broker, then the connection closed.
pub async fn expect_disconnect(raw: &mut Raw, reason: ReasonCode) {
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "DISCONNECT reason"),
        other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
    }
    expect_closed(raw).await;
}

/// What a client sees when the broker closes it for `reason`: a DISCONNECT first in 5.0 only.
pub async fn expect_closed_for(raw: &mut Raw, reason: ReasonCode) {
    if raw.protocol.is_v5() {
        expect_disconnect(raw, reason).await;
    } else {
        expect_closed(raw).await;
    }
}

pub async fn disconnect(raw: &mut Raw, f: impl FnOnce(&mut Disconnect)) {
    let mut d = Disconnect::default();
    f(&mut d);
    raw.send(&Packet::Disconnect(d)).await;
}

/// PINGREQ answered by PINGRESP: the connection is open and served.
pub async fn ping(raw: &mut Raw) {
    raw.send(&Packet::PingReq).await;
    match raw.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

/// Waits until the broker has detached `client_id`'s last connection (or ended its session). A
/// client sees its socket close before the broker has finished with it; tests that publish "while
/// the client is offline" must wait for the broker's side.
pub async fn wait_offline(broker: &pigeon_core::Broker, client_id: &str) {
    for _ in 0..1000 {
        match broker.session(client_id) {
            Some(s) if s.is_connected() => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{client_id} still attached after 5 s");
}

/// Waits until the broker has attached a connection to `client_id`'s session.
pub async fn wait_online(broker: &pigeon_core::Broker, client_id: &str) {
    for _ in 0..1000 {
        if broker.session(client_id).is_some_and(|s| s.is_connected()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{client_id} not attached after 5 s");
}
