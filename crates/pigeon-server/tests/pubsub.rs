//! Publish/subscribe routing through the real broker: filters and wildcards, `$` topics,
//! overlapping subscriptions, unsubscribe, re-subscribe, fan-out and ordering.

mod common;
mod flows;

use bytes::Bytes;
use common::Broker;
use flows::*;
use pigeon_codec::{Protocol, QoS, ReasonCode};
use pigeon_core::Message;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Subscribes one client per filter, publishes `published` (QoS 1, from a client that subscribes
/// to nothing), then checks each client got exactly the topics listed for its filter.
async fn check_table(
    addr: SocketAddr,
    protocol: Protocol,
    table: &[(&str, &[&str])],
    published: &[&str],
) {
    let mut subscribers = Vec::new();
    for (i, (filter, _)) in table.iter().enumerate() {
        let mut raw = connect(addr, protocol, &format!("table-{i}")).await;
        subscribe(&mut raw, filter, QoS::AtLeastOnce).await;
        subscribe_sentinel(&mut raw).await;
        subscribers.push(raw);
    }
    let mut publisher = connect(addr, protocol, "table-pub").await;
    for topic in published {
        publish_q1(&mut publisher, topic, topic.as_bytes()).await;
    }
    publish_sentinel(&mut publisher).await;
    for (mut raw, (filter, expected)) in subscribers.into_iter().zip(table.iter()) {
        let mut expected: Vec<String> = expected.iter().map(|t| t.to_string()).collect();
        expected.sort();
        assert_eq!(
            topics(&until_sentinel(&mut raw).await),
            expected,
            "filter {filter}"
        );
    }
}

#[tokio::test]
async fn wildcards_match_as_the_specification_examples_say() {
    let broker = Broker::start().await;
    let topics = [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport",
        "sport/",
        "/finance",
        "a/b",
    ];
    // Section 4.7.1: `#` matches the parent level too (`sport/#` matches `sport`), `+` exactly one
    // level, which may be empty (`sport/+` matches `sport/`, `+/+` and `/+` match `/finance`).
    let table: &[(&str, &[&str])] = &[
        ("sport/tennis/player1", &["sport/tennis/player1"]),
        ("sport/tennis/+", &["sport/tennis/player1"]),
        (
            "sport/tennis/player1/#",
            &["sport/tennis/player1", "sport/tennis/player1/ranking"],
        ),
        (
            "sport/#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport",
                "sport/",
            ],
        ),
        ("sport/+", &["sport/"]),
        (
            "+/tennis/#",
            &["sport/tennis/player1", "sport/tennis/player1/ranking"],
        ),
        ("+", &["sport"]),
        ("+/+", &["sport/", "/finance", "a/b"]),
        ("/+", &["/finance"]),
        ("#", &topics),
        ("a/b/#", &["a/b"]),
        ("nothing/+", &[]),
    ];
    check_table(broker.addr, Protocol::V5, table, &topics).await;
    check_table(broker.addr, Protocol::V3_1_1, table, &topics).await;
    broker.stop().await;
}

#[tokio::test]
async fn empty_topic_levels_are_levels() {
    let broker = Broker::start().await;
    let topics = ["a//b", "/a", "a/b", "a"];
    let table: &[(&str, &[&str])] = &[
        ("a//b", &["a//b"]),
        ("a/+/b", &["a//b"]),
        ("a/#", &["a//b", "a/b", "a"]),
        ("/a", &["/a"]),
        ("+/a", &["/a"]),
        ("/#", &["/a"]),
        ("a/b", &["a/b"]),
        ("a", &["a"]),
    ];
    check_table(broker.addr, Protocol::V5, table, &topics).await;
    broker.stop().await;
}

/// A `$` is special only at the start of a topic: `a/$b` is an ordinary topic.
#[tokio::test]
async fn a_dollar_inside_a_topic_is_an_ordinary_character() {
    let broker = Broker::start().await;
    let topics = ["a/$b", "$c/$d"];
    let table: &[(&str, &[&str])] = &[
        ("a/+", &["a/$b"]),
        ("#", &["a/$b"]),
        ("+/$b", &["a/$b"]),
        ("$c/+", &["$c/$d"]),
        ("$c/$d", &["$c/$d"]),
        ("+/+", &["a/$b"]),
    ];
    check_table(broker.addr, Protocol::V5, table, &topics).await;
    broker.stop().await;
}

/// [MQTT-4.7.2-1]: filters starting with a wildcard do not match topic names starting with `$`.
#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = Broker::start().await;
    let addr = broker.addr;
    let mut subs = Vec::new();
    for (i, filter) in [
        "#",
        "+/x",
        "+/+",
        "$foo/#",
        "$foo/+",
        "$SYS/#",
        "+/broker/#",
    ]
    .iter()
    .enumerate()
    {
        let mut raw = connect(addr, Protocol::V5, &format!("dollar-{i}")).await;
        subscribe(&mut raw, filter, QoS::AtLeastOnce).await;
        subscribe_sentinel(&mut raw).await;
        subs.push(raw);
    }
    let mut publisher = connect(addr, Protocol::V5, "dollar-pub").await;
    publish_q1(&mut publisher, "$foo/x", b"client").await;
    // `$SYS` topics come from the broker itself; clients may not publish there.
    broker.broker.publish(Arc::new(Message::new(
        "$SYS/broker/uptime".into(),
        Bytes::from_static(b"sys"),
        QoS::AtLeastOnce,
        false,
        Default::default(),
        None,
    )));
    publish_sentinel(&mut publisher).await;
    let expected: [&[&str]; 7] = [
        &[],
        &[],
        &[],
        &["$foo/x"],
        &["$foo/x"],
        &["$SYS/broker/uptime"],
        &[],
    ];
    for (raw, want) in subs.iter_mut().zip(expected) {
        assert_eq!(topics(&until_sentinel(raw).await), want);
    }
    broker.stop().await;
}

/// The broker reports on itself under `$SYS/broker/...`, retained, with mosquitto's topic names:
/// a subscriber to `$SYS/#` gets the figures at once, and again as they change; `#` gets none
/// of them ([MQTT-4.7.2-1]).
#[tokio::test]
async fn sys_topics_report_the_broker() {
    let broker = Broker::start_with(|c| c.mqtt.sys_interval = 1).await;
    let mut all = connect(broker.addr, Protocol::V5, "sys-all").await;
    subscribe(&mut all, "#", QoS::AtMostOnce).await;
    let mut sys = connect(broker.addr, Protocol::V5, "sys-watch").await;
    subscribe(&mut sys, "$SYS/#", QoS::AtMostOnce).await;

    // Retained: what was published before the subscription comes at once; then each figure as
    // it changes, until the two clients here are counted.
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/total",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
    ];
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(wanted.iter().all(|topic| seen.contains_key(*topic))
        && seen
            .get("$SYS/broker/clients/connected")
            .map(String::as_str)
            == Some("2"))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sys.recv_within(left).await {
            Ok(Some(pigeon_codec::Packet::Publish(p))) => {
                seen.insert(
                    p.topic.to_string(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                );
            }
            other => panic!(
                "expected every $SYS report, with 2 clients connected; got {other:?} after {seen:?}"
            ),
        }
    }
    assert!(seen["$SYS/broker/version"].starts_with("pigeon version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    // The broker's own reports are not messages received; no client published any.
    assert_eq!(seen["$SYS/broker/publish/messages/received"], "0");
    all.expect_silence(Duration::from_millis(1500)).await;
    let received = broker
        .broker
        .stats
        .messages_received
        .load(Ordering::Relaxed);
    assert_eq!(received, 0, "what /metrics reports as received");
    broker.stop().await;
}

/// [MQTT-3.3.5-1] (3.1.1), [MQTT-3.3.4-2] (5.0): overlapping subscriptions of one client get the
/// message at the highest QoS among them. Both levels allow extra copies; like mosquitto we send
/// one, and so does this test expect.
#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = connect(broker.addr, protocol, "overlap").await;
        let codes = subscribe_all(
            &mut sub,
            &[
                ("a/#", qos(QoS::AtLeastOnce)),
                ("a/+", qos(QoS::ExactlyOnce)),
                ("b/#", qos(QoS::AtMostOnce)),
                ("b/+", qos(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
        assert_eq!(
            codes,
            vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_1
            ]
        );
        subscribe_sentinel(&mut sub).await;
        let mut publisher = connect(broker.addr, protocol, "overlap-pub").await;
        for (topic, q, expected) in [
            ("a/x", QoS::ExactlyOnce, QoS::ExactlyOnce),
            ("a/x", QoS::AtLeastOnce, QoS::AtLeastOnce),
            ("b/x", QoS::ExactlyOnce, QoS::AtLeastOnce),
            ("b/x", QoS::AtMostOnce, QoS::AtMostOnce),
        ] {
            publish(&mut publisher, message(topic, b"m", q)).await;
            let got = received(&mut publisher, &mut sub).await;
            assert_eq!(got.len(), 1, "{protocol:?}: one copy");
            assert_eq!(
                got[0].qos, expected,
                "{protocol:?}: {topic} published at {q:?}"
            );
        }
        // Only `a/#` matches `a/x/y`: delivered at its QoS 1.
        publish(&mut publisher, message("a/x/y", b"m", QoS::ExactlyOnce)).await;
        let got = received(&mut publisher, &mut sub).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
    }
    broker.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start().await;
    // 5.0: one reason code per filter; 0x11 for a filter the session did not have.
    let mut sub = connect(broker.addr, Protocol::V5, "unsub5").await;
    subscribe(&mut sub, "u/1", QoS::AtLeastOnce).await;
    subscribe(&mut sub, "u/2", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "unsub-pub").await;
    publish_q1(&mut publisher, "u/1", b"before").await;
    assert_eq!(
        payloads(&received(&mut publisher, &mut sub).await),
        ["before"]
    );
    let codes = unsubscribe(&mut sub, &["u/1", "u/never"]).await;
    assert_eq!(
        codes,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    publish_q1(&mut publisher, "u/1", b"after").await;
    publish_q1(&mut publisher, "u/2", b"still").await;
    assert_eq!(topics(&received(&mut publisher, &mut sub).await), ["u/2"]);
    // Unsubscribing twice: the second finds nothing.
    assert_eq!(
        unsubscribe(&mut sub, &["u/1"]).await,
        vec![ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );

    // 3.1.1: UNSUBACK carries no codes; delivery stops all the same.
    let mut sub = connect(broker.addr, Protocol::V3_1_1, "unsub3").await;
    subscribe(&mut sub, "u/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    assert_eq!(unsubscribe(&mut sub, &["u/#"]).await, vec![]);
    publish_q1(&mut publisher, "u/3", b"after").await;
    assert_eq!(received(&mut publisher, &mut sub).await, vec![]);
    broker.stop().await;
}

/// [MQTT-3.8.4-3]: a SUBSCRIBE with a filter the session has replaces that subscription.
#[tokio::test]
async fn resubscribe_replaces_the_options() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = connect(broker.addr, protocol, "resub").await;
        subscribe_sentinel(&mut sub).await;
        let mut publisher = connect(broker.addr, protocol, "resub-pub").await;
        for q in [QoS::ExactlyOnce, QoS::AtMostOnce, QoS::AtLeastOnce] {
            subscribe(&mut sub, "r/t", q).await;
            publish(&mut publisher, message("r/t", b"m", QoS::ExactlyOnce)).await;
            let got = received(&mut publisher, &mut sub).await;
            assert_eq!(got.len(), 1, "{protocol:?}: one copy");
            assert_eq!(
                got[0].qos, q,
                "{protocol:?}: one delivery at the latest subscription's QoS"
            );
        }
        assert_eq!(
            broker.broker.subscription_count(),
            2,
            "r/t and the sentinel"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn every_subscriber_of_a_topic_gets_one_copy() {
    let broker = Broker::start().await;
    let mut subs = Vec::new();
    for i in 0..20 {
        let protocol = if i % 2 == 0 {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let mut raw = connect(broker.addr, protocol, &format!("fan-{i}")).await;
        subscribe(&mut raw, "fan/out", QoS::ExactlyOnce).await;
        subscribe_sentinel(&mut raw).await;
        subs.push(raw);
    }
    let mut publisher = connect(broker.addr, Protocol::V5, "fan-pub").await;
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publish(
            &mut publisher,
            message("fan/out", format!("m{i}").as_bytes(), q),
        )
        .await;
    }
    publish_sentinel(&mut publisher).await;
    let mut checks = Vec::new();
    for mut raw in subs {
        checks.push(tokio::spawn(async move {
            let got = until_sentinel(&mut raw).await;
            assert_eq!(payloads(&got), ["m0", "m1", "m2"]);
            let qos: Vec<QoS> = got.iter().map(|p| p.qos).collect();
            assert_eq!(qos, [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
        }));
    }
    for c in checks {
        c.await.expect("subscriber check");
    }
    broker.stop().await;
}

/// 5.0 [MQTT-4.6.0-5], [MQTT-4.6.0-6] (3.1.1 [MQTT-4.6.0-6]): messages from one client on one
/// topic at one QoS reach each subscriber in the order they were published.
#[tokio::test]
async fn a_thousand_qos1_messages_arrive_in_order() {
    const N: usize = 1000;
    let broker = Broker::start().await;
    let mut opts = rumqttc::MqttOptions::new("order-sub", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_events) = rumqttc::AsyncClient::new(opts, 10);
    sub.subscribe("order/t", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
            sub_events.poll().await.expect("subscriber event loop")
        {
            break;
        }
    }

    let mut opts = rumqttc::MqttOptions::new("order-pub", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (publisher, mut pub_events) = rumqttc::AsyncClient::new(opts, 100);
    let pub_loop = tokio::spawn(async move {
        let mut acked = 0;
        while acked < N {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                pub_events.poll().await.expect("publisher event loop")
            {
                acked += 1;
            }
        }
    });
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("order/t", rumqttc::QoS::AtLeastOnce, false, i.to_string())
                .await
                .expect("publish");
        }
    });

    let mut got = Vec::with_capacity(N);
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < N {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                sub_events.poll().await.expect("subscriber event loop")
            {
                assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
                got.push(
                    String::from_utf8(p.payload.to_vec())
                        .expect("utf-8 payload")
                        .parse::<usize>()
                        .expect("number"),
                );
            }
        }
    })
    .await
    .expect("1000 messages within 20 s");
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    sender.await.expect("sender");
    pub_loop.await.expect("publisher acks");
    assert_eq!(
        broker
            .broker
            .stats
            .messages_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    broker.stop().await;
}

/// `$SYS` belongs to the broker: a client's PUBLISH there is acknowledged (the client has no
/// way to learn otherwise in 3.1.1) but neither delivered nor retained, as mosquitto does.
#[tokio::test]
async fn clients_cannot_publish_to_sys() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, Protocol::V5, "sys-sub").await;
    subscribe(&mut sub, "$SYS/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, Protocol::V3_1_1, "sys-pub3").await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        publisher = connect(broker.addr, protocol, "sys-pub").await;
        let mut p = message("$SYS/broker/clients", b"forged", QoS::AtLeastOnce);
        p.retain = true;
        let ack = publish(&mut publisher, p).await.expect("PUBACK");
        assert!(!ack.reason.is_error());
        publish(&mut publisher, message("$SYS", b"forged", QoS::AtMostOnce)).await;
    }
    // The subscription itself works: the broker's own `$SYS` messages arrive.
    broker.broker.publish(Arc::new(Message::new(
        "$SYS/broker/version".into(),
        Bytes::from_static(b"pigeon"),
        QoS::AtMostOnce,
        false,
        Default::default(),
        None,
    )));
    assert_eq!(
        payloads(&received(&mut publisher, &mut sub).await),
        ["pigeon"]
    );
    assert_eq!(broker.broker.retained_count(), 0);
    let mut late = connect(broker.addr, Protocol::V5, "sys-late").await;
    subscribe(&mut late, "$SYS/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut late).await;
    assert_eq!(received(&mut publisher, &mut late).await, vec![]);
    broker.stop().await;
}
