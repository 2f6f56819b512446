//! `Server`: loads TLS certificates and the auth backends, binds the configured listeners and the
//! HTTP listener, runs them, reloads certificates, password and ACL files on SIGHUP, and shuts
//! down in order.
//!
//! Shutdown: stop accepting, tell every connection (5.0 clients get DISCONNECT 0x8B), wait for
//! the connection tasks to flush and end (bounded), then return.

use crate::config::{self, Config, StorageBackend, SyncMode};
use crate::connection::Shared;
use crate::listener::{self, Transport};
use crate::tls::{TlsError, TlsFiles, TlsSource};
use pigeon_backends::cluster::bus::{BusSettings, RedisBus};
use pigeon_backends::cluster::sessions::RedisSessions;
use pigeon_backends::redis_store::RedisStore;
use pigeon_backends::{AclFile, FileError, PasswordFile, Webhook};
use pigeon_core::auth::{AuthChain, Authenticator, Authorizer};
use pigeon_core::hooks::{HookList, Hooks};
use pigeon_core::store::{Persistence, Store, SyncPolicy};
use pigeon_core::{Broker, BrokerSettings, QueueLimits};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the address of a bound listener: {0}")]
    LocalAddr(std::io::Error),
    /// The store cannot be opened or read: the broker does not start rather than start empty.
    #[error("{0}")]
    Store(#[from] pigeon_core::store::StoreError),
    /// The cluster bus cannot be set up (a bad URL; an unreachable Redis is retried instead).
    #[error("{0}")]
    Cluster(String),
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        /// Boxed: rustls errors are large, and this one is rare.
        #[source]
        source: Box<TlsError>,
    },
    #[error("[http] static_dir {}: {source}", path.display())]
    StaticDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A password or ACL file cannot be read or has an invalid line.
    #[error("[auth] {key}: {source}")]
    AuthFile {
        key: &'static str,
        #[source]
        source: FileError,
    },
    /// An `[auth.*]` backend (http, redis, postgres, jwt) cannot be set up.
    #[error("{key}: {reason}")]
    AuthBackend { key: String, reason: String },
    /// `[webhook]` cannot be set up (its URL and headers are checked at load already).
    #[error("[webhook]: {0}")]
    Webhook(String),
    /// A listener beyond loopback with no authentication, and `allow_anonymous` not set.
    #[error("[auth] allow_anonymous: {0}")]
    OpenToTheNetwork(String),
    /// A SIGHUP-style reload of auth backends failed; they keep what they had.
    #[error("auth reload failed: {0}")]
    AuthReload(String),
}

/// Auth backends and hooks written in Rust, added to those the configuration names
/// (`Pigeon::builder()` fills this).
#[derive(Default)]
pub struct Extensions {
    pub authenticators: Vec<Arc<dyn Authenticator>>,
    pub authorizers: Vec<Arc<dyn Authorizer>>,
    pub hooks: Vec<Arc<dyn Hooks>>,
}

/// Reloads the password and ACL files (what SIGHUP does besides certificates).
#[derive(Clone)]
pub struct AuthReloader {
    chain: Arc<AuthChain>,
}

impl AuthReloader {
    /// Reloads every backend; one that fails keeps its old data (logged). Returns the failures.
    pub fn reload(&self) -> Result<(), Error> {
        let failed = self.chain.reload();
        if failed.is_empty() {
            info!("auth backends reloaded");
            return Ok(());
        }
        for (backend, e) in &failed {
            error!(%backend, error = %e, "auth reload failed; keeping the data in use");
        }
        let text: Vec<String> = failed.iter().map(|(b, e)| format!("{b}: {e}")).collect();
        Err(Error::AuthReload(text.join("; ")))
    }
}

/// Reads the password and ACL files the configuration names, as `Server::bind` does, without
/// binding or starting anything: what `pigeon check-config` checks beyond the TOML itself.
pub fn check_files(config: &Config) -> Result<(), Error> {
    let auth = &config.auth;
    if let Some(path) = &auth.password_file {
        load_password_file(path)?;
    }
    if let Some(path) = &auth.acl_file {
        load_acl_file(path)?;
    }
    Ok(())
}

/// `[auth] password_file`, with the entries it skipped.
fn load_password_file(path: &Path) -> Result<(PasswordFile, Vec<String>), Error> {
    PasswordFile::load(path).map_err(|source| Error::AuthFile {
        key: "password_file",
        source,
    })
}

/// `[auth] acl_file`.
fn load_acl_file(path: &Path) -> Result<AclFile, Error> {
    AclFile::load(path).map_err(|source| Error::AuthFile {
        key: "acl_file",
        source,
    })
}

/// The auth chain the configuration and the Rust extensions describe, in order.
fn auth_chain(config: &Config, extensions: &Extensions) -> Result<AuthChain, Error> {
    let extra_authenticators = !extensions.authenticators.is_empty();
    if let Some(listener) = config::open_to_the_network(config, extra_authenticators) {
        return Err(Error::OpenToTheNetwork(config::open_to_the_network_reason(
            listener,
        )));
    }
    let auth = &config.auth;
    let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
    let mut authorizers: Vec<Arc<dyn Authorizer>> = Vec::new();
    for name in auth.backend_order() {
        match name {
            "password_file" => {
                let path = auth.password_file.as_ref().expect("listed only when set");
                let (file, skipped) = load_password_file(path)?;
                for warning in skipped {
                    warn!("password_file entry skipped: {warning}");
                }
                info!(path = %path.display(), users = file.user_count(), "password_file loaded");
                authenticators.push(Arc::new(file));
            }
            "acl_file" => {
                let path = auth.acl_file.as_ref().expect("listed only when set");
                let file = load_acl_file(path)?;
                info!(path = %path.display(), rules = file.rule_count(), "acl_file loaded");
                authorizers.push(Arc::new(file));
            }
            external => {
                let built = crate::external_auth::build(external, auth)?;
                authenticators.extend(built.authenticator);
                authorizers.extend(built.authorizer);
            }
        }
    }
    authenticators.extend(extensions.authenticators.iter().cloned());
    authorizers.extend(extensions.authorizers.iter().cloned());
    let allow_anonymous = auth.anonymous_allowed(&config.listeners, extra_authenticators);
    info!(
        allow_anonymous,
        authenticators = authenticators.len(),
        authorizers = authorizers.len(),
        superusers = auth.superusers.len(),
        "auth configured"
    );
    Ok(AuthChain::new(
        authenticators,
        authorizers,
        auth.superusers.clone(),
        allow_anonymous,
    ))
}

pub struct Server {
    listeners: Vec<(TcpListener, Transport)>,
    http: Option<(TcpListener, Option<PathBuf>)>,
    tls: TlsReloader,
    shared: Arc<Shared>,
    cluster: Option<Cluster>,
    webhook: Option<Webhook>,
}

/// This node's part in a cluster.
struct Cluster {
    bus: Arc<RedisBus>,
    sessions: Option<Arc<RedisSessions>>,
}

/// Reloads the certificates of every TLS listener (what SIGHUP does). Connections already open
/// keep the certificates they started with.
#[derive(Clone)]
pub struct TlsReloader {
    sources: Vec<(SocketAddr, Arc<TlsSource>)>,
}

impl TlsReloader {
    /// Reloads each listener's files; a listener whose files fail keeps its old certificates
    /// (logged). Returns the first failure after trying them all.
    pub fn reload(&self) -> Result<(), Error> {
        let mut first = None;
        for (addr, source) in &self.sources {
            match source.reload() {
                Ok(()) => {
                    info!(listener = %addr, cert = %source.files().cert.display(), "TLS certificates reloaded")
                }
                Err(e) => {
                    error!(listener = %addr, error = %e, "TLS reload failed; keeping the certificates in use");
                    first.get_or_insert(Error::Tls {
                        addr: *addr,
                        source: Box::new(e),
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Server {
    /// Loads certificates and binds every listener of `config`; nothing is served until `run`.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        Server::bind_with(config, Extensions::default()).await
    }

    /// `bind`, with auth backends and hooks written in Rust.
    pub async fn bind_with(config: Config, extensions: Extensions) -> Result<Server, Error> {
        let auth = Arc::new(auth_chain(&config, &extensions)?);
        // The configuration's webhook first, then the hooks written in Rust.
        let webhook = match &config.webhook {
            Some(w) => {
                // The cluster's node name, as the events of each node must be told apart.
                let node = config.cluster.as_ref().map_or("pigeon", |c| &c.node_id);
                Some(Webhook::start(w.settings(node)).map_err(Error::Webhook)?)
            }
            None => None,
        };
        let mut all_hooks: Vec<Arc<dyn Hooks>> = Vec::new();
        if let Some(webhook) = &webhook {
            all_hooks.push(Arc::new(webhook.clone()));
        }
        all_hooks.extend(extensions.hooks);
        let hooks = HookList::new(all_hooks);
        let mut tls_sources = Vec::new();
        for l in &config.listeners {
            if let (true, Some(cert), Some(key)) = (l.protocol.is_tls(), &l.tls_cert, &l.tls_key) {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: l.tls_client_ca.clone(),
                    client_optional: l.tls_client_optional,
                };
                let source = TlsSource::load(files).map_err(|source| Error::Tls {
                    addr: l.bind,
                    source: Box::new(source),
                })?;
                tls_sources.push(Some(Arc::new(source)));
            } else {
                tls_sources.push(None);
            }
        }
        let static_root = match config.http.as_ref().and_then(|h| h.static_dir.as_ref()) {
            Some(dir) => {
                let root = std::fs::canonicalize(dir).map_err(|source| Error::StaticDir {
                    path: dir.clone(),
                    source,
                })?;
                if !root.is_dir() {
                    return Err(Error::StaticDir {
                        path: dir.clone(),
                        source: std::io::Error::other("not a directory"),
                    });
                }
                Some(root)
            }
            None => None,
        };

        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut reloadable = Vec::new();
        for (l, tls) in config.listeners.iter().zip(tls_sources) {
            let socket = listener::bind(l.bind).map_err(|source| Error::Bind {
                addr: l.bind,
                source,
            })?;
            let addr = socket.local_addr().map_err(Error::LocalAddr)?;
            if l.protocol.is_websocket() {
                info!(%addr, protocol = %l.protocol, path = l.ws_path(), "listening");
            } else {
                info!(%addr, protocol = %l.protocol, "listening");
            }
            if let Some(tls) = &tls {
                reloadable.push((addr, Arc::clone(tls)));
            }
            let transport = Transport::new(l, tls, config.limits.max_packet_size);
            listeners.push((socket, transport));
        }
        let http = match &config.http {
            Some(http) => {
                let socket = TcpListener::bind(http.bind)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: http.bind,
                        source,
                    })?;
                let addr = socket.local_addr().map_err(Error::LocalAddr)?;
                match &static_root {
                    Some(root) => info!(%addr, static_dir = %root.display(), "HTTP listening"),
                    None => info!(%addr, "HTTP listening"),
                }
                Some((socket, static_root))
            }
            None => None,
        };
        let settings = BrokerSettings {
            queue: QueueLimits {
                max_messages: config.limits.max_queued_messages,
                max_bytes: config.limits.max_queued_bytes,
                queue_qos0: config.mqtt.queue_qos0,
            },
            retain_available: config.mqtt.retain_available,
            ..BrokerSettings::default()
        };
        let broker = match config.storage.backend {
            StorageBackend::Memory => Broker::new(settings),
            StorageBackend::Embedded => {
                let dir = config.storage.data_dir();
                let store = pigeon_backends::EmbeddedStore::open(&dir)?;
                let snapshot = store.load()?;
                info!(path = %store.path().display(), "embedded store opened");
                let policy = match config.storage.sync {
                    SyncMode::Always => SyncPolicy::Always,
                    SyncMode::Periodic => {
                        SyncPolicy::Periodic(Duration::from_millis(config.storage.sync_interval_ms))
                    }
                };
                Broker::restore(
                    settings,
                    Persistence::start(Arc::new(store), policy, config.limits.max_stored_bytes),
                    snapshot,
                )
            }
            StorageBackend::Redis => {
                let store =
                    RedisStore::open(&redis_store_url(&config), &config.storage.key_prefix)?;
                // Retained messages only: sessions load when their clients connect here.
                let snapshot = store.load()?;
                info!(redis = %store.url(), "redis store opened");
                Broker::restore(
                    settings,
                    Persistence::start(
                        Arc::new(store),
                        SyncPolicy::Always,
                        config.limits.max_stored_bytes,
                    ),
                    snapshot,
                )
            }
        };
        let cluster = match &config.cluster {
            Some(c) => Some(start_cluster(&config, c, &broker)?),
            None => None,
        };
        Ok(Server {
            listeners,
            http,
            tls: TlsReloader {
                sources: reloadable,
            },
            shared: Arc::new(Shared::new(config, broker, auth, hooks)),
            cluster,
            webhook,
        })
    }

    /// The bound addresses of the MQTT listeners, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The bound address of the HTTP listener, if `[http]` is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// A handle that reloads the TLS listeners' certificates, as SIGHUP does.
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// A handle that reloads the password and ACL files, as SIGHUP does.
    pub fn auth_reloader(&self) -> AuthReloader {
        AuthReloader {
            chain: Arc::clone(&self.shared.auth),
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub fn broker(&self) -> Arc<Broker> {
        Arc::clone(&self.shared.broker)
    }

    /// Serves until `shutdown` resolves, then closes every connection and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        for (listener, transport) in self.listeners {
            tokio::spawn(listener::accept_loop(
                listener,
                transport,
                Arc::clone(&self.shared),
                stop_rx.clone(),
                alive_tx.clone(),
            ));
        }
        let http = self.http.map(|(socket, root)| {
            tokio::spawn(crate::http::serve(
                socket,
                root,
                Arc::clone(&self.shared),
                self.webhook.as_ref().map(Webhook::stats),
                stop_rx.clone(),
            ))
        });
        let auth = AuthReloader {
            chain: Arc::clone(&self.shared.auth),
        };
        let auth_backends =
            self.shared.auth.has_authenticators() || self.shared.auth.has_authorizers();
        if !self.tls.sources.is_empty() || auth_backends {
            reload_on_sighup(self.tls.clone(), auth, stop_rx.clone());
        }
        let sweeper = {
            let broker = Arc::clone(&self.shared.broker);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => { broker.sweep_expired_retained(); }
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let sys = (self.shared.config.mqtt.sys_interval > 0).then(|| {
            tokio::spawn(crate::sys::publish_every(
                Arc::clone(&self.shared.broker),
                Duration::from_secs(self.shared.config.mqtt.sys_interval),
                stop_rx.clone(),
            ))
        });
        let keep_alive = {
            let broker = Arc::clone(&self.shared.broker);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(pigeon_core::keepalive::TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => { broker.keep_alive().tick(); }
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        drop(alive_tx);
        shutdown.await;
        info!("shutting down: closing listeners and connections");
        // Listeners and connections still in admission follow `stop`; attached ones are told
        // through their control lines.
        let _ = stop_tx.send(true);
        self.shared.broker.shut_down();
        // The accept loops and the TLS and WebSocket connection tasks hold a clone of
        // `alive_tx` (recv() returns None once all ended); every connection that reached
        // `connection::serve` is counted in `connections_current` until it ends.
        let current = &self.shared.broker.stats.connections_current;
        let closed = async {
            let _ = alive_rx.recv().await;
            while current.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .is_err()
        {
            warn!("some connections did not close within 10 s");
        }
        let _ = sweeper.await;
        let _ = keep_alive.await;
        if let Some(sys) = sys {
            let _ = sys.await;
        }
        if let Some(http) = http {
            if tokio::time::timeout(Duration::from_secs(5), http)
                .await
                .is_err()
            {
                warn!("the HTTP listener did not stop within 5 s");
            }
        }
        self.shared.broker.flush_store().await;
        if let Some(webhook) = &self.webhook {
            // The disconnections of the shutdown are among them.
            webhook.flush(Duration::from_secs(2)).await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.bus.flush(Duration::from_secs(2)).await;
            if let Some(sessions) = cluster.sessions.clone() {
                let _ = tokio::task::spawn_blocking(move || sessions.leave()).await;
            }
        }
        info!("shutdown complete");
        Ok(())
    }
}

/// The Redis server of `[storage] backend = "redis"`.
fn redis_store_url(config: &Config) -> String {
    config
        .storage
        .redis_url
        .clone()
        .or_else(|| config.cluster.as_ref().map(|c| c.redis_url.clone()))
        .unwrap_or_default()
}

/// Connects the broker to the cluster bus and, with the Redis store, to the shared sessions.
fn start_cluster(
    config: &Config,
    cluster: &config::ClusterConfig,
    broker: &Arc<Broker>,
) -> Result<Cluster, Error> {
    let shared_store = config.storage.backend == StorageBackend::Redis;
    let heartbeat = Duration::from_secs(cluster.heartbeat_interval);
    let bus = RedisBus::start(
        BusSettings {
            redis_url: cluster.redis_url.clone(),
            node_id: cluster.node_id.clone(),
            heartbeat_interval: heartbeat,
            outbox_messages: cluster.outbox_messages,
            dedupe_ids: cluster.dedupe_ids,
            dedupe_ttl: Duration::from_secs(cluster.dedupe_seconds),
            shared_store,
            key_prefix: config.storage.key_prefix.clone(),
            subscribe_all: cluster.subscribe_all,
        },
        broker,
    )
    .map_err(Error::Cluster)?;
    let sessions = if shared_store {
        let store = RedisStore::open(&redis_store_url(config), &config.storage.key_prefix)?;
        let sessions = Arc::new(RedisSessions::new(store, bus.broker_id().to_owned()));
        sessions.start(broker, heartbeat);
        broker.set_shared_sessions(Arc::clone(&sessions) as Arc<dyn pigeon_core::SharedSessions>);
        Some(sessions)
    } else {
        None
    };
    info!(node_id = %cluster.node_id, broker_id = %bus.broker_id(), shared_store, "cluster on");
    Ok(Cluster { bus, sessions })
}

/// Reloads TLS certificates and auth files at each SIGHUP until the server stops.
fn reload_on_sighup(tls: TlsReloader, auth: AuthReloader, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            warn!(error = %e, "cannot install the SIGHUP handler; certificates and auth files will not reload");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hangup.recv() => {
                    info!("SIGHUP: reloading TLS certificates and auth files");
                    // Failures are logged by `reload`; the old certificates and files stay.
                    let _ = tls.reload();
                    let _ = auth.reload();
                }
                _ = stop.changed() => return,
            }
        }
    });
}
