//! The cluster bus over Redis pub/sub: what connects a node to the others.
//!
//! Out: every message accepted on this node is encoded once (by the publishing connection's
//! task) and queued in a bounded outbox; one task sends the outbox to Redis in pipelines of
//! PUBLISH, on the channel named after the topic. While Redis is unreachable the outbox keeps
//! the newest `outbox_messages` and sends them when it is back (ids stay the same, so a batch
//! sent twice across a reconnect is still delivered once).
//!
//! In: one task holds the subscriber connection: a SUBSCRIBE or PSUBSCRIBE per filter local
//! sessions need (kept in step with the broker's interest), plus `$SYS/*/new/clients`. Each
//! message is decoded (a bad one is logged with its channel and dropped), deduplicated by id,
//! and routed on `msg.topic`. The node's own messages come back too: they were delivered
//! locally already, so only shared groups are served from them (one member cluster-wide, elected
//! per message with `SET ... NX`). Local delivery never waits for this module.

use super::dedupe::SeenIds;
use super::pattern::{channel_for, Channel};
use super::wire::{self, BusPublish};
use bytes::Bytes;
use futures_util::StreamExt;
use pigeon_codec::ByteStr;
use pigeon_core::{Broker, BusBacklog, ClusterBus, Message};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Messages sent to Redis in one pipeline at most.
const BATCH: usize = 512;
/// While Redis is up and more than this many messages wait for it, publishers wait (bounded)
/// until fewer than `BACKLOG_LOW` do: the bus sets the pace, as the subscribers' queues do
/// locally, instead of the outbox overflowing.
const BACKLOG_HIGH: usize = 16 * BATCH;
const BACKLOG_LOW: usize = 4 * BATCH;
/// Reconnect delays grow from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// After an outage, what waited in the outbox goes this long after Redis is back: every node
/// retries at least every `BACKOFF_MAX`, so by then they have all subscribed again and none
/// misses what was kept for it.
const RESEND_DELAY: Duration = Duration::from_millis(2500);
/// The channel every Pigeon node subscribes to for retained messages, whatever its interest:
/// a retained message must reach nodes that have no subscriber for its topic yet. Clients
/// cannot publish to `$SYS/...`, on Pigeon or aedes nodes.
pub const RETAINED_CHANNEL: &str = "$SYS/pigeon/retained";
/// How long a shared-group election key lives: longer than any bus delay.
const ELECTION_TTL_MS: u64 = 10_000;
/// How long the key that elects one node to retain an injected message lives (the example
/// deployment's `SET p:<id> 1 EX 10 NX`).
const INJECTED_TTL: Duration = Duration::from_secs(10);
/// Marks the broker ids of Pigeon nodes (`<node_id>~<random>`): their retained messages are
/// stored by the node that accepted them, so no other node needs to.
const PIGEON_MARK: char = '~';

/// What the bus needs to know.
#[derive(Debug, Clone)]
pub struct BusSettings {
    pub redis_url: String,
    pub node_id: String,
    pub heartbeat_interval: Duration,
    pub outbox_messages: usize,
    pub dedupe_ids: usize,
    pub dedupe_ttl: Duration,
    /// The store is shared by the nodes: one node retains an injected message (elected per id).
    pub shared_store: bool,
    /// The prefix of the keys this node writes (shared-group elections).
    pub key_prefix: String,
    /// Subscribe to every channel (`PSUBSCRIBE *`) rather than to the filters local sessions
    /// use: an injected retained message is then kept even when no node has a subscriber for
    /// its topic, at the price of every node reading every message.
    pub subscribe_all: bool,
}

/// How full the outbox is, shared with the publishers that wait for it to drain.
#[derive(Default)]
struct Backlog {
    len: AtomicUsize,
    up: AtomicBool,
    drained: Notify,
}

impl Backlog {
    fn set_len(&self, len: usize) {
        let was = self.len.swap(len, Ordering::Relaxed);
        if len < BACKLOG_LOW && was >= BACKLOG_LOW {
            self.drained.notify_waiters();
        }
    }

    fn high(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.len.load(Ordering::Relaxed) > BACKLOG_HIGH
    }

    async fn wait(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check: a drain between the check and the await wakes us.
            notified.as_mut().enable();
            if !self.up.load(Ordering::Relaxed) || self.len.load(Ordering::Relaxed) < BACKLOG_LOW {
                return;
            }
            notified.await;
        }
    }
}

/// One encoded message waiting for Redis.
struct Outgoing {
    channel: Bytes,
    body: Bytes,
}

enum Interest {
    Add(String),
    Remove(String),
    /// Answered once the changes before it are in effect in Redis.
    Settled(tokio::sync::oneshot::Sender<()>),
}

pub struct RedisBus {
    broker_id: String,
    settings: BusSettings,
    counter: AtomicU64,
    outbox: Mutex<VecDeque<Outgoing>>,
    outbox_ready: Notify,
    backlog: Arc<Backlog>,
    interest: mpsc::UnboundedSender<Interest>,
    connected: AtomicBool,
    broker: Weak<Broker>,
    /// A connection for commands other than PUBLISH (elections), set while Redis is up.
    commands: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisBus {
    /// Starts the bus for `broker` and connects them. Redis need not be up: the bus connects
    /// (and reconnects) in the background while the node serves.
    pub fn start(settings: BusSettings, broker: &Arc<Broker>) -> Result<Arc<RedisBus>, String> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .map_err(|e| format!("[cluster] redis_url: {e}"))?;
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| format!("no random source: {e}"))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let broker_id = format!("{}{PIGEON_MARK}{suffix}", settings.node_id);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let bus = Arc::new(RedisBus {
            broker_id,
            settings,
            counter: AtomicU64::new(0),
            outbox: Mutex::new(VecDeque::new()),
            outbox_ready: Notify::new(),
            backlog: Arc::new(Backlog::default()),
            interest: interest_tx,
            connected: AtomicBool::new(false),
            broker: Arc::downgrade(broker),
            commands: Mutex::new(None),
        });
        info!(broker_id = %bus.broker_id, redis = %redacted(&bus.settings.redis_url), "cluster bus starting");
        // Other nodes reset what they remember of this id (aedes: per-client dedupe counters).
        bus.emit_sys("birth", Bytes::from(bus.broker_id.clone()));
        tokio::spawn(Arc::clone(&bus).send_loop(client.clone()));
        tokio::spawn(Arc::clone(&bus).receive_loop(client, interest_rx));
        tokio::spawn(Arc::clone(&bus).heartbeat_loop());
        broker.set_cluster(Arc::clone(&bus) as Arc<dyn ClusterBus>);
        Ok(bus)
    }

    /// This process's id on the bus (`brokerId`), new at every start.
    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    fn next_counter(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn stats(&self) -> Option<Arc<Broker>> {
        self.broker.upgrade()
    }

    /// Queues an encoded message; when the outbox is full the oldest goes.
    fn push(&self, channel: Bytes, body: Bytes) {
        let dropped = {
            let mut outbox = lock(&self.outbox);
            outbox.push_back(Outgoing { channel, body });
            let dropped = if outbox.len() > self.settings.outbox_messages {
                outbox.pop_front();
                true
            } else {
                false
            };
            self.backlog.len.store(outbox.len(), Ordering::Relaxed);
            dropped
        };
        if dropped {
            if let Some(broker) = self.stats() {
                let n = broker.stats.bus_dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    warn!(
                        dropped_total = n + 1,
                        "cluster bus: outbox full while Redis is unreachable; oldest messages dropped ([cluster] outbox_messages)"
                    );
                }
            }
        }
        self.outbox_ready.notify_one();
    }

    /// Puts `$SYS/<brokerId>/<what>` on the bus, as aedes nodes do.
    fn emit_sys(&self, what: &str, payload: Bytes) {
        let topic = format!("$SYS/{}/{what}", self.broker_id);
        let topic = ByteStr::from(topic);
        let msg = BusPublish {
            topic,
            payload,
            broker_id: Some(self.broker_id.clone()),
            broker_counter: Some(self.next_counter()),
            ..BusPublish::default()
        };
        self.push_encoded(&msg);
    }

    fn push_encoded(&self, msg: &BusPublish) {
        let id = format!("{}/{}", self.broker_id, msg.broker_counter.unwrap_or(0));
        let body = wire::encode(&id, msg);
        let channel = Bytes::copy_from_slice(msg.topic.as_bytes());
        self.push(channel, Bytes::from(body));
    }

    /// Sends the outbox to Redis, reconnecting with backoff.
    async fn send_loop(self: Arc<Self>, client: redis::Client) {
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        loop {
            let mut conn = match connect(&client).await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "cluster bus: publisher cannot connect");
                    first = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            *lock(&self.commands) = Some(conn.clone());
            if !first {
                let waiting = lock(&self.outbox).len();
                info!(messages = waiting, delay_ms = RESEND_DELAY.as_millis() as u64, "cluster bus: Redis is back; sending what waited once the other nodes have subscribed again");
                tokio::time::sleep(RESEND_DELAY).await;
            }
            loop {
                let batch: Vec<Outgoing> = {
                    let mut outbox = lock(&self.outbox);
                    let n = outbox.len().min(BATCH);
                    let batch = outbox.drain(..n).collect();
                    self.backlog.set_len(outbox.len());
                    batch
                };
                if batch.is_empty() {
                    if self.broker.strong_count() == 0 {
                        return;
                    }
                    self.outbox_ready.notified().await;
                    continue;
                }
                let mut pipe = redis::pipe();
                for m in &batch {
                    pipe.cmd("PUBLISH")
                        .arg(m.channel.as_ref())
                        .arg(m.body.as_ref())
                        .ignore();
                }
                match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => {
                        if let Some(broker) = self.stats() {
                            broker
                                .stats
                                .bus_published
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        first = false;
                        warn!(error = %e, messages = batch.len(), "cluster bus: PUBLISH failed; keeping the messages for the next connection");
                        // Back to the front, in order: receivers drop any that did get through.
                        let mut outbox = lock(&self.outbox);
                        for m in batch.into_iter().rev() {
                            outbox.push_front(m);
                        }
                        while outbox.len() > self.settings.outbox_messages {
                            outbox.pop_front();
                        }
                        self.backlog.len.store(outbox.len(), Ordering::Relaxed);
                        break;
                    }
                }
            }
            *lock(&self.commands) = None;
        }
    }

    /// Holds the subscriber connection and routes what arrives.
    async fn receive_loop(
        self: Arc<Self>,
        client: redis::Client,
        mut interest_rx: mpsc::UnboundedReceiver<Interest>,
    ) {
        let mut channels: HashMap<String, (Channel, u32)> = HashMap::new();
        let mut seen = SeenIds::new(self.settings.dedupe_ttl, self.settings.dedupe_ids);
        let mut backoff = BACKOFF_MIN;
        let mut was_connected = false;
        loop {
            // Interest that changed while disconnected is applied before subscribing again.
            while let Ok(change) = interest_rx.try_recv() {
                apply_interest(&mut channels, change);
            }
            let pubsub = match client.get_async_pubsub().await {
                Ok(pubsub) => pubsub,
                Err(e) => {
                    if was_connected || backoff == BACKOFF_MIN {
                        warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cluster bus: Redis unreachable; local delivery goes on");
                    }
                    was_connected = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if self.broker.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let mut ok = sink.psubscribe("$SYS/*/new/clients").await.is_ok()
                && sink.subscribe(RETAINED_CHANNEL).await.is_ok();
            if self.settings.subscribe_all {
                ok = ok && sink.psubscribe("*").await.is_ok();
            }
            for (channel, _) in channels.values() {
                if !ok || self.settings.subscribe_all {
                    break;
                }
                ok = subscribe(&mut sink, channel, true).await.is_ok();
            }
            if !ok {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            backoff = BACKOFF_MIN;
            was_connected = true;
            self.connected.store(true, Ordering::Relaxed);
            self.backlog.up.store(true, Ordering::Relaxed);
            if let Some(broker) = self.stats() {
                broker.stats.bus_connected.store(1, Ordering::Relaxed);
                broker.stats.bus_connects.fetch_add(1, Ordering::Relaxed);
            }
            info!(broker_id = %self.broker_id, subscriptions = channels.len(), "cluster bus connected");
            // Whatever waited in the outbox goes now.
            self.outbox_ready.notify_one();
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            self.on_message(msg.get_channel_name(), msg.get_payload_bytes(), &mut seen).await;
                        }
                        None => break,
                    },
                    change = interest_rx.recv() => match change {
                        Some(Interest::Settled(done)) => {
                            // Redis answered every (P)SUBSCRIBE before this one.
                            let _ = done.send(());
                        }
                        Some(change) => {
                            let (channel, add) = match &change {
                                Interest::Add(f) => (channel_for(f), true),
                                Interest::Remove(f) => (channel_for(f), false),
                                Interest::Settled(_) => unreachable!("answered above"),
                            };
                            if apply_interest(&mut channels, change)
                                && !self.settings.subscribe_all
                                && subscribe(&mut sink, &channel, add).await.is_err()
                            {
                                break;
                            }
                        }
                        None => return,
                    },
                }
            }
            self.connected.store(false, Ordering::Relaxed);
            // Nobody waits for a bus that is down: local delivery goes on.
            self.backlog.up.store(false, Ordering::Relaxed);
            self.backlog.drained.notify_waiters();
            if let Some(broker) = self.stats() {
                broker.stats.bus_connected.store(0, Ordering::Relaxed);
            }
            warn!("cluster bus: connection to Redis lost; local delivery goes on, reconnecting");
        }
    }

    async fn on_message(&self, channel: &str, payload: &[u8], seen: &mut SeenIds) {
        let Some(broker) = self.stats() else {
            return;
        };
        let msg = match wire::decode(payload) {
            Ok(msg) => msg,
            Err(e) => {
                let n = broker.stats.bus_malformed.fetch_add(1, Ordering::Relaxed);
                if n < 100 || n.is_multiple_of(1000) {
                    warn!(channel, error = %e, bytes = payload.len(), "cluster bus: message dropped");
                }
                return;
            }
        };
        match &msg.id {
            Some(id) => {
                if !seen.first_time(id, Instant::now().into_std()) {
                    broker.stats.bus_duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            None => debug!(
                channel,
                "cluster bus: message without id, delivered without dedupe"
            ),
        }
        let own = msg.broker_id.as_deref() == Some(self.broker_id.as_str());
        if msg.topic.starts_with("$SYS/") {
            if !own {
                self.on_sys(&broker, &msg);
            }
            return;
        }
        let message = Arc::new(Message::new(
            msg.topic.clone(),
            msg.payload.clone(),
            msg.qos,
            msg.retain,
            msg.properties.clone(),
            msg.client_id.clone(),
        ));
        if !own {
            broker.stats.bus_received.fetch_add(1, Ordering::Relaxed);
            let store_retained = if !msg.retain {
                false
            } else if !self.settings.shared_store {
                // Each node keeps its own retained messages: every node stores it.
                true
            } else if from_pigeon(&msg) {
                // The Pigeon node that accepted it stored it in the shared store already.
                false
            } else {
                // Injected, or from an aedes node: one node stores it.
                match &msg.id {
                    Some(id) => {
                        let key = format!("p:{}", String::from_utf8_lossy(id));
                        self.elect(&key, INJECTED_TTL).await
                    }
                    None => true,
                }
            };
            broker.publish_from_bus(Arc::clone(&message), store_retained);
            if msg.retain && channel != RETAINED_CHANNEL && !from_pigeon(&msg) {
                // Injected or from aedes: only nodes with a matching subscription heard it.
                // Passed on (same id) to the Pigeon nodes that did not, so every node keeps it.
                if let Some(id) = &msg.id {
                    self.push(
                        Bytes::from_static(RETAINED_CHANNEL.as_bytes()),
                        Bytes::from(wire::encode(&String::from_utf8_lossy(id), &msg)),
                    );
                }
            }
        }
        let groups = broker.shared_groups(&message.topic);
        if groups.is_empty() {
            return;
        }
        let won = match &msg.id {
            Some(id) => {
                let id = String::from_utf8_lossy(id);
                let mut won = Vec::new();
                for group in groups {
                    let key = format!("{}share:{group}:{id}", self.settings.key_prefix);
                    if self
                        .elect(&key, Duration::from_millis(ELECTION_TTL_MS))
                        .await
                    {
                        won.push(group);
                    }
                }
                won
            }
            // Without an id the nodes cannot agree: each serves its own members.
            None => groups,
        };
        if !won.is_empty() {
            broker.publish_to_groups(message, &won);
        }
    }

    /// Cluster control traffic from other nodes (Pigeon or aedes).
    fn on_sys(&self, broker: &Arc<Broker>, msg: &BusPublish) {
        let mut levels = msg.topic.split('/');
        let (_, _node, what) = (levels.next(), levels.next(), levels.collect::<Vec<_>>());
        if what != ["new", "clients"] {
            return;
        }
        let Some(client_id) = ByteStr::from_utf8(msg.payload.clone()) else {
            return;
        };
        let broker = Arc::clone(broker);
        tokio::spawn(async move {
            if broker.yield_session(&client_id).await {
                debug!(client_id = %client_id, "client moved to another node");
            }
        });
    }

    /// `SET key 1 PX ttl NX`: true if this node got it, or if Redis cannot answer (then the
    /// nodes that heard the message each serve it: a copy too many rather than none).
    async fn elect(&self, key: &str, ttl: Duration) -> bool {
        let conn = lock(&self.commands).clone();
        let Some(mut conn) = conn else {
            return true;
        };
        let reply: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .arg("NX")
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => reply.is_some(),
            Err(e) => {
                debug!(key, error = %e, "cluster bus: election failed; serving locally");
                true
            }
        }
    }

    /// `$SYS/<brokerId>/heartbeat` every interval, as aedes nodes send theirs.
    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        loop {
            tick.tick().await;
            if self.broker.strong_count() == 0 {
                return;
            }
            self.emit_sys("heartbeat", Bytes::from(self.broker_id.clone()));
        }
    }

    /// Sends what is left in the outbox, waiting at most `within`: a graceful shutdown.
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && !lock(&self.outbox).is_empty() && self.connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ClusterBus for RedisBus {
    fn publish(&self, message: &Arc<Message>) {
        let mut properties = message.properties.clone();
        properties.message_expiry_interval = message.remaining_expiry(Instant::now());
        let msg = BusPublish {
            id: None,
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            qos: message.qos,
            retain: message.retain,
            dup: false,
            broker_id: Some(self.broker_id.clone()),
            broker_counter: Some(self.next_counter()),
            client_id: message.origin.clone(),
            properties,
        };
        let id = format!("{}/{}", self.broker_id, msg.broker_counter.unwrap_or(0));
        let body = Bytes::from(wire::encode(&id, &msg));
        if message.retain {
            self.push(
                Bytes::from_static(RETAINED_CHANNEL.as_bytes()),
                body.clone(),
            );
        }
        self.push(Bytes::copy_from_slice(msg.topic.as_bytes()), body);
    }

    fn interest(&self, filter: &str, present: bool) {
        let change = if present {
            Interest::Add(filter.to_owned())
        } else {
            Interest::Remove(filter.to_owned())
        };
        let _ = self.interest.send(change);
    }

    fn client_connected(&self, client_id: &ByteStr) {
        self.emit_sys("new/clients", Bytes::copy_from_slice(client_id.as_bytes()));
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn backlog(&self) -> Option<BusBacklog> {
        if !self.backlog.high() {
            return None;
        }
        let backlog = Arc::clone(&self.backlog);
        Some(BusBacklog::new(move || {
            let backlog = Arc::clone(&backlog);
            Box::pin(async move { backlog.wait().await })
        }))
    }

    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let (done, settled) = tokio::sync::oneshot::channel();
        let _ = self.interest.send(Interest::Settled(done));
        Box::pin(async move {
            // Bounded: a bus that is reconnecting answers when it is back, or not at all.
            let _ = tokio::time::timeout(Duration::from_secs(2), settled).await;
        })
    }
}

/// Whether a Pigeon node accepted the message (its broker id carries the mark).
fn from_pigeon(msg: &BusPublish) -> bool {
    msg.broker_id
        .as_deref()
        .is_some_and(|id| id.contains(PIGEON_MARK))
}

/// Counts one filter's interest in its channel; true when the channel must be (un)subscribed.
fn apply_interest(channels: &mut HashMap<String, (Channel, u32)>, change: Interest) -> bool {
    match change {
        Interest::Add(filter) => {
            let channel = channel_for(&filter);
            let entry = channels
                .entry(channel.name().to_owned())
                .or_insert((channel, 0));
            entry.1 += 1;
            entry.1 == 1
        }
        Interest::Settled(done) => {
            // Not connected: nothing to wait for.
            let _ = done.send(());
            false
        }
        Interest::Remove(filter) => {
            let name = channel_for(&filter).name().to_owned();
            match channels.get_mut(&name) {
                Some(entry) if entry.1 > 1 => {
                    entry.1 -= 1;
                    false
                }
                Some(_) => {
                    channels.remove(&name);
                    true
                }
                None => false,
            }
        }
    }
}

async fn subscribe(
    sink: &mut redis::aio::PubSubSink,
    channel: &Channel,
    add: bool,
) -> redis::RedisResult<()> {
    match (channel, add) {
        (Channel::Exact(name), true) => sink.subscribe(name).await,
        (Channel::Exact(name), false) => sink.unsubscribe(name).await,
        (Channel::Pattern(p), true) => sink.psubscribe(p).await,
        (Channel::Pattern(p), false) => sink.punsubscribe(p).await,
    }
}

async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
