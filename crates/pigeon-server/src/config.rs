//! The broker's configuration: typed, validated at load, unknown keys refused.
//!
//! One TOML file (DESIGN.md "Contract"). With no file, `Config::default()` serves MQTT on
//! 127.0.0.1:1883, MQTT over WebSocket on 127.0.0.1:8083 (path `/mqtt`) and HTTP on
//! 127.0.0.1:18083. With a file, its `[[listener]]` list is the complete list of listeners, and
//! HTTP runs only if the file has an `[http]` section.
//! Loading takes two passes over the text: serde into the typed `Config` (syntax, types, unknown
//! keys), then `validate()` for rules on values. Errors of both passes name file, line, column
//! and key; positions come from a second parse that keeps spans (`toml::de::DeTable`), so the
//! typed structs carry none. `DEFAULT_CONFIG` is the commented example `pigeon default-config`
//! prints; a test keeps it equal to `Config::default()` and complete.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

mod auth_backends;
pub use auth_backends::{HttpAuthConfig, JwtAuthConfig, PostgresAuthConfig, RedisAuthConfig};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The HTTP listener (health, static files); `None` when a file has no `[http]` section.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// The cluster over Redis; `None` (a node alone) when there is no `[cluster]` section.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Events as HTTP POSTs; `None` when there is no `[webhook]` section.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// `[webhook]`: the broker's events as JSON POSTs to the user's web service
/// (`pigeon_backends::webhook`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where events are POSTed. Required.
    pub url: String,
    /// Which events; empty: those of clients and sessions (`Event::DEFAULT`).
    pub events: Vec<pigeon_backends::webhook::Event>,
    /// Topic filters the message events are limited to; empty: every topic.
    pub topics: Vec<String>,
    /// Sent with every request.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Longest wait for one answer, connection included.
    pub timeout_ms: u64,
    /// Events waiting to be sent at most; more are dropped and counted.
    pub max_queued_events: usize,
    /// Bytes of events (their JSON) waiting at most; more are dropped and counted.
    pub max_queued_bytes: usize,
    /// Further attempts after a failure to connect, a timeout or a 5xx.
    pub retries: u32,
    pub payload_encoding: pigeon_backends::webhook::PayloadEncoding,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            events: Vec::new(),
            topics: Vec::new(),
            headers: std::collections::BTreeMap::new(),
            timeout_ms: 5000,
            max_queued_events: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            retries: 2,
            payload_encoding: pigeon_backends::webhook::PayloadEncoding::Plain,
        }
    }
}

impl WebhookConfig {
    /// The webhook's settings; `node` names this broker in every event.
    pub fn settings(&self, node: &str) -> pigeon_backends::webhook::WebhookSettings {
        let events = if self.events.is_empty() {
            pigeon_backends::webhook::Event::DEFAULT.to_vec()
        } else {
            self.events.clone()
        };
        pigeon_backends::webhook::WebhookSettings {
            url: self.url.clone(),
            events,
            topics: self.topics.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            max_queued_events: self.max_queued_events,
            max_queued_bytes: self.max_queued_bytes,
            retries: self.retries,
            payload_encoding: self.payload_encoding,
            node: node.to_owned(),
        }
    }
}

/// `[cluster]`: nodes sharing one Redis, in the wire format of aedes's mqemitter-redis.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// A stable name for logs; the bus's `brokerId` is this plus a suffix new at every start.
    pub node_id: String,
    /// Seconds between heartbeats; a node silent for three of them is taken for dead.
    pub heartbeat_interval: u64,
    /// Local messages kept for the bus while Redis is unreachable, sent when it is back.
    pub outbox_messages: usize,
    /// Message ids remembered to drop copies (mqemitter-redis keeps 10,000 for 60 s).
    pub dedupe_ids: usize,
    pub dedupe_seconds: u64,
    /// Read every message on the bus (`PSUBSCRIBE *`), not only those local sessions need.
    pub subscribe_all: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379/".to_owned(),
            node_id: "pigeon".to_owned(),
            heartbeat_interval: 1,
            outbox_messages: 100_000,
            dedupe_ids: 100_000,
            dedupe_seconds: 60,
            subscribe_all: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Mqtts | ListenerProtocol::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Mqtts => "mqtts",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The WebSocket path when a ws/wss listener sets none.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    #[serde(default = "default_protocol")]
    pub protocol: ListenerProtocol,
    /// ws/wss: the only HTTP path upgraded; `None` means `/mqtt`.
    pub path: Option<String>,
    /// mqtts/wss: the server's certificate chain, PEM, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// mqtts/wss: the server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// mqtts/wss: CA certificates (PEM) that sign client certificates. When set, clients must
    /// present a certificate signed by one of them, unless `tls_client_optional`.
    pub tls_client_ca: Option<PathBuf>,
    /// Clients without a certificate are accepted too; a certificate sent is still verified.
    #[serde(default)]
    pub tls_client_optional: bool,
    /// The Common Name of the client's certificate becomes its username, replacing CONNECT's;
    /// a client without a certificate is refused (CONNACK Not authorized), as in mosquitto.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// ws/wss: browser origins allowed to connect (`https://example.com`); empty allows any.
    /// A request without an Origin header (not a browser) is allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// ws/wss: peers whose `X-Forwarded-For` header names the client's real address.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
}

impl ListenerConfig {
    /// A listener with every optional key at its default.
    pub fn new(bind: SocketAddr, protocol: ListenerProtocol) -> ListenerConfig {
        ListenerConfig {
            bind,
            protocol,
            path: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_optional: false,
            use_identity_as_username: false,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }

    /// The WebSocket path: `path`, or `/mqtt`.
    pub fn ws_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_WS_PATH)
    }
}

fn default_protocol() -> ListenerProtocol {
    ListenerProtocol::Mqtt
}

/// The HTTP listener: a health and index response, and static files when `static_dir` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_bind", deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    /// Files under this directory are served at their relative path; none are served when unset.
    pub static_dir: Option<PathBuf>,
    /// The bearer token of the admin API under `/api/v1/`; the API is off when unset.
    pub admin_token: Option<String>,
}

fn default_http_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 18083))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: default_http_bind(),
            static_dir: None,
            admin_token: None,
        }
    }
}

/// `SocketAddr`'s own message ("invalid socket address syntax") does not say what is expected.
fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an IP:port address, such as 127.0.0.1:1883 or [::1]:1883"
        ))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Nothing survives a restart.
    Memory,
    /// A redb file in `path`: sessions, queues, in-flight state, retained messages and wills
    /// survive a restart and a `kill -9`.
    #[default]
    Embedded,
    /// Redis, shared by the nodes of a cluster: a session resumes on any node.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Every group commit is synced to disk before the acknowledgements that wait on it.
    #[default]
    Always,
    /// Commits are synced every `sync_interval_ms`; a crash loses at most that much.
    Periodic,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Data directory; `./data` when unset.
    pub path: Option<PathBuf>,
    pub sync: SyncMode,
    /// With `sync = "periodic"`: milliseconds between syncs.
    pub sync_interval_ms: u64,
    /// With `backend = "redis"`: the server; `[cluster] redis_url` when unset.
    pub redis_url: Option<String>,
    /// With `backend = "redis"`: the start of every key the store writes.
    pub key_prefix: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Embedded,
            path: None,
            sync: SyncMode::Always,
            sync_interval_ms: 1000,
            redis_url: None,
            key_prefix: "pigeon:".to_owned(),
        }
    }
}

impl StorageConfig {
    /// The data directory the embedded store uses.
    pub fn data_dir(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from("./data"))
    }
}

/// Who may connect, publish and subscribe. Backends run in `order` (or the built-in order:
/// password_file, then acl_file); Rust backends added by `Pigeon::builder()` run after them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients that no backend authenticates and that send no credentials. `None`:
    /// accepted only when every listener is on loopback and no authenticator is configured.
    pub allow_anonymous: Option<bool>,
    /// mosquitto's password file (`$7$` / `$6$` entries, as `mosquitto_passwd` and
    /// `pigeon passwd` write). Read again on SIGHUP.
    pub password_file: Option<PathBuf>,
    /// mosquitto's ACL file (`user`, `topic`, `pattern`). Read again on SIGHUP.
    pub acl_file: Option<PathBuf>,
    /// Usernames that skip the ACL once authenticated.
    pub superusers: Vec<String>,
    /// The order the backends are asked in, by name; backends left out follow in the built-in
    /// order. Empty: the built-in order.
    pub order: Vec<String>,
    /// Failed logins from one IP address within `login_failure_window` seconds before that
    /// address is refused (CONNACK 0x8A Banned / 3.1.1 return code 5) for `login_ban_time`
    /// seconds. 0 turns the limit off.
    pub max_login_failures: u32,
    pub login_failure_window: u64,
    pub login_ban_time: u64,
    /// `[auth.http]`: JSON POSTs to the user's auth and ACL endpoints.
    pub http: Option<HttpAuthConfig>,
    /// `[auth.redis]`: users and ACL rows in Redis hashes.
    pub redis: Option<RedisAuthConfig>,
    /// `[auth.postgres]`: users and ACL rows in PostgreSQL tables.
    pub postgres: Option<PostgresAuthConfig>,
    /// `[auth.jwt]`: a JSON Web Token in the password field.
    pub jwt: Option<JwtAuthConfig>,
}

/// Names of the built-in auth backends, in their default order.
pub const AUTH_BACKENDS: &[&str] = &[
    "password_file",
    "acl_file",
    "jwt",
    "redis",
    "postgres",
    "http",
];

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            superusers: Vec::new(),
            order: Vec::new(),
            max_login_failures: 5,
            login_failure_window: 60,
            login_ban_time: 60,
            http: None,
            redis: None,
            postgres: None,
            jwt: None,
        }
    }
}

impl AuthConfig {
    /// Whether any authenticator is configured in the file.
    pub fn has_authenticator(&self) -> bool {
        self.password_file.is_some()
            || self.jwt.is_some()
            || self.http.as_ref().is_some_and(|h| h.auth_url.is_some())
            || self.redis.as_ref().is_some_and(|r| !r.user_key.is_empty())
            || self
                .postgres
                .as_ref()
                .is_some_and(|p| !p.auth_query.trim().is_empty())
    }

    /// The configured backends' names, in the order they run.
    pub fn backend_order(&self) -> Vec<&str> {
        let configured = |name: &str| match name {
            "password_file" => self.password_file.is_some(),
            "acl_file" => self.acl_file.is_some(),
            "jwt" => self.jwt.is_some(),
            "redis" => self.redis.is_some(),
            "postgres" => self.postgres.is_some(),
            "http" => self.http.is_some(),
            _ => false,
        };
        let mut order: Vec<&str> = self
            .order
            .iter()
            .map(String::as_str)
            .filter(|n| configured(n))
            .collect();
        for name in AUTH_BACKENDS {
            if configured(name) && !order.contains(name) {
                order.push(name);
            }
        }
        order
    }

    /// `allow_anonymous` as set, or its default: true only when every listener is on loopback
    /// and no authenticator is configured (`extra_authenticators`: added from Rust).
    pub fn anonymous_allowed(
        &self,
        listeners: &[ListenerConfig],
        extra_authenticators: bool,
    ) -> bool {
        self.allow_anonymous.unwrap_or_else(|| {
            !self.has_authenticator()
                && !extra_authenticators
                && listeners.iter().all(|l| l.bind.ip().is_loopback())
        })
    }
}

/// The first listener bound beyond loopback when no auth is configured and `allow_anonymous`
/// was not set: such a broker would be open to the network without anyone choosing that.
pub fn open_to_the_network(config: &Config, extra_authenticators: bool) -> Option<&ListenerConfig> {
    let auth = &config.auth;
    if auth.allow_anonymous.is_some() || auth.has_authenticator() || extra_authenticators {
        return None;
    }
    config.listeners.iter().find(|l| !l.bind.ip().is_loopback())
}

/// The error for `open_to_the_network`.
pub fn open_to_the_network_reason(listener: &ListenerConfig) -> String {
    format!(
        "listener {} is not on loopback and no authentication is configured: set \
         `password_file` (or another backend), or set `allow_anonymous = true` to accept \
         anonymous clients from the network on purpose",
        listener.bind
    )
}

/// Protocol behaviour that is a choice, not a limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Retained messages are kept and delivered.
    pub retain_available: bool,
    /// Topic Alias Maximum the broker announces to 5.0 clients (aliases clients may set).
    pub topic_alias_maximum: u16,
    /// Largest session expiry interval granted, in seconds (larger requests are lowered).
    pub max_session_expiry: u32,
    /// Queue QoS 0 messages for offline persistent sessions (mosquitto's `queue_qos0_messages`).
    pub queue_qos0: bool,
    /// Seconds between updates of the `$SYS/broker/...` topics (mosquitto's `sys_interval`);
    /// 0 publishes none.
    pub sys_interval: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            retain_available: true,
            topic_alias_maximum: 64,
            max_session_expiry: u32::MAX,
            queue_qos0: false,
            sys_interval: 10,
        }
    }
}

/// Bounds. Every one has a default a user can live with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest keep alive accepted, in seconds; 5.0 clients asking more get it as Server Keep Alive,
    /// 3.1.1 clients asking more (or 0) are refused. 0 means no limit.
    pub max_keepalive: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// Seconds a TLS or WebSocket handshake may take, counted from the TCP accept.
    pub handshake_timeout: u64,
    /// Largest packet accepted, in bytes, whole packet (5.0 Maximum Packet Size).
    pub max_packet_size: u32,
    /// Connections beyond this are refused (5.0: CONNACK 0x97 Quota exceeded; 3.1.1: return code 3).
    pub max_connections: usize,
    /// Outgoing QoS 1/2 messages in flight per client (also capped by the client's Receive Maximum);
    /// and the Receive Maximum announced to 5.0 clients for incoming QoS 1/2.
    pub max_inflight: u16,
    /// Messages waiting per session beyond those in flight.
    pub max_queued_messages: usize,
    /// Payload bytes waiting per session beyond those in flight.
    pub max_queued_bytes: usize,
    /// Bytes of queued messages the store may hold for all sessions together (0: no cap). When
    /// reached, messages for persistent sessions are dropped and 5.0 publishers get 0x97.
    pub max_stored_bytes: u64,
    /// Topic levels beyond this are refused.
    pub max_topic_levels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keepalive: 0,
            connect_timeout: 10,
            handshake_timeout: 10,
            max_packet_size: 1024 * 1024,
            max_connections: 1_000_000,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_stored_bytes: 1024 * 1024 * 1024,
            max_topic_levels: 128,
        }
    }
}

impl Default for Config {
    /// The built-in defaults: MQTT on 127.0.0.1:1883, MQTT over WebSocket on 127.0.0.1:8083
    /// path `/mqtt`, HTTP on 127.0.0.1:18083, the embedded store in ./data.
    fn default() -> Self {
        let mut ws = ListenerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 8083)),
            ListenerProtocol::Ws,
        );
        ws.path = Some(DEFAULT_WS_PATH.to_owned());
        Config {
            listeners: vec![
                ListenerConfig::new(
                    SocketAddr::from(([127, 0, 0, 1], 1883)),
                    ListenerProtocol::Mqtt,
                ),
                ws,
            ],
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            mqtt: MqttConfig::default(),
            http: Some(HttpConfig::default()),
            cluster: None,
            webhook: None,
        }
    }
}

/// Smallest `max_packet_size` accepted: room for a PUBLISH with a short topic and payload.
pub const MIN_PACKET_SIZE: u32 = 16;
/// Largest packet MQTT can express: 268,435,455 bytes of Remaining Length plus a 5-byte fixed
/// header (5.0 Maximum Packet Size).
pub const MAX_PACKET_SIZE: u32 = 268_435_460;
/// Largest `connect_timeout`, in seconds; larger values only keep idle sockets open.
pub const MAX_CONNECT_TIMEOUT: u64 = 3600;

/// The commented example printed by `pigeon default-config`: every key with its default.
pub const DEFAULT_CONFIG: &str = r#"# Pigeon configuration. Every key is listed with its default value; keys left out take
# that default. Check a file with `pigeon check-config FILE`, serve with `pigeon --config FILE`.

# MQTT listeners. With a config file this list is the complete list of listeners: repeat the
# [[listener]] block once per address. At least one is required.
[[listener]]
# Address to listen on, as IP:port ("0.0.0.0:1883" for every IPv4 interface; port 0 picks a free port).
bind = "127.0.0.1:1883"
# Protocol spoken on the socket: "mqtt" (TCP), "mqtts" (TLS), "ws" (WebSocket) or "wss"
# (WebSocket over TLS).
protocol = "mqtt"
# ws and wss only: the HTTP path upgraded to WebSocket; other paths get 404.
# path = "/mqtt"
# ws and wss only: browser origins allowed (the Origin header, as "https://host[:port]");
# empty allows any. Requests without an Origin header (not from a browser) are allowed.
# allowed_origins = []
# ws and wss only: addresses of reverse proxies whose X-Forwarded-For header gives the
# client's address (the right-most address not in this list). Empty: the header is ignored.
# trusted_proxies = []
# mqtts and wss only: the certificate chain (leaf first) and private key, PEM files. Both are
# read again on SIGHUP; a reload that fails keeps the certificates in use.
# tls_cert = "/etc/pigeon/server.crt"
# tls_key = "/etc/pigeon/server.key"
# mqtts and wss only: CA certificates (PEM) for client certificates. When set, a client must
# present a certificate signed by one of them.
# tls_client_ca = "/etc/pigeon/clients-ca.crt"
# With tls_client_ca: also accept clients that present no certificate.
# tls_client_optional = false
# With tls_client_ca: the Common Name of the client's certificate is its username, whatever
# CONNECT says; a client without a certificate is refused.
# use_identity_as_username = false

[[listener]]
bind = "127.0.0.1:8083"
protocol = "ws"
path = "/mqtt"

[storage]
# Where sessions, offline queues, in-flight messages, retained messages and wills live:
# "embedded" (a redb file in `path`, survives restarts and kill -9), "memory" (lost at restart)
# or "redis" (shared by the nodes of a cluster, so a client resumes its session on any node;
# Redis's own persistence settings decide what survives a restart of Redis).
backend = "embedded"
# Data directory of the embedded store; ./data when unset.
# path = "./data"
# "always": a PUBACK/PUBREC/SUBACK that depends on the store waits until the store is synced to
# disk (many messages share one sync). "periodic": sync every sync_interval_ms; a crash can lose
# up to that much of what was acknowledged.
sync = "always"
sync_interval_ms = 1000
# backend = "redis": the Redis server ([cluster] redis_url when unset) and the prefix of its keys.
# redis_url = "redis://127.0.0.1:6379/0"
key_prefix = "pigeon:"

[auth]
# Accept clients that send no username and password. When unset: accepted only if every
# listener is on a loopback address and no backend that authenticates is set: password_file,
# jwt, or the auth_url, user_key or auth_query of http, redis or postgres. A listener beyond loopback
# with no authentication configured refuses to start unless this is set.
# allow_anonymous = true
# mosquitto's password file: `user:$7$...` lines, written by `pigeon passwd` or
# `mosquitto_passwd`. Read again on SIGHUP (a file that fails to load keeps the old users).
# password_file = "/etc/pigeon/passwd"
# mosquitto's ACL file: `user NAME`, `topic [read|write|readwrite|deny] FILTER`,
# `pattern [access] FILTER` with %u and %c. When set, what no rule allows is denied.
# Read again on SIGHUP.
# acl_file = "/etc/pigeon/acl"
# Usernames that skip the ACL once authenticated.
superusers = []
# The order backends are asked in, by name; those left out follow in the built-in order:
# password_file, acl_file, jwt, redis, postgres, http.
order = []
# After this many failed logins from one IP address within login_failure_window seconds, that
# address is refused (CONNACK 0x8A Banned; 3.1.1: 5) for login_ban_time seconds. 0: no limit.
max_login_failures = 5
login_failure_window = 60
login_ban_time = 60

# Backends beyond files: each section below, uncommented, turns one on, and its name (http,
# redis, postgres, jwt) may go in `order`. A backend that cannot reach its service refuses
# the client (fail closed) and the log names the service and the error.

# [auth.http]
# The broker POSTs JSON to your service: at CONNECT to auth_url (clientid, username, password,
# peerhost, peerport, protocol), at PUBLISH and SUBSCRIBE to acl_url (clientid, username,
# peerhost, topic, access = "write" or "subscribe"). A 2xx answer with {"result": "allow"} or
# an empty body allows, {"result": "deny"} or any other status denies, {"result": "ignore"}
# asks the next backend (the contract of EMQX's and mosquitto-go-auth's HTTP backends).
# auth_url = "http://127.0.0.1:8080/mqtt/auth"
# acl_url = "http://127.0.0.1:8080/mqtt/acl"
# Milliseconds to wait for an answer, connection included.
# timeout_ms = 5000
# Headers sent with every request, e.g. { Authorization = "Bearer change-me" }.
# headers = {}
# Milliseconds an answer is reused (0: ask every time), and how many are kept.
# cache_ttl_ms = 30000
# cache_max_entries = 100000

# [auth.redis]
# Users and ACL rows in Redis hashes; %u is the username, %c the client id. The user hash holds
# a mosquitto password hash ($7$ or $6$, as `pigeon passwd` writes) and an optional superuser
# flag (1 or true); the ACL hash maps topic filters to 1 (read), 2 (write) or 3 (both). An
# empty key turns that half off.
# url = "redis://127.0.0.1:6379/0"
# user_key = "mqtt_user:%u"
# password_field = "password"
# superuser_field = "is_superuser"
# acl_key = "mqtt_acl:%u"
# timeout_ms = 5000
# Milliseconds a client's ACL rows are used before they are read again, and how many clients'
# rows are kept.
# cache_ttl_ms = 30000
# cache_max_entries = 100000

# [auth.postgres]
# Users and ACL rows in PostgreSQL. $1 is the username, $2 (if the query uses it) the client
# id. auth_query returns the password hash ($7$ or $6$) and optionally a superuser flag;
# acl_query returns (topic, rw) rows, rw 1 read, 2 write, 3 both; topics may hold +, #, %u
# and %c. An empty query turns that half off. No TLS: sslmode=require is refused.
# url = "host=127.0.0.1 port=5432 user=pigeon password=change-me dbname=mqtt"
# auth_query = "SELECT password, is_superuser FROM mqtt_user WHERE username = $1"
# acl_query = "SELECT topic, rw FROM mqtt_acl WHERE username = $1"
# pool_size = 4
# timeout_ms = 5000
# cache_ttl_ms = 30000
# cache_max_entries = 100000

# [auth.jwt]
# A JSON Web Token as the password: HS256 with `secret`, RS256 with `public_key_file` (PEM),
# or both. `exp` is required and checked; an expired token or a bad signature is refused
# (bad username or password). The username claim must equal CONNECT's username when both are
# present (empty: not checked). The acl claim, {"pub": [...], "sub": [...], "all": [...]},
# grants topics until the token expires.
# secret = "change-me"
# public_key_file = "/etc/pigeon/jwt-public.pem"
# username_claim = "sub"
# acl_claim = "acl"
# leeway_secs = 0
# Connections whose token rights are kept at most.
# cache_max_entries = 100000

[limits]
# Largest keep alive accepted, in seconds (5.0 clients asking more get this value; 3.1.1 clients
# asking more, or 0, are refused). 0 means no limit.
max_keepalive = 0
# Seconds a new connection has to send CONNECT (1 to 3600).
connect_timeout = 10
# Seconds a TLS or WebSocket handshake may take from the TCP accept (1 to 3600).
handshake_timeout = 10
# Largest packet accepted, in bytes, whole packet (16 to 268435460).
max_packet_size = 1048576
# Connections beyond this many are refused.
max_connections = 1000000
# QoS 1/2 messages in flight per client, each way (1 to 65535).
max_inflight = 32
# Messages waiting per session beyond those in flight.
max_queued_messages = 1000
# Payload bytes waiting per session beyond those in flight.
max_queued_bytes = 16777216
# Bytes of queued messages the store holds for all sessions together (0: no cap). When reached,
# messages for persistent sessions are dropped and MQTT 5.0 publishers get 0x97 Quota exceeded.
max_stored_bytes = 1073741824
# Topics with more levels than this are refused.
max_topic_levels = 128

[mqtt]
# Keep retained messages and deliver them to new subscribers.
retain_available = true
# Topic Alias Maximum announced to MQTT 5.0 clients (0 turns topic aliases off).
topic_alias_maximum = 64
# Largest session expiry interval granted, in seconds; larger requests are lowered to this.
max_session_expiry = 4294967295
# Queue QoS 0 messages for offline persistent sessions, as well as QoS 1 and 2.
queue_qos0 = false
# Seconds between updates of the retained $SYS/broker/... topics (uptime, clients, messages,
# subscriptions, retained messages), as mosquitto publishes them; 0 publishes none.
sys_interval = 10

# The HTTP listener: GET /health, Prometheus metrics at /metrics, a small index at /, and static
# files. With a config file it runs only if this section is present.
[http]
bind = "127.0.0.1:18083"
# Serve the files under this directory (index.html for a directory); unset serves none.
# static_dir = "./public"
# Turns on the admin API under /api/v1/ (stats, sessions and their detail, disconnecting a
# client, publishing) for requests with the header `Authorization: Bearer <admin_token>`, and
# the dashboard at /dashboard, which asks for the token; unset, both answer 404.
# admin_token = "a long random string"

# Several nodes on one Redis (docs/cluster.md). Each message a client publishes goes to Redis
# once, as aedes's mqemitter-redis does (so aedes nodes can join), and each node subscribes to
# what its sessions need. A backend injects messages with one Redis PUBLISH. Local delivery
# never waits for Redis. Uncomment to turn it on.
# [cluster]
# redis_url = "redis://127.0.0.1:6379/"
# A name for logs and metrics; the brokerId on the bus is this plus a suffix new at each start.
# node_id = "pigeon"
# Seconds between heartbeats; a node silent for three is taken for dead, and its sessions move
# to a live node (what is published for them meanwhile is not queued: docs/cluster.md).
# heartbeat_interval = 1
# Messages kept for the bus while Redis is unreachable, sent when it is back (older ones are
# dropped first when full, and counted).
# outbox_messages = 100000
# Message ids remembered, and for how many seconds, to deliver each message once.
# dedupe_ids = 100000
# dedupe_seconds = 60
# Read every message on the bus rather than those this node's sessions subscribe to. Needed
# only if backends inject retained messages for topics no node has a subscriber for yet (with
# it, every node keeps them); it costs every node a read of every message.
# subscribe_all = false

# The broker's events as JSON POSTs to a web service, one event per request, in EMQX's web hook
# form (README, "Events over HTTP"). Sent in order by one task; a full queue drops events
# (counted in /metrics) rather than slow clients down. Uncomment to turn it on.
# [webhook]
# url = "http://127.0.0.1:8080/mqtt/events"
# Any of client_connected, client_disconnected, session_subscribed, session_unsubscribed,
# message_publish, message_delivered; empty: the first four. Each message event is a request
# per message.
# events = []
# Topic filters the message events are sent for; empty: every topic.
# topics = ["chat/#"]
# headers = { Authorization = "Bearer change-me" }
# timeout_ms = 5000
# Events waiting at most, and their bytes (64 MiB); beyond either, new events are dropped.
# max_queued_events = 10000
# max_queued_bytes = 67108864
# Further attempts after a failure to connect, a timeout or a 5xx (0.2 s, 0.4 s... apart, at
# most 30 s; 10 at most).
# retries = 2
# "plain": UTF-8 payloads as text, others in base64 (marked); "base64": all in base64.
# payload_encoding = "plain"
"#;

/// Why a configuration was refused. The `Display` form is the whole message for a user:
/// `pigeon.toml:12:1: [limits] max_inflight: must be between 1 and 65535 (got 0)`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {}", path.display(), io_reason(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not TOML, or TOML that does not fit the schema: unknown key, wrong type, missing key.
    #[error("{location}: {}{}", key_prefix(key.as_deref()), source.message())]
    Toml {
        location: Location,
        /// The key at fault, as `[section] key`, when the position falls on one.
        key: Option<String>,
        /// Boxed: the error holds the whole input text and would make every `Result` large.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Well-formed, but a value breaks a rule: out of range, duplicate address, no listener.
    #[error("{}{key}: {reason}", location_prefix(location.as_ref()))]
    Invalid {
        /// `None` when the `Config` was not read from text (`Config::validate` on a built value).
        location: Option<Location>,
        /// The key at fault, as `[section] key`.
        key: String,
        reason: String,
    },
}

impl ConfigError {
    /// Where the error is, when it came from a file or string.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Toml { location, .. } => Some(location),
            ConfigError::Invalid { location, .. } => location.as_ref(),
        }
    }
}

/// A place in a configuration text: `origin:line:column`, 1-based, column in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file name, or whatever name the caller gave the text.
    pub origin: String,
    /// `(line, column)`; `None` when the error has no position (a key that is absent).
    pub position: Option<(usize, usize)>,
}

impl Location {
    fn at(origin: &str, text: &str, offset: Option<usize>) -> Location {
        Location {
            origin: origin.to_owned(),
            position: offset.map(|offset| line_col(text, offset)),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.origin),
            None => f.write_str(&self.origin),
        }
    }
}

fn key_prefix(key: Option<&str>) -> String {
    key.map(|key| format!("{key}: ")).unwrap_or_default()
}

fn location_prefix(location: Option<&Location>) -> String {
    location
        .map(|location| format!("{location}: "))
        .unwrap_or_default()
}

/// `io::Error`'s text without the " (os error N)" suffix, which tells a user nothing more.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(stripped) => stripped.to_owned(),
            None => text,
        },
        None => text,
    }
}

impl Config {
    /// Reads, parses and validates a TOML file. Errors name the file as `path` is written.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors (a file name, `<stdin>`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| {
            let offset = source.span().map(|span| span.start);
            let key = offset.and_then(|offset| {
                let doc = DeTable::parse(text).ok()?;
                key_path_at(doc.get_ref(), offset).map(|path| path.to_string())
            });
            ConfigError::Toml {
                location: Location::at(origin, text, offset),
                key,
                source: Box::new(source),
            }
        })?;
        if let Err(problem) = config.check() {
            let span = DeTable::parse(text)
                .ok()
                .and_then(|doc| span_of(doc.get_ref(), &problem.path.segments));
            return Err(ConfigError::Invalid {
                location: Some(Location::at(origin, text, span.map(|span| span.start))),
                key: problem.path.to_string(),
                reason: problem.reason,
            });
        }
        Ok(config)
    }

    /// Checks the rules serde cannot: ranges, duplicate listener addresses, at least one listener.
    /// Returns the first problem, in file order (listeners, then sections).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|problem| ConfigError::Invalid {
            location: None,
            key: problem.path.to_string(),
            reason: problem.reason,
        })
    }

    fn check(&self) -> Result<(), Problem> {
        if self.listeners.is_empty() {
            return Err(Problem {
                path: KeyPath::array_of_tables("listener"),
                reason: "at least one listener is required; with a config file, its [[listener]] \
                         list is the complete list (e.g. [[listener]] bind = \"127.0.0.1:1883\")"
                    .to_owned(),
            });
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let earlier = self.listeners[..i]
                .iter()
                .enumerate()
                .find(|(_, other)| addresses_collide(other.bind, listener.bind));
            if let Some((j, other)) = earlier {
                let reason = if other.bind == listener.bind {
                    format!("{} is already used by listener {}", listener.bind, j + 1)
                } else {
                    format!(
                        "{} collides with {} of listener {} (same port, and one of them is every address)",
                        listener.bind,
                        other.bind,
                        j + 1
                    )
                };
                return Err(Problem::new(
                    &[Key("listener"), Index(i), Key("bind")],
                    reason,
                ));
            }
            check_listener(i, listener)?;
        }
        if let Some(http) = &self.http {
            let clash = self
                .listeners
                .iter()
                .position(|l| addresses_collide(l.bind, http.bind));
            if let Some(j) = clash {
                return Err(Problem::new(
                    &[Key("http"), Key("bind")],
                    format!(
                        "{} collides with {} of listener {}",
                        http.bind,
                        self.listeners[j].bind,
                        j + 1
                    ),
                ));
            }
        }

        check_auth(self)?;
        check_cluster(self)?;
        check_webhook(self)?;

        let limits = &self.limits;
        between(
            "connect_timeout",
            limits.connect_timeout,
            1,
            MAX_CONNECT_TIMEOUT,
        )?;
        between(
            "handshake_timeout",
            limits.handshake_timeout,
            1,
            MAX_CONNECT_TIMEOUT,
        )?;
        between(
            "max_packet_size",
            limits.max_packet_size,
            MIN_PACKET_SIZE,
            MAX_PACKET_SIZE,
        )?;
        at_least("max_connections", limits.max_connections, 1)?;
        between("max_inflight", limits.max_inflight, 1, u16::MAX)?;
        at_least("max_queued_messages", limits.max_queued_messages, 1)?;
        at_least("max_topic_levels", limits.max_topic_levels, 1)?;
        Ok(())
    }
}

/// Most further attempts at one webhook event (about 4.5 minutes of waiting, 30 s apart at most).
const MAX_WEBHOOK_RETRIES: u32 = 10;

/// `[webhook]`: a URL to POST to, headers HTTP can carry, a queue and a timeout.
fn check_webhook(config: &Config) -> Result<(), Problem> {
    let Some(webhook) = &config.webhook else {
        return Ok(());
    };
    let with = |key: &str, reason: String| Problem::new(&[Key("webhook"), Key(key)], reason);
    pigeon_backends::http_auth::check_url(&webhook.url).map_err(|e| with("url", e))?;
    for (name, value) in &webhook.headers {
        pigeon_backends::http_auth::check_header(name, value).map_err(|e| with("headers", e))?;
    }
    for filter in &webhook.topics {
        let shared = filter.starts_with("$share/");
        if shared || !pigeon_codec::topic::valid_topic_filter(filter) {
            return Err(with(
                "topics",
                format!("`{filter}` is not a topic filter (such as \"chat/#\"; no $share)"),
            ));
        }
    }
    if webhook.timeout_ms == 0 {
        return Err(with("timeout_ms", "must be at least 1".into()));
    }
    if webhook.max_queued_events == 0 {
        return Err(with("max_queued_events", "must be at least 1".into()));
    }
    if webhook.max_queued_bytes == 0 {
        return Err(with("max_queued_bytes", "must be at least 1".into()));
    }
    if webhook.retries > MAX_WEBHOOK_RETRIES {
        return Err(with(
            "retries",
            format!(
                "at most {MAX_WEBHOOK_RETRIES}: one event's attempts hold up every event after it"
            ),
        ));
    }
    Ok(())
}

/// `[cluster]` and the Redis store: a node name, a Redis to use, sane intervals.
fn check_cluster(config: &Config) -> Result<(), Problem> {
    if let Some(cluster) = &config.cluster {
        if cluster.node_id.is_empty() || cluster.node_id.contains(char::is_whitespace) {
            return Err(Problem::new(
                &[Key("cluster"), Key("node_id")],
                "must be a name without spaces, such as \"node-a\"".to_owned(),
            ));
        }
        if !cluster.redis_url.starts_with("redis://") && !cluster.redis_url.starts_with("unix:") {
            return Err(Problem::new(
                &[Key("cluster"), Key("redis_url")],
                format!("`{}` is not a redis:// URL", cluster.redis_url),
            ));
        }
        if !(1..=3600).contains(&cluster.heartbeat_interval) {
            return Err(Problem::new(
                &[Key("cluster"), Key("heartbeat_interval")],
                format!(
                    "must be between 1 and 3600 seconds (got {})",
                    cluster.heartbeat_interval
                ),
            ));
        }
        if cluster.dedupe_ids == 0 || cluster.dedupe_seconds == 0 {
            return Err(Problem::new(
                &[Key("cluster"), Key("dedupe_ids")],
                "dedupe_ids and dedupe_seconds must be at least 1".to_owned(),
            ));
        }
    }
    if config.storage.backend == StorageBackend::Redis {
        if config.storage.redis_url.is_none() && config.cluster.is_none() {
            return Err(Problem::new(
                &[Key("storage"), Key("backend")],
                "\"redis\" needs [storage] redis_url or a [cluster] section".to_owned(),
            ));
        }
        if config.cluster.is_none() {
            return Err(Problem::new(
                &[Key("storage"), Key("backend")],
                "\"redis\" is the store of a cluster: add a [cluster] section (one node is fine)"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// The `[auth]` rules: known backend names, a closed door beyond loopback.
fn check_auth(config: &Config) -> Result<(), Problem> {
    let auth = &config.auth;
    for (i, name) in auth.order.iter().enumerate() {
        if !AUTH_BACKENDS.contains(&name.as_str()) {
            return Err(Problem::new(
                &[Key("auth"), Key("order")],
                format!(
                    "`{name}` is not an auth backend (known: {})",
                    AUTH_BACKENDS.join(", ")
                ),
            ));
        }
        if auth.order[..i].contains(name) {
            return Err(Problem::new(
                &[Key("auth"), Key("order")],
                format!("`{name}` is listed twice"),
            ));
        }
    }
    auth_backends::check(auth)?;
    if auth.max_login_failures > 0 {
        for (key, value) in [
            ("login_failure_window", auth.login_failure_window),
            ("login_ban_time", auth.login_ban_time),
        ] {
            if value == 0 {
                return Err(Problem::new(
                    &[Key("auth"), Key(key)],
                    "must be at least 1 second while max_login_failures is above 0".to_owned(),
                ));
            }
        }
    }
    if let Some(listener) = open_to_the_network(config, false) {
        let i = config
            .listeners
            .iter()
            .position(|l| std::ptr::eq(l, listener))
            .expect("the listener is one of the config's");
        return Err(Problem::new(
            &[Key("listener"), Index(i), Key("bind")],
            open_to_the_network_reason(listener),
        ));
    }
    Ok(())
}

/// The keys of one listener that depend on its protocol.
fn check_listener(i: usize, l: &ListenerConfig) -> Result<(), Problem> {
    let problem = |key: &str, reason: String| {
        Err(Problem::new(&[Key("listener"), Index(i), Key(key)], reason))
    };
    let protocol = l.protocol;
    if !protocol.is_websocket() {
        let set = [
            ("path", l.path.is_some()),
            ("allowed_origins", !l.allowed_origins.is_empty()),
            ("trusted_proxies", !l.trusted_proxies.is_empty()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return problem(
                key,
                format!("only ws and wss listeners take `{key}` (this one is {protocol})"),
            );
        }
    }
    if !protocol.is_tls() {
        let set = [
            ("tls_cert", l.tls_cert.is_some()),
            ("tls_key", l.tls_key.is_some()),
            ("tls_client_ca", l.tls_client_ca.is_some()),
            ("tls_client_optional", l.tls_client_optional),
            ("use_identity_as_username", l.use_identity_as_username),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return problem(
                key,
                format!("only mqtts and wss listeners take `{key}` (this one is {protocol})"),
            );
        }
    } else {
        for (key, value) in [("tls_cert", &l.tls_cert), ("tls_key", &l.tls_key)] {
            if value.is_none() {
                return problem(
                    "protocol",
                    format!("{protocol} needs `{key}` (a PEM file) on the same listener"),
                );
            }
        }
        if l.tls_client_ca.is_none() {
            if l.tls_client_optional {
                return problem(
                    "tls_client_optional",
                    "needs `tls_client_ca`, the CA that signs client certificates".to_owned(),
                );
            }
            if l.use_identity_as_username {
                return problem(
                    "use_identity_as_username",
                    "needs `tls_client_ca`: the identity comes from a verified client certificate"
                        .to_owned(),
                );
            }
        }
    }
    if let Some(path) = &l.path {
        if !path.starts_with('/') || path.contains(['?', '#', ' ', '\t']) {
            return problem(
                "path",
                format!("`{path}` is not an HTTP path: it starts with / and has no query (e.g. \"/mqtt\")"),
            );
        }
    }
    for origin in &l.allowed_origins {
        let valid = origin.split_once("://").is_some_and(|(scheme, host)| {
            !scheme.is_empty() && !host.is_empty() && !host.contains('/')
        });
        if !valid {
            return problem(
                "allowed_origins",
                format!("`{origin}` is not an origin: write scheme://host[:port], without a path (e.g. \"https://example.com\")"),
            );
        }
    }
    Ok(())
}

/// Two binds collide when the second would fail with "address in use": same port (not 0, which
/// picks a free one) and same address, or an unspecified address of the same family.
fn addresses_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn between<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Problem> {
    if value < min || value > max {
        return Err(Problem::new(
            &[Key("limits"), Key(key)],
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

fn at_least<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T) -> Result<(), Problem> {
    if value < min {
        return Err(Problem::new(
            &[Key("limits"), Key(key)],
            format!("must be at least {min} (got {value})"),
        ));
    }
    Ok(())
}

/// A rule broken by a typed `Config`, before it is tied to a position in a text.
struct Problem {
    path: KeyPath,
    reason: String,
}

impl Problem {
    fn new(path: &[Segment<&str>], reason: String) -> Problem {
        Problem {
            path: KeyPath {
                segments: path.iter().map(Segment::to_owned).collect(),
                kind: Kind::Value,
            },
            reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment<S> {
    Key(S),
    Index(usize),
}
use Segment::{Index, Key};

impl Segment<&str> {
    fn to_owned(&self) -> Segment<String> {
        match *self {
            Key(key) => Key(key.to_owned()),
            Index(i) => Index(i),
        }
    }
}

/// What the last segment of a path names, which decides how it is written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Value,
    Table,
    ArrayOfTables,
}

/// A key's place in the document, written as a user finds it in the file: `[limits] max_inflight`,
/// `[[listener]] bind`, `[storage]`, or a bare top-level key.
#[derive(Debug, Clone)]
struct KeyPath {
    segments: Vec<Segment<String>>,
    kind: Kind,
}

impl KeyPath {
    fn array_of_tables(key: &str) -> KeyPath {
        KeyPath {
            segments: vec![Key(key.to_owned())],
            kind: Kind::ArrayOfTables,
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Trailing array indexes of plain values (`x = [1, 2]`) say nothing a line number doesn't.
        let mut segments = &self.segments[..];
        if self.kind == Kind::Value {
            while let [rest @ .., Index(_)] = segments {
                segments = rest;
            }
        }
        let (header, key) = match segments {
            [rest @ .., Key(key)] if self.kind == Kind::Value => (rest, Some(key.as_str())),
            _ => (segments, None),
        };
        let names: Vec<&str> = header
            .iter()
            .filter_map(|segment| match segment {
                Key(key) => Some(key.as_str()),
                Index(_) => None,
            })
            .collect();
        if !names.is_empty() {
            let array = self.kind == Kind::ArrayOfTables || matches!(header.last(), Some(Index(_)));
            if array {
                write!(f, "[[{}]]", names.join("."))?;
            } else {
                write!(f, "[{}]", names.join("."))?;
            }
            if key.is_some() {
                f.write_str(" ")?;
            }
        }
        if let Some(key) = key {
            f.write_str(key)?;
        }
        Ok(())
    }
}

/// The innermost key or table whose span holds `offset`. A `[table]`'s span is its header only,
/// so the whole tree is searched, and the deepest hit wins.
fn key_path_at(doc: &DeTable<'_>, offset: usize) -> Option<KeyPath> {
    fn table(
        table: &DeTable<'_>,
        offset: usize,
        path: &mut Vec<Segment<String>>,
        best: &mut Option<KeyPath>,
    ) {
        for (key, value) in table.iter() {
            path.push(Key(key.get_ref().to_string()));
            if key.span().contains(&offset) || value.span().contains(&offset) {
                *best = Some(KeyPath {
                    segments: path.clone(),
                    kind: kind_of(value.get_ref()),
                });
            }
            inside(value, offset, path, best);
            path.pop();
        }
    }
    fn inside(
        value: &Spanned<DeValue<'_>>,
        offset: usize,
        path: &mut Vec<Segment<String>>,
        best: &mut Option<KeyPath>,
    ) {
        match value.get_ref() {
            DeValue::Table(t) => table(t, offset, path, best),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Index(i));
                    if item.span().contains(&offset) {
                        *best = Some(KeyPath {
                            segments: path.clone(),
                            kind: kind_of(item.get_ref()),
                        });
                    }
                    inside(item, offset, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    fn kind_of(value: &DeValue<'_>) -> Kind {
        match value {
            DeValue::Table(_) => Kind::Table,
            DeValue::Array(items)
                if items.first().is_some_and(|item| item.get_ref().is_table()) =>
            {
                Kind::ArrayOfTables
            }
            _ => Kind::Value,
        }
    }

    let mut best = None;
    table(doc, offset, &mut Vec::new(), &mut best);
    best
}

/// The span of the last key on `path` (or of the array item, for a trailing index); `None` when
/// the path is not in the document, e.g. a key left at its default.
fn span_of(doc: &DeTable<'_>, path: &[Segment<String>]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Key(first) = first else { return None };
    let (key, mut value) = doc.get_key_value(first.as_str())?;
    let mut span = key.span();
    for segment in rest {
        match segment {
            Key(name) => {
                let DeValue::Table(table) = value.get_ref() else {
                    return None;
                };
                let (key, next) = table.get_key_value(name.as_str())?;
                span = key.span();
                value = next;
            }
            Index(i) => {
                let DeValue::Array(items) = value.get_ref() else {
                    return None;
                };
                value = items.get(*i)?;
                span = value.span();
            }
        }
    }
    Some(span)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:1883\"\n";

    fn error(text: &str) -> String {
        Config::from_toml_str(text, "pigeon.toml")
            .expect_err("the text is invalid")
            .to_string()
    }

    #[test]
    fn default_config_parses_to_the_built_in_defaults() {
        let parsed = Config::from_toml_str(DEFAULT_CONFIG, "default").expect("valid");
        assert_eq!(parsed, Config::default());
        Config::default().validate().expect("defaults are valid");
    }

    /// serde lists a section's fields when it refuses an unknown one; each must appear in
    /// `DEFAULT_CONFIG`, set or commented out, so a field added to a struct is documented.
    #[test]
    fn default_config_lists_every_key() {
        let sections = [
            ("", "__probe = 1\n".to_owned()),
            ("[[listener]]", format!("{ONE_LISTENER}__probe = 1\n")),
            ("[storage]", "[storage]\n__probe = 1\n".to_owned()),
            ("[auth]", "[auth]\n__probe = 1\n".to_owned()),
            ("[auth.http]", "[auth.http]\n__probe = 1\n".to_owned()),
            ("[auth.redis]", "[auth.redis]\n__probe = 1\n".to_owned()),
            (
                "[auth.postgres]",
                "[auth.postgres]\n__probe = 1\n".to_owned(),
            ),
            ("[auth.jwt]", "[auth.jwt]\n__probe = 1\n".to_owned()),
            ("[limits]", "[limits]\n__probe = 1\n".to_owned()),
            ("[mqtt]", "[mqtt]\n__probe = 1\n".to_owned()),
            ("[http]", "[http]\n__probe = 1\n".to_owned()),
            ("[cluster]", "[cluster]\n__probe = 1\n".to_owned()),
            ("[webhook]", "[webhook]\n__probe = 1\n".to_owned()),
        ];
        for (section, text) in sections {
            let message = error(&text);
            let (_, expected) = message
                .split_once("expected")
                .expect("serde lists the fields");
            let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            assert!(!fields.is_empty(), "{message}");
            for field in fields {
                let listed = if section.is_empty() {
                    DEFAULT_CONFIG.contains(&format!("[{field}]"))
                        || DEFAULT_CONFIG.contains(&format!("[[{field}]]"))
                } else if DEFAULT_CONFIG
                    .contains(&format!("[{}.{field}]", section.trim_matches(['[', ']'])))
                {
                    // A table inside the section, such as [auth.http].
                    true
                } else {
                    // Optional sections are commented out, header included.
                    let body = DEFAULT_CONFIG
                        .split_once(&format!("\n{section}\n"))
                        .or_else(|| DEFAULT_CONFIG.split_once(&format!("\n# {section}\n")))
                        .expect("section present")
                        .1;
                    let body = body.split("\n[").next().expect("split yields one part");
                    let body = body.split("\n# [").next().expect("split yields one part");
                    body.lines().any(|line| {
                        let line = line.trim_start_matches("# ");
                        line.starts_with(&format!("{field} = "))
                    })
                };
                assert!(listed, "{section} {field} is missing from DEFAULT_CONFIG");
            }
        }
    }

    #[test]
    fn a_full_file_parses() {
        let text = r#"
[[listener]]
bind = "0.0.0.0:1883"

[[listener]]
bind = "[::1]:1884"
protocol = "mqtt"

[storage]
backend = "memory"
path = "/var/lib/pigeon"

[auth]
allow_anonymous = false

[limits]
max_inflight = 100
connect_timeout = 5

[mqtt]
queue_qos0 = true
"#;
        let config = Config::from_toml_str(text, "pigeon.toml").expect("valid");
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(
            config.listeners[1].bind,
            "[::1]:1884".parse().expect("address")
        );
        assert_eq!(config.storage.path, Some(PathBuf::from("/var/lib/pigeon")));
        assert_eq!(config.auth.allow_anonymous, Some(false));
        assert_eq!(config.limits.max_inflight, 100);
        assert_eq!(config.limits.connect_timeout, 5);
        assert_eq!(
            config.limits.max_packet_size,
            Limits::default().max_packet_size
        );
        assert!(config.mqtt.queue_qos0);
    }

    #[test]
    fn cluster_settings_are_checked_with_file_line_and_key() {
        let text = format!("{ONE_LISTENER}[cluster]\nnode_id = \"node a\"\n");
        assert!(
            error(&text).contains("[cluster] node_id: must be a name without spaces"),
            "{}",
            error(&text)
        );
        let text = format!("{ONE_LISTENER}[cluster]\nredis_url = \"http://x\"\n");
        assert!(error(&text).contains("[cluster] redis_url: `http://x` is not a redis:// URL"));
        let text = format!("{ONE_LISTENER}[storage]\nbackend = \"redis\"\n");
        assert!(
            error(&text).contains("[storage] backend: \"redis\" needs"),
            "{}",
            error(&text)
        );
        let text =
            format!("{ONE_LISTENER}[storage]\nbackend = \"redis\"\n[cluster]\nnode_id = \"a\"\n");
        let config = Config::from_toml_str(&text, "pigeon.toml").expect("valid");
        let cluster = config.cluster.expect("cluster section");
        assert_eq!(cluster.node_id, "a");
        assert_eq!(cluster.heartbeat_interval, 1);
        assert_eq!(config.storage.key_prefix, "pigeon:");
    }

    #[test]
    fn unknown_top_level_key_names_line_and_key() {
        let text = format!("# comment\nbnd = 1\n{ONE_LISTENER}");
        assert_eq!(
            error(&text),
            "pigeon.toml:2:1: bnd: unknown field `bnd`, expected one of `listener`, `storage`, \
             `auth`, `limits`, `mqtt`, `http`, `cluster`, `webhook`"
        );
    }

    #[test]
    fn webhook_section_is_checked_at_load() {
        let text = format!("{ONE_LISTENER}[webhook]\nurl = \"http://127.0.0.1:9/e\"\n");
        let config = Config::from_toml_str(&text, "pigeon.toml").expect("valid");
        let settings = config.webhook.expect("webhook section").settings("n");
        assert_eq!(settings.events, pigeon_backends::webhook::Event::DEFAULT);
        assert_eq!(settings.max_queued_events, 10_000);
        let bad = [
            (
                "url = \"ftp://x/\"",
                "[webhook] url: ",
                "not an http:// or https:// URL",
            ),
            (
                "url = \"http://x/\"\ntopics = [\"a/#/b\"]",
                "[webhook] topics: ",
                "`a/#/b` is not a topic filter",
            ),
            (
                "url = \"http://x/\"\nevents = [\"message_sent\"]",
                "pigeon.toml:5:11: [webhook] events: ",
                "unknown variant `message_sent`",
            ),
            (
                "url = \"http://x/\"\ntimeout_ms = 0",
                "[webhook] timeout_ms: ",
                "at least 1",
            ),
            (
                "url = \"http://x/\"\nheaders = { \"bad header\" = \"v\" }",
                "[webhook] headers: ",
                "not an HTTP header name",
            ),
        ];
        for (body, key, reason) in bad {
            let message = error(&format!("{ONE_LISTENER}[webhook]\n{body}\n"));
            assert!(
                message.starts_with("pigeon.toml:")
                    && message.contains(key)
                    && message.contains(reason),
                "{body}: {message}"
            );
        }
    }

    #[test]
    fn unknown_nested_key_names_line_and_key() {
        let text = "[[listener]]\nbnd = \"127.0.0.1:1883\"\n";
        let message = error(text);
        assert!(
            message.starts_with(
                "pigeon.toml:2:1: [[listener]] bnd: unknown field `bnd`, expected one of `bind`, \
                 `protocol`, `path`"
            ),
            "{message}"
        );
        let text = format!("{ONE_LISTENER}[limits]\n  max_inflght = 3\n");
        let message = error(&text);
        assert!(
            message
                .starts_with("pigeon.toml:4:3: [limits] max_inflght: unknown field `max_inflght`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_section_is_refused() {
        let text = format!("{ONE_LISTENER}[tls]\ncert = \"x\"\n");
        let message = error(&text);
        assert!(
            message.starts_with("pigeon.toml:3:2: [tls]: unknown field `tls`"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let text = format!("{ONE_LISTENER}[limits]\nmax_inflight = \"many\"\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:4:16: [limits] max_inflight: invalid type: string \"many\", expected u16"
        );
        let text = format!("{ONE_LISTENER}[mqtt]\nretain_available = 1\n");
        assert!(error(&text).starts_with("pigeon.toml:4:20: [mqtt] retain_available: "));
    }

    #[test]
    fn bad_address_and_protocol_are_named() {
        let text = "[[listener]]\nbind = \"localhost:1883\"\n";
        assert_eq!(
            error(text),
            "pigeon.toml:2:8: [[listener]] bind: `localhost:1883` is not an IP:port address, \
             such as 127.0.0.1:1883 or [::1]:1883"
        );
        let text = format!("{ONE_LISTENER}protocol = \"quic\"\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:3:12: [[listener]] protocol: unknown variant `quic`, expected one of \
             `mqtt`, `mqtts`, `ws`, `wss`"
        );
    }

    #[test]
    fn websocket_and_tls_listeners_parse() {
        let text = r#"
[[listener]]
bind = "127.0.0.1:8083"
protocol = "ws"
allowed_origins = ["https://example.com", "http://localhost:8080"]
trusted_proxies = ["127.0.0.1", "::1"]

[[listener]]
bind = "0.0.0.0:8884"
protocol = "wss"
path = "/ws"
tls_cert = "server.crt"
tls_key = "server.key"

[[listener]]
bind = "0.0.0.0:8883"
protocol = "mqtts"
tls_cert = "server.crt"
tls_key = "server.key"
tls_client_ca = "ca.crt"
tls_client_optional = true
use_identity_as_username = true

[auth]
allow_anonymous = true

[http]
static_dir = "public"
"#;
        let config = Config::from_toml_str(text, "pigeon.toml").expect("valid");
        let [ws, wss, mqtts] = &config.listeners[..] else {
            panic!("three listeners")
        };
        assert_eq!(ws.ws_path(), "/mqtt");
        assert_eq!(ws.trusted_proxies.len(), 2);
        assert_eq!(wss.ws_path(), "/ws");
        assert!(wss.protocol.is_tls() && wss.protocol.is_websocket());
        assert!(mqtts.use_identity_as_username && mqtts.tls_client_optional);
        let http = config.http.expect("[http] present");
        assert_eq!(http.bind, HttpConfig::default().bind);
        assert_eq!(http.static_dir, Some(PathBuf::from("public")));
    }

    #[test]
    fn auth_section_parses() {
        let text = format!(
            "{ONE_LISTENER}[auth]\npassword_file = \"passwd\"\nacl_file = \"acl\"\n\
             superusers = [\"admin\"]\norder = [\"acl_file\"]\nmax_login_failures = 0\n"
        );
        let config = Config::from_toml_str(&text, "pigeon.toml").expect("valid");
        let auth = &config.auth;
        assert_eq!(auth.password_file, Some(PathBuf::from("passwd")));
        assert_eq!(auth.superusers, vec!["admin".to_owned()]);
        assert_eq!(auth.backend_order(), vec!["acl_file", "password_file"]);
        // A password file closes the door to anonymous clients unless it is opened on purpose.
        assert!(!auth.anonymous_allowed(&config.listeners, false));
        assert!(Config::default()
            .auth
            .anonymous_allowed(&Config::default().listeners, false));
        assert!(!Config::default()
            .auth
            .anonymous_allowed(&Config::default().listeners, true));
    }

    #[test]
    fn a_listener_beyond_loopback_needs_auth_or_an_explicit_choice() {
        let open =
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n[[listener]]\nbind = \"0.0.0.0:1884\"\n";
        let message = error(open);
        assert!(
            message.starts_with(
                "pigeon.toml:4:1: [[listener]] bind: listener 0.0.0.0:1884 is not on loopback and \
                 no authentication is configured: set `password_file`"
            ),
            "{message}"
        );
        for choice in [
            "[auth]\nallow_anonymous = true\n",
            "[auth]\nallow_anonymous = false\n",
            "[auth]\npassword_file = \"passwd\"\n",
        ] {
            Config::from_toml_str(&format!("{open}{choice}"), "pigeon.toml").expect(choice);
        }
        let config = Config::from_toml_str(&format!("{open}[auth]\nallow_anonymous = true\n"), "x")
            .expect("valid");
        assert!(config.auth.anonymous_allowed(&config.listeners, false));
    }

    #[test]
    fn auth_order_names_known_backends() {
        let text = format!("{ONE_LISTENER}[auth]\norder = [\"password_file\", \"ldap\"]\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:4:1: [auth] order: `ldap` is not an auth backend (known: password_file, acl_file, jwt, redis, postgres, http)"
        );
        let text = format!("{ONE_LISTENER}[auth]\nlogin_ban_time = 0\n");
        assert!(
            error(&text).starts_with("pigeon.toml:4:1: [auth] login_ban_time: must be at least 1")
        );
    }

    #[test]
    fn a_file_without_http_runs_no_http_listener() {
        let config = Config::from_toml_str(ONE_LISTENER, "pigeon.toml").expect("valid");
        assert_eq!(config.http, None);
        assert!(Config::default().http.is_some());
    }

    #[test]
    fn keys_of_another_protocol_are_refused() {
        let text = format!("{ONE_LISTENER}path = \"/mqtt\"\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:3:1: [[listener]] path: only ws and wss listeners take `path` (this one is mqtt)"
        );
        let text = "[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"ws\"\ntls_cert = \"a\"\n";
        assert_eq!(
            error(text),
            "pigeon.toml:4:1: [[listener]] tls_cert: only mqtts and wss listeners take `tls_cert` (this one is ws)"
        );
        let text = "[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"mqtts\"\ntls_cert = \"a\"\n";
        assert_eq!(
            error(text),
            "pigeon.toml:3:1: [[listener]] protocol: mqtts needs `tls_key` (a PEM file) on the same listener"
        );
        let tls = "[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"wss\"\ntls_cert = \"a\"\ntls_key = \"b\"\n";
        let message = error(&format!("{tls}use_identity_as_username = true\n"));
        assert!(
            message.starts_with(
                "pigeon.toml:6:1: [[listener]] use_identity_as_username: needs `tls_client_ca`"
            ),
            "{message}"
        );
        let message = error(&format!("{tls}tls_client_optional = true\n"));
        assert!(
            message.starts_with(
                "pigeon.toml:6:1: [[listener]] tls_client_optional: needs `tls_client_ca`"
            ),
            "{message}"
        );
        let message = error(&format!("{tls}path = \"mqtt\"\n"));
        assert!(
            message.starts_with("pigeon.toml:6:1: [[listener]] path: `mqtt` is not an HTTP path"),
            "{message}"
        );
        let message = error(&format!(
            "{tls}allowed_origins = [\"https://a.example/\"]\n"
        ));
        assert!(
            message.starts_with("pigeon.toml:6:1: [[listener]] allowed_origins: `https://a.example/` is not an origin"),
            "{message}"
        );
    }

    #[test]
    fn http_bind_may_not_collide_with_a_listener() {
        let text = format!("{ONE_LISTENER}[http]\nbind = \"0.0.0.0:1883\"\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:4:1: [http] bind: 0.0.0.0:1883 collides with 127.0.0.1:1883 of listener 1"
        );
    }

    #[test]
    fn missing_bind_names_the_listener() {
        let text = format!("{ONE_LISTENER}\n[[listener]]\nprotocol = \"mqtt\"\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:4:1: [[listener]]: missing field `bind`"
        );
    }

    #[test]
    fn syntax_error_has_a_position() {
        let message = error("[[listener]\nbind = \"127.0.0.1:1883\"\n");
        assert!(message.starts_with("pigeon.toml:1:12: "), "{message}");
    }

    #[test]
    fn validate_failure_names_line_and_key() {
        let text = format!("{ONE_LISTENER}\n[limits]\nconnect_timeout = 5\nmax_inflight = 0\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:6:1: [limits] max_inflight: must be between 1 and 65535 (got 0)"
        );
        let text = format!("limits.max_packet_size = 8\n{ONE_LISTENER}");
        assert_eq!(
            error(&text),
            "pigeon.toml:1:8: [limits] max_packet_size: must be between 16 and 268435460 (got 8)"
        );
        let text = format!("{ONE_LISTENER}[limits]\nmax_packet_size = 268435461\n");
        assert!(error(&text).starts_with("pigeon.toml:4:1: [limits] max_packet_size: "));
        let text = format!("{ONE_LISTENER}[limits]\nconnect_timeout = 0\n");
        assert!(error(&text).starts_with("pigeon.toml:4:1: [limits] connect_timeout: "));
        let text = format!("{ONE_LISTENER}[limits]\nmax_queued_messages = 0\n");
        assert_eq!(
            error(&text),
            "pigeon.toml:4:1: [limits] max_queued_messages: must be at least 1 (got 0)"
        );
    }

    #[test]
    fn duplicate_listener_address_is_refused() {
        let text =
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n\n[[listener]]\nbind = \"127.0.0.1:1883\"\n";
        assert_eq!(
            error(text),
            "pigeon.toml:5:1: [[listener]] bind: 127.0.0.1:1883 is already used by listener 1"
        );
        let text =
            "[[listener]]\nbind = \"0.0.0.0:1883\"\n[[listener]]\nbind = \"127.0.0.1:1883\"\n";
        assert!(error(text).starts_with(
            "pigeon.toml:4:1: [[listener]] bind: 127.0.0.1:1883 collides with 0.0.0.0:1883 of listener 1"
        ));
    }

    #[test]
    fn listeners_that_can_share_are_accepted() {
        let text = r#"
[[listener]]
bind = "127.0.0.1:0"
[[listener]]
bind = "127.0.0.1:0"
[[listener]]
bind = "127.0.0.1:1883"
[[listener]]
bind = "127.0.0.1:1884"
[[listener]]
bind = "[::1]:1883"
"#;
        Config::from_toml_str(text, "pigeon.toml").expect("no two collide");
    }

    #[test]
    fn a_file_without_listeners_is_refused() {
        let message = error("[limits]\nmax_inflight = 10\n");
        assert!(
            message.starts_with("pigeon.toml: [[listener]]: at least one listener is required"),
            "{message}"
        );
        let message = error("listener = []\n");
        assert!(
            message.starts_with("pigeon.toml:1:1: [[listener]]: "),
            "{message}"
        );
    }

    #[test]
    fn validate_on_a_built_config_has_no_location() {
        let mut config = Config::default();
        config.limits.max_inflight = 0;
        let error = config.validate().expect_err("invalid");
        assert!(error.location().is_none());
        assert_eq!(
            error.to_string(),
            "[limits] max_inflight: must be between 1 and 65535 (got 0)"
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let path = Path::new("/nonexistent/pigeon.toml");
        let error = Config::load(path).expect_err("no such file");
        assert_eq!(
            error.to_string(),
            "cannot read /nonexistent/pigeon.toml: No such file or directory"
        );
        assert!(
            std::error::Error::source(&error).is_some(),
            "the cause is kept"
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("\"é\" = 1\nx", 5), (1, 5));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
