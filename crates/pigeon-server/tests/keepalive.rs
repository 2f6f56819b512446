//! Keep alive, under paused time: a silent client is closed after one and a half times its keep
//! alive, any packet (PINGREQ included) keeps it open, and keep alive 0 turns the check off.

mod common;
mod support;

use common::Broker;
use pigeon_codec::{Protocol, QoS, ReasonCode};
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;

// [MQTT-3.1.2-24] (3.1.1): no packet within 1.5 x keep alive closes the connection; it stays open
// until then.
#[tokio::test(start_paused = true)]
async fn silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let broker = Broker::start().await;
    let (mut raw, _) = connected(broker.addr, Protocol::V3_1_1, "quiet", true, |c| {
        c.keep_alive = 2
    })
    .await;
    raw.expect_silence(Duration::from_millis(2900)).await;
    expect_closed_within(&mut raw, Duration::from_millis(500)).await;
}

// [MQTT-3.1.2-22] (5.0): the same, and the client is told why: DISCONNECT 0x8D (Keep Alive
// timeout).
#[tokio::test(start_paused = true)]
async fn silent_5_client_gets_disconnect_keep_alive_timeout() {
    let broker = Broker::start().await;
    let (mut raw, _) = connected(broker.addr, Protocol::V5, "quiet5", true, |c| {
        c.keep_alive = 4
    })
    .await;
    raw.expect_silence(Duration::from_millis(5900)).await;
    expect_disconnect(&mut raw, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
}

// [MQTT-3.1.2-20] (5.0): a client with nothing else to send keeps the connection with PINGREQ.
// Keep alive 2 s, PINGREQ every second for 6 s: never closed.
#[tokio::test(start_paused = true)]
async fn pingreq_keeps_the_connection_open() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (mut raw, _) =
            connected(broker.addr, protocol, "pinger", true, |c| c.keep_alive = 2).await;
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ping(&mut raw).await;
        }
        // The check still runs: silence from here on closes it.
        raw.expect_silence(Duration::from_millis(2900)).await;
        expect_closed_for(&mut raw, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    }
}

// Any control packet counts, not only PINGREQ: a client that publishes every second stays open.
#[tokio::test(start_paused = true)]
async fn any_packet_from_the_client_resets_the_keep_alive() {
    let broker = Broker::start().await;
    let (mut raw, _) = connected(broker.addr, Protocol::V3_1_1, "talker", true, |c| {
        c.keep_alive = 2
    })
    .await;
    for i in 1..=6u16 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        publish(&mut raw, "ka/t", "tick", QoS::AtLeastOnce, i).await;
    }
    ping(&mut raw).await;
}

// The keep alive counts MQTT Control Packets [MQTT-3.1.2-22] (5.0): bytes that never complete a
// packet do not keep a connection open (mosquitto counts whole packets too). A PUBLISH trickled
// one byte per second is cut off 3 s after the last whole packet, keep alive 2.
#[tokio::test(start_paused = true)]
async fn bytes_that_do_not_complete_a_packet_do_not_keep_it_alive() {
    let broker = Broker::start().await;
    let (mut raw, _) = connected(broker.addr, Protocol::V3_1_1, "trickle", true, |c| {
        c.keep_alive = 2
    })
    .await;
    // PUBLISH QoS 0 to "t" with a 20-byte payload: 25 bytes, one a second.
    let mut packet = vec![0x30, 23, 0x00, 0x01, b't'];
    packet.extend_from_slice(&[b'x'; 20]);
    let started = tokio::time::Instant::now();
    let mut bytes = packet.into_iter();
    let closed_after = loop {
        match raw.recv_within(Duration::from_secs(1)).await {
            Err(()) => {
                let byte = bytes
                    .next()
                    .expect("the connection outlived the whole trickled packet");
                raw.stream.write_all(&[byte]).await.expect("write one byte");
            }
            Ok(None) => break started.elapsed(),
            Ok(Some(p)) => panic!("expected nothing, got {p:?}"),
        }
    };
    // The last whole packet was CONNECT, at 0 s.
    assert!(
        closed_after >= Duration::from_millis(2900) && closed_after <= Duration::from_millis(3100),
        "closed after {closed_after:?}; keep alive 2 s allows 3 s"
    );
}

// Traffic from the broker to the client does not count: only what the broker receives does.
#[tokio::test(start_paused = true)]
async fn deliveries_to_the_client_do_not_keep_it_alive() {
    let broker = Broker::start().await;
    let (mut sub, _) = connected(broker.addr, Protocol::V3_1_1, "listener", true, |c| {
        c.keep_alive = 2
    })
    .await;
    subscribe(&mut sub, "ka/t", QoS::AtMostOnce).await;
    let (mut publisher, _) = connected(broker.addr, Protocol::V3_1_1, "pub", true, |_| {}).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        publish(&mut publisher, "ka/t", "tick", QoS::AtMostOnce, 0).await;
        expect_publish(&mut sub).await;
    }
    // Last packet from `sub` was its SUBSCRIBE, at t=0: closed at 3 s.
    expect_closed_within(&mut sub, Duration::from_secs(2)).await;
}

// Keep alive 0 turns the mechanism off: an hour of silence and the connection is still served.
#[tokio::test(start_paused = true)]
async fn keep_alive_zero_never_closes_for_inactivity() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (mut raw, ack) =
            connected(broker.addr, protocol, "idle", true, |c| c.keep_alive = 0).await;
        assert_eq!(ack.properties.server_keep_alive, None);
        raw.expect_silence(Duration::from_secs(3600)).await;
        ping(&mut raw).await;
    }
}

// [MQTT-3.2.2-21] (5.0): the Server Keep Alive replaces the client's value, on both sides: a client
// that asked for 60 s but was given 2 s is closed after 3 s of silence.
#[tokio::test(start_paused = true)]
async fn server_keep_alive_is_enforced() {
    let broker = Broker::start_with(|c| c.limits.max_keepalive = 2).await;
    let (mut raw, ack) = connected(broker.addr, Protocol::V5, "told", true, |c| {
        c.keep_alive = 60
    })
    .await;
    assert_eq!(ack.properties.server_keep_alive, Some(2));
    raw.expect_silence(Duration::from_millis(2900)).await;
    expect_disconnect(&mut raw, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
}

// Keep alive runs on one wheel for every connection; a connection that ends leaves it at once,
// so connections that come and go (here 40, half closing with DISCONNECT, half dropping the
// socket) leave nothing behind for the wheel's next turn.
#[tokio::test]
async fn connections_that_end_leave_the_keep_alive_wheel() {
    let broker = Broker::start().await;
    let wheel = || broker.broker.keep_alive().len();
    let mut clients = Vec::new();
    for i in 0..40 {
        let (raw, _) = connected(broker.addr, Protocol::V3_1_1, &format!("c{i}"), true, |c| {
            c.keep_alive = 60
        })
        .await;
        clients.push(raw);
    }
    let (mut none, _) = connected(broker.addr, Protocol::V3_1_1, "no-keep-alive", true, |c| {
        c.keep_alive = 0
    })
    .await;
    assert_eq!(wheel(), 40, "one entry per connection with a keep alive");
    for (i, mut raw) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            disconnect(&mut raw, |_| {}).await;
        }
        drop(raw);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while wheel() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} entries left 10 s after their connections ended",
            wheel()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ping(&mut none).await;
}
