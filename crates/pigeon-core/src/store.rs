//! The storage port: what the broker writes so sessions, queues and retained messages outlive a
//! restart, and what it reads back at start.
//!
//! The broker describes changes as `StoreOp`s; `Persistence` numbers them, batches them and hands
//! each batch to a `Store` in one transaction on its own thread (group commit), then publishes the
//! highest committed number. A connection holds back a PUBACK, PUBREC or SUBACK until the number
//! of the ops it caused is committed: nothing acknowledged is lost. Times are stored as wall-clock
//! milliseconds, since `Instant`s mean nothing after a restart.

use crate::message::Message;
use crate::session::OutStage;
use pigeon_codec::{ByteStr, QoS, SubscriptionOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::error;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Backend { path: String, message: String },
    #[error("store {path}: corrupt record in {table}: {detail}")]
    Corrupt {
        path: String,
        table: &'static str,
        detail: String,
    },
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub expiry_interval: u32,
    /// When the last connection ended; `None` while connected (or if the broker stopped while it
    /// was): the expiry then counts from the next start.
    pub disconnected_at_ms: Option<u64>,
    /// The will and its delay, kept while a connection that has one is open or its delay runs.
    pub will: Option<(Arc<Message>, u32)>,
}

/// One delivery waiting in, or in flight from, a session's queue.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Set once a QoS 2 message was sent, and for a QoS 1 message in flight when its connection
    /// ended: it must be resent with the same id.
    pub packet_id: u16,
    pub stage: Option<OutStage>,
}

impl QueueEntry {
    /// The entry of a message in flight, with its packet id and stage.
    pub fn in_flight(out: &crate::session::Outgoing) -> QueueEntry {
        QueueEntry {
            message: Arc::clone(&out.delivery.message),
            qos: out.delivery.qos,
            retain: out.delivery.retain,
            subscription_ids: out.delivery.subscription_ids.clone(),
            packet_id: out.packet_id,
            stage: Some(out.stage),
        }
    }
}

#[derive(Debug, Clone)]
pub enum StoreOp {
    SessionPut {
        client_id: ByteStr,
        record: SessionRecord,
    },
    /// Removes the session and everything under it.
    SessionDelete {
        client_id: ByteStr,
    },
    SubscriptionPut {
        client_id: ByteStr,
        filter: ByteStr,
        options: SubscriptionOptions,
        id: Option<u32>,
    },
    SubscriptionDelete {
        client_id: ByteStr,
        filter: ByteStr,
    },
    /// Inserts or replaces.
    QueuePut {
        client_id: ByteStr,
        seq: u64,
        entry: QueueEntry,
    },
    QueueDelete {
        client_id: ByteStr,
        seq: u64,
    },
    IncomingPut {
        client_id: ByteStr,
        packet_id: u16,
    },
    IncomingDelete {
        client_id: ByteStr,
        packet_id: u16,
    },
    RetainPut {
        message: Arc<Message>,
    },
    RetainDelete {
        topic: ByteStr,
    },
}

/// A session read back at start.
#[derive(Debug, Clone)]
pub struct LoadedSession {
    pub client_id: ByteStr,
    pub record: SessionRecord,
    pub subscriptions: Vec<(ByteStr, SubscriptionOptions, Option<u32>)>,
    /// In sequence order.
    pub queue: Vec<(u64, QueueEntry)>,
    pub incoming: Vec<u16>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<LoadedSession>,
    pub retained: Vec<Arc<Message>>,
}

/// A storage engine. Calls come from one thread at a time (the persistence thread, or start-up).
pub trait Store: Send + Sync + 'static {
    /// Everything stored, for the start of the broker. Messages already expired may be included;
    /// the broker drops them.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies `ops` in order, atomically. `sync`: the data is on disk when this returns.
    fn commit(&self, ops: &[StoreOp], sync: bool) -> Result<(), StoreError>;
    /// Bytes the store occupies on disk, for metrics and the churn test.
    fn disk_bytes(&self) -> u64;
}

/// When the store's data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every batch is synced before the acknowledgements that wait on it go out.
    Always,
    /// Batches are committed without sync; a sync follows at this interval. A crash of the
    /// machine (not of the process) loses at most that long of acknowledged writes.
    Periodic(Duration),
}

pub fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    wall_ms(SystemTime::now())
}

/// The wall-clock millisecond at which `at` (a tokio `Instant`) falls.
pub fn instant_to_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = now_ms();
    if at >= now {
        wall + (at - now).as_millis() as u64
    } else {
        wall.saturating_sub((now - at).as_millis() as u64)
    }
}

/// The `Instant` of a wall-clock millisecond (in the past if it has gone by).
pub fn ms_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let wall = now_ms();
    if ms >= wall {
        now + Duration::from_millis(ms - wall)
    } else {
        now.checked_sub(Duration::from_millis(wall - ms))
            .unwrap_or(now)
    }
}

struct Pending {
    ops: Vec<StoreOp>,
    /// Number of the last op submitted.
    submitted: u64,
    stopping: bool,
}

/// Group commit in front of a `Store`: ops are numbered as submitted and written in batches by
/// one thread; `committed()` tells how far the disk has got.
pub struct Persistence {
    pending: Mutex<Pending>,
    wake: Condvar,
    committed: watch::Sender<u64>,
    /// Set by the writer thread once it has released the store (its file lock with it).
    released: watch::Sender<bool>,
    /// Bytes (payload and topic) of the queued messages the store holds, and the cap on them.
    stored_bytes: AtomicU64,
    max_stored_bytes: u64,
}

impl Persistence {
    /// Starts the writer thread. It runs until `stop`.
    /// `max_stored_bytes` caps the queued messages the store holds (0: no cap).
    pub fn start(
        store: Arc<dyn Store>,
        policy: SyncPolicy,
        max_stored_bytes: u64,
    ) -> Arc<Persistence> {
        let (committed, _) = watch::channel(0);
        let p = Arc::new(Persistence {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                submitted: 0,
                stopping: false,
            }),
            wake: Condvar::new(),
            committed,
            released: watch::channel(false).0,
            stored_bytes: AtomicU64::new(0),
            max_stored_bytes,
        });
        let writer = Arc::clone(&p);
        std::thread::Builder::new()
            .name("pigeon-store".into())
            .spawn(move || {
                writer.write_loop(store, policy);
                writer.released.send_replace(true);
            })
            .expect("spawn the store writer thread");
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one op; returns its number. Cheap: a push under a mutex held for nothing else.
    pub fn submit(&self, op: StoreOp) -> u64 {
        let mut pending = self.lock();
        pending.ops.push(op);
        pending.submitted += 1;
        let n = pending.submitted;
        drop(pending);
        self.wake.notify_one();
        n
    }

    /// Counts `weight` more queued bytes in the store, unless that passes the cap.
    pub fn reserve(&self, weight: usize) -> bool {
        let weight = weight as u64;
        let before = self.stored_bytes.fetch_add(weight, Ordering::Relaxed);
        if self.max_stored_bytes > 0 && before + weight > self.max_stored_bytes {
            self.stored_bytes.fetch_sub(weight, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Removes a stored queue entry of `weight` bytes; returns the op's number.
    pub fn delete_queued(&self, client_id: &ByteStr, seq: u64, weight: usize) -> u64 {
        self.release(weight);
        self.submit(StoreOp::QueueDelete {
            client_id: client_id.clone(),
            seq,
        })
    }

    /// Uncounts `weight` queued bytes (their rows are deleted by another op).
    pub fn release(&self, weight: usize) {
        self.stored_bytes
            .fetch_sub(weight as u64, Ordering::Relaxed);
    }

    /// Bytes of queued messages the store holds.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// The number of the last op submitted so far.
    pub fn submitted(&self) -> u64 {
        self.lock().submitted
    }

    /// Follows the number of the last op on disk.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The number of the last op on disk, now.
    pub fn last_committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Writes what is pending and stops the writer thread, waiting for both (shutdown).
    pub async fn stop(&self) {
        let target = {
            let mut pending = self.lock();
            pending.stopping = true;
            pending.submitted
        };
        self.wake.notify_one();
        let mut committed = self.committed.subscribe();
        let mut released = self.released.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = committed.wait_for(|c| *c >= target).await;
            let _ = released.wait_for(|r| *r).await;
        })
        .await;
    }

    fn write_loop(&self, store: Arc<dyn Store>, policy: SyncPolicy) {
        let mut last_sync = std::time::Instant::now();
        let mut unsynced = false;
        loop {
            let (ops, last, stopping) = {
                let mut pending = self.lock();
                loop {
                    if !pending.ops.is_empty() || pending.stopping {
                        break;
                    }
                    let wait = match policy {
                        SyncPolicy::Periodic(every) if unsynced => {
                            every.saturating_sub(last_sync.elapsed())
                        }
                        _ => Duration::from_secs(3600),
                    };
                    let (guard, timeout) = self
                        .wake
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(|p| p.into_inner());
                    pending = guard;
                    if timeout.timed_out() && unsynced {
                        break;
                    }
                }
                (
                    std::mem::take(&mut pending.ops),
                    pending.submitted,
                    pending.stopping,
                )
            };
            let sync = match policy {
                SyncPolicy::Always => true,
                SyncPolicy::Periodic(every) => stopping || last_sync.elapsed() >= every,
            };
            // A failed commit is retried with the same ops: acknowledgements wait meanwhile, so
            // clients resend rather than lose what they were told was stored.
            let mut delay = Duration::from_millis(10);
            while let Err(e) = store.commit(&ops, sync) {
                error!(error = %e, ops = ops.len(), "store commit failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            if sync {
                last_sync = std::time::Instant::now();
                unsynced = false;
            } else {
                unsynced = true;
            }
            self.committed.send_replace(last);
            if stopping && self.lock().ops.is_empty() {
                return;
            }
        }
    }
}
