//! Durable sessions through crashes: the real `pigeon` binary with the embedded store is killed
//! with SIGKILL at random points while a publisher streams QoS 1 and QoS 2 messages to an offline
//! persistent session, and restarted. Every message the publisher saw acknowledged must reach the
//! subscriber: QoS 2 exactly once, in publish order, nothing expired.

use bytes::{Bytes, BytesMut};
use pigeon_codec::{
    encode, ByteStr, Connect, Decoder, Packet, Protocol, PubResp, Publish, PublishProperties, QoS,
    Subscribe, SubscriptionOptions,
};
use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Broker {
    child: Child,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let config = dir.join("pigeon.toml");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[storage]\nbackend = \"embedded\"\npath = \"{}\"\n\n[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1000000000\n",
                dir.join("data").display()
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start pigeon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pigeon did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal MQTT client over our codec.
struct Client {
    stream: TcpStream,
    protocol: Protocol,
    rbuf: BytesMut,
    decoder: Decoder,
}

impl Client {
    async fn connect(
        port: u16,
        protocol: Protocol,
        id: &str,
        clean: bool,
        expiry: Option<u32>,
    ) -> (Client, bool) {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut c = Client {
            stream,
            protocol,
            rbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(protocol, 1 << 24),
        };
        let mut connect = Connect {
            protocol,
            clean_start: clean,
            keep_alive: 60,
            client_id: ByteStr::from(id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        connect.properties.session_expiry_interval = expiry;
        c.send(&Packet::Connect(Box::new(connect)))
            .await
            .expect("send CONNECT");
        match c.recv(Duration::from_secs(10)).await {
            Some(Packet::ConnAck(a)) if a.code.0 == 0 => (c, a.session_present),
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        encode(p, self.protocol, &mut buf);
        self.stream.write_all(&buf).await
    }

    /// Next packet; `None` on close, error or timeout.
    async fn recv(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = self
                    .decoder
                    .decode(&mut self.rbuf)
                    .expect("broker sends valid packets")
                {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pigeon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A small deterministic generator, so a failing run can be repeated.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn qos_of(seq: u32) -> QoS {
    if seq.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

/// Publishes `seqs` until the connection dies; returns the seqs the broker acknowledged
/// (PUBACK for QoS 1, PUBREC for QoS 2).
async fn publish_stream(
    port: u16,
    seqs: std::ops::Range<u32>,
    expiry: Option<u32>,
) -> BTreeSet<u32> {
    let (mut c, _) = Client::connect(port, Protocol::V5, "publisher", true, None).await;
    let mut acked = BTreeSet::new();
    let mut by_id: HashMap<u16, u32> = HashMap::new();
    let mut next_id: u16 = 1;
    const WINDOW: usize = 20;
    let mut it = seqs.clone();
    let mut done_sending = false;
    loop {
        while !done_sending && by_id.len() < WINDOW {
            let Some(seq) = it.next() else {
                done_sending = true;
                break;
            };
            let id = next_id;
            next_id = next_id % 60_000 + 1;
            by_id.insert(id, seq);
            let p = Publish {
                qos: qos_of(seq),
                topic: ByteStr::from("durable/stream"),
                packet_id: id,
                payload: Bytes::from(seq.to_be_bytes().to_vec()),
                properties: PublishProperties {
                    message_expiry_interval: expiry,
                    ..Default::default()
                },
                ..Default::default()
            };
            if c.send(&Packet::Publish(p)).await.is_err() {
                return acked;
            }
        }
        if done_sending && by_id.is_empty() {
            return acked;
        }
        match c.recv(Duration::from_secs(10)).await {
            Some(Packet::PubAck(r)) => {
                if let Some(seq) = by_id.remove(&r.packet_id) {
                    assert!(
                        !r.reason.is_error(),
                        "message {seq} refused: {:?}",
                        r.reason
                    );
                    acked.insert(seq);
                }
            }
            Some(Packet::PubRec(r)) => {
                if let Some(seq) = by_id.remove(&r.packet_id) {
                    assert!(
                        !r.reason.is_error(),
                        "message {seq} refused: {:?}",
                        r.reason
                    );
                    acked.insert(seq);
                }
                let rel = Packet::PubRel(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                });
                if c.send(&rel).await.is_err() {
                    return acked;
                }
            }
            Some(Packet::PubComp(_)) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => return acked,
        }
    }
}

/// Connects the persistent subscriber and collects what it is sent until the broker goes quiet.
async fn drain_subscriber(port: u16) -> Vec<(u32, QoS)> {
    let (mut c, present) = Client::connect(port, Protocol::V3_1_1, "subscriber", false, None).await;
    assert!(present, "the persistent session survived the restarts");
    let mut got = Vec::new();
    while let Some(p) = c.recv(Duration::from_secs(3)).await {
        match p {
            Packet::Publish(p) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().expect("4-byte payload"));
                got.push((seq, p.qos));
                let ack = PubResp {
                    packet_id: p.packet_id,
                    ..Default::default()
                };
                let reply = match p.qos {
                    QoS::AtLeastOnce => Packet::PubAck(ack),
                    QoS::ExactlyOnce => Packet::PubRec(ack),
                    QoS::AtMostOnce => continue,
                };
                c.send(&reply).await.expect("ack");
            }
            Packet::PubRel(r) => c
                .send(&Packet::PubComp(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                }))
                .await
                .expect("PUBCOMP"),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_at_random_points() {
    let dir = temp_dir("durable-kill9");
    let port = free_port();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let broker = Broker::start(&dir, port);
    {
        let (mut s, _) = Client::connect(port, Protocol::V3_1_1, "subscriber", false, None).await;
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![(
                ByteStr::from("durable/#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        };
        s.send(&Packet::Subscribe(sub)).await.expect("SUBSCRIBE");
        assert!(matches!(
            s.recv(Duration::from_secs(5)).await,
            Some(Packet::SubAck(_))
        ));
        // The SUBACK means the subscription is durable: kill the broker right away.
    }
    broker.kill9();

    let mut acked = BTreeSet::new();
    let rounds = 4;
    for round in 0..rounds {
        let broker = Broker::start(&dir, port);
        let start = round * 100_000;
        let kill_after = Duration::from_millis(30 + rng.below(300));
        let publisher = tokio::spawn(publish_stream(port, start..start + 50_000, None));
        tokio::time::sleep(kill_after).await;
        broker.kill9();
        let got = publisher.await.expect("publisher task");
        assert!(
            !got.is_empty() || round > 0,
            "round {round}: nothing was acknowledged before the kill"
        );
        acked.extend(got);
    }

    // Messages that expire while the subscriber is away are not delivered.
    let broker = Broker::start(&dir, port);
    let expiring = publish_stream(port, 900_000..900_010, Some(1)).await;
    assert_eq!(expiring.len(), 10, "all expiring messages acknowledged");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let got = drain_subscriber(port).await;
    drop(broker);

    let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    let delivered: BTreeSet<u32> = seqs.iter().copied().collect();
    let missing: Vec<u32> = acked.difference(&delivered).copied().take(10).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {missing:?}",
        acked.difference(&delivered).count()
    );
    assert!(
        delivered.iter().all(|s| *s < 900_000),
        "an expired message was delivered"
    );
    let mut seen = BTreeSet::new();
    for (seq, qos) in &got {
        assert_eq!(
            *qos,
            qos_of(*seq),
            "message {seq} delivered at the wrong QoS"
        );
        if *qos == QoS::ExactlyOnce {
            assert!(seen.insert(*seq), "QoS 2 message {seq} delivered twice");
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "delivered out of publish order"
    );
    eprintln!(
        "acknowledged {} messages over {rounds} kills; delivered {}",
        acked.len(),
        got.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_will_survives_kill_9_and_is_published_after_restart() {
    let dir = temp_dir("durable-will");
    let port = free_port();
    let broker = Broker::start(&dir, port);
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut c = Client {
        stream,
        protocol: Protocol::V5,
        rbuf: BytesMut::new(),
        decoder: Decoder::with_protocol(Protocol::V5, 1 << 24),
    };
    let mut connect = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteStr::from("device-7"),
        will: Some(pigeon_codec::Will {
            topic: ByteStr::from("status/device-7"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: pigeon_codec::WillProperties {
                will_delay_interval: Some(1),
                ..Default::default()
            },
        }),
        username: None,
        password: None,
        properties: Default::default(),
    };
    connect.properties.session_expiry_interval = Some(60);
    c.send(&Packet::Connect(Box::new(connect)))
        .await
        .expect("CONNECT");
    assert!(matches!(
        c.recv(Duration::from_secs(10)).await,
        Some(Packet::ConnAck(_))
    ));
    // The broker dies while the client is connected; the will was stored with the session.
    broker.kill9();
    drop(c);

    let broker = Broker::start(&dir, port);
    // The will is retained, so a subscriber that comes after it was published still sees it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut s, _) = Client::connect(port, Protocol::V3_1_1, "watcher", true, None).await;
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![(
            ByteStr::from("status/#"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    };
    s.send(&Packet::Subscribe(sub)).await.expect("SUBSCRIBE");
    assert!(matches!(
        s.recv(Duration::from_secs(5)).await,
        Some(Packet::SubAck(_))
    ));
    match s.recv(Duration::from_secs(5)).await {
        Some(Packet::Publish(p)) => assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("status/device-7", &b"gone"[..])
        ),
        other => panic!("expected the will, got {other:?}"),
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_store_stops_the_start_with_the_file_named() {
    let dir = temp_dir("durable-damaged");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("pigeon.redb"), vec![0x5a; 16384]).expect("junk store");
    let config = dir.join("pigeon.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:{}\"\n\n[storage]\nbackend = \"embedded\"\npath = \"{}\"\n",
            free_port(),
            data.display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run pigeon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pigeon.redb"),
        "the error names the store file: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
