//! MQTT over TLS (`mqtts`) and WebSocket over TLS (`wss`) with certificates made by rcgen:
//! rumqttc's TLS and WSS transports, TLS 1.2 and 1.3, required and optional client
//! certificates, the certificate's Common Name as username, and reload without dropping
//! connections (through the reload handle and through SIGHUP).

mod transport;

use pigeon_codec::{Packet, Protocol, ReasonCode};
use pigeon_server::config::{Config, ListenerProtocol};
use pigeon_server::Server;
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, TlsConfiguration, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::{
    client_config, connect_bytes, listener, start, tls_connect, tls_listener, Ca, Issued,
    LogCapture, MqttClient, PacketReader, Pki, ALL_VERSIONS, CLIENT_CN,
};

const WAIT: Duration = Duration::from_secs(5);

fn mqtts_options(id: &str, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    options.set_keep_alive(Duration::from_secs(30));
    options
}

fn wss_options(id: &str, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut options = MqttOptions::new(id, format!("wss://{addr}/mqtt"), addr.port());
    options.set_transport(Transport::Wss(TlsConfiguration::Rustls(tls)));
    options.set_keep_alive(Duration::from_secs(30));
    options
}

async fn connected(options: MqttOptions, filter: Option<&str>) -> MqttClient {
    let mut client = MqttClient::connect(options).await.expect("CONNACK");
    if let Some(filter) = filter {
        client.subscribe(filter).await;
    }
    client
}

/// Connecting fails: the error that ended the attempt.
async fn refused(options: MqttOptions) -> ConnectionError {
    match MqttClient::connect(options).await {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    }
}

fn trusting(pki: &Pki, client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    client_config(&[pki.ca.der()], client, ALL_VERSIONS)
}

#[tokio::test]
async fn mqtts_and_wss_clients_exchange_messages_with_a_tcp_client() {
    let pki = Pki::new();
    let broker = start(
        vec![
            listener(ListenerProtocol::Mqtt),
            tls_listener(ListenerProtocol::Mqtts, &pki),
            tls_listener(ListenerProtocol::Wss, &pki),
        ],
        |_| {},
    )
    .await;
    let [tcp, mqtts, wss] = broker.addrs[..] else {
        panic!("three listeners")
    };
    let mut mqtts_client = connected(
        mqtts_options("mqtts-1", mqtts, trusting(&pki, None)),
        Some("news/#"),
    )
    .await;
    let mut wss_client = connected(
        wss_options("wss-1", wss, trusting(&pki, None)),
        Some("news/#"),
    )
    .await;
    let mut tcp_client = connected(
        MqttOptions::new("tcp-1", tcp.ip().to_string(), tcp.port()),
        Some("news/#"),
    )
    .await;

    tcp_client
        .publish("news/1", rumqttc::QoS::AtLeastOnce, "from tcp")
        .await;
    assert_eq!(&mqtts_client.next_payload(None).await[..], b"from tcp");
    assert_eq!(&wss_client.next_payload(None).await[..], b"from tcp");

    wss_client
        .publish("news/2", rumqttc::QoS::ExactlyOnce, vec![1u8; 70_000])
        .await;
    let got = tcp_client.next_payload(Some(70_000)).await;
    assert!(got.iter().all(|b| *b == 1));
    let got = mqtts_client.next_payload(Some(70_000)).await;
    assert!(got.iter().all(|b| *b == 1));
    broker.stop().await;
}

/// CONNECT over an established TLS stream; returns the CONNACK's code.
async fn connack_over<S>(stream: &mut S, id: &str) -> ReasonCode
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(&connect_bytes(Protocol::V3_1_1, id))
        .await
        .expect("write");
    let mut reader = PacketReader::new(Protocol::V3_1_1);
    let mut buf = [0u8; 64];
    tokio::time::timeout(WAIT, async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before CONNACK");
            if let Some(Packet::ConnAck(ack)) = reader.push(&buf[..n]).into_iter().next() {
                return ack.code;
            }
        }
    })
    .await
    .expect("CONNACK within 5 s")
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_accepted() {
    let pki = Pki::new();
    let broker = start(vec![tls_listener(ListenerProtocol::Mqtts, &pki)], |_| {}).await;
    let cases = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (version, expected) in cases {
        let config = client_config(&[pki.ca.der()], None, &[version]);
        let mut stream = tls_connect(broker.addrs[0], config)
            .await
            .expect("handshake");
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(
            connack_over(&mut stream, "versions").await,
            ReasonCode::SUCCESS
        );
    }
    broker.stop().await;
}

fn client_ca_listener(
    protocol: ListenerProtocol,
    pki: &Pki,
    optional: bool,
) -> pigeon_server::config::ListenerConfig {
    let mut l = tls_listener(protocol, pki);
    l.tls_client_ca = Some(pki.path("ca.crt"));
    l.tls_client_optional = optional;
    l
}

#[tokio::test]
async fn a_required_client_certificate_is_checked() {
    let pki = Pki::new();
    let broker = start(
        vec![
            client_ca_listener(ListenerProtocol::Mqtts, &pki, false),
            client_ca_listener(ListenerProtocol::Wss, &pki, false),
        ],
        |_| {},
    )
    .await;
    let [mqtts, wss] = broker.addrs[..] else {
        panic!("two listeners")
    };
    // Signed by the CA: accepted on both.
    connected(
        mqtts_options("good", mqtts, trusting(&pki, Some(&pki.client))),
        None,
    )
    .await;
    connected(
        wss_options("good-ws", wss, trusting(&pki, Some(&pki.client))),
        None,
    )
    .await;
    // No certificate, or one from another CA: refused during the handshake.
    for (id, cert) in [("none", None), ("rogue", Some(&pki.rogue_client))] {
        for options in [
            mqtts_options(id, mqtts, trusting(&pki, cert)),
            wss_options(id, wss, trusting(&pki, cert)),
        ] {
            refused(options).await;
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_optional_client_certificate_is_still_verified() {
    let pki = Pki::new();
    let broker = start(
        vec![client_ca_listener(ListenerProtocol::Mqtts, &pki, true)],
        |_| {},
    )
    .await;
    let addr = broker.addrs[0];
    connected(
        mqtts_options("with", addr, trusting(&pki, Some(&pki.client))),
        None,
    )
    .await;
    connected(mqtts_options("without", addr, trusting(&pki, None)), None).await;
    refused(mqtts_options(
        "rogue",
        addr,
        trusting(&pki, Some(&pki.rogue_client)),
    ))
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn the_certificate_common_name_becomes_the_username() {
    let (log, _guard) = LogCapture::install();
    let pki = Pki::new();
    let mut l = client_ca_listener(ListenerProtocol::Mqtts, &pki, true);
    l.use_identity_as_username = true;
    let mut w = client_ca_listener(ListenerProtocol::Wss, &pki, true);
    w.use_identity_as_username = true;
    let broker = start(vec![l, w], |_| {}).await;
    let [mqtts, wss] = broker.addrs[..] else {
        panic!("two listeners")
    };

    let mut options = mqtts_options("cert-user", mqtts, trusting(&pki, Some(&pki.client)));
    options.set_credentials("impostor", "secret");
    connected(options, None).await;
    let line = log.wait_for(&["client connected", "\"cert-user\""]).await;
    assert!(
        line.contains(&format!("username=\"{CLIENT_CN}\""))
            || line.contains(&format!("username={CLIENT_CN}")),
        "{line}"
    );
    assert!(!line.contains("impostor"), "{line}");

    connected(
        wss_options("cert-user-ws", wss, trusting(&pki, Some(&pki.client))),
        None,
    )
    .await;
    let line = log
        .wait_for(&["client connected", "\"cert-user-ws\""])
        .await;
    assert!(line.contains(CLIENT_CN), "{line}");

    // The certificate is optional on this listener, but the username must come from one.
    match refused(mqtts_options("no-cert", mqtts, trusting(&pki, None))).await {
        ConnectionError::ConnectionRefused(code) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    broker.stop().await;
}

/// A server certificate from a new CA is written over the files.
fn rotate(pki: &Pki) -> Ca {
    let new_ca = Ca::new("Pigeon test CA 2");
    let server = new_ca.server("pigeon-test-server-2");
    pki.write("server.crt", &server.cert_pem);
    pki.write("server.key", &server.key_pem);
    new_ca
}

/// Whether a client trusting only `ca` completes a TLS handshake and CONNECT.
async fn accepted_with(addr: SocketAddr, ca: &Ca) -> bool {
    let config = client_config(&[ca.der()], None, ALL_VERSIONS);
    match tls_connect(addr, config).await {
        Ok(mut stream) => connack_over(&mut stream, "probe").await == ReasonCode::SUCCESS,
        Err(_) => false,
    }
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let pki = Pki::new();
    let broker = start(
        vec![
            listener(ListenerProtocol::Mqtt),
            tls_listener(ListenerProtocol::Mqtts, &pki),
        ],
        |_| {},
    )
    .await;
    let [tcp, mqtts] = broker.addrs[..] else {
        panic!("two listeners")
    };
    let mut old = connected(
        mqtts_options("before-reload", mqtts, trusting(&pki, None)),
        Some("r/#"),
    )
    .await;

    let new_ca = rotate(&pki);
    assert!(
        accepted_with(mqtts, &pki.ca).await,
        "nothing changes before the reload"
    );
    broker.reloader.reload().expect("reload");
    assert!(
        accepted_with(mqtts, &new_ca).await,
        "new certificate after the reload"
    );
    assert!(!accepted_with(mqtts, &pki.ca).await, "old certificate gone");

    // A reload that fails keeps the certificates in use.
    pki.write("server.key", "not a key\n");
    let error = broker.reloader.reload().expect_err("a bad key fails");
    assert!(error.to_string().contains("server.key"), "{error}");
    assert!(
        accepted_with(mqtts, &new_ca).await,
        "still the new certificate"
    );

    // The connection made before the reloads is still up.
    let tcp_client = connected(
        MqttOptions::new("pub", tcp.ip().to_string(), tcp.port()),
        None,
    )
    .await;
    tcp_client
        .publish("r/1", rumqttc::QoS::AtLeastOnce, "still here")
        .await;
    assert_eq!(&old.next_payload(None).await[..], b"still here");
    broker.stop().await;
}

#[tokio::test]
async fn sighup_reloads_certificates() {
    let pki = Pki::new();
    let broker = start(vec![tls_listener(ListenerProtocol::Mqtts, &pki)], |_| {}).await;
    let addr = broker.addrs[0];
    // A completed connection shows `run` has installed the SIGHUP handler: before it, SIGHUP
    // would end the test process.
    assert!(accepted_with(addr, &pki.ca).await);
    let new_ca = rotate(&pki);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !accepted_with(addr, &new_ca).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate not reloaded 5 s after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_start_with_their_name() {
    let pki = Pki::new();
    let bind = |l: pigeon_server::config::ListenerConfig| async move {
        let config = Config {
            listeners: vec![l],
            http: None,
            storage: pigeon_server::config::StorageConfig {
                backend: pigeon_server::config::StorageBackend::Memory,
                ..Default::default()
            },
            ..Config::default()
        };
        match Server::bind(config).await {
            Ok(_) => panic!("bind succeeded"),
            Err(e) => e.to_string(),
        }
    };
    let mut missing = tls_listener(ListenerProtocol::Mqtts, &pki);
    missing.tls_cert = Some(pki.path("nope.crt"));
    let message = bind(missing).await;
    assert!(
        message.contains("tls_cert") && message.contains("nope.crt"),
        "{message}"
    );

    pki.write("empty.key", "");
    let mut no_key = tls_listener(ListenerProtocol::Wss, &pki);
    no_key.tls_key = Some(pki.path("empty.key"));
    let message = bind(no_key).await;
    assert!(message.contains("holds no private key"), "{message}");

    let mut bad_ca = tls_listener(ListenerProtocol::Mqtts, &pki);
    bad_ca.tls_client_ca = Some(pki.path("server.key"));
    let message = bind(bad_ca).await;
    assert!(message.contains("tls_client_ca"), "{message}");
}
