//! The cluster ports: how a broker talks to the other nodes of its cluster, and to a store that
//! several nodes share.
//!
//! `ClusterBus` carries messages between nodes (the Redis adapter speaks the mqemitter-redis wire
//! format, so aedes nodes can share it). The broker calls it without awaiting: a bus must queue
//! and return at once, so local delivery never waits on, or fails with, the network.
//!
//! `SharedSessions` is what a node needs from a store that other nodes read and write too: each
//! persistent session is owned by exactly one node at a time (the one it is connected to, or was
//! last on), and only the owner writes it. A node that gets a connection for a session owned
//! elsewhere waits for the owner to let go (or to be found dead), claims it and loads it.

use crate::message::Message;
use crate::store::{LoadedSession, StoreError};
use pigeon_codec::ByteStr;
use std::sync::Arc;

/// A bus that is behind, as a publisher's connection holds it: `caught_up` resolves when the
/// bus has caught up (or went down: nobody waits for a bus that is down).
#[derive(Clone)]
pub struct BusBacklog(Arc<dyn Fn() -> BoxFuture + Send + Sync>);

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

impl BusBacklog {
    pub fn new(caught_up: impl Fn() -> BoxFuture + Send + Sync + 'static) -> BusBacklog {
        BusBacklog(Arc::new(caught_up))
    }

    pub async fn caught_up(&self) {
        (self.0)().await
    }
}

/// The other nodes, as the broker sees them.
pub trait ClusterBus: Send + Sync + 'static {
    /// A message accepted on this node (from a client, a will, or the embedding program): send it
    /// to the other nodes, once. Never called for messages that came from the bus.
    fn publish(&self, message: &Arc<Message>);

    /// `filter` (a plain filter, share group removed) got its first local subscription
    /// (`present`) or lost its last one.
    fn interest(&self, filter: &str, present: bool);

    /// A client connected here: a node that holds a connection with this id must close it.
    fn client_connected(&self, client_id: &ByteStr);

    /// While the bus is up and behind (many messages wait for Redis): a handle a publisher
    /// waits on (bounded) before reading on, so the bus sets the pace rather than dropping.
    /// `None` when there is nothing to wait for.
    fn backlog(&self) -> Option<BusBacklog> {
        None
    }

    /// Resolves once every `interest` change made before the call is in effect on the bus (so
    /// messages published from then on reach this node), or at once if the bus is down.
    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    /// Whether the bus is up now. While it is, shared subscriptions are served cluster-wide
    /// through the bus (one member per message across nodes); while it is not, each node serves
    /// its own members.
    fn connected(&self) -> bool;
}

/// A store several nodes share: session ownership and per-session loading. Calls block (they
/// go to the network); the broker makes them from `spawn_blocking`.
pub trait SharedSessions: Send + Sync + 'static {
    /// This process's identity in ownership records (the bus's broker id).
    fn node(&self) -> &str;
    /// The node that owns the session now, if any.
    fn owner(&self, client_id: &ByteStr) -> Result<Option<String>, StoreError>;
    /// Whether `node` still sends heartbeats.
    fn is_alive(&self, node: &str) -> Result<bool, StoreError>;
    /// Makes this node the owner; returns the previous owner.
    fn claim(&self, client_id: &ByteStr) -> Result<Option<String>, StoreError>;
    /// Gives the session up, if this node still owns it.
    fn release(&self, client_id: &ByteStr) -> Result<(), StoreError>;
    /// The subscriptions stored for a session (what to listen for while it moves here).
    fn subscriptions(
        &self,
        client_id: &ByteStr,
    ) -> Result<Vec<(ByteStr, pigeon_codec::SubscriptionOptions, Option<u32>)>, StoreError>;
    /// Everything stored of one session.
    fn load_session(&self, client_id: &ByteStr) -> Result<Option<LoadedSession>, StoreError>;
}
