//! Differential tests against rumqttc's codec: packets rumqttc writes decode with ours to the same
//! fields, and packets we write decode with rumqttc to the same fields, for 3.1.1 (`mqttbytes::v4`)
//! and 5.0 (`v5::mqttbytes::v5`): CONNECT with properties and will, PUBLISH of 64 B and 4 KiB,
//! SUBSCRIBE with options.

use bytes::{Bytes, BytesMut};
use pigeon_codec::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const MAX: usize = 1 << 20;

fn payload(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

fn decode_ours(bytes: &[u8], protocol: Protocol) -> Packet {
    let mut decoder = match protocol {
        // The server side learns the level from CONNECT; the others are read at a known level.
        _ if bytes[0] >> 4 == 1 => Decoder::new(MAX as u32),
        _ => Decoder::with_protocol(protocol, MAX as u32),
    };
    let mut buf = BytesMut::from(bytes);
    let packet = decoder
        .decode(&mut buf)
        .expect("rumqttc's bytes decode")
        .expect("a whole packet");
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    packet
}

fn encode_ours(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf);
    buf
}

fn pairs(list: &[(ByteStr, ByteStr)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ours_pairs(list: &[(&str, &str)]) -> UserProperties {
    list.iter()
        .map(|(k, v)| (ByteStr::from(*k), ByteStr::from(*v)))
        .collect()
}

fn qos4(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos5(q: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

// --- 3.1.1 ---------------------------------------------------------------------------------------

fn v4_connect() -> v4::Connect {
    let mut c = v4::Connect::new("differential-client");
    c.keep_alive = 45;
    c.clean_session = false;
    c.last_will = Some(v4::LastWill::new(
        "will/topic",
        "gone",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        true,
    ));
    c.set_login("alice", "secret");
    c
}

fn v4_publish(n: usize, qos: QoS) -> v4::Publish {
    let mut p = v4::Publish::from_bytes("sensors/room-1/temperature", qos4(qos), payload(n));
    if qos != QoS::AtMostOnce {
        p.pkid = 42;
    }
    p.retain = true;
    p
}

fn v4_subscribe() -> v4::Subscribe {
    let mut s = v4::Subscribe::new("a/+/c", rumqttc::mqttbytes::QoS::AtLeastOnce);
    s.add("#".to_string(), rumqttc::mqttbytes::QoS::ExactlyOnce);
    s.add(
        "$share/g/x".to_string(),
        rumqttc::mqttbytes::QoS::AtMostOnce,
    );
    s.pkid = 7;
    s
}

fn check_v4_connect(theirs: &v4::Connect, ours: &Connect) {
    assert_eq!(ours.protocol, Protocol::V3_1_1);
    assert_eq!(ours.keep_alive, theirs.keep_alive);
    assert_eq!(ours.clean_start, theirs.clean_session);
    assert_eq!(&*ours.client_id, theirs.client_id);
    let (tw, ow) = (
        theirs.last_will.as_ref().expect("a will"),
        ours.will.as_ref().expect("a will"),
    );
    assert_eq!(&*ow.topic, tw.topic);
    assert_eq!(ow.payload, tw.message);
    assert_eq!(qos4(ow.qos), tw.qos);
    assert_eq!(ow.retain, tw.retain);
    let login = theirs.login.as_ref().expect("a login");
    assert_eq!(ours.username.as_deref(), Some(login.username.as_str()));
    assert_eq!(ours.password.as_deref(), Some(login.password.as_bytes()));
}

fn check_v4_publish(theirs: &v4::Publish, ours: &Publish) {
    assert_eq!(
        (ours.dup, qos4(ours.qos), ours.retain),
        (theirs.dup, theirs.qos, theirs.retain)
    );
    assert_eq!(&*ours.topic, theirs.topic);
    assert_eq!(ours.packet_id, theirs.pkid);
    assert_eq!(ours.payload, theirs.payload);
}

fn check_v4_subscribe(theirs: &v4::Subscribe, ours: &Subscribe) {
    assert_eq!(ours.packet_id, theirs.pkid);
    assert_eq!(ours.filters.len(), theirs.filters.len());
    for ((f, o), t) in ours.filters.iter().zip(&theirs.filters) {
        assert_eq!(&**f, t.path);
        assert_eq!(qos4(o.qos), t.qos);
    }
}

#[test]
fn v4_rumqttc_writes_we_read() {
    let connect = v4_connect();
    let mut buf = BytesMut::new();
    connect.write(&mut buf).expect("rumqttc writes");
    let Packet::Connect(ours) = decode_ours(&buf, Protocol::V3_1_1) else {
        panic!("CONNECT")
    };
    check_v4_connect(&connect, &ours);

    for (n, qos) in [
        (64, QoS::AtLeastOnce),
        (4096, QoS::AtMostOnce),
        (4096, QoS::ExactlyOnce),
    ] {
        let publish = v4_publish(n, qos);
        let mut buf = BytesMut::new();
        publish.write(&mut buf).expect("rumqttc writes");
        let Packet::Publish(ours) = decode_ours(&buf, Protocol::V3_1_1) else {
            panic!("PUBLISH")
        };
        check_v4_publish(&publish, &ours);
    }

    let subscribe = v4_subscribe();
    let mut buf = BytesMut::new();
    subscribe.write(&mut buf).expect("rumqttc writes");
    let Packet::Subscribe(ours) = decode_ours(&buf, Protocol::V3_1_1) else {
        panic!("SUBSCRIBE")
    };
    check_v4_subscribe(&subscribe, &ours);
}

#[test]
fn v4_we_write_rumqttc_reads() {
    let connect = v4_connect();
    let mut buf = BytesMut::new();
    connect.write(&mut buf).expect("rumqttc writes");
    let theirs_bytes = buf.clone();
    let ours = decode_ours(&buf, Protocol::V3_1_1);
    let mut ours_bytes = encode_ours(&ours, Protocol::V3_1_1);
    // Same field order on the wire in 3.1.1, so the bytes agree too.
    assert_eq!(ours_bytes, theirs_bytes);
    let Ok(v4::Packet::Connect(back)) = v4::Packet::read(&mut ours_bytes, MAX) else {
        panic!("CONNECT")
    };
    assert_eq!(back, connect);

    for (n, qos) in [(64, QoS::AtLeastOnce), (4096, QoS::AtMostOnce)] {
        let ours = Publish {
            qos,
            retain: true,
            topic: ByteStr::from("sensors/room-1/temperature"),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 42 },
            payload: payload(n),
            ..Publish::default()
        };
        let mut buf = encode_ours(&Packet::Publish(ours.clone()), Protocol::V3_1_1);
        let Ok(v4::Packet::Publish(theirs)) = v4::Packet::read(&mut buf, MAX) else {
            panic!("PUBLISH")
        };
        check_v4_publish(&theirs, &ours);
    }

    let ours = Subscribe {
        packet_id: 7,
        filters: vec![
            (
                ByteStr::from("a/+/c"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            ),
            (
                ByteStr::from("#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            ),
        ],
        properties: SubscribeProperties::default(),
    };
    let mut buf = encode_ours(&Packet::Subscribe(ours.clone()), Protocol::V3_1_1);
    let Ok(v4::Packet::Subscribe(theirs)) = v4::Packet::read(&mut buf, MAX) else {
        panic!("SUBSCRIBE")
    };
    check_v4_subscribe(&theirs, &ours);
}

// --- 5.0 -----------------------------------------------------------------------------------------

fn v5_connect() -> (v5::Connect, Option<v5::LastWill>, Option<v5::Login>) {
    let connect = v5::Connect {
        keep_alive: 60,
        client_id: "differential-v5".to_string(),
        clean_start: true,
        properties: Some(v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            max_packet_size: Some(65_536),
            topic_alias_max: Some(16),
            request_response_info: Some(1),
            request_problem_info: Some(0),
            user_properties: vec![
                ("region".into(), "eu".into()),
                ("region".into(), "us".into()),
            ],
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"client-first")),
        }),
    };
    let will = v5::LastWill {
        topic: Bytes::from_static(b"clients/differential-v5/status"),
        message: Bytes::from_static(b"offline"),
        qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        retain: true,
        properties: Some(v5::LastWillProperties {
            delay_interval: Some(10),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(600),
            content_type: Some("text/plain".into()),
            response_topic: Some("replies/x".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("k".into(), "v".into())],
        }),
    };
    (connect, Some(will), Some(v5::Login::new("bob", "hunter2")))
}

fn v5_publish(n: usize, qos: QoS) -> v5::Publish {
    v5::Publish {
        dup: false,
        qos: qos5(qos),
        retain: false,
        topic: Bytes::from_static(b"sensors/room-1/temperature"),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 9 },
        payload: payload(n),
        properties: Some(v5::PublishProperties {
            payload_format_indicator: Some(0),
            message_expiry_interval: Some(30),
            topic_alias: Some(3),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(b"c-1")),
            user_properties: vec![("trace".into(), "abc".into())],
            subscription_identifiers: vec![5, 300],
            content_type: Some("application/json".into()),
        }),
    }
}

fn v5_subscribe() -> v5::Subscribe {
    let filter = |path: &str, qos, nolocal, preserve_retain, rule| v5::Filter {
        path: path.to_string(),
        qos,
        nolocal,
        preserve_retain,
        retain_forward_rule: rule,
    };
    v5::Subscribe {
        pkid: 11,
        filters: vec![
            filter(
                "a/+",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                true,
                false,
                v5::RetainForwardRule::OnNewSubscribe,
            ),
            filter(
                "b/#",
                rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                false,
                true,
                v5::RetainForwardRule::Never,
            ),
            filter(
                "$share/g/c",
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                false,
                false,
                v5::RetainForwardRule::OnEverySubscribe,
            ),
        ],
        properties: Some(v5::SubscribeProperties {
            id: Some(77),
            user_properties: vec![("u".into(), "1".into())],
        }),
    }
}

fn check_v5_connect(
    theirs: &(v5::Connect, Option<v5::LastWill>, Option<v5::Login>),
    ours: &Connect,
) {
    let (c, will, login) = theirs;
    assert_eq!(ours.protocol, Protocol::V5);
    assert_eq!(
        (ours.keep_alive, ours.clean_start),
        (c.keep_alive, c.clean_start)
    );
    assert_eq!(&*ours.client_id, c.client_id);
    let tp = c.properties.as_ref().expect("properties");
    let op = &ours.properties;
    assert_eq!(op.session_expiry_interval, tp.session_expiry_interval);
    assert_eq!(op.receive_maximum, tp.receive_maximum);
    assert_eq!(op.maximum_packet_size, tp.max_packet_size);
    assert_eq!(op.topic_alias_maximum, tp.topic_alias_max);
    assert_eq!(op.request_response_information, tp.request_response_info);
    assert_eq!(op.request_problem_information, tp.request_problem_info);
    assert_eq!(pairs(&op.user_properties), tp.user_properties);
    assert_eq!(
        op.authentication_method.as_deref(),
        tp.authentication_method.as_deref()
    );
    assert_eq!(op.authentication_data, tp.authentication_data);

    let (tw, ow) = (
        will.as_ref().expect("a will"),
        ours.will.as_ref().expect("a will"),
    );
    assert_eq!(ow.topic.as_bytes(), &tw.topic);
    assert_eq!(ow.payload, tw.message);
    assert_eq!((qos5(ow.qos), ow.retain), (tw.qos, tw.retain));
    let twp = tw.properties.as_ref().expect("will properties");
    let owp = &ow.properties;
    assert_eq!(owp.will_delay_interval, twp.delay_interval);
    assert_eq!(owp.payload_format_indicator, twp.payload_format_indicator);
    assert_eq!(owp.message_expiry_interval, twp.message_expiry_interval);
    assert_eq!(owp.content_type.as_deref(), twp.content_type.as_deref());
    assert_eq!(owp.response_topic.as_deref(), twp.response_topic.as_deref());
    assert_eq!(owp.correlation_data, twp.correlation_data);
    assert_eq!(pairs(&owp.user_properties), twp.user_properties);

    let login = login.as_ref().expect("a login");
    assert_eq!(ours.username.as_deref(), Some(login.username.as_str()));
    assert_eq!(ours.password.as_deref(), Some(login.password.as_bytes()));
}

fn check_v5_publish(theirs: &v5::Publish, ours: &Publish) {
    assert_eq!(
        (ours.dup, qos5(ours.qos), ours.retain),
        (theirs.dup, theirs.qos, theirs.retain)
    );
    assert_eq!(ours.topic.as_bytes(), &theirs.topic);
    assert_eq!(ours.packet_id, theirs.pkid);
    assert_eq!(ours.payload, theirs.payload);
    let tp = theirs.properties.as_ref().expect("properties");
    let op = &ours.properties;
    assert_eq!(op.payload_format_indicator, tp.payload_format_indicator);
    assert_eq!(op.message_expiry_interval, tp.message_expiry_interval);
    assert_eq!(op.topic_alias, tp.topic_alias);
    assert_eq!(op.response_topic.as_deref(), tp.response_topic.as_deref());
    assert_eq!(op.correlation_data, tp.correlation_data);
    assert_eq!(pairs(&op.user_properties), tp.user_properties);
    let sids: Vec<usize> = op
        .subscription_identifiers
        .iter()
        .map(|&s| s as usize)
        .collect();
    assert_eq!(sids, tp.subscription_identifiers);
    assert_eq!(op.content_type.as_deref(), tp.content_type.as_deref());
}

fn check_v5_subscribe(theirs: &v5::Subscribe, ours: &Subscribe) {
    assert_eq!(ours.packet_id, theirs.pkid);
    let tp = theirs.properties.as_ref().expect("properties");
    assert_eq!(
        ours.properties.subscription_identifier.map(|s| s as usize),
        tp.id
    );
    assert_eq!(pairs(&ours.properties.user_properties), tp.user_properties);
    assert_eq!(ours.filters.len(), theirs.filters.len());
    for ((f, o), t) in ours.filters.iter().zip(&theirs.filters) {
        assert_eq!(&**f, t.path);
        assert_eq!(qos5(o.qos), t.qos);
        assert_eq!(
            (o.no_local, o.retain_as_published),
            (t.nolocal, t.preserve_retain)
        );
        let rule = match o.retain_handling {
            RetainHandling::OnSubscribe => v5::RetainForwardRule::OnEverySubscribe,
            RetainHandling::OnNewSubscribe => v5::RetainForwardRule::OnNewSubscribe,
            RetainHandling::Never => v5::RetainForwardRule::Never,
        };
        assert_eq!(rule, t.retain_forward_rule);
    }
}

#[test]
fn v5_rumqttc_writes_we_read() {
    let (connect, will, login) = v5_connect();
    let mut buf = BytesMut::new();
    connect
        .write(&will, &login, &mut buf)
        .expect("rumqttc writes");
    let Packet::Connect(ours) = decode_ours(&buf, Protocol::V5) else {
        panic!("CONNECT")
    };
    check_v5_connect(&(connect, will, login), &ours);

    for (n, qos) in [
        (64, QoS::AtLeastOnce),
        (4096, QoS::AtMostOnce),
        (4096, QoS::ExactlyOnce),
    ] {
        let publish = v5_publish(n, qos);
        let mut buf = BytesMut::new();
        publish.write(&mut buf).expect("rumqttc writes");
        let Packet::Publish(ours) = decode_ours(&buf, Protocol::V5) else {
            panic!("PUBLISH")
        };
        check_v5_publish(&publish, &ours);
    }

    let subscribe = v5_subscribe();
    let mut buf = BytesMut::new();
    subscribe.write(&mut buf).expect("rumqttc writes");
    let Packet::Subscribe(ours) = decode_ours(&buf, Protocol::V5) else {
        panic!("SUBSCRIBE")
    };
    check_v5_subscribe(&subscribe, &ours);
}

#[test]
fn v5_we_write_rumqttc_reads() {
    let ours = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteStr::from("differential-v5"),
        will: Some(Will {
            topic: ByteStr::from("clients/differential-v5/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(10),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(600),
                content_type: Some(ByteStr::from("text/plain")),
                response_topic: Some(ByteStr::from("replies/x")),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: ours_pairs(&[("k", "v")]),
            },
        }),
        username: Some(ByteStr::from("bob")),
        password: Some(Bytes::from_static(b"hunter2")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            maximum_packet_size: Some(65_536),
            topic_alias_maximum: Some(16),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: ours_pairs(&[("region", "eu"), ("region", "us")]),
            authentication_method: Some(ByteStr::from("SCRAM-SHA-256")),
            authentication_data: Some(Bytes::from_static(b"client-first")),
        },
    };
    let mut buf = encode_ours(&Packet::Connect(Box::new(ours.clone())), Protocol::V5);
    let Ok(v5::Packet::Connect(c, w, l)) = v5::Packet::read(&mut buf, None) else {
        panic!("CONNECT")
    };
    check_v5_connect(&(c, w, l), &ours);

    for (n, qos) in [(64, QoS::AtLeastOnce), (4096, QoS::AtMostOnce)] {
        let ours = Publish {
            qos,
            topic: ByteStr::from("sensors/room-1/temperature"),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 9 },
            properties: PublishProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(30),
                topic_alias: Some(3),
                response_topic: Some(ByteStr::from("replies/1")),
                correlation_data: Some(Bytes::from_static(b"c-1")),
                user_properties: ours_pairs(&[("trace", "abc")]),
                subscription_identifiers: vec![5, 300],
                content_type: Some(ByteStr::from("application/json")),
            },
            payload: payload(n),
            ..Publish::default()
        };
        let mut buf = encode_ours(&Packet::Publish(ours.clone()), Protocol::V5);
        let Ok(v5::Packet::Publish(theirs)) = v5::Packet::read(&mut buf, None) else {
            panic!("PUBLISH")
        };
        check_v5_publish(&theirs, &ours);
    }

    let opts = |qos, no_local, retain_as_published, retain_handling| SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    };
    let ours = Subscribe {
        packet_id: 11,
        filters: vec![
            (
                ByteStr::from("a/+"),
                opts(
                    QoS::AtLeastOnce,
                    true,
                    false,
                    RetainHandling::OnNewSubscribe,
                ),
            ),
            (
                ByteStr::from("b/#"),
                opts(QoS::ExactlyOnce, false, true, RetainHandling::Never),
            ),
            (
                ByteStr::from("$share/g/c"),
                opts(QoS::AtMostOnce, false, false, RetainHandling::OnSubscribe),
            ),
        ],
        properties: SubscribeProperties {
            subscription_identifier: Some(77),
            user_properties: ours_pairs(&[("u", "1")]),
        },
    };
    let mut buf = encode_ours(&Packet::Subscribe(ours.clone()), Protocol::V5);
    let Ok(v5::Packet::Subscribe(theirs)) = v5::Packet::read(&mut buf, None) else {
        panic!("SUBSCRIBE")
    };
    check_v5_subscribe(&theirs, &ours);
}
