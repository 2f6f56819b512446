//! One client connection: CONNECT, then the packet loop, then the will and the session's fate.
//!
//! The task owns the socket, the read and write buffers (made while in use) and the state that
//! lives only as long as the connection (topic aliases, the client's limits, what CONNECT
//! settled); keep alive is the broker's wheel, told through the control line. Session
//! state that outlives it (queue, in flight, QoS 2 ids) sits in `pigeon_core::Session`. The loop
//! waits in one poll function over everything it waits for, and its read and write state lives
//! in the struct, so a wait that ends for another reason loses nothing. Replies
//! and deliveries are encoded into one write buffer and flushed together: many packets, one
//! syscall.

use crate::config::Config;
use crate::login_limit::LoginLimiter;
use crate::tls::Username;
use bytes::{Buf, BytesMut};
use pigeon_codec::{
    encode, encode_publish_head, publish_head_len, topic, ByteStr, ConnAck, ConnAckProperties,
    Connect, DecodeError, Decoder, Disconnect, DisconnectProperties, Packet, Protocol, PubResp,
    Publish, PublishHead, PublishProperties, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use pigeon_core::auth::{Action, Admission, AuthChain, Check, ClientInfo, ConnectRequest, Verdict};
use pigeon_core::hooks::{Disconnection, HookList, SubscriptionRequest};
use pigeon_core::keepalive;
use pigeon_core::session::Backpressure;
use pigeon_core::store::{QueueEntry, StoreOp};
use pigeon_core::{
    control_channel, Broker, BusBacklog, ConnectionHandle, Control, ControlReceiver, Departure,
    Message, OutStage, Outgoing, Session, NEVER_EXPIRES,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn, Instrument, Span};

/// Stop taking deliveries from the session queue while this much is waiting to be written: a
/// slow reader then backs up into its bounded session queue, not into our memory.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Bytes the read buffer keeps free before each read.
/// Bounds of the room each read asks for: it grows while reads fill it (a busy publisher reads
/// many packets per syscall) and shrinks back when traffic is light, so an idle connection, which
/// holds its read buffer while it waits, costs little.
const READ_MIN: usize = 1024;
const READ_MAX: usize = 64 * 1024;
/// How long a closing connection may spend flushing its last packets.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long, and how much, a connection closed over the client's error reads on (`linger_after`).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// How long a publisher stops reading for one subscriber's queue to drain (see
/// `Client::paused`). A subscriber that has not drained by then is taken to be stuck: publishers
/// stop waiting for it until it drains, and what overflows its queue is dropped and counted.
const PUBLISHER_WAIT: Duration = Duration::from_secs(5);

/// What every connection task shares: the broker, the configuration, the auth chain, the
/// hooks and the failed-login counts.
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: Config,
    pub(crate) auth: Arc<AuthChain>,
    pub(crate) hooks: HookList,
    pub(crate) logins: LoginLimiter,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        broker: Arc<Broker>,
        auth: Arc<AuthChain>,
        hooks: HookList,
    ) -> Shared {
        let a = &config.auth;
        let logins = LoginLimiter::new(
            a.max_login_failures,
            Duration::from_secs(a.login_failure_window),
            Duration::from_secs(a.login_ban_time),
            crate::login_limit::DEFAULT_CAPACITY,
        );
        Shared {
            broker,
            config,
            auth,
            hooks,
            logins,
        }
    }
}

/// Why the packet loop ended.
struct Close {
    /// Sent in a 5.0 DISCONNECT when set.
    reason: Option<ReasonCode>,
    departure: Departure,
}

impl Close {
    fn error(reason: ReasonCode) -> Close {
        Close {
            reason: Some(reason),
            departure: Departure::WithWill,
        }
    }
}

/// An accepted stream and where it comes from, boxed for `serve`.
pub(crate) struct Accepted<S> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: Option<Arc<SocketAddr>>,
    pub(crate) username: Username,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The connection's span (peer, listener, client id), for its admission only.
    pub(crate) span: Span,
}

/// Runs one connection to its end, counted in `connections_current` meanwhile (shutdown waits
/// for it to reach 0: a guard held to the end would be 16 bytes more in every task). What is
/// logged names the peer and the client id: through the connection's span while it is
/// admitted, in fields after.
///
/// A task's future is as large as its largest state for as long as the task lives, so what an
/// idle connection does not need is kept out of it: the arguments come boxed (an async fn keeps
/// room for its arguments to the end), and the short-lived, large states are boxed: CONNECT,
/// authentication and attaching the session (`admit`), the handling of what a read brought
/// (`Client::handle_input`) and the closing (`Client::finish`). What stays is the client's state
/// and the packet loop's few waits (see `Client::poll_event`).
pub(crate) async fn serve<S>(accepted: Box<Accepted<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        stream,
        peer,
        listener,
        username,
        shared,
        shutdown,
        span,
    } = unbox(accepted);
    let current = {
        let stats = &shared.broker.stats;
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        stats.connections_current.fetch_add(1, Ordering::Relaxed) + 1
    };
    // The span names the client in what admission logs (here and in the broker and auth
    // backends it calls), and ends with it: a span lives in the subscriber for as long as it is
    // open, about 500 bytes at the default level, as much as the rest of an idle connection's
    // task. The packet loop's own log lines name the client and peer in fields instead.
    // `let else`, not `if let`: the scrutinee of an `if let` lives to the end of its block, so
    // the task would keep room for the client twice (the `Option` and the binding).
    let admission =
        admit(stream, peer, listener, username, &shared, shutdown, current).instrument(span);
    let Some(mut client) = Box::pin(admission).await else {
        let stats = &shared.broker.stats;
        stats.connections_current.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    let close = client.run().await;
    // `finish` drops the control receiver last, after `detach`: a connection taking over this
    // session waits for exactly that.
    Box::pin(client.finish(close)).await;
    let stats = &shared.broker.stats;
    stats.connections_current.fetch_sub(1, Ordering::Relaxed);
}

/// Moves a value out of its box and frees the box now (moving out of `*b` in place would
/// keep the allocation until `b` goes out of scope: here, the end of the connection).
#[allow(clippy::boxed_local)] // Taking the box is the point: it is freed on return.
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Reads CONNECT and runs it through the checks, authentication and the broker's `attach`.
/// The client whose CONNECT was accepted, with CONNACK in its write buffer; `None` when the
/// connection is to close (refusals are answered here).
async fn admit<S>(
    socket: S,
    peer: SocketAddr,
    listener: Option<Arc<SocketAddr>>,
    username: Username,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
    current: u64,
) -> Option<Client<'_, S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.config.limits;
    // One stream, not split in halves: reading and writing are polled from one place (the
    // packet loop's `Client::poll_event`), so the shared state a split needs is not.
    let mut io = Io::new(socket);
    let mut decoder = Decoder::new(limits.max_packet_size);
    let timeout = Duration::from_secs(limits.connect_timeout);
    let connect = tokio::select! {
        r = tokio::time::timeout(timeout, io.read_packet(&mut decoder)) => r,
        _ = shutdown.changed() => return None,
    };
    let connect = match connect {
        Err(_) => {
            debug!("no CONNECT within {} s; closing", timeout.as_secs());
            None
        }
        Ok(Ok(Some(Packet::Connect(c)))) => Some(c),
        Ok(Ok(Some(other))) => {
            warn!(
                packet = other.name(),
                "first packet was not CONNECT [MQTT-3.1.0-1]; closing"
            );
            None
        }
        Ok(Ok(None)) => None,
        Ok(Err(ReadError::Io(e))) => {
            debug!(error = %e, "connection lost before CONNECT");
            None
        }
        Ok(Err(ReadError::Decode(e))) => {
            refuse_bad_connect(&mut io, &decoder, &e).await;
            None
        }
    };
    if let Some(connect) = connect {
        let over_limit = current > limits.max_connections as u64;
        let from = Origin {
            peer,
            listener,
            username,
        };
        return run_client(io, *connect, from, shared, over_limit).await;
    }
    None
}

/// A CONNECT that failed to decode: answer what the specification asks, then close.
async fn refuse_bad_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    decoder: &Decoder,
    e: &DecodeError,
) {
    warn!(error = %e, "refusing CONNECT");
    match e {
        // MQTT-3.1.2-2: an unsupported level gets return code 1 (0x84 in 5.0, but a client that
        // sent an unknown level cannot be assumed to read 5.0) and the connection closes.
        DecodeError::UnsupportedProtocolVersion(_) => {
            let ack = ConnAck {
                code: ReasonCode::V3_UNACCEPTABLE_PROTOCOL_VERSION,
                ..Default::default()
            };
            encode(&Packet::ConnAck(ack), Protocol::V3_1_1, io.wbuf());
            io.close_refused(e.reason_code()).await;
        }
        // A 5.0 CONNECT that is malformed gets a CONNACK with the reason (MQTT-4.13.1-1 allows it).
        // `protocol()` is set only by a CONNECT that decoded, so ask what the refused one named.
        _ if decoder.connect_protocol() == Some(Protocol::V5) => {
            let ack = ConnAck {
                code: e.reason_code(),
                ..Default::default()
            };
            encode(&Packet::ConnAck(ack), Protocol::V5, io.wbuf());
            io.close_refused(e.reason_code()).await;
        }
        _ => {}
    }
}

enum ReadError {
    Io(std::io::Error),
    Decode(DecodeError),
}

/// Where a connection comes from: its address, its listener and what the TLS layer says of it.
struct Origin {
    peer: SocketAddr,
    listener: Option<Arc<SocketAddr>>,
    username: Username,
}

/// The socket and its buffers.
struct Io<S> {
    stream: S,
    /// Made when something is read or written, and given back when the packet loop waits with
    /// both buffers empty (see `Io::give_back_idle`): most connections are idle most of the
    /// time, and the 70 bytes of an empty pair would otherwise stay in every task.
    bufs: Option<Box<Bufs>>,
}

#[derive(Default)]
struct Bufs {
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written since the last flush. TLS and WebSocket streams hold written bytes
    /// until flushed (a WebSocket sends one message per flush); TCP's flush does nothing.
    unflushed: bool,
    /// Room the next read of a partial packet asks for (between READ_MIN and READ_MAX).
    read_hint: u32,
    /// More than acknowledgements were written at once (see `KEPT_WRITE_ROOM`): the buffers
    /// stay while the connection lives.
    kept: bool,
}

impl Bufs {
    fn boxed() -> Box<Bufs> {
        Box::new(Bufs {
            read_hint: READ_MIN as u32,
            ..Bufs::default()
        })
    }
}

/// An idle connection's buffers are given back while it has written no more than this at once:
/// the acknowledgements of a turn (CONNACK, SUBACK, PINGRESP). A connection that has written
/// more (deliveries, a publisher's acknowledgements) keeps its buffers, as it would otherwise
/// make them and grow its write buffer again on every turn (3 % of fan-out's profile in malloc
/// and realloc when fan-out subscribers gave theirs back).
const KEPT_WRITE_ROOM: usize = 64;

impl<S> Io<S> {
    fn new(stream: S) -> Io<S> {
        Io { stream, bufs: None }
    }

    fn bufs(&mut self) -> &mut Bufs {
        self.bufs.get_or_insert_with(Bufs::boxed)
    }

    /// The write buffer, made if there is none.
    fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.bufs().wbuf
    }

    /// Bytes waiting to be written.
    fn unwritten(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.wbuf.len())
    }

    /// Gives the buffers back when nothing waits in them (see `bufs`).
    fn give_back_idle(&mut self) {
        if let Some(b) = &self.bufs {
            // Not the write buffer's capacity: once written out, `BytesMut` counts only the
            // room after what was written.
            if !b.kept && b.rbuf.is_empty() && b.wbuf.is_empty() && !b.unflushed {
                self.bufs = None;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    /// Reads until one packet is whole; `Ok(None)` at end of stream.
    async fn read_packet(&mut self, decoder: &mut Decoder) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(b) = self.bufs.as_deref_mut() {
                if let Some(p) = decoder.decode(&mut b.rbuf).map_err(ReadError::Decode)? {
                    return Ok(Some(p));
                }
            }
            match std::future::poll_fn(|cx| self.poll_read(cx)).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// One read into the read buffer, which is untouched unless it is ready.
    ///
    /// With no partial packet buffered, the read goes into the thread's scratch buffer and the
    /// read buffer gets an allocation of exactly what came: an idle connection holds no read
    /// buffer, and the packets' views (a client id, a topic filter kept by the subscription
    /// index) keep only what they came in alive. A partial packet is completed in the read
    /// buffer itself, with room that grows while reads fill it (a busy publisher) and shrinks
    /// when they do not.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        match self.bufs.as_deref_mut() {
            Some(b) if !b.rbuf.is_empty() => {
                poll_read_partial(&mut self.stream, cx, &mut b.rbuf, &mut b.read_hint)
            }
            _ => {
                let bufs = &mut self.bufs;
                poll_read_scratch(&mut self.stream, cx, |filled| {
                    let rbuf = &mut bufs.get_or_insert_with(Bufs::boxed).rbuf;
                    if rbuf.capacity() != 0 {
                        // Give back what the last read left (payload views still using it
                        // keep it alive until they are done).
                        *rbuf = BytesMut::new();
                    }
                    rbuf.extend_from_slice(filled);
                })
            }
        }
    }

    /// Writes what is buffered, bounded in time; a peer that does not read loses the rest.
    async fn flush_best_effort(&mut self) {
        let flush = async {
            while let Some(b) = self.bufs.as_deref_mut().filter(|b| !b.wbuf.is_empty()) {
                match self.stream.write(&b.wbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => b.wbuf.advance(n),
                }
            }
            let _ = self.stream.flush().await;
            let _ = self.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
    }

    /// Flushes a refusing CONNACK and closes, reading on for a while first when the client may
    /// still be sending (see `linger_after`).
    async fn close_refused(&mut self, code: ReasonCode) {
        self.flush_best_effort().await;
        self.linger_after(code).await;
    }

    /// After `flush_best_effort` has sent the reason and a FIN: when the server closes over the
    /// client's error (`client_may_be_sending`), reads and drops what the client still sends
    /// until it closes its side, for at most `LINGER` and `LINGER_BYTES`. Closing with input
    /// unread makes the kernel answer with a reset, and a client still writing (PUBREL after
    /// PUBREL, when it sent one QoS 2 PUBLISH past our Receive Maximum) then fails on a write
    /// before it reads why it was disconnected.
    async fn linger_after(&mut self, reason: ReasonCode) {
        if !client_may_be_sending(reason) {
            return;
        }
        // Boxed: the connection's future, which lives as long as the connection, keeps no room
        // for this.
        Box::pin(async {
            let mut sink = vec![0u8; 4096];
            let mut left = LINGER_BYTES;
            let drain = async {
                while left > 0 {
                    match self.stream.read(&mut sink).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        })
        .await;
    }
}

/// Whether the client may still be sending when the server closes with `reason`: it broke a
/// rule in the middle of what it sends. Not when the server closes on its own account (shutting
/// down, a takeover, an administrator, keep alive, the connection limit, a ban).
fn client_may_be_sending(reason: ReasonCode) -> bool {
    reason.is_error()
        && !matches!(
            reason,
            ReasonCode::SERVER_SHUTTING_DOWN
                | ReasonCode::SESSION_TAKEN_OVER
                | ReasonCode::ADMINISTRATIVE_ACTION
                | ReasonCode::KEEP_ALIVE_TIMEOUT
                | ReasonCode::MAXIMUM_CONNECT_TIME
                | ReasonCode::USE_ANOTHER_SERVER
                | ReasonCode::SERVER_MOVED
                | ReasonCode::SERVER_BUSY
                | ReasonCode::QUOTA_EXCEEDED
                | ReasonCode::BANNED
        )
}

/// The connected client's per-connection state. It lives in the connection's task, which an
/// idle connection keeps as long as it lives: what is not used on every turn is boxed (`terms`,
/// `rare`, the buffers in `io`).
struct Client<'a, S> {
    io: Io<S>,
    shared: &'a Shared,
    protocol: Protocol,
    session: Arc<Session>,
    /// The broker's line to this connection (takeover, shutdown, keep alive). Dropped last,
    /// after `detach` (see `finish`).
    control: ControlReceiver,
    /// What CONNECT settled.
    terms: Box<Terms>,
    /// Our outgoing in-flight window: min(client's Receive Maximum, max_inflight).
    send_window: u16,
    /// The client's Maximum Packet Size and Topic Alias Maximum (5.0), read for every
    /// delivery: here rather than in `terms`, where they would take it past a malloc size
    /// class (192 bytes).
    client_max_packet: u32,
    client_alias_max: u16,
    /// Deliveries are checked against the ACL for read access (not for superusers, nor
    /// without authorizers).
    checks_reads: bool,
    /// The reason of the client's DISCONNECT, for the disconnected hook.
    client_disconnect: Option<ReasonCode>,
    /// What most connections never need, made on first use (see `Rare`).
    rare: Option<Box<Rare>>,
}

/// What a connection's CONNECT settled, read now and then (hooks, log lines, limits): one
/// allocation beside the task.
struct Terms {
    /// Who the client is (its id among it), for the authorizers, hooks and log lines.
    info: ClientInfo,
    /// Will message, and its delay in seconds.
    will: Option<Arc<Message>>,
    will_delay: u32,
    /// The Session Expiry Interval the client asked for in CONNECT, before `max_session_expiry`
    /// lowers it: a DISCONNECT may set one only when this is not 0.
    requested_expiry: u32,
}

// One heap block per connection: 144 bytes fill a 160-byte malloc chunk.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Terms>() <= 144);

/// The parts of a connection's state that an idle connection (most of them) does not use:
/// boxed, so that they cost it one pointer instead of some 200 bytes in its task.
#[derive(Default)]
struct Rare {
    out_aliases: HashMap<ByteStr, u16>,
    in_aliases: Vec<Option<ByteStr>>,
    /// The store's progress, followed while acknowledgements are held.
    committed: Option<watch::Receiver<u64>>,
    /// Acknowledgements waiting for the store to hold what they acknowledge, in the order they
    /// must go out (MQTT-4.6.0-2): (store op number, packet).
    held_acks: VecDeque<(u64, Packet)>,
    /// Packet ids of in-flight PUBLISHes of a resumed session not yet sent again on this
    /// connection, in order: the client's Receive Maximum was reached first (`resend_held`).
    held_resends: VecDeque<u16>,
    /// QoS 0 messages written in one drain, for the delivered hook, which runs after the
    /// session lock is released. Reused between drains.
    delivered: Vec<Arc<Message>>,
    /// Set while this connection does not read its socket because a message it published found
    /// a subscriber's queue above high water: until that queue drains or the deadline passes.
    /// TCP then slows the client down, so a message is not read (nor, at QoS 1, acknowledged)
    /// only to be dropped at the full queue. Writing, the connection's own deliveries, control
    /// messages and shutdown go on meanwhile. QoS 0 publishers wait too: reading them at full
    /// speed only to drop most of what they send starves the subscriber's connection of CPU,
    /// and the bound keeps one stuck subscriber from holding them up for longer than once.
    paused: Option<(Hold, Instant)>,
    /// The packet loop's waits for the two above.
    waits: Waits,
}

/// What a paused connection waits for.
#[derive(Clone)]
enum Hold {
    /// A subscriber's queue to drain.
    Queue(Backpressure),
    /// The cluster bus to catch up with Redis.
    Bus(BusBacklog),
}

async fn run_client<S>(
    mut io: Io<S>,
    connect: Connect,
    from: Origin,
    shared: &Shared,
    over_limit: bool,
) -> Option<Client<'_, S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let protocol = connect.protocol;
    let Origin {
        peer,
        listener,
        username,
    } = from;
    let config = &shared.config;
    let broker = &shared.broker;
    // Encodes the refusing CONNACK, and gives back `code` for `close_refused`.
    let refuse = |io: &mut Io<S>, code: ReasonCode| {
        encode(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: if protocol.is_v5() {
                    code
                } else {
                    code.to_v3_connack()
                },
                properties: Default::default(),
            }),
            protocol,
            io.wbuf(),
        );
        code
    };

    if over_limit {
        warn!(
            limit = config.limits.max_connections,
            "refusing connection: max_connections reached"
        );
        let code = refuse(&mut io, ReasonCode::QUOTA_EXCEEDED);
        io.close_refused(code).await;
        return None;
    }
    if let Some(left) = shared.logins.banned(peer.ip()) {
        warn!(client_id = %connect.client_id, ip = %peer.ip(), ban_left_secs = left.as_secs(), "refusing CONNECT: too many failed logins from this address");
        let code = refuse(&mut io, ReasonCode::BANNED);
        io.close_refused(code).await;
        return None;
    }
    if connect.properties.authentication_method.is_some() {
        warn!(client_id = %connect.client_id, "refusing CONNECT: enhanced authentication is not supported");
        let code = refuse(&mut io, ReasonCode::BAD_AUTHENTICATION_METHOD);
        io.close_refused(code).await;
        return None;
    }

    // With `use_identity_as_username` the certificate names the client, for auth and ACLs.
    let mut certificate_identity = None;
    let username = match username {
        // Compact copies, here and of the client id below: they live as long as the connection,
        // and views would keep the whole CONNECT packet with them.
        Username::FromConnect => connect.username.as_ref().map(ByteStr::compact),
        Username::FromCertificate(name) => {
            certificate_identity = Some(Arc::<str>::from(name.as_str()));
            Some(name)
        }
        Username::CertificateMissing => {
            warn!("refusing CONNECT: use_identity_as_username is set and the client presented no certificate with a Common Name");
            let code = refuse(&mut io, ReasonCode::NOT_AUTHORIZED);
            io.close_refused(code).await;
            return None;
        }
    };

    // Client identifier (MQTT-3.1.3-6..8; 5.0 3.1.3.1).
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if protocol == Protocol::V3_1 || (!connect.clean_start && protocol == Protocol::V3_1_1) {
            warn!("refusing CONNECT: empty client id without clean session [MQTT-3.1.3-8]");
            let code = refuse(&mut io, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            io.close_refused(code).await;
            return None;
        }
        let id = ByteStr::from(assign_client_id(broker.next_connection_id())).compact();
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.compact()
    };
    Span::current().record("client_id", client_id.as_str());

    // Keep alive: 5.0 clients are told the server's value; 3.x clients asking more than the
    // maximum are refused, as mosquitto does (they have no way to learn another value).
    let max_ka = config.limits.max_keepalive;
    let mut server_keep_alive = None;
    let mut keep_alive = connect.keep_alive;
    if max_ka > 0 && (keep_alive == 0 || keep_alive > max_ka) {
        if protocol.is_v5() {
            keep_alive = max_ka;
            server_keep_alive = Some(max_ka);
        } else {
            warn!(
                keep_alive,
                max_keepalive = max_ka,
                "refusing CONNECT: keep alive above max_keepalive"
            );
            let code = refuse(&mut io, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            io.close_refused(code).await;
            return None;
        }
    }

    // Session expiry: 3.x clean session off means "until the client cleans it".
    let requested_expiry = match protocol {
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => NEVER_EXPIRES,
    };
    let session_expiry = requested_expiry.min(config.mqtt.max_session_expiry);

    let will = connect.will.as_ref().map(|w| {
        let p = &w.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            content_type: p.content_type.clone(),
            ..Default::default()
        };
        let mut msg = Message::new(
            w.topic.clone(),
            w.payload.clone(),
            w.qos,
            w.retain,
            properties,
            Some(client_id.clone()),
        );
        // The will's lifetime starts when it is published, which may be long after CONNECT
        // (5.0 section 3.1.3.2.4): `Broker::publish` starts it.
        msg.properties.message_expiry_interval = p.message_expiry_interval;
        (Arc::new(msg), p.will_delay_interval.unwrap_or(0))
    });
    if let Some((w, _)) = &will {
        if w.retain && !config.mqtt.retain_available {
            let code = refuse(&mut io, ReasonCode::RETAIN_NOT_SUPPORTED);
            io.close_refused(code).await;
            return None;
        }
    }

    // Authentication, after every protocol check, so backends see only well-formed CONNECTs.
    let request = ConnectRequest {
        client_id: &client_id,
        username: username.as_deref(),
        password: connect.password.as_deref(),
        peer,
        protocol,
        listener: listener.as_deref().copied(),
        certificate_identity: certificate_identity.as_deref(),
    };
    let superuser = match shared.auth.authenticate(&request).resolve().await {
        Admission::Accepted { superuser, by } => {
            shared.logins.succeeded(peer.ip());
            debug!(backend = %by, superuser, "authenticated");
            superuser
        }
        Admission::Refused { code, reason, by } => {
            let banned = shared.logins.failed(peer.ip());
            // Client and address named here too: the connection's span is info level.
            warn!(
                client_id = %client_id,
                %peer,
                username = username.as_ref().map(ByteStr::as_str),
                backend = %by,
                %reason,
                code = %code.reason_code(),
                "refusing CONNECT: authentication failed"
            );
            if banned {
                warn!(
                    ip = %peer.ip(),
                    failures = config.auth.max_login_failures,
                    window_secs = config.auth.login_failure_window,
                    ban_secs = config.auth.login_ban_time,
                    "too many failed logins: address banned"
                );
            }
            let code = refuse(&mut io, code.reason_code());
            io.close_refused(code).await;
            return None;
        }
    };
    let info = ClientInfo {
        client_id: client_id.clone(),
        username: username.clone(),
        peer,
        protocol,
        keep_alive,
        listener,
        certificate_identity,
        superuser,
    };

    let (control_tx, control_rx) = control_channel();
    let keep_alive_line = (keep_alive > 0).then(|| control_tx.clone());
    let handle = ConnectionHandle {
        control: control_tx,
    };
    let (session, present) = broker
        .attach(
            client_id.clone(),
            connect.clean_start,
            session_expiry,
            will.clone(),
            handle,
        )
        .await;
    if session_expiry > 0 {
        broker.store_barrier().await;
    }

    let max_inflight = config.limits.max_inflight;
    let receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let mut client = Client {
        io,
        shared,
        protocol,
        session,
        control: control_rx,
        send_window: receive_max.min(max_inflight),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        client_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
        checks_reads: shared.auth.checks_reads(&info),
        terms: Box::new(Terms {
            info,
            will_delay: will.as_ref().map_or(0, |(_, delay)| *delay),
            will: will.map(|(message, _)| message),
            requested_expiry,
        }),
        client_disconnect: None,
        rare: None,
    };

    let mut properties = ConnAckProperties::default();
    if protocol.is_v5() {
        properties.receive_maximum = Some(config.limits.max_inflight);
        properties.maximum_packet_size = Some(config.limits.max_packet_size);
        if config.mqtt.topic_alias_maximum > 0 {
            properties.topic_alias_maximum = Some(config.mqtt.topic_alias_maximum);
        }
        if !config.mqtt.retain_available {
            properties.retain_available = Some(false);
        }
        properties.assigned_client_identifier = assigned;
        properties.server_keep_alive = server_keep_alive;
        if session_expiry != requested_expiry {
            properties.session_expiry_interval = Some(session_expiry);
        }
    }
    let ack = ConnAck {
        // 3.1's CONNACK has no Session Present flag: that byte is reserved there.
        session_present: present && protocol != Protocol::V3_1,
        code: ReasonCode::SUCCESS,
        properties,
    };
    encode(&Packet::ConnAck(ack), protocol, client.io.wbuf());
    info!(%peer, username = username.as_ref().map(ByteStr::as_str), protocol = protocol.level(), clean_start = connect.clean_start, keep_alive, session_present = present, superuser, "client connected");
    shared
        .hooks
        .each(|h| h.client_connected(&client.terms.info));

    if let Some(line) = keep_alive_line {
        broker.keep_alive().watch(line, keep_alive);
    }
    client.resend_inflight();
    Some(client)
}

/// An identifier for a client that sent none: unique in this process and unlikely to collide
/// across restarts.
fn assign_client_id(n: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("pigeon-{n:x}-{nanos:08x}")
}

impl<S> Client<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(&mut self) -> Close {
        // Shutdown comes through the control line (`Broker::shut_down`); a connection attached
        // after it began was not asked, and finds the flag set.
        if self.shared.broker.is_shutting_down() {
            return Close {
                reason: Some(ReasonCode::SERVER_SHUTTING_DOWN),
                departure: Departure::Shutdown,
            };
        }
        // The task keeps room for this future's largest state as long as the connection lives,
        // so it holds only the client and one boxed future at a time: the wait's outcome is
        // handled before the next await (`on_event`), and input in its own boxed future.
        loop {
            // First what came in the same read as CONNECT, then what each read brings.
            if let Err(close) = Box::pin(self.handle_input()).await {
                return close;
            }
            loop {
                self.drain_queue();
                let event = std::future::poll_fn(|cx| self.poll_event(cx)).await;
                match self.on_event(event) {
                    Ok(Input::Waiting) => break,
                    Ok(Input::None) => {}
                    Err(close) => return close,
                }
            }
        }
    }

    /// What the packet loop's wait found, acted on: whether input waits to be handled, or why
    /// the connection ends.
    fn on_event(&mut self, event: Event) -> Result<Input, Close> {
        match event {
            Event::Control(Some(Control::Shutdown)) => Err(Close {
                reason: Some(ReasonCode::SERVER_SHUTTING_DOWN),
                departure: Departure::Shutdown,
            }),
            Event::Control(Some(Control::KeepAliveTimeout)) => {
                info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                    keep_alive_ms = u64::from(self.control.keep_alive()) * 1000,
                    "keep alive timed out"
                );
                Err(Close::error(ReasonCode::KEEP_ALIVE_TIMEOUT))
            }
            Event::Control(c) => {
                // A closed channel: the broker stopped waiting for this connection to close
                // after a takeover and dropped its handle; it is taken over all the same.
                let reason = match c {
                    Some(Control::Disconnect(reason)) => reason,
                    Some(Control::Shutdown | Control::KeepAliveTimeout) => {
                        unreachable!("matched above")
                    }
                    None => ReasonCode::SESSION_TAKEN_OVER,
                };
                info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, reason = %reason, "closing connection at the broker's request");
                Err(Close {
                    reason: Some(reason),
                    departure: Departure::WithWill,
                })
            }
            Event::Wrote(Ok(())) => Ok(Input::None),
            Event::Wrote(Err(e)) => {
                debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, error = %e, "write failed");
                Err(Close {
                    reason: None,
                    departure: Departure::WithWill,
                })
            }
            Event::Drained(drained) => {
                self.end_pause(drained);
                Ok(Input::Waiting)
            }
            Event::Read(Ok(0)) => {
                info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, "connection closed by the client without DISCONNECT");
                Err(Close {
                    reason: None,
                    departure: Departure::WithWill,
                })
            }
            Event::Read(Ok(_)) => Ok(Input::Waiting),
            Event::Read(Err(e)) => {
                info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, error = %e, "connection lost");
                Err(Close {
                    reason: None,
                    departure: Departure::WithWill,
                })
            }
            Event::Notified => Ok(Input::None),
            Event::Committed(Ok(())) => {
                self.release_acks();
                Ok(Input::None)
            }
            Event::Committed(Err(_)) => Err(Close {
                reason: Some(ReasonCode::SERVER_SHUTTING_DOWN),
                departure: Departure::Shutdown,
            }),
        }
    }

    /// The packet loop's one wait: what is ready first, in this order (the order of priority):
    /// the broker's control line (takeover, shutdown), writing, the end of a pause, reading, the
    /// session queue, the store's progress. Everything is polled in place, so the loop keeps no
    /// future per source between turns: the control line, the socket and the session queue
    /// keep only the task's waker, and the waits of a pause and of held acknowledgements are
    /// boxed in `Rare` while needed. Keep alive is not a wait here: the broker's wheel sends
    /// `Control::KeepAliveTimeout` down the control line.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Poll::Ready(c) = self.control.poll_recv(cx) {
            return Poll::Ready(Event::Control(c));
        }
        let io = &mut self.io;
        if let Some(b) = io.bufs.as_deref_mut() {
            b.kept |= b.wbuf.len() > KEPT_WRITE_ROOM;
            if !b.wbuf.is_empty() || b.unflushed {
                if let Poll::Ready(r) =
                    poll_write_or_flush(Pin::new(&mut io.stream), cx, &mut b.wbuf, &mut b.unflushed)
                {
                    return Poll::Ready(Event::Wrote(r));
                }
            }
        }
        match self.rare.as_deref_mut() {
            Some(Rare {
                paused: Some(hold),
                waits,
                ..
            }) => {
                let wait = waits.drained.get_or_insert_with(|| drained(hold.clone()));
                if let Poll::Ready(drained) = wait.as_mut().poll(cx) {
                    waits.drained = None;
                    return Poll::Ready(Event::Drained(drained));
                }
            }
            _ => {
                if let Poll::Ready(r) = self.io.poll_read(cx) {
                    return Poll::Ready(Event::Read(r));
                }
            }
        }
        if self.session.poll_notified(cx).is_ready() {
            return Poll::Ready(Event::Notified);
        }
        if let Some(rare) = self.rare.as_deref_mut() {
            if let (false, Some(committed)) = (rare.held_acks.is_empty(), &rare.committed) {
                let wait = rare.waits.committed.get_or_insert_with(|| {
                    let mut committed = committed.clone();
                    Box::pin(async move { committed.changed().await })
                });
                if let Poll::Ready(r) = wait.as_mut().poll(cx) {
                    rare.waits.committed = None;
                    return Poll::Ready(Event::Committed(r));
                }
            }
        }
        self.io.give_back_idle();
        Poll::Pending
    }

    /// The state most connections never need, made now if it was not.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Records a whole packet received now, for the keep alive wheel.
    fn heard(&self) {
        self.control.heard(self.shared.broker.keep_alive().now_ms());
    }

    /// Stops reading until `hold` is over or `deadline` passes (see `Rare::paused`); the time
    /// does not count against the keep alive.
    fn pause(&mut self, hold: Hold, deadline: Instant) {
        self.control.heard(keepalive::NOT_COUNTING);
        self.rare().paused = Some((hold, deadline));
    }

    /// Ends a pause: `drained` if what it waited for came, else its deadline passed.
    fn end_pause(&mut self, drained: bool) {
        let paused = self.rare.as_mut().and_then(|r| r.paused.take());
        if !drained {
            if let Some((Hold::Queue(pressure), _)) = paused {
                pressure.stalled();
            }
            debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                wait_ms = PUBLISHER_WAIT.as_millis() as u64,
                "a subscriber's queue did not drain in time; reading again"
            );
        }
        // The time spent not reading is not held against the client's keep alive.
        self.heard();
    }

    /// Reading is paused (see `Rare::paused`).
    fn is_paused(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.paused.is_some())
    }

    /// Decodes and handles every whole packet in the read buffer. Awaits only when an auth
    /// backend answers after I/O; packets are handled in order either way. Boxed by the caller:
    /// its state (a packet, an authorizer's answer) is several times an idle connection's and
    /// lives only while the input is handled.
    async fn handle_input(&mut self) -> Result<(), Close> {
        let mut decoder =
            Decoder::after_connect(self.protocol, self.shared.config.limits.max_packet_size);
        // A pause leaves the rest of the read buffer for when it ends.
        while !self.is_paused() {
            let Some(bufs) = self.io.bufs.as_deref_mut() else {
                return Ok(());
            };
            let packet = match decoder.decode(&mut bufs.rbuf) {
                // Keep alive counts whole Control Packets [MQTT-3.1.2-22] (5.0), not bytes: a
                // packet trickled a byte at a time does not hold the connection open.
                Ok(Some(p)) => {
                    self.heard();
                    p
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, error = %e, reason = %e.reason_code(), "malformed input; closing");
                    return Err(Close::error(e.reason_code()));
                }
            };
            // PUBLISH skips `handle`: one move less of the packet, and of the future holding
            // it, per message (callgrind, with `topic_levels`: 6 % of the fan-in instructions).
            match packet {
                Packet::Publish(p) => self.on_publish(p).await?,
                other => self.handle(other).await?,
            }
            // One unit of tokio's cooperative budget per packet: a publisher whose socket always
            // has data yields its worker every 128 packets, not every 128 reads (up to 64 KiB
            // each), so the tasks that drain subscribers and the cluster bus are not starved.
            tokio::task::consume_budget().await;
        }
        Ok(())
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(r) => {
                if let Some(done) = self.acknowledged(r.packet_id, OutStage::Published) {
                    self.delivered_hook(&done);
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                self.on_pubrec(r);
                Ok(())
            }
            Packet::PubRel(r) => {
                let known = {
                    let mut state = self.session.lock();
                    let known =
                        (state.incoming_qos2_mut()).is_some_and(|ids| ids.remove(&r.packet_id));
                    if known {
                        let client_id = self.session.client_id();
                        self.shared
                            .broker
                            .persist(&state, || StoreOp::IncomingDelete {
                                client_id: client_id.clone(),
                                packet_id: r.packet_id,
                            });
                    }
                    known
                };
                let reason = if known || !self.protocol.is_v5() {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubComp(PubResp {
                    packet_id: r.packet_id,
                    reason,
                    properties: Default::default(),
                }));
                Ok(())
            }
            Packet::PubComp(r) => {
                if let Some(done) = self.acknowledged(r.packet_id, OutStage::Released) {
                    self.delivered_hook(&done);
                }
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Connect(_) => {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, "second CONNECT [MQTT-3.1.0-2]; closing");
                Err(Close::error(ReasonCode::PROTOCOL_ERROR))
            }
            Packet::Auth(_) => {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, "AUTH without an authentication method in CONNECT; closing");
                Err(Close::error(ReasonCode::PROTOCOL_ERROR))
            }
            other => {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                    packet = other.name(),
                    "a client may not send this packet; closing"
                );
                Err(Close::error(ReasonCode::PROTOCOL_ERROR))
            }
        }
    }

    /// Asks the authorizers; awaits only when a backend needs I/O.
    async fn authorize(&self, action: Action, topic: &str) -> Verdict {
        match self.shared.auth.authorize(&self.terms.info, action, topic) {
            Check::Ready(verdict) => verdict,
            Check::Pending(answer) => answer.await,
        }
    }

    async fn on_publish(&mut self, mut p: Publish) -> Result<(), Close> {
        let config = &self.shared.config;
        if !p.properties.subscription_identifiers.is_empty() {
            warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                "PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]; closing"
            );
            return Err(Close::error(ReasonCode::PROTOCOL_ERROR));
        }
        // Topic alias (5.0 section 3.3.2.3.4).
        if let Some(alias) = p.properties.topic_alias {
            let max = usize::from(config.mqtt.topic_alias_maximum);
            let slot = usize::from(alias).checked_sub(1).filter(|i| *i < max);
            let Some(slot) = slot else {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                    alias,
                    max, "topic alias out of range [MQTT-3.3.2-9]; closing"
                );
                return Err(Close::error(ReasonCode::TOPIC_ALIAS_INVALID));
            };
            if p.topic.is_empty() {
                let known = self.rare.as_ref().and_then(|r| r.in_aliases.get(slot));
                match known.and_then(Option::as_ref) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, alias, "topic alias used before it was set; closing");
                        return Err(Close::error(ReasonCode::PROTOCOL_ERROR));
                    }
                }
            } else {
                let aliases = &mut self.rare().in_aliases;
                if slot >= aliases.len() {
                    aliases.resize(slot + 1, None);
                }
                aliases[slot] = Some(p.topic.clone());
            }
        }
        if p.retain && !config.mqtt.retain_available {
            warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %p.topic, "retained PUBLISH while retain is not available; closing");
            return Err(Close::error(ReasonCode::RETAIN_NOT_SUPPORTED));
        }
        if topic_levels(&p.topic) > config.limits.max_topic_levels {
            warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %p.topic, max = config.limits.max_topic_levels, "topic has too many levels; closing");
            return Err(Close::error(ReasonCode::TOPIC_NAME_INVALID));
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        let mut wait_for = 0;
        if qos == QoS::ExactlyOnce {
            let mut state = self.session.lock();
            let ids = state.incoming_qos2();
            if ids.is_some_and(|ids| ids.contains(&packet_id)) {
                // A resent PUBLISH whose PUBREC was lost: acknowledge again, route nothing
                // (exactly once, MQTT-4.3.3-10).
                drop(state);
                self.ack(
                    0,
                    Packet::PubRec(PubResp {
                        packet_id,
                        ..Default::default()
                    }),
                );
                return Ok(());
            }
            if ids.map_or(0, |ids| ids.len()) >= usize::from(config.limits.max_inflight)
                && self.protocol.is_v5()
            {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                    max = config.limits.max_inflight,
                    "client exceeded our Receive Maximum [MQTT-3.3.4-8]; closing"
                );
                return Err(Close::error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
            }
            state.incoming_qos2_make().insert(packet_id);
            // Recorded before routing, so the store never holds the routed copies without the
            // id that keeps a resent PUBLISH from being routed again after a restart.
            let client_id = self.session.client_id();
            wait_for = self.shared.broker.persist(&state, || StoreOp::IncomingPut {
                client_id: client_id.clone(),
                packet_id,
            });
        }
        let mut reason = ReasonCode::SUCCESS;
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %p.topic, "payload marked UTF-8 is not valid UTF-8; not routed");
            reason = ReasonCode::PAYLOAD_FORMAT_INVALID;
        } else if p.topic.starts_with("$SYS/") || p.topic.as_str() == "$SYS" {
            debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %p.topic, "clients may not publish to $SYS; ignored");
        } else if let Verdict::Denied { reason: why, by } = self
            .authorize(
                Action::Publish {
                    qos,
                    retain: p.retain,
                },
                &p.topic,
            )
            .await
        {
            // 5.0 says so in the acknowledgement; 3.1.1 has no way to, so the message is
            // acknowledged and dropped, as mosquitto does.
            info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %p.topic, backend = %by, reason = %why, "PUBLISH denied by the ACL; dropped");
            if self.protocol.is_v5() {
                reason = ReasonCode::NOT_AUTHORIZED;
            }
        } else {
            let message = Message::new(
                p.topic,
                p.payload,
                qos,
                p.retain,
                p.properties,
                Some(self.terms.info.client_id.clone()),
            );
            let message = Arc::new(message);
            // The hooks hear of it before any subscriber's task can deliver it.
            if !self.shared.hooks.is_empty() {
                let info = &self.terms.info;
                self.shared
                    .hooks
                    .each(|h| h.message_published(Some(info), &message));
            }
            let mut outcome = self.shared.broker.publish(message);
            wait_for = wait_for.max(outcome.wait_for);
            if let Some(pressure) = outcome.quota_exceeded.backpressure.take() {
                self.hold_back(pressure);
            }
            if outcome.quota_exceeded.full && self.protocol.is_v5() {
                // Some subscriber's queue (or the store) was full: say so where the protocol can.
                reason = ReasonCode::QUOTA_EXCEEDED;
            } else if outcome.routed == 0
                && self.protocol.is_v5()
                && self.shared.broker.cluster().is_none()
            {
                // (In a cluster, subscribers on other nodes are not known here.)
                reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
            }
            if !self.is_paused() {
                if let Some(backlog) = self.shared.broker.cluster().and_then(|bus| bus.backlog()) {
                    // The cluster bus is behind: read no more of this publisher until it
                    // catches up (writing and the rest go on, as for a full queue).
                    self.pause(Hold::Bus(backlog), Instant::now() + PUBLISHER_WAIT);
                }
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack(
                wait_for,
                Packet::PubAck(PubResp {
                    packet_id,
                    reason,
                    properties: Default::default(),
                }),
            ),
            QoS::ExactlyOnce => {
                if reason.is_error() {
                    // A refused QoS 2 message ends its exchange here; no PUBREL follows.
                    let mut state = self.session.lock();
                    if let Some(ids) = state.incoming_qos2_mut() {
                        ids.remove(&packet_id);
                    }
                    let client_id = self.session.client_id();
                    self.shared
                        .broker
                        .persist(&state, || StoreOp::IncomingDelete {
                            client_id: client_id.clone(),
                            packet_id,
                        });
                }
                self.ack(
                    wait_for,
                    Packet::PubRec(PubResp {
                        packet_id,
                        reason,
                        properties: Default::default(),
                    }),
                )
            }
        }
        Ok(())
    }

    /// Stops reading after this packet until `pressure`'s queue drains (see `paused`). Not when
    /// this client's own queue is high: its connection must keep reading the acknowledgements
    /// that drain it, or two clients publishing to each other could wait on each other (and a
    /// client publishing into its own full queue on itself).
    fn hold_back(&mut self, pressure: Backpressure) {
        if self.session.is_congested() {
            return;
        }
        self.pause(Hold::Queue(pressure), Instant::now() + PUBLISHER_WAIT);
    }

    fn on_pubrec(&mut self, r: PubResp) {
        let mut state = self.session.lock();
        let known = match state.inflight_mut(r.packet_id) {
            Some(o) if o.stage == OutStage::Published && o.delivery.qos == QoS::ExactlyOnce => {
                if r.reason.is_error() {
                    // The receiver refused it: the exchange ends, and the message is not sent
                    // again, after a restart either [MQTT-4.4.0-2].
                    drop(state);
                    self.acknowledged(r.packet_id, OutStage::Published);
                    return;
                }
                o.stage = OutStage::Released;
                if o.delivery.seq != 0 {
                    let op = StoreOp::QueuePut {
                        client_id: self.session.client_id().clone(),
                        seq: o.delivery.seq,
                        entry: QueueEntry::in_flight(o),
                    };
                    self.shared.broker.persist(&state, || op);
                }
                true
            }
            Some(o) => o.stage == OutStage::Released,
            None => false,
        };
        drop(state);
        let reason = if known || !self.protocol.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubRel(PubResp {
            packet_id: r.packet_id,
            reason,
            properties: Default::default(),
        }));
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let id = s.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut wait_for = 0;
        let v5 = self.protocol.is_v5();
        for (filter, options) in &s.filters {
            let (mut filter, mut options) = (filter.clone(), *options);
            if !self.shared.hooks.is_empty() {
                let mut request = SubscriptionRequest {
                    filter: filter.clone(),
                    qos: options.qos,
                };
                let info = &self.terms.info;
                self.shared
                    .hooks
                    .each(|h| h.rewrite_subscription(info, &mut request));
                if request.filter != filter {
                    if !topic::valid_topic_filter(&request.filter) {
                        warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, filter = %filter, rewritten = %request.filter, "a hook rewrote the filter into an invalid one; refused");
                        codes.push(if v5 {
                            ReasonCode::TOPIC_FILTER_INVALID
                        } else {
                            ReasonCode::UNSPECIFIED_ERROR
                        });
                        continue;
                    }
                    debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, filter = %filter, rewritten = %request.filter, "subscription rewritten by a hook");
                    filter = request.filter;
                }
                options.qos = request.qos;
            }
            let filter = &filter;
            let options = &options;
            let shared = topic::parse_shared(filter).is_some();
            if shared && options.no_local && self.protocol.is_v5() {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, filter = %filter, "No Local on a shared subscription [MQTT-3.8.3-4]; closing");
                return Err(Close::error(ReasonCode::PROTOCOL_ERROR));
            }
            if topic_levels(filter) > self.shared.config.limits.max_topic_levels {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, filter = %filter, "filter has too many levels; refused");
                codes.push(if self.protocol.is_v5() {
                    ReasonCode::TOPIC_FILTER_INVALID
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            let plain = match topic::parse_shared(filter) {
                Some(Ok((_, plain))) => plain,
                _ => filter.as_str(),
            };
            let action = Action::Subscribe { qos: options.qos };
            if let Verdict::Denied { reason, by } = self.authorize(action, plain).await {
                info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, filter = %filter, backend = %by, %reason, "SUBSCRIBE denied by the ACL");
                codes.push(if v5 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            let result = self
                .shared
                .broker
                .subscribe(&self.session, filter, *options, id);
            debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, filter = %filter, qos = options.qos as u8, "subscribed");
            let info = &self.terms.info;
            self.shared
                .hooks
                .each(|h| h.subscribed(info, filter, options));
            codes.push(result.code);
            wait_for = wait_for.max(result.wait_for);
        }
        // A persistent session's subscription is durable once its SUBACK is sent.
        self.ack(
            wait_for,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                return_codes: codes,
                properties: Default::default(),
            }),
        );
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut wait_for = 0;
        for filter in &u.filters {
            let removed = self.shared.broker.unsubscribe(&self.session, filter);
            wait_for = wait_for.max(removed.unwrap_or(0));
            if removed.is_some() {
                let info = &self.terms.info;
                self.shared.hooks.each(|h| h.unsubscribed(info, filter));
            }
            codes.push(if removed.is_some() {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        if !self.protocol.is_v5() {
            codes.clear();
        }
        self.ack(
            wait_for,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reason_codes: codes,
                properties: Default::default(),
            }),
        );
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // A session the client asked to end with the connection cannot be extended here
            // (5.0 section 3.14.2.2.2). What counts is the client's CONNECT, not the value
            // `max_session_expiry` made of it.
            if self.terms.requested_expiry == 0 && expiry != 0 {
                warn!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer,
                    "DISCONNECT sets a session expiry after CONNECT set 0; closing"
                );
                return Close::error(ReasonCode::PROTOCOL_ERROR);
            }
            let expiry = expiry.min(self.shared.config.mqtt.max_session_expiry);
            self.session.lock().expiry_interval = expiry;
        }
        self.client_disconnect = Some(d.reason);
        // Only a DISCONNECT with 0x00 discards the will [MQTT-3.14.4-3]: a client that leaves
        // with an error code (0x80 and up) or asks for it (0x04) still has it published
        // [MQTT-3.1.2-8].
        let departure = if d.reason == ReasonCode::NORMAL_DISCONNECTION {
            Departure::Normal
        } else {
            Departure::WithWill
        };
        info!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, reason = %d.reason, "client disconnected");
        Close {
            reason: None,
            departure,
        }
    }

    /// After CONNACK on a resumed session: resend every unacknowledged PUBLISH with DUP and every
    /// PUBREL, in their original order (MQTT-4.4.0-1). No more PUBLISHes than the client's
    /// Receive Maximum go at once [MQTT-3.3.4-9]: the new connection may announce a lower one
    /// than the old, and its send quota starts afresh (a PUBREL does not count: its PUBLISH went
    /// on an earlier connection). The PUBLISHes beyond it follow as acknowledgements come
    /// (`resend_held`), counted as `drain_queue` counts, everything in flight.
    fn resend_inflight(&mut self) {
        let session = Arc::clone(&self.session);
        let state = session.lock();
        let now = Instant::now();
        let window = usize::from(self.send_window);
        let mut sent = 0;
        let mut held = VecDeque::new();
        let mut too_large = Vec::new();
        for o in &state.inflight {
            match o.stage {
                OutStage::Published if sent >= window => held.push_back(o.packet_id),
                OutStage::Published => {
                    sent += 1;
                    if !self.write_publish(o, true, now) {
                        too_large.push(o.packet_id);
                    }
                }
                OutStage::Released => encode(
                    &Packet::PubRel(PubResp {
                        packet_id: o.packet_id,
                        ..Default::default()
                    }),
                    self.protocol,
                    self.io.wbuf(),
                ),
            }
        }
        drop(state);
        if !held.is_empty() {
            self.rare().held_resends = held;
        }
        self.discard_too_large(too_large);
    }

    /// Sends the PUBLISHes `resend_inflight` held back, in order, while the client's Receive
    /// Maximum has room: the in-flight messages not held are those it counts.
    fn resend_held(&mut self) {
        // Again after discarding messages too large to send: that makes room.
        while self
            .rare
            .as_ref()
            .is_some_and(|r| !r.held_resends.is_empty())
        {
            let too_large = self.resend_some_held();
            if too_large.is_empty() {
                return;
            }
            self.discard_too_large(too_large);
        }
    }

    /// One pass of `resend_held`: returns the ids of the messages too large to send.
    fn resend_some_held(&mut self) -> Vec<u16> {
        let session = Arc::clone(&self.session);
        let state = session.lock();
        let now = Instant::now();
        let window = usize::from(self.send_window);
        let mut too_large = Vec::new();
        while let Some(rare) = self.rare.as_mut() {
            let outstanding = state.inflight.len().saturating_sub(rare.held_resends.len());
            if outstanding >= window {
                break;
            }
            let Some(packet_id) = rare.held_resends.pop_front() else {
                break;
            };
            // Gone or moved on meanwhile (a client may answer an id it got before): skipped.
            let held = state
                .inflight
                .iter()
                .find(|o| o.packet_id == packet_id && o.stage == OutStage::Published);
            if let Some(o) = held {
                if !self.write_publish(o, true, now) {
                    too_large.push(packet_id);
                }
            }
        }
        too_large
    }

    /// In-flight messages larger than the Maximum Packet Size of this connection: discarded as if
    /// delivered [MQTT-3.1.2-25] (5.0), so they do not hold an in-flight place forever.
    fn discard_too_large(&mut self, packet_ids: Vec<u16>) {
        for packet_id in packet_ids {
            self.acknowledged(packet_id, OutStage::Published);
        }
    }

    /// Moves deliveries from the session queue into the write buffer, as far as the in-flight
    /// window and the write high-water mark allow.
    fn drain_queue(&mut self) {
        if self.io.unwritten() >= WRITE_HIGH_WATER {
            return;
        }
        self.resend_held();
        let session = Arc::clone(&self.session);
        let mut state = session.lock();
        if state.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut sent = 0u64;
        while self.io.unwritten() < WRITE_HIGH_WATER {
            match state.queue.front() {
                None => break,
                // Order is kept: a QoS 0 message behind a full window waits too.
                Some(d)
                    if d.qos != QoS::AtMostOnce
                        && state.inflight.len() >= usize::from(self.send_window) =>
                {
                    break
                }
                Some(_) => {}
            }
            let delivery = state.pop_queued().expect("front checked above");
            let seq = delivery.seq;
            let client_id = session.client_id();
            if delivery.message.is_expired(now) {
                self.shared.broker.unstore(client_id, &delivery);
                continue;
            }
            if self.checks_reads {
                let topic = &delivery.message.topic;
                if let Verdict::Denied { reason, by } =
                    self.shared.auth.authorize_read(&self.terms.info, topic)
                {
                    debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %topic, backend = %by, %reason, "delivery denied by the ACL (read); dropped");
                    self.shared.broker.unstore(client_id, &delivery);
                    continue;
                }
            }
            let packet_id = if delivery.qos == QoS::AtMostOnce {
                0
            } else {
                state.next_packet_id()
            };
            let out = Outgoing {
                packet_id,
                delivery,
                stage: OutStage::Published,
            };
            let written = self.write_publish(&out, false, now);
            if seq != 0 {
                // QoS 0 is done once written (or dropped); QoS 1 stays stored as queued until its
                // PUBACK, and gets its packet id in the store when the connection ends
                // (`Broker::detach`; after a crash it is resent under a new id, which QoS 1
                // allows); QoS 2 must keep its packet id across a restart (MQTT-4.3.3: the
                // receiver deduplicates by id).
                if !written || out.delivery.qos == QoS::AtMostOnce {
                    self.shared.broker.unstore(client_id, &out.delivery);
                } else if out.delivery.qos == QoS::ExactlyOnce {
                    let entry = QueueEntry::in_flight(&out);
                    self.shared.broker.persist(&state, || StoreOp::QueuePut {
                        client_id: client_id.clone(),
                        seq,
                        entry,
                    });
                }
            }
            if !written {
                continue;
            }
            sent += 1;
            if out.delivery.qos != QoS::AtMostOnce {
                state.inflight.push_back(out);
            } else if !self.shared.hooks.is_empty() {
                self.rare().delivered.push(out.delivery.message);
            }
        }
        drop(state);
        // Hooks run without the session lock: one that publishes to this client must not
        // deadlock on it.
        if let Some(rare) = self.rare.as_deref_mut() {
            for message in rare.delivered.drain(..) {
                let info = &self.terms.info;
                self.shared
                    .hooks
                    .each(|h| h.message_delivered(info, &message, QoS::AtMostOnce));
            }
        }
        self.shared
            .broker
            .stats
            .messages_sent
            .fetch_add(sent, Ordering::Relaxed);
    }

    /// The client acknowledged an outgoing message at `stage` (PUBACK, or PUBCOMP for PUBREL).
    /// Returns the message it completes.
    fn acknowledged(&mut self, packet_id: u16, stage: OutStage) -> Option<Outgoing> {
        let mut state = self.session.lock();
        let done = state.take_inflight(packet_id, stage)?;
        self.shared
            .broker
            .unstore(self.session.client_id(), &done.delivery);
        Some(done)
    }

    /// Tells the hooks a QoS 1/2 message reached the client (PUBACK / PUBCOMP).
    fn delivered_hook(&self, done: &Outgoing) {
        let info = &self.terms.info;
        self.shared
            .hooks
            .each(|h| h.message_delivered(info, &done.delivery.message, done.delivery.qos));
    }

    /// Sends an acknowledgement once store op `wait_for` is on disk (at once without a store or
    /// when 0), keeping acknowledgements in the order they were made.
    fn ack(&mut self, wait_for: u64, packet: Packet) {
        let holding = self.rare.as_ref().is_some_and(|r| !r.held_acks.is_empty());
        if !holding && self.shared.broker.is_committed(wait_for) {
            self.send(&packet);
            return;
        }
        let broker = &self.shared.broker;
        let rare = self.rare.get_or_insert_with(Box::default);
        let new_receiver = rare.committed.is_none();
        if new_receiver {
            rare.committed = broker.committed();
        }
        rare.held_acks.push_back((wait_for, packet));
        if new_receiver {
            // A new receiver has seen the commits made before it: one that came between the
            // check above and now would not wake the wait for the next (`Waits::committed`).
            self.release_acks();
        }
    }

    /// Sends the held acknowledgements whose store ops are now on disk.
    fn release_acks(&mut self) {
        let Some(rare) = self.rare.as_deref_mut() else {
            return;
        };
        let Some(committed) = &mut rare.committed else {
            return;
        };
        // Marked seen: the next wait (`Waits::committed`, a clone of this receiver, which
        // starts from the version this one has seen) then waits for a newer commit instead of
        // finding this one again at once.
        let done = *committed.borrow_and_update();
        while rare.held_acks.front().is_some_and(|(n, _)| *n <= done) {
            let (_, packet) = rare.held_acks.pop_front().expect("front checked");
            encode(&packet, self.protocol, self.io.wbuf());
        }
    }

    /// Encodes one outgoing PUBLISH. False if it exceeds the client's Maximum Packet Size, in
    /// which case it is dropped for this client (MQTT-3.1.2-25).
    fn write_publish(&mut self, out: &Outgoing, dup: bool, now: Instant) -> bool {
        let d = &out.delivery;
        let m = &d.message;
        let v5 = self.protocol.is_v5();
        let mut topic: &str = &m.topic;
        let mut alias = None;
        if v5 && self.client_alias_max > 0 {
            let max = usize::from(self.client_alias_max);
            let aliases = &mut self.rare().out_aliases;
            match aliases.get(&m.topic) {
                Some(&a) => {
                    alias = Some(a);
                    topic = "";
                }
                None if aliases.len() < max => {
                    let a = aliases.len() as u16 + 1;
                    aliases.insert(m.topic.clone(), a);
                    alias = Some(a);
                }
                None => {}
            }
        }
        let head = PublishHead {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id: out.packet_id,
            properties: &m.properties,
            topic_alias: alias,
            message_expiry_interval: if v5 { m.remaining_expiry(now) } else { None },
            subscription_identifiers: if v5 { &d.subscription_ids } else { &[] },
            payload_len: m.payload.len(),
        };
        if v5 && publish_head_len(&head, self.protocol) > self.client_max_packet as usize {
            if topic.is_empty() {
                // Alias just assigned for a packet we do not send: the client never learned it.
            } else if alias.is_some() {
                self.rare().out_aliases.remove(&m.topic);
            }
            debug!(client_id = %self.terms.info.client_id, peer = %self.terms.info.peer, topic = %m.topic, max = self.client_max_packet, "message exceeds the client's Maximum Packet Size; not sent");
            self.shared
                .broker
                .stats
                .messages_dropped
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let wbuf = self.io.wbuf();
        encode_publish_head(&head, self.protocol, wbuf);
        wbuf.extend_from_slice(&m.payload);
        true
    }

    /// Encodes a control packet. Acknowledgements carry no reason string or user property, so
    /// Request Problem Information 0 (MQTT-3.1.2-29) holds without a check here.
    fn send(&mut self, packet: &Packet) {
        encode(packet, self.protocol, self.io.wbuf());
    }

    /// Ends the connection: DISCONNECT (5.0) if there is a reason, flush, then the will and the
    /// session through `detach`.
    async fn finish(mut self, close: Close) {
        if let (Some(reason), true) = (close.reason, self.protocol.is_v5()) {
            let d = Disconnect {
                reason,
                properties: DisconnectProperties::default(),
            };
            encode(&Packet::Disconnect(d), self.protocol, self.io.wbuf());
        }
        self.io.flush_best_effort().await;
        self.shared.broker.keep_alive().unwatch(&self.control);
        let will = self
            .terms
            .will
            .take()
            .map(|message| (message, self.terms.will_delay));
        self.shared
            .broker
            .detach(&self.session, &self.control, close.departure, will);
        if !self.shared.hooks.is_empty() {
            let how = match (self.client_disconnect, close.reason) {
                (Some(reason), None) => Disconnection::Client(reason),
                (_, Some(reason)) => Disconnection::Server(reason),
                (None, None) => Disconnection::ConnectionLost,
            };
            let info = &self.terms.info;
            self.shared.hooks.each(|h| h.client_disconnected(info, how));
        }
        // Last: the session is detached and the will on its way; only the socket is left.
        if let Some(reason) = close.reason {
            self.io.linger_after(reason).await;
        }
    }
}

/// Levels of a topic name or filter. Counts bytes: `split('/')` costs several times as much on
/// the short topics of the per-message path.
fn topic_levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Whether the packet loop has input to handle after an event.
enum Input {
    Waiting,
    None,
}

/// What the packet loop's wait (`Client::poll_event`) found.
enum Event {
    Control(Option<Control>),
    Wrote(std::io::Result<()>),
    Drained(bool),
    Read(std::io::Result<usize>),
    Notified,
    Committed(Result<(), watch::error::RecvError>),
}

/// The packet loop's waits that are made only while needed.
#[derive(Default)]
struct Waits {
    /// The pause's (`Rare::paused`), while paused.
    drained: Option<Pin<Box<dyn Future<Output = bool> + Send + Sync>>>,
    /// The store's next commit, while acknowledgements are held.
    committed: Option<Pin<Box<dyn Future<Output = Committed> + Send + Sync>>>,
}

/// What waiting for the store's next commit gives.
type Committed = Result<(), watch::error::RecvError>;

/// Resolves with true when the queue a paused connection waits for has drained, with false
/// when the wait's deadline passed first.
///
/// Boxed, allocated only while paused: its timer and waiter would otherwise be room in every
/// connection's task, idle ones included.
fn drained(paused: (Hold, Instant)) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>> {
    match paused {
        (Hold::Queue(pressure), deadline) => Box::pin(async move {
            tokio::time::timeout_at(deadline, pressure.drained())
                .await
                .is_ok()
        }),
        (Hold::Bus(backlog), deadline) => Box::pin(async move {
            tokio::time::timeout_at(deadline, backlog.caught_up())
                .await
                .is_ok()
        }),
    }
}

/// Writes from `wbuf` once, or flushes once `wbuf` is empty: TLS and WebSocket streams send
/// what they hold only on flush. The buffer and flag change only when the operation completes.
fn poll_write_or_flush<W: AsyncWrite>(
    writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    wbuf: &mut BytesMut,
    unflushed: &mut bool,
) -> Poll<std::io::Result<()>> {
    if wbuf.is_empty() {
        ready!(writer.poll_flush(cx))?;
        *unflushed = false;
    } else {
        let n = ready!(writer.poll_write(cx, wbuf))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        wbuf.advance(n);
        *unflushed = true;
    }
    Poll::Ready(Ok(()))
}

thread_local! {
    /// Each worker thread's read buffer for connections with nothing partial buffered: they wait
    /// for input holding no buffer of their own.
    /// Left uninitialized: a page is resident once a read reaches it, so a thread whose reads
    /// are small (idle connections' pings) holds one page of it, not 64 KiB.
    static SCRATCH: RefCell<Box<[MaybeUninit<u8>]>> =
        RefCell::new(Box::new_uninit_slice(READ_MAX));
}

/// One read completing the partial packet in `rbuf`, with room of `hint`, which follows how
/// much the reads bring.
fn poll_read_partial<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    rbuf: &mut BytesMut,
    hint: &mut u32,
) -> Poll<std::io::Result<usize>> {
    let wanted = *hint as usize;
    rbuf.reserve(wanted);
    let room = rbuf.capacity() - rbuf.len();
    // `read_buf`'s future keeps nothing between polls but its borrows: polled here in place.
    let n = ready!(std::pin::pin!(reader.read_buf(rbuf)).poll(cx))?;
    if n == room {
        *hint = (wanted * 2).min(READ_MAX) as u32;
    } else if n < wanted / 4 {
        *hint = (wanted / 2).max(READ_MIN) as u32;
    }
    Poll::Ready(Ok(n))
}

/// One read through the thread's scratch buffer; what came (if anything) goes to `keep`.
fn poll_read_scratch<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    keep: impl FnOnce(&[u8]),
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => read_keeping(reader, cx, &mut scratch, keep),
        // Not reentrant in practice; a buffer of its own is correct all the same.
        Err(_) => read_keeping(reader, cx, &mut vec![MaybeUninit::uninit(); READ_MIN], keep),
    })
}

fn read_keeping<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    scratch: &mut [MaybeUninit<u8>],
    keep: impl FnOnce(&[u8]),
) -> Poll<std::io::Result<usize>> {
    let mut buf = ReadBuf::uninit(scratch);
    ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
    let filled = buf.filled();
    if !filled.is_empty() {
        keep(filled);
    }
    Poll::Ready(Ok(filled.len()))
}
