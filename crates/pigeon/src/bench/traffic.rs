//! Publishers and subscribers for the message scenarios (`fanin`, `fanout`, `p2p`).
//!
//! A `Plan` names the subscribers' filters, the publishers' topics and how many subscribers receive
//! each message. Subscribers connect and are SUBACKed before the first publisher starts. Publishers
//! stop at the end of the window (or at `--count`), QoS 1 publishers then wait for their PUBACKs,
//! and the run drains until every expected delivery arrived or deliveries stop coming; what is
//! missing then is loss. Only messages stamped inside the window count.

use anyhow::{bail, Context};
use pigeon_codec::{Packet, PubResp, QoS};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, sleep, sleep_until, timeout_at, Instant, MissedTickBehavior};

use super::client::{explain_connect_error, Client, ClientOptions};
use super::histogram::Histogram;
use super::timeline::{read_stamp, Pacer, Timeline};
use super::Settings;

/// Handshakes in progress at once during setup; more only overflows the broker's accept backlog
/// and turns into SYN retransmits that stall setup by a second.
const SETUP_CONCURRENCY: usize = 64;
/// Bytes of PUBLISH packets per `write_all` when nothing else limits a batch.
const WRITE_BATCH_BYTES: usize = 16 * 1024;
/// Publishers' SO_SNDBUF (the kernel doubles it). With autotuning, a QoS 0 publisher that writes
/// as fast as it can parks megabytes in its socket, stamped and counted as sent seconds before the
/// broker reads them: at a broker's intake of 1000 msg/s, 4 MiB is a minute of backlog. Two
/// batches' worth bounds the lag between a stamp and the broker reading it.
const PUBLISHER_SEND_BUFFER: u32 = 16 * 1024;
/// The drain after the window ends when deliveries stop arriving for this long…
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// …and in any case after this long.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Every connection pings this often, well within the keep alive of 60 s it asks for. Subscribers
/// at QoS 0 send nothing else, and keep alive counts only what the client sends.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(30);

/// What a scenario asks of the traffic engine.
#[derive(Debug)]
pub(crate) struct Plan {
    /// One filter per subscriber connection.
    pub(crate) filters: Vec<String>,
    /// One topic per publisher connection.
    pub(crate) topics: Vec<String>,
    /// Subscribers that receive each published message.
    pub(crate) fanout: u64,
    pub(crate) qos: QoS,
    /// Record per-message latency (p2p).
    pub(crate) latency: bool,
}

/// The figures of one run, window messages only.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    /// From the window start to the last window message sent.
    pub(crate) send_secs: f64,
    /// From the first to the last window message received, over all subscribers.
    pub(crate) recv_secs: f64,
    pub(crate) latency: Option<Histogram>,
    /// Deliveries of any message (window or warmup) that arrived during the window: the
    /// delivery rate of a broker that neither drops nor slows publishers but falls behind, whose
    /// subscribers may still be receiving warmup messages when the window ends.
    pub(crate) arrived: u64,
    /// The window's length in seconds.
    pub(crate) window_secs: f64,
    /// Connections that failed during the run (each also reported on stderr).
    pub(crate) errors: u64,
}

pub(crate) async fn run(plan: Plan, settings: &Settings) -> anyhow::Result<Outcome> {
    let opts = Arc::new(settings.client.clone());
    let prefix = &settings.client_id_prefix;

    let sub_ids = (0..plan.filters.len())
        .map(|i| format!("{prefix}-s{i}"))
        .collect();
    let subs = connect_all(&opts, sub_ids, Some((plan.filters.clone(), plan.qos)))
        .await
        .context("setting up subscribers")?;
    let pub_ids = (0..plan.topics.len())
        .map(|i| format!("{prefix}-p{i}"))
        .collect();
    let pub_opts = Arc::new(ClientOptions {
        send_buffer: Some(PUBLISHER_SEND_BUFFER),
        ..settings.client.clone()
    });
    let pubs = connect_all(&pub_opts, pub_ids, None)
        .await
        .context("setting up publishers")?;

    let timeline = Timeline::start(settings.warmup, settings.duration);
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    let sub_tasks: Vec<JoinHandle<(SubStats, Option<anyhow::Error>)>> = subs
        .into_iter()
        .map(|client| {
            let sub = Subscriber {
                timeline,
                stop: stop_rx.clone(),
                delivered: Arc::clone(&delivered),
                stats: SubStats::new(plan.latency),
            };
            tokio::spawn(sub.run(client))
        })
        .collect();

    let publishers = plan.topics.len() as u64;
    let per_publisher_rate = settings.rate.map(|r| r / publishers as f64);
    let pub_tasks: Vec<JoinHandle<(PubStats, Option<anyhow::Error>)>> = pubs
        .into_iter()
        .zip(&plan.topics)
        .enumerate()
        .map(|(i, (client, topic))| {
            let i = i as u64;
            // Split `--count` evenly; the first publishers take the remainder.
            let quota = settings
                .count
                .map(|n| n / publishers + u64::from(i < n % publishers));
            // Stagger the publishers' schedules so paced messages do not leave in bursts.
            let pacer = per_publisher_rate
                .map(|r| Pacer::new((1e9 / r * i as f64 / publishers as f64) as u64, r));
            let publisher = Publisher {
                topic: topic.clone(),
                qos: plan.qos,
                window: if plan.qos == QoS::AtMostOnce {
                    usize::MAX
                } else {
                    usize::from(settings.inflight)
                },
                quota,
                pacer,
                payload: settings.payload,
                timeline,
                stats: PubStats::default(),
            };
            tokio::spawn(publisher.run(client))
        })
        .collect();

    let mut outcome = Outcome::default();
    let mut last_sent = timeline.window_start;
    for task in pub_tasks {
        let (stats, err) = task.await.context("a publisher task panicked")?;
        outcome.sent += stats.sent;
        if stats.sent > 0 {
            last_sent = last_sent.max(stats.last_sent);
        }
        if let Some(err) = err {
            eprintln!("pigeon bench: publisher failed: {err:#}");
            outcome.errors += 1;
        }
    }
    outcome.expected = outcome.sent * plan.fanout;
    outcome.send_secs = (last_sent - timeline.window_start) as f64 / 1e9;

    drain(&delivered, outcome.expected).await;
    let _ = stop_tx.send(true);

    let mut first_rx = u64::MAX;
    let mut last_rx = 0;
    let mut latency = plan.latency.then(Histogram::default);
    for task in sub_tasks {
        let (stats, err) = task.await.context("a subscriber task panicked")?;
        outcome.received += stats.received;
        outcome.arrived += stats.arrived;
        first_rx = first_rx.min(stats.first_rx);
        last_rx = last_rx.max(stats.last_rx);
        if let (Some(all), Some(mine)) = (latency.as_mut(), stats.latency.as_ref()) {
            all.merge(mine);
        }
        if let Some(err) = err {
            eprintln!("pigeon bench: subscriber failed: {err:#}");
            outcome.errors += 1;
        }
    }
    outcome.recv_secs = if last_rx > first_rx {
        (last_rx - first_rx) as f64 / 1e9
    } else {
        0.0
    };
    outcome.latency = latency;
    outcome.window_secs = (timeline.window_end - timeline.window_start) as f64 / 1e9;
    Ok(outcome)
}

/// Waits until `expected` window messages were delivered, or deliveries stopped, or `DRAIN_MAX`.
async fn drain(delivered: &AtomicU64, expected: u64) {
    let deadline = Instant::now() + DRAIN_MAX;
    let mut seen = delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while seen < expected && Instant::now() < deadline && last_progress.elapsed() < DRAIN_IDLE {
        sleep(Duration::from_millis(10)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last_progress = Instant::now();
        }
    }
}

/// Connects one client per id, `SETUP_CONCURRENCY` at a time, and subscribes the i-th to the i-th
/// filter if `subscribe` is given. Any failure fails the setup.
pub(crate) async fn connect_all(
    opts: &Arc<ClientOptions>,
    ids: Vec<String>,
    subscribe: Option<(Vec<String>, QoS)>,
) -> anyhow::Result<Vec<Client>> {
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut filters = subscribe.as_ref().map(|(f, _)| f.clone().into_iter());
    let qos = subscribe.map_or(QoS::AtMostOnce, |(_, q)| q);
    let tasks: Vec<JoinHandle<anyhow::Result<Client>>> = ids
        .into_iter()
        .map(|id| {
            let opts = Arc::clone(opts);
            let limit = Arc::clone(&limit);
            let filter = filters.as_mut().and_then(Iterator::next);
            tokio::spawn(async move {
                let _permit = limit
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let mut client = Client::connect(&opts, &id, None::<IpAddr>)
                    .await
                    .with_context(|| format!("client {id}"))?;
                if let Some(filter) = filter {
                    client
                        .subscribe(&filter, qos)
                        .await
                        .with_context(|| format!("client {id}"))?;
                }
                Ok(client)
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        let client = task
            .await
            .context("a connect task panicked")?
            .map_err(|e| explain_connect_error(e, opts, clients.len()))?;
        clients.push(client);
    }
    Ok(clients)
}

#[derive(Debug, Default)]
struct PubStats {
    /// Window messages sent.
    sent: u64,
    /// Stamp of the last window message sent.
    last_sent: u64,
}

struct Publisher {
    topic: String,
    qos: QoS,
    /// PUBLISH packets awaiting PUBACK at most; unbounded for QoS 0.
    window: usize,
    /// Window messages to send at most (`--count`).
    quota: Option<u64>,
    /// `None`: as fast as the window and the socket allow.
    pacer: Option<Pacer>,
    payload: usize,
    timeline: Timeline,
    stats: PubStats,
}

impl Publisher {
    async fn run(mut self, mut client: Client) -> (PubStats, Option<anyhow::Error>) {
        let result = self.publish(&mut client).await;
        if result.is_ok() {
            client.disconnect().await;
        }
        (self.stats, result.err())
    }

    async fn publish(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let tl = self.timeline;
        let window_end = tl.instant(tl.window_end);
        // A broker that stops reading must not hold the run past the window and the drain.
        let deadline = window_end + DRAIN_MAX;
        let per_batch = (WRITE_BATCH_BYTES / (self.payload + self.topic.len() + 8)).clamp(1, 4096);
        let mut ping = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut inflight = 0usize;
        let mut packet_id = 0u16;

        loop {
            let now = tl.now();
            if now >= tl.window_end || self.quota_reached() {
                break;
            }
            let mut n = self.window.saturating_sub(inflight).min(per_batch);
            if let Some(pacer) = &self.pacer {
                n = n.min(pacer.due(now).min(usize::MAX as u64) as usize);
            }
            if n > 0 {
                for _ in 0..n {
                    if self.quota_reached() {
                        break;
                    }
                    let stamp = match self.pacer.as_mut() {
                        Some(pacer) => pacer.take(),
                        None => tl.now(),
                    };
                    let id = if self.qos == QoS::AtMostOnce {
                        0
                    } else {
                        // Ids cycle through 1..=65535; the window (at most 65535) keeps them unique.
                        packet_id = packet_id.checked_add(1).unwrap_or(1);
                        inflight += 1;
                        packet_id
                    };
                    client.push_publish(&self.topic, self.qos, id, stamp, self.payload);
                    if tl.in_window(stamp) {
                        self.stats.sent += 1;
                        self.stats.last_sent = stamp;
                    }
                }
                timeout_at(deadline, client.flush())
                    .await
                    .context("write stalled")??;
                continue;
            }

            // Nothing may leave now: wait for PUBACKs, the next paced message or the window's end.
            let wake = match &self.pacer {
                Some(pacer) if inflight < self.window => {
                    tl.instant(pacer.next_due()).min(window_end)
                }
                _ => window_end,
            };
            tokio::select! {
                read = client.fill() => {
                    if read.context("reading from the broker")? == 0 {
                        bail!("the broker closed the publisher connection");
                    }
                    inflight -= take_acks(client, inflight)?;
                }
                _ = sleep_until(wake) => {}
                _ = ping.tick() => {
                    client.push(&Packet::PingReq);
                    timeout_at(deadline, client.flush()).await.context("write stalled")??;
                }
            }
        }

        while inflight > 0 {
            let read = timeout_at(deadline, client.fill()).await.map_err(|_| {
                anyhow::anyhow!("{inflight} PUBACKs missing at the end of the drain")
            })?;
            if read.context("reading from the broker")? == 0 {
                bail!("the broker closed the publisher connection with {inflight} PUBACKs missing");
            }
            inflight -= take_acks(client, inflight)?;
        }
        Ok(())
    }

    fn quota_reached(&self) -> bool {
        self.quota.is_some_and(|q| self.stats.sent >= q)
    }
}

/// Decodes what a publisher received; returns the number of PUBACKs.
fn take_acks(client: &mut Client, inflight: usize) -> anyhow::Result<usize> {
    let mut acks = 0;
    while let Some(packet) = client.try_decode()? {
        match packet {
            Packet::PubAck(ack) if ack.reason.is_error() => {
                bail!(
                    "PUBACK {} refused the message: code 0x{:02x}",
                    ack.packet_id,
                    ack.reason.0
                )
            }
            Packet::PubAck(_) if acks < inflight => acks += 1,
            Packet::PubAck(ack) => bail!("PUBACK {} for no PUBLISH in flight", ack.packet_id),
            Packet::PingResp => {}
            Packet::Disconnect(d) => bail!("the broker sent DISCONNECT: {}", d.reason.name()),
            other => bail!("unexpected {} on a publisher connection", other.name()),
        }
    }
    Ok(acks)
}

#[derive(Debug)]
struct SubStats {
    /// Window messages received.
    received: u64,
    /// When the first and last window message arrived (nanoseconds since the epoch).
    first_rx: u64,
    last_rx: u64,
    latency: Option<Histogram>,
    /// Messages of any stamp that arrived during the window.
    arrived: u64,
}

impl SubStats {
    fn new(latency: bool) -> SubStats {
        SubStats {
            received: 0,
            first_rx: u64::MAX,
            last_rx: 0,
            latency: latency.then(Histogram::default),
            arrived: 0,
        }
    }
}

struct Subscriber {
    timeline: Timeline,
    stop: watch::Receiver<bool>,
    /// Window messages received by all subscribers, for the drain to watch.
    delivered: Arc<AtomicU64>,
    stats: SubStats,
}

impl Subscriber {
    async fn run(mut self, mut client: Client) -> (SubStats, Option<anyhow::Error>) {
        let result = self.receive(&mut client).await;
        if result.is_ok() {
            client.disconnect().await;
        }
        (self.stats, result.err())
    }

    async fn receive(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let tl = self.timeline;
        let mut ping = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                read = client.fill() => {
                    if read.context("reading from the broker")? == 0 {
                        bail!("the broker closed the subscriber connection");
                    }
                }
                _ = self.stop.changed() => return Ok(()),
                _ = ping.tick() => client.push(&Packet::PingReq),
            }
            // One clock read per read batch: the packets in it arrived together.
            let now = tl.now();
            let arrived_in_window = tl.in_window(now);
            let mut batch = 0;
            while let Some(packet) = client.try_decode()? {
                match packet {
                    Packet::Publish(publish) => {
                        self.stats.arrived += u64::from(arrived_in_window);
                        if let Some(stamp) =
                            read_stamp(&publish.payload).filter(|&s| tl.in_window(s))
                        {
                            batch += 1;
                            if let Some(h) = self.stats.latency.as_mut() {
                                h.record(now.saturating_sub(stamp));
                            }
                        }
                        if publish.qos != QoS::AtMostOnce {
                            client.push(&Packet::PubAck(PubResp {
                                packet_id: publish.packet_id,
                                ..Default::default()
                            }));
                        }
                    }
                    Packet::PingResp => {}
                    Packet::Disconnect(d) => {
                        bail!("the broker sent DISCONNECT: {}", d.reason.name())
                    }
                    other => bail!("unexpected {} on a subscriber connection", other.name()),
                }
            }
            if batch > 0 {
                self.stats.received += batch;
                self.stats.first_rx = self.stats.first_rx.min(now);
                self.stats.last_rx = now;
                self.delivered.fetch_add(batch, Ordering::Relaxed);
            }
            if client.has_pending_writes() {
                let deadline = Instant::now() + DRAIN_MAX;
                timeout_at(deadline, client.flush())
                    .await
                    .context("write stalled")??;
            }
        }
    }
}
