//! Broker semantics without sockets.
//!
//! # Layout
//! - `message`: `Message`, the shared immutable form of a PUBLISH, and `Delivery`, its trip to one
//!   session.
//! - `subscriptions`: the subscription index (a topic-level trie) with shared subscriptions.
//! - `retain`: the retained-message store (a trie searched by filter).
//! - `session`: one client's session state, its bounded queue and in-flight window.
//! - `broker`: the registry of sessions, takeover, wills, expiry, and the router.
//! - `control`: the broker's line to a connection task (close it, and wait until it has).
//! - `keepalive`: every connection's keep alive on one coarse timer wheel.
//! - `stats`: counters.
//! - `auth`: the ports for authentication and authorization, and the chain that asks them.
//! - `hooks`: the events port.
//! - `store`: the storage port, and group commit in front of it.
//! - `cluster`: the ports to the other nodes (the bus) and to a store they share.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod control;
pub mod hooks;
pub mod keepalive;
pub mod message;
pub mod retain;
pub mod session;
pub mod stats;
pub mod store;
pub mod subscriptions;

pub use auth::{
    Acl, Action, Admission, AuthChain, Authentication, Authenticator, Authorizer, Check,
    ClientInfo, ConnectRequest, Reason, Refused, Verdict,
};
pub use broker::{
    Broker, BrokerSettings, ClientDetail, ClientPage, ClientQuery, ConnectionHandle, Departure,
    PublishOutcome, SubscribeResult,
};
pub use cluster::{BusBacklog, ClusterBus, SharedSessions};
pub use control::{control_channel, Control, ControlReceiver, ControlSender};
pub use hooks::{Disconnection, HookList, Hooks, SubscriptionRequest};
pub use message::{Delivery, Message};
pub use session::{Enqueued, OutStage, Outgoing, QueueLimits, Session, SessionId, NEVER_EXPIRES};
