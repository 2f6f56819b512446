//! A flood of half-open handshakes does not hold up other clients. 1,000 connections to the
//! mqtts, wss and ws listeners stay silent or stop partway (a TLS record header and part of a
//! ClientHello; part of an HTTP upgrade request). While they are open, a normal client connects
//! over TCP, TLS and WebSocket, and each must have its CONNACK well within the handshake timeout.
//! Then the server must have closed every half-open connection once the timeout passed.

mod transport;

use pigeon_codec::{Packet, Protocol, ReasonCode};
use pigeon_server::config::ListenerProtocol;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use transport::{
    client_config, connect_bytes, listener, start, tls_connect, tls_listener, PacketReader, Pki,
    ALL_VERSIONS,
};

const HALF_OPEN: usize = 1000;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a normal client's connect may take while the flood is open.
const BUDGET: Duration = Duration::from_secs(1);

/// A TLS record header announcing a 512-byte ClientHello, and the first bytes of it.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
const PARTIAL_UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n";

async fn connack<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> ReasonCode {
    stream
        .write_all(&connect_bytes(Protocol::V3_1_1, ""))
        .await
        .expect("write CONNECT");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    let mut buf = [0u8; 64];
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before CONNACK");
        if let Some(Packet::ConnAck(ack)) = reader.push(&buf[..n]).into_iter().next() {
            return ack.code;
        }
    }
}

/// Connects and completes CONNECT over each transport; returns how long each took.
async fn normal_clients(
    tcp: SocketAddr,
    mqtts: SocketAddr,
    ws: SocketAddr,
    pki: &Pki,
) -> [Duration; 3] {
    let started = Instant::now();
    let mut stream = TcpStream::connect(tcp).await.expect("connect");
    assert_eq!(connack(&mut stream).await, ReasonCode::SUCCESS);
    let over_tcp = started.elapsed();

    let started = Instant::now();
    let config = client_config(&[pki.ca.der()], None, ALL_VERSIONS);
    let mut stream = tls_connect(mqtts, config).await.expect("TLS handshake");
    assert_eq!(connack(&mut stream).await, ReasonCode::SUCCESS);
    let over_tls = started.elapsed();

    let started = Instant::now();
    let request = format!("ws://{ws}/mqtt")
        .into_client_request()
        .expect("request");
    let tcp_stream = TcpStream::connect(ws).await.expect("connect");
    let (socket, _) = tokio_tungstenite::client_async(request, tcp_stream)
        .await
        .expect("upgrade");
    let mut stream = WsBytes(socket);
    assert_eq!(stream.connack().await, ReasonCode::SUCCESS);
    let over_ws = started.elapsed();
    [over_tcp, over_tls, over_ws]
}

/// Just enough of a WebSocket client for one CONNECT.
struct WsBytes(tokio_tungstenite::WebSocketStream<TcpStream>);

impl WsBytes {
    async fn connack(&mut self) -> ReasonCode {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.0
            .send(Message::Binary(
                connect_bytes(Protocol::V3_1_1, "").freeze(),
            ))
            .await
            .expect("send");
        let mut reader = PacketReader::new(Protocol::V3_1_1);
        loop {
            match self.0.next().await {
                Some(Ok(Message::Binary(data))) => {
                    if let Some(Packet::ConnAck(ack)) = reader.push(&data).into_iter().next() {
                        return ack.code;
                    }
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_do_not_delay_other_clients() {
    let pki = Pki::new();
    let broker = start(
        vec![
            listener(ListenerProtocol::Mqtt),
            tls_listener(ListenerProtocol::Mqtts, &pki),
            listener(ListenerProtocol::Ws),
            tls_listener(ListenerProtocol::Wss, &pki),
        ],
        |config| config.limits.handshake_timeout = HANDSHAKE_TIMEOUT.as_secs(),
    )
    .await;
    let [tcp, mqtts, ws, wss] = broker.addrs[..] else {
        panic!("four listeners")
    };

    // Before the flood, for comparison.
    let quiet = normal_clients(tcp, mqtts, ws, &pki).await;

    let flood_started = Instant::now();
    let mut half_open = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        let (target, first_bytes): (SocketAddr, &[u8]) = match i % 6 {
            0 => (mqtts, b""),
            1 => (mqtts, PARTIAL_CLIENT_HELLO),
            2 => (wss, b""),
            3 => (wss, PARTIAL_CLIENT_HELLO),
            4 => (ws, b""),
            _ => (ws, PARTIAL_UPGRADE),
        };
        let mut stream = TcpStream::connect(target).await.expect("connect");
        if !first_bytes.is_empty() {
            stream.write_all(first_bytes).await.expect("write");
        }
        half_open.push(stream);
    }
    let flood_opened = flood_started.elapsed();

    let flooded = normal_clients(tcp, mqtts, ws, &pki).await;
    println!(
        "{HALF_OPEN} half-open handshakes opened in {flood_opened:?}; connect before the flood \
         (tcp, tls, ws): {quiet:?}; during it: {flooded:?}"
    );
    assert!(
        flood_started.elapsed() < HANDSHAKE_TIMEOUT,
        "the flood took {:?} to open and measure; the measurement must fall inside the \
         handshake timeout to mean anything",
        flood_started.elapsed()
    );
    for (what, took) in ["tcp", "tls", "ws"].iter().zip(flooded) {
        assert!(
            took < BUDGET,
            "a {what} client took {took:?} to connect while {HALF_OPEN} handshakes hung"
        );
    }

    // Every half-open connection is closed by the server once the handshake timeout passes
    // (a partial upgrade request may first get an HTTP error answer; EOF or reset follow).
    let closed_by = flood_started + HANDSHAKE_TIMEOUT + Duration::from_secs(3);
    for (i, mut stream) in half_open.into_iter().enumerate() {
        let left = closed_by.saturating_duration_since(Instant::now());
        let closed = tokio::time::timeout(left, async {
            let mut buf = [0u8; 512];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "half-open connection {i} still open {:?} after the flood began",
            flood_started.elapsed()
        );
    }
    broker.stop().await;
}
