//! Retained messages through the real broker: store, replace, clear, the RETAIN flag on the way
//! out, wildcards, Retain Handling, expiry, QoS, `$` topics and shared subscriptions.

mod common;
mod flows;

use common::{Broker, Raw};
use flows::*;
use pigeon_codec::{
    Packet, Protocol, Publish, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};
use std::time::Duration;

/// Publishes a retained message and completes its exchange.
async fn retain(publisher: &mut Raw, topic: &str, payload: &[u8], q: QoS) {
    let mut p = message(topic, payload, q);
    p.retain = true;
    publish(publisher, p).await;
}

/// Subscribes `sub` (already subscribed to the sentinel) and returns what the subscribe brought.
async fn retained_on_subscribe(
    publisher: &mut Raw,
    sub: &mut Raw,
    filter: &str,
    options: SubscriptionOptions,
) -> Vec<Publish> {
    subscribe_opts(sub, filter, options).await;
    received(publisher, sub).await
}

/// 3.1.1 [MQTT-3.3.1-8] and 5.0 section 3.3.1.3: a retained message sent because of a new
/// subscription has RETAIN 1. 3.1.1 [MQTT-3.3.1-9], 5.0 [MQTT-3.3.1-12]: a message sent on an
/// established subscription has RETAIN 0 (without Retain As Published).
#[tokio::test]
async fn retain_flag_is_set_only_on_subscribe() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut publisher = connect(broker.addr, protocol, "flag-pub").await;
        retain(&mut publisher, "flag/t", b"stored", QoS::AtLeastOnce).await;
        let mut sub = connect(broker.addr, protocol, "flag-sub").await;
        subscribe_sentinel(&mut sub).await;
        let got =
            retained_on_subscribe(&mut publisher, &mut sub, "flag/t", qos(QoS::AtLeastOnce)).await;
        assert_eq!(payloads(&got), ["stored"]);
        assert!(got[0].retain, "{protocol:?}: RETAIN 1 on subscribe");

        retain(&mut publisher, "flag/t", b"live-retained", QoS::AtLeastOnce).await;
        publish_q1(&mut publisher, "flag/t", b"live").await;
        let got = received(&mut publisher, &mut sub).await;
        assert_eq!(payloads(&got), ["live-retained", "live"]);
        assert!(
            got.iter().all(|p| !p.retain),
            "{protocol:?}: RETAIN 0 on an established subscription"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn rumqttc_sees_the_retain_flag() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V3_1_1, "rq-pub").await;
    retain(&mut publisher, "rq/t", b"stored", QoS::AtLeastOnce).await;
    let mut opts = rumqttc::MqttOptions::new("rq-sub", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("rq/t", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < 2 {
            match events.poll().await.expect("event loop") {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => got.push(p),
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    publish_q1(&mut publisher, "rq/t", b"live").await
                }
                _ => {}
            }
        }
    })
    .await
    .expect("two messages");
    let got: Vec<(&[u8], bool)> = got.iter().map(|p| (&p.payload[..], p.retain)).collect();
    assert_eq!(got, [(&b"stored"[..], true), (&b"live"[..], false)]);
    broker.stop().await;
}

/// 5.0 [MQTT-3.3.1-13]: with Retain As Published the RETAIN flag is forwarded as received.
#[tokio::test]
async fn retain_as_published_keeps_the_flag() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "rap-pub").await;
    let mut sub = connect(broker.addr, Protocol::V5, "rap-sub").await;
    subscribe_sentinel(&mut sub).await;
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..Default::default()
    };
    subscribe_opts(&mut sub, "rap/t", options).await;
    retain(&mut publisher, "rap/t", b"retained", QoS::AtLeastOnce).await;
    publish_q1(&mut publisher, "rap/t", b"plain").await;
    let got = received(&mut publisher, &mut sub).await;
    let flags: Vec<(String, bool)> = got
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.retain))
        .collect();
    assert_eq!(
        flags,
        [("retained".to_string(), true), ("plain".to_string(), false)]
    );
    broker.stop().await;
}

/// [MQTT-3.3.1-5]: a retained message replaces the topic's previous one; [MQTT-3.3.1-8] (5.0): a
/// message without RETAIN leaves it alone.
#[tokio::test]
async fn a_retained_message_replaces_the_previous_one() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "repl-pub").await;
    retain(&mut publisher, "repl", b"first", QoS::AtLeastOnce).await;
    retain(&mut publisher, "repl", b"second", QoS::ExactlyOnce).await;
    publish_q1(&mut publisher, "repl", b"not retained").await;
    let mut sub = connect(broker.addr, Protocol::V3_1_1, "repl-sub").await;
    subscribe_sentinel(&mut sub).await;
    let got = retained_on_subscribe(&mut publisher, &mut sub, "repl", qos(QoS::ExactlyOnce)).await;
    assert_eq!(payloads(&got), ["second"]);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    assert_eq!(broker.broker.retained_count(), 1);
    broker.stop().await;
}

/// 5.0 [MQTT-3.3.1-6], [MQTT-3.3.1-7]; 3.1.1 [MQTT-3.3.1-10], [MQTT-3.3.1-11]: an empty retained
/// payload clears the topic, is delivered to current subscribers as a normal message, and is
/// not stored.
#[tokio::test]
async fn an_empty_retained_payload_clears_the_topic() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut publisher = connect(broker.addr, protocol, "clr-pub").await;
        retain(&mut publisher, "clr", b"stored", QoS::AtLeastOnce).await;
        let mut live = connect(broker.addr, protocol, "clr-live").await;
        subscribe_sentinel(&mut live).await;
        let got =
            retained_on_subscribe(&mut publisher, &mut live, "clr", qos(QoS::AtLeastOnce)).await;
        assert_eq!(payloads(&got), ["stored"]);

        retain(&mut publisher, "clr", b"", QoS::AtLeastOnce).await;
        let got = received(&mut publisher, &mut live).await;
        assert_eq!(got.len(), 1, "{protocol:?}: the empty message is forwarded");
        assert!(got[0].payload.is_empty() && !got[0].retain);

        let mut late = connect(broker.addr, protocol, "clr-late").await;
        subscribe_sentinel(&mut late).await;
        let got =
            retained_on_subscribe(&mut publisher, &mut late, "clr", qos(QoS::AtLeastOnce)).await;
        assert_eq!(got, vec![], "{protocol:?}: nothing retained after clearing");
        assert_eq!(broker.broker.retained_count(), 0);
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_wildcard_subscription_gets_every_matching_retained_message() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "wr-pub").await;
    for topic in ["w", "w/1", "w/2", "w/a/b", "x/1", "/w"] {
        retain(&mut publisher, topic, topic.as_bytes(), QoS::AtLeastOnce).await;
    }
    let table: &[(&str, &[&str])] = &[
        ("w/+", &["w/1", "w/2"]),
        ("w/#", &["w", "w/1", "w/2", "w/a/b"]),
        ("+/1", &["w/1", "x/1"]),
        ("+/+/b", &["w/a/b"]),
        ("+/w", &["/w"]),
        ("#", &["/w", "w", "w/1", "w/2", "w/a/b", "x/1"]),
        ("w/1", &["w/1"]),
        ("w/3", &[]),
    ];
    for (i, (filter, want)) in table.iter().enumerate() {
        let mut sub = connect(broker.addr, Protocol::V5, &format!("wr-{i}")).await;
        subscribe_sentinel(&mut sub).await;
        let got =
            retained_on_subscribe(&mut publisher, &mut sub, filter, qos(QoS::AtLeastOnce)).await;
        assert_eq!(topics(&got), *want, "{filter}");
        assert!(got.iter().all(|p| p.retain));
    }
    broker.stop().await;
}

/// 5.0 Retain Handling: 0 sends retained messages at every subscribe ([MQTT-3.3.1-9]), 1 only
/// when the subscription is new ([MQTT-3.3.1-10]), 2 never ([MQTT-3.3.1-11]).
#[tokio::test]
async fn retain_handling_decides_what_a_subscribe_sends() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "rh-pub").await;
    retain(&mut publisher, "rh/t", b"stored", QoS::AtLeastOnce).await;
    let mut sub = connect(broker.addr, Protocol::V5, "rh-sub").await;
    subscribe_sentinel(&mut sub).await;
    let with = |retain_handling| SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_handling,
        ..Default::default()
    };
    for (handling, first, again) in [
        (RetainHandling::OnSubscribe, 1, 1),
        (RetainHandling::OnNewSubscribe, 1, 0),
        (RetainHandling::Never, 0, 0),
    ] {
        let got = retained_on_subscribe(&mut publisher, &mut sub, "rh/t", with(handling)).await;
        assert_eq!(got.len(), first, "{handling:?}, new subscription");
        let got = retained_on_subscribe(&mut publisher, &mut sub, "rh/t", with(handling)).await;
        assert_eq!(got.len(), again, "{handling:?}, existing subscription");
        assert_eq!(unsubscribe(&mut sub, &["rh/t"]).await.len(), 1);
    }
    // Retain Handling 1 counts per filter: `rh/+` is new although `rh/t` exists.
    subscribe(&mut sub, "rh/t", QoS::AtLeastOnce).await;
    received(&mut publisher, &mut sub).await;
    let got = retained_on_subscribe(
        &mut publisher,
        &mut sub,
        "rh/+",
        with(RetainHandling::OnNewSubscribe),
    )
    .await;
    assert_eq!(payloads(&got), ["stored"]);
    broker.stop().await;
}

/// 5.0 [MQTT-3.3.2-5]: a retained message is not delivered after its Message Expiry Interval;
/// before that it goes out with what is left of the interval ([MQTT-3.3.2-6]).
#[tokio::test(start_paused = true)]
async fn an_expired_retained_message_is_not_delivered() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "exp-pub").await;
    let mut p = message("exp", b"short-lived", QoS::AtLeastOnce);
    p.retain = true;
    p.properties.message_expiry_interval = Some(10);
    publish(&mut publisher, p).await;
    retain(&mut publisher, "exp/forever", b"kept", QoS::AtLeastOnce).await;

    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut sub = connect(broker.addr, Protocol::V5, "exp-early").await;
    subscribe_sentinel(&mut sub).await;
    let got = retained_on_subscribe(&mut publisher, &mut sub, "exp/#", qos(QoS::AtLeastOnce)).await;
    assert_eq!(topics(&got), ["exp", "exp/forever"]);
    let remaining = got[0]
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((1..=6).contains(&remaining), "remaining {remaining}");
    assert_eq!(got[1].properties.message_expiry_interval, None);

    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut late = connect(broker.addr, Protocol::V5, "exp-late").await;
    subscribe_sentinel(&mut late).await;
    let got =
        retained_on_subscribe(&mut publisher, &mut late, "exp/#", qos(QoS::AtLeastOnce)).await;
    assert_eq!(topics(&got), ["exp/forever"]);
    broker.stop().await;
}

/// [MQTT-3.8.4-8] (5.0) holds for retained messages too: the lower of the stored message's QoS
/// and the subscription's.
#[tokio::test]
async fn retained_qos_is_the_lower_of_message_and_subscription() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "rqos-pub").await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        retain(&mut publisher, &format!("rqos/{}", q as u8), b"m", q).await;
    }
    for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut sub = connect(
            broker.addr,
            Protocol::V5,
            &format!("rqos-{}", sub_qos as u8),
        )
        .await;
        subscribe_sentinel(&mut sub).await;
        let mut got = retained_on_subscribe(&mut publisher, &mut sub, "rqos/+", qos(sub_qos)).await;
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        let qos: Vec<QoS> = got.iter().map(|p| p.qos).collect();
        let want: Vec<QoS> = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .map(|m| m.min(sub_qos))
            .collect();
        assert_eq!(qos, want, "subscription at {sub_qos:?}");
    }
    broker.stop().await;
}

/// [MQTT-4.7.2-1] for retained messages: `#` and `+/...` do not bring back `$` topics.
#[tokio::test]
async fn leading_wildcards_do_not_deliver_retained_dollar_topics() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "rd-pub").await;
    retain(&mut publisher, "$foo/x", b"dollar", QoS::AtLeastOnce).await;
    retain(&mut publisher, "plain/x", b"plain", QoS::AtLeastOnce).await;
    let table: &[(&str, &[&str])] = &[
        ("#", &["plain/x"]),
        ("+/x", &["plain/x"]),
        ("+/#", &["plain/x"]),
        ("$foo/#", &["$foo/x"]),
        ("$foo/+", &["$foo/x"]),
    ];
    for (i, (filter, want)) in table.iter().enumerate() {
        let mut sub = connect(broker.addr, Protocol::V5, &format!("rd-{i}")).await;
        subscribe_sentinel(&mut sub).await;
        let got =
            retained_on_subscribe(&mut publisher, &mut sub, filter, qos(QoS::AtLeastOnce)).await;
        assert_eq!(topics(&got), *want, "{filter}");
    }
    broker.stop().await;
}

/// 5.0 section 3.3.1.3 sends retained messages "when a new Non-shared Subscription is made";
/// a shared subscription gets none, as mosquitto and EMQX do (by default) for every level.
#[tokio::test]
async fn shared_subscriptions_get_no_retained_messages() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.addr, Protocol::V5, "rs-pub").await;
    retain(&mut publisher, "rs/t", b"stored", QoS::AtLeastOnce).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut sub = connect(broker.addr, protocol, "rs-sub").await;
        subscribe_sentinel(&mut sub).await;
        let got = retained_on_subscribe(
            &mut publisher,
            &mut sub,
            "$share/g/rs/+",
            qos(QoS::AtLeastOnce),
        )
        .await;
        assert_eq!(got, vec![], "{protocol:?}");
        publish_q1(&mut publisher, "rs/t", b"live").await;
        assert_eq!(
            payloads(&received(&mut publisher, &mut sub).await),
            ["live"]
        );
    }
    broker.stop().await;
}

/// With `retain_available = false` the 5.0 CONNACK says Retain Available 0, and a retained
/// PUBLISH ends the connection: DISCONNECT 0x9A Retain not supported in 5.0 (section 3.2.2.3.5),
/// a plain close in 3.1.1, as mosquitto does. Messages without RETAIN still flow.
#[tokio::test]
async fn a_retained_publish_is_refused_when_retain_is_unavailable() {
    let broker = Broker::start_with(|c| c.mqtt.retain_available = false).await;
    let mut sub = connect(broker.addr, Protocol::V5, "nr-sub").await;
    subscribe(&mut sub, "nr", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut sub).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (mut publisher, ack) =
            connect_with(broker.addr, protocol, "nr-pub", true, |_| {}).await;
        if protocol.is_v5() {
            assert_eq!(ack.properties.retain_available, Some(false));
        }
        publish_q1(&mut publisher, "nr", b"plain").await;
        assert_eq!(
            payloads(&received(&mut publisher, &mut sub).await),
            ["plain"]
        );
        let mut p = message("nr", b"retained", QoS::AtLeastOnce);
        p.retain = true;
        publisher.send(&Packet::Publish(p)).await;
        expect_closed(&mut publisher, ReasonCode::RETAIN_NOT_SUPPORTED).await;
    }
    assert_eq!(broker.broker.retained_count(), 0);
    let mut publisher = connect(broker.addr, Protocol::V5, "nr-pub").await;
    assert_eq!(received(&mut publisher, &mut sub).await, vec![]);
    broker.stop().await;
}
