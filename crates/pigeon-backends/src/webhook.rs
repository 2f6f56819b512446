//! `webhook`: the broker's events as JSON POSTs to the user's web service, one event per
//! request, with the actions and field names of EMQX 4.x's web hook plugin, so that a receiver
//! written for it reads them.
//!
//! Bodies (every one has `"node"`; `username` and `from_username` are `null` when unknown;
//! times are milliseconds since the epoch):
//! - `{"action": "client_connected", "clientid", "username", "ipaddress", "port", "keepalive",
//!   "proto_ver", "connected_at"}`;
//! - `{"action": "client_disconnected", "clientid", "username", "reason", "reason_code",
//!   "disconnected_at"}`: `reason` is `normal` (the client sent DISCONNECT), `tcp_closed` (the
//!   connection ended without one), `takeovered` (another connection took the session),
//!   `kicked` (the admin API), `keepalive_timeout`, `shutdown`, or `error` (another reason the
//!   broker closed it); `reason_code` is the DISCONNECT's reason code, or `null` without one;
//! - `{"action": "session_subscribed", "clientid", "username", "topic", "opts": {"qos", "nl",
//!   "rap", "rh"}}`;
//! - `{"action": "session_unsubscribed", "clientid", "username", "topic"}`;
//! - `{"action": "message_publish", "from_client_id", "from_username", "topic", "qos",
//!   "retain", "payload", "ts"}` (`from_client_id` is `null` for a message published
//!   in-process);
//! - `{"action": "message_delivered", "clientid", "username", "from_client_id",
//!   "from_username", "topic", "qos", "retain", "payload", "ts"}`: when the client has the
//!   message: QoS 0 once written, QoS 1 and 2 once acknowledged (EMQX's `message_acked`
//!   moment). `from_username` is always `null` here: messages do not carry it.
//!
//! Differences from EMQX: `ts` is when the event happened, not when the message was published;
//! a session taken over by a clean start is `takeovered` too (EMQX says `discarded`). Messages
//! on `$SYS/` topics make no events, as in EMQX.
//!
//! With `topics`, the message events are sent only for topics one of those filters matches.
//!
//! A payload is sent as text when it is UTF-8 and `payload_encoding` is `plain`; otherwise in
//! base64, and the event then says `"payload_encoding": "base64"`.
//!
//! Delivery: events wait in a queue bounded in events and in bytes, and one task POSTs them
//! in the order they were made, over a kept-alive connection. A message's `message_publish`
//! is made before it is routed, so it comes before its `message_delivered` events. A full
//! queue drops new events (counted, logged once until the queue drains), so a slow service
//! never holds up a client or grows memory. A failure to connect, a timeout or a 5xx is
//! retried `retries` times, 0.2 s, 0.4 s... apart (at most 30 s); a 4xx is not retried.
//! Failures are counted and logged with the URL and the status, once per 10 s at most. At
//! shutdown the broker waits a short while for the queue to empty.

use crate::http_auth::{chain, check_url, http_client, shown};
use base64::Engine;
use bytes::Bytes;
use pigeon_codec::topic::matches;
use pigeon_codec::{Protocol, QoS, ReasonCode, SubscriptionOptions};
use pigeon_core::auth::ClientInfo;
use pigeon_core::hooks::{Disconnection, Hooks};
use pigeon_core::message::Message;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// An event the webhook can send, by its `action` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    ClientConnected,
    ClientDisconnected,
    SessionSubscribed,
    SessionUnsubscribed,
    MessagePublish,
    MessageDelivered,
}

impl Event {
    /// What is sent when the configuration lists none: the events of clients and sessions.
    /// The message events, one request per message, must be asked for.
    pub const DEFAULT: [Event; 4] = [
        Event::ClientConnected,
        Event::ClientDisconnected,
        Event::SessionSubscribed,
        Event::SessionUnsubscribed,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// How a payload is written in JSON: the webhook's events, and the admin API's publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// As text (the webhook sends a payload that is not UTF-8 in base64, marked).
    #[default]
    Plain,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: String,
    pub events: Vec<Event>,
    /// Topic filters: the message events are sent only for topics one of them matches; empty:
    /// for every topic.
    pub topics: Vec<String>,
    /// Sent with every request (an `Authorization` header, for instance).
    pub headers: Vec<(String, String)>,
    /// Longest wait for one answer, connection included.
    pub timeout: Duration,
    /// Events waiting at most; more are dropped.
    pub max_queued_events: usize,
    /// Bytes of events (their JSON) waiting at most; more are dropped.
    pub max_queued_bytes: usize,
    /// Further attempts after a failure to connect, a timeout or a 5xx.
    pub retries: u32,
    pub payload_encoding: PayloadEncoding,
    /// This broker's name in every event (`"node"`).
    pub node: String,
}

/// What the webhook did, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events the service answered with a 2xx.
    pub sent: AtomicU64,
    /// Events given up on: a 4xx, or every attempt failed.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events queued or being sent.
    pub pending: AtomicU64,
    /// Their bytes.
    pub pending_bytes: AtomicU64,
}

/// The `Hooks` that turn events into requests; cloning shares the queue.
#[derive(Clone)]
pub struct Webhook {
    queue: mpsc::Sender<Bytes>,
    events: u8,
    topics: Arc<[String]>,
    node: Arc<str>,
    encoding: PayloadEncoding,
    max_queued_bytes: u64,
    stats: Arc<WebhookStats>,
    /// Set by the first drop, cleared when the queue drains: one log line per overflow.
    dropping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("events", &self.events)
            .finish()
    }
}

impl Webhook {
    /// Checks the settings and starts the task that sends; needs a tokio runtime.
    pub fn start(settings: WebhookSettings) -> Result<Webhook, String> {
        let url = check_url(&settings.url)?;
        let client = http_client(settings.timeout, &settings.headers)?;
        let (queue, receiver) = mpsc::channel(settings.max_queued_events.max(1));
        let stats = Arc::new(WebhookStats::default());
        let dropping = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            client,
            shown: shown(&url),
            url,
            retries: settings.retries,
            stats: Arc::clone(&stats),
            dropping: Arc::clone(&dropping),
            last_warning: None,
            unreported_failures: 0,
        };
        info!(url = %sender.shown, "webhook on");
        tokio::spawn(sender.run(receiver));
        Ok(Webhook {
            queue,
            events: settings.events.iter().fold(0, |bits, e| bits | e.bit()),
            encoding: settings.payload_encoding,
            max_queued_bytes: settings.max_queued_bytes as u64,
            node: settings.node.into(),
            topics: settings.topics.into(),
            stats,
            dropping,
        })
    }

    pub fn stats(&self) -> Arc<WebhookStats> {
        Arc::clone(&self.stats)
    }

    /// Waits until every queued event is sent or given up on, at most `within`.
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.stats.pending.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                warn!(
                    events = self.stats.pending.load(Ordering::Relaxed),
                    "webhook: events still unsent at shutdown"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn wants(&self, event: Event) -> bool {
        self.events & event.bit() != 0
    }

    fn push(&self, mut body: Value) {
        body["node"] = self.node.as_ref().into();
        let body = Bytes::from(body.to_string());
        let size = body.len() as u64;
        let stats = &self.stats;
        // Counted before it is queued, so the sender never counts below zero; taken back if
        // it is not.
        stats.pending.fetch_add(1, Ordering::AcqRel);
        let before = stats.pending_bytes.fetch_add(size, Ordering::AcqRel);
        let full = if before + size > self.max_queued_bytes {
            Some("bytes")
        } else if self.queue.try_send(body).is_err() {
            Some("events")
        } else {
            None
        };
        if let Some(limit) = full {
            stats.pending.fetch_sub(1, Ordering::AcqRel);
            stats.pending_bytes.fetch_sub(size, Ordering::AcqRel);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.dropping.swap(true, Ordering::Relaxed) {
                warn!(
                    limit,
                    "webhook: the queue is full, dropping events until the service catches up"
                );
            }
        }
    }

    fn payload(&self, body: &mut Value, payload: &[u8]) {
        let text = match self.encoding {
            PayloadEncoding::Plain => std::str::from_utf8(payload).ok(),
            PayloadEncoding::Base64 => None,
        };
        body["payload"] = match text {
            Some(text) => text.into(),
            None => {
                body["payload_encoding"] = "base64".into();
                base64::engine::general_purpose::STANDARD
                    .encode(payload)
                    .into()
            }
        };
    }
}

fn username(client: &ClientInfo) -> Value {
    client.username.as_ref().map(|u| u.as_str()).into()
}

fn qos(qos: QoS) -> u8 {
    qos as u8
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `$SYS/` messages are the broker's own reports, not traffic: no events for them.
fn is_sys(message: &Message) -> bool {
    message.topic.as_str().starts_with("$SYS/")
}

impl Webhook {
    /// Whether `event` is wanted for `message`: not a `$SYS` report, and on a topic that
    /// `topics` lets through.
    fn wants_message(&self, event: Event, message: &Message) -> bool {
        let topic = message.topic.as_str();
        self.wants(event)
            && !is_sys(message)
            && (self.topics.is_empty() || self.topics.iter().any(|f| matches(f, topic)))
    }
}

/// EMQX's name for why a connection ended, and the reason code if a DISCONNECT carried one.
fn disconnection(how: Disconnection) -> (&'static str, Option<u8>) {
    match how {
        Disconnection::Client(code) => ("normal", Some(code.0)),
        Disconnection::ConnectionLost => ("tcp_closed", None),
        Disconnection::Server(code) => {
            let reason = match code {
                ReasonCode::SESSION_TAKEN_OVER => "takeovered",
                ReasonCode::ADMINISTRATIVE_ACTION => "kicked",
                ReasonCode::KEEP_ALIVE_TIMEOUT => "keepalive_timeout",
                ReasonCode::SERVER_SHUTTING_DOWN => "shutdown",
                _ => "error",
            };
            (reason, Some(code.0))
        }
    }
}

impl Hooks for Webhook {
    fn client_connected(&self, client: &ClientInfo) {
        if !self.wants(Event::ClientConnected) {
            return;
        }
        self.push(json!({
            "action": "client_connected",
            "clientid": client.client_id.as_str(),
            "username": username(client),
            "ipaddress": client.peer.ip().to_string(),
            "port": client.peer.port(),
            "keepalive": client.keep_alive,
            "proto_ver": match client.protocol {
                Protocol::V3_1 => 3,
                Protocol::V3_1_1 => 4,
                Protocol::V5 => 5,
            },
            "connected_at": now_ms(),
        }));
    }

    fn client_disconnected(&self, client: &ClientInfo, how: Disconnection) {
        if !self.wants(Event::ClientDisconnected) {
            return;
        }
        let (reason, code) = disconnection(how);
        self.push(json!({
            "action": "client_disconnected",
            "clientid": client.client_id.as_str(),
            "username": username(client),
            "reason": reason,
            "reason_code": code,
            "disconnected_at": now_ms(),
        }));
    }

    fn message_published(&self, client: Option<&ClientInfo>, message: &Message) {
        if !self.wants_message(Event::MessagePublish, message) {
            return;
        }
        let mut body = json!({
            "action": "message_publish",
            "from_client_id": client.map(|c| c.client_id.as_str()),
            "from_username": client.map(username).unwrap_or(Value::Null),
            "topic": message.topic.as_str(),
            "qos": qos(message.qos),
            "retain": message.retain,
            "ts": now_ms(),
        });
        self.payload(&mut body, &message.payload);
        self.push(body);
    }

    fn message_delivered(&self, client: &ClientInfo, message: &Message, delivered_qos: QoS) {
        if !self.wants_message(Event::MessageDelivered, message) {
            return;
        }
        let mut body = json!({
            "action": "message_delivered",
            "clientid": client.client_id.as_str(),
            "username": username(client),
            "from_client_id": message.origin.as_ref().map(|o| o.as_str()),
            "from_username": null,
            "topic": message.topic.as_str(),
            "qos": qos(delivered_qos),
            "retain": message.retain,
            "ts": now_ms(),
        });
        self.payload(&mut body, &message.payload);
        self.push(body);
    }

    fn subscribed(&self, client: &ClientInfo, filter: &str, options: &SubscriptionOptions) {
        if !self.wants(Event::SessionSubscribed) {
            return;
        }
        self.push(json!({
            "action": "session_subscribed",
            "clientid": client.client_id.as_str(),
            "username": username(client),
            "topic": filter,
            "opts": {
                "qos": qos(options.qos),
                "nl": u8::from(options.no_local),
                "rap": u8::from(options.retain_as_published),
                "rh": options.retain_handling as u8,
            },
        }));
    }

    fn unsubscribed(&self, client: &ClientInfo, filter: &str) {
        if !self.wants(Event::SessionUnsubscribed) {
            return;
        }
        self.push(json!({
            "action": "session_unsubscribed",
            "clientid": client.client_id.as_str(),
            "username": username(client),
            "topic": filter,
        }));
    }
}

/// The task that POSTs the queued events, one at a time.
struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `url` without credentials, for logs.
    shown: String,
    retries: u32,
    stats: Arc<WebhookStats>,
    dropping: Arc<AtomicBool>,
    last_warning: Option<Instant>,
    /// Failures since the last warning, told in the next one.
    unreported_failures: u64,
}

/// The longest wait between two attempts at one event.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Failures are logged this often at most.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl Sender {
    async fn run(mut self, mut receiver: mpsc::Receiver<Bytes>) {
        while let Some(body) = receiver.recv().await {
            let size = body.len() as u64;
            self.send(body).await;
            self.stats.pending_bytes.fetch_sub(size, Ordering::AcqRel);
            self.stats.pending.fetch_sub(1, Ordering::AcqRel);
            if receiver.is_empty() && self.dropping.swap(false, Ordering::Relaxed) {
                info!(
                    dropped = self.stats.dropped.load(Ordering::Relaxed),
                    "webhook: the queue drained; events dropped since the start"
                );
            }
        }
    }

    async fn send(&mut self, body: Bytes) {
        let mut pause = Duration::from_millis(200);
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            let sent = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let error = match sent {
                Ok(response) if response.status().is_success() => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status();
                    self.failed(format!("answered {status}; not retried"));
                    return;
                }
                Ok(response) => format!("answered {}", response.status()),
                Err(e) => chain(&e),
            };
            if attempt == self.retries {
                self.failed(format!("{error} (attempts: {})", attempt + 1));
            }
        }
    }

    fn failed(&mut self, why: String) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.unreported_failures += 1;
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARNING_INTERVAL);
        if due {
            warn!(
                url = %self.shown,
                events = self.unreported_failures,
                "webhook: event not delivered: {why}"
            );
            self.last_warning = Some(Instant::now());
            self.unreported_failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large payloads fill the queue by bytes before they fill it by count.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let webhook = Webhook::start(WebhookSettings {
            url: "http://127.0.0.1:9/".into(),
            events: vec![Event::MessagePublish],
            topics: Vec::new(),
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            max_queued_events: 1000,
            max_queued_bytes: 4096,
            retries: 0,
            payload_encoding: PayloadEncoding::Plain,
            node: "test".into(),
        })
        .expect("valid settings");
        let message = Message::new(
            "t".into(),
            Bytes::from(vec![b'a'; 1000]),
            QoS::AtMostOnce,
            false,
            Default::default(),
            None,
        );
        // The sender task has not run yet (this runtime has one thread, and nothing awaits):
        // events of about 1,100 bytes, three of which fit in 4,096.
        for _ in 0..10 {
            webhook.message_published(None, &message);
        }
        let stats = webhook.stats();
        assert_eq!(stats.pending.load(Ordering::Relaxed), 3);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 7);
        assert!(stats.pending_bytes.load(Ordering::Relaxed) <= 4096);
    }

    #[test]
    fn disconnections_have_emqx_names() {
        assert_eq!(
            disconnection(Disconnection::Client(ReasonCode::NORMAL_DISCONNECTION)),
            ("normal", Some(0))
        );
        assert_eq!(
            disconnection(Disconnection::ConnectionLost),
            ("tcp_closed", None)
        );
        assert_eq!(
            disconnection(Disconnection::Server(ReasonCode::SESSION_TAKEN_OVER)),
            ("takeovered", Some(0x8E))
        );
        assert_eq!(
            disconnection(Disconnection::Server(ReasonCode::PROTOCOL_ERROR)),
            ("error", Some(0x82))
        );
    }
}
