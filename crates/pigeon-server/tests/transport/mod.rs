//! What the ws, tls and flood tests share: a broker with any set of listeners on 127.0.0.1 port
//! 0, test certificates made with rcgen, TLS client configs, raw WebSocket clients, and a log
//! capture for facts only the log shows (the client's forwarded address, a certificate username).
#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use pigeon_codec::{encode, ByteStr, Connect, Decoder, Packet, Protocol};
use pigeon_server::config::{Config, ListenerConfig, ListenerProtocol};
use pigeon_server::{Server, TlsReloader};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CLIENT_CN: &str = "device-42";

/// A running broker; `addrs[i]` is the bound address of `listeners[i]`.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub reloader: TlsReloader,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ends cleanly");
        }
    }
}

/// A listener on 127.0.0.1 port 0.
pub fn listener(protocol: ListenerProtocol) -> ListenerConfig {
    ListenerConfig::new("127.0.0.1:0".parse().expect("address"), protocol)
}

/// A TLS listener using `pki`'s server certificate.
pub fn tls_listener(protocol: ListenerProtocol, pki: &Pki) -> ListenerConfig {
    let mut l = listener(protocol);
    l.tls_cert = Some(pki.path("server.crt"));
    l.tls_key = Some(pki.path("server.key"));
    l
}

/// Starts a broker with these listeners, no HTTP listener, and `f` applied to the config.
pub async fn start(listeners: Vec<ListenerConfig>, f: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config {
        listeners,
        http: None,
        // Memory storage: tests run in parallel and must not share a store directory.
        storage: pigeon_server::config::StorageConfig {
            backend: pigeon_server::config::StorageBackend::Memory,
            ..Default::default()
        },
        ..Config::default()
    };
    f(&mut config);
    let server = Server::bind(config).await.expect("bind on port 0");
    let addrs = server.local_addrs();
    let http = server.http_addr();
    let reloader = server.tls_reloader();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
    });
    Running {
        addrs,
        http,
        reloader,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A directory under the system temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pigeon-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, DER.
pub struct Issued {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that issues server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, cn: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with this Common Name.
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Test PKI on disk: `ca.crt` (signs the server and the clients), `server.crt`, `server.key`;
/// `client` is signed by `ca`, `rogue_client` by another CA.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
    pub client: Issued,
    pub rogue_client: Issued,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let ca = Ca::new("Pigeon test CA");
        let server = ca.server("pigeon-test-server");
        let client = ca.client(CLIENT_CN);
        let rogue_client = Ca::new("Rogue CA").client(CLIENT_CN);
        let pki = Pki {
            dir,
            ca,
            client,
            rogue_client,
        };
        pki.write("ca.crt", &pki.ca.pem());
        pki.write("server.crt", &server.cert_pem);
        pki.write("server.key", &server.key_pem);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) {
        write_atomically(&self.path(name), contents);
    }
}

/// Replaces a file in one step, so a reload never reads half of it.
pub fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls client config trusting `roots`, with an optional client certificate, limited to
/// `versions`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    client: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(store);
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert.clone()], c.key.clone_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

pub const ALL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS connection to `addr` (server name 127.0.0.1).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A CONNECT packet's bytes.
pub fn connect_bytes(protocol: Protocol, client_id: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    encode(&Packet::Connect(Box::new(connect)), protocol, &mut buf);
    buf
}

pub fn packet_bytes(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf);
    buf
}

/// Decodes MQTT packets from bytes that arrive in pieces.
pub struct PacketReader {
    buf: BytesMut,
    decoder: Decoder,
}

impl PacketReader {
    pub fn new(protocol: Protocol) -> PacketReader {
        PacketReader {
            buf: BytesMut::new(),
            decoder: Decoder::with_protocol(protocol, 16 << 20),
        }
    }

    /// Adds bytes and returns the packets now whole.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Packet> {
        self.buf.extend_from_slice(bytes);
        let mut packets = Vec::new();
        while let Some(p) = self.decoder.decode(&mut self.buf).expect("valid packet") {
            packets.push(p);
        }
        packets
    }
}

/// Log lines written while the guard lives, on this thread (tests using it run on a
/// current-thread runtime, so the broker's tasks log here too).
///
/// One global subscriber takes every test's events and hands each to the capture of the thread
/// it happened on, if any: a per-test (`set_default`) subscriber misses events whose callsites
/// another test's thread registered first while no subscriber wanted them (tracing caches that
/// interest), which made "client connected" lines go missing now and then.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<LogCapture>> = const { std::cell::RefCell::new(None) };
}

/// Stops this thread's capture when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

/// Writes to the capture of the thread the event happened on; elsewhere, nowhere.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(capture) = &*c.borrow() {
                capture.0.lock().expect("log lock").extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn install() -> (LogCapture, CaptureGuard) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber");
        });
        let capture = LogCapture::default();
        CAPTURING.with(|c| *c.borrow_mut() = Some(capture.clone()));
        (capture, CaptureGuard(()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }

    /// Waits up to 5 s for a line containing every one of `parts`, and returns it.
    pub async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no log line with {parts:?} in:\n{text}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A rumqttc client whose event loop runs in its own task once connected, so that several
/// clients make progress while a test waits on one of them.
pub struct MqttClient {
    pub client: rumqttc::AsyncClient,
    events: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Event>,
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl MqttClient {
    /// Connects; the error is the one that ended the attempt (refusal, TLS, I/O).
    pub async fn connect(
        mut options: rumqttc::MqttOptions,
    ) -> Result<MqttClient, rumqttc::ConnectionError> {
        options.set_keep_alive(std::time::Duration::from_secs(30));
        // rumqttc's default is 10 KiB each way; tests send larger packets.
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await? {
                    rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_)) => {
                        return Ok::<(), rumqttc::ConnectionError>(())
                    }
                    _ => continue,
                }
            }
        })
        .await
        .expect("CONNACK or an error within 5 s")?;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(MqttClient { client, events })
    }

    /// Waits for an event `want` accepts.
    pub async fn until<T>(&mut self, mut want: impl FnMut(&rumqttc::Event) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let event = self.events.recv().await.expect("connection stays up");
                if let Some(found) = want(&event) {
                    return found;
                }
            }
        })
        .await
        .expect("event within 5 s")
    }

    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("queued");
        self.until(|e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))).then_some(())
        })
        .await;
    }

    pub async fn publish(&self, topic: &str, qos: rumqttc::QoS, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .expect("queued");
    }

    /// The payload of the next PUBLISH of `len` bytes (any length when `None`).
    pub async fn next_payload(&mut self, len: Option<usize>) -> bytes::Bytes {
        self.until(|e| match e {
            rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))
                if len.is_none_or(|n| p.payload.len() == n) =>
            {
                Some(p.payload.clone())
            }
            _ => None,
        })
        .await
    }
}
