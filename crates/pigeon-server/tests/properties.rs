//! MQTT 5.0 properties through the real broker: topic aliases both ways, message expiry, No
//! Local, subscription identifiers, the properties forwarded unchanged, Maximum Packet Size both
//! ways, Request Problem Information, and the Payload Format Indicator.

mod common;
mod flows;

use bytes::Bytes;
use common::{Broker, Raw};
use flows::*;
use pigeon_codec::{
    ByteStr, Packet, Protocol, PubResp, Publish, PublishProperties, QoS, ReasonCode,
    SubscriptionOptions,
};
use std::time::Duration;

const V5: Protocol = Protocol::V5;

/// A round trip through the broker's packet loop: every PUBLISH the broker routed for `raw` before
/// this is acknowledged and returned, since the broker handles one connection's packets in order.
async fn sync(raw: &mut Raw) -> Vec<Publish> {
    raw.send(&Packet::PingReq).await;
    let mut got = Vec::new();
    loop {
        match recv_skipping_pubrel(raw).await {
            Some(Packet::PingResp) => return got,
            Some(Packet::Publish(p)) => {
                ack(raw, &p).await;
                got.push(p);
            }
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

fn with_alias(topic: &str, alias: u16, payload: &[u8]) -> Publish {
    let mut p = message(topic, payload, QoS::AtLeastOnce);
    p.properties.topic_alias = Some(alias);
    p
}

/// [MQTT-3.3.2-12]: the broker accepts every alias from 1 to the Topic Alias Maximum in its
/// CONNACK; an empty topic with an alias means the topic last set for it, and a topic with an
/// alias (re)sets the mapping (section 3.3.2.3.4). Subscribers see the full topic.
#[tokio::test]
async fn topic_aliases_from_the_client_are_resolved() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, V5, "ta-sub").await;
    subscribe(&mut sub, "alias/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    let (mut publisher, ack) = connect_with(broker.addr, V5, "ta-pub", true, |_| {}).await;
    let max = ack
        .properties
        .topic_alias_maximum
        .expect("Topic Alias Maximum in CONNACK");
    assert!(max >= 2, "{max}");

    for p in [
        with_alias("alias/t", 1, b"1"),
        with_alias("", 1, b"2"),
        with_alias("alias/max", max, b"3"),
        with_alias("alias/u", 1, b"4"),
        with_alias("", 1, b"5"),
        with_alias("", max, b"6"),
    ] {
        let ack = publish(&mut publisher, p).await.expect("PUBACK");
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
    }
    let got = received(&mut publisher, &mut sub).await;
    let got: Vec<(&str, &[u8])> = got
        .iter()
        .map(|p| (p.topic.as_str(), &p.payload[..]))
        .collect();
    assert_eq!(
        got,
        [
            ("alias/t", &b"1"[..]),
            ("alias/t", b"2"),
            ("alias/max", b"3"),
            ("alias/u", b"4"),
            ("alias/u", b"5"),
            ("alias/max", b"6"),
        ]
    );
    // A retained message published through an alias is stored under the full topic.
    let mut p = with_alias("", 1, b"kept");
    p.retain = true;
    publish(&mut publisher, p).await;
    received(&mut publisher, &mut sub).await;
    let mut late = connect(broker.addr, V5, "ta-late").await;
    subscribe_sentinel(&mut late).await;
    subscribe(&mut late, "alias/+", QoS::AtLeastOnce).await;
    let got = received(&mut publisher, &mut late).await;
    assert_eq!(topics(&got), ["alias/u"]);
    assert_eq!(&got[0].payload[..], b"kept");
    broker.stop().await;
}

/// Section 3.3.2.3.4: Topic Alias 0 ([MQTT-3.3.2-8]) or above the broker's Topic Alias Maximum
/// ([MQTT-3.3.2-9]) is refused with DISCONNECT 0x94 Topic Alias invalid, as mosquitto does.
#[tokio::test]
async fn topic_alias_zero_or_above_the_maximum_is_invalid() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, V5, "tai-sub").await;
    subscribe(&mut sub, "tai/#", QoS::AtLeastOnce).await;
    let (_, ack) = connect_with(broker.addr, V5, "tai-probe", true, |_| {}).await;
    let max = ack
        .properties
        .topic_alias_maximum
        .expect("Topic Alias Maximum");
    for alias in [0, max + 1, u16::MAX] {
        let mut publisher = connect(broker.addr, V5, "tai-pub").await;
        publisher
            .send(&Packet::Publish(with_alias("tai/x", alias, b"m")))
            .await;
        expect_closed(&mut publisher, ReasonCode::TOPIC_ALIAS_INVALID).await;
    }
    expect_no_publish(&mut sub).await;
    broker.stop().await;
}

/// With `topic_alias_maximum = 0` the CONNACK announces none and any alias is invalid.
#[tokio::test]
async fn no_topic_aliases_when_the_broker_allows_none() {
    let broker = Broker::start_with(|c| c.mqtt.topic_alias_maximum = 0).await;
    let (mut publisher, ack) = connect_with(broker.addr, V5, "tan-pub", true, |_| {}).await;
    assert_eq!(ack.properties.topic_alias_maximum, None);
    publisher
        .send(&Packet::Publish(with_alias("tan/x", 1, b"m")))
        .await;
    expect_closed(&mut publisher, ReasonCode::TOPIC_ALIAS_INVALID).await;
    broker.stop().await;
}

/// An empty topic with an alias that was never set is a Protocol Error; mappings do not carry
/// over to a new connection, even of the same session ([MQTT-3.3.2-7]).
#[tokio::test]
async fn an_unknown_topic_alias_is_a_protocol_error() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, V5, "tau-pub").await;
    publisher
        .send(&Packet::Publish(with_alias("", 3, b"m")))
        .await;
    expect_closed(&mut publisher, ReasonCode::PROTOCOL_ERROR).await;

    let persistent =
        |c: &mut pigeon_codec::Connect| c.properties.session_expiry_interval = Some(60);
    let (mut publisher, _) =
        connect_with(broker.addr, V5, "tau-persistent", true, persistent).await;
    publish(&mut publisher, with_alias("tau/t", 1, b"set")).await;
    publisher
        .send(&Packet::Disconnect(Default::default()))
        .await;
    assert_eq!(publisher.recv().await, None);
    let (mut publisher, ack) =
        connect_with(broker.addr, V5, "tau-persistent", false, persistent).await;
    assert!(ack.session_present);
    publisher
        .send(&Packet::Publish(with_alias("", 1, b"stale")))
        .await;
    expect_closed(&mut publisher, ReasonCode::PROTOCOL_ERROR).await;
    broker.stop().await;
}

/// A client that announces Topic Alias Maximum 5 gets aliases in 1..=5 ([MQTT-3.3.2-11]): the
/// first message on a topic carries topic and alias, later ones an empty topic and the alias. A
/// client that announces none never gets one.
#[tokio::test]
async fn topic_aliases_to_the_client() {
    let broker = Broker::start().await;
    let (mut aliased, _) = connect_with(broker.addr, V5, "tao-5", true, |c| {
        c.properties.topic_alias_maximum = Some(5);
    })
    .await;
    subscribe(&mut aliased, "tao/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut aliased).await;
    let mut plain = connect(broker.addr, V5, "tao-0").await;
    subscribe(&mut plain, "tao/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut plain).await;

    let mut publisher = connect(broker.addr, V5, "tao-pub").await;
    let sent: Vec<String> = ["a", "a", "b", "a", "c", "d", "e", "f", "f", "b"]
        .iter()
        .map(|t| format!("tao/{t}"))
        .collect();
    for topic in &sent {
        publish_q1(&mut publisher, topic, b"m").await;
    }
    publish_sentinel(&mut publisher).await;

    // Resolve what the aliased client got the way a client must.
    let mut table: std::collections::HashMap<u16, String> = Default::default();
    let mut resolved = Vec::new();
    let mut first_use = Vec::new();
    for p in until_sentinel(&mut aliased).await {
        let topic = match p.properties.topic_alias {
            Some(a) => {
                assert!((1..=5).contains(&a), "alias {a} above the client's maximum");
                if p.topic.is_empty() {
                    table.get(&a).expect("alias set before use").clone()
                } else {
                    first_use.push(p.topic.to_string());
                    table.insert(a, p.topic.to_string());
                    p.topic.to_string()
                }
            }
            None => {
                assert!(!p.topic.is_empty());
                p.topic.to_string()
            }
        };
        resolved.push(topic);
    }
    assert_eq!(resolved, sent);
    // Each topic's alias is set once and used with an empty topic afterwards.
    assert_eq!(first_use, ["tao/a", "tao/b", "tao/c", "tao/d", "tao/e"]);
    assert_eq!(table.len(), 5);

    let got = until_sentinel(&mut plain).await;
    assert!(got.iter().all(|p| p.properties.topic_alias.is_none()));
    assert_eq!(
        got.iter().map(|p| p.topic.to_string()).collect::<Vec<_>>(),
        sent
    );
    broker.stop().await;
}

/// [MQTT-3.3.2-6]: a message that waited in the broker goes out with its Message Expiry Interval
/// less the time it waited; [MQTT-3.3.2-5]: one that expired while waiting is not sent.
#[tokio::test(start_paused = true)]
async fn message_expiry_counts_down_while_a_message_waits() {
    let broker = Broker::start().await;
    let persistent =
        |c: &mut pigeon_codec::Connect| c.properties.session_expiry_interval = Some(600);
    let (mut sub, _) = connect_with(broker.addr, V5, "exp-sub", true, persistent).await;
    subscribe(&mut sub, "exp/#", QoS::AtLeastOnce).await;
    let mut online = connect(broker.addr, V5, "exp-online").await;
    subscribe(&mut online, "exp/#", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(sub.recv().await, None);

    let mut publisher = connect(broker.addr, V5, "exp-pub").await;
    for (topic, expiry) in [
        ("exp/long", Some(60)),
        ("exp/short", Some(10)),
        ("exp/none", None),
    ] {
        let mut p = message(topic, b"m", QoS::AtLeastOnce);
        p.properties.message_expiry_interval = expiry;
        publish(&mut publisher, p).await;
    }
    // Delivered at once: the interval as published.
    let got = exactly(&mut online, 3).await;
    let expiries: Vec<Option<u32>> = got
        .iter()
        .map(|p| p.properties.message_expiry_interval)
        .collect();
    assert_eq!(expiries, [Some(60), Some(10), None]);

    tokio::time::sleep(Duration::from_secs(20)).await;
    let (mut sub, ack) = connect_with(broker.addr, V5, "exp-sub", false, persistent).await;
    assert!(ack.session_present);
    let got = sync(&mut sub).await;
    assert_eq!(
        topics(&got),
        ["exp/long", "exp/none"],
        "exp/short expired while queued"
    );
    let long = got
        .iter()
        .find(|p| p.topic.as_str() == "exp/long")
        .expect("exp/long");
    let left = long
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!(
        (39..=40).contains(&left),
        "60 s less the 20 s waited, got {left}"
    );
    broker.stop().await;
}

/// [MQTT-3.8.3-3]: with No Local, a client's own messages are not sent back to it; other
/// clients' messages are, and a subscription without No Local gets its own.
#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let broker = Broker::start().await;
    let mut nl = connect(broker.addr, V5, "nl").await;
    let no_local = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..Default::default()
    };
    subscribe_opts(&mut nl, "nl/#", no_local).await;
    subscribe_sentinel(&mut nl).await;
    let mut echo = connect(broker.addr, V5, "nl-echo").await;
    subscribe(&mut echo, "nl/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut echo).await;

    // Each publishes at QoS 0; the PINGRESP after it shows the broker has routed it.
    let mut got_nl = Vec::new();
    let mut got_echo = Vec::new();
    for (raw, got, payload) in [
        (&mut nl, &mut got_nl, b"from-nl"),
        (&mut echo, &mut got_echo, b"from-ec"),
    ] {
        raw.send(&Packet::Publish(message(
            "nl/own",
            payload,
            QoS::AtMostOnce,
        )))
        .await;
        got.extend(sync(raw).await);
    }
    let mut other = connect(broker.addr, V5, "nl-other").await;
    publish_q1(&mut other, "nl/other", b"other").await;
    publish_sentinel(&mut other).await;
    got_nl.extend(until_sentinel(&mut nl).await);
    got_echo.extend(until_sentinel(&mut echo).await);
    let mut got_nl = payloads(&got_nl);
    got_nl.sort();
    assert_eq!(got_nl, ["from-ec", "other"], "No Local: all but its own");
    let mut got_echo = payloads(&got_echo);
    got_echo.sort();
    assert_eq!(
        got_echo,
        ["from-ec", "from-nl", "other"],
        "without No Local: its own too"
    );
    broker.stop().await;
}

/// [MQTT-3.3.4-3], [MQTT-3.3.4-4]: a delivery carries the Subscription Identifier of the
/// subscription it matched; one copy for overlapping subscriptions carries all of theirs.
#[tokio::test]
async fn subscription_identifiers_travel_with_deliveries() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, V5, "sid").await;
    assert_eq!(
        subscribe_all(&mut sub, &[("sid/a", qos(QoS::AtLeastOnce))], Some(7)).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    subscribe_all(&mut sub, &[("sid/b/+", qos(QoS::AtLeastOnce))], Some(1)).await;
    subscribe_all(&mut sub, &[("sid/b/#", qos(QoS::AtLeastOnce))], Some(2)).await;
    subscribe_all(&mut sub, &[("sid/b/x", qos(QoS::AtLeastOnce))], None).await;
    subscribe_all(&mut sub, &[("sid/c", qos(QoS::AtLeastOnce))], None).await;
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, V5, "sid-pub").await;
    let mut retained = message("sid/r", b"r", QoS::AtLeastOnce);
    retained.retain = true;
    publish(&mut publisher, retained).await;

    for topic in ["sid/a", "sid/b/x", "sid/b/y/z", "sid/c"] {
        publish_q1(&mut publisher, topic, topic.as_bytes()).await;
    }
    let got = received(&mut publisher, &mut sub).await;
    let ids: Vec<(String, Vec<u32>)> = got
        .iter()
        .map(|p| {
            let mut ids = p.properties.subscription_identifiers.clone();
            ids.sort();
            (p.topic.to_string(), ids)
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("sid/a".to_string(), vec![7]),
            ("sid/b/x".to_string(), vec![1, 2]),
            ("sid/b/y/z".to_string(), vec![2]),
            ("sid/c".to_string(), vec![]),
        ]
    );
    // A retained message sent because of a subscribe carries that subscription's identifier.
    subscribe_all(&mut sub, &[("sid/r", qos(QoS::AtLeastOnce))], Some(9)).await;
    let got = received(&mut publisher, &mut sub).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.subscription_identifiers, [9]);
    // Re-subscribing replaces the identifier, or removes it.
    subscribe_all(&mut sub, &[("sid/a", qos(QoS::AtLeastOnce))], Some(8)).await;
    publish_q1(&mut publisher, "sid/a", b"again").await;
    let mut got = received(&mut publisher, &mut sub).await;
    subscribe_all(&mut sub, &[("sid/a", qos(QoS::AtLeastOnce))], None).await;
    publish_q1(&mut publisher, "sid/a", b"without").await;
    got.extend(received(&mut publisher, &mut sub).await);
    let ids: Vec<Vec<u32>> = got
        .iter()
        .map(|p| p.properties.subscription_identifiers.clone())
        .collect();
    assert_eq!(ids, [vec![8], vec![]]);
    broker.stop().await;
}

// [MQTT-3.3.4-6]: a PUBLISH from a client must not carry a Subscription Identifier. The broker
// answers DISCONNECT 0x82 and routes nothing.
#[tokio::test]
async fn a_subscription_identifier_from_a_client_is_a_protocol_error() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, V5, "sid-watch").await;
    subscribe(&mut sub, "sid/in", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, V5, "sid-sender").await;
    let mut p = message("sid/in", b"with id", QoS::AtLeastOnce);
    p.properties.subscription_identifiers = vec![3];
    publisher.send(&Packet::Publish(p)).await;
    expect_closed(&mut publisher, ReasonCode::PROTOCOL_ERROR).await;
    expect_no_publish(&mut sub).await;
    broker.stop().await;
}

fn rich_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some(ByteStr::from("text/plain; charset=utf-8")),
        response_topic: Some(ByteStr::from("reply/to/me")),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        user_properties: vec![
            (ByteStr::from("b"), ByteStr::from("1")),
            (ByteStr::from("a"), ByteStr::from("2")),
            (ByteStr::from("b"), ByteStr::from("3")),
            (ByteStr::from("b"), ByteStr::from("1")),
        ],
        ..Default::default()
    }
}

/// [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-18],
/// [MQTT-3.3.2-20]: Payload Format Indicator, Response Topic, Correlation Data, User Properties
/// (in order, repeats kept) and Content Type reach subscribers unchanged, live and retained.
#[tokio::test]
async fn publish_properties_are_forwarded_unchanged() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, V5, "props-sub").await;
    subscribe(&mut sub, "props/#", QoS::ExactlyOnce).await;
    subscribe_sentinel(&mut sub).await;
    let mut v4 = connect(broker.addr, Protocol::V3_1_1, "props-v4").await;
    subscribe(&mut v4, "props/#", QoS::ExactlyOnce).await;
    subscribe_sentinel(&mut v4).await;
    let mut publisher = connect(broker.addr, V5, "props-pub").await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut p = message("props/t", "héllo".as_bytes(), q);
        p.properties = rich_properties();
        p.retain = q == QoS::ExactlyOnce;
        publish(&mut publisher, p).await;
    }
    publish_sentinel(&mut publisher).await;
    let got = until_sentinel(&mut sub).await;
    assert_eq!(got.len(), 3);
    for p in &got {
        assert_eq!(p.properties, rich_properties());
        assert_eq!(&p.payload[..], "héllo".as_bytes());
    }
    // A 3.1.1 subscriber gets the same message without properties.
    let got = until_sentinel(&mut v4).await;
    assert_eq!(payloads(&got), ["héllo", "héllo", "héllo"]);

    // The retained copy keeps them too.
    let mut late = connect(broker.addr, V5, "props-late").await;
    subscribe_sentinel(&mut late).await;
    subscribe(&mut late, "props/t", QoS::AtLeastOnce).await;
    let got = received(&mut publisher, &mut late).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(got[0].properties, rich_properties());
    broker.stop().await;
}

/// The same with rumqttc 5.0 on both ends.
#[tokio::test]
async fn rumqttc_v5_user_properties_round_trip() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties as Props};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = Broker::start().await;
    let mut opts = rumqttc::v5::MqttOptions::new("up-v5", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 10);
    client
        .subscribe("up/t", Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    let props = Props {
        user_properties: vec![
            ("k".into(), "v1".into()),
            ("k".into(), "v2".into()),
            ("a".into(), "".into()),
        ],
        content_type: Some("application/x-test".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        response_topic: Some("up/reply".into()),
        ..Default::default()
    };
    let mut published = false;
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await.expect("event loop") {
                rumqttc::v5::Event::Incoming(P5::SubAck(_)) if !published => {
                    published = true;
                    client
                        .publish_with_properties("up/t", Q5::AtLeastOnce, false, "x", props.clone())
                        .await
                        .expect("publish");
                }
                rumqttc::v5::Event::Incoming(P5::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message within 5 s");
    let got = got.properties.expect("properties");
    assert_eq!(got.user_properties, props.user_properties);
    assert_eq!(got.content_type, props.content_type);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(got.response_topic, props.response_topic);
    broker.stop().await;
}

/// [MQTT-3.1.2-24], [MQTT-3.1.2-25]: a message larger than the client's Maximum Packet Size is
/// not sent to it and counts as delivered (its slot in the Receive Maximum is not held); other
/// subscribers get it.
#[tokio::test]
async fn the_clients_maximum_packet_size_is_respected() {
    let broker = Broker::start().await;
    let (mut small, _) = connect_with(broker.addr, V5, "mps-small", true, |c| {
        c.properties.maximum_packet_size = Some(100);
        c.properties.receive_maximum = Some(1);
    })
    .await;
    subscribe(&mut small, "mps/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut small).await;
    let mut big = connect(broker.addr, V5, "mps-big").await;
    subscribe(&mut big, "mps/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut big).await;
    let mut publisher = connect(broker.addr, V5, "mps-pub").await;
    publish_q1(&mut publisher, "mps/large", &[b'x'; 200]).await;
    publish_q1(&mut publisher, "mps/fits", &[b'y'; 50]).await;
    publish_sentinel(&mut publisher).await;
    assert_eq!(topics(&until_sentinel(&mut small).await), ["mps/fits"]);
    assert_eq!(
        topics(&until_sentinel(&mut big).await),
        ["mps/fits", "mps/large"]
    );
    broker.stop().await;
}

/// The broker's own maximum: its CONNACK announces it, and a larger packet from the client ends
/// the connection with DISCONNECT 0x95 Packet too large (section 3.2.2.3.6).
#[tokio::test]
async fn the_brokers_maximum_packet_size_is_announced_and_enforced() {
    let broker = Broker::start_with(|c| c.limits.max_packet_size = 1024).await;
    let mut sub = connect(broker.addr, V5, "bmps-sub").await;
    subscribe(&mut sub, "bmps", QoS::AtLeastOnce).await;
    let (mut publisher, ack) = connect_with(broker.addr, V5, "bmps-pub", true, |_| {}).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    publish_q1(&mut publisher, "bmps", &[0; 900]).await;
    assert_eq!(exactly(&mut sub, 1).await[0].payload.len(), 900);
    publisher
        .send(&Packet::Publish(message(
            "bmps",
            &[0; 2000],
            QoS::AtLeastOnce,
        )))
        .await;
    expect_closed(&mut publisher, ReasonCode::PACKET_TOO_LARGE).await;
    expect_no_publish(&mut sub).await;
    broker.stop().await;
}

/// [MQTT-3.1.2-29]: with Request Problem Information 0 the broker sends no Reason String or User
/// Property except on PUBLISH, CONNACK and DISCONNECT. It sends none on acknowledgements at all.
#[tokio::test]
async fn acknowledgements_carry_no_reason_string() {
    let broker = Broker::start().await;
    for rpi in [Some(0), None] {
        let (mut raw, _) = connect_with(broker.addr, V5, "rpi", true, |c| {
            c.properties.request_problem_information = rpi;
        })
        .await;
        let ack = publish(&mut raw, message("rpi/none", b"m", QoS::AtLeastOnce))
            .await
            .expect("PUBACK");
        assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
        assert!(ack.properties.is_empty(), "{:?}", ack.properties);
        let rec = publish(&mut raw, message("rpi/none", b"m", QoS::ExactlyOnce))
            .await
            .expect("PUBREC");
        assert!(rec.properties.is_empty(), "{:?}", rec.properties);
        let mut bad = message("rpi/none", &[0xFF], QoS::AtLeastOnce);
        bad.properties.payload_format_indicator = Some(1);
        let ack = publish(&mut raw, bad).await.expect("PUBACK");
        assert_eq!(ack.reason, ReasonCode::PAYLOAD_FORMAT_INVALID);
        assert!(ack.properties.is_empty(), "{:?}", ack.properties);
        raw.send(&Packet::PubRel(PubResp {
            packet_id: 9,
            ..Default::default()
        }))
        .await;
        match raw.recv().await {
            Some(Packet::PubComp(c)) => assert!(c.properties.is_empty()),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        raw.send(&Packet::Subscribe(pigeon_codec::Subscribe {
            packet_id: 3,
            filters: vec![(ByteStr::from("rpi/t"), qos(QoS::AtLeastOnce))],
            properties: Default::default(),
        }))
        .await;
        match raw.recv().await {
            Some(Packet::SubAck(s)) => assert!(s.properties.is_empty()),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        raw.send(&Packet::Unsubscribe(pigeon_codec::Unsubscribe {
            packet_id: 4,
            filters: vec![ByteStr::from("rpi/t"), ByteStr::from("rpi/never")],
            properties: Default::default(),
        }))
        .await;
        match raw.recv().await {
            Some(Packet::UnsubAck(u)) => assert!(u.properties.is_empty()),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }
    broker.stop().await;
}

/// Section 3.3.2.3.2: a payload marked UTF-8 (Payload Format Indicator 1) that is not valid UTF-8
/// may be refused with 0x99 Payload format invalid; the broker does so on PUBACK and PUBREC and
/// routes nothing. Valid UTF-8 with the indicator, and any bytes without it, are routed.
#[tokio::test]
async fn a_payload_marked_utf8_must_be_utf8() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, V5, "pfi-sub").await;
    subscribe(&mut sub, "pfi", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, V5, "pfi-pub").await;
    for (payload, indicator, reason) in [
        (
            &b"\xC3\x28"[..],
            Some(1),
            ReasonCode::PAYLOAD_FORMAT_INVALID,
        ),
        (
            &b"\xED\xA0\x80"[..],
            Some(1),
            ReasonCode::PAYLOAD_FORMAT_INVALID,
        ),
        ("ünïcødé".as_bytes(), Some(1), ReasonCode::SUCCESS),
        (&b"\xC3\x28"[..], Some(0), ReasonCode::SUCCESS),
        (&b"\xC3\x28"[..], None, ReasonCode::SUCCESS),
    ] {
        for q in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut p = message("pfi", payload, q);
            p.properties.payload_format_indicator = indicator;
            let ack = publish(&mut publisher, p).await.expect("ack");
            assert_eq!(
                ack.reason, reason,
                "{payload:?} with {indicator:?} at {q:?}"
            );
        }
    }
    let got = received(&mut publisher, &mut sub).await;
    assert_eq!(got.len(), 6, "only the three accepted payloads, twice each");
    assert!(got
        .iter()
        .all(|p| p.properties.payload_format_indicator != Some(1)
            || std::str::from_utf8(&p.payload).is_ok()));
    broker.stop().await;
}

/// A message too large for the client is not sent, so the alias it would have set is not set:
/// the next message on that topic carries the topic again ([MQTT-3.1.2-25] with section
/// 3.3.2.3.4), never an empty topic with an alias the client does not know.
#[tokio::test]
async fn an_alias_is_not_set_by_a_message_too_large_to_send() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_with(broker.addr, V5, "tal-sub", true, |c| {
        c.properties.topic_alias_maximum = Some(2);
        c.properties.maximum_packet_size = Some(64);
    })
    .await;
    subscribe(&mut sub, "tal/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, V5, "tal-pub").await;
    publish_q1(&mut publisher, "tal/a", &[b'x'; 100]).await;
    publish_q1(&mut publisher, "tal/a", b"small").await;
    publish_q1(&mut publisher, "tal/a", b"again").await;
    publish_q1(&mut publisher, "tal/b", &[b'x'; 100]).await;
    publish_q1(&mut publisher, "tal/b", b"small").await;
    let got = received(&mut publisher, &mut sub).await;
    let seen: Vec<(&str, Option<u16>, &[u8])> = got
        .iter()
        .map(|p| (p.topic.as_str(), p.properties.topic_alias, &p.payload[..]))
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let (a, b) = (seen[0].1.expect("alias"), seen[2].1.expect("alias"));
    assert_eq!(
        seen,
        [
            ("tal/a", Some(a), &b"small"[..]),
            ("", Some(a), b"again"),
            ("tal/b", Some(b), b"small"),
        ]
    );
    assert_ne!(a, b);
    broker.stop().await;
}

/// [MQTT-3.3.2-5], [MQTT-3.3.2-6] for a connected client whose Receive Maximum holds messages
/// back: one that expires while waiting is not sent, the others go out with what is left.
#[tokio::test(start_paused = true)]
async fn message_expiry_applies_while_the_in_flight_window_is_full() {
    let broker = Broker::start().await;
    let (mut sub, _) = connect_with(broker.addr, V5, "expw-sub", true, |c| {
        c.properties.receive_maximum = Some(1);
    })
    .await;
    subscribe(&mut sub, "expw", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, V5, "expw-pub").await;
    for (payload, expiry) in [(b"first", 100), (b"short", 5), (b"third", 100)] {
        let mut p = message("expw", payload, QoS::AtLeastOnce);
        p.properties.message_expiry_interval = Some(expiry);
        publish(&mut publisher, p).await;
    }
    let first = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(&first.payload[..], b"first");
    assert_eq!(first.properties.message_expiry_interval, Some(100));
    tokio::time::sleep(Duration::from_secs(10)).await;
    sub.send(&Packet::PubAck(PubResp {
        packet_id: first.packet_id,
        ..Default::default()
    }))
    .await;
    let next = next_publish(&mut sub).await;
    assert_eq!(
        &next.payload[..],
        b"third",
        "the 5 s message expired in the queue"
    );
    assert_eq!(next.properties.message_expiry_interval, Some(90));
    expect_no_publish(&mut sub).await;
    broker.stop().await;
}
