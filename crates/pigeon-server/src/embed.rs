//! Pigeon as a library: `Pigeon::builder()` starts a broker inside a Rust program, with auth
//! backends and hooks written in Rust next to those the configuration names, and a handle for
//! in-process publish and subscribe and a graceful stop.
//!
//! An in-process subscription is a session like a network client's (clean, expiring with its
//! handle), so routing, retained messages and queue limits treat it the same. Its client id holds
//! U+0000, which no MQTT client can send (MQTT-1.5.4-2), so no network client can take it over.
//! A task moves its deliveries from the session queue into a bounded channel; a receiver that
//! falls behind fills the channel, then the session queue, whose limits then drop messages.
//! In-process publishes are trusted: no ACL applies; hooks see them with no client.

use crate::config::Config;
use crate::connection::Shared;
use crate::server::{AuthReloader, Error, Extensions, Server, TlsReloader};
use bytes::Bytes;
use pigeon_codec::topic::{valid_topic_filter, valid_topic_name};
use pigeon_codec::{ByteStr, PublishProperties, QoS, SubscriptionOptions};
use pigeon_core::auth::{Authenticator, Authorizer};
use pigeon_core::hooks::Hooks;
use pigeon_core::{Broker, ConnectionHandle, Departure, Message, PublishOutcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::debug;

/// Messages an in-process subscription holds before its session queue takes over.
const SUBSCRIPTION_CHANNEL: usize = 1024;

/// The entry point: `Pigeon::builder()`.
#[derive(Debug)]
pub struct Pigeon;

impl Pigeon {
    /// A builder with the built-in default configuration.
    pub fn builder() -> PigeonBuilder {
        PigeonBuilder {
            config: Config::default(),
            extensions: Extensions::default(),
        }
    }
}

/// Collects the configuration, auth backends and hooks of an embedded broker.
pub struct PigeonBuilder {
    config: Config,
    extensions: Extensions,
}

impl PigeonBuilder {
    pub fn config(mut self, config: Config) -> PigeonBuilder {
        self.config = config;
        self
    }

    /// Adds an authenticator after those the configuration names.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> PigeonBuilder {
        self.extensions.authenticators.push(Arc::new(authenticator));
        self
    }

    /// Adds an authorizer after those the configuration names.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> PigeonBuilder {
        self.extensions.authorizers.push(Arc::new(authorizer));
        self
    }

    /// Adds hooks; several are called in the order added.
    pub fn hooks(mut self, hooks: impl Hooks) -> PigeonBuilder {
        self.extensions.hooks.push(Arc::new(hooks));
        self
    }

    /// Validates the configuration, loads backends and the store, binds the listeners and
    /// starts serving. Must run inside a tokio multi-threaded runtime.
    pub async fn start(self) -> Result<PigeonHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        let server = Server::bind_with(self.config, self.extensions)
            .await
            .map_err(StartError::Server)?;
        let local_addrs = server.local_addrs();
        let http_addr = server.http_addr();
        let shared = server.shared();
        let tls = server.tls_reloader();
        let auth = server.auth_reloader();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));
        let (closing, _) = watch::channel(false);
        Ok(PigeonHandle {
            local_addrs,
            http_addr,
            shared,
            tls,
            auth,
            stop: Some(stop_tx),
            task: Some(task),
            closing,
            next_subscription: AtomicU64::new(1),
        })
    }
}

/// Why an embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[source] crate::config::ConfigError),
    #[error("{0}")]
    Server(#[source] Error),
}

/// Why an in-process publish or subscribe was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InProcessError {
    #[error("`{0}` is not a valid topic name")]
    TopicName(String),
    #[error("`{0}` is not a valid topic filter")]
    TopicFilter(String),
}

impl Shared {
    /// A message from inside the process (the Rust API, the admin API): routed like a
    /// client's, with no ACL, and told to the hooks as published by no client.
    pub(crate) fn publish_in_process(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishOutcome, InProcessError> {
        if !valid_topic_name(topic) {
            return Err(InProcessError::TopicName(topic.to_owned()));
        }
        let message = Arc::new(Message::new(
            ByteStr::from(topic),
            payload,
            qos,
            retain,
            PublishProperties::default(),
            None,
        ));
        self.hooks.each(|h| h.message_published(None, &message));
        Ok(self.broker.publish(message))
    }
}

/// A running embedded broker.
pub struct PigeonHandle {
    local_addrs: Vec<SocketAddr>,
    http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    tls: TlsReloader,
    auth: AuthReloader,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
    /// Tells in-process subscriptions the broker is stopping.
    closing: watch::Sender<bool>,
    next_subscription: AtomicU64,
}

impl PigeonHandle {
    /// The bound addresses of the MQTT listeners, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The HTTP listener's address, if `[http]` is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn broker(&self) -> Arc<Broker> {
        Arc::clone(&self.shared.broker)
    }

    /// Publishes a message from inside the process: routed like a client's, retained if asked.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishOutcome, InProcessError> {
        self.shared
            .publish_in_process(topic, payload.into(), qos, retain)
    }

    /// Subscribes from inside the process; retained messages matching `filter` come first.
    /// Dropping the `Subscription` ends it.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, InProcessError> {
        if !valid_topic_filter(filter) {
            return Err(InProcessError::TopicFilter(filter.to_owned()));
        }
        let broker = Arc::clone(&self.shared.broker);
        let n = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let client_id = ByteStr::from(format!("\u{0}pigeon-in-process-{n}"));
        let (control_tx, mut control_rx) = pigeon_core::control_channel();
        let handle = ConnectionHandle {
            control: control_tx,
        };
        let (session, _) = broker.attach(client_id, true, 0, None, handle).await;
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        broker.subscribe(&session, &ByteStr::from(filter), options, None);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CHANNEL);
        let mut closing = self.closing.subscribe();
        let pump = tokio::spawn(async move {
            'run: loop {
                loop {
                    let next = session.lock().pop_queued();
                    let Some(delivery) = next else { break };
                    if tx.send(delivery.message).await.is_err() {
                        break 'run;
                    }
                }
                tokio::select! {
                    _ = session.notified() => {}
                    _ = control_rx.recv() => break,
                    _ = tx.closed() => break,
                    _ = closing.changed() => break,
                }
            }
            broker.detach(&session, &control_rx, Departure::Normal, None);
            debug!(client_id = %session.client_id(), "in-process subscription ended");
        });
        drop(pump);
        Ok(Subscription { rx })
    }

    /// Reloads TLS certificates, password and ACL files, as SIGHUP does.
    pub fn reload(&self) -> Result<(), Error> {
        let tls = self.tls.reload();
        self.auth.reload()?;
        tls
    }

    /// Stops accepting, closes every connection (5.0 clients get DISCONNECT 0x8B), flushes
    /// the store and returns when the broker has stopped.
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.closing.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for PigeonHandle {
    /// A handle dropped without `stop` still stops the broker, without waiting for it.
    fn drop(&mut self) {
        let _ = self.closing.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Messages of an in-process subscription.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Message>>,
}

impl Subscription {
    /// The next message; `None` once the broker stopped.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        self.rx.recv().await
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Message>> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Closing the receiver ends the task that feeds it, which ends the session.
        self.rx.close();
    }
}
