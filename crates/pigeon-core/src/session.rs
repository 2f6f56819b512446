//! A session: what the broker keeps for one client id between and during its connections.
//!
//! It owns the client's subscriptions (the record of truth; the index only points here), the
//! queue of deliveries not yet sent, the outgoing messages in flight, the incoming QoS 2 packet
//! ids awaiting PUBREL, and a pending will. The connection attached to the session drains the
//! queue; the router fills it from any thread. The state sits behind a `std::sync::Mutex`: it is
//! held only for short, non-async sections (never across `.await`), and each session has its own,
//! so publishers contend only when they deliver to the same client at the same instant.

use crate::message::{Delivery, Message};
use crate::store::{Persistence, QueueEntry, StoreOp};
use pigeon_codec::{ByteStr, QoS, SubscriptionOptions};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;

pub type SessionId = u64;

/// Session Expiry Interval meaning "never" (5.0 section 3.1.2.11.2), also used for 3.1.1
/// sessions with clean session off.
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// How much a session may hold waiting beyond its in-flight window.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// Queue QoS 0 messages while the client is offline.
    pub queue_qos0: bool,
}

impl QueueLimits {
    /// Publishers pause at three quarters of the limits, which leaves a quarter for what the
    /// publishers already routed before they noticed.
    fn high_water(&self) -> (usize, usize) {
        (
            self.max_messages - self.max_messages / 4,
            self.max_bytes - self.max_bytes / 4,
        )
    }

    /// They resume at half: between the marks the subscriber has a batch to work on and the
    /// publishers a batch of room, so neither side wakes for every message.
    fn low_water(&self) -> (usize, usize) {
        (self.max_messages / 2, self.max_bytes / 2)
    }
}

/// Publishers held back by one session's queue. Made when the queue first passes its high-water
/// mark, so a session that never fills up carries only an empty pointer for it.
#[derive(Debug)]
struct Pressure {
    /// Wakes the waiting publishers when `high` is cleared.
    drained: Notify,
    /// The queue passed the high-water mark while the client was connected and has not yet come
    /// back under the low-water mark. Set and cleared under the session lock; read without it.
    high: AtomicBool,
    /// A publisher waited its whole bound and the queue stayed high (the subscriber is stuck):
    /// until it drains, publishers do not wait for it, and what overflows is dropped and counted.
    stalled: AtomicBool,
    /// Low-water mark: messages, bytes.
    low: (usize, usize),
}

impl Pressure {
    /// Clears `high` (and `stalled` with it) and wakes the waiters. Called on every pop while
    /// the pressure exists, so the common case is one load.
    fn release(&self) {
        if self.high.load(Ordering::Relaxed) && self.high.swap(false, Ordering::AcqRel) {
            self.stalled.store(false, Ordering::Relaxed);
            self.drained.notify_waiters();
        }
    }
}

/// A congested session's handle, given to the publisher that found it so: wait on it, bounded.
#[derive(Debug, Clone)]
pub struct Backpressure(Arc<Pressure>);

impl Backpressure {
    /// Resolves when the queue is back under its low-water mark or its client disconnected.
    /// Waits on no lock.
    pub async fn drained(&self) {
        loop {
            let notified = self.0.drained.notified();
            tokio::pin!(notified);
            // Registered before the check: a release between the check and the await wakes us.
            notified.as_mut().enable();
            if !self.0.high.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The wait timed out with the queue still high: the subscriber is taken to be stuck, and
    /// nobody waits for it again until its queue drains.
    pub fn stalled(&self) {
        if self.0.high.load(Ordering::Acquire) {
            self.0.stalled.store(true, Ordering::Relaxed);
        }
    }
}

/// What `Session::enqueue` did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued after evicting the oldest queued QoS 0 message to make room.
    QueuedEvictedQos0,
    /// QoS 0 for an offline client that does not queue QoS 0.
    DroppedOffline,
    /// The queue is at its limit and holds no QoS 0 message to evict.
    DroppedFull,
    /// The store is at its global cap (`max_stored_bytes`).
    DroppedStoreFull,
}

#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutStage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// QoS 2: PUBREL sent; waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub stage: OutStage,
}

/// A collection that most sessions leave empty, made on first use: empty, it costs one pointer
/// instead of a hash table's header and its hasher's keys (48 bytes), in every session.
#[derive(Debug)]
pub struct Sparse<T>(Option<Box<T>>);

impl<T: Default> Sparse<T> {
    pub fn new() -> Sparse<T> {
        Sparse(None)
    }

    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }

    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// The collection, made now if it was not.
    pub fn make(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }

    /// Takes the collection out (an empty one if none was made), leaving none.
    pub fn take(&mut self) -> T {
        self.0.take().map(|b| *b).unwrap_or_default()
    }
}

impl<T: Default> Default for Sparse<T> {
    fn default() -> Sparse<T> {
        Sparse::new()
    }
}

/// A queue that many sessions never use (a connection that only publishes, or subscribes and
/// hears nothing), made on first push: unused, it costs one pointer instead of a `VecDeque`'s
/// 32 bytes, in every session. Once made it is kept (with its room) until `clear`.
#[derive(Debug)]
pub struct Deque<T>(Sparse<VecDeque<T>>);

impl<T> Deque<T> {
    pub fn new() -> Deque<T> {
        Deque(Sparse::new())
    }

    pub fn len(&self) -> usize {
        self.0.get().map_or(0, VecDeque::len)
    }

    pub fn is_empty(&self) -> bool {
        self.0.get().is_none_or(VecDeque::is_empty)
    }

    pub fn front(&self) -> Option<&T> {
        self.0.get()?.front()
    }

    pub fn push_back(&mut self, item: T) {
        self.0.make().push_back(item);
    }

    pub fn pop_front(&mut self) -> Option<T> {
        self.0.get_mut()?.pop_front()
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        self.0.get_mut()?.remove(index)
    }

    /// Empties the queue and gives back its room.
    pub fn clear(&mut self) {
        self.0.take();
    }

    pub fn iter(&self) -> DequeIter<'_, T> {
        self.0.get().map(VecDeque::iter).into_iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0
            .get_mut()
            .map(VecDeque::iter_mut)
            .into_iter()
            .flatten()
    }
}

pub type DequeIter<'a, T> =
    std::iter::Flatten<std::option::IntoIter<std::collections::vec_deque::Iter<'a, T>>>;

impl<T> Default for Deque<T> {
    fn default() -> Deque<T> {
        Deque::new()
    }
}

impl<'a, T> IntoIterator for &'a Deque<T> {
    type Item = &'a T;
    type IntoIter = DequeIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Debug)]
pub struct SessionState {
    /// Full filter text (with any `$share/group/` prefix) to its options.
    pub subscriptions: Sparse<HashMap<ByteStr, SubscriptionRecord>>,
    pub queue: Deque<Delivery>,
    pub queued_bytes: usize,
    /// Sent and unacknowledged, in the order they were first sent (the resend order,
    /// MQTT-4.4.0-1).
    pub inflight: Deque<Outgoing>,
    next_packet_id: u16,
    /// Seconds; 0 ends the session with its connection.
    pub expiry_interval: u32,
    /// Counts attachments, so timers set while detached can tell a reconnect happened (compared
    /// for equality only, so wrapping is harmless).
    pub generation: u32,
    /// The next store sequence number for a delivery (see `Delivery::seq`).
    pub next_seq: u64,
    /// The store holds a record of this session (so ending it must delete that record).
    pub stored: bool,
    /// The queue went from empty to not empty since the attached connection last looked.
    notified: bool,
    /// The attached connection's waker (see `Session::poll_notified`).
    waker: Option<Waker>,
    /// What few sessions have (see `Rare`).
    rare: Sparse<Rare>,
}

/// The parts of a session's state that most sessions never have, made the first time one is
/// set: one pointer in every session instead of three (which takes the session, with its
/// reference counts, from a 176-byte heap block to a 160-byte one).
#[derive(Debug, Default)]
struct Rare {
    /// Incoming QoS 2 packet ids for which PUBREC was sent and PUBREL not yet received.
    incoming_qos2: HashSet<u16>,
    /// A will waiting out its Will Delay Interval.
    pending_will: Option<Arc<Message>>,
    /// Publishers waiting for this queue to drain; made the first time it passes high water.
    pressure: Option<Arc<Pressure>>,
}

#[derive(Debug)]
pub struct Session {
    id: SessionId,
    client_id: ByteStr,
    connected: AtomicBool,
    /// Also holds the waker of the attached connection, woken when the queue goes from empty to
    /// not empty: set under the lock `enqueue` holds anyway, and no larger than a waker.
    state: Mutex<SessionState>,
}

// Every connection's session is one heap block: 136 bytes and the `Arc`'s two counts fill a
// 160-byte malloc chunk; a field more takes it to 176.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Session>() <= 136);

impl Session {
    pub fn new(id: SessionId, client_id: ByteStr, expiry_interval: u32) -> Session {
        Session {
            id,
            client_id,
            connected: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                subscriptions: Sparse::new(),
                queue: Deque::new(),
                queued_bytes: 0,
                inflight: Deque::new(),
                next_packet_id: 1,
                expiry_interval,
                generation: 0,
                next_seq: 1,
                stored: false,
                notified: false,
                waker: None,
                rare: Sparse::new(),
            }),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn client_id(&self) -> &ByteStr {
        &self.client_id
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        if !connected {
            let mut state = self.lock();
            // The connection that polled is gone: its waker would keep its task's memory.
            state.waker = None;
            // Nobody waits on an offline session: its queue drains only when a client returns.
            if let Some(p) = state.pressure() {
                p.release();
            }
        }
    }

    /// Whether publishers are being held back by this session's queue.
    pub fn is_congested(&self) -> bool {
        self.lock()
            .pressure()
            .is_some_and(|p| p.high.load(Ordering::Acquire))
    }

    /// Locks the state. Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves when the router has queued something for this session.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }

    /// Ready when the queue went from empty to not empty since the last time this returned
    /// ready (like `Notify::notify_one`'s permit); otherwise `cx` is woken when it does. One
    /// waker is kept: the one of the connection attached, which polls from one task.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if std::mem::take(&mut state.notified) {
            return Poll::Ready(());
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Queues a delivery under the limits. When the queue is full, a QoS 0 newcomer is dropped;
    /// a QoS 1/2 newcomer evicts the oldest queued QoS 0 message, or is dropped if there is none
    /// (the same outcome mosquitto's `max_queued_messages` gives, with QoS 0 sacrificed first).
    /// With a store, a delivery to a session that outlives its connection is written too, and the
    /// number of that write is returned with the outcome (0 when nothing was written), and the
    /// session's `Backpressure` when its client is connected and the queue is above high water.
    pub fn enqueue(
        &self,
        mut delivery: Delivery,
        limits: &QueueLimits,
        store: Option<&Persistence>,
    ) -> (Enqueued, u64, Option<Backpressure>) {
        if delivery.qos == QoS::AtMostOnce && !limits.queue_qos0 && !self.is_connected() {
            return (Enqueued::DroppedOffline, 0, None);
        }
        let weight = delivery.message.weight();
        let mut state = self.lock();
        let mut outcome = Enqueued::Queued;
        if state.queue.len() >= limits.max_messages
            || state.queued_bytes + weight > limits.max_bytes
        {
            let evictable = if delivery.qos == QoS::AtMostOnce {
                None
            } else {
                state.queue.iter().position(|d| d.qos == QoS::AtMostOnce)
            };
            let Some(pos) = evictable else {
                let pressure = self.congestion(&mut state, limits);
                return (Enqueued::DroppedFull, 0, pressure);
            };
            let evicted = state.queue.remove(pos).expect("position found above");
            state.queued_bytes -= evicted.message.weight();
            if let (Some(store), true) = (store, evicted.seq != 0) {
                store.delete_queued(&self.client_id, evicted.seq, evicted.message.weight());
            }
            outcome = Enqueued::QueuedEvictedQos0;
        }
        let mut written = 0;
        // Written while the lock is held, so the store sees a session's ops in the order the
        // session applies them (this put always precedes the delete that follows delivery).
        // QoS 0 to a connected client is at most once: not worth a write. Queued for an offline
        // client (queue_qos0), it is kept like the rest.
        let durable = delivery.qos != QoS::AtMostOnce || !self.is_connected();
        if let Some(store) = store.filter(|_| durable && state.expiry_interval > 0) {
            if !store.reserve(weight) {
                return (Enqueued::DroppedStoreFull, 0, None);
            }
            delivery.seq = state.next_seq;
            state.next_seq += 1;
            written = store.submit(StoreOp::QueuePut {
                client_id: self.client_id.clone(),
                seq: delivery.seq,
                entry: QueueEntry {
                    message: Arc::clone(&delivery.message),
                    qos: delivery.qos,
                    retain: delivery.retain,
                    subscription_ids: delivery.subscription_ids.clone(),
                    packet_id: 0,
                    stage: None,
                },
            });
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(delivery);
        state.queued_bytes += weight;
        let pressure = self.congestion(&mut state, limits);
        let waker = if was_empty {
            state.notified = true;
            state.waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        (outcome, written, pressure)
    }

    /// Marks the queue high when it is at or above high water with its client connected, and
    /// returns the handle a publisher waits on, unless the subscriber is taken to be stuck.
    fn congestion(&self, state: &mut SessionState, limits: &QueueLimits) -> Option<Backpressure> {
        let (messages, bytes) = limits.high_water();
        if (state.queue.len() < messages && state.queued_bytes < bytes) || !self.is_connected() {
            return None;
        }
        let pressure = state.rare.make().pressure.get_or_insert_with(|| {
            Arc::new(Pressure {
                drained: Notify::new(),
                high: AtomicBool::new(false),
                stalled: AtomicBool::new(false),
                low: limits.low_water(),
            })
        });
        pressure.high.store(true, Ordering::Release);
        if pressure.stalled.load(Ordering::Relaxed) {
            return None;
        }
        Some(Backpressure(Arc::clone(pressure)))
    }
}

impl SessionState {
    fn pressure(&self) -> Option<&Arc<Pressure>> {
        self.rare.get().and_then(|r| r.pressure.as_ref())
    }

    /// Incoming QoS 2 packet ids for which PUBREC was sent and PUBREL not yet received; `None`
    /// (or empty) when there are none.
    pub fn incoming_qos2(&self) -> Option<&HashSet<u16>> {
        self.rare.get().map(|r| &r.incoming_qos2)
    }

    pub fn incoming_qos2_mut(&mut self) -> Option<&mut HashSet<u16>> {
        self.rare.get_mut().map(|r| &mut r.incoming_qos2)
    }

    /// The incoming QoS 2 ids, the set made now if it was not.
    pub fn incoming_qos2_make(&mut self) -> &mut HashSet<u16> {
        &mut self.rare.make().incoming_qos2
    }

    /// A will waiting out its Will Delay Interval.
    pub fn pending_will(&self) -> Option<&Arc<Message>> {
        self.rare.get().and_then(|r| r.pending_will.as_ref())
    }

    pub fn set_pending_will(&mut self, will: Option<Arc<Message>>) {
        // Clearing a will the session never had makes nothing.
        if will.is_some() || self.rare.get().is_some() {
            self.rare.make().pending_will = will;
        }
    }

    pub fn take_pending_will(&mut self) -> Option<Arc<Message>> {
        self.rare.get_mut().and_then(|r| r.pending_will.take())
    }

    /// Takes the next waiting delivery, keeping the byte count right.
    /// Publishers held back by this queue are released once it is under its low-water mark.
    pub fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.message.weight();
        if let Some(p) = self.pressure() {
            if self.queue.len() <= p.low.0 && self.queued_bytes <= p.low.1 {
                p.release();
            }
        }
        Some(d)
    }

    /// A packet identifier not used by any message in flight (MQTT-2.2.1-3).
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|o| o.packet_id == id) {
                return id;
            }
        }
    }

    /// Removes and returns the in-flight entry for `packet_id` at `stage`.
    pub fn take_inflight(&mut self, packet_id: u16, stage: OutStage) -> Option<Outgoing> {
        // Acknowledgements nearly always arrive in order, so the front is checked first.
        let pos = self
            .inflight
            .iter()
            .position(|o| o.packet_id == packet_id && o.stage == stage)?;
        self.inflight.remove(pos)
    }

    pub fn inflight_mut(&mut self, packet_id: u16) -> Option<&mut Outgoing> {
        self.inflight.iter_mut().find(|o| o.packet_id == packet_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 8,
        max_bytes: 1 << 20,
        queue_qos0: false,
    };

    fn delivery() -> Delivery {
        let message = Message::new(
            ByteStr::from("t"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            Default::default(),
            None,
        );
        Delivery {
            message: Arc::new(message),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            seq: 0,
        }
    }

    async fn drained_within(pressure: &Backpressure, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), pressure.drained())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn publishers_are_held_from_high_water_to_low_water() {
        let session = Session::new(1, ByteStr::from("c"), 0);
        session.set_connected(true);
        // High water of 8 is 6: the sixth message hands out the pressure.
        for _ in 0..5 {
            assert!(session.enqueue(delivery(), &LIMITS, None).2.is_none());
        }
        let pressure = session
            .enqueue(delivery(), &LIMITS, None)
            .2
            .expect("at high water");
        assert!(session.is_congested());
        assert!(!drained_within(&pressure, 10).await);
        // Low water is 4: two pops release it.
        session.lock().pop_queued();
        assert!(!drained_within(&pressure, 10).await);
        session.lock().pop_queued();
        assert!(drained_within(&pressure, 10).await);
        assert!(!session.is_congested());
    }

    #[tokio::test]
    async fn a_stuck_subscriber_hands_out_no_pressure_until_it_drains_and_offline_none() {
        let session = Session::new(1, ByteStr::from("c"), 0);
        session.set_connected(true);
        let mut pressure = None;
        for _ in 0..6 {
            pressure = session.enqueue(delivery(), &LIMITS, None).2;
        }
        pressure.expect("at high water").stalled();
        assert!(session.enqueue(delivery(), &LIMITS, None).2.is_none());
        while session.lock().queue.len() > 4 {
            session.lock().pop_queued();
        }
        for _ in 0..2 {
            session.enqueue(delivery(), &LIMITS, None);
        }
        let pressure = session
            .enqueue(delivery(), &LIMITS, None)
            .2
            .expect("drained, so again");
        // A disconnect releases the waiters, and an offline session hands out none.
        session.set_connected(false);
        assert!(drained_within(&pressure, 10).await);
        assert!(session.enqueue(delivery(), &LIMITS, None).2.is_none());
    }
}
