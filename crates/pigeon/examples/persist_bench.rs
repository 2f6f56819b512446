//! Persistence benchmark, Pigeon next to mosquitto in one run: QoS 1 messages per second into
//! offline persistent sessions, bytes on disk per queued message, the time to restart with the
//! queue in the store, and the drain rate when the subscriber comes back.
//!
//! ```sh
//! cargo run --release -p pigeon --example persist_bench -- 1000000 1
//! ```
//! Arguments: messages (default 200000), offline subscribers (default 1), rounds (default 1).
//! Needs `target/release/pigeon` (built if missing) and `/usr/sbin/mosquitto`. Every broker runs
//! on 127.0.0.1 with its store in a fresh temporary directory; everything stops by itself.

use bytes::{Bytes, BytesMut};
use pigeon_codec::{
    encode, ByteStr, Connect, Decoder, Packet, Protocol, PubResp, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "bench/persist";
const WINDOW: usize = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Pigeon,
    Mosquitto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pigeon => "pigeon",
            Kind::Mosquitto => "mosquitto",
        }
    }

    fn start(self, dir: &Path, port: u16) -> Child {
        match self {
            Kind::Pigeon => {
                let conf = dir.join("pigeon.toml");
                std::fs::write(
                    &conf,
                    format!(
                        "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[storage]\nbackend = \"embedded\"\npath = \"{}\"\nsync = \"always\"\n\n[limits]\nmax_queued_messages = 5000000\nmax_queued_bytes = 4000000000\nmax_stored_bytes = 0\nmax_inflight = 1000\n",
                        dir.join("data").display()
                    ),
                )
                .expect("write pigeon.toml");
                Command::new(pigeon_binary())
                    .arg("--config")
                    .arg(&conf)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start pigeon")
            }
            Kind::Mosquitto => {
                let conf = dir.join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 0\nuser root\nmax_queued_messages 5000000\nmax_inflight_messages 1000\nlog_type error\n",
                        dir.display()
                    ),
                )
                .expect("write mosquitto.conf");
                Command::new("/usr/sbin/mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .spawn()
                    .expect("start mosquitto")
            }
        }
    }

    /// Bytes the broker's store occupies.
    fn store_bytes(self, dir: &Path) -> u64 {
        let file = match self {
            Kind::Pigeon => dir.join("data").join("pigeon.redb"),
            Kind::Mosquitto => dir.join("mosquitto.db"),
        };
        std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
    }
}

fn pigeon_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = root.join("target/release/pigeon");
    if !bin.exists() {
        let ok = Command::new("cargo")
            .args(["build", "--release", "-p", "pigeon"])
            .current_dir(&root)
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building the pigeon binary failed");
    }
    bin
}

fn stop(mut child: Child) {
    // SIGTERM: mosquitto writes its database at shutdown; Pigeon flushes its store.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "broker did not stop in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_listening(port: u16) -> Duration {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "broker did not listen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
}

impl Client {
    async fn connect(port: u16, id: &str, clean: bool) -> (Client, bool) {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client {
            stream,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(Protocol::V3_1_1, 1 << 24),
        };
        let connect = Connect {
            protocol: Protocol::V3_1_1,
            clean_start: clean,
            keep_alive: 600,
            client_id: ByteStr::from(id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        c.queue(&Packet::Connect(Box::new(connect)));
        c.flush().await;
        match c.recv().await {
            Packet::ConnAck(a) => (c, a.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn queue(&mut self, p: &Packet) {
        encode(p, Protocol::V3_1_1, &mut self.wbuf);
    }

    async fn flush(&mut self) {
        self.stream.write_all(&self.wbuf).await.expect("write");
        self.wbuf.clear();
    }

    async fn recv(&mut self) -> Packet {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf).expect("valid packets") {
                return p;
            }
            let n = tokio::time::timeout(
                Duration::from_secs(120),
                self.stream.read_buf(&mut self.rbuf),
            )
            .await
            .expect("broker answers within 120 s")
            .expect("read");
            assert!(n > 0, "broker closed the connection");
        }
    }
}

struct Figures {
    publish_rate: f64,
    store_bytes: u64,
    restart: Duration,
    resume: Duration,
    drain_rate: f64,
}

async fn run(kind: Kind, messages: usize, subscribers: usize) -> Figures {
    let dir = std::env::temp_dir().join(format!(
        "pigeon-persist-bench-{}-{}",
        kind.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();

    let broker = kind.start(&dir, port);
    wait_listening(port).await;
    for s in 0..subscribers {
        let (mut c, _) = Client::connect(port, &format!("offline-{s}"), false).await;
        c.queue(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                ByteStr::from(TOPIC),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        }));
        c.flush().await;
        assert!(matches!(c.recv().await, Packet::SubAck(_)));
    }
    // Let the subscribers' disconnects land before publishing.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut p, _) = Client::connect(port, "publisher", true).await;
    let payload = Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut next_id: u16 = 1;
    while acked < messages {
        while sent < messages && sent - acked < WINDOW {
            p.queue(&Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: ByteStr::from_static(TOPIC),
                packet_id: next_id,
                payload: payload.clone(),
                ..Default::default()
            }));
            next_id = next_id % 65_000 + 1;
            sent += 1;
        }
        p.flush().await;
        match p.recv().await {
            Packet::PubAck(_) => acked += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let publish_rate = messages as f64 / start.elapsed().as_secs_f64();
    drop(p);
    stop(broker);
    let store_bytes = kind.store_bytes(&dir);

    let spawned = Instant::now();
    let broker = kind.start(&dir, port);
    wait_listening(port).await;
    let restart = spawned.elapsed();
    let (mut sub, present) = Client::connect(port, "offline-0", false).await;
    let resume = spawned.elapsed();
    assert!(present, "{}: the session survived the restart", kind.name());
    let start = Instant::now();
    let mut got = 0usize;
    while got < messages {
        match sub.recv().await {
            Packet::Publish(m) => {
                got += 1;
                sub.queue(&Packet::PubAck(PubResp {
                    packet_id: m.packet_id,
                    ..Default::default()
                }));
                if sub.wbuf.len() > 8192 {
                    sub.flush().await;
                }
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        if sub.rbuf.is_empty() {
            sub.flush().await;
        }
    }
    let drain_rate = messages as f64 / start.elapsed().as_secs_f64();
    drop(sub);
    stop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    Figures {
        publish_rate,
        store_bytes,
        restart,
        resume,
        drain_rate,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let messages = args.first().copied().unwrap_or(200_000);
    let subscribers = args.get(1).copied().unwrap_or(1);
    let rounds = args.get(2).copied().unwrap_or(1);
    println!("{messages} QoS 1 messages of 64 bytes into {subscribers} offline persistent session(s); {rounds} round(s)");
    println!("| broker | publish msg/s | store bytes | bytes per queued message | listening after restart | session back after restart | drain msg/s |");
    println!("|---|---|---|---|---|---|---|");
    for _ in 0..rounds {
        for kind in [Kind::Pigeon, Kind::Mosquitto] {
            let f = run(kind, messages, subscribers).await;
            println!(
                "| {} | {:.0} | {} | {:.1} | {:.2} s | {:.2} s | {:.0} |",
                kind.name(),
                f.publish_rate,
                f.store_bytes,
                f.store_bytes as f64 / (messages * subscribers) as f64,
                f.restart.as_secs_f64(),
                f.resume.as_secs_f64(),
                f.drain_rate
            );
        }
    }
}
