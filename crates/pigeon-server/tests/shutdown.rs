//! Graceful shutdown: the broker stops accepting, tells 5.0 clients why (DISCONNECT 0x8B Server
//! shutting down), closes 3.1.1 clients, flushes what it owed them, and `run` returns.

mod common;

use bytes::Bytes;
use common::{Broker, Raw};
use pigeon_codec::{ByteStr, Packet, Protocol, Publish, QoS, ReasonCode};
use std::time::Duration;

#[tokio::test]
async fn shutdown_sends_5_0_clients_disconnect_0x8b_and_closes_everyone() {
    let broker = Broker::start().await;
    let addr = broker.addr;
    let (mut v5, _) = Raw::mqtt_connect(addr, Protocol::V5, "five", true, |_| {}).await;
    let (mut v3, _) = Raw::mqtt_connect(addr, Protocol::V3_1_1, "three", true, |_| {}).await;
    // A PUBACK the broker owes is flushed before it closes.
    v5.send(&Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        topic: ByteStr::from("t"),
        packet_id: 3,
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    }))
    .await;
    assert!(matches!(v5.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 3));

    tokio::time::timeout(Duration::from_secs(15), broker.stop())
        .await
        .expect("run returns after shutdown");

    match v5.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SERVER_SHUTTING_DOWN),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    assert!(v5.recv().await.is_none(), "closed after the DISCONNECT");
    assert!(
        v3.recv().await.is_none(),
        "a 3.1.1 client is closed without a packet"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
