//! Sessions in a Redis store that several nodes share: the `SharedSessions` port over
//! `RedisStore`, this node's heartbeat, and the adoption of sessions whose node died.
//!
//! A node owns the sessions connected to it and the offline ones it was last holding; it alone
//! writes them and queues messages for them. Its heartbeat key says it is alive. When a node
//! stops sending heartbeats (killed, or cut off), one live node adopts its sessions (elected in
//! Redis) and loads them as offline sessions here: they go on receiving messages, and their
//! wills are published after their delay, as they would have been on the node that died.

use crate::redis_store::RedisStore;
use pigeon_codec::ByteStr;
use pigeon_core::store::{LoadedSession, StoreError};
use pigeon_core::{Broker, SharedSessions};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{info, warn};

pub struct RedisSessions {
    store: RedisStore,
    me: String,
}

impl RedisSessions {
    /// `store` should be a connection of its own (the persistence thread has another).
    pub fn new(store: RedisStore, me: String) -> RedisSessions {
        RedisSessions { store, me }
    }

    /// Sends this node's heartbeat every `interval` (alive for three of them), and adopts the
    /// sessions of nodes found dead. Stops when the broker is gone.
    pub fn start(self: &Arc<Self>, broker: &Arc<Broker>, interval: Duration) {
        let sessions = Arc::clone(self);
        let broker: Weak<Broker> = Arc::downgrade(broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut reported = false;
            loop {
                tick.tick().await;
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                let s = Arc::clone(&sessions);
                let work = move || -> Result<Vec<LoadedSession>, StoreError> {
                    s.store.heartbeat(&s.me, interval * 3)?;
                    let mut adopted = Vec::new();
                    for dead in s.store.dead_owners()? {
                        let ids = s.store.adopt(&dead, &s.me)?;
                        if !ids.is_empty() {
                            info!(node = %dead, sessions = ids.len(), "adopting the sessions of a node that stopped");
                        }
                        for id in ids {
                            if let Some(loaded) = s.store.load_session(&id)? {
                                adopted.push(loaded);
                            }
                        }
                    }
                    Ok(adopted)
                };
                match tokio::task::spawn_blocking(work).await {
                    Ok(Ok(adopted)) => {
                        reported = false;
                        for loaded in adopted {
                            broker.adopt_session(loaded);
                        }
                    }
                    Ok(Err(e)) if !reported => {
                        reported = true;
                        warn!(error = %e, "cluster: heartbeat to the shared store failed");
                    }
                    _ => {}
                }
            }
        });
    }

    /// Marks this node gone at once (graceful shutdown), so its sessions move without waiting
    /// for the heartbeat to run out.
    pub fn leave(&self) {
        let _ = self.store.heartbeat(&self.me, Duration::from_millis(1));
    }
}

impl SharedSessions for RedisSessions {
    fn node(&self) -> &str {
        &self.me
    }

    fn owner(&self, client_id: &ByteStr) -> Result<Option<String>, StoreError> {
        self.store.owner(client_id)
    }

    fn is_alive(&self, node: &str) -> Result<bool, StoreError> {
        self.store.is_alive(node)
    }

    fn claim(&self, client_id: &ByteStr) -> Result<Option<String>, StoreError> {
        self.store.claim(client_id, &self.me)
    }

    fn release(&self, client_id: &ByteStr) -> Result<(), StoreError> {
        self.store.release(client_id, &self.me).map(|_| ())
    }

    fn subscriptions(
        &self,
        client_id: &ByteStr,
    ) -> Result<Vec<(ByteStr, pigeon_codec::SubscriptionOptions, Option<u32>)>, StoreError> {
        self.store.subscriptions(client_id)
    }

    fn load_session(&self, client_id: &ByteStr) -> Result<Option<LoadedSession>, StoreError> {
        self.store.load_session(client_id)
    }
}
