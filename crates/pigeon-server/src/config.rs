//! The broker's configuration: typed, validated at load, unknown keys refused.
//!
//! One TOML file (DESIGN.md "Contract"). With no file, `Config::default()` serves MQTT on
//! 127.0.0.1:1883. With a file, its `[[listener]]` list is the complete list of listeners.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Mqtt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default = "default_protocol")]
    pub protocol: ListenerProtocol,
}

fn default_protocol() -> ListenerProtocol {
    ListenerProtocol::Mqtt
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Memory,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub backend: StorageBackend,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `None`: allowed only when every listener is on loopback.
    pub allow_anonymous: Option<bool>,
}

/// Protocol behaviour that is a choice, not a limit.
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            retain_available: true,
            topic_alias_maximum: 64,
            max_session_expiry: u32::MAX,
            queue_qos0: false,
        }
    }
}

/// Bounds. Every one has a default a user can live with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest keep alive accepted, in seconds; 5.0 clients asking more get it as Server Keep Alive,
    /// 3.1.1 clients asking more (or 0) are refused. 0 means no limit.
    pub max_keepalive: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
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
    /// Topic levels beyond this are refused.
    pub max_topic_levels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keepalive: 0,
            connect_timeout: 10,
            max_packet_size: 1024 * 1024,
            max_connections: 1_000_000,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_topic_levels: 128,
        }
    }
}

impl Default for Config {
    /// The built-in defaults: MQTT on 127.0.0.1:1883, memory storage.
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
                protocol: ListenerProtocol::Mqtt,
            }],
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            mqtt: MqttConfig::default(),
        }
    }
}
