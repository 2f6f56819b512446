//! The `conns` scenario: many idle connections, the rate the broker accepts them at, and, given the
//! broker's pid, its resident memory per connection.
//!
//! Handshakes run `--concurrency` at a time (or paced by `--rate`) until all are connected or
//! `--duration` is over. A loopback address has about 28k local ports per source address, so past
//! `--per-source` connections the sockets are bound to 127.0.0.2, 127.0.0.3, ... before connect.
//! Connections stay idle (a PINGREQ every 30 s) until RSS is read, then each sends DISCONNECT.

use anyhow::{bail, Context};
use pigeon_codec::Packet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::{
    interval_at, sleep, sleep_until, timeout, timeout_at, Instant, MissedTickBehavior,
};

use super::client::{explain_connect_error, Client};
use super::report::JsonLine;
use super::timeline::Pacer;
use super::traffic::PING_EVERY;
use super::{BenchArgs, Settings};

/// Time the broker gets after the last CONNACK before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Local ports kept free per source address for other programs and TIME_WAIT leftovers.
const PORT_MARGIN: usize = 3000;

pub(crate) async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let opts = Arc::new(settings.client.clone());
    let wanted = args.connections;
    let per_source = match args.per_source {
        Some(n) if n > 0 => n,
        Some(_) => bail!("--per-source must be at least 1"),
        None => default_per_source(),
    };
    let sources = SourceAddrs::new(opts.addr, per_source);
    let rss_before = args.pid.map(broker_rss_kib).transpose()?;
    let cpu_before = args.pid.map(|pid| cpu_ns(&pid.to_string())).transpose()?;
    let own_cpu_before = cpu_ns("self").ok();
    let overflows_before = listen_overflows();

    let limit = Arc::new(Semaphore::new(args.concurrency as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let connected = Arc::new(AtomicUsize::new(0));
    let closed_by_broker = Arc::new(AtomicUsize::new(0));
    let last_connack = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();

    let started = Instant::now();
    let deadline = started + settings.duration;
    let mut pacer = settings.rate.map(|r| Pacer::new(0, r));
    let mut holders = Vec::with_capacity(wanted);
    let mut timed_out = false;
    for i in 0..wanted {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        if let Some(pacer) = pacer.as_mut() {
            sleep_until(started + Duration::from_nanos(pacer.take())).await;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
            _ = sleep_until(deadline) => {
                timed_out = true;
                break;
            }
        };
        let source = match sources.for_connection(i) {
            Ok(source) => source,
            Err(e) => {
                *first_error
                    .lock()
                    .expect("no task panics holding this lock") = Some(e);
                break;
            }
        };
        let opts = Arc::clone(&opts);
        let id = format!("{}-c{i}", settings.client_id_prefix);
        let (connected, closed_by_broker, last_connack, failed, first_error) = (
            Arc::clone(&connected),
            Arc::clone(&closed_by_broker),
            Arc::clone(&last_connack),
            Arc::clone(&failed),
            Arc::clone(&first_error),
        );
        let stop = stop_rx.clone();
        holders.push(tokio::spawn(async move {
            match Client::connect(&opts, &id, source).await {
                Ok(client) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    last_connack.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    drop(permit);
                    if !hold(client, stop).await {
                        closed_by_broker.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    let made = connected.load(Ordering::Relaxed);
                    // A std mutex: held for an assignment, never across an await.
                    let mut slot = first_error
                        .lock()
                        .expect("no task panics holding this lock");
                    if slot.is_none() {
                        *slot = Some(explain_connect_error(
                            e.context(format!("client {id}")),
                            &opts,
                            made,
                        ));
                    }
                }
            }
        }));
    }
    // Let handshakes already started finish (each is bounded by its own timeout).
    let _ = timeout(
        Duration::from_secs(15),
        limit.acquire_many(args.concurrency),
    )
    .await;

    let made = connected.load(Ordering::Relaxed);
    // Read before the settling pause, while the connections are idle: the CPU the handshakes took.
    let cpu_after = args.pid.map(|pid| cpu_ns(&pid.to_string())).transpose()?;
    let own_cpu_after = cpu_ns("self").ok();
    let overflows = overflows_before
        .zip(listen_overflows())
        .map(|(b, a)| a.saturating_sub(b));
    let connect_secs = last_connack.load(Ordering::Relaxed) as f64 / 1e9;
    let rss_after = match args.pid {
        Some(pid) => {
            sleep(SETTLE).await;
            Some(broker_rss_kib(pid)?)
        }
        None => None,
    };

    let _ = stop_tx.send(true);
    // Each DISCONNECT is bounded on its own; this bounds them all.
    let all_closed = Instant::now() + Duration::from_secs(10);
    for holder in holders {
        let _ = timeout_at(all_closed, holder).await;
    }

    let error = first_error
        .lock()
        .expect("no task panics holding this lock")
        .take();
    let mut params = JsonLine::new();
    params
        .str("protocol", super::protocol_name(opts.protocol))
        .uint("connections", wanted as u64)
        .uint("concurrency", u64::from(args.concurrency))
        .opt_float("rate", settings.rate, 1)
        .uint("per_source", per_source as u64)
        .float("duration_s", settings.duration.as_secs_f64(), 3);
    // What a reading grew by over the connections, per connection, in `unit`s of it.
    let per_conn = |before: Option<u64>, after: Option<u64>, unit: f64| match (before, after) {
        (Some(before), Some(after)) if made > 0 => {
            Some((after as f64 - before as f64) * unit / made as f64)
        }
        _ => None,
    };
    let bytes_per_conn = per_conn(rss_before, rss_after, 1024.0);
    let mut line = JsonLine::new();
    line.str("scenario", "conns")
        .str("addr", &args.addr)
        .object("params", params)
        .uint("connected", made as u64)
        .float("connect_s", connect_secs, 3)
        .float(
            "connects_per_s",
            if connect_secs > 0.0 {
                made as f64 / connect_secs
            } else {
                0.0
            },
            1,
        )
        .opt_uint("rss_before_kib", rss_before)
        .opt_uint("rss_after_kib", rss_after)
        .opt_float("bytes_per_conn", bytes_per_conn, 0)
        .opt_float(
            "broker_cpu_us_per_conn",
            per_conn(cpu_before, cpu_after, 1e-3),
            1,
        )
        .opt_float(
            "bench_cpu_us_per_conn",
            per_conn(own_cpu_before, own_cpu_after, 1e-3),
            1,
        )
        .uint(
            "closed_by_broker",
            closed_by_broker.load(Ordering::Relaxed) as u64,
        )
        .opt_uint("listen_overflows", overflows);
    let message = match (&error, timed_out) {
        (Some(e), _) => Some(format!("{e:#}")),
        (None, true) => Some(format!(
            "--duration ended with {made} of {wanted} connected"
        )),
        (None, false) => None,
    };
    line.opt_str("error", message.as_deref());
    super::print_line(line);
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Keeps an idle connection open until `stop`; false if the broker closed it first.
async fn hold(mut client: Client, mut stop: watch::Receiver<bool>) -> bool {
    let mut ping = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            read = client.fill() => match read {
                Ok(0) | Err(_) => return false,
                // PINGRESP, or anything else the broker has to say; an idle client ignores it.
                Ok(_) => while let Ok(Some(_)) = client.try_decode() {},
            },
            _ = ping.tick() => {
                client.push(&Packet::PingReq);
                if client.flush().await.is_err() {
                    return false;
                }
            }
        }
    }
    client.disconnect().await;
    true
}

/// Which local address the i-th connection binds to.
struct SourceAddrs {
    /// Only loopback IPv4 targets: 127.0.0.x reaches 127.0.0.1, a remote broker it does not.
    spread: bool,
    per_source: usize,
}

impl SourceAddrs {
    fn new(target: SocketAddr, per_source: usize) -> SourceAddrs {
        let spread = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
        SourceAddrs { spread, per_source }
    }

    /// `None` (let the kernel choose) for the first `per_source` connections, then 127.0.0.2, ...
    fn for_connection(&self, i: usize) -> anyhow::Result<Option<IpAddr>> {
        let group = i / self.per_source;
        if group == 0 || !self.spread {
            return Ok(None);
        }
        let last = u8::try_from(group + 1)
            .ok()
            .filter(|&b| b < 255)
            .with_context(|| format!("connection {i} needs more than 254 source addresses"))?;
        Ok(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))))
    }
}

/// Ports in the kernel's ephemeral range (`ip_local_port_range`) less a margin.
fn default_per_source() -> usize {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<usize>().ok());
            let (low, high) = (it.next()??, it.next()??);
            Some(high.saturating_sub(low) + 1)
        })
        .unwrap_or(28_232);
    range.saturating_sub(PORT_MARGIN).max(1000)
}

/// The host's count of connections dropped because a listen queue was full (TcpExt
/// ListenOverflows in /proc/net/netstat). Each costs the client a SYN retransmit a second later, so
/// a run where it grew measured the retransmit timer as much as the broker.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The broker's resident memory in KiB, from the `VmRSS` line of /proc/PID/status.
fn broker_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// CPU time (user and system) of the live threads of a process (`pid`, or `self`) so far, in
/// nanoseconds: the first field of each thread's `/proc/<pid>/task/<tid>/schedstat`. With the
/// generator on the broker's cores, a broker's connect rate is partly the generator's; the CPU
/// each connection cost the broker is its own.
fn cpu_ns(pid: &str) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has no file: its time is lost, as is that of
        // threads that ended before.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .with_context(|| format!("no run time in {}", path.display()))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_own_cpu_time() {
        let before = cpu_ns("self").expect("own schedstat");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(cpu_ns("self").expect("own schedstat") > before);
    }

    #[test]
    fn spreads_over_loopback_addresses_only() {
        let local = SourceAddrs::new("127.0.0.1:1883".parse().expect("valid"), 10);
        assert_eq!(local.for_connection(9).expect("in range"), None);
        assert_eq!(
            local.for_connection(10).expect("in range"),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            local.for_connection(25).expect("in range"),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        );
        assert!(local.for_connection(10 * 254).is_err());
        let remote = SourceAddrs::new("192.0.2.1:1883".parse().expect("valid"), 10);
        assert_eq!(remote.for_connection(25).expect("in range"), None);
    }

    #[test]
    fn reads_host_listen_overflows() {
        assert!(listen_overflows().is_some());
    }

    #[test]
    fn reads_own_rss() {
        assert!(broker_rss_kib(std::process::id()).expect("own status") > 0);
    }
}
