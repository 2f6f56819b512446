//! Test harness: a real broker on 127.0.0.1 port 0, and a raw MQTT client built on our codec for
//! the cases a client library would not send.
#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use pigeon_codec::{encode, ByteStr, Connect, Decoder, Packet, Protocol};
use pigeon_server::config::{Config, ListenerConfig};
use pigeon_server::Server;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Broker {
    pub addr: SocketAddr,
    /// The HTTP listener's address, when the config has one.
    pub http: Option<SocketAddr>,
    pub broker: std::sync::Arc<pigeon_core::Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Broker {
    pub async fn start() -> Broker {
        Broker::start_with(|_| {}).await
    }

    /// Starts a broker on a free port with the default config changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Broker {
        let listener = ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            ..default_listener()
        };
        let mut config = Config {
            listeners: vec![listener],
            // Tests start from memory storage; a test of the store sets its own directory.
            storage: pigeon_server::config::StorageConfig {
                backend: pigeon_server::config::StorageBackend::Memory,
                ..Default::default()
            },
            // No HTTP listener: the default one binds a fixed port, which parallel tests share.
            http: None,
            ..Config::default()
        };
        // No `$SYS` reports: tests count retained messages and what wildcards get; the test of
        // `$SYS` turns them on.
        config.mqtt.sys_interval = 0;
        f(&mut config);
        let server = Server::bind(config).await.expect("bind on port 0");
        let addr = server.local_addrs()[0];
        let http = server.http_addr();
        let broker = server.broker();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        Broker {
            addr,
            http,
            broker,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Graceful shutdown, waiting for the server to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ends cleanly");
        }
    }
}

fn default_listener() -> ListenerConfig {
    Config::default()
        .listeners
        .into_iter()
        .next()
        .expect("default config has a listener")
}

/// A client that speaks through our codec over a plain socket, one packet at a time.
pub struct Raw {
    pub stream: TcpStream,
    pub protocol: Protocol,
    rbuf: BytesMut,
    decoder: Decoder,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect to broker");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            protocol,
            rbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(protocol, 16 << 20),
        }
    }

    /// Connects and completes CONNECT/CONNACK, returning the CONNACK.
    pub async fn mqtt_connect(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean_start: bool,
        f: impl FnOnce(&mut Connect),
    ) -> (Raw, Packet) {
        let mut raw = Raw::connect(addr, protocol).await;
        let mut c = Connect {
            protocol,
            clean_start,
            keep_alive: 60,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        f(&mut c);
        raw.send(&Packet::Connect(Box::new(c))).await;
        let ack = raw.recv().await.expect("CONNACK");
        (raw, ack)
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        encode(packet, self.protocol, &mut buf);
        self.stream.write_all(&buf).await.expect("write packet");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write bytes");
    }

    /// The next packet, or `None` if the broker closed the connection. Panics after 5 s.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("a packet or close within 5 s")
    }

    /// `Err(())` if nothing arrived within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        tokio::time::timeout(d, async {
            loop {
                match self.decoder.decode(&mut self.rbuf) {
                    Ok(Some(p)) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("broker sent a packet we cannot decode: {e}"),
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| ())
    }

    /// Asserts that nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(p) = self.recv_within(d).await {
            panic!("expected nothing, got {p:?}");
        }
    }
}

/// One HTTP/1.1 request (`Connection: close`): the status code and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    http_with_body(addr, method, path, token, "").await
}

/// `http` with a request body (JSON).
pub async fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}{length}\r\n{body}"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
        .await
        .expect("response within 5 s")
        .expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, body.to_owned())
}
