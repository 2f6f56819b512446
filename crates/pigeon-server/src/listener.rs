//! Accept loops for the four listener protocols: mqtt, mqtts, ws and wss. Accepting never waits
//! on a client: each socket is handed to its own task straight away, and that task runs the TLS
//! and WebSocket handshakes under `limits.handshake_timeout` before the MQTT connection. A slow,
//! silent or broken handshake costs only its own task.

use crate::config::{ListenerConfig, ListenerProtocol};
use crate::connection::{self, Accepted, Shared};
use crate::tls::{self, TlsSource, Username};
use crate::ws::{self, WsSettings};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument, Span};

/// What runs on an accepted socket before MQTT.
#[derive(Clone)]
pub(crate) enum Transport {
    Tcp,
    Tls {
        tls: Arc<TlsSource>,
        identity_as_username: bool,
    },
    Ws(Arc<WsSettings>),
    Wss {
        tls: Arc<TlsSource>,
        identity_as_username: bool,
        ws: Arc<WsSettings>,
    },
}

impl Transport {
    /// Builds the transport of a configured listener; TLS files are read here.
    pub(crate) fn new(
        config: &ListenerConfig,
        tls: Option<Arc<TlsSource>>,
        max_packet_size: u32,
    ) -> Transport {
        let ws = || {
            Arc::new(WsSettings {
                path: config.ws_path().to_owned(),
                allowed_origins: config.allowed_origins.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                // One message may hold a whole packet of the largest size plus smaller ones.
                max_message: max_packet_size as usize + 64 * 1024,
            })
        };
        let identity_as_username = config.use_identity_as_username;
        match (config.protocol, tls) {
            (ListenerProtocol::Mqtts, Some(tls)) => Transport::Tls {
                tls,
                identity_as_username,
            },
            (ListenerProtocol::Wss, Some(tls)) => Transport::Wss {
                tls,
                identity_as_username,
                ws: ws(),
            },
            (ListenerProtocol::Ws, _) => Transport::Ws(ws()),
            (ListenerProtocol::Mqtt, _) => Transport::Tcp,
            (protocol, None) => unreachable!("{protocol} listener built without TLS"),
        }
    }
}

/// Connections the kernel completes for a listener before `accept` takes them; beyond it, it drops
/// SYNs and the clients try again a second or more later. Asked high because devices reconnect
/// all at once after a network blip or a restart: the kernel caps it at `net.core.somaxconn`
/// (4096 by default since Linux 5.4). mio's `TcpListener::bind` asks 1024, mosquitto 100.
const BACKLOG: u32 = 65_535;

/// Binds an MQTT listener as `TcpListener::bind` does (address reuse), with a backlog of
/// `BACKLOG` and TCP_NODELAY set on the listening socket: Linux copies it to each socket it
/// accepts, which spares a system call per connection (`accept_loop` checks the first and sets
/// it on each when the system does not copy it).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    // Not fatal: the accepted sockets are then set one by one.
    let _ = socket.set_nodelay(true);
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    // One copy for every connection of the listener (`ClientInfo::listener`).
    let local = listener.local_addr().ok().map(Arc::new);
    // Whether accepted sockets come with TCP_NODELAY from the listener (see `bind`): told by the
    // first one.
    let mut inherits_nodelay = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly rather than spin.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !*inherits_nodelay.get_or_insert_with(|| socket.nodelay().unwrap_or(false)) {
            if let Err(e) = socket.set_nodelay(true) {
                warn!(%peer, error = %e, "could not set TCP_NODELAY");
            }
        }
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let transport = transport.clone();
        let span = match &local {
            Some(local) => {
                info_span!("conn", %peer, %local, forwarded_for = tracing::field::Empty, client_id = tracing::field::Empty)
            }
            None => {
                info_span!("conn", %peer, forwarded_for = tracing::field::Empty, client_id = tracing::field::Empty)
            }
        };
        // Plain TCP is the connection's future itself; the other transports are boxed, because
        // a task's future is as large as its largest state and a TCP connection should not carry
        // room for TLS and WebSocket handshakes and streams, nor for a wrapper's arguments.
        match transport {
            Transport::Tcp => {
                let accepted = Box::new(Accepted {
                    stream: socket,
                    peer,
                    listener: local.clone(),
                    username: Username::FromConnect,
                    shared,
                    shutdown,
                    span,
                });
                // Counted in `connections_current` from its first poll, which shutdown waits
                // on; it holds no clone of `alive`.
                tokio::spawn(connection::serve(accepted));
            }
            other => {
                let alive = alive.clone();
                let local = local.clone();
                tokio::spawn(async move {
                    Box::pin(serve_any(
                        socket, peer, local, other, shared, shutdown, span,
                    ))
                    .await;
                    drop(alive);
                });
            }
        }
    }
}

/// Runs a connection on `stream`.
async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    listener: Option<Arc<SocketAddr>>,
    username: Username,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    span: Span,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Box::new(Accepted {
        stream,
        peer,
        listener,
        username,
        shared,
        shutdown,
        span,
    });
    connection::serve(accepted).await;
}

/// Handshakes, then hands the stream to the connection. The handshakes run in the connection's
/// span, which the connection then keeps for its admission (see `connection::serve`).
async fn serve_any(
    socket: TcpStream,
    peer: SocketAddr,
    local: Option<Arc<SocketAddr>>,
    transport: Transport,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    span: Span,
) {
    let deadline = Instant::now() + Duration::from_secs(shared.config.limits.handshake_timeout);
    match transport {
        Transport::Tcp => {
            serve_stream(
                socket,
                peer,
                local,
                Username::FromConnect,
                shared,
                shutdown,
                span,
            )
            .await;
        }
        Transport::Tls {
            tls,
            identity_as_username,
        } => {
            let Some((stream, username)) =
                tls_step(&tls, socket, identity_as_username, deadline, &mut shutdown)
                    .instrument(span.clone())
                    .await
            else {
                return;
            };
            serve_stream(stream, peer, local, username, shared, shutdown, span).await;
        }
        Transport::Ws(settings) => {
            let upgrade = ws::accept(socket, peer, &settings);
            let Some(upgraded) = handshake_step("WebSocket", deadline, &mut shutdown, upgrade)
                .instrument(span.clone())
                .await
            else {
                return;
            };
            let peer = forwarded(peer, &upgraded, &span);
            serve_stream(
                upgraded.stream,
                peer,
                local,
                Username::FromConnect,
                shared,
                shutdown,
                span,
            )
            .await;
        }
        Transport::Wss {
            tls,
            identity_as_username,
            ws,
        } => {
            let Some((stream, username)) =
                tls_step(&tls, socket, identity_as_username, deadline, &mut shutdown)
                    .instrument(span.clone())
                    .await
            else {
                return;
            };
            let upgrade = ws::accept(stream, peer, &ws);
            let Some(upgraded) = handshake_step("WebSocket", deadline, &mut shutdown, upgrade)
                .instrument(span.clone())
                .await
            else {
                return;
            };
            let peer = forwarded(peer, &upgraded, &span);
            serve_stream(
                upgraded.stream,
                peer,
                local,
                username,
                shared,
                shutdown,
                span,
            )
            .await;
        }
    }
}

/// The TLS handshake of an `mqtts` or `wss` connection, and the username its certificate gives
/// when the listener uses the identity as username.
async fn tls_step(
    tls: &TlsSource,
    socket: TcpStream,
    identity_as_username: bool,
    deadline: Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Username)> {
    let stream = handshake_step("TLS", deadline, shutdown, tls::accept(tls, socket)).await?;
    let username = if identity_as_username {
        tls::username_from_certificate(&stream)
    } else {
        Username::FromConnect
    };
    Some((stream, username))
}

/// Runs one handshake until `deadline`; `None` (logged) when it fails, times out, or the server
/// shuts down first.
async fn handshake_step<T, E: std::fmt::Display>(
    what: &'static str,
    deadline: Instant,
    shutdown: &mut watch::Receiver<bool>,
    handshake: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, handshake) => match r {
            Ok(Ok(done)) => Some(done),
            Ok(Err(e)) => {
                info!(error = %e, "{what} handshake failed");
                None
            }
            Err(_) => {
                debug!("{what} handshake not done within handshake_timeout; closing");
                None
            }
        },
        _ = shutdown.changed() => None,
    }
}

/// The client's address after a WebSocket upgrade, recorded in the span when a proxy gave it.
fn forwarded<S>(peer: SocketAddr, upgraded: &ws::Upgraded<S>, span: &Span) -> SocketAddr {
    if upgraded.peer != peer {
        span.record("forwarded_for", tracing::field::display(upgraded.peer.ip()));
    }
    span.in_scope(|| debug!(subprotocol = upgraded.subprotocol, "WebSocket upgraded"));
    upgraded.peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_accepted_from_a_bound_listener_have_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // What `accept_loop` relies on to skip the per-socket call on Linux.
        #[cfg(target_os = "linux")]
        assert!(accepted.nodelay().unwrap());
        let _ = accepted;
    }
}
