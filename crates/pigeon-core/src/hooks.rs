//! The events port: `Hooks`, called by the server as clients connect, publish, receive,
//! subscribe, unsubscribe and leave, and before a subscription is stored (to rewrite it).
//!
//! Hooks are synchronous and run in the task of the connection concerned, in the order the
//! events happen on that connection; they must return quickly (hand slow work to a channel).
//! The hot-path events (published, delivered) pass references: calling a hook allocates nothing.
//! `HookList` calls several in the order they were added; with none, each event is one branch.

use crate::auth::ClientInfo;
use crate::message::Message;
use pigeon_codec::{ByteStr, QoS, ReasonCode, SubscriptionOptions};
use std::sync::Arc;

/// How a connection ended, for `Hooks::client_disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnection {
    /// The client sent DISCONNECT with this reason (0x00 normal, 0x04 with will).
    Client(ReasonCode),
    /// The network connection ended without DISCONNECT.
    ConnectionLost,
    /// The broker closed it with this reason (keep alive, protocol error, takeover, shutdown).
    Server(ReasonCode),
}

/// A subscription a hook may rewrite before it is stored (aedes' `authorizeSubscribe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// The full filter, `$share/group/` prefix included.
    pub filter: ByteStr,
    pub qos: QoS,
}

/// Broker events for Rust code that embeds Pigeon. Every method has an empty default. They run
/// synchronously in the connection's task: return quickly (send to a channel for slow work).
pub trait Hooks: Send + Sync + 'static {
    /// CONNECT accepted; CONNACK is being sent.
    fn client_connected(&self, _client: &ClientInfo) {}

    /// The connection of an admitted client ended.
    fn client_disconnected(&self, _client: &ClientInfo, _how: Disconnection) {}

    /// A PUBLISH was accepted for routing (after the ACL), and is about to be routed: this
    /// comes before any `message_delivered` of it. `client` is `None` for messages published
    /// in-process.
    fn message_published(&self, _client: Option<&ClientInfo>, _message: &Message) {}

    /// A message reached a subscriber: QoS 0 once written, QoS 1 on PUBACK, QoS 2 on PUBCOMP.
    fn message_delivered(&self, _client: &ClientInfo, _message: &Message, _qos: QoS) {}

    /// A subscription was stored (after rewrite and ACL).
    fn subscribed(&self, _client: &ClientInfo, _filter: &str, _options: &SubscriptionOptions) {}

    /// A subscription was removed by UNSUBSCRIBE.
    fn unsubscribed(&self, _client: &ClientInfo, _filter: &str) {}

    /// Runs before the ACL check and before the subscription is stored; may change the filter
    /// (it must stay a valid filter, else the subscription is refused) and the QoS.
    fn rewrite_subscription(&self, _client: &ClientInfo, _subscription: &mut SubscriptionRequest) {}
}

/// The hooks of a broker, called in the order added.
#[derive(Clone, Default)]
pub struct HookList(Vec<Arc<dyn Hooks>>);

impl std::fmt::Debug for HookList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookList({})", self.0.len())
    }
}

impl HookList {
    pub fn new(hooks: Vec<Arc<dyn Hooks>>) -> HookList {
        HookList(hooks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Calls `f` on each hook, in order.
    pub fn each(&self, mut f: impl FnMut(&dyn Hooks)) {
        for hook in &self.0 {
            f(hook.as_ref());
        }
    }
}
