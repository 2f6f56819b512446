//! Publisher backpressure: a publisher whose messages find a subscriber's queue above its
//! high-water mark is not read until that queue drains, so a fast QoS 1 publisher goes at the
//! pace of a slow subscriber and every message it had acknowledged is delivered. The wait is
//! bounded: a subscriber that never reads holds publishers back once, for a few seconds, and
//! never a client that publishes into its own queue, nor two clients publishing to each other.

mod common;
mod flows;

use bytes::Bytes;
use common::{Broker, Raw};
use flows::*;
use pigeon_codec::{ByteStr, Packet, Protocol, PubResp, Publish, QoS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const V4: Protocol = Protocol::V3_1_1;

/// A broker whose subscribers hold at most `queue` waiting and `inflight` unacknowledged.
async fn small_queues(queue: usize, inflight: u16) -> Broker {
    Broker::start_with(|c| {
        c.limits.max_queued_messages = queue;
        c.limits.max_inflight = inflight;
    })
    .await
}

/// `n` QoS 1 PUBLISH packets to `topic`, packet ids 1..=n, payload the index, in one write.
async fn publish_burst(raw: &mut Raw, topic: &str, n: u16) {
    let mut buf = bytes::BytesMut::new();
    for i in 1..=n {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: ByteStr::from(topic),
            packet_id: i,
            properties: Default::default(),
            payload: Bytes::from(i.to_string()),
        };
        pigeon_codec::encode(&Packet::Publish(p), raw.protocol, &mut buf);
    }
    raw.stream.write_all(&buf).await.expect("write burst");
}

/// Reads until `n` PUBACKs arrived, acknowledging (when `ack_deliveries`) and counting the
/// deliveries met on the way. Returns the deliveries' payloads.
async fn await_pubacks(raw: &mut Raw, n: usize, ack_deliveries: bool) -> Vec<Bytes> {
    let mut acked = 0;
    let mut delivered = Vec::new();
    while acked < n {
        // Longer than the publisher's bounded wait.
        let packet = raw.recv_within(Duration::from_secs(10)).await;
        match packet
            .expect("a packet within 10 s")
            .expect("connection open")
        {
            Packet::PubAck(_) => acked += 1,
            Packet::Publish(p) => {
                if ack_deliveries {
                    raw.send(&Packet::PubAck(PubResp {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
                delivered.push(p.payload);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    delivered
}

#[tokio::test]
async fn a_fast_qos1_publisher_is_slowed_to_a_slow_subscriber_and_loses_nothing() {
    const N: u16 = 1000;
    const QUEUE: usize = 20;
    const INFLIGHT: u16 = 4;
    let broker = small_queues(QUEUE, INFLIGHT).await;
    let mut sub = connect(broker.addr, V4, "bp-sub").await;
    subscribe(&mut sub, "bp/#", QoS::AtLeastOnce).await;
    let received = Arc::new(AtomicUsize::new(0));

    let count = Arc::clone(&received);
    let subscriber = tokio::spawn(async move {
        let mut payloads = Vec::new();
        while payloads.len() < usize::from(N) {
            let Some(Packet::Publish(p)) = sub.recv().await else {
                panic!("subscriber: expected PUBLISH");
            };
            // About a millisecond a message: far slower than the publisher.
            tokio::time::sleep(Duration::from_millis(1)).await;
            sub.send(&Packet::PubAck(PubResp {
                packet_id: p.packet_id,
                ..Default::default()
            }))
            .await;
            payloads.push(p.payload);
            count.fetch_add(1, Ordering::SeqCst);
        }
        payloads
    });

    let mut publisher = connect(broker.addr, V4, "bp-pub").await;
    publish_burst(&mut publisher, "bp/t", N).await;
    let mut acked = 0;
    let mut received_at_ack = Vec::new();
    while acked < N {
        match publisher.recv().await.expect("publisher connection open") {
            Packet::PubAck(_) => {
                acked += 1;
                received_at_ack.push(received.load(Ordering::SeqCst));
            }
            other => panic!("publisher: unexpected {other:?}"),
        }
    }
    let payloads = tokio::time::timeout(Duration::from_secs(30), subscriber)
        .await
        .expect("subscriber done")
        .expect("subscriber task");

    let expected: Vec<Bytes> = (1..=N).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(payloads, expected, "every acknowledged message, in order");
    assert_eq!(
        broker.broker.stats.messages_dropped.load(Ordering::SeqCst),
        0
    );
    // Slowed, not dropped: no PUBACK ran further ahead of the subscriber than its queue, its
    // in-flight window and the messages routed before the publisher paused allow.
    let slack = QUEUE + usize::from(INFLIGHT) + 8;
    for (i, got) in received_at_ack.iter().enumerate() {
        assert!(
            i < got + slack,
            "PUBACK {} came when the subscriber had only {got}",
            i + 1
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_stuck_subscriber_holds_a_publisher_back_once_and_for_a_bounded_time() {
    let broker = small_queues(10, 2).await;
    // Subscribes, then never reads nor acknowledges.
    let mut stuck = connect(broker.addr, V4, "bp-stuck").await;
    subscribe(&mut stuck, "stuck/#", QoS::AtLeastOnce).await;

    // Keep alive 1 s (1.5 s allowed): the pause is longer, and must not count against it.
    let (mut publisher, _) =
        connect_with(broker.addr, V4, "bp-pub", true, |c| c.keep_alive = 1).await;
    let started = Instant::now();
    publish_burst(&mut publisher, "stuck/t", 100).await;
    await_pubacks(&mut publisher, 100, false).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "the publisher was held back ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(9),
        "but not for longer than the bound ({waited:?})"
    );
    assert!(broker.broker.stats.messages_dropped.load(Ordering::SeqCst) > 0);

    // Still stuck: the next burst does not wait again.
    let started = Instant::now();
    publish_burst(&mut publisher, "stuck/t", 100).await;
    await_pubacks(&mut publisher, 100, false).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(stuck);
    broker.stop().await;
}

#[tokio::test]
async fn a_client_publishing_into_its_own_full_queue_is_not_held_back() {
    let broker = small_queues(10, 2).await;
    let mut client = connect(broker.addr, V4, "bp-self").await;
    subscribe(&mut client, "self/#", QoS::AtLeastOnce).await;
    let started = Instant::now();
    publish_burst(&mut client, "self/x", 200).await;
    // Reads its deliveries but acknowledges none: its queue stays full.
    await_pubacks(&mut client, 200, false).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    broker.stop().await;
}

#[tokio::test]
async fn two_clients_publishing_to_each_other_do_not_wait_on_each_other() {
    const N: u16 = 2000;
    let broker = small_queues(20, 4).await;
    let mut a = connect(broker.addr, V4, "bp-a").await;
    subscribe(&mut a, "to/a", QoS::AtLeastOnce).await;
    let mut b = connect(broker.addr, V4, "bp-b").await;
    subscribe(&mut b, "to/b", QoS::AtLeastOnce).await;
    let started = Instant::now();
    // Each client's acknowledgements of its deliveries queue behind its own burst: a paused
    // connection would not read them. A client whose own queue is high is therefore not paused,
    // so one of the two floods the other's queue, and what overflows is dropped as before.
    publish_burst(&mut a, "to/b", N).await;
    publish_burst(&mut b, "to/a", N).await;
    let run = |mut raw: Raw| async move {
        let mut delivered = await_pubacks(&mut raw, usize::from(N), true).await.len();
        while let Ok(Some(Packet::Publish(p))) = raw.recv_within(Duration::from_millis(300)).await {
            raw.send(&Packet::PubAck(PubResp {
                packet_id: p.packet_id,
                ..Default::default()
            }))
            .await;
            delivered += 1;
        }
        delivered
    };
    let (got_a, got_b) = tokio::join!(tokio::spawn(run(a)), tokio::spawn(run(b)));
    let (got_a, got_b) = (got_a.expect("a"), got_b.expect("b"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no wait ran to its bound ({:?})",
        started.elapsed()
    );
    let dropped = broker.broker.stats.messages_dropped.load(Ordering::SeqCst);
    assert_eq!(got_a + got_b + dropped as usize, 2 * usize::from(N));
    broker.stop().await;
}
