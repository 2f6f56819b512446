//! `Server`: binds the configured listeners, runs them, and shuts down in order.
//!
//! Shutdown: stop accepting, tell every connection (5.0 clients get DISCONNECT 0x8B), wait for
//! the connection tasks to flush and end (bounded), then return.

use crate::config::Config;
use crate::connection::Shared;
use crate::listener;
use pigeon_core::{Broker, BrokerSettings, QueueLimits};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the address of a bound listener: {0}")]
    LocalAddr(std::io::Error),
}

pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds every listener of `config`; nothing is served until `run`.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| Error::Bind {
                    addr: l.bind,
                    source,
                })?;
            let addr = socket.local_addr().map_err(Error::LocalAddr)?;
            info!(%addr, protocol = ?l.protocol, "listening");
            listeners.push(socket);
        }
        let settings = BrokerSettings {
            queue: QueueLimits {
                max_messages: config.limits.max_queued_messages,
                max_bytes: config.limits.max_queued_bytes,
                queue_qos0: config.mqtt.queue_qos0,
            },
            retain_available: config.mqtt.retain_available,
            ..BrokerSettings::default()
        };
        let broker = Broker::new(settings);
        Ok(Server {
            listeners,
            shared: Arc::new(Shared::new(config, broker)),
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
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
        for listener in self.listeners {
            tokio::spawn(listener::accept_loop(
                listener,
                Arc::clone(&self.shared),
                stop_rx.clone(),
                alive_tx.clone(),
            ));
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
        drop(alive_tx);
        shutdown.await;
        info!("shutting down: closing listeners and connections");
        let _ = stop_tx.send(true);
        // Every connection task holds a clone of `alive_tx`; recv() returns None once all ended.
        if tokio::time::timeout(Duration::from_secs(10), alive_rx.recv())
            .await
            .is_err()
        {
            warn!("some connections did not close within 10 s");
        }
        let _ = sweeper.await;
        info!("shutdown complete");
        Ok(())
    }
}
