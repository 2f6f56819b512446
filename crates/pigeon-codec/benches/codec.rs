//! Decode and encode cost per packet, ours beside rumqttc's codec on identical bytes.
//!
//! Cases: a 3.1.1 PUBLISH with a 64-byte and a 4 KiB payload (rumqttc `mqttbytes::v4`), and a
//! 5.0 CONNECT with session expiry, receive maximum, user properties and a will (rumqttc
//! `v5::mqttbytes::v5`). Decoding starts from a fresh `BytesMut` holding one packet, made outside
//! the timed part, and the decoded packet is dropped inside it: the per-packet cost a reader pays,
//! and it keeps criterion from holding a batch of packets (and their read buffers) in memory,
//! which made page faults dominate. Encoding writes into a cleared, reused buffer, as a
//! connection's writer does.
//! Run: `cargo bench -p pigeon-codec --bench codec -- --warm-up-time 1 --measurement-time 3`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pigeon_codec::{encode, Decoder, Packet, Protocol};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use std::hint::black_box;

const MAX: usize = 1 << 20;

fn v4_publish(payload_len: usize) -> v4::Publish {
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut p = v4::Publish::new(
        "sensors/building-7/floor-3/temperature",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        payload,
    );
    p.pkid = 4242;
    p
}

fn v5_connect() -> (v5::Connect, Option<v5::LastWill>, Option<v5::Login>) {
    let connect = v5::Connect {
        keep_alive: 60,
        client_id: "bench-client-0001".to_string(),
        clean_start: false,
        properties: Some(v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: vec![
                ("app".to_string(), "pigeon-bench".to_string()),
                ("region".to_string(), "eu-west".to_string()),
            ],
            authentication_method: None,
            authentication_data: None,
        }),
    };
    let will = v5::LastWill {
        topic: Bytes::from_static(b"clients/bench-client-0001/status"),
        message: Bytes::from_static(b"offline"),
        qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        retain: true,
        properties: Some(v5::LastWillProperties {
            delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("reason".to_string(), "lost".to_string())],
        }),
    };
    (
        connect,
        Some(will),
        Some(v5::Login::new("bench-user", "bench-password")),
    )
}

fn ours_decode(bytes: &[u8], protocol: Option<Protocol>) -> Packet {
    let mut decoder = match protocol {
        Some(p) => Decoder::with_protocol(p, MAX as u32),
        None => Decoder::new(MAX as u32),
    };
    let mut buf = BytesMut::from(bytes);
    decoder.decode(&mut buf).expect("valid").expect("whole")
}

fn bench_publish(c: &mut Criterion, name: &str, payload_len: usize) {
    let theirs = v4_publish(payload_len);
    let mut wire = BytesMut::new();
    theirs.write(&mut wire).expect("rumqttc writes");
    let wire = wire.freeze();
    let ours = ours_decode(&wire, Some(Protocol::V3_1_1));

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode/pigeon", |b| {
        let mut decoder = Decoder::with_protocol(Protocol::V3_1_1, MAX as u32);
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                drop(black_box(
                    decoder.decode(&mut buf).expect("valid").expect("whole"),
                ))
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("decode/rumqttc", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| drop(black_box(v4::Packet::read(&mut buf, MAX).expect("valid"))),
            BatchSize::SmallInput,
        );
    });
    let mut out = BytesMut::with_capacity(2 * wire.len());
    g.bench_function("encode/pigeon", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&ours), Protocol::V3_1_1, &mut out);
        });
    });
    g.bench_function("encode/rumqttc", |b| {
        b.iter(|| {
            out.clear();
            black_box(&theirs).write(&mut out).expect("rumqttc writes");
        });
    });
    g.finish();
}

fn publish_64(c: &mut Criterion) {
    bench_publish(c, "publish_64B_v311", 64);
}

fn publish_4k(c: &mut Criterion) {
    bench_publish(c, "publish_4KiB_v311", 4096);
}

fn connect_v5(c: &mut Criterion) {
    let (connect, will, login) = v5_connect();
    let mut wire = BytesMut::new();
    connect
        .write(&will, &login, &mut wire)
        .expect("rumqttc writes");
    let wire = wire.freeze();
    let ours = ours_decode(&wire, None);

    let mut g = c.benchmark_group("connect_v5_properties");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode/pigeon", |b| {
        b.iter_batched(
            || (Decoder::new(MAX as u32), BytesMut::from(&wire[..])),
            |(mut decoder, mut buf)| {
                drop(black_box(
                    decoder.decode(&mut buf).expect("valid").expect("whole"),
                ))
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("decode/rumqttc", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                drop(black_box(
                    v5::Packet::read(&mut buf, Some(MAX as u32)).expect("valid"),
                ))
            },
            BatchSize::SmallInput,
        );
    });
    let mut out = BytesMut::with_capacity(2 * wire.len());
    g.bench_function("encode/pigeon", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&ours), Protocol::V5, &mut out);
        });
    });
    g.bench_function("encode/rumqttc", |b| {
        b.iter(|| {
            out.clear();
            let (c, w, l) = (black_box(&connect), black_box(&will), black_box(&login));
            c.write(w, l, &mut out).expect("rumqttc writes");
        });
    });
    g.finish();
}

criterion_group!(benches, publish_64, publish_4k, connect_v5);
criterion_main!(benches);
