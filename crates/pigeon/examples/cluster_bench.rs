//! Cluster benchmark: cross-node messages per second through two Pigeon nodes next to two aedes
//! nodes (aedes 1.x + mqemitter-redis) on the same Redis, in one run, and the Redis commands each
//! delivered message costs.
//!
//! ```sh
//! cargo build --release -p pigeon
//! cargo run --release -p pigeon --example cluster_bench -- --rounds 3 --duration 5
//! ```
//! Options: `--rounds N` (3), `--duration SECONDS` measured (5), `--warmup SECONDS` before it (1),
//! `--publishers P` (4), `--window W` QoS 1 messages in flight per publisher (64), `--qos 0,1`,
//! `--kinds pigeon,aedes`, `--pigeon-threads N` (`--threads` of the Pigeon nodes; default one
//! worker per core).
//!
//! One `redis-server` on a free 127.0.0.1 port (`--save '' --appendonly no`) serves every run.
//! Each run starts two fresh nodes of one kind on it (A and B), subscribes one MQTT 3.1.1 client
//! to `bench/#` on B, waits until a probe published on A arrives at B (so B's Redis subscription
//! is in place), then P publishers on A send 64-byte payloads on `bench/<i>` as fast as the flow
//! allows (QoS 0: batches of 64 PUBLISH per write; QoS 1: `--window` awaiting PUBACK each) for
//! warmup + duration seconds. Every payload carries its send time, so loss is counted on the
//! messages sent in the measured window. After the publishers stop, the subscriber drains until
//! 1 s passes without a message. `INFO commandstats` before the publishers start and after the
//! drain gives the Redis commands per delivered message (our own INFO calls not counted).
//! Both nodes stop after each run; the kinds take turns: pigeon, aedes, pigeon, aedes...
//!
//! Needs `target/release/pigeon`, `redis-server` and `node` with `tests/cluster/node_modules`
//! (`npm ci` in tests/cluster). Prints one JSON line per run, then a table of medians (lowest and
//! highest in brackets) with the ratio pigeon / aedes. A watchdog kills every process it started
//! and exits if the whole run overruns; so do a panic and Ctrl-C.

use bytes::{Bytes, BytesMut};
use pigeon_codec::{
    encode, ByteStr, Connect, Decoder, Packet, Protocol, PubResp, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PAYLOAD: usize = 64;
const BATCH: usize = 64;

// ---------------------------------------------------------------- processes

/// Every process started and not yet stopped, for the watchdog, the panic hook and Ctrl-C.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: u32) {
    PIDS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: u32) {
    PIDS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

fn kill_all() {
    let pids: Vec<u32> = std::mem::take(&mut *PIDS.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in pids {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process that is killed when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = cmd
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        register(child.id());
        let stdin = child.stdin.take();
        Proc { child, stdin, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin (aedes exits on that), sends SIGTERM, and kills after `grace`.
    fn stop(mut self, grace: Duration) {
        self.stdin = None;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of its stderr that look like warnings or errors.
    fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("warn") || l.contains("error") || l.contains("fail")
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister(self.child.id());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn wait_listening(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- Redis

/// One command, answered with a bulk or simple string (enough for PING and INFO).
async fn redis_command(port: u16, args: &[&str]) -> String {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("redis connect in 5 s")
    .expect("redis connect");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.expect("redis write");
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 16384];
            let n = s.read(&mut chunk).await.expect("redis read");
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                match buf[0] {
                    b'+' => return String::from_utf8_lossy(&buf[1..end]).into_owned(),
                    b'$' => {
                        let len: usize = std::str::from_utf8(&buf[1..end])
                            .expect("length")
                            .parse()
                            .expect("length");
                        if buf.len() >= end + 2 + len {
                            return String::from_utf8_lossy(&buf[end + 2..end + 2 + len])
                                .into_owned();
                        }
                    }
                    _ => panic!("redis: {}", String::from_utf8_lossy(&buf)),
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("redis answers in 5 s")
}

#[derive(Default, Clone)]
struct RedisStats {
    calls: HashMap<String, u64>,
    fields: HashMap<String, String>,
}

impl RedisStats {
    async fn take(port: u16) -> RedisStats {
        let text = redis_command(port, &["INFO", "commandstats", "stats", "clients"]).await;
        let mut st = RedisStats::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            if let Some(cmd) = k.strip_prefix("cmdstat_") {
                let calls = v
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                st.calls.insert(cmd.to_owned(), calls);
            } else {
                st.fields.insert(k.to_owned(), v.to_owned());
            }
        }
        st
    }

    fn calls(&self, cmd: &str) -> u64 {
        self.calls.get(cmd).copied().unwrap_or(0)
    }

    /// All commands but our own INFO calls.
    fn total(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(k, _)| k.as_str() != "info")
            .map(|(_, v)| v)
            .sum()
    }

    fn field(&self, k: &str) -> u64 {
        self.fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

// ---------------------------------------------------------------- nodes

/// One run's named figures.
type Figures = Vec<(&'static str, f64)>;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Pigeon,
    Aedes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pigeon => "pigeon",
            Kind::Aedes => "aedes",
        }
    }

    async fn start(
        self,
        dir: &Path,
        node: &str,
        port: u16,
        redis_port: u16,
        pigeon_threads: Option<usize>,
    ) -> Proc {
        let redis_url = format!("redis://127.0.0.1:{redis_port}/");
        let log = dir.join(format!("{}-{node}.log", self.name()));
        match self {
            Kind::Pigeon => {
                let conf = dir.join(format!("pigeon-{node}.toml"));
                std::fs::write(
                    &conf,
                    format!(
                        "[[listener]]\nbind = \"127.0.0.1:{port}\"\n[storage]\nbackend = \"memory\"\n[cluster]\nredis_url = \"{redis_url}\"\nnode_id = \"{node}\"\n[limits]\nmax_queued_messages = 100000\n"
                    ),
                )
                .expect("write config");
                let mut cmd = Command::new(root().join("target/release/pigeon"));
                if let Some(n) = pigeon_threads {
                    cmd.arg("--threads").arg(n.to_string());
                }
                let p = Proc::spawn(
                    cmd.arg("--config")
                        .arg(&conf)
                        .env("RUST_LOG", "warn")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null()),
                    log,
                );
                wait_listening(port, "pigeon").await;
                p
            }
            Kind::Aedes => {
                let mut p = Proc::spawn(
                    Command::new("node")
                        .arg(root().join("tests/cluster/aedes-node.js"))
                        .arg(port.to_string())
                        .arg(&redis_url)
                        .current_dir(root().join("tests/cluster"))
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped()),
                    log,
                );
                let out = p.child.stdout.take().expect("stdout");
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if line.starts_with("aedes ready") {
                            let _ = tx.send(line);
                        }
                    }
                });
                let line =
                    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
                        .await
                        .expect("join");
                assert!(
                    line.is_ok(),
                    "aedes node did not print `aedes ready` within 20 s (log {})",
                    p.log.display()
                );
                wait_listening(port, "aedes").await;
                p
            }
        }
    }
}

// ---------------------------------------------------------------- MQTT client

struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
}

impl Client {
    async fn connect(port: u16, id: &str) -> Client {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .expect("connect in 5 s")
        .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client {
            stream,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::with_capacity(1 << 16),
            decoder: Decoder::with_protocol(Protocol::V3_1_1, 1 << 20),
        };
        c.queue(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V3_1_1,
            clean_start: true,
            keep_alive: 600,
            client_id: ByteStr::from(id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        })));
        c.flush().await;
        match c.recv(Duration::from_secs(10)).await {
            Some(Packet::ConnAck(a)) => {
                assert!(
                    a.code == ReasonCode::SUCCESS,
                    "CONNACK refused: {:?}",
                    a.code
                )
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    fn queue(&mut self, p: &Packet) {
        encode(p, Protocol::V3_1_1, &mut self.wbuf);
    }

    async fn flush(&mut self) {
        if !self.wbuf.is_empty() {
            tokio::time::timeout(Duration::from_secs(30), self.stream.write_all(&self.wbuf))
                .await
                .expect("write within 30 s")
                .expect("write");
            self.wbuf.clear();
        }
    }

    /// The next packet, or None when nothing arrives within `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<Packet> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf).expect("valid packets") {
                return Some(p);
            }
            match tokio::time::timeout(wait, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return None,
                Ok(r) => assert!(r.expect("read") > 0, "broker closed the connection"),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        }));
        self.flush().await;
        match self.recv(Duration::from_secs(10)).await {
            Some(Packet::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn publish(topic: &ByteStr, qos: QoS, packet_id: u16, stamp_us: u64) -> Packet {
    let mut payload = vec![b'x'; PAYLOAD];
    payload[..8].copy_from_slice(&stamp_us.to_le_bytes());
    Packet::Publish(Publish {
        qos,
        topic: topic.clone(),
        packet_id,
        payload: Bytes::from(payload),
        ..Default::default()
    })
}

// ---------------------------------------------------------------- one run

#[derive(Clone, Copy)]
struct Params {
    duration: u64,
    warmup: u64,
    publishers: usize,
    window: usize,
    /// `--threads` for the Pigeon nodes (their default: one worker per core).
    pigeon_threads: Option<usize>,
}

struct Published {
    total: u64,
    in_window: u64,
    acked: u64,
}

/// A publisher on node A: sends until `end`, stamping each payload with µs since `t0`.
async fn publisher(
    port: u16,
    i: usize,
    qos: QoS,
    p: Params,
    t0: Arc<Mutex<Option<Instant>>>,
    go: Arc<tokio::sync::Barrier>,
) -> Published {
    let mut c = Client::connect(port, &format!("bench-pub-{i}")).await;
    let topic = ByteStr::from(format!("bench/{i}").as_str());
    go.wait().await;
    let t0 = t0.lock().expect("t0").expect("t0 set");
    let (w0, w1) = (p.warmup * 1_000_000, (p.warmup + p.duration) * 1_000_000);
    let mut out = Published {
        total: 0,
        in_window: 0,
        acked: 0,
    };
    let mut next_id: u16 = 1;
    loop {
        let now = t0.elapsed().as_micros() as u64;
        if now >= w1 {
            break;
        }
        let room = match qos {
            QoS::AtMostOnce => BATCH,
            _ => p.window - (out.total - out.acked) as usize,
        };
        for _ in 0..room.min(BATCH) {
            let id = if qos == QoS::AtMostOnce { 0 } else { next_id };
            next_id = next_id % 65_000 + 1;
            c.queue(&publish(&topic, qos, id, now));
            out.total += 1;
            if (w0..w1).contains(&now) {
                out.in_window += 1;
            }
        }
        c.flush().await;
        if qos != QoS::AtMostOnce {
            // With the window full, wait for a PUBACK; take every one already there.
            let mut wait = if out.total - out.acked >= p.window as u64 {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
            loop {
                match c.recv(wait).await {
                    Some(Packet::PubAck(_)) => {
                        out.acked += 1;
                        wait = Duration::ZERO;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            assert!(
                out.total - out.acked < p.window as u64,
                "no PUBACK within 10 s"
            );
        }
    }
    // QoS 1: collect the outstanding PUBACKs (bounded).
    let until = Instant::now() + Duration::from_secs(5);
    while qos != QoS::AtMostOnce && out.acked < out.total && Instant::now() < until {
        match c.recv(Duration::from_millis(500)).await {
            Some(Packet::PubAck(_)) => out.acked += 1,
            Some(_) => {}
            None => break,
        }
    }
    if qos == QoS::AtMostOnce {
        out.acked = out.total;
    }
    out
}

struct Received {
    total: u64,
    stamped_in_window: u64,
    per_second: Vec<u64>,
}

/// The subscriber on node B: counts what arrives until `stop` is set and 1 s passes quietly
/// (or 15 s after `stop`).
async fn subscriber(
    mut c: Client,
    qos: QoS,
    p: Params,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Received {
    let (w0, w1) = (p.warmup * 1_000_000, (p.warmup + p.duration) * 1_000_000);
    let mut r = Received {
        total: 0,
        stamped_in_window: 0,
        per_second: vec![0; p.duration as usize],
    };
    let mut quiet_since = Instant::now();
    let mut stop_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let at = *stop_at.get_or_insert_with(Instant::now);
            if quiet_since.elapsed() > Duration::from_secs(1)
                || at.elapsed() > Duration::from_secs(15)
            {
                break;
            }
        }
        match c.recv(Duration::from_millis(100)).await {
            Some(Packet::Publish(m)) => {
                if qos != QoS::AtMostOnce && m.qos != QoS::AtMostOnce {
                    c.queue(&Packet::PubAck(PubResp {
                        packet_id: m.packet_id,
                        ..Default::default()
                    }));
                }
                if m.payload.len() == PAYLOAD && m.topic.as_bytes()[..] != b"bench/probe"[..] {
                    quiet_since = Instant::now();
                    r.total += 1;
                    let now = t0.elapsed().as_micros() as u64;
                    if (w0..w1).contains(&now) {
                        r.per_second[((now - w0) / 1_000_000) as usize] += 1;
                    }
                    let stamp = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                    if (w0..w1).contains(&stamp) {
                        r.stamped_in_window += 1;
                    }
                }
                if c.rbuf.is_empty() || c.wbuf.len() > 8192 {
                    c.flush().await;
                }
            }
            Some(_) => {}
            None => c.flush().await,
        }
    }
    r
}

struct RunResult {
    json: String,
    figures: Vec<(&'static str, f64)>,
}

async fn run(
    kind: Kind,
    qos: QoS,
    round: usize,
    p: Params,
    redis: &Proc,
    redis_port: u16,
    dir: &Path,
) -> RunResult {
    let (port_a, port_b) = (free_port(), free_port());
    let a = kind
        .start(dir, "a", port_a, redis_port, p.pigeon_threads)
        .await;
    let b = kind
        .start(dir, "b", port_b, redis_port, p.pigeon_threads)
        .await;

    let mut sub = Client::connect(port_b, "bench-sub").await;
    sub.subscribe("bench/#", qos).await;
    // B's Redis subscription is in place once a probe published on A arrives.
    let mut probe = Client::connect(port_a, "bench-probe").await;
    let probe_topic = ByteStr::from("bench/probe");
    let started = Instant::now();
    let mut arrived = false;
    while !arrived && started.elapsed() < Duration::from_secs(15) {
        probe.queue(&Packet::Publish(Publish {
            topic: probe_topic.clone(),
            payload: Bytes::from_static(b"probe"),
            ..Default::default()
        }));
        probe.flush().await;
        while let Some(pk) = sub.recv(Duration::from_millis(200)).await {
            if let Packet::Publish(m) = pk {
                if m.topic.as_bytes()[..] == b"bench/probe"[..] {
                    arrived = true;
                }
            }
        }
    }
    assert!(arrived, "{}: a probe on A never reached B", kind.name());
    drop(probe);

    let t0_slot = Arc::new(Mutex::new(None));
    let go = Arc::new(tokio::sync::Barrier::new(p.publishers + 1));
    let mut pubs = Vec::new();
    for i in 0..p.publishers {
        pubs.push(tokio::spawn(publisher(
            port_a,
            i,
            qos,
            p,
            Arc::clone(&t0_slot),
            Arc::clone(&go),
        )));
    }
    // Let the publishers connect before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = RedisStats::take(redis_port).await;
    let t0 = Instant::now();
    *t0_slot.lock().expect("t0") = Some(t0);
    let stop = Arc::new(AtomicBool::new(false));
    let sub_task = tokio::spawn(subscriber(sub, qos, p, t0, Arc::clone(&stop)));
    go.wait().await;

    let pids = [a.pid(), b.pid(), redis.pid(), std::process::id()];
    tokio::time::sleep_until((t0 + Duration::from_secs(p.warmup)).into()).await;
    let cpu0: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    tokio::time::sleep_until((t0 + Duration::from_secs(p.warmup + p.duration)).into()).await;
    let cpu1: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let cpu: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(x, y)| (y - x) / p.duration as f64)
        .collect();

    let mut sent = Published {
        total: 0,
        in_window: 0,
        acked: 0,
    };
    for h in pubs {
        let one = h.await.expect("publisher");
        sent.total += one.total;
        sent.in_window += one.in_window;
        sent.acked += one.acked;
    }
    stop.store(true, Ordering::Relaxed);
    let got = sub_task.await.expect("subscriber");
    let after = RedisStats::take(redis_port).await;

    let warnings: Vec<String> = a.warnings().into_iter().chain(b.warnings()).collect();
    a.stop(Duration::from_secs(5));
    b.stop(Duration::from_secs(5));

    let d = p.duration as f64;
    let delivered = got.total.max(1) as f64;
    let publishes = after.calls("publish") - before.calls("publish");
    let commands = after.total() - before.total();
    let received_rate = got.per_second.iter().sum::<u64>() as f64 / d;
    let loss = if sent.in_window == 0 {
        0.0
    } else {
        100.0 * (1.0 - got.stamped_in_window as f64 / sent.in_window as f64)
    };
    let mut other: Vec<(String, u64)> = after
        .calls
        .iter()
        .map(|(k, v)| (k.clone(), v - before.calls(k)))
        .filter(|(k, v)| *v > 0 && k != "publish" && k != "info")
        .collect();
    other.sort();
    let net_out = after.field("total_net_output_bytes") - before.field("total_net_output_bytes");
    let net_in = after.field("total_net_input_bytes") - before.field("total_net_input_bytes");
    let figures = vec![
        ("received msg/s at B", received_rate),
        ("sent msg/s to A", sent.in_window as f64 / d),
        ("loss in window %", loss),
        (
            "Redis PUBLISH per delivered msg",
            publishes as f64 / delivered,
        ),
        (
            "Redis commands per delivered msg",
            commands as f64 / delivered,
        ),
        (
            "Redis bytes in+out per delivered msg",
            (net_in + net_out) as f64 / delivered,
        ),
        ("CPU node A (cores)", cpu[0]),
        ("CPU node B (cores)", cpu[1]),
        ("CPU redis (cores)", cpu[2]),
        ("CPU load generator (cores)", cpu[3]),
    ];
    let json = format!(
        concat!(
            "{{\"round\":{},\"kind\":\"{}\",\"qos\":{},\"publishers\":{},\"duration_s\":{},",
            "\"received_per_s\":{:.0},\"per_second\":{:?},\"sent_in_window\":{},",
            "\"received_of_window\":{},\"loss_pct\":{:.3},\"sent_total\":{},\"acked_total\":{},",
            "\"received_total\":{},\"lost_total\":{},\"redis_publish\":{},\"redis_commands\":{},",
            "\"other_commands\":{:?},\"publish_per_msg\":{:.4},\"commands_per_msg\":{:.4},",
            "\"redis_net_in\":{},\"redis_net_out\":{},\"cpu_cores\":{{\"a\":{:.2},\"b\":{:.2},",
            "\"redis\":{:.2},\"generator\":{:.2}}},\"loadavg\":{:?},\"node_warnings\":{},",
            "\"first_warning\":{:?}}}"
        ),
        round,
        kind.name(),
        qos as u8,
        p.publishers,
        p.duration,
        received_rate,
        got.per_second,
        sent.in_window,
        got.stamped_in_window,
        loss,
        sent.total,
        sent.acked,
        got.total,
        sent.total as i64 - got.total as i64,
        publishes,
        commands,
        other,
        publishes as f64 / delivered,
        commands as f64 / delivered,
        net_in,
        net_out,
        cpu[0],
        cpu[1],
        cpu[2],
        cpu[3],
        loadavg(),
        warnings.len(),
        warnings.first().cloned().unwrap_or_default(),
    );
    RunResult { json, figures }
}

// ---------------------------------------------------------------- main

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v);
        let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn main() {
    let mut p = Params {
        duration: 5,
        warmup: 1,
        publishers: 4,
        window: 64,
        pigeon_threads: None,
    };
    let mut kinds = vec![Kind::Pigeon, Kind::Aedes];
    let mut rounds = 3usize;
    let mut qos_list = vec![QoS::AtMostOnce, QoS::AtLeastOnce];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        };
        match flag.as_str() {
            "--rounds" => rounds = val().parse().expect("--rounds N"),
            "--duration" => p.duration = val().parse().expect("--duration SECONDS"),
            "--warmup" => p.warmup = val().parse().expect("--warmup SECONDS"),
            "--publishers" => p.publishers = val().parse().expect("--publishers N"),
            "--window" => p.window = val().parse().expect("--window N"),
            "--pigeon-threads" => {
                p.pigeon_threads = Some(val().parse().expect("--pigeon-threads N"))
            }
            "--kinds" => {
                kinds = val()
                    .split(',')
                    .map(|k| match k {
                        "pigeon" => Kind::Pigeon,
                        "aedes" => Kind::Aedes,
                        _ => panic!("--kinds takes pigeon, aedes or pigeon,aedes"),
                    })
                    .collect()
            }
            "--qos" => {
                qos_list = val()
                    .split(',')
                    .map(|q| match q {
                        "0" => QoS::AtMostOnce,
                        "1" => QoS::AtLeastOnce,
                        _ => panic!("--qos takes 0, 1 or 0,1"),
                    })
                    .collect()
            }
            other => panic!("unknown option {other}"),
        }
    }
    assert!(p.duration >= 1 && p.publishers >= 1 && p.window >= 1 && rounds >= 1);
    assert!(
        root().join("target/release/pigeon").exists(),
        "build the broker first: cargo build --release -p pigeon"
    );

    // Whatever happens, nothing we started outlives us.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        default_hook(info);
    }));
    let runs = rounds * qos_list.len() * kinds.len();
    let budget = Duration::from_secs(60 + runs as u64 * (p.warmup + p.duration + 60));
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("cluster_bench: overran {budget:?}; killing everything it started");
        kill_all();
        std::process::exit(3);
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                kill_all();
                std::process::exit(130);
            }
        });
        let dir = std::env::temp_dir().join(format!("pigeon-cluster-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");

        let redis_port = free_port();
        let redis = Proc::spawn(
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--logfile", ""])
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
            dir.join("redis.log"),
        );
        wait_listening(redis_port, "redis-server").await;
        let version = redis_command(redis_port, &["INFO", "server"]).await;
        let version = version
            .lines()
            .find_map(|l| l.trim().strip_prefix("redis_version:"))
            .unwrap_or("?")
            .to_owned();
        let node_version = Command::new("node")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        eprintln!("commit {commit}, load average {}", loadavg());
        eprintln!(
            "redis {version} on 127.0.0.1:{redis_port}, node {node_version}; {rounds} rounds, QoS {:?}, {} publishers, {} s warmup + {} s measured, QoS 1 window {}",
            qos_list.iter().map(|q| *q as u8).collect::<Vec<_>>(),
            p.publishers,
            p.warmup,
            p.duration,
            p.window
        );

        let mut results: HashMap<(u8, Kind), Vec<Figures>> = HashMap::new();
        for round in 1..=rounds {
            for &qos in &qos_list {
                for &kind in &kinds {
                    let r = run(kind, qos, round, p, &redis, redis_port, &dir).await;
                    println!("{}", r.json);
                    results.entry((qos as u8, kind)).or_default().push(r.figures);
                }
            }
        }

        let both = kinds.len() == 2;
        println!();
        let heads: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        println!(
            "| QoS | figure | {} |{}",
            heads.join(" | "),
            if both { " pigeon/aedes |" } else { "" }
        );
        println!(
            "|---|---|{}{}",
            "--:|".repeat(kinds.len()),
            if both { "--:|" } else { "" }
        );
        for &qos in &qos_list {
            let q = qos as u8;
            let names: Vec<&str> = results[&(q, kinds[0])][0].iter().map(|f| f.0).collect();
            for (i, name) in names.iter().enumerate() {
                let col = |k: Kind| -> (f64, f64, f64) {
                    let v: Vec<f64> = results[&(q, k)].iter().map(|r| r[i].1).collect();
                    median_min_max(&v)
                };
                let cells: Vec<String> = kinds
                    .iter()
                    .map(|&k| {
                        let (m, lo, hi) = col(k);
                        format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi))
                    })
                    .collect();
                let ratio = if both {
                    let (pm, am) = (col(Kind::Pigeon).0, col(Kind::Aedes).0);
                    if am.abs() > 1e-9 && !name.starts_with("loss") {
                        format!(" {:.2} |", pm / am)
                    } else {
                        " n/a |".to_owned()
                    }
                } else {
                    String::new()
                };
                println!("| {q} | {name} | {} |{ratio}", cells.join(" | "));
            }
        }
        redis.stop(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
    });
    kill_all();
}
