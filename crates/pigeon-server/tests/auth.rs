//! Authentication and ACLs end to end: password_file CONNACK codes at 3.1.1 and 5.0, the ACL
//! table of issue 6 from an acl_file, SUBACK and PUBACK refusals, superusers, deny rules at
//! delivery, failed-login bans, reloads, and the secure default beyond loopback.

mod common;
mod flows;

use common::Raw;
use flows::*;
use pigeon_backends::password_file::{PasswdFile, DEFAULT_ITERATIONS};
use pigeon_codec::{ByteStr, Packet, Protocol, QoS, ReasonCode};
use pigeon_server::config::{Config, ListenerConfig, ListenerProtocol, StorageBackend};
use pigeon_server::{Pigeon, PigeonHandle, Server};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("pigeon-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn passwords(users: &[(&str, &str)]) -> String {
    let mut file = PasswdFile::new();
    for (user, password) in users {
        file.set(user, password.as_bytes(), DEFAULT_ITERATIONS)
            .expect("hash");
    }
    file.to_text()
}

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            ListenerProtocol::Mqtt,
        )],
        http: None,
        ..Config::default()
    };
    config.storage.backend = StorageBackend::Memory;
    f(&mut config);
    config
}

async fn start(config: Config) -> (PigeonHandle, SocketAddr) {
    let handle = Pigeon::builder()
        .config(config)
        .start()
        .await
        .expect("broker starts");
    let addr = handle.local_addrs()[0];
    (handle, addr)
}

/// CONNECT with credentials; returns the connection and the CONNACK code.
async fn login(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (Raw, ReasonCode) {
    let (raw, ack) = Raw::mqtt_connect(addr, protocol, client_id, true, |c| {
        c.username = user.map(ByteStr::from);
        c.password = password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    })
    .await;
    match ack {
        Packet::ConnAck(ack) => (raw, ack.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn logged_in(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    user: &str,
    password: &str,
) -> Raw {
    let (raw, code) = login(addr, protocol, client_id, Some(user), Some(password)).await;
    assert_eq!(code, ReasonCode::SUCCESS, "{user} logs in");
    raw
}

const V3: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

#[tokio::test]
async fn password_file_accepts_and_refuses_with_the_right_codes() {
    let dir = Dir::new("codes");
    let pw = dir.write("passwd", &passwords(&[("alice", "secret")]));
    let (handle, addr) = start(config(|c| c.auth.password_file = Some(pw))).await;
    // (protocol, bad credentials, not authorized)
    for (protocol, bad, not_authorized) in [
        (
            V3,
            ReasonCode::V3_BAD_USER_NAME_OR_PASSWORD,
            ReasonCode::V3_NOT_AUTHORIZED,
        ),
        (
            V5,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ReasonCode::NOT_AUTHORIZED,
        ),
    ] {
        let (_, ok) = login(addr, protocol, "a", Some("alice"), Some("secret")).await;
        assert_eq!(ok, ReasonCode::SUCCESS, "{protocol:?}");
        let (mut raw, code) = login(addr, protocol, "b", Some("alice"), Some("wrong")).await;
        assert_eq!(code, bad, "{protocol:?} wrong password");
        assert!(raw.recv().await.is_none(), "closed after the refusal");
        let (_, code) = login(addr, protocol, "c", Some("mallory"), Some("secret")).await;
        assert_eq!(code, bad, "{protocol:?} unknown user");
        let (_, code) = login(addr, protocol, "d", Some("alice"), None).await;
        assert_eq!(code, bad, "{protocol:?} no password");
        // A password file makes allow_anonymous default to false.
        let (_, code) = login(addr, protocol, "e", None, None).await;
        assert_eq!(code, not_authorized, "{protocol:?} anonymous");
    }
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn anonymous_clients_follow_allow_anonymous() {
    let (handle, addr) = start(config(|c| c.auth.allow_anonymous = Some(false))).await;
    let (_, code) = login(addr, V5, "anon", None, None).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    let (_, code) = login(addr, V3, "anon", None, None).await;
    assert_eq!(code, ReasonCode::V3_NOT_AUTHORIZED);
    handle.stop().await.expect("stops");
    // Loopback only, nothing configured: open, as before auth existed.
    let (handle, addr) = start(config(|_| {})).await;
    let (_, code) = login(addr, V5, "anon", None, None).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    handle.stop().await.expect("stops");
}

/// The ACL table of issue 6 (1 = read, 2 = write, 3 = both), as an acl_file.
const TABLE_ACL: &str = "\
# id | username | topic              | rw
#  1 | client   | /p/client/upload   | 2
#  2 | server   | /p/client/upload   | 3
#  3 | client   | /p/client/download | 1
#  4 | server   | /p/client/download | 3
user client
topic write /p/client/upload
topic read /p/client/download
topic readwrite end

user server
topic readwrite /p/client/upload
topic readwrite /p/client/download
topic readwrite /p/server/#
topic readwrite end
";

#[tokio::test]
async fn the_issue_table_end_to_end() {
    let dir = Dir::new("table");
    let pw = dir.write(
        "passwd",
        &passwords(&[("client", "c-pass"), ("server", "s-pass")]),
    );
    let acl = dir.write("acl", TABLE_ACL);
    let (handle, addr) = start(config(|c| {
        c.auth.password_file = Some(pw);
        c.auth.acl_file = Some(acl);
    }))
    .await;
    for protocol in [V3, V5] {
        let v5 = protocol.is_v5();
        let denied = if v5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::UNSPECIFIED_ERROR
        };
        let mut client = logged_in(addr, protocol, "dev-1", "client", "c-pass").await;
        let mut server = logged_in(addr, protocol, "backend", "server", "s-pass").await;

        // SUBSCRIBE: read rights only; one SUBSCRIBE may mix granted and refused filters.
        let codes = subscribe_all(
            &mut client,
            &[
                ("/p/client/download", qos(QoS::AtLeastOnce)),
                ("/p/client/upload", qos(QoS::AtLeastOnce)),
                ("/p/server/#", qos(QoS::AtLeastOnce)),
                ("/p/+/download", qos(QoS::AtLeastOnce)),
                ("end", qos(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
        assert_eq!(
            codes,
            vec![
                ReasonCode::GRANTED_QOS_1,
                denied,
                denied,
                denied,
                ReasonCode::GRANTED_QOS_1
            ],
            "{protocol:?} client SUBACK"
        );
        let codes = subscribe_all(
            &mut server,
            &[
                ("/p/client/upload", qos(QoS::AtLeastOnce)),
                ("end", qos(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
        assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_1; 2], "{protocol:?}");
        // The server user reads both topics (a second connection, so it does not receive its
        // own publishes below).
        let mut watcher = logged_in(addr, protocol, "backend-2", "server", "s-pass").await;
        let codes = subscribe_all(
            &mut watcher,
            &[
                ("/p/client/download", qos(QoS::AtLeastOnce)),
                ("/p/client/upload", qos(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
        assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_1; 2], "{protocol:?}");

        // The client may write upload, not download.
        let ack = publish(
            &mut client,
            message("/p/client/upload", b"up", QoS::AtLeastOnce),
        )
        .await
        .expect("PUBACK");
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        let ack = publish(
            &mut client,
            message("/p/client/download", b"forged", QoS::AtLeastOnce),
        )
        .await
        .expect("PUBACK");
        // 5.0 says Not authorized; 3.1.1 acknowledges and drops, as mosquitto does.
        assert_eq!(
            ack.reason,
            if v5 {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            }
        );
        let rec = publish(
            &mut client,
            message("/p/client/download", b"forged2", QoS::ExactlyOnce),
        )
        .await
        .expect("PUBREC");
        assert_eq!(rec.reason.is_error(), v5, "{protocol:?} QoS 2 refusal");
        let got = received(&mut client, &mut server).await;
        assert_eq!(payloads(&got), vec!["up"], "{protocol:?} server got");
        // The client is subscribed to the sentinel too: its own copy comes back alone.
        assert!(until_sentinel(&mut client).await.is_empty());

        // The server may write download; the client reads it.
        publish_q1(&mut server, "/p/client/download", b"down").await;
        let got = received(&mut server, &mut client).await;
        assert_eq!(payloads(&got), vec!["down"], "{protocol:?} client got");
        let got = exactly(&mut watcher, 2).await;
        assert_eq!(
            payloads(&got),
            vec!["up", "down"],
            "{protocol:?} watcher got"
        );
    }
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn superusers_skip_the_acl_and_deny_rules_apply_at_delivery() {
    let dir = Dir::new("super");
    let pw = dir.write(
        "passwd",
        &passwords(&[("admin", "a-pass"), ("reader", "r-pass")]),
    );
    let acl = dir.write(
        "acl",
        "user reader\ntopic read public/#\ntopic deny public/secret\ntopic read end\n",
    );
    let (handle, addr) = start(config(|c| {
        c.auth.password_file = Some(pw);
        c.auth.acl_file = Some(acl);
        c.auth.superusers = vec!["admin".into()];
    }))
    .await;
    let mut admin = logged_in(addr, V5, "admin-1", "admin", "a-pass").await;
    subscribe(&mut admin, "#", QoS::AtLeastOnce).await;
    let mut reader = logged_in(addr, V5, "reader-1", "reader", "r-pass").await;
    // Granted: public/# lies inside a read rule; the deny rule covers only part of it.
    subscribe(&mut reader, "public/#", QoS::AtLeastOnce).await;
    subscribe_sentinel(&mut reader).await;
    let codes = subscribe_all(
        &mut reader,
        &[("public/secret", qos(QoS::AtMostOnce))],
        None,
    )
    .await;
    assert_eq!(codes, vec![ReasonCode::NOT_AUTHORIZED]);
    let ack = publish(&mut reader, message("public/x", b"no", QoS::AtLeastOnce))
        .await
        .expect("PUBACK");
    assert_eq!(
        ack.reason,
        ReasonCode::NOT_AUTHORIZED,
        "reader has no write"
    );

    let mut publisher = logged_in(addr, V5, "admin-2", "admin", "a-pass").await;
    publish_q1(&mut publisher, "public/news", b"news").await;
    publish_q1(&mut publisher, "public/secret", b"secret").await;
    let got = received(&mut publisher, &mut reader).await;
    assert_eq!(
        payloads(&got),
        vec!["news"],
        "the denied topic is not delivered"
    );
    // The admin (subscribed to #) got everything, sentinel included.
    let got = exactly(&mut admin, 3).await;
    assert_eq!(payloads(&got), vec!["news", "secret", ""]);
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn failed_logins_ban_the_address_for_a_while() {
    let dir = Dir::new("ban");
    let pw = dir.write("passwd", &passwords(&[("alice", "secret")]));
    let (handle, addr) = start(config(|c| {
        c.auth.password_file = Some(pw);
        c.auth.max_login_failures = 3;
        c.auth.login_failure_window = 60;
        c.auth.login_ban_time = 1;
    }))
    .await;
    for i in 0..3 {
        let (_, code) = login(addr, V5, &format!("g{i}"), Some("alice"), Some("guess")).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    // Banned: even the right password is refused until the ban ends.
    let (_, code) = login(addr, V5, "ok", Some("alice"), Some("secret")).await;
    assert_eq!(code, ReasonCode::BANNED);
    let (_, code) = login(addr, V3, "ok", Some("alice"), Some("secret")).await;
    assert_eq!(code, ReasonCode::V3_NOT_AUTHORIZED);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, code) = login(addr, V5, "ok", Some("alice"), Some("secret")).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn reload_reads_password_and_acl_files_again_and_keeps_them_on_error() {
    let dir = Dir::new("reload");
    let pw = dir.write("passwd", &passwords(&[("alice", "one")]));
    let acl = dir.write("acl", "user alice\ntopic readwrite a/#\n");
    let (handle, addr) = start(config(|c| {
        c.auth.password_file = Some(pw.clone());
        c.auth.acl_file = Some(acl.clone());
    }))
    .await;
    let (_, code) = login(addr, V5, "x", Some("bob"), Some("two")).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);

    std::fs::write(&pw, passwords(&[("alice", "one"), ("bob", "two")])).expect("write");
    std::fs::write(&acl, "user alice\ntopic readwrite b/#\n").expect("write");
    handle.reload().expect("reload succeeds");
    let _ = logged_in(addr, V5, "x", "bob", "two").await;
    let mut alice = logged_in(addr, V5, "y", "alice", "one").await;
    let codes = subscribe_all(
        &mut alice,
        &[("a/1", qos(QoS::AtMostOnce)), ("b/1", qos(QoS::AtMostOnce))],
        None,
    )
    .await;
    assert_eq!(
        codes,
        vec![ReasonCode::NOT_AUTHORIZED, ReasonCode::GRANTED_QOS_0]
    );

    // A broken ACL file and a missing password file: the reload fails, the old data stays.
    std::fs::write(&acl, "user alice\ntopic sometimes b/#\n").expect("write");
    std::fs::remove_file(&pw).expect("remove");
    let error = handle.reload().expect_err("reload fails").to_string();
    assert!(
        error.contains("password_file") && error.contains("acl_file"),
        "{error}"
    );
    assert!(
        error.contains(":2: `sometimes` is not an access type"),
        "{error}"
    );
    let _ = logged_in(addr, V5, "x", "bob", "two").await;
    let codes = subscribe_all(&mut alice, &[("b/2", qos(QoS::AtMostOnce))], None).await;
    assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_0]);
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn a_listener_beyond_loopback_without_auth_does_not_start() {
    let open = |f: fn(&mut Config)| {
        config(move |c| {
            c.listeners[0].bind = "0.0.0.0:0".parse().expect("address");
            f(c);
        })
    };
    let error = match Server::bind(open(|_| {})).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an open broker must not start by default"),
    };
    assert!(
        error.starts_with("[auth] allow_anonymous: listener 0.0.0.0:0 is not on loopback"),
        "{error}"
    );
    let server = Server::bind(open(|c| c.auth.allow_anonymous = Some(true)))
        .await
        .expect("allowed on purpose");
    drop(server);
    let dir = Dir::new("open");
    let pw = dir.write("passwd", &passwords(&[("a", "b")]));
    let config = config(|c| {
        c.listeners[0].bind = "0.0.0.0:0".parse().expect("address");
        c.auth.password_file = Some(pw);
    });
    drop(Server::bind(config).await.expect("authenticated"));
}

#[tokio::test]
async fn missing_or_invalid_files_stop_the_start_with_their_name() {
    let dir = Dir::new("missing");
    let error = match Server::bind(config(|c| {
        c.auth.password_file = Some(Path::new("/nonexistent/passwd").into())
    }))
    .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("must not start"),
    };
    assert_eq!(
        error,
        "[auth] password_file: cannot read /nonexistent/passwd: No such file or directory (os error 2)"
    );
    let acl = dir.write("acl", "topic read a\nuser\n");
    let error = match Server::bind(config(|c| c.auth.acl_file = Some(acl.clone()))).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("must not start"),
    };
    assert_eq!(
        error,
        format!(
            "[auth] acl_file: {}:2: `user` needs a username",
            acl.display()
        )
    );
}
