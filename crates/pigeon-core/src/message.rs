//! `Message`: one accepted PUBLISH (or will), shared by every subscriber it is routed to.
//!
//! A message is immutable once made and travels as `Arc<Message>`: routing to a thousand
//! subscribers clones a pointer a thousand times, never the topic, properties or payload.
//! Per-subscriber differences (QoS, retain flag, subscription identifiers) live in `Delivery`.

use bytes::Bytes;
use pigeon_codec::{ByteStr, PublishProperties, QoS};
use std::sync::Arc;
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Pass-through properties. `topic_alias` and `subscription_identifiers` are always empty here
    /// (they belong to one connection), and `message_expiry_interval` is replaced by `expires_at`,
    /// except in a will until `Broker::publish` starts its lifetime.
    pub properties: PublishProperties,
    /// When the 5.0 Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local; `None` for messages the broker itself makes.
    pub origin: Option<ByteStr>,
}

impl Message {
    /// Builds a message from what a client sent, stripping per-connection properties.
    pub fn new(
        topic: ByteStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
        origin: Option<ByteStr>,
    ) -> Message {
        // An interval of 0 is read as "no expiry", as mosquitto does: a lifetime of zero seconds
        // would make the message undeliverable, which no publisher means.
        let expires_at = properties
            .message_expiry_interval
            .take()
            .filter(|secs| *secs > 0)
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            origin,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to forward: what is left of it, in whole seconds, rounded up
    /// so a message is never forwarded with 0 (which would mean "no expiry" to nobody, but reads
    /// oddly) while it is still valid.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }

    /// Bytes this message costs a queue: payload plus topic (what grows with the client's data).
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.len()
    }
}

/// A message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(message QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent because of a subscribe, and for
    /// live messages only with Retain As Published.
    pub retain: bool,
    /// Identifiers of every matching subscription that has one (5.0).
    pub subscription_ids: Vec<u32>,
    /// The session's sequence number of this delivery in the store; 0 when not stored.
    pub seq: u64,
}
