//! The client certificate's identity in the auth chain: on a `use_identity_as_username` listener
//! a verified certificate authenticates the client without a password, and its Common Name is
//! the username the ACL file sees (not the username CONNECT claims).

mod transport;

use pigeon_backends::password_file::{PasswdFile, DEFAULT_ITERATIONS};
use pigeon_server::config::ListenerProtocol;
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, TlsConfiguration, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use transport::{client_config, start, tls_listener, MqttClient, Pki, ALL_VERSIONS, CLIENT_CN};

fn mqtts(id: &str, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// The SUBACK return codes of one SUBSCRIBE.
async fn suback(client: &mut MqttClient, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
    client
        .client
        .subscribe(filter, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("queued");
    client
        .until(|e| match e {
            rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(s)) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn the_certificate_identity_authenticates_and_names_the_acl_user() {
    let pki = Pki::new();
    let mut passwd = PasswdFile::new();
    passwd
        .set("admin", b"admin-pass", DEFAULT_ITERATIONS)
        .expect("hash");
    pki.write("passwd", &passwd.to_text());
    pki.write(
        "acl",
        &format!("user {CLIENT_CN}\ntopic readwrite devices/{CLIENT_CN}/#\n"),
    );
    let mut listener = tls_listener(ListenerProtocol::Mqtts, &pki);
    listener.tls_client_ca = Some(pki.path("ca.crt"));
    listener.tls_client_optional = true;
    listener.use_identity_as_username = true;
    let broker = start(vec![listener], |c| {
        c.auth.password_file = Some(pki.path("passwd"));
        c.auth.acl_file = Some(pki.path("acl"));
        c.auth.superusers = vec!["admin".into()];
    })
    .await;
    let addr = broker.addrs[0];
    let with_cert = client_config(&[pki.ca.der()], Some(&pki.client), ALL_VERSIONS);

    // No password needed; the claimed username (a superuser's) is replaced by the certificate's.
    let mut options = mqtts("cert", addr, Arc::clone(&with_cert));
    options.set_credentials("admin", "");
    let mut client = MqttClient::connect(options).await.expect("accepted");
    let own = format!("devices/{CLIENT_CN}/#");
    assert_eq!(
        suback(&mut client, &own).await,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    assert_eq!(
        suback(&mut client, "devices/other/#").await,
        vec![rumqttc::SubscribeReasonCode::Failure],
        "the ACL sees the certificate's name, not the superuser's"
    );

    // Without a certificate the username must come from one: refused.
    let without = client_config(&[pki.ca.der()], None, ALL_VERSIONS);
    let mut options = mqtts("no-cert", addr, without);
    options.set_credentials("admin", "admin-pass");
    match MqttClient::connect(options).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("connected without a certificate"),
    }
    broker.stop().await;
}
