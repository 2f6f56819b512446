//! Will messages: when they are published and when not, their retain flag, QoS and properties,
//! the 5.0 Will Delay Interval (paused time), and wills of taken-over connections.

mod common;
mod support;

use bytes::Bytes;
use common::{Broker, Raw};
use pigeon_codec::{ByteStr, Connect, Protocol, QoS, ReasonCode, Will, WillProperties};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> Will {
    Will {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: WillProperties::default(),
    }
}

/// A 5.0 will with a Will Delay Interval, on a session with a Session Expiry Interval.
fn delayed_will(delay: u32, session_expiry: u32) -> impl FnOnce(&mut Connect) {
    move |c| {
        let mut w = will("will/t", "gone", QoS::AtLeastOnce, false);
        w.properties.will_delay_interval = Some(delay);
        c.will = Some(w);
        c.properties.session_expiry_interval = Some(session_expiry);
    }
}

/// A 5.0 client subscribed to `will/#` at QoS 2.
async fn watcher(addr: SocketAddr) -> Raw {
    let (mut raw, _) = connected(addr, Protocol::V5, "watcher", true, |_| {}).await;
    subscribe(&mut raw, "will/#", QoS::ExactlyOnce).await;
    raw
}

async fn expect_will(watcher: &mut Raw, payload_: &str) {
    let p = receive_and_ack(watcher).await;
    assert_eq!((p.topic.as_str(), payload(&p)), ("will/t", payload_));
}

// [MQTT-3.1.2-8] (3.1.1): the will is published when the network connection closes without
// DISCONNECT.
#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let mut opts = rumqttc::MqttOptions::new("dropper", "127.0.0.1", broker.port());
    opts.set_last_will(rumqttc::LastWill::new(
        "will/t",
        "dropped",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    tokio::time::timeout(Duration::from_secs(5), events.poll())
        .await
        .expect("CONNACK within 5 s")
        .expect("connected");
    wait_online(&broker.broker, "dropper").await;
    watcher.expect_silence(Duration::from_millis(50)).await;
    drop(events); // the socket closes; no DISCONNECT is sent
    drop(client);
    expect_will(&mut watcher, "dropped").await;
}

// [MQTT-3.1.2-22] (5.0): a keep-alive timeout closes the connection "as if the network had
// failed", so the will is published.
#[tokio::test(start_paused = true)]
async fn will_is_published_on_keep_alive_timeout() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (mut silent, _) = connected(broker.addr, Protocol::V3_1_1, "silent", true, |c| {
        c.keep_alive = 2;
        c.will = Some(will("will/t", "timed out", QoS::AtLeastOnce, false));
    })
    .await;
    expect_will(&mut watcher, "timed out").await;
    expect_closed(&mut silent).await;
}

// 5.0 section 4.13: a protocol error closes the connection, and the will is published.
#[tokio::test]
async fn will_is_published_when_the_broker_closes_for_a_protocol_error() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (mut bad, _) = connected(broker.addr, protocol, "bad", true, |c| {
            c.will = Some(will("will/t", "malformed", QoS::AtLeastOnce, false));
        })
        .await;
        bad.send_bytes(&[0x36, 0x04, 0x00, 0x01, b't', 0x00]).await; // PUBLISH with QoS 3
        expect_closed_for(&mut bad, ReasonCode::MALFORMED_PACKET).await;
        expect_will(&mut watcher, "malformed").await;
    }
}

// [MQTT-3.1.2-10] (3.1.1) and [MQTT-3.14.4-3] (5.0): DISCONNECT with reason 0x00 discards the
// will.
#[tokio::test]
async fn will_is_not_published_after_a_normal_disconnect() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;

    let mut opts = rumqttc::MqttOptions::new("polite", "127.0.0.1", broker.port());
    opts.set_last_will(rumqttc::LastWill::new(
        "will/t",
        "should not",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    tokio::time::timeout(Duration::from_secs(5), events.poll())
        .await
        .expect("CONNACK within 5 s")
        .expect("connected");
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
    .expect("DISCONNECT sent");
    drop(events);
    wait_offline(&broker.broker, "polite").await;

    let (mut v5, _) = connected(broker.addr, Protocol::V5, "polite5", true, |c| {
        c.will = Some(will("will/t", "should not", QoS::AtLeastOnce, false));
    })
    .await;
    disconnect(&mut v5, |_| {}).await;
    expect_closed(&mut v5).await;
    wait_offline(&broker.broker, "polite5").await;
    watcher.expect_silence(Duration::from_millis(200)).await;
}

// 5.0 section 3.14.2.1: DISCONNECT with 0x04 (Disconnect with Will Message) publishes the will,
// and so does one with an error code: only 0x00 discards it [MQTT-3.1.2-8] [MQTT-3.14.4-3].
#[tokio::test]
async fn will_is_published_for_disconnect_with_will_message_or_an_error() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    for (reason, id) in [
        (ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, "asked for"),
        (ReasonCode::UNSPECIFIED_ERROR, "unspecified error"),
        (
            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            "implementation error",
        ),
    ] {
        let (mut client, _) = connected(broker.addr, Protocol::V5, "leaver", true, |c| {
            c.will = Some(will("will/t", id, QoS::AtLeastOnce, false));
        })
        .await;
        disconnect(&mut client, |d| d.reason = reason).await;
        expect_closed(&mut client).await;
        expect_will(&mut watcher, id).await;
    }
}

// [MQTT-3.1.2-15] (5.0; MQTT-3.1.2-17 in 3.1.1): a will with Will Retain 1 is published retained,
// so a client that subscribes later gets it.
#[tokio::test]
async fn retained_will_reaches_later_subscribers() {
    let broker = Broker::start().await;
    let (client, _) = connected(broker.addr, Protocol::V3_1_1, "ret", true, |c| {
        c.will = Some(will("will/t", "retained will", QoS::AtLeastOnce, true));
    })
    .await;
    drop(client);
    wait_offline(&broker.broker, "ret").await;

    let (mut late, _) = connected(broker.addr, Protocol::V5, "late", true, |_| {}).await;
    subscribe(&mut late, "will/#", QoS::AtLeastOnce).await;
    let p = receive_and_ack(&mut late).await;
    assert_eq!(payload(&p), "retained will");
    assert!(p.retain, "sent because of the subscribe, so RETAIN is 1");
}

// [MQTT-3.1.2-14] (5.0): without Will Retain the will is not retained.
#[tokio::test]
async fn will_without_retain_is_not_kept_for_later_subscribers() {
    let broker = Broker::start().await;
    let (client, _) = connected(broker.addr, Protocol::V3_1_1, "noret", true, |c| {
        c.will = Some(will("will/t", "not retained", QoS::AtLeastOnce, false));
    })
    .await;
    drop(client);
    wait_offline(&broker.broker, "noret").await;
    let (mut late, _) = connected(broker.addr, Protocol::V5, "late", true, |_| {}).await;
    subscribe(&mut late, "will/#", QoS::AtLeastOnce).await;
    late.expect_silence(Duration::from_millis(100)).await;
}

// The will is published at its Will QoS, downgraded to each subscription's QoS.
#[tokio::test]
async fn will_is_published_at_its_qos() {
    let broker = Broker::start().await;
    let mut q2 = watcher(broker.addr).await;
    let (mut q0, _) = connected(broker.addr, Protocol::V3_1_1, "q0", true, |_| {}).await;
    subscribe(&mut q0, "will/#", QoS::AtMostOnce).await;
    let (client, _) = connected(broker.addr, Protocol::V3_1_1, "qos", true, |c| {
        c.will = Some(will("will/t", "qos 1", QoS::AtLeastOnce, false));
    })
    .await;
    drop(client);
    let p = receive_and_ack(&mut q2).await;
    assert_eq!((payload(&p), p.qos), ("qos 1", QoS::AtLeastOnce));
    let p = expect_publish(&mut q0).await;
    assert_eq!((payload(&p), p.qos), ("qos 1", QoS::AtMostOnce));

    let (client, _) = connected(broker.addr, Protocol::V3_1_1, "qos", true, |c| {
        c.will = Some(will("will/t", "qos 2", QoS::ExactlyOnce, false));
    })
    .await;
    drop(client);
    let p = receive_and_ack(&mut q2).await;
    assert_eq!((payload(&p), p.qos), ("qos 2", QoS::ExactlyOnce));
}

// [MQTT-3.1.3-10] (5.0): will properties reach subscribers, user properties in their order;
// section 3.1.3.2: Content Type, Response Topic, Correlation Data, Payload Format Indicator.
#[tokio::test]
async fn will_properties_are_passed_through() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (client, _) = connected(broker.addr, Protocol::V5, "props", true, |c| {
        let mut w = will("will/t", "with properties", QoS::AtLeastOnce, false);
        w.properties.content_type = Some("text/plain".into());
        w.properties.response_topic = Some("reply/here".into());
        w.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
        w.properties.payload_format_indicator = Some(1);
        w.properties.user_properties = vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ];
        c.will = Some(w);
    })
    .await;
    drop(client);
    let p = receive_and_ack(&mut watcher).await;
    assert_eq!(payload(&p), "with properties");
    let props = &p.properties;
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(props.payload_format_indicator, Some(1));
    let users: Vec<(&str, &str)> = props
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(users, [("b", "2"), ("a", "1"), ("b", "3")]);
}

// 5.0 section 3.1.3.2.4: the Message Expiry Interval of a will "is the lifetime of the Will
// Message in seconds and is sent as the Publication Expiry Interval when the Server publishes
// the Will Message": it counts from publication, not from CONNECT.
#[tokio::test(start_paused = true)]
async fn will_message_expiry_counts_from_publication() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (mut client, _) = connected(broker.addr, Protocol::V5, "long", true, |c| {
        c.keep_alive = 0;
        let mut w = will("will/t", "fresh", QoS::AtLeastOnce, false);
        w.properties.message_expiry_interval = Some(10);
        c.will = Some(w);
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    ping(&mut client).await;
    drop(client);
    let p = receive_and_ack(&mut watcher).await;
    assert_eq!(payload(&p), "fresh");
    assert_eq!(p.properties.message_expiry_interval, Some(10));
}

// [MQTT-3.1.3-9] (5.0): a new connection to the session before the Will Delay Interval passes
// cancels the will.
#[tokio::test(start_paused = true)]
async fn delayed_will_is_not_published_if_the_client_returns_in_time() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (client, _) = connected(broker.addr, Protocol::V5, "back", true, delayed_will(5, 60)).await;
    drop(client);
    wait_offline(&broker.broker, "back").await;
    watcher.expect_silence(Duration::from_secs(3)).await;
    let (mut client, ack) = connected(broker.addr, Protocol::V5, "back", false, expiry(60)).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_secs(10)).await;
    ping(&mut client).await;
}

// [MQTT-3.1.2-8] (5.0): with a Will Delay Interval the will is published once the delay has
// elapsed, not before.
#[tokio::test(start_paused = true)]
async fn delayed_will_is_published_after_the_delay() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (client, _) = connected(broker.addr, Protocol::V5, "late", true, delayed_will(3, 60)).await;
    drop(client);
    wait_offline(&broker.broker, "late").await;
    watcher.expect_silence(Duration::from_millis(2800)).await;
    expect_will(&mut watcher, "gone").await;
}

// [MQTT-3.1.2-8] (5.0): "either the Will Delay Interval has elapsed or the Session ends": a
// session expiring before the will delay publishes the will when it ends.
#[tokio::test(start_paused = true)]
async fn delayed_will_is_published_when_the_session_ends_first() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (client, _) = connected(
        broker.addr,
        Protocol::V5,
        "short",
        true,
        delayed_will(30, 2),
    )
    .await;
    drop(client);
    wait_offline(&broker.broker, "short").await;
    watcher.expect_silence(Duration::from_millis(1800)).await;
    let started = tokio::time::Instant::now();
    expect_will(&mut watcher, "gone").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "published at session end, about 2 s"
    );
}

// A session with expiry 0 ends with its connection, so a delayed will goes out at once.
#[tokio::test(start_paused = true)]
async fn delayed_will_of_a_session_ending_with_its_connection_is_published_at_once() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (client, _) = connected(broker.addr, Protocol::V5, "now", true, delayed_will(30, 0)).await;
    drop(client);
    let started = tokio::time::Instant::now();
    expect_will(&mut watcher, "gone").await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

// A reconnect with Clean Start 1 during the will delay ends the old session, and the will goes
// out with it ([MQTT-3.1.2-8]: "or the Session ends"); a resumed session would have cancelled it.
#[tokio::test(start_paused = true)]
async fn clean_start_during_the_will_delay_publishes_the_will() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    let (client, _) = connected(
        broker.addr,
        Protocol::V5,
        "fresh",
        true,
        delayed_will(30, 60),
    )
    .await;
    drop(client);
    wait_offline(&broker.broker, "fresh").await;
    let (_client, ack) = connected(broker.addr, Protocol::V5, "fresh", true, expiry(60)).await;
    assert!(!ack.session_present);
    let started = tokio::time::Instant::now();
    expect_will(&mut watcher, "gone").await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

// [MQTT-3.1.4-3] (5.0): the taken-over connection is closed and, like any close other than a
// normal DISCONNECT, publishes its will (delay 0).
#[tokio::test]
async fn taken_over_connection_publishes_its_will() {
    let broker = Broker::start().await;
    let mut watcher = watcher(broker.addr).await;
    for (protocol, clean) in [
        (Protocol::V5, true),
        (Protocol::V5, false),
        (Protocol::V3_1_1, false),
    ] {
        let (mut first, _) = connected(broker.addr, protocol, "twin", true, |c| {
            c.will = Some(will("will/t", "taken over", QoS::AtLeastOnce, false));
            c.properties.session_expiry_interval = Some(60);
        })
        .await;
        let (mut second, _) = connected(broker.addr, protocol, "twin", clean, expiry(60)).await;
        expect_closed_for(&mut first, ReasonCode::SESSION_TAKEN_OVER).await;
        expect_will(&mut watcher, "taken over").await;
        // The new connection's own will (none) is what counts now.
        disconnect(&mut second, |_| {}).await;
        expect_closed(&mut second).await;
        wait_offline(&broker.broker, "twin").await;
        watcher.expect_silence(Duration::from_millis(50)).await;
    }
}
