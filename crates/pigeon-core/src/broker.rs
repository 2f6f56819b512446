//! The broker: the session registry, the subscription index, the retained store and the router.
//!
//! It knows nothing of sockets. A connection task calls `attach` after a valid CONNECT, then
//! `publish`, `subscribe`, `unsubscribe`, and `detach` when it ends. Locks: the registry mutex,
//! the index and retained `RwLock`s and each session's mutex are taken one at a time, never nested
//! and never across `.await`; routing takes the index read lock, which publishers on every core
//! share without waiting on each other.

use crate::cluster::{ClusterBus, SharedSessions};
use crate::control::{Control, ControlReceiver, ControlSender};
use crate::keepalive::KeepAlive;
use crate::message::{Delivery, Message};
use crate::retain::RetainedStore;
use crate::session::{
    Enqueued, QueueLimits, Session, SessionId, SubscriptionRecord, NEVER_EXPIRES,
};
use crate::stats::Stats;
use crate::store::{self, LoadedSession, Persistence, SessionRecord, Snapshot, StoreOp};
use crate::subscriptions::{Match, ShardedIndex, Subscriber};
use pigeon_codec::topic::parse_shared;
use pigeon_codec::{ByteStr, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Shards of the subscription index (see `ShardedIndex`): enough that publishers on different
/// first topic levels rarely share a lock on a machine of a few dozen cores.
const INDEX_SHARDS: usize = 32;

/// Broker behaviour the server configures.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub queue: QueueLimits,
    pub retain_available: bool,
    /// How long `attach` waits for a taken-over connection to finish closing.
    pub takeover_timeout: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            queue: QueueLimits {
                max_messages: 1000,
                max_bytes: 16 << 20,
                queue_qos0: false,
            },
            retain_available: true,
            takeover_timeout: Duration::from_secs(5),
        }
    }
}

/// The broker's handle on a connection: the line that tells it to close, which also names it
/// (`Broker::detach` takes the other end). The connection drops the receiving side only after
/// `detach` returns, so a closed line means "gone".
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub control: ControlSender,
}

/// Which sessions `Broker::clients` lists.
#[derive(Debug, Clone, Copy)]
pub struct ClientQuery<'a> {
    /// Only ids that sort after this one (the last id of the page before).
    pub after: Option<&'a str>,
    /// Only ids that hold this text ("" for all).
    pub contains: &'a str,
    pub limit: usize,
}

/// A page of sessions (`Broker::clients`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPage {
    /// Client ids in order, each with whether a connection is attached.
    pub clients: Vec<(ByteStr, bool)>,
    /// Sessions in all.
    pub total: usize,
    /// More sessions match after the last one listed.
    pub more: bool,
}

/// One session as the admin API shows it (`Broker::client`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDetail {
    /// A connection is attached.
    pub connected: bool,
    /// Session Expiry Interval, seconds; 0 ends the session with its connection.
    pub expiry_interval: u32,
    /// Full filters (`$share/group/` included) with their options, by filter.
    pub subscriptions: Vec<(ByteStr, SubscriptionOptions)>,
    /// Messages waiting to be sent, and their bytes (topic and payload, as
    /// `limits.max_queued_bytes` counts them).
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// Sent and not yet acknowledged.
    pub inflight: usize,
}

/// A registered session and the connection attached to it, if any.
struct Slot<'a> {
    session: &'a Arc<Session>,
    connection: &'a Option<ConnectionHandle>,
}

/// The sessions by client id, each with the connection attached to it, if any. The key is the
/// session itself, hashed and compared by its client id: an entry is 24 bytes, where a client
/// id key beside the session took 56, and a hash table keeps room for up to twice its entries.
#[derive(Default)]
struct Registry {
    map: HashMap<Registered, Option<ConnectionHandle>>,
}

/// A session as a registry key: found by its client id.
struct Registered(Arc<Session>);

impl std::hash::Hash for Registered {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.client_id().as_str().hash(state);
    }
}

impl PartialEq for Registered {
    fn eq(&self, other: &Registered) -> bool {
        self.0.client_id().as_str() == other.0.client_id().as_str()
    }
}

impl Eq for Registered {}

impl std::borrow::Borrow<str> for Registered {
    fn borrow(&self) -> &str {
        self.0.client_id().as_str()
    }
}

impl Registry {
    fn get(&self, client_id: &str) -> Option<Slot<'_>> {
        self.map
            .get_key_value(client_id)
            .map(|(key, connection)| Slot {
                session: &key.0,
                connection,
            })
    }

    fn contains_key(&self, client_id: &str) -> bool {
        self.map.contains_key(client_id)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// Registers `session` (replacing any session of its client id) with `connection`.
    fn insert(&mut self, session: Arc<Session>, connection: Option<ConnectionHandle>) {
        // `HashMap::insert` keeps the old key: the old session would stay registered.
        self.map.remove(session.client_id().as_str());
        self.map.insert(Registered(session), connection);
    }

    fn remove(&mut self, client_id: &str) -> Option<Arc<Session>> {
        self.map.remove_entry(client_id).map(|(key, _)| key.0)
    }

    /// Detaches the connection on `line` from `client_id`'s session if it is the one attached;
    /// true if it was.
    fn detach(&mut self, client_id: &str, line: &ControlSender) -> bool {
        self.detach_if(client_id, |c| c.control.same_line(line))
    }

    /// Detaches the connection attached to `client_id`'s session if `is_it`; true if it was.
    fn detach_if(&mut self, client_id: &str, is_it: impl Fn(&ConnectionHandle) -> bool) -> bool {
        let Some(connection) = self.map.get_mut(client_id) else {
            return false;
        };
        if connection.as_ref().is_none_or(|c| !is_it(c)) {
            return false;
        }
        *connection = None;
        if let Some(slot) = self.get(client_id) {
            slot.session.set_connected(false);
        }
        true
    }

    fn connections(&self) -> impl Iterator<Item = &ConnectionHandle> {
        self.map.values().flatten()
    }
}

/// How a connection ended, for the will and the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT with 0x00: the will is discarded (MQTT-3.1.2-10).
    Normal,
    /// Anything else (network loss, keep alive, protocol error, a 5.0 DISCONNECT with 0x04 or an
    /// error code, takeover): the will is published.
    WithWill,
    /// The broker is shutting down: the will is not published.
    Shutdown,
}

pub struct Broker {
    settings: BrokerSettings,
    registry: Mutex<Registry>,
    index: ShardedIndex,
    retained: RwLock<RetainedStore>,
    next_session_id: AtomicU64,
    next_connection_id: AtomicU64,
    store: Option<Arc<Persistence>>,
    /// The other nodes, once the server connects a bus.
    cluster: OnceLock<Arc<dyn ClusterBus>>,
    /// Set when the store is shared with other nodes: sessions are claimed before use.
    shared: OnceLock<Arc<dyn SharedSessions>>,
    /// Local subscriptions per plain filter: what this node needs from the bus.
    interest: Mutex<HashMap<Box<str>, u32>>,
    /// Sessions on their way here from another node, by client id (see `take_from_cluster`).
    /// While any exists, routing runs under this lock.
    captures: Mutex<HashMap<ByteStr, Capture>>,
    capturing: AtomicUsize,
    /// Set by `shut_down`.
    shutting_down: AtomicBool,
    /// Every connection's keep alive; the server ticks it.
    keep_alive: KeepAlive,
    /// When the broker was made: its uptime (`$SYS`, the admin API).
    started: std::time::Instant,
    pub stats: Stats,
}

/// What was routed for a session while it moved here from another node: from the moment this
/// node listened for its filters until it was loaded. The old node stored the start of the same
/// stream, so the loaded queue's tail and this list overlap; the overlap is dropped when merging.
struct Capture {
    /// The session's plain (not shared) filters and their QoS.
    filters: Vec<(ByteStr, QoS)>,
    messages: Vec<Arc<Message>>,
}

/// A capture keeps at most this many messages (a move takes milliseconds).
const CAPTURE_MAX: usize = 100_000;

/// Which shared subscription groups one routing pass serves.
#[derive(Clone, Copy)]
enum Groups<'a> {
    /// Every group: one member each (a node alone, or a cluster whose bus is down).
    All,
    /// None: the cluster bus serves them (see `publish_to_groups`).
    Skip,
    /// Only the groups with these keys (`<group>/<filter>`).
    Only(&'a [String]),
}

/// What routing one message did.
#[derive(Debug, Clone, Default)]
pub struct PublishOutcome {
    /// Sessions it was queued for.
    pub routed: usize,
    /// What the targets' queues said: full (`.full`) and congested (`.backpressure`).
    pub quota_exceeded: QueueReport,
    /// The store op the publisher's acknowledgement must wait for (0: none).
    pub wait_for: u64,
}

/// The queues' side of routing one message, folded over the targets with `|=`.
#[derive(Debug, Clone, Default)]
pub struct QueueReport {
    /// A session's queue (or the store) was full, so some subscriber will not get the message.
    pub full: bool,
    /// A connected target whose queue is above its high-water mark: the publisher should stop
    /// reading until it drains (the first one found; a publisher that waits on it meets any
    /// other at its next message). It may be the publisher's own session.
    pub backpressure: Option<crate::session::Backpressure>,
}

impl std::ops::BitOrAssign for QueueReport {
    fn bitor_assign(&mut self, other: QueueReport) {
        self.full |= other.full;
        if self.backpressure.is_none() {
            self.backpressure = other.backpressure;
        }
    }
}

impl std::ops::BitOrAssign<bool> for QueueReport {
    fn bitor_assign(&mut self, full: bool) {
        self.full |= full;
    }
}

/// The outcome of a subscribe, for one filter.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeResult {
    pub code: ReasonCode,
    /// The session had this subscription already (Retain Handling 1 skips retained then).
    pub existed: bool,
    /// The store op the SUBACK must wait for (0: none).
    pub wait_for: u64,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // The guarded structures stay consistent at every step a panic could interrupt.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Splits a filter into its shared group (if any) and the plain filter the trie stores.
fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Some(Ok((group, inner))) => (Some(group), inner),
        _ => (None, filter),
    }
}

impl Broker {
    /// A broker whose state lives in memory only.
    pub fn new(settings: BrokerSettings) -> Arc<Broker> {
        Arc::new(Broker::build(settings, None))
    }

    fn build(settings: BrokerSettings, store: Option<Arc<Persistence>>) -> Broker {
        Broker {
            settings,
            registry: Mutex::new(Registry::default()),
            index: ShardedIndex::new(INDEX_SHARDS),
            retained: RwLock::new(RetainedStore::new()),
            next_session_id: AtomicU64::new(1),
            next_connection_id: AtomicU64::new(1),
            store,
            cluster: OnceLock::new(),
            shared: OnceLock::new(),
            interest: Mutex::new(HashMap::new()),
            captures: Mutex::new(HashMap::new()),
            capturing: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            keep_alive: KeepAlive::new(),
            started: std::time::Instant::now(),
            stats: Stats::default(),
        }
    }

    /// Connects the broker to its cluster: from now on local messages go to `bus` too, and the
    /// bus hears of every filter local sessions subscribe (starting with those that exist).
    /// A second call is ignored.
    pub fn set_cluster(&self, bus: Arc<dyn ClusterBus>) {
        let interest = lock(&self.interest);
        if self.cluster.set(Arc::clone(&bus)).is_ok() {
            for filter in interest.keys() {
                bus.interest(filter, true);
            }
        }
    }

    /// Makes the broker claim and load sessions through `shared` (a store other nodes use too).
    pub fn set_shared_sessions(&self, shared: Arc<dyn SharedSessions>) {
        let _ = self.shared.set(shared);
    }

    pub fn cluster(&self) -> Option<&Arc<dyn ClusterBus>> {
        self.cluster.get()
    }

    /// Counts a local subscription on `filter` in or out, telling the bus when the count
    /// leaves or reaches zero.
    fn count_interest(&self, filter: &str, added: bool) {
        let (_, plain) = split_filter(filter);
        let mut interest = lock(&self.interest);
        let changed = if added {
            let n = interest.entry(plain.into()).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match interest.get_mut(plain) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    interest.remove(plain);
                    true
                }
                None => false,
            }
        };
        if changed {
            if let Some(bus) = self.cluster.get() {
                bus.interest(plain, added);
            }
        }
    }

    /// A broker that writes its sessions and retained messages through `store`, starting from
    /// what `snapshot` holds: sessions come back offline with their subscriptions, queues, messages
    /// in flight and QoS 2 ids; their expiry and pending wills count on from when they were left.
    /// Must run inside the tokio runtime (it sets the expiry timers).
    pub fn restore(
        settings: BrokerSettings,
        store: Arc<Persistence>,
        snapshot: Snapshot,
    ) -> Arc<Broker> {
        let broker = Arc::new(Broker::build(settings, Some(store)));
        let now = Instant::now();
        {
            let mut retained = write(&broker.retained);
            for m in snapshot.retained {
                if !m.is_expired(now) {
                    retained.set(m);
                }
            }
        }
        let (mut sessions, mut queued, mut dropped) = (0usize, 0usize, 0usize);
        for loaded in snapshot.sessions {
            let (_, q, d) = broker.install(loaded);
            queued += q;
            dropped += d;
            sessions += 1;
        }
        info!(
            sessions,
            queued_messages = queued,
            expired_dropped = dropped,
            retained = broker.retained_count(),
            "store loaded"
        );
        broker
    }

    /// Registers a session read from the store as an offline session, with its subscriptions,
    /// queue, messages in flight, QoS 2 ids, and its will and expiry timers counting on from when
    /// it was left. Returns it with the numbers of queued and of expired (dropped) messages.
    fn install(self: &Arc<Self>, loaded: LoadedSession) -> (Arc<Session>, usize, usize) {
        let now = Instant::now();
        let now_ms = store::now_ms();
        let (mut queued, mut dropped) = (0usize, 0usize);
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let expiry = loaded.record.expiry_interval;
        let session = Arc::new(Session::new(id, loaded.client_id.clone(), expiry));
        {
            let mut state = session.lock();
            state.stored = true;
            state.generation = 1;
            let index = &self.index;
            for (filter, options, sub_id) in loaded.subscriptions {
                let (group, plain) = split_filter(&filter);
                self.count_interest(&filter, true);
                index.insert(
                    plain,
                    group,
                    Subscriber {
                        session: Arc::clone(&session),
                        options,
                        id: sub_id,
                    },
                );
                state.subscriptions.make().insert(
                    filter,
                    SubscriptionRecord {
                        options,
                        id: sub_id,
                    },
                );
            }
            for (seq, entry) in loaded.queue {
                state.next_seq = state.next_seq.max(seq + 1);
                if entry.message.is_expired(now) {
                    dropped += 1;
                    self.persist_op(StoreOp::QueueDelete {
                        client_id: loaded.client_id.clone(),
                        seq,
                    });
                    continue;
                }
                queued += 1;
                if let Some(store) = &self.store {
                    // Counted whatever the cap: what the store already holds stays.
                    let _ = store.reserve(entry.message.weight());
                }
                let delivery = Delivery {
                    message: entry.message,
                    qos: entry.qos,
                    retain: entry.retain,
                    subscription_ids: entry.subscription_ids,
                    seq,
                };
                match entry.stage {
                    Some(stage) if entry.packet_id != 0 => {
                        state.inflight.push_back(crate::session::Outgoing {
                            packet_id: entry.packet_id,
                            delivery,
                            stage,
                        })
                    }
                    _ => {
                        state.queued_bytes += delivery.message.weight();
                        state.queue.push_back(delivery);
                    }
                }
            }
            if !loaded.incoming.is_empty() {
                state.incoming_qos2_make().extend(loaded.incoming);
            }
        }
        let left = |since: Option<u64>, total: u32| -> u64 {
            let gone = since
                .map(|ms| now_ms.saturating_sub(ms) / 1000)
                .unwrap_or(0);
            u64::from(total).saturating_sub(gone)
        };
        if let Some((will, delay)) = loaded.record.will {
            session.lock().set_pending_will(Some(will));
            self.schedule_will(&session, left(loaded.record.disconnected_at_ms, delay), 1);
        }
        if expiry != NEVER_EXPIRES {
            self.schedule_expiry(&session, left(loaded.record.disconnected_at_ms, expiry), 1);
        }
        lock(&self.registry).insert(Arc::clone(&session), None);
        (session, queued, dropped)
    }

    /// Writes `op` if the broker has a store; returns its number (0: not written).
    fn persist_op(&self, op: StoreOp) -> u64 {
        self.store.as_ref().map(|s| s.submit(op)).unwrap_or(0)
    }

    /// Removes a delivery's stored copy, if it has one; returns the op's number (0: none).
    pub fn unstore(&self, client_id: &ByteStr, delivery: &Delivery) -> u64 {
        match &self.store {
            Some(store) if delivery.seq != 0 => {
                store.delete_queued(client_id, delivery.seq, delivery.message.weight())
            }
            _ => 0,
        }
    }

    /// Writes `op` about a session if the broker has a store and the session outlives its
    /// connection. Call with the session's lock held, so its ops reach the store in order.
    pub fn persist(
        &self,
        state: &crate::session::SessionState,
        op: impl FnOnce() -> StoreOp,
    ) -> u64 {
        match &self.store {
            Some(store) if state.expiry_interval > 0 => store.submit(op()),
            _ => 0,
        }
    }

    /// The store's progress, when there is one: acknowledgements wait for their op's number.
    pub fn committed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.as_ref().map(|s| s.committed())
    }

    /// Store op `op` is on disk (always, without a store; op 0 is no op).
    pub fn is_committed(&self, op: u64) -> bool {
        self.store.as_ref().is_none_or(|s| op <= s.last_committed())
    }

    /// Waits until every store op submitted so far is committed; at once without a store. A
    /// persistent session's CONNACK waits here, so a client told "connected" has its session
    /// record (and will) on disk.
    pub async fn store_barrier(&self) {
        if let Some(store) = &self.store {
            let target = store.submitted();
            let mut committed = store.committed();
            let _ = committed.wait_for(|c| *c >= target).await;
        }
    }

    /// Writes what is pending to the store and stops its writer (shutdown).
    pub async fn flush_store(&self) {
        if let Some(store) = &self.store {
            store.stop().await;
        }
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// How long the broker has been up.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Number of sessions, connected or not.
    pub fn session_count(&self) -> usize {
        lock(&self.registry).len()
    }

    /// A page of the sessions, by client id: those whose id holds `contains` and sorts after
    /// `after`, the first `limit` of them in order, each with whether a connection is attached.
    /// The ids are copied out under the lock (each a reference count); only the page is sorted.
    pub fn clients(&self, query: &ClientQuery<'_>) -> ClientPage {
        let (mut listed, total) = {
            let registry = lock(&self.registry);
            let listed: Vec<(ByteStr, bool)> = registry
                .map
                .iter()
                .filter(|(key, _)| {
                    let id = key.0.client_id().as_str();
                    id.contains(query.contains) && query.after.is_none_or(|after| id > after)
                })
                .map(|(key, connection)| (key.0.client_id().clone(), connection.is_some()))
                .collect();
            (listed, registry.len())
        };
        let matched = listed.len();
        let by_id = |a: &(ByteStr, bool), b: &(ByteStr, bool)| a.0.as_str().cmp(b.0.as_str());
        if listed.len() > query.limit {
            if query.limit > 0 {
                listed.select_nth_unstable_by(query.limit - 1, by_id);
            }
            listed.truncate(query.limit);
        }
        listed.sort_unstable_by(by_id);
        ClientPage {
            more: matched > listed.len(),
            clients: listed,
            total,
        }
    }

    /// `client_id`'s session here, if it has one: whether a connection is attached, its
    /// subscriptions and what waits in it.
    pub fn client(&self, client_id: &str) -> Option<ClientDetail> {
        let (session, connected) = {
            let registry = lock(&self.registry);
            let slot = registry.get(client_id)?;
            (Arc::clone(slot.session), slot.connection.is_some())
        };
        let state = session.lock();
        let mut subscriptions: Vec<(ByteStr, SubscriptionOptions)> = state
            .subscriptions
            .get()
            .map(|subs| {
                subs.iter()
                    .map(|(filter, record)| (filter.clone(), record.options))
                    .collect()
            })
            .unwrap_or_default();
        subscriptions.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Some(ClientDetail {
            connected,
            expiry_interval: state.expiry_interval,
            subscriptions,
            queued_messages: state.queue.len(),
            queued_bytes: state.queued_bytes,
            inflight: state.inflight.len(),
        })
    }

    /// Closes the connection attached to `client_id`'s session, with `reason` in a 5.0
    /// DISCONNECT; false when none is attached. The session then stays or ends by its expiry, as
    /// after any disconnection.
    pub fn disconnect_client(&self, client_id: &str, reason: ReasonCode) -> bool {
        let registry = lock(&self.registry);
        let Some(connection) = registry
            .get(client_id)
            .and_then(|slot| slot.connection.as_ref())
        else {
            return false;
        };
        // A control already pending (a takeover, shutdown) closes the connection as well.
        let _ = connection.control.try_send(Control::Disconnect(reason));
        true
    }

    pub fn subscription_count(&self) -> usize {
        self.index.len()
    }

    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Binds a new connection to the session of `client_id`, taking over any connection that
    /// holds it (MQTT-3.1.4-3) and ending the old session when `clean_start` is set. Returns the
    /// session and whether it was resumed ("session present"). `will` is stored with a session
    /// that outlives its connection, so a crash of the broker does not lose it.
    pub async fn attach(
        self: &Arc<Self>,
        client_id: ByteStr,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<(Arc<Message>, u32)>,
        connection: ConnectionHandle,
    ) -> (Arc<Session>, bool) {
        let moving = self.shared.get().is_some() && !lock(&self.registry).contains_key(&client_id);
        match (self.shared.get(), self.cluster.get()) {
            (Some(shared), _) if moving => {
                // It announces the connection itself, once it listens for the session's filters.
                self.take_from_cluster(
                    Arc::clone(shared),
                    &client_id,
                    clean_start,
                    expiry_interval,
                )
                .await;
            }
            (_, Some(bus)) => bus.client_connected(&client_id),
            _ => {}
        }
        // Each turn either finds no live connection and attaches, or closes the one it finds and
        // looks again: a third connection for the same id may have slipped in meanwhile.
        loop {
            let existing = {
                let mut registry = lock(&self.registry);
                let live = registry
                    .get(&client_id)
                    .and_then(|slot| slot.connection.clone());
                match live {
                    Some(old) => old,
                    None => {
                        return self.attach_locked(
                            &mut registry,
                            client_id,
                            clean_start,
                            expiry_interval,
                            will,
                            connection,
                        )
                    }
                }
            };
            info!(client_id = %client_id, "session taken over by a new connection");
            // A full control channel means the old connection is already closing.
            let _ = existing
                .control
                .try_send(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER));
            if tokio::time::timeout(self.settings.takeover_timeout, existing.control.closed())
                .await
                .is_err()
            {
                warn!(client_id = %client_id, "taken-over connection did not close in time; detaching it");
                lock(&self.registry).detach(&client_id, &existing.control);
            }
        }
    }

    /// Brings a session that another node may own here, before a connection attaches to it:
    /// waits until its owner lets go (it closes its connection when the bus tells it a client
    /// connected here) or is found dead, claims it, and loads it as an offline session. A clean
    /// start instead deletes what is stored. Store errors are logged and the client gets a new
    /// session: the connection is not refused for a store it cannot see.
    async fn take_from_cluster(
        self: &Arc<Self>,
        shared: Arc<dyn SharedSessions>,
        client_id: &ByteStr,
        clean_start: bool,
        expiry_interval: u32,
    ) {
        // Listen for the session's filters before its owner is told to let go, so what is
        // published while it moves is kept here (the owner stores what came before).
        let captured: Vec<(ByteStr, QoS)> = if clean_start {
            Vec::new()
        } else {
            let (shared, cid) = (Arc::clone(&shared), client_id.clone());
            match tokio::task::spawn_blocking(move || shared.subscriptions(&cid)).await {
                Ok(Ok(subs)) => subs
                    .into_iter()
                    .filter(|(f, _, _)| split_filter(f).0.is_none())
                    .map(|(f, options, _)| (f, options.qos))
                    .collect(),
                _ => Vec::new(),
            }
        };
        if !captured.is_empty() {
            lock(&self.captures).insert(
                client_id.clone(),
                Capture {
                    filters: captured.clone(),
                    messages: Vec::new(),
                },
            );
            self.capturing.fetch_add(1, Ordering::AcqRel);
            for (filter, _) in &captured {
                self.count_interest(filter, true);
            }
        }
        if let Some(bus) = self.cluster.get() {
            if !captured.is_empty() {
                bus.settled().await;
            }
            bus.client_connected(client_id);
        }
        let deadline = std::time::Instant::now() + self.settings.takeover_timeout;
        let cid = client_id.clone();
        let claim = !clean_start || expiry_interval > 0;
        let work = move || -> Result<Option<LoadedSession>, crate::store::StoreError> {
            loop {
                let owner = match shared.owner(&cid)? {
                    Some(owner) if owner != shared.node() => owner,
                    _ => break,
                };
                if !shared.is_alive(&owner)? {
                    info!(client_id = %cid, node = %owner, "session owned by a node that is gone: taking it");
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    warn!(client_id = %cid, node = %owner, "session owner did not let go in time: taking it");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if claim {
                shared.claim(&cid)?;
            }
            if clean_start {
                Ok(None)
            } else {
                shared.load_session(&cid)
            }
        };
        let loaded = match tokio::task::spawn_blocking(work).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                warn!(client_id = %client_id, error = %e, "shared store: session not loaded; starting a new one");
                None
            }
            Err(e) => {
                warn!(client_id = %client_id, error = %e, "shared store: session load failed");
                None
            }
        };
        if clean_start {
            self.persist_op(StoreOp::SessionDelete {
                client_id: client_id.clone(),
            });
        }
        let mut captures = lock(&self.captures);
        let capture = captures.remove(client_id);
        if let Some(loaded) = loaded {
            // A connection for the same id may have attached here meanwhile: it holds the
            // session now, and the loaded copy is older.
            if !lock(&self.registry).contains_key(client_id) {
                let tail: Vec<Arc<Message>> = loaded
                    .queue
                    .iter()
                    .map(|(_, e)| Arc::clone(&e.message))
                    .collect();
                let (session, queued, _) = self.install(loaded);
                let caught = capture
                    .map(|c| self.merge_capture(&session, &tail, c))
                    .unwrap_or(0);
                info!(client_id = %client_id, queued, caught_in_move = caught, "session loaded from the shared store");
            }
        }
        drop(captures);
        if !captured.is_empty() {
            self.capturing.fetch_sub(1, Ordering::AcqRel);
            for (filter, _) in &captured {
                self.count_interest(filter, false);
            }
        }
    }

    /// Queues what was captured while the session moved, after what its old node stored. The
    /// two overlap: the old node stored the messages that reached it until it let go, and this
    /// node captured from the moment it listened. Both saw the bus in the same order (one
    /// Redis), so the overlap is the longest tail of the loaded queue that equals the start of
    /// the capture. Returns how many messages were queued from the capture.
    fn merge_capture(&self, session: &Session, loaded: &[Arc<Message>], capture: Capture) -> usize {
        let queue_qos0 = self.settings.queue.queue_qos0;
        // What the old node would have queued: deliveries above QoS 0 (QoS 0 too if queued).
        let deliveries: Vec<(Arc<Message>, QoS)> = capture
            .messages
            .into_iter()
            .filter_map(|m| {
                let qos = capture
                    .filters
                    .iter()
                    .filter(|(f, _)| pigeon_codec::topic::matches(f, &m.topic))
                    .map(|(_, q)| m.qos.min(*q))
                    .max()?;
                (qos != QoS::AtMostOnce || queue_qos0).then_some((m, qos))
            })
            .collect();
        let same = |a: &Message, b: &Message| {
            a.topic == b.topic && a.payload == b.payload && a.qos == b.qos
        };
        let longest = loaded.len().min(deliveries.len());
        let overlap = (1..=longest)
            .rev()
            .find(|&k| {
                loaded[loaded.len() - k..]
                    .iter()
                    .zip(&deliveries[..k])
                    .all(|(a, (b, _))| same(a, b))
            })
            .unwrap_or(0);
        let mut queued = 0;
        for (message, qos) in deliveries.into_iter().skip(overlap) {
            let delivery = Delivery {
                qos,
                retain: false,
                subscription_ids: Vec::new(),
                message,
                seq: 0,
            };
            self.enqueue(session, delivery);
            queued += 1;
        }
        queued
    }

    /// A session this node took over from a node that died: registered as an offline session
    /// (its queue fills, its will and expiry run), unless the client is here already.
    pub fn adopt_session(self: &Arc<Self>, loaded: LoadedSession) -> bool {
        if lock(&self.registry).contains_key(&loaded.client_id) {
            return false;
        }
        self.install(loaded);
        true
    }

    /// Another node got a connection for `client_id`: closes the local connection (0x8E in
    /// 5.0, as a local takeover does; its will goes as it would then) and gives the session up.
    /// With a store shared by the nodes the session stays stored, and once what this node wrote
    /// is committed its ownership is released for the other node to load it. Without one, the
    /// session ends here: the client lives on the other node now, and a will waiting out its
    /// delay is cancelled (its client came back). Returns whether this node held the session.
    pub async fn yield_session(self: &Arc<Self>, client_id: &ByteStr) -> bool {
        let shared = self.shared.get().cloned();
        let mut held = false;
        loop {
            let existing = {
                let mut registry = lock(&self.registry);
                let Some(slot) = registry.get(client_id) else {
                    break;
                };
                held = true;
                match slot.connection.clone() {
                    Some(connection) => connection,
                    None => {
                        let session = registry.remove(client_id).expect("looked up above");
                        drop(registry);
                        self.let_go(&session, shared.is_some());
                        break;
                    }
                }
            };
            info!(client_id = %client_id, "session taken over by a connection on another node");
            let _ = existing
                .control
                .try_send(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER));
            if tokio::time::timeout(self.settings.takeover_timeout, existing.control.closed())
                .await
                .is_err()
            {
                warn!(client_id = %client_id, "taken-over connection did not close in time; detaching it");
                lock(&self.registry).detach(client_id, &existing.control);
            }
        }
        if let (true, Some(shared)) = (held, shared) {
            self.store_barrier().await;
            let cid = client_id.clone();
            match tokio::task::spawn_blocking(move || shared.release(&cid)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(client_id = %client_id, error = %e, "shared store: release failed")
                }
                Err(e) => warn!(client_id = %client_id, error = %e, "shared store: release failed"),
            }
        }
        held
    }

    /// Drops a session another node took. `keep_stored`: its stored state stays for that node
    /// (only the index entries and counters go here); otherwise the session ends.
    fn let_go(&self, session: &Arc<Session>, keep_stored: bool) {
        if !keep_stored {
            // The pending will is dropped: its client is connected again, elsewhere.
            let _ = self.end_session(session);
            return;
        }
        let filters: Vec<ByteStr> = {
            let mut state = session.lock();
            // Timers armed for this session find a new generation and do nothing.
            state.generation = state.generation.wrapping_add(1);
            state.set_pending_will(None);
            if let Some(store) = &self.store {
                let stored: usize = state
                    .queue
                    .iter()
                    .chain(state.inflight.iter().map(|o| &o.delivery))
                    .filter(|d| d.seq != 0)
                    .map(|d| d.message.weight())
                    .sum();
                store.release(stored);
            }
            state.queue.clear();
            state.queued_bytes = 0;
            state.inflight.clear();
            state.stored = false;
            state.subscriptions.take().into_keys().collect()
        };
        for filter in &filters {
            let (group, plain) = split_filter(filter);
            self.index.remove(plain, group, session.id());
            self.count_interest(filter, false);
        }
        debug!(client_id = %session.client_id(), "session handed to another node");
    }

    fn attach_locked(
        &self,
        registry: &mut Registry,
        client_id: ByteStr,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<(Arc<Message>, u32)>,
        connection: ConnectionHandle,
    ) -> (Arc<Session>, bool) {
        let mut will_to_publish = None;
        let resumed = match registry.remove(&client_id) {
            Some(session) if !clean_start => Some(session),
            Some(session) => {
                // Clean start ends the old session: its subscriptions go, and a will still
                // waiting out its delay is published now (the session ended first).
                will_to_publish = self.end_session(&session);
                None
            }
            None => None,
        };
        let present = resumed.is_some();
        let session = resumed.unwrap_or_else(|| {
            let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
            Arc::new(Session::new(id, client_id.clone(), expiry_interval))
        });
        {
            let mut state = session.lock();
            let was_stored = state.stored;
            state.expiry_interval = expiry_interval;
            state.generation = state.generation.wrapping_add(1);
            // MQTT-3.1.3-9 (5.0): a new connection before the will delay ends cancels the will.
            state.set_pending_will(None);
            let record = SessionRecord {
                expiry_interval,
                disconnected_at_ms: None,
                will,
            };
            if self.persist(&state, || StoreOp::SessionPut {
                client_id: client_id.clone(),
                record,
            }) != 0
            {
                state.stored = true;
            } else if was_stored {
                // A resumed session that no longer outlives its connection leaves the store.
                self.persist_op(StoreOp::SessionDelete {
                    client_id: client_id.clone(),
                });
                state.stored = false;
            }
        }
        session.set_connected(true);
        registry.insert(Arc::clone(&session), Some(connection));
        if let Some(will) = will_to_publish {
            self.publish(will);
        }
        (session, present)
    }

    /// Removes the session's subscriptions from the index (and the session from the store) and
    /// returns its pending will.
    fn end_session(&self, session: &Arc<Session>) -> Option<Arc<Message>> {
        let (filters, will) = {
            let mut state = session.lock();
            if let Some(store) = &self.store {
                // The session's rows go with SessionDelete; only the byte count is settled here.
                let stored: usize = state
                    .queue
                    .iter()
                    .chain(state.inflight.iter().map(|o| &o.delivery))
                    .filter(|d| d.seq != 0)
                    .map(|d| d.message.weight())
                    .sum();
                store.release(stored);
            }
            state.queue.clear();
            state.queued_bytes = 0;
            state.inflight.clear();
            if let Some(ids) = state.incoming_qos2_mut() {
                std::mem::take(ids);
            }
            if state.stored {
                self.persist_op(StoreOp::SessionDelete {
                    client_id: session.client_id().clone(),
                });
                state.stored = false;
            }
            let filters: Vec<ByteStr> = state.subscriptions.take().into_keys().collect();
            (filters, state.take_pending_will())
        };
        let index = &self.index;
        for filter in &filters {
            let (group, plain) = split_filter(filter);
            index.remove(plain, group, session.id());
            self.count_interest(filter, false);
        }
        if let (Some(shared), Ok(runtime)) =
            (self.shared.get(), tokio::runtime::Handle::try_current())
        {
            // Let other nodes take the client id without waiting for this node.
            let (shared, cid) = (Arc::clone(shared), session.client_id().clone());
            runtime.spawn_blocking(move || {
                if let Err(e) = shared.release(&cid) {
                    warn!(client_id = %cid, error = %e, "shared store: release failed");
                }
            });
        }
        debug!(client_id = %session.client_id(), "session ended");
        will
    }

    /// The connection whose handle carries the other end of `line` has ended. Publishes or
    /// schedules the will, and ends the session now or schedules its expiry. Call before
    /// dropping `line`.
    pub fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        line: &ControlReceiver,
        departure: Departure,
        will: Option<(Arc<Message>, u32)>,
    ) {
        let will = if departure == Departure::WithWill {
            will
        } else {
            None
        };
        let mut registry = lock(&self.registry);
        // The session is ours to settle only if it is still registered and no other connection
        // holds it. Otherwise it ended (clean start elsewhere) or was handed on (this connection
        // was detached by force after a takeover timed out): only the will belongs to us.
        let ours = match registry.get(session.client_id()) {
            Some(slot) if Arc::ptr_eq(slot.session, session) => match slot.connection {
                Some(_) => registry.detach_if(session.client_id(), |c| c.control.is_line_of(line)),
                None => true,
            },
            _ => false,
        };
        if !ours {
            drop(registry);
            if let Some((will, _)) = will {
                self.publish(will);
            }
            return;
        }
        let (expiry, generation) = {
            let state = session.lock();
            (state.expiry_interval, state.generation)
        };
        if expiry == 0 && departure != Departure::Shutdown {
            registry.remove(session.client_id());
            drop(registry);
            let pending = self.end_session(session);
            debug_assert!(pending.is_none());
            if let Some((will, _)) = will {
                self.publish(will);
            }
            return;
        }
        drop(registry);
        let delayed_will = match will {
            Some((will, 0)) => {
                self.publish(will);
                None
            }
            Some((will, delay)) => Some((will, delay)),
            None => None,
        };
        {
            let mut state = session.lock();
            let record = SessionRecord {
                expiry_interval: expiry,
                disconnected_at_ms: Some(store::now_ms()),
                will: delayed_will.clone(),
            };
            self.persist(&state, || StoreOp::SessionPut {
                client_id: session.client_id().clone(),
                record,
            });
            // A QoS 1 message in flight stays stored as queued while its connection lasts (one
            // write fewer per message). From here on it keeps its packet id in the store too, so
            // that after a restart it is resent with that id and DUP [MQTT-4.4.0-1].
            for o in state.inflight.iter() {
                if o.delivery.qos == QoS::AtLeastOnce && o.delivery.seq != 0 {
                    self.persist(&state, || StoreOp::QueuePut {
                        client_id: session.client_id().clone(),
                        seq: o.delivery.seq,
                        entry: store::QueueEntry::in_flight(o),
                    });
                }
            }
            if let Some((will, _)) = &delayed_will {
                state.set_pending_will(Some(Arc::clone(will)));
            }
        }
        if departure == Departure::Shutdown {
            return;
        }
        if let Some((_, delay)) = delayed_will {
            self.schedule_will(session, u64::from(delay), generation);
        }
        if expiry != NEVER_EXPIRES {
            self.schedule_expiry(session, u64::from(expiry), generation);
        }
    }

    /// Publishes the session's pending will after `secs`, unless a client reattached meanwhile.
    fn schedule_will(self: &Arc<Self>, session: &Arc<Session>, secs: u64, generation: u32) {
        let broker = Arc::clone(self);
        let session = Arc::clone(session);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let will = {
                let mut state = session.lock();
                if state.generation != generation {
                    return;
                }
                let will = state.take_pending_will();
                if will.is_some() {
                    let record = SessionRecord {
                        expiry_interval: state.expiry_interval,
                        disconnected_at_ms: Some(store::now_ms()),
                        will: None,
                    };
                    broker.persist(&state, || StoreOp::SessionPut {
                        client_id: session.client_id().clone(),
                        record,
                    });
                }
                will
            };
            if let Some(will) = will {
                broker.publish(will);
            }
        });
    }

    /// Ends the session after `secs` unless a client reattached meanwhile.
    fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, secs: u64, generation: u32) {
        let broker = Arc::clone(self);
        let session = Arc::clone(session);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            broker.expire(&session, generation);
        });
    }

    /// Ends a detached session whose expiry interval ran out, unless a client came back.
    fn expire(&self, session: &Arc<Session>, generation: u32) {
        let mut registry = lock(&self.registry);
        let current = registry
            .get(session.client_id())
            .is_some_and(|slot| Arc::ptr_eq(slot.session, session) && slot.connection.is_none());
        if !current || session.lock().generation != generation {
            return;
        }
        registry.remove(session.client_id());
        drop(registry);
        info!(client_id = %session.client_id(), "session expired");
        if let Some(will) = self.end_session(session) {
            self.publish(will);
        }
    }

    /// Routes a message accepted on this node to every matching session, stores it if
    /// retained, and hands it to the cluster bus if there is one.
    pub fn publish(&self, message: Arc<Message>) -> PublishOutcome {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let message = Self::start_expiry(message);
        let Some(bus) = self.cluster.get() else {
            return self.route(&message, true, Groups::All);
        };
        // With the bus up, shared groups are served when the message comes back from it, so one
        // member gets it cluster-wide; without it, this node's members serve them.
        let groups = if bus.connected() {
            Groups::Skip
        } else {
            Groups::All
        };
        let outcome = self.route(&message, true, groups);
        bus.publish(&message);
        outcome
    }

    /// Routes a message the broker makes about itself (`$SYS`) to this node's subscribers only,
    /// retained in memory: each node reports on itself, and a restart starts the reports anew.
    /// It is not counted in `messages_received`, which then changes only with what clients send.
    pub fn publish_local(&self, message: Arc<Message>) -> PublishOutcome {
        self.route(&message, false, Groups::All)
    }

    /// Routes a message that came from another node (or was injected into the bus): to local
    /// subscriptions except shared groups, which `publish_to_groups` serves. A retained one
    /// replaces the retained message here; `store_retained` says whether this node also writes
    /// it to the store (with a store shared by the nodes, only one of them does).
    pub fn publish_from_bus(&self, message: Arc<Message>, store_retained: bool) -> PublishOutcome {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let message = Self::start_expiry(message);
        self.route(&message, store_retained, Groups::Skip)
    }

    /// The keys (`<group>/<filter>`) of the shared groups with a local member that `topic`
    /// matches: the groups this node may bid to serve for one message.
    pub fn shared_groups(&self, topic: &str) -> Vec<String> {
        let mut keys = Vec::new();
        self.index.for_each_match(topic, |m| {
            if let Match::Shared(group) = m {
                if !group.members().is_empty() {
                    keys.push(group.key().to_owned());
                }
            }
        });
        keys
    }

    /// Delivers `message` to one local member of each of the shared groups named (the groups
    /// this node won for the message), and nowhere else.
    pub fn publish_to_groups(&self, message: Arc<Message>, groups: &[String]) -> PublishOutcome {
        let message = Self::start_expiry(message);
        self.route_matches(&message, false, Groups::Only(groups))
    }

    /// A message still carrying its Message Expiry Interval (a will, a bus message) starts it
    /// now.
    fn start_expiry(message: Arc<Message>) -> Arc<Message> {
        match message.properties.message_expiry_interval {
            Some(_) => Arc::new(Message::new(
                message.topic.clone(),
                message.payload.clone(),
                message.qos,
                message.retain,
                message.properties.clone(),
                message.origin.clone(),
            )),
            None => message,
        }
    }

    /// Updates (and, if `store_retained`, stores) the retained message, then routes. The
    /// callers count what they accept in `messages_received`.
    fn route(
        &self,
        message: &Arc<Message>,
        store_retained: bool,
        groups: Groups,
    ) -> PublishOutcome {
        let mut wait_for = 0;
        if message.retain && self.settings.retain_available {
            let mut retained = write(&self.retained);
            retained.set(Arc::clone(message));
            // Written under the retained lock, so the store keeps the last of racing publishes.
            wait_for = if !store_retained {
                0
            } else if message.payload.is_empty() {
                self.persist_op(StoreOp::RetainDelete {
                    topic: message.topic.clone(),
                })
            } else {
                self.persist_op(StoreOp::RetainPut {
                    message: Arc::clone(message),
                })
            };
        }
        let mut outcome = if self.capturing.load(Ordering::Acquire) > 0 {
            // A session is moving here: it is captured and routed as one step, so the merge
            // (under the same lock) sees each message either in the capture or in the queue.
            let mut captures = lock(&self.captures);
            for capture in captures.values_mut() {
                let wanted = capture
                    .filters
                    .iter()
                    .any(|(f, _)| pigeon_codec::topic::matches(f, &message.topic));
                if wanted && capture.messages.len() < CAPTURE_MAX {
                    capture.messages.push(Arc::clone(message));
                }
            }
            self.route_matches(message, true, groups)
        } else {
            self.route_matches(message, true, groups)
        };
        outcome.wait_for = outcome.wait_for.max(wait_for);
        outcome
    }

    /// Queues `message` for the matching sessions: plain subscriptions if `plain`, and the
    /// shared groups `groups` admits.
    fn route_matches(&self, message: &Arc<Message>, plain: bool, groups: Groups) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let mut targets = Targets::default();
        // Each share group delivers its own copy, even to a session that also gets one through
        // another subscription (5.0 section 4.8.2), so group picks are kept out of the merge.
        let mut shared_targets = Vec::new();
        let mut sources = 0usize;
        {
            self.index.for_each_match(&message.topic, |m| {
                let (sub, shared) = match m {
                    Match::Single(sub) if plain => (sub, false),
                    Match::Single(_) => return,
                    Match::Shared(group) => {
                        let serve = match groups {
                            Groups::All => true,
                            Groups::Skip => false,
                            Groups::Only(keys) => keys.iter().any(|k| k == group.key()),
                        };
                        match group.pick() {
                            Some(sub) if serve => (sub, true),
                            _ => return,
                        }
                    }
                };
                // MQTT-3.8.3-3: No Local keeps a client's own messages from it.
                if sub.options.no_local && message.origin.as_ref() == Some(sub.session.client_id())
                {
                    return;
                }
                let ids = sub.id.map(|id| vec![id]).unwrap_or_default();
                let target = (Arc::clone(&sub.session), sub.options, ids);
                if shared {
                    shared_targets.push(target);
                } else {
                    sources += 1;
                    targets.push(target);
                }
            });
        }
        if sources > 1 {
            // More than one target: all of them are in `many`.
            merge_overlapping(&mut targets.many);
        }
        for target in shared_targets {
            targets.push(target);
        }
        // The clock is read only for a message that can expire.
        if message.expires_at.is_some() && message.is_expired(Instant::now()) {
            return outcome;
        }
        outcome.routed = targets.len();
        let one = targets.one.take();
        for (session, options, ids) in one.into_iter().chain(targets.many.drain(..)) {
            let delivery = Delivery {
                qos: message.qos.min(options.qos),
                retain: message.retain && options.retain_as_published,
                subscription_ids: ids,
                message: Arc::clone(message),
                seq: 0,
            };
            let (written, full) = self.enqueue(&session, delivery);
            outcome.wait_for = outcome.wait_for.max(written);
            outcome.quota_exceeded |= full;
        }
        outcome
    }

    /// Queues a delivery; returns the number of the store op that holds it (0: none), whether it
    /// was dropped for want of room, and the target's backpressure if its queue is high.
    fn enqueue(&self, session: &Session, delivery: Delivery) -> (u64, QueueReport) {
        let (outcome, written, backpressure) =
            session.enqueue(delivery, &self.settings.queue, self.store.as_deref());
        let full = match outcome {
            Enqueued::Queued => false,
            Enqueued::QueuedEvictedQos0 | Enqueued::DroppedFull | Enqueued::DroppedStoreFull => {
                let n = self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                // One line per 1000 drops keeps a flood from flooding the log too.
                if n.is_multiple_of(1000) {
                    let why = if outcome == Enqueued::DroppedStoreFull {
                        "store full: message dropped (limits.max_stored_bytes)"
                    } else {
                        "session queue full: message dropped (limits.max_queued_messages / max_queued_bytes)"
                    };
                    warn!(client_id = %session.client_id(), dropped_total = n + 1, "{why}");
                }
                outcome != Enqueued::QueuedEvictedQos0
            }
            Enqueued::DroppedOffline => {
                self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        (written, QueueReport { full, backpressure })
    }

    /// Adds or replaces one subscription of `session`, then queues the retained messages its
    /// Retain Handling asks for. `filter` is valid (the codec checked it).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteStr,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubscribeResult {
        let (group, plain) = split_filter(filter);
        let (existed, mut wait_for) = {
            // The session's record and the index change together under the session lock, so a
            // concurrent end_session cannot leave an index entry behind.
            let mut state = session.lock();
            let existed = state
                .subscriptions
                .make()
                .insert(filter.clone(), SubscriptionRecord { options, id })
                .is_some();
            if !existed {
                self.count_interest(filter, true);
            }
            self.index.insert(
                plain,
                group,
                Subscriber {
                    session: Arc::clone(session),
                    options,
                    id,
                },
            );
            let written = self.persist(&state, || StoreOp::SubscriptionPut {
                client_id: session.client_id().clone(),
                filter: filter.clone(),
                options,
                id,
            });
            (existed, written)
        };
        let send_retained = group.is_none()
            && match options.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscribe => !existed,
                RetainHandling::Never => false,
            };
        if send_retained {
            let mut found = Vec::new();
            read(&self.retained)
                .for_each_match(plain, Instant::now(), |m| found.push(Arc::clone(m)));
            for message in found {
                let delivery = Delivery {
                    qos: message.qos.min(options.qos),
                    retain: true,
                    subscription_ids: id.into_iter().collect(),
                    message,
                    seq: 0,
                };
                wait_for = wait_for.max(self.enqueue(session, delivery).0);
            }
        }
        let code = match options.qos {
            QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
            QoS::AtLeastOnce => ReasonCode::GRANTED_QOS_1,
            QoS::ExactlyOnce => ReasonCode::GRANTED_QOS_2,
        };
        SubscribeResult {
            code,
            existed,
            wait_for,
        }
    }

    /// Removes one subscription: `None` if the session had none for `filter`, else the number of
    /// the store op that records it (0: none).
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteStr) -> Option<u64> {
        let (group, plain) = split_filter(filter);
        let mut state = session.lock();
        state.subscriptions.get_mut()?.remove(filter.as_str())?;
        self.index.remove(plain, group, session.id());
        self.count_interest(filter, false);
        Some(self.persist(&state, || StoreOp::SubscriptionDelete {
            client_id: session.client_id().clone(),
            filter: filter.clone(),
        }))
    }

    /// Drops expired retained messages; the server calls this now and then.
    pub fn sweep_expired_retained(&self) -> usize {
        write(&self.retained).remove_expired(Instant::now())
    }

    /// The session of a client id, if there is one (for tests and the admin API).
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        lock(&self.registry)
            .get(client_id)
            .map(|s| Arc::clone(s.session))
    }

    /// Starts shutting down: every attached connection is asked to close (`Control::Shutdown`),
    /// and one attached from now on finds `is_shutting_down` true. The flag is set before the
    /// registry is walked, so a connection that attaches meanwhile is either in the walk or
    /// sees the flag when it checks after `attach`.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let registry = lock(&self.registry);
        for c in registry.connections() {
            // A connection with a control pending is closing already.
            let _ = c.control.try_send(Control::Shutdown);
        }
    }

    /// The keep alive wheel of the connections (see `keepalive`).
    pub fn keep_alive(&self) -> &KeepAlive {
        &self.keep_alive
    }

    /// `shut_down` was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn id_of(session: &Session) -> SessionId {
        session.id()
    }
}

/// One delivery per session when several of its filters match (MQTT-3.3.4-2 lets 3.1.1 send
/// copies; 5.0 wants one with every subscription identifier, MQTT-3.3.4-3/5): the highest QoS,
/// Retain As Published if any match asks for it, and all identifiers.
fn merge_overlapping(targets: &mut Vec<Target>) {
    targets.sort_by_key(|(s, _, _)| s.id());
    // In place: `dedup_by` hands each entry with the one kept before it, into which it merges.
    targets.dedup_by(|(session, options, ids), (kept, o, i)| {
        if kept.id() != session.id() {
            return false;
        }
        o.qos = o.qos.max(options.qos);
        o.retain_as_published |= options.retain_as_published;
        i.append(ids);
        true
    });
}

/// One session a message goes to, with the options and identifiers of its matching
/// subscriptions.
type Target = (Arc<Session>, SubscriptionOptions, Vec<u32>);

thread_local! {
    /// `route_matches`' target list, kept between messages (empty, with its capacity): one
    /// allocation per thread instead of one per message.
    static TARGETS: Cell<Vec<Target>> = const { Cell::new(Vec::new()) };
}

/// The sessions one message goes to. The first is kept inline, as most messages of a fan-in
/// have one; the thread's list (`TARGETS`) is fetched for a second one, and returned on drop.
#[derive(Default)]
struct Targets {
    one: Option<Target>,
    /// Every target once there are two or more (`one` is then empty).
    many: Vec<Target>,
}

impl Targets {
    fn push(&mut self, target: Target) {
        if self.one.is_none() && self.many.is_empty() {
            self.one = Some(target);
            return;
        }
        if self.many.capacity() == 0 {
            self.many = TARGETS.take();
        }
        self.many.extend(self.one.take());
        self.many.push(target);
    }

    fn len(&self) -> usize {
        usize::from(self.one.is_some()) + self.many.len()
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        // A list a large fan-out grew is not worth keeping per thread.
        if self.many.capacity() > 0 && self.many.capacity() <= 1024 {
            self.many.clear();
            TARGETS.set(std::mem::take(&mut self.many));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::control_channel;

    /// Pages of any size, read one after the other, list every session once and in order;
    /// `contains` narrows them.
    #[tokio::test]
    async fn client_pages_cover_every_session_in_order() {
        let broker = Broker::new(BrokerSettings::default());
        let mut lines = Vec::new();
        let mut ids: Vec<String> = (0..50).map(|i| format!("c{:02}", (i * 37) % 50)).collect();
        for id in &ids {
            let (tx, rx) = control_channel();
            let handle = ConnectionHandle { control: tx };
            broker
                .attach(ByteStr::from(id.as_str()), false, 60, None, handle)
                .await;
            lines.push(rx);
        }
        ids.sort();
        for limit in [1, 7, 49, 50, 51] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = broker.clients(&ClientQuery {
                    after: after.as_deref(),
                    contains: "",
                    limit,
                });
                assert_eq!(page.total, 50);
                assert!(page.clients.len() <= limit);
                assert!(page.clients.iter().all(|(_, connected)| *connected));
                seen.extend(page.clients.iter().map(|(id, _)| id.as_str().to_owned()));
                if !page.more {
                    break;
                }
                after = seen.last().cloned();
            }
            assert_eq!(seen, ids, "limit {limit}");
        }
        let page = broker.clients(&ClientQuery {
            after: Some("c10"),
            contains: "1",
            limit: 100,
        });
        let listed: Vec<&str> = page.clients.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            listed,
            ["c11", "c12", "c13", "c14", "c15", "c16", "c17", "c18", "c19", "c21", "c31", "c41"]
        );
        assert!(!page.more);
        let none = broker.clients(&ClientQuery {
            after: None,
            contains: "",
            limit: 0,
        });
        assert!(none.clients.is_empty() && none.more);
    }
}
