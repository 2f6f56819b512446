//! `pigeon bench`: an MQTT load generator built on our codec, aimed at any broker.
//!
//! A scenario connects its subscribers (SUBACKed) before any publisher starts, publishes for
//! `--warmup` plus `--duration` seconds (or until `--count` messages), drains, sends DISCONNECT
//! everywhere and prints one JSON line of figures on stdout. Payloads start with their send time
//! in nanoseconds since one `Instant` the whole run shares, so subscribers count only messages
//! sent in the measured window and measure latency without any clock agreement.
//!
//! # Layout
//! - `client`: one MQTT connection: handshake, subscribe, batched writes, packet reads.
//! - `timeline`: the run's clock and measured window, payload stamps, the `--rate` pacer.
//! - `traffic`: publishers and subscribers, shared by `fanin`, `fanout` and `p2p`.
//! - `conns`: idle connections, connect rate, broker memory per connection.
//! - `histogram`: log-linear latency histogram.
//! - `relay`: a relay with no routing, served on `--addr`: the ceiling for `fanin` and `fanout`.
//! - `report`: the JSON line.

mod client;
mod conns;
mod histogram;
mod relay;
mod report;
mod timeline;
mod traffic;

#[cfg(test)]
mod tests;

use anyhow::{bail, Context};
use pigeon_codec::{Protocol, QoS};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use client::ClientOptions;
use report::JsonLine;
use timeline::STAMP_LEN;
use traffic::Plan;

/// Keep alive asked by every connection; each also pings at half of it.
const KEEP_ALIVE: u16 = 60;
/// Read buffer per traffic connection: room for a few hundred small PUBLISH packets per read.
const TRAFFIC_BUF: usize = 64 * 1024;
/// Read buffer per idle `conns` connection: only CONNACK and PINGRESP arrive.
const IDLE_BUF: usize = 256;

/// What `pigeon bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// `--publishers` publishers on bench/<i>, one subscriber on bench/+.
    Fanin,
    /// One publisher on bench/fanout, `--subscribers` subscribers on it.
    Fanout,
    /// `--pairs` publisher/subscriber pairs, each on its own topic, QoS 1, with latency.
    P2p,
    /// `--connections` idle connections: connect rate, and broker RSS per connection with `--pid`.
    Conns,
    /// Serve a relay with no routing on `--addr` until killed: the ceiling for fanin and fanout.
    Relay,
}

/// Options of `pigeon bench`. Options a scenario does not use are ignored.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub(crate) scenario: Scenario,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) addr: String,
    /// MQTT version: 3.1.1 (or 4) or 5.
    #[arg(long, default_value = "3.1.1", value_parser = parse_protocol)]
    pub(crate) protocol: Protocol,
    /// Seconds measured, after the warmup (conns: the most the connecting may take).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub(crate) duration: f64,
    /// Seconds of traffic before the measured window; not counted.
    #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
    pub(crate) warmup: f64,
    /// Stop after this many messages published in the measured window, all publishers together.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// QoS of publications and subscriptions (default 0; p2p: 1).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: Option<u8>,
    /// fanin: publishers.
    #[arg(long, default_value_t = 8)]
    pub(crate) publishers: usize,
    /// fanout: subscribers.
    #[arg(long, default_value_t = 100)]
    pub(crate) subscribers: usize,
    /// p2p: publisher/subscriber pairs.
    #[arg(long, default_value_t = 500)]
    pub(crate) pairs: usize,
    /// conns: connections to open.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) connections: usize,
    /// conns: handshakes in progress at once. The default stays below every broker's listen
    /// backlog (mosquitto's is 100); above a broker's backlog the kernel drops SYNs, which the
    /// clients send again a second later, as in a reconnect storm.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,
    /// QoS 1: PUBLISH packets awaiting PUBACK per publisher.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) inflight: u16,
    /// Payload bytes per message (at least 8: the send time stamp).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Offered messages per second over all publishers (default: as fast as the broker takes
    /// them); conns: connections per second.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// conns: the broker's process id, to read its resident memory before and after.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// conns: connections per local address (127.0.0.1, then 127.0.0.2, ...) to a loopback
    /// broker (default: the ephemeral port range less 3000).
    #[arg(long)]
    pub(crate) per_source: Option<usize>,
}

/// `BenchArgs` checked and resolved, as the scenarios use them.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) client: ClientOptions,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) count: Option<u64>,
    pub(crate) inflight: u16,
    pub(crate) payload: usize,
    pub(crate) rate: Option<f64>,
    /// Client ids are `<prefix>-s3`, `<prefix>-p0`, ...; the pid keeps two runs apart.
    pub(crate) client_id_prefix: String,
}

/// Runs the chosen scenario and prints one JSON line of figures.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let settings = settings(&args).await?;
    match args.scenario {
        Scenario::Relay => relay::run(settings.client.addr).await,
        Scenario::Conns => conns::run(&args, &settings).await,
        Scenario::Fanin | Scenario::Fanout | Scenario::P2p => {
            traffic_scenario(&args, &settings).await
        }
    }
}

async fn settings(args: &BenchArgs) -> anyhow::Result<Settings> {
    if args.payload < STAMP_LEN {
        bail!("--payload must be at least {STAMP_LEN} bytes (the send time stamp)");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number");
        }
    }
    if args.duration <= 0.0 {
        bail!("--duration must be more than 0 seconds");
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    let addr: SocketAddr = tokio::net::lookup_host(&args.addr)
        .await
        .with_context(|| format!("resolving --addr {}", args.addr))?
        .next()
        .with_context(|| format!("--addr {} resolves to no address", args.addr))?;
    let buf_size = if args.scenario == Scenario::Conns {
        IDLE_BUF
    } else {
        TRAFFIC_BUF
    };
    Ok(Settings {
        client: ClientOptions {
            addr,
            protocol: args.protocol,
            keep_alive: KEEP_ALIVE,
            // Room for the largest PUBLISH we send ourselves, and never less than 1 MiB.
            max_packet_size: u32::try_from(args.payload + 1024)
                .context("--payload too large")?
                .max(1 << 20),
            buf_size,
            send_buffer: None,
            open_file_limit: client::open_file_limit(),
        },
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        count: args.count,
        inflight: args.inflight,
        payload: args.payload,
        rate: args.rate,
        client_id_prefix: format!("pigeon-bench-{}", std::process::id()),
    })
}

async fn traffic_scenario(args: &BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let default_qos = if args.scenario == Scenario::P2p { 1 } else { 0 };
    let qos = QoS::from_u8(args.qos.unwrap_or(default_qos)).expect("clap limits --qos to 0..=1");
    let (plan, publishers, subscribers) = match args.scenario {
        Scenario::Fanin => {
            let plan = Plan {
                filters: vec!["bench/+".to_string()],
                topics: (0..args.publishers).map(|i| format!("bench/{i}")).collect(),
                fanout: 1,
                qos,
                latency: false,
            };
            (plan, args.publishers, 1)
        }
        Scenario::Fanout => {
            let plan = Plan {
                filters: vec!["bench/fanout".to_string(); args.subscribers],
                topics: vec!["bench/fanout".to_string()],
                fanout: args.subscribers as u64,
                qos,
                latency: false,
            };
            (plan, 1, args.subscribers)
        }
        Scenario::P2p => {
            let topics: Vec<String> = (0..args.pairs).map(|i| format!("bench/p2p/{i}")).collect();
            let plan = Plan {
                filters: topics.clone(),
                topics,
                fanout: 1,
                qos,
                latency: true,
            };
            (plan, args.pairs, args.pairs)
        }
        Scenario::Conns | Scenario::Relay => unreachable!("not a traffic scenario"),
    };
    if publishers == 0 || subscribers == 0 {
        bail!(
            "a {:?} run needs at least one publisher and one subscriber",
            args.scenario
        );
    }

    let outcome = traffic::run(plan, settings).await?;

    let mut params = JsonLine::new();
    params
        .str("protocol", protocol_name(args.protocol))
        .uint("qos", qos as u64)
        .uint("publishers", publishers as u64)
        .uint("subscribers", subscribers as u64)
        .uint("payload", args.payload as u64);
    if qos != QoS::AtMostOnce {
        params.uint("inflight", u64::from(args.inflight));
    }
    params
        .opt_float("rate", args.rate, 1)
        .opt_uint("count", args.count)
        .float("warmup_s", args.warmup, 3)
        .float("duration_s", args.duration, 3);

    let per_s = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let lost = outcome.expected.saturating_sub(outcome.received);
    let mut line = JsonLine::new();
    line.str("scenario", scenario_name(args.scenario))
        .str("addr", &args.addr)
        .object("params", params)
        .float("duration_s", outcome.send_secs, 3)
        .uint("sent", outcome.sent)
        .uint("expected", outcome.expected)
        .uint("received", outcome.received)
        .uint("lost", lost)
        .float(
            "loss",
            if outcome.expected > 0 {
                lost as f64 / outcome.expected as f64
            } else {
                0.0
            },
            6,
        )
        .float("sent_per_s", per_s(outcome.sent, outcome.send_secs), 1)
        .float(
            "received_per_s",
            per_s(outcome.received, outcome.recv_secs),
            1,
        )
        .float(
            "arrived_per_s",
            per_s(outcome.arrived, outcome.window_secs),
            1,
        );
    if let Some(h) = &outcome.latency {
        let us = |q: f64| h.quantile(q).map(|ns| ns as f64 / 1000.0);
        line.opt_float("p50_us", us(0.5), 1)
            .opt_float("p99_us", us(0.99), 1)
            .opt_float("p999_us", us(0.999), 1);
    }
    line.uint("errors", outcome.errors);
    print_line(line);
    Ok(())
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Fanin => "fanin",
        Scenario::Fanout => "fanout",
        Scenario::P2p => "p2p",
        Scenario::Conns => "conns",
        Scenario::Relay => "relay",
    }
}

pub(crate) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::V3_1 => "3.1",
        Protocol::V3_1_1 => "3.1.1",
        Protocol::V5 => "5",
    }
}

/// Prints the scenario's one line and flushes it, so a script reading stdout gets it at once.
pub(crate) fn print_line(line: JsonLine) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (a reader that went away) leaves nothing to report to.
    let _ = writeln!(out, "{}", line.finish());
    let _ = out.flush();
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "3.1.1" | "4" => Ok(Protocol::V3_1_1),
        "5" | "5.0" => Ok(Protocol::V5),
        _ => Err(format!("unknown MQTT version {s:?}; use 3.1.1 or 5")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}
