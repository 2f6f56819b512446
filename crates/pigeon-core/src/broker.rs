//! The broker: the session registry, the subscription index, the retained store and the router.
//!
//! It knows nothing of sockets. A connection task calls `attach` after a valid CONNECT, then
//! `publish`, `subscribe`, `unsubscribe`, and `detach` when it ends. Locks: the registry mutex,
//! the index and retained `RwLock`s and each session's mutex are taken one at a time, never nested
//! and never across `.await`; routing takes the index read lock, which publishers on every core
//! share without waiting on each other.

use crate::message::{Delivery, Message};
use crate::retain::RetainedStore;
use crate::session::{
    Enqueued, QueueLimits, Session, SessionId, SubscriptionRecord, NEVER_EXPIRES,
};
use crate::stats::Stats;
use crate::subscriptions::{Match, Subscriber, SubscriptionIndex};
use pigeon_codec::topic::parse_shared;
use pigeon_codec::{ByteStr, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn};

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

/// What the broker may ask of a connection task.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Close the connection, with this reason in a 5.0 DISCONNECT.
    Disconnect(ReasonCode),
}

/// The broker's handle on a connection: its id and a way to tell it to close. The connection
/// drops the receiving side only after `detach` returns, so a closed channel means "gone".
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub id: u64,
    pub control: mpsc::Sender<Control>,
}

struct Slot {
    session: Arc<Session>,
    connection: Option<ConnectionHandle>,
}

/// How a connection ended, for the will and the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT with 0x00: the will is discarded (MQTT-3.1.2-10).
    Normal,
    /// Anything else (network loss, keep alive, protocol error, 5.0 DISCONNECT 0x04, takeover):
    /// the will is published.
    WithWill,
    /// The broker is shutting down: the will is not published.
    Shutdown,
}

pub struct Broker {
    settings: BrokerSettings,
    registry: Mutex<HashMap<ByteStr, Slot>>,
    index: RwLock<SubscriptionIndex>,
    retained: RwLock<RetainedStore>,
    next_session_id: AtomicU64,
    next_connection_id: AtomicU64,
    pub stats: Stats,
}

/// The outcome of a subscribe, for one filter.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeResult {
    pub code: ReasonCode,
    /// The session had this subscription already (Retain Handling 1 skips retained then).
    pub existed: bool,
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
    pub fn new(settings: BrokerSettings) -> Arc<Broker> {
        Arc::new(Broker {
            settings,
            registry: Mutex::new(HashMap::new()),
            index: RwLock::new(SubscriptionIndex::new()),
            retained: RwLock::new(RetainedStore::new()),
            next_session_id: AtomicU64::new(1),
            next_connection_id: AtomicU64::new(1),
            stats: Stats::default(),
        })
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of sessions, connected or not.
    pub fn session_count(&self) -> usize {
        lock(&self.registry).len()
    }

    pub fn subscription_count(&self) -> usize {
        read(&self.index).len()
    }

    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Binds a new connection to the session of `client_id`, taking over any connection that
    /// holds it (MQTT-3.1.4-3) and ending the old session when `clean_start` is set. Returns the
    /// session and whether it was resumed ("session present").
    pub async fn attach(
        &self,
        client_id: ByteStr,
        clean_start: bool,
        expiry_interval: u32,
        connection: ConnectionHandle,
    ) -> (Arc<Session>, bool) {
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
                            connection,
                        )
                    }
                }
            };
            info!(client_id = %client_id, old_connection = existing.id, "session taken over by a new connection");
            // A full control channel means the old connection is already closing.
            let _ = existing
                .control
                .try_send(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER));
            if tokio::time::timeout(self.settings.takeover_timeout, existing.control.closed())
                .await
                .is_err()
            {
                warn!(client_id = %client_id, old_connection = existing.id, "taken-over connection did not close in time; detaching it");
                let mut registry = lock(&self.registry);
                if let Some(slot) = registry.get_mut(&client_id) {
                    if slot
                        .connection
                        .as_ref()
                        .is_some_and(|c| c.id == existing.id)
                    {
                        slot.connection = None;
                        slot.session.set_connected(false);
                    }
                }
            }
        }
    }

    fn attach_locked(
        &self,
        registry: &mut HashMap<ByteStr, Slot>,
        client_id: ByteStr,
        clean_start: bool,
        expiry_interval: u32,
        connection: ConnectionHandle,
    ) -> (Arc<Session>, bool) {
        let mut will_to_publish = None;
        let resumed = match registry.remove(&client_id) {
            Some(slot) if !clean_start => Some(slot.session),
            Some(slot) => {
                // Clean start ends the old session: its subscriptions go, and a will still
                // waiting out its delay is published now (the session ended first).
                will_to_publish = self.end_session(&slot.session);
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
            state.expiry_interval = expiry_interval;
            state.generation += 1;
            // MQTT-3.1.3-9 (5.0): a new connection before the will delay ends cancels the will.
            state.pending_will = None;
        }
        session.set_connected(true);
        registry.insert(
            client_id,
            Slot {
                session: session.clone(),
                connection: Some(connection),
            },
        );
        if let Some(will) = will_to_publish {
            self.publish(will);
        }
        (session, present)
    }

    /// Removes the session's subscriptions from the index and returns its pending will.
    fn end_session(&self, session: &Arc<Session>) -> Option<Arc<Message>> {
        let (filters, will) = {
            let mut state = session.lock();
            state.queue.clear();
            state.queued_bytes = 0;
            state.inflight.clear();
            let filters: Vec<ByteStr> = state.subscriptions.drain().map(|(f, _)| f).collect();
            (filters, state.pending_will.take())
        };
        let mut index = write(&self.index);
        for filter in &filters {
            let (group, plain) = split_filter(filter);
            index.remove(plain, group, session.id());
        }
        debug!(client_id = %session.client_id(), "session ended");
        will
    }

    /// The connection `connection_id` has ended. Publishes or schedules the will, and ends the
    /// session now or schedules its expiry. Call before dropping the control receiver.
    pub fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        connection_id: u64,
        departure: Departure,
        will: Option<(Arc<Message>, u32)>,
    ) {
        let mut registry = lock(&self.registry);
        let Some(slot) = registry.get_mut(session.client_id()) else {
            return;
        };
        if !Arc::ptr_eq(&slot.session, session) {
            // The session was replaced (clean start elsewhere); nothing of ours is left to do
            // except the will, which belongs to this connection.
            drop(registry);
            if departure == Departure::WithWill {
                if let Some((will, _)) = will {
                    self.publish(will);
                }
            }
            return;
        }
        if slot
            .connection
            .as_ref()
            .is_some_and(|c| c.id == connection_id)
        {
            slot.connection = None;
            session.set_connected(false);
        }
        let (expiry, generation) = {
            let state = session.lock();
            (state.expiry_interval, state.generation)
        };
        let will = if departure == Departure::WithWill {
            will
        } else {
            None
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
        if let Some((will, delay)) = will {
            if delay == 0 {
                self.publish(will);
            } else {
                session.lock().pending_will = Some(will);
                let broker = Arc::clone(self);
                let session = Arc::clone(session);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                    let will = {
                        let mut state = session.lock();
                        if state.generation != generation {
                            return;
                        }
                        state.pending_will.take()
                    };
                    if let Some(will) = will {
                        broker.publish(will);
                    }
                });
            }
        }
        if expiry != NEVER_EXPIRES && departure != Departure::Shutdown {
            let broker = Arc::clone(self);
            let session = Arc::clone(session);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                broker.expire(&session, generation);
            });
        }
    }

    /// Ends a detached session whose expiry interval ran out, unless a client came back.
    fn expire(&self, session: &Arc<Session>, generation: u64) {
        let mut registry = lock(&self.registry);
        let current = registry
            .get(session.client_id())
            .is_some_and(|slot| Arc::ptr_eq(&slot.session, session) && slot.connection.is_none());
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

    /// Routes a message to every matching session and stores it if retained. Returns the number
    /// of sessions it was queued for.
    pub fn publish(&self, message: Arc<Message>) -> usize {
        // A message still carrying its Message Expiry Interval (a will) starts it now.
        let message = match message.properties.message_expiry_interval {
            Some(_) => Arc::new(Message::new(
                message.topic.clone(),
                message.payload.clone(),
                message.qos,
                message.retain,
                message.properties.clone(),
                message.origin.clone(),
            )),
            None => message,
        };
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        if message.retain && self.settings.retain_available {
            write(&self.retained).set(Arc::clone(&message));
        }
        let mut targets: Vec<(Arc<Session>, SubscriptionOptions, Vec<u32>)> = Vec::new();
        // Each share group delivers its own copy, even to a session that also gets one through
        // another subscription (5.0 section 4.8.2), so group picks are kept out of the merge.
        let mut shared_targets = Vec::new();
        let mut sources = 0usize;
        {
            let index = read(&self.index);
            index.for_each_match(&message.topic, |m| {
                let (sub, shared) = match m {
                    Match::Single(sub) => (sub, false),
                    Match::Shared(group) => match group.pick() {
                        Some(sub) => (sub, true),
                        None => return,
                    },
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
            merge_overlapping(&mut targets);
        }
        targets.append(&mut shared_targets);
        let now = Instant::now();
        if message.is_expired(now) {
            return 0;
        }
        let count = targets.len();
        for (session, options, ids) in targets {
            let delivery = Delivery {
                qos: message.qos.min(options.qos),
                retain: message.retain && options.retain_as_published,
                subscription_ids: ids,
                message: Arc::clone(&message),
            };
            self.enqueue(&session, delivery);
        }
        count
    }

    fn enqueue(&self, session: &Session, delivery: Delivery) {
        match session.enqueue(delivery, &self.settings.queue) {
            Enqueued::Queued => {}
            Enqueued::QueuedEvictedQos0 | Enqueued::DroppedFull => {
                let n = self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                // One line per 1000 drops keeps a flood from flooding the log too.
                if n.is_multiple_of(1000) {
                    warn!(client_id = %session.client_id(), dropped_total = n + 1, "session queue full: message dropped (max_queued_messages / max_queued_bytes)");
                }
            }
            Enqueued::DroppedOffline => {
                self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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
        let existed = {
            // The session's record and the index change together under the session lock, so a
            // concurrent end_session cannot leave an index entry behind.
            let mut state = session.lock();
            let existed = state
                .subscriptions
                .insert(filter.clone(), SubscriptionRecord { options, id })
                .is_some();
            write(&self.index).insert(
                plain,
                group,
                Subscriber {
                    session: Arc::clone(session),
                    options,
                    id,
                },
            );
            existed
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
                };
                self.enqueue(session, delivery);
            }
        }
        let code = match options.qos {
            QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
            QoS::AtLeastOnce => ReasonCode::GRANTED_QOS_1,
            QoS::ExactlyOnce => ReasonCode::GRANTED_QOS_2,
        };
        SubscribeResult { code, existed }
    }

    /// Removes one subscription; false if the session had none for `filter`.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let (group, plain) = split_filter(filter);
        let mut state = session.lock();
        if state.subscriptions.remove(filter).is_none() {
            return false;
        }
        write(&self.index).remove(plain, group, session.id());
        true
    }

    /// Drops expired retained messages; the server calls this now and then.
    pub fn sweep_expired_retained(&self) -> usize {
        write(&self.retained).remove_expired(Instant::now())
    }

    /// The session of a client id, if there is one (for tests and the admin API).
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        lock(&self.registry)
            .get(client_id)
            .map(|s| Arc::clone(&s.session))
    }

    /// Asks every connection to close with `reason`; used at shutdown.
    pub fn disconnect_all(&self, reason: ReasonCode) {
        let registry = lock(&self.registry);
        for slot in registry.values() {
            if let Some(c) = &slot.connection {
                let _ = c.control.try_send(Control::Disconnect(reason));
            }
        }
    }

    pub fn id_of(session: &Session) -> SessionId {
        session.id()
    }
}

/// One delivery per session when several of its filters match (MQTT-3.3.4-2 lets 3.1.1 send
/// copies; 5.0 wants one with every subscription identifier, MQTT-3.3.4-3/5): the highest QoS,
/// Retain As Published if any match asks for it, and all identifiers.
fn merge_overlapping(targets: &mut Vec<(Arc<Session>, SubscriptionOptions, Vec<u32>)>) {
    targets.sort_by_key(|(s, _, _)| s.id());
    let mut merged: Vec<(Arc<Session>, SubscriptionOptions, Vec<u32>)> =
        Vec::with_capacity(targets.len());
    for (session, options, ids) in targets.drain(..) {
        match merged.last_mut() {
            Some((last, o, i)) if last.id() == session.id() => {
                o.qos = o.qos.max(options.qos);
                o.retain_as_published |= options.retain_as_published;
                i.extend(ids);
            }
            _ => merged.push((session, options, ids)),
        }
    }
    *targets = merged;
}
