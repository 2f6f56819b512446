//! One MQTT client connection of the load generator: TCP connect (from a chosen local address if
//! asked), CONNECT/CONNACK, SUBSCRIBE/SUBACK, batched writes and packet reads.
//!
//! Read state (`rbuf`, `decoder`) lives in the struct and `fill` only awaits the cancel-safe
//! `read_buf`, so a caller may race `fill` in `select!` without losing bytes. Packets are encoded
//! into `wbuf` and leave in one `write_all` per batch (`flush`), never one syscall per packet.
//! The read buffer is reused: decoded packets are views of it, dropped before the next read.

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use pigeon_codec::{
    encode, encode_publish_head, ByteStr, Connect, ConnectProperties, Decoder, Disconnect, Packet,
    Protocol, PublishHead, PublishProperties, QoS, Subscribe, SubscriptionOptions,
};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use super::timeline::STAMP_LEN;

/// Time allowed for TCP connect plus CONNACK, and for SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the DISCONNECT at the end; a broker that stopped reading must not hold the run.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Linux errno values; std has no `ErrorKind` for them.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// What every connection of a run shares.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) keep_alive: u16,
    pub(crate) max_packet_size: u32,
    /// Read buffer capacity: large for traffic, small for the idle connections of `conns`.
    pub(crate) buf_size: usize,
    /// SO_SNDBUF; `None` leaves the kernel's autotuning, which lets a socket buffer megabytes.
    pub(crate) send_buffer: Option<u32>,
    /// The soft RLIMIT_NOFILE, for the EMFILE message; read before any socket is opened, because
    /// once the limit is hit /proc cannot be opened to read it.
    pub(crate) open_file_limit: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Client {
    stream: TcpStream,
    decoder: Decoder,
    protocol: Protocol,
    rbuf: BytesMut,
    wbuf: BytesMut,
    buf_size: usize,
    /// Empty; `PublishHead` borrows properties, and these are the same for every message.
    no_properties: PublishProperties,
}

impl Client {
    /// Opens a TCP connection (bound to `source` if given) and completes CONNECT/CONNACK.
    pub(crate) async fn connect(
        opts: &ClientOptions,
        client_id: &str,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Client> {
        let socket = match opts.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("creating a socket")?;
        if let Some(size) = opts.send_buffer {
            socket
                .set_send_buffer_size(size)
                .context("setting SO_SNDBUF")?;
        }
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding a socket to {ip}"))?;
        }
        let stream = timeout(HANDSHAKE_TIMEOUT, socket.connect(opts.addr))
            .await
            .map_err(|_| anyhow::anyhow!("TCP connect to {} timed out", opts.addr))?
            .with_context(|| format!("connecting to {}", opts.addr))?;
        // Latency figures must not include Nagle's delay on small packets.
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;

        let mut client = Client {
            stream,
            decoder: Decoder::with_protocol(opts.protocol, opts.max_packet_size),
            protocol: opts.protocol,
            rbuf: BytesMut::with_capacity(opts.buf_size),
            wbuf: BytesMut::with_capacity(opts.buf_size),
            buf_size: opts.buf_size,
            no_properties: PublishProperties::default(),
        };
        client.push(&Packet::Connect(Box::new(Connect {
            protocol: opts.protocol,
            clean_start: true,
            keep_alive: opts.keep_alive,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })));
        client.flush().await?;
        let reply = timeout(HANDSHAKE_TIMEOUT, client.read_packet())
            .await
            .map_err(|_| anyhow::anyhow!("no CONNACK within {HANDSHAKE_TIMEOUT:?}"))??;
        match reply {
            Packet::ConnAck(ack) if ack.code.0 == 0 => Ok(client),
            Packet::ConnAck(ack) if opts.protocol.is_v5() => {
                bail!("CONNACK refused the connection: {}", ack.code.name())
            }
            Packet::ConnAck(ack) => {
                bail!("CONNACK refused the connection: return code {}", ack.code.0)
            }
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    /// Subscribes to one filter and waits for its SUBACK, which must grant at least `qos`.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        const PACKET_ID: u16 = 1;
        self.push(&Packet::Subscribe(Subscribe {
            packet_id: PACKET_ID,
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        }));
        self.flush().await?;
        let ack = timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match self.read_packet().await? {
                    Packet::SubAck(ack) if ack.packet_id == PACKET_ID => return Ok(ack),
                    // A retained message left on a bench topic by someone else; not ours to count.
                    Packet::Publish(_) => continue,
                    other => bail!("expected SUBACK, got {}", other.name()),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no SUBACK for {filter} within {HANDSHAKE_TIMEOUT:?}"))??;
        match ack.return_codes.first() {
            Some(code) if code.is_error() => {
                bail!("SUBACK refused {filter}: code 0x{:02x}", code.0)
            }
            Some(code) if code.0 < qos as u8 => {
                bail!(
                    "SUBACK granted QoS {} for {filter}, {} asked",
                    code.0,
                    qos as u8
                )
            }
            Some(_) => Ok(()),
            None => bail!("SUBACK for {filter} carries no return code"),
        }
    }

    /// Appends `packet` to the write buffer; `flush` sends it.
    pub(crate) fn push(&mut self, packet: &Packet) {
        encode(packet, self.protocol, &mut self.wbuf);
    }

    /// Appends a PUBLISH whose payload is `stamp` followed by zeros up to `payload_len` bytes,
    /// written in place: no payload buffer is allocated per message.
    pub(crate) fn push_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        stamp: u64,
        payload_len: usize,
    ) {
        debug_assert!(payload_len >= STAMP_LEN);
        let head = PublishHead {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            properties: &self.no_properties,
            topic_alias: None,
            message_expiry_interval: None,
            subscription_identifiers: &[],
            payload_len,
        };
        encode_publish_head(&head, self.protocol, &mut self.wbuf);
        self.wbuf.put_u64(stamp);
        self.wbuf.put_bytes(0, payload_len - STAMP_LEN);
    }

    pub(crate) fn has_pending_writes(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes everything pushed so far in one `write_all`. Not cancel-safe: callers do not race it.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.wbuf)
            .await
            .context("writing to the broker")?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads more bytes into the read buffer; `Ok(0)` means the broker closed the connection.
    /// Cancel-safe.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        // `reserve` reclaims the space of packets already decoded and dropped, so the buffer is
        // reused rather than grown.
        if self.rbuf.capacity() - self.rbuf.len() < self.buf_size / 2 {
            self.rbuf.reserve(self.buf_size);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The next whole packet already read, if any.
    pub(crate) fn try_decode(&mut self) -> anyhow::Result<Option<Packet>> {
        self.decoder
            .decode(&mut self.rbuf)
            .context("decoding a packet from the broker")
    }

    /// Reads until one whole packet arrives.
    pub(crate) async fn read_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = self.try_decode()? {
                return Ok(packet);
            }
            if self.fill().await.context("reading from the broker")? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Sends DISCONNECT, waits up to `DISCONNECT_TIMEOUT` for the broker to close the connection
    /// (a server does when the client has not, MQTT 3.1.1 and 5.0 section 3.14.4), and closes.
    /// Errors are ignored: the broker may have closed already.
    pub(crate) async fn disconnect(mut self) {
        self.wbuf.clear();
        self.push(&Packet::Disconnect(Disconnect::default()));
        let _ = timeout(DISCONNECT_TIMEOUT, async {
            self.flush().await?;
            // Closing after the broker, not before, leaves the TIME_WAIT socket on its side. The
            // side that closes first keeps the connection's address pair for a minute, and on
            // this side that would hold up the local ports the next runs connect from (the
            // kernel searches past them).
            while self.stream.read_buf(&mut self.rbuf).await? != 0 {
                self.rbuf.clear();
            }
            anyhow::Ok(())
        })
        .await;
    }
}

/// Adds what to do about the connect failures a load generator runs into: the open-file limit
/// (EMFILE) and running out of local ports.
pub(crate) fn explain_connect_error(
    err: anyhow::Error,
    opts: &ClientOptions,
    connected: usize,
) -> anyhow::Error {
    let io = err.chain().find_map(|e| e.downcast_ref::<io::Error>());
    let hint = match io {
        Some(e) if e.raw_os_error() == Some(EMFILE) => format!(
            "this process reached its open-file limit (RLIMIT_NOFILE soft limit: {}) with about \
             {connected} connections open; raise it with `ulimit -n` before starting (the broker \
             needs as many)",
            opts.open_file_limit.map_or_else(|| "unknown".to_string(), |n| n.to_string())
        ),
        Some(e) if e.raw_os_error() == Some(ENFILE) => {
            format!(
                "the system-wide open-file table is full (fs.file-max) with about {connected} \
                 connections open"
            )
        }
        Some(e) if e.kind() == io::ErrorKind::AddrNotAvailable => format!(
            "out of local ports with about {connected} connections open; lower --per-source, or wait for \
             TIME_WAIT sockets of an earlier run to expire"
        ),
        _ => return err,
    };
    err.context(hint)
}

/// The soft RLIMIT_NOFILE, read from /proc (Linux) to avoid a libc dependency for one number.
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
