//! A small MQTT client over pigeon-codec: every wait is bounded, QoS 1 and 2 deliveries are
//! acknowledged as they arrive, and what a test looks at (session present, the QoS and retain
//! flag of each delivery, the DISCONNECT reason that closed a connection) stays visible.

use bytes::{Bytes, BytesMut};
use pigeon_codec::{
    encode, ByteStr, Connect, Decoder, Disconnect, Packet, Protocol, PubResp, Publish,
    PublishProperties, QoS, Subscribe, SubscriptionOptions, Will,
};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One delivery as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The broker sent DISCONNECT with this reason code (5.0), then closed.
    Disconnect(u8),
    /// The broker closed the connection without a DISCONNECT.
    Eof,
    /// Still open when the wait ended.
    StillOpen,
}

// Returned and matched at once, never stored: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Packet(Packet),
    Closed,
    Timeout,
}

pub struct Client {
    pub name: String,
    stream: TcpStream,
    protocol: Protocol,
    rbuf: BytesMut,
    decoder: Decoder,
    inbox: VecDeque<Msg>,
    next_id: u16,
    closed: Option<Closed>,
}

pub struct Options {
    pub protocol: Protocol,
    pub clean: bool,
    /// 5.0 session expiry interval.
    pub expiry: Option<u32>,
    pub will: Option<Will>,
}

impl Options {
    pub fn v311(clean: bool) -> Options {
        Options {
            protocol: Protocol::V3_1_1,
            clean,
            expiry: None,
            will: None,
        }
    }

    pub fn v5(clean: bool, expiry: Option<u32>) -> Options {
        Options {
            protocol: Protocol::V5,
            clean,
            expiry,
            will: None,
        }
    }

    pub fn with_will(mut self, topic: &str, payload: &[u8], qos: QoS) -> Options {
        self.will = Some(Will {
            topic: ByteStr::from(topic),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain: false,
            properties: Default::default(),
        });
        self
    }
}

impl Client {
    /// Connects and returns the client with CONNACK's session-present flag; panics on refusal.
    pub async fn connect(port: u16, id: &str, opts: Options) -> (Client, bool) {
        match Client::try_connect(port, id, opts).await {
            Ok(c) => c,
            Err(e) => panic!("client {id} on port {port}: {e}"),
        }
    }

    pub async fn try_connect(port: u16, id: &str, opts: Options) -> Result<(Client, bool), String> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            name: id.to_string(),
            stream,
            protocol: opts.protocol,
            rbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(opts.protocol, 1 << 24),
            inbox: VecDeque::new(),
            next_id: 1,
            closed: None,
        };
        let mut connect = Connect {
            protocol: opts.protocol,
            clean_start: opts.clean,
            keep_alive: 120,
            client_id: ByteStr::from(id),
            will: opts.will,
            username: None,
            password: None,
            properties: Default::default(),
        };
        connect.properties.session_expiry_interval = opts.expiry;
        c.send(&Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| format!("send CONNECT: {e}"))?;
        match c.next_event(Duration::from_secs(10)).await {
            Event::Packet(Packet::ConnAck(a)) if a.code.0 == 0 => Ok((c, a.session_present)),
            Event::Packet(Packet::ConnAck(a)) => {
                Err(format!("CONNACK refused: 0x{:02x}", a.code.0))
            }
            Event::Packet(other) => Err(format!("expected CONNACK, got {other:?}")),
            Event::Closed => Err("closed before CONNACK".into()),
            Event::Timeout => Err("no CONNACK within 10 s".into()),
        }
    }

    async fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        encode(p, self.protocol, &mut buf);
        self.stream.write_all(&buf).await
    }

    fn alloc_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id % 60_000 + 1;
        id
    }

    /// Reads one packet. Deliveries are acknowledged and queued in the inbox on the way.
    async fn next_event(&mut self, wait: Duration) -> Event {
        if self.closed.is_some() {
            return Event::Closed;
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => {
                    self.on_packet(&p).await;
                    return Event::Packet(p);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "{}: the broker sent an undecodable packet: {e:?}",
                    self.name
                ),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Event::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed.get_or_insert(Closed::Eof);
                    return Event::Closed;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn on_packet(&mut self, p: &Packet) {
        match p {
            Packet::Publish(p) => {
                let ack = PubResp {
                    packet_id: p.packet_id,
                    ..Default::default()
                };
                let _ = match p.qos {
                    QoS::AtMostOnce => Ok(()),
                    QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)).await,
                    QoS::ExactlyOnce => self.send(&Packet::PubRec(ack)).await,
                };
                self.inbox.push_back(Msg {
                    topic: p.topic.as_str().to_string(),
                    payload: p.payload.clone(),
                    qos: p.qos,
                    retain: p.retain,
                    properties: p.properties.clone(),
                });
            }
            Packet::PubRel(r) => {
                let comp = PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                };
                let _ = self.send(&Packet::PubComp(comp)).await;
            }
            Packet::Disconnect(d) => {
                self.closed = Some(Closed::Disconnect(d.reason.0));
            }
            _ => {}
        }
    }

    /// Waits for a packet other than a delivery (SUBACK, PUBACK, ...) for up to `wait`.
    async fn expect_reply(&mut self, what: &str, wait: Duration) -> Packet {
        let deadline = Instant::now() + wait;
        loop {
            match self
                .next_event(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Event::Packet(Packet::Publish(_)) | Event::Packet(Packet::PubRel(_)) => {}
                Event::Packet(p) => return p,
                Event::Closed => panic!(
                    "{}: connection closed ({:?}) while waiting for {what}",
                    self.name, self.closed
                ),
                Event::Timeout => panic!("{}: no {what} within {wait:?}", self.name),
            }
        }
    }

    /// Subscribes one filter; returns the granted QoS / reason code.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> u8 {
        let packet_id = self.alloc_id();
        let sub = Subscribe {
            packet_id,
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        };
        self.send(&Packet::Subscribe(sub))
            .await
            .unwrap_or_else(|e| panic!("{}: SUBSCRIBE: {e}", self.name));
        match self.expect_reply("SUBACK", Duration::from_secs(10)).await {
            Packet::SubAck(a) if a.packet_id == packet_id => a.return_codes[0].0,
            other => panic!("{}: expected SUBACK, got {other:?}", self.name),
        }
    }

    /// Publishes and waits for the acknowledgement (PUBACK, or PUBREC then PUBCOMP).
    /// Returns false if the connection ended first; panics if it takes more than 10 s.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) -> bool {
        self.publish_with(topic, payload, qos, retain, Default::default())
            .await
    }

    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    ) -> bool {
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.alloc_id()
        };
        let p = Publish {
            qos,
            retain,
            topic: ByteStr::from(topic),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
            properties,
            ..Default::default()
        };
        if self.send(&Packet::Publish(p)).await.is_err() {
            return false;
        }
        if qos == QoS::AtMostOnce {
            return true;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .next_event(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Event::Packet(Packet::PubAck(r)) if r.packet_id == packet_id => {
                    assert!(
                        !r.reason.is_error(),
                        "{}: PUBACK refused {topic}: {:?}",
                        self.name,
                        r.reason
                    );
                    return true;
                }
                Event::Packet(Packet::PubRec(r)) if r.packet_id == packet_id => {
                    assert!(
                        !r.reason.is_error(),
                        "{}: PUBREC refused {topic}: {:?}",
                        self.name,
                        r.reason
                    );
                    let rel = PubResp {
                        packet_id,
                        ..Default::default()
                    };
                    if self.send(&Packet::PubRel(rel)).await.is_err() {
                        return false;
                    }
                }
                Event::Packet(Packet::PubComp(r)) if r.packet_id == packet_id => return true,
                Event::Packet(_) => {}
                Event::Closed => return false,
                Event::Timeout => {
                    panic!("{}: no acknowledgement for {topic} within 10 s", self.name)
                }
            }
        }
    }

    /// The next delivery within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<Msg> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Some(m);
            }
            match self
                .next_event(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Event::Packet(_) => {}
                Event::Closed | Event::Timeout => return None,
            }
        }
    }

    /// Deliveries until `n` arrived or `wait` is over.
    pub async fn collect(&mut self, n: usize, wait: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while got.len() < n {
            match self
                .recv(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(m) => got.push(m),
                None => break,
            }
        }
        got
    }

    /// Every delivery until none comes for `idle` (at most 30 s in all).
    pub async fn drain(&mut self, idle: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while Instant::now() < deadline {
            match self.recv(idle).await {
                Some(m) => got.push(m),
                None => break,
            }
        }
        got
    }

    /// Waits up to `wait` for the broker to close the connection.
    pub async fn closed(&mut self, wait: Duration) -> Closed {
        let deadline = Instant::now() + wait;
        while self.closed.is_none() {
            match self
                .next_event(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Event::Packet(_) => {}
                Event::Closed => break,
                Event::Timeout => return Closed::StillOpen,
            }
        }
        // A DISCONNECT is followed by the close; either way the connection is over.
        self.closed.clone().unwrap_or(Closed::Eof)
    }

    /// PINGREQ → PINGRESP within `wait`: the connection is open and served.
    pub async fn ping(&mut self, wait: Duration) -> bool {
        if self.send(&Packet::PingReq).await.is_err() {
            return false;
        }
        let deadline = Instant::now() + wait;
        loop {
            match self
                .next_event(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Event::Packet(Packet::PingResp) => return true,
                Event::Packet(_) => {}
                Event::Closed | Event::Timeout => return false,
            }
        }
    }

    /// Closes the socket without DISCONNECT, as a device that loses its network.
    pub fn abort(self) {
        drop(self.stream);
    }

    /// A normal DISCONNECT, then close.
    pub async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Disconnect::default())).await;
        let _ = self.stream.shutdown().await;
        // Let the broker read the DISCONNECT before the socket goes away.
        let _ = self.closed(Duration::from_millis(500)).await;
    }
}
