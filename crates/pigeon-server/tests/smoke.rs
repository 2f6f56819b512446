//! First light: a raw client and rumqttc exchange messages through the real broker.

mod common;

use bytes::Bytes;
use common::{Broker, Raw};
use pigeon_codec::{
    ByteStr, Packet, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use std::time::Duration;

#[tokio::test]
async fn raw_clients_publish_and_subscribe_at_every_level() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let (mut sub, ack) = Raw::mqtt_connect(broker.addr, protocol, "sub", true, |_| {}).await;
        let Some(Packet::ConnAck(ack)) = Some(ack) else {
            panic!("expected CONNACK")
        };
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        sub.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                ByteStr::from("smoke/+"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        }))
        .await;
        let Some(Packet::SubAck(s)) = sub.recv().await else {
            panic!("expected SUBACK")
        };
        assert_eq!(s.return_codes, vec![ReasonCode::GRANTED_QOS_1]);

        let (mut publisher, _) =
            Raw::mqtt_connect(broker.addr, protocol, "pub", true, |_| {}).await;
        publisher
            .send(&Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: ByteStr::from("smoke/a"),
                packet_id: 7,
                payload: Bytes::from_static(b"hello"),
                ..Default::default()
            }))
            .await;
        let Some(Packet::PubAck(a)) = publisher.recv().await else {
            panic!("expected PUBACK")
        };
        assert_eq!(a.packet_id, 7);
        let Some(Packet::Publish(p)) = sub.recv().await else {
            panic!("expected PUBLISH")
        };
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos),
            ("smoke/a", &b"hello"[..], QoS::AtLeastOnce)
        );
        sub.expect_silence(Duration::from_millis(100)).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn rumqttc_round_trip() {
    let broker = Broker::start().await;
    let mut opts = rumqttc::MqttOptions::new("rumqttc-1", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("r/#", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    client
        .publish("r/x", rumqttc::QoS::ExactlyOnce, false, "payload")
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.expect("event loop")
            {
                return p;
            }
        }
    })
    .await
    .expect("message within 5 s");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.qos),
        ("r/x", &b"payload"[..], rumqttc::QoS::ExactlyOnce)
    );
    broker.stop().await;
}
