//! Throughput of one publisher and one subscriber over each transport: mqtt (TCP), mqtts,
//! ws and wss, against an in-process broker on 127.0.0.1 with a certificate made by rcgen.
//!
//! `cargo run --release -p pigeon-server --example transport_throughput [MESSAGES] [PAYLOAD]`
//!
//! For each transport and for QoS 0 and QoS 1 (both sides), the publisher sends MESSAGES
//! messages of PAYLOAD bytes (defaults 200000 and 64) in writes of up to 64 packets (one
//! WebSocket message each), keeping at most 256 QoS 1 messages unacknowledged; the subscriber
//! acknowledges each QoS 1 delivery. The figure is messages received per second, from the
//! first publish to the last delivery. Bounded: each run stops after 60 s.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use pigeon_codec::{
    encode, ByteStr, Connect, Decoder, Packet, Protocol, PubResp, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use pigeon_server::config::{
    Config, ListenerConfig, ListenerProtocol, StorageBackend, StorageConfig,
};
use pigeon_server::Server;
use rcgen::{CertificateParams, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const BATCH: usize = 64;
const WINDOW: usize = 256;
const LIMIT: Duration = Duration::from_secs(60);

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

impl Conn {
    async fn open(
        kind: ListenerProtocol,
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let tls_stream = |tcp| async {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
                .expect("TLS handshake")
        };
        let request = || {
            let mut r = format!("ws://{addr}/mqtt")
                .into_client_request()
                .expect("request");
            r.headers_mut()
                .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
            r
        };
        match kind {
            ListenerProtocol::Mqtt => Conn::Tcp(tcp),
            ListenerProtocol::Mqtts => Conn::Tls(Box::new(tls_stream(tcp).await)),
            ListenerProtocol::Ws => Conn::Ws(Box::new(
                tokio_tungstenite::client_async(request(), tcp)
                    .await
                    .expect("upgrade")
                    .0,
            )),
            ListenerProtocol::Wss => {
                let stream = tls_stream(tcp).await;
                Conn::Wss(Box::new(
                    tokio_tungstenite::client_async(request(), stream)
                        .await
                        .expect("upgrade")
                        .0,
                ))
            }
        }
    }

    async fn send(&mut self, bytes: Bytes) {
        match self {
            Conn::Tcp(s) => s.write_all(&bytes).await.expect("write"),
            Conn::Tls(s) => {
                s.write_all(&bytes).await.expect("write");
                s.flush().await.expect("flush");
            }
            Conn::Ws(s) => s.send(Message::Binary(bytes)).await.expect("send"),
            Conn::Wss(s) => s.send(Message::Binary(bytes)).await.expect("send"),
        }
    }

    /// Appends what arrives next to `buf`.
    async fn recv(&mut self, buf: &mut BytesMut) {
        let message = match self {
            Conn::Tcp(s) => {
                buf.reserve(64 * 1024);
                assert!(s.read_buf(buf).await.expect("read") > 0, "closed");
                return;
            }
            Conn::Tls(s) => {
                buf.reserve(64 * 1024);
                assert!(s.read_buf(buf).await.expect("read") > 0, "closed");
                return;
            }
            Conn::Ws(s) => s.next().await,
            Conn::Wss(s) => s.next().await,
        };
        match message {
            Some(Ok(Message::Binary(data))) => buf.extend_from_slice(&data),
            Some(Ok(_)) => {}
            other => panic!("WebSocket ended: {other:?}"),
        }
    }
}

struct Client {
    conn: Conn,
    rbuf: BytesMut,
    decoder: Decoder,
}

impl Client {
    async fn connect(
        kind: ListenerProtocol,
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        id: &str,
    ) -> Client {
        let mut client = Client {
            conn: Conn::open(kind, addr, tls).await,
            rbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(Protocol::V3_1_1, 1 << 20),
        };
        let connect = Connect {
            protocol: Protocol::V3_1_1,
            clean_start: true,
            keep_alive: 60,
            client_id: ByteStr::from(id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        client.send(&[Packet::Connect(Box::new(connect))]).await;
        assert!(matches!(client.next().await, Packet::ConnAck(_)));
        client
    }

    async fn send(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for p in packets {
            encode(p, Protocol::V3_1_1, &mut buf);
        }
        self.conn.send(buf.freeze()).await;
    }

    async fn next(&mut self) -> Packet {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf).expect("valid packet") {
                return p;
            }
            self.conn.recv(&mut self.rbuf).await;
        }
    }

    /// Every packet already buffered, or the next one to arrive.
    async fn some(&mut self) -> Vec<Packet> {
        let mut packets = vec![self.next().await];
        while let Some(p) = self.decoder.decode(&mut self.rbuf).expect("valid packet") {
            packets.push(p);
        }
        packets
    }
}

fn publish(qos: QoS, id: u16, payload: &Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from("bench/t"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        properties: Default::default(),
        payload: payload.clone(),
    })
}

/// Messages per second from the first publish to the last delivery, and messages received.
async fn run(
    kind: ListenerProtocol,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    qos: QoS,
    messages: usize,
    payload: usize,
) -> (f64, usize) {
    let mut sub = Client::connect(kind, addr, tls, "bench-sub").await;
    sub.send(&[Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            ByteStr::from("bench/#"),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    })])
    .await;
    assert!(matches!(sub.next().await, Packet::SubAck(_)));
    let mut publisher = Client::connect(kind, addr, tls, "bench-pub").await;
    let payload = Bytes::from(vec![b'x'; payload]);
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while received < messages {
            let mut acks = Vec::new();
            for p in sub.some().await {
                if let Packet::Publish(p) = p {
                    received += 1;
                    if p.qos == QoS::AtLeastOnce {
                        acks.push(Packet::PubAck(PubResp {
                            packet_id: p.packet_id,
                            ..Default::default()
                        }));
                    }
                }
            }
            if !acks.is_empty() {
                sub.send(&acks).await;
            }
        }
        received
    });
    let mut sent = 0;
    let mut unacked = 0;
    let mut next_id: u16 = 0;
    while sent < messages {
        let room = if qos == QoS::AtMostOnce {
            BATCH
        } else {
            (WINDOW - unacked).min(BATCH)
        };
        if room > 0 {
            let n = room.min(messages - sent);
            let batch: Vec<Packet> = (0..n)
                .map(|_| {
                    next_id = next_id % u16::MAX + 1;
                    publish(qos, next_id, &payload)
                })
                .collect();
            publisher.send(&batch).await;
            sent += n;
            if qos != QoS::AtMostOnce {
                unacked += n;
            }
        }
        if qos != QoS::AtMostOnce && (unacked >= WINDOW || sent == messages) {
            for p in publisher.some().await {
                if matches!(p, Packet::PubAck(_)) {
                    unacked -= 1;
                }
            }
        }
    }
    match tokio::time::timeout(LIMIT, receiver).await {
        Ok(received) => {
            let received = received.expect("receiver");
            (received as f64 / started.elapsed().as_secs_f64(), received)
        }
        Err(_) => (0.0, 0),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let payload: usize = args.next().map_or(64, |a| a.parse().expect("PAYLOAD"));

    let dir = std::env::temp_dir().join(format!("pigeon-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");

    let kinds = [
        ListenerProtocol::Mqtt,
        ListenerProtocol::Mqtts,
        ListenerProtocol::Ws,
        ListenerProtocol::Wss,
    ];
    let listeners = kinds
        .iter()
        .map(|&kind| {
            let mut l = ListenerConfig::new("127.0.0.1:0".parse().expect("address"), kind);
            if kind.is_tls() {
                l.tls_cert = Some(dir.join("server.crt"));
                l.tls_key = Some(dir.join("server.key"));
            }
            l
        })
        .collect();
    let mut config = Config {
        listeners,
        http: None,
        storage: StorageConfig {
            backend: StorageBackend::Memory,
            ..Default::default()
        },
        ..Config::default()
    };
    // Room for a whole QoS 0 run in the subscriber's queue: the figure is throughput, not drops.
    config.limits.max_queued_messages = messages;
    config.limits.max_queued_bytes = messages * (payload + 64);
    config.limits.max_inflight = WINDOW as u16;
    let server = Server::bind(config).await.expect("bind");
    let addrs = server.local_addrs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );

    println!("{messages} messages of {payload} bytes, 1 publisher -> 1 subscriber, same transport");
    println!("| transport | QoS 0 msg/s | QoS 1 msg/s |");
    println!("|---|---|---|");
    for (kind, addr) in kinds.iter().zip(&addrs) {
        let (q0, n0) = run(*kind, *addr, &tls, QoS::AtMostOnce, messages, payload).await;
        let (q1, n1) = run(*kind, *addr, &tls, QoS::AtLeastOnce, messages, payload).await;
        assert_eq!((n0, n1), (messages, messages), "{kind}: messages lost");
        println!("| {kind} | {q0:.0} | {q1:.0} |");
    }
    let _ = stop.send(());
    let _ = task.await;
    let _ = std::fs::remove_dir_all(&dir);
}
