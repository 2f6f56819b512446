//! MQTT over WebSocket: rumqttc's websocket transport next to a TCP client, and raw WebSocket
//! frames for what a client library does not do on purpose (packets split across frames or
//! sharing one, text frames, other paths, subprotocol choice, origins, forwarded addresses).

mod transport;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use pigeon_codec::{
    ByteStr, Packet, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use pigeon_server::config::ListenerProtocol;
use rumqttc::{MqttOptions, Transport};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use transport::{
    connect_bytes, listener, packet_bytes, start, LogCapture, MqttClient, PacketReader, Running,
};

const QOS1: rumqttc::QoS = rumqttc::QoS::AtLeastOnce;

const WAIT: Duration = Duration::from_secs(5);

async fn ws_broker() -> Running {
    start(
        vec![
            listener(ListenerProtocol::Mqtt),
            listener(ListenerProtocol::Ws),
        ],
        |_| {},
    )
    .await
}

fn ws_options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut options = MqttOptions::new(id, format!("ws://{addr}/mqtt"), addr.port());
    options.set_transport(Transport::Ws);
    options
}

#[tokio::test]
async fn rumqttc_over_ws_exchanges_messages_with_a_tcp_client() {
    let broker = ws_broker().await;
    let (tcp, ws) = (broker.addrs[0], broker.addrs[1]);
    let mut ws_client = MqttClient::connect(ws_options("ws-1", ws))
        .await
        .expect("ws");
    ws_client.subscribe("chat/#").await;
    let mut tcp_client =
        MqttClient::connect(MqttOptions::new("tcp-1", tcp.ip().to_string(), tcp.port()))
            .await
            .expect("tcp");
    tcp_client.subscribe("chat/#").await;

    tcp_client.publish("chat/a", QOS1, "from tcp").await;
    assert_eq!(&ws_client.next_payload(None).await[..], b"from tcp");

    // Larger than one outgoing WebSocket message (64 KiB): it is split, and arrives whole.
    ws_client.publish("chat/b", QOS1, vec![7u8; 100_000]).await;
    let got = tcp_client.next_payload(Some(100_000)).await;
    assert!(got.iter().all(|b| *b == 7));
    let got = ws_client.next_payload(Some(100_000)).await;
    assert!(got.iter().all(|b| *b == 7));
    broker.stop().await;
}

/// A raw WebSocket client: connects with the `mqtt` subprotocol.
async fn raw_ws(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let mut request = format!("ws://{addr}/mqtt")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    ws
}

/// Reads binary messages until `count` packets have arrived; returns them and the number of
/// messages they came in.
async fn read_packets(
    ws: &mut WebSocketStream<TcpStream>,
    reader: &mut PacketReader,
    count: usize,
) -> (Vec<Packet>, usize) {
    let mut packets = Vec::new();
    let mut messages = 0;
    tokio::time::timeout(WAIT, async {
        while packets.len() < count {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    messages += 1;
                    packets.extend(reader.push(&data));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    })
    .await
    .expect("packets within 5 s");
    (packets, messages)
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            ByteStr::from(filter),
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    })
}

fn publish(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: 0,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    })
}

fn is_connack_success(p: &Packet) -> bool {
    matches!(p, Packet::ConnAck(ack) if ack.code == ReasonCode::SUCCESS)
}

#[tokio::test]
async fn two_packets_in_one_frame() {
    let broker = ws_broker().await;
    let mut ws = raw_ws(broker.addrs[1]).await;
    let mut frame = connect_bytes(Protocol::V3_1_1, "two-in-one");
    frame.extend_from_slice(&packet_bytes(&subscribe("t/#"), Protocol::V3_1_1));
    ws.send(Message::Binary(frame.freeze()))
        .await
        .expect("send");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    let (packets, _) = read_packets(&mut ws, &mut reader, 2).await;
    assert!(is_connack_success(&packets[0]), "{packets:?}");
    assert!(
        matches!(&packets[1], Packet::SubAck(s) if s.packet_id == 1),
        "{packets:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn one_packet_split_across_three_frames() {
    let broker = ws_broker().await;
    let mut ws = raw_ws(broker.addrs[1]).await;
    let connect = connect_bytes(Protocol::V5, "split-in-three").freeze();
    let (a, b) = (connect.len() / 3, 2 * connect.len() / 3);
    for part in [&connect[..a], &connect[a..b], &connect[b..]] {
        ws.send(Message::Binary(Bytes::copy_from_slice(part)))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reader = PacketReader::new(Protocol::V5);
    let (packets, _) = read_packets(&mut ws, &mut reader, 1).await;
    assert!(is_connack_success(&packets[0]), "{packets:?}");
    broker.stop().await;
}

#[tokio::test]
async fn one_message_in_three_fragments() {
    let broker = ws_broker().await;
    let mut ws = raw_ws(broker.addrs[1]).await;
    let connect = connect_bytes(Protocol::V3_1_1, "fragments").freeze();
    let (a, b) = (connect.len() / 3, 2 * connect.len() / 3);
    let frames = [
        Frame::message(connect.slice(..a), OpCode::Data(Data::Binary), false),
        Frame::message(connect.slice(a..b), OpCode::Data(Data::Continue), false),
        Frame::message(connect.slice(b..), OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        ws.send(Message::Frame(frame)).await.expect("send");
    }
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    let (packets, _) = read_packets(&mut ws, &mut reader, 1).await;
    assert!(is_connack_success(&packets[0]), "{packets:?}");
    broker.stop().await;
}

#[tokio::test]
async fn deliveries_are_batched_into_few_messages() {
    let broker = ws_broker().await;
    let mut ws = raw_ws(broker.addrs[1]).await;
    let mut first = connect_bytes(Protocol::V3_1_1, "batched");
    first.extend_from_slice(&packet_bytes(&subscribe("batch/#"), Protocol::V3_1_1));
    ws.send(Message::Binary(first.freeze()))
        .await
        .expect("send");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    read_packets(&mut ws, &mut reader, 2).await;

    // 200 publishes reach the broker in one TCP write; the subscriber's task finds many of
    // them queued at once and flushes them together.
    const N: usize = 200;
    let (mut publisher, _) = transport_tcp_connect(broker.addrs[0], "batch-pub").await;
    let mut burst = BytesMut::new();
    for _ in 0..N {
        burst.extend_from_slice(&packet_bytes(
            &publish("batch/x", b"0123456789"),
            Protocol::V3_1_1,
        ));
    }
    publisher.write_all(&burst).await.expect("write");
    let (packets, messages) = read_packets(&mut ws, &mut reader, N).await;
    assert!(packets.iter().all(|p| matches!(p, Packet::Publish(_))));
    assert!(
        messages < N / 4,
        "{N} packets came in {messages} WebSocket messages; expected batches"
    );
    broker.stop().await;
}

/// A TCP client past CONNACK.
async fn transport_tcp_connect(addr: SocketAddr, id: &str) -> (TcpStream, PacketReader) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&connect_bytes(Protocol::V3_1_1, id))
        .await
        .expect("write");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    let mut buf = [0u8; 64];
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("CONNACK within 5 s")
            .expect("read");
        assert!(n > 0, "closed before CONNACK");
        if let Some(p) = reader.push(&buf[..n]).into_iter().next() {
            assert!(is_connack_success(&p), "{p:?}");
            return (tcp, reader);
        }
    }
}

#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let broker = ws_broker().await;
    let mut ws = raw_ws(broker.addrs[1]).await;
    ws.send(Message::Binary(
        connect_bytes(Protocol::V3_1_1, "texter").freeze(),
    ))
    .await
    .expect("send");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    read_packets(&mut ws, &mut reader, 1).await;
    ws.send(Message::Text("hello".into())).await.expect("send");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close within 5 s");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Unsupported));
    // After the close handshake the stream ends.
    let end = tokio::time::timeout(WAIT, ws.next()).await.expect("end");
    assert!(
        matches!(end, None | Some(Err(_))),
        "stream goes on: {end:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn ping_gets_pong_and_close_gets_close() {
    let broker = ws_broker().await;
    let mut ws = raw_ws(broker.addrs[1]).await;
    ws.send(Message::Binary(
        connect_bytes(Protocol::V3_1_1, "pinger").freeze(),
    ))
    .await
    .expect("send");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    read_packets(&mut ws, &mut reader, 1).await;
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, ws.next()).await.expect("pong");
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(data))) if &data[..] == b"are you there"),
        "{pong:?}"
    );
    ws.close(None).await.expect("close");
    let reply = tokio::time::timeout(WAIT, ws.next()).await.expect("reply");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    broker.stop().await;
}

/// Sends an HTTP request head and returns the response head.
async fn http_exchange(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before a response: {response:?}");
            response.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("response within 5 s");
    String::from_utf8_lossy(&response).into_owned()
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn other_paths_get_404_and_a_plain_get_gets_426() {
    let broker = ws_broker().await;
    let ws = broker.addrs[1];
    let response = http_exchange(ws, &upgrade_request("/other", "")).await;
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
    let response = http_exchange(ws, "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
    let response = http_exchange(ws, &upgrade_request("/mqtt", "")).await;
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    broker.stop().await;
}

#[tokio::test]
async fn the_chosen_subprotocol_is_echoed() {
    let broker = ws_broker().await;
    let ws = broker.addrs[1];
    let cases = [
        ("Sec-WebSocket-Protocol: mqtt\r\n", Some("mqtt")),
        ("Sec-WebSocket-Protocol: mqttv3.1\r\n", Some("mqttv3.1")),
        ("Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n", Some("mqtt")),
        ("Sec-WebSocket-Protocol: chat\r\n", None),
        ("", None),
    ];
    for (offer, chosen) in cases {
        let response = http_exchange(ws, &upgrade_request("/mqtt", offer)).await;
        assert!(response.starts_with("HTTP/1.1 101 "), "{offer}: {response}");
        assert_eq!(
            header(&response, "sec-websocket-protocol"),
            chosen,
            "{offer}"
        );
        assert_eq!(
            header(&response, "sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_configured_path_and_origin_allow_list() {
    let mut ws = listener(ListenerProtocol::Ws);
    ws.path = Some("/broker".into());
    ws.allowed_origins = vec!["https://app.example".into()];
    let broker = start(vec![ws], |_| {}).await;
    let addr = broker.addrs[0];
    let response = http_exchange(addr, &upgrade_request("/mqtt", "")).await;
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
    let response = http_exchange(
        addr,
        &upgrade_request("/broker", "Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    let response = http_exchange(
        addr,
        &upgrade_request("/broker", "Origin: https://app.example\r\n"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    // Not a browser: no Origin header.
    let response = http_exchange(addr, &upgrade_request("/broker", "")).await;
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    broker.stop().await;
}

/// The forwarded address shows in the connection's log lines; only a trusted proxy sets it.
#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy() {
    let (log, _guard) = LogCapture::install();
    let mut trusting = listener(ListenerProtocol::Ws);
    trusting.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    let broker = start(vec![trusting, listener(ListenerProtocol::Ws)], |_| {}).await;
    for (addr, id) in [
        (broker.addrs[0], "behind-proxy"),
        (broker.addrs[1], "direct"),
    ] {
        let mut request = format!("ws://{addr}/mqtt")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "X-Forwarded-For",
            "198.51.100.23, 203.0.113.7".parse().expect("header"),
        );
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("upgrade");
        ws.send(Message::Binary(
            connect_bytes(Protocol::V3_1_1, id).freeze(),
        ))
        .await
        .expect("send");
        let mut reader = PacketReader::new(Protocol::V3_1_1);
        read_packets(&mut ws, &mut reader, 1).await;
    }
    let line = log.wait_for(&["client connected", "behind-proxy"]).await;
    assert!(line.contains("forwarded_for=203.0.113.7"), "{line}");
    assert!(line.contains("peer=203.0.113.7:0"), "{line}");
    let line = log.wait_for(&["client connected", "\"direct\""]).await;
    assert!(!line.contains("forwarded_for"), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    broker.stop().await;
}
