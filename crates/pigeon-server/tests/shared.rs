//! Shared subscriptions (`$share/<group>/<filter>`, 5.0 section 4.8.2) through the real broker:
//! one copy per group spread over its members, groups and plain subscribers independent,
//! members leaving, 3.1.1 clients, and the filters and options the specification refuses.

mod common;
mod flows;

use common::{Broker, Raw};
use flows::*;
use pigeon_codec::{
    ByteStr, Packet, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Connects `n` clients, each subscribed to `filter` and to the sentinel.
async fn members(
    addr: SocketAddr,
    protocol: Protocol,
    prefix: &str,
    filter: &str,
    n: usize,
) -> Vec<Raw> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut raw = connect(addr, protocol, &format!("{prefix}-{i}")).await;
        subscribe(&mut raw, filter, QoS::AtLeastOnce).await;
        subscribe_sentinel(&mut raw).await;
        out.push(raw);
    }
    out
}

/// Publishes `n` QoS 1 messages `<prefix>/<i>` with payload `i`, then the sentinel.
async fn publish_numbered(publisher: &mut Raw, prefix: &str, n: usize) {
    for i in 0..n {
        publish_q1(
            publisher,
            &format!("{prefix}/{i}"),
            i.to_string().as_bytes(),
        )
        .await;
    }
    publish_sentinel(publisher).await;
}

/// What each client received before the sentinel.
async fn collect(clients: &mut [Raw]) -> Vec<Vec<Publish>> {
    let mut out = Vec::new();
    for raw in clients {
        out.push(until_sentinel(raw).await);
    }
    out
}

/// Asserts the group got each of `0..n` exactly once between its members, and returns how many
/// each member got.
fn assert_once_each(group: &[Vec<Publish>], n: usize) -> Vec<usize> {
    let all: Vec<String> = group.iter().flat_map(|m| payloads(m)).collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        all.len(),
        n,
        "one copy per message across the group: {all:?}"
    );
    assert_eq!(unique.len(), n, "no message twice: {all:?}");
    group.iter().map(Vec::len).collect()
}

#[tokio::test]
async fn a_group_gets_each_message_once_spread_over_its_members() {
    let broker = Broker::start().await;
    let mut group = members(broker.addr, Protocol::V5, "g", "$share/g/t/+", 3).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "g-pub").await;
    publish_numbered(&mut publisher, "t", 30).await;
    let got = collect(&mut group).await;
    let counts = assert_once_each(&got, 30);
    assert!(
        counts.iter().all(|&c| c > 0),
        "every member gets some: {counts:?}"
    );
    // Each member receives its share in publication order.
    for member in &got {
        let numbers: Vec<usize> = payloads(member)
            .iter()
            .map(|p| p.parse().expect("number"))
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    }
    broker.stop().await;
}

/// Each group is independent (section 4.8.2): two groups on one filter each get every message
/// once, and a plain subscriber alongside gets all of them.
#[tokio::test]
async fn groups_and_plain_subscribers_are_independent() {
    let broker = Broker::start().await;
    let mut g1 = members(broker.addr, Protocol::V5, "g1", "$share/one/sh/#", 2).await;
    let mut g2 = members(broker.addr, Protocol::V3_1_1, "g2", "$share/two/sh/#", 2).await;
    let mut plain = members(broker.addr, Protocol::V5, "plain", "sh/#", 1).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "ind-pub").await;
    publish_numbered(&mut publisher, "sh", 30).await;
    assert_once_each(&collect(&mut g1).await, 30);
    assert_once_each(&collect(&mut g2).await, 30);
    let all = collect(&mut plain).await;
    let want: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&all[0]), want);
    broker.stop().await;
}

/// Section 4.8.2: "If a Client has a Shared Subscription and a Non-shared Subscription and a
/// message matches both of them", it gets a copy for the plain subscription and the group gets
/// its own, which may go to the same client. Two groups of one client likewise each get one.
#[tokio::test]
async fn one_client_in_a_group_and_plain_gets_both_copies() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.addr, Protocol::V5, "both").await;
    let codes = subscribe_all(
        &mut sub,
        &[
            ("both/t", qos(QoS::AtLeastOnce)),
            ("$share/a/both/t", qos(QoS::AtLeastOnce)),
            ("$share/b/both/+", qos(QoS::AtMostOnce)),
        ],
        None,
    )
    .await;
    assert_eq!(
        codes,
        [
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_0
        ]
    );
    subscribe_sentinel(&mut sub).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "both-pub").await;
    publish_q1(&mut publisher, "both/t", b"m").await;
    let got = received(&mut publisher, &mut sub).await;
    let mut qos: Vec<QoS> = got.iter().map(|p| p.qos).collect();
    qos.sort();
    assert_eq!(
        qos,
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce],
        "plain, group a, group b"
    );
    broker.stop().await;
}

/// Shared subscriptions are a 5.0 feature; like mosquitto, the broker accepts them from 3.1.1
/// clients too. rumqttc (3.1.1) and a raw 3.1.1 client share one group.
#[tokio::test]
async fn v311_clients_can_share() {
    let broker = Broker::start().await;
    let mut raw = members(broker.addr, Protocol::V3_1_1, "v4", "$share/v4/v4t/+", 1).await;
    let mut opts = rumqttc::MqttOptions::new("v4-rumqttc", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("$share/v4/v4t/+", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .subscribe(SENTINEL, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut subacks = 0;
    while subacks < 2 {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) =
            events.poll().await.expect("event loop")
        {
            assert_eq!(
                ack.return_codes,
                [rumqttc::SubscribeReasonCode::Success(
                    rumqttc::QoS::AtLeastOnce
                )]
            );
            subacks += 1;
        }
    }
    let mut publisher = connect(broker.addr, Protocol::V3_1_1, "v4-pub").await;
    publish_numbered(&mut publisher, "v4t", 10).await;
    let mut from_rumqttc = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.expect("event loop")
            {
                if p.topic == SENTINEL {
                    return;
                }
                from_rumqttc.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
            }
        }
    })
    .await
    .expect("sentinel within 5 s");
    let from_raw = payloads(&until_sentinel(&mut raw[0]).await);
    assert!(
        !from_rumqttc.is_empty() && !from_raw.is_empty(),
        "{from_rumqttc:?} {from_raw:?}"
    );
    let mut all: Vec<usize> = from_rumqttc
        .iter()
        .chain(&from_raw)
        .map(|p| p.parse().expect("number"))
        .collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    broker.stop().await;
}

/// A member that unsubscribes or disconnects leaves the group: the rest get every message. A
/// member whose session outlives its connection stays in the group but is passed over while
/// others are connected (as VerneMQ and EMQX do), so nothing waits in its queue.
#[tokio::test]
async fn the_remaining_members_get_everything_when_one_leaves() {
    let broker = Broker::start().await;
    let mut group = members(broker.addr, Protocol::V5, "leave", "$share/g/l/+", 3).await;
    let (mut persistent, _) =
        connect_with(broker.addr, Protocol::V5, "leave-persistent", true, |c| {
            c.properties.session_expiry_interval = Some(300);
        })
        .await;
    subscribe(&mut persistent, "$share/g/l/+", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, Protocol::V5, "leave-pub").await;

    // The persistent member goes offline without unsubscribing.
    persistent
        .send(&Packet::Disconnect(Default::default()))
        .await;
    assert_eq!(persistent.recv().await, None);
    // Member 0 unsubscribes.
    assert_eq!(
        unsubscribe(&mut group[0], &["$share/g/l/+"]).await,
        [ReasonCode::SUCCESS]
    );
    publish_numbered(&mut publisher, "l", 30).await;
    let got = collect(&mut group).await;
    assert_eq!(got[0], vec![], "an unsubscribed member gets nothing");
    assert_once_each(&got[1..], 30);

    // Member 1 disconnects (its session ends with the connection).
    let mut gone = group.remove(1);
    gone.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(gone.recv().await, None);
    publish_numbered(&mut publisher, "l", 30).await;
    let got = collect(&mut group).await;
    assert_eq!(got[0], vec![]);
    assert_eq!(got[1].len(), 30, "the last connected member gets all");

    // The persistent member comes back: nothing was queued for it.
    let (mut back, ack) = connect_with(broker.addr, Protocol::V5, "leave-persistent", false, |c| {
        c.properties.session_expiry_interval = Some(300);
    })
    .await;
    assert!(ack.session_present);
    expect_no_publish(&mut back).await;
    broker.stop().await;
}

/// 5.0 [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start().await;
    let mut raw = connect(broker.addr, Protocol::V5, "nolocal").await;
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            ByteStr::from("$share/g/t"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    }))
    .await;
    expect_closed(&mut raw, ReasonCode::PROTOCOL_ERROR).await;
    assert_eq!(broker.broker.subscription_count(), 0);
    broker.stop().await;
}

/// [MQTT-4.8.2-1], [MQTT-4.8.2-2]: a share name of at least one character without `/ + #`,
/// then `/` and a topic filter. Anything else makes the SUBSCRIBE malformed: 5.0 clients get
/// DISCONNECT 0x8F Topic Filter invalid, 3.1.1 clients a closed connection.
#[tokio::test]
async fn malformed_shared_filters_close_the_connection() {
    let broker = Broker::start().await;
    for filter in [
        "$share/g",
        "$share//t",
        "$share/g+/t",
        "$share/g#/t",
        "$share/g/",
        "$share/g/t/#/x",
    ] {
        for protocol in [Protocol::V3_1_1, Protocol::V5] {
            let mut raw = connect(broker.addr, protocol, "badshare").await;
            raw.send(&Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![(ByteStr::from(filter), qos(QoS::AtLeastOnce))],
                properties: Default::default(),
            }))
            .await;
            expect_closed(&mut raw, ReasonCode::TOPIC_FILTER_INVALID).await;
        }
    }
    assert_eq!(broker.broker.subscription_count(), 0);
    broker.stop().await;
}
