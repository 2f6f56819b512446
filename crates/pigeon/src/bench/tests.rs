//! End-to-end runs of the scenarios, short and small, against an in-process Pigeon on port 0.

use super::client::ClientOptions;
use super::traffic::{self, Plan};
use super::*;
use pigeon_server::config::{Config, StorageBackend};
use pigeon_server::Server;
use std::collections::HashSet;
use tokio::sync::oneshot;

/// Serves on 127.0.0.1:0 until the returned sender is dropped.
async fn broker() -> (SocketAddr, oneshot::Sender<()>) {
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("valid address");
    // Nothing on disk: the default store is a file in the working directory, one per process.
    config.storage.backend = StorageBackend::Memory;
    // Only the MQTT listener: the default WebSocket and HTTP ones bind fixed ports.
    config.listeners.truncate(1);
    config.http = None;
    let server = Server::bind(config).await.expect("port 0 binds");
    let addr = server.local_addrs()[0];
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx)
}

fn settings(addr: SocketAddr) -> Settings {
    Settings {
        client: ClientOptions {
            addr,
            protocol: Protocol::V3_1_1,
            keep_alive: KEEP_ALIVE,
            max_packet_size: 1 << 20,
            buf_size: TRAFFIC_BUF,
            send_buffer: None,
            open_file_limit: None,
        },
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        count: None,
        inflight: 16,
        payload: 64,
        rate: None,
        client_id_prefix: format!("bench-test-{}", std::process::id()),
    }
}

fn fanin(qos: QoS) -> Plan {
    Plan {
        filters: vec!["bench/+".into()],
        topics: vec!["bench/0".into(), "bench/1".into()],
        fanout: 1,
        qos,
        latency: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_fanin_accounts_for_every_window_message() {
    let (addr, _stop) = broker().await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let out = traffic::run(fanin(qos), &settings(addr))
            .await
            .expect("run completes");
        assert!(out.sent > 0);
        assert_eq!(out.expected, out.sent);
        // A broker may drop what overflows the subscriber's queue, and only that.
        assert!(out.received > 0 && out.received <= out.sent, "{out:?}");
        assert_eq!(out.errors, 0);
        assert!(out.recv_secs > 0.0 && out.send_secs > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_fanin_qos1_delivers_every_window_message() {
    let (addr, _stop) = broker().await;
    let mut settings = settings(addr);
    settings.rate = Some(5000.0);
    let out = traffic::run(fanin(QoS::AtLeastOnce), &settings)
        .await
        .expect("run completes");
    assert!((2250..=2750).contains(&out.sent), "sent {}", out.sent);
    assert_eq!(out.received, out.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_bounds_a_fanout_run() {
    let (addr, _stop) = broker().await;
    let plan = Plan {
        filters: vec!["bench/fanout".into(); 3],
        topics: vec!["bench/fanout".into()],
        fanout: 3,
        qos: QoS::AtLeastOnce,
        latency: false,
    };
    let mut settings = settings(addr);
    settings.count = Some(100);
    settings.duration = Duration::from_secs(10);
    let out = traffic::run(plan, &settings).await.expect("run completes");
    assert_eq!(out.sent, 100);
    assert_eq!(out.expected, 300);
    assert_eq!(out.received, 300);
    assert!(
        out.send_secs < 5.0,
        "the count, not the duration, ended the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_p2p_keeps_the_rate_and_measures_latency() {
    let (addr, _stop) = broker().await;
    let topics: Vec<String> = (0..4).map(|i| format!("bench/p2p/{i}")).collect();
    let plan = Plan {
        filters: topics.clone(),
        topics,
        fanout: 1,
        qos: QoS::AtLeastOnce,
        latency: true,
    };
    let mut settings = settings(addr);
    settings.rate = Some(2000.0);
    let out = traffic::run(plan, &settings).await.expect("run completes");
    // 2000 msg/s for 0.5 s.
    assert!((900..=1100).contains(&out.sent), "sent {}", out.sent);
    assert_eq!(out.received, out.sent);
    let latency = out.latency.expect("p2p records latency");
    assert_eq!(latency.total(), out.received);
    assert!(latency.quantile(0.5).expect("samples") < 1_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_opens_and_closes_connections() {
    let (addr, _stop) = broker().await;
    let args = BenchArgs {
        scenario: Scenario::Conns,
        addr: addr.to_string(),
        protocol: Protocol::V3_1_1,
        duration: 5.0,
        warmup: 0.0,
        count: None,
        qos: None,
        publishers: 1,
        subscribers: 1,
        pairs: 1,
        connections: 50,
        concurrency: 8,
        inflight: 1,
        payload: 64,
        rate: None,
        pid: Some(std::process::id()),
        per_source: Some(20),
    };
    // Connections to this port closed before the run (a broker of an earlier test may have
    // listened on it) are not this run's.
    let earlier = time_wait(addr.port());
    run(args)
        .await
        .expect("50 connections from three source addresses");
    // The broker closed each connection on its DISCONNECT and the generator closed after it, so
    // the minute of TIME_WAIT is the broker's, and the generator's local ports are free for the
    // next run at once.
    let (broker_side, generator_side) = time_wait(addr.port());
    let new_on_generator_side = generator_side.difference(&earlier.1).count();
    assert_eq!(new_on_generator_side, 0, "the generator closed first");
    let broker_side = broker_side.difference(&earlier.0).count();
    assert!(
        broker_side >= 45,
        "{broker_side} of 50 in TIME_WAIT on the broker's side"
    );
}

/// The address pairs of connections to or from `port` in TIME_WAIT (/proc/net/tcp): (those on
/// the side of `port`, those on the other side).
fn time_wait(port: u16) -> (HashSet<String>, HashSet<String>) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("Linux lists its TCP sockets");
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let (mut local, mut remote) = (HashSet::new(), HashSet::new());
    for row in table.lines().skip(1) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        // 06 is TIME_WAIT (include/net/tcp_states.h).
        if fields.len() < 4 || fields[3] != "06" {
            continue;
        }
        let pair = format!("{} {}", fields[1], fields[2]);
        if port_of(fields[1]) == Some(port) {
            local.insert(pair);
        } else if port_of(fields[2]) == Some(port) {
            remote.insert(pair);
        }
    }
    (local, remote)
}
