//! The external auth backends end to end over MQTT, against real services this test starts on
//! 127.0.0.1 (see `services`): PostgreSQL and Redis serving the ACL table of issue 6, an HTTP
//! auth service written here (and the broker failing closed once it is stopped), and JSON Web
//! Tokens (HS256 and RS256 accepted; a bad signature and an expired token refused).

mod common;
mod flows;
mod services;

use common::Raw;
use flows::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pigeon_backends::password_file::{PasswordHash, DEFAULT_ITERATIONS};
use pigeon_codec::{ByteStr, Packet, Protocol, QoS, ReasonCode};
use pigeon_server::config::{
    Config, HttpAuthConfig, JwtAuthConfig, ListenerConfig, ListenerProtocol, PostgresAuthConfig,
    RedisAuthConfig, StorageBackend, WebhookConfig,
};
use pigeon_server::{Pigeon, PigeonHandle};
use serde_json::{json, Value};
use services::{PostgresServer, RedisServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const V3: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

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
    // These tests refuse many logins on purpose; no ban of 127.0.0.1 in between.
    config.auth.max_login_failures = 0;
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

/// CONNECT with credentials; the connection and the CONNACK code.
async fn login(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    user: Option<&str>,
    password: &str,
) -> (Raw, ReasonCode) {
    let (raw, ack) = Raw::mqtt_connect(addr, protocol, client_id, true, |c| {
        c.username = user.map(ByteStr::from);
        c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
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
    let (raw, code) = login(addr, protocol, client_id, Some(user), password).await;
    assert_eq!(code, ReasonCode::SUCCESS, "{user} logs in ({protocol:?})");
    raw
}

/// The PUBACK code of a QoS 1 PUBLISH; 5.0's "No matching subscribers" counts as success.
async fn puback(raw: &mut Raw, topic: &str) -> ReasonCode {
    let code = publish(raw, message(topic, b"x", QoS::AtLeastOnce))
        .await
        .expect("PUBACK")
        .reason;
    if code == ReasonCode::NO_MATCHING_SUBSCRIBERS {
        ReasonCode::SUCCESS
    } else {
        code
    }
}

fn hash(password: &str) -> String {
    PasswordHash::new_pbkdf2(password.as_bytes(), DEFAULT_ITERATIONS)
        .expect("hash")
        .to_string()
}

/// Refusal codes: (bad credentials, not authorized) for CONNACK.
fn refusals(protocol: Protocol) -> (ReasonCode, ReasonCode) {
    if protocol.is_v5() {
        (
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ReasonCode::NOT_AUTHORIZED,
        )
    } else {
        (
            ReasonCode::V3_BAD_USER_NAME_OR_PASSWORD,
            ReasonCode::V3_NOT_AUTHORIZED,
        )
    }
}

/// The ACL table of issue 6 (1 = read, 2 = write, 3 = both), plus the sentinel topic the
/// delivery checks read up to, and a `%u` row.
const TABLE: &[(u32, &str, &str, u8)] = &[
    (1, "client", "/p/client/upload", 2),
    (2, "server", "/p/client/upload", 3),
    (3, "client", "/p/client/download", 1),
    (4, "server", "/p/client/download", 3),
    (5, "client", "end", 3),
    (6, "server", "end", 3),
    (7, "client", "users/%u/#", 3),
    (8, "server", "users/%u/#", 3),
];

/// Users: `client`, `server`, and `admin`, a superuser.
const USERS: &[(&str, &str, bool)] = &[
    ("client", "c-pass", false),
    ("server", "s-pass", false),
    ("admin", "a-pass", true),
];

/// The table end to end, at 3.1.1 and 5.0: `client` writes upload, reads download, and
/// nothing else; `server` does both; deliveries follow the read rights.
async fn the_issue_table(addr: SocketAddr) {
    for protocol in [V3, V5] {
        let v5 = protocol.is_v5();
        let denied = if v5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::UNSPECIFIED_ERROR
        };
        let (bad, _) = refusals(protocol);
        let (_, code) = login(addr, protocol, "x", Some("client"), "wrong").await;
        assert_eq!(code, bad, "{protocol:?} wrong password");
        let (_, code) = login(addr, protocol, "x", Some("nobody"), "c-pass").await;
        assert_eq!(code, bad, "{protocol:?} unknown user");

        let mut client = logged_in(addr, protocol, "dev-1", "client", "c-pass").await;
        let mut server = logged_in(addr, protocol, "backend", "server", "s-pass").await;
        let codes = subscribe_all(
            &mut client,
            &[
                ("/p/client/download", qos(QoS::AtLeastOnce)),
                ("/p/client/upload", qos(QoS::AtLeastOnce)),
                ("/p/server/#", qos(QoS::AtLeastOnce)),
                ("/p/+/download", qos(QoS::AtLeastOnce)),
                ("users/server/#", qos(QoS::AtLeastOnce)),
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

        // client writes upload, not download: 5.0 says Not authorized, 3.1.1 drops it.
        assert_eq!(
            puback(&mut client, "/p/client/upload").await,
            ReasonCode::SUCCESS
        );
        let refused = if v5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        assert_eq!(puback(&mut client, "/p/client/download").await, refused);
        assert_eq!(
            puback(&mut client, "users/client/a").await,
            ReasonCode::SUCCESS
        );
        assert_eq!(puback(&mut client, "users/server/a").await, refused);
        let got = received(&mut client, &mut server).await;
        assert_eq!(
            payloads(&got).len(),
            1,
            "{protocol:?} server got the upload"
        );
        assert_eq!(got[0].topic.as_str(), "/p/client/upload");
        assert!(until_sentinel(&mut client).await.is_empty());

        // server writes download; client reads it.
        publish_q1(&mut server, "/p/client/download", b"down").await;
        let got = received(&mut server, &mut client).await;
        assert_eq!(payloads(&got), vec!["down"], "{protocol:?} client got");
        let got = exactly(&mut watcher, 2).await;
        assert_eq!(
            topics(&got),
            vec!["/p/client/download", "/p/client/upload"],
            "{protocol:?} watcher got"
        );

        // A superuser skips the ACL.
        let mut admin = logged_in(addr, protocol, "ops", "admin", "a-pass").await;
        assert_eq!(
            puback(&mut admin, "/p/client/download").await,
            ReasonCode::SUCCESS
        );
        let got = received(&mut admin, &mut client).await;
        assert_eq!(
            payloads(&got),
            vec!["x"],
            "{protocol:?} client got the admin's"
        );
    }
}

#[tokio::test]
async fn postgres_serves_the_issue_table_and_fails_closed() {
    let mut pg = PostgresServer::start().await;
    let mut sql = String::from(
        "CREATE TABLE mqtt_user (id serial PRIMARY KEY, username text UNIQUE NOT NULL, \
         password text NOT NULL, is_superuser boolean NOT NULL DEFAULT false);\n\
         CREATE TABLE mqtt_acl (id integer PRIMARY KEY, username text NOT NULL, \
         topic text NOT NULL, rw smallint NOT NULL);\n",
    );
    for (user, password, superuser) in USERS {
        sql.push_str(&format!(
            "INSERT INTO mqtt_user (username, password, is_superuser) VALUES ('{user}', '{}', {superuser});\n",
            hash(password)
        ));
    }
    for (id, user, topic, rw) in TABLE {
        sql.push_str(&format!(
            "INSERT INTO mqtt_acl VALUES ({id}, '{user}', '{topic}', {rw});\n"
        ));
    }
    pg.execute(&sql).await;

    let url = pg.url();
    let (handle, addr) = start(config(|c| {
        c.auth.postgres = Some(PostgresAuthConfig {
            url,
            timeout_ms: 2000,
            ..Default::default()
        })
    }))
    .await;
    the_issue_table(addr).await;

    // The database goes away: logins are refused as not authorized, not as bad passwords.
    pg.stop();
    for protocol in [V3, V5] {
        let (_, code) = login(addr, protocol, "late", Some("client"), "c-pass").await;
        assert_eq!(code, refusals(protocol).1, "{protocol:?} fails closed");
    }
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn postgres_queries_may_take_the_client_id() {
    let pg = PostgresServer::start().await;
    pg.execute(&format!(
        "CREATE TABLE devices (client_id text, owner text, secret text);\n\
         INSERT INTO devices VALUES ('dev-7', 'ann', '{}');\n\
         CREATE TABLE rights (client_id text, topic text, rw text);\n\
         INSERT INTO rights VALUES ('dev-7', 'dev/%c/#', '3');",
        hash("pw")
    ))
    .await;
    let url = pg.url();
    let (handle, addr) = start(config(|c| {
        c.auth.postgres = Some(PostgresAuthConfig {
            url,
            auth_query: "SELECT secret FROM devices WHERE owner = $1 AND client_id = $2".into(),
            acl_query: "SELECT topic, rw FROM rights WHERE client_id = $2 AND $1 <> ''".into(),
            ..Default::default()
        })
    }))
    .await;
    let mut dev = logged_in(addr, V5, "dev-7", "ann", "pw").await;
    assert_eq!(puback(&mut dev, "dev/dev-7/t").await, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut dev, "dev/dev-8/t").await,
        ReasonCode::NOT_AUTHORIZED
    );
    let (_, code) = login(addr, V5, "dev-8", Some("ann"), "pw").await;
    assert_eq!(
        code,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        "another device"
    );
    handle.stop().await.expect("stops");
}

async fn load_redis(redis: &RedisServer) {
    let mut c = redis.connection().await.expect("connect to the test redis");
    for (user, password, superuser) in USERS {
        let _: () = redis::cmd("HSET")
            .arg(format!("mqtt_user:{user}"))
            .arg("password")
            .arg(hash(password))
            .arg("is_superuser")
            .arg(if *superuser { "1" } else { "0" })
            .query_async(&mut c)
            .await
            .expect("HSET user");
    }
    for (_, user, topic, rw) in TABLE {
        let _: () = redis::cmd("HSET")
            .arg(format!("mqtt_acl:{user}"))
            .arg(*topic)
            .arg(*rw)
            .query_async(&mut c)
            .await
            .expect("HSET acl");
    }
}

#[tokio::test]
async fn redis_serves_the_issue_table() {
    let redis = RedisServer::start().await;
    load_redis(&redis).await;
    let url = redis.url();
    let (handle, addr) = start(config(|c| {
        c.auth.redis = Some(RedisAuthConfig {
            url,
            ..Default::default()
        })
    }))
    .await;
    the_issue_table(addr).await;
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn redis_down_fails_closed_and_recovers() {
    let mut redis = RedisServer::start().await;
    load_redis(&redis).await;
    let url = redis.url();
    let (handle, addr) = start(config(|c| {
        c.auth.redis = Some(RedisAuthConfig {
            url,
            timeout_ms: 1000,
            cache_ttl_ms: 200,
            ..Default::default()
        })
    }))
    .await;
    let mut client = logged_in(addr, V5, "dev-1", "client", "c-pass").await;
    assert_eq!(
        puback(&mut client, "/p/client/upload").await,
        ReasonCode::SUCCESS
    );

    redis.stop();
    // Once the cached rows expire, a PUBLISH needs Redis: refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        puback(&mut client, "/p/client/upload").await,
        ReasonCode::NOT_AUTHORIZED
    );
    for protocol in [V3, V5] {
        let (_, code) = login(addr, protocol, "late", Some("client"), "c-pass").await;
        assert_eq!(code, refusals(protocol).1, "{protocol:?} fails closed");
    }

    // Back (empty: no persistence), reloaded: the same connection manager reconnects.
    redis.restart().await;
    load_redis(&redis).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, code) = login(addr, V5, "again", Some("client"), "c-pass").await;
        if code == ReasonCode::SUCCESS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "logins still refused after Redis came back: {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.stop().await.expect("stops");
}

/// One request the test HTTP service received.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    authorization: Option<String>,
    body: Value,
}

/// The user's auth service: answers `/auth` and `/acl` by `answer`, records every request.
struct AuthService {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The rules of the test service.
fn answer(path: &str, body: &Value) -> (u16, String) {
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
    let allow = r#"{"result":"allow"}"#.to_owned();
    let deny = r#"{"result":"deny"}"#.to_owned();
    match path {
        "/auth" => match (field("username"), field("password")) {
            ("alice", "a-pass") => (200, allow),
            ("root", "r-pass") => (200, r#"{"result":"allow","is_superuser":true}"#.into()),
            ("plain", "p-pass") => (200, String::new()),
            ("ignored", _) => (200, r#"{"result":"ignore"}"#.into()),
            ("teapot", _) => (418, String::new()),
            _ => (200, deny),
        },
        "/events" => (200, String::new()),
        "/events-broken" => (500, String::new()),
        "/acl" => match (field("access"), field("topic")) {
            (_, "end") | ("write", "alice/out") | ("subscribe", "alice/in") => (200, allow),
            (_, "broken") => (500, String::new()),
            _ => (200, deny),
        },
        _ => (404, String::new()),
    }
}

impl AuthService {
    async fn start() -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_one(socket, Arc::clone(&seen)));
            }
        });
        AuthService {
            addr,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        let all = self.requests.lock().expect("lock");
        all.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Closes the listening socket: connections are refused from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Reads one request, answers it, closes the connection.
async fn serve_one(mut socket: tokio::net::TcpStream, seen: Arc<Mutex<Vec<Request>>>) {
    let mut buf = Vec::new();
    let (head, length) = loop {
        let mut chunk = [0u8; 4096];
        let n = match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let partial = Request {
                path: request.path.unwrap_or("").to_owned(),
                authorization: header("authorization"),
                body: Value::Null,
            };
            break ((head, partial), length);
        }
    };
    let ((start, mut request), length) = (head, length);
    while buf.len() < start + length {
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    request.body = serde_json::from_slice(&buf[start..start + length]).unwrap_or(Value::Null);
    let (status, body) = answer(&request.path, &request.body);
    seen.lock().expect("lock").push(request);
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

fn http_config(service: &AuthService) -> HttpAuthConfig {
    HttpAuthConfig {
        auth_url: Some(service.url("/auth")),
        acl_url: Some(service.url("/acl")),
        timeout_ms: 2000,
        headers: [("Authorization".to_owned(), "Bearer t0ken".to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn http_service_decides_logins_and_topics() {
    let service = AuthService::start().await;
    let http = http_config(&service);
    let (handle, addr) = start(config(|c| c.auth.http = Some(http))).await;

    for protocol in [V3, V5] {
        let (bad, _) = refusals(protocol);
        let _ = logged_in(addr, protocol, "a1", "alice", "a-pass").await;
        let _ = logged_in(addr, protocol, "p1", "plain", "p-pass").await;
        for (user, password) in [("alice", "wrong"), ("ignored", "x"), ("teapot", "x")] {
            let (_, code) = login(addr, protocol, "a2", Some(user), password).await;
            assert_eq!(code, bad, "{protocol:?} {user}");
        }
    }
    let first = &service.requests("/auth")[0];
    assert_eq!(first.authorization.as_deref(), Some("Bearer t0ken"));
    assert_eq!(
        first.body,
        json!({"clientid": "a1", "username": "alice", "password": "a-pass",
               "peerhost": "127.0.0.1", "peerport": first.body["peerport"],
               "protocol": "3.1.1"})
    );
    assert!(first.body["peerport"].as_u64().is_some_and(|p| p > 0));

    // Answers are cached: the same login again asks nothing.
    let asked = service.requests("/auth").len();
    let mut alice = logged_in(addr, V5, "a1", "alice", "a-pass").await;
    assert_eq!(service.requests("/auth").len(), asked);

    // Topics: write alice/out, subscribe alice/in, nothing else.
    assert_eq!(puback(&mut alice, "alice/out").await, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut alice, "bob/out").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        puback(&mut alice, "broken").await,
        ReasonCode::NOT_AUTHORIZED
    );
    let codes = subscribe_all(
        &mut alice,
        &[
            ("alice/in", qos(QoS::AtLeastOnce)),
            ("alice/out", qos(QoS::AtLeastOnce)),
        ],
        None,
    )
    .await;
    assert_eq!(
        codes,
        vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED]
    );
    let acl = service.requests("/acl");
    assert_eq!(
        acl[0].body,
        json!({"clientid": "a1", "username": "alice", "peerhost": "127.0.0.1",
               "topic": "alice/out", "access": "write"})
    );
    assert!(acl.iter().any(|r| r.body["access"] == "subscribe"));
    let asked = acl.len();
    assert_eq!(puback(&mut alice, "alice/out").await, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut alice, "bob/out").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(service.requests("/acl").len(), asked, "cached answers");
    // A 500 is not cached: asked again.
    assert_eq!(
        puback(&mut alice, "broken").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(service.requests("/acl").len(), asked + 1);

    // A superuser skips the ACL service.
    let mut root = logged_in(addr, V5, "r1", "root", "r-pass").await;
    assert_eq!(
        puback(&mut root, "anything/at/all").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(service.requests("/acl").len(), asked + 1);
    handle.stop().await.expect("stops");
    service.stop().await;
}

/// Every log line of this test binary. A global subscriber, not a scoped one: the tests run in
/// parallel threads, and a scoped subscriber can miss events whose callsite another thread
/// registered first.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    fn global() -> &'static LogCapture {
        static LOG: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        LOG.get_or_init(|| {
            let log = LogCapture::default();
            let writer = log.clone();
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            log
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
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

#[tokio::test]
async fn http_service_down_fails_closed() {
    let log = LogCapture::global();
    let service = AuthService::start().await;
    let auth_url = service.url("/auth");
    let http = http_config(&service);
    let (handle, addr) = start(config(|c| c.auth.http = Some(http))).await;
    let mut alice = logged_in(addr, V5, "a1", "alice", "a-pass").await;
    assert_eq!(puback(&mut alice, "alice/out").await, ReasonCode::SUCCESS);

    service.stop().await;
    for (protocol, client_id) in [(V3, "late-3"), (V5, "late-5")] {
        let (_, code) = login(addr, protocol, client_id, Some("alice"), "a-pass").await;
        assert_eq!(code, refusals(protocol).1, "{protocol:?} fails closed");
    }
    // A topic not asked before cannot be asked now.
    assert_eq!(
        puback(&mut alice, "alice/elsewhere").await,
        ReasonCode::NOT_AUTHORIZED
    );
    // The refusal names the client, the backend, the service and the error.
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("refusing CONNECT") && l.contains("late-5"))
        .unwrap_or_else(|| panic!("no refusal logged in:\n{text}"));
    assert!(
        line.contains("backend=http")
            && line.contains(&format!("http service {auth_url} unavailable"))
            && line.contains("fail closed")
            && line.to_lowercase().contains("connection refused"),
        "{line}"
    );
    handle.stop().await.expect("stops");
}

/// The bodies the service got at `path`, once there are `n`, in the order they came.
async fn events(service: &AuthService, path: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let requests = service.requests(path);
        if requests.len() >= n {
            for r in &requests {
                assert_eq!(r.authorization.as_deref(), Some("Bearer hook"), "{r:?}");
            }
            return requests.into_iter().map(|r| r.body).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} events after 10 s: {requests:?}",
            requests.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An event without what differs from run to run (times, the client's port), which must be
/// there as numbers.
fn steady(mut event: Value) -> Value {
    let action = event["action"].as_str().unwrap_or_default().to_owned();
    let map = event.as_object_mut().expect("an object");
    let volatile: &[&str] = match action.as_str() {
        "client_connected" => &["connected_at", "port"],
        "client_disconnected" => &["disconnected_at"],
        "message_publish" | "message_delivered" => &["ts"],
        _ => &[],
    };
    for key in volatile {
        assert!(
            map.remove(*key).is_some_and(|v| v.is_u64()),
            "{key} in {action}"
        );
    }
    event
}

/// `[webhook]`: each event of a client's life reaches the user's service as a JSON POST in
/// EMQX's form, with the configured header, in the order it happened; message events only for
/// the configured topics, and none for `$SYS` reports.
#[tokio::test]
async fn webhook_posts_client_session_and_message_events() {
    use pigeon_backends::webhook::Event;
    let service = AuthService::start().await;
    let (handle, addr) = start(config(|c| {
        c.webhook = Some(WebhookConfig {
            url: service.url("/events"),
            events: vec![
                Event::ClientConnected,
                Event::ClientDisconnected,
                Event::SessionSubscribed,
                Event::SessionUnsubscribed,
                Event::MessagePublish,
                Event::MessageDelivered,
            ],
            topics: vec!["t/#".to_owned()],
            headers: [("Authorization".to_owned(), "Bearer hook".to_owned())].into(),
            ..Default::default()
        });
        c.mqtt.sys_interval = 1;
    }))
    .await;
    // A `$SYS` report reaches this subscriber, and makes no event.
    let mut sys_watch = connect(addr, V5, "sys-watch").await;
    subscribe(&mut sys_watch, "$SYS/broker/uptime", QoS::AtMostOnce).await;
    assert!(next_publish(&mut sys_watch)
        .await
        .topic
        .starts_with("$SYS/"));
    let mut sub = connect(addr, V5, "hook-sub").await;
    subscribe(&mut sub, "t/#", QoS::AtLeastOnce).await;
    let mut publisher = logged_in(addr, V3, "hook-pub", "alice", "any").await;
    publish_q1(&mut publisher, "t/1", b"hello").await;
    let first = next_publish(&mut sub).await;
    ack(&mut sub, &first).await;
    let _ = publish(
        &mut publisher,
        message("t/2", &[0xff, 0x00], QoS::AtMostOnce),
    )
    .await;
    let second = next_publish(&mut sub).await;
    assert_eq!(&second.payload[..], &[0xff, 0x00]);
    // Outside `topics`: no message event.
    publish_q1(&mut publisher, "other/x", b"not for the hook").await;
    unsubscribe(&mut sub, &["t/#"]).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    drop(publisher);

    let got: Vec<Value> = events(&service, "/events", 12)
        .await
        .into_iter()
        .map(steady)
        .collect();
    let of = |client: &str| -> Vec<Value> {
        got.iter()
            .filter(|e| e["clientid"] == client || e["from_client_id"] == client)
            .cloned()
            .collect()
    };
    assert_eq!(
        of("hook-sub"),
        vec![
            json!({"action": "client_connected", "clientid": "hook-sub", "username": null,
                   "ipaddress": "127.0.0.1", "keepalive": 60, "proto_ver": 5, "node": "pigeon"}),
            json!({"action": "session_subscribed", "clientid": "hook-sub", "username": null,
                   "topic": "t/#", "opts": {"qos": 1, "nl": 0, "rap": 0, "rh": 0}, "node": "pigeon"}),
            json!({"action": "message_delivered", "clientid": "hook-sub", "username": null,
                   "from_client_id": "hook-pub", "from_username": null, "topic": "t/1", "qos": 1,
                   "retain": false, "payload": "hello", "node": "pigeon"}),
            json!({"action": "message_delivered", "clientid": "hook-sub", "username": null,
                   "from_client_id": "hook-pub", "from_username": null, "topic": "t/2", "qos": 0,
                   "retain": false, "payload": "/wA=", "payload_encoding": "base64",
                   "node": "pigeon"}),
            json!({"action": "session_unsubscribed", "clientid": "hook-sub", "username": null,
                   "topic": "t/#", "node": "pigeon"}),
            json!({"action": "client_disconnected", "clientid": "hook-sub", "username": null,
                   "reason": "normal", "reason_code": 0, "node": "pigeon"}),
        ]
    );
    assert_eq!(
        of("sys-watch"),
        vec![
            json!({"action": "client_connected", "clientid": "sys-watch", "username": null,
                   "ipaddress": "127.0.0.1", "keepalive": 60, "proto_ver": 5, "node": "pigeon"}),
            json!({"action": "session_subscribed", "clientid": "sys-watch", "username": null,
                   "topic": "$SYS/broker/uptime", "opts": {"qos": 0, "nl": 0, "rap": 0, "rh": 0},
                   "node": "pigeon"}),
        ]
    );
    let published: Vec<Value> = of("hook-pub")
        .into_iter()
        .filter(|e| e["action"] != "message_delivered")
        .collect();
    assert_eq!(
        published,
        vec![
            json!({"action": "client_connected", "clientid": "hook-pub", "username": "alice",
                   "ipaddress": "127.0.0.1", "keepalive": 60, "proto_ver": 4, "node": "pigeon"}),
            json!({"action": "message_publish", "from_client_id": "hook-pub",
                   "from_username": "alice", "topic": "t/1", "qos": 1, "retain": false,
                   "payload": "hello", "node": "pigeon"}),
            json!({"action": "message_publish", "from_client_id": "hook-pub",
                   "from_username": "alice", "topic": "t/2", "qos": 0, "retain": false,
                   "payload": "/wA=", "payload_encoding": "base64", "node": "pigeon"}),
            json!({"action": "client_disconnected", "clientid": "hook-pub", "username": "alice",
                   "reason": "tcp_closed", "reason_code": null, "node": "pigeon"}),
        ]
    );
    // Nothing else comes, later either: no event for the broker's own `$SYS` reports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        service.requests("/events").len(),
        12,
        "no other event: {got:?}"
    );
    handle.stop().await.expect("stops");
}

/// A service that fails does not hold clients up: events beyond the queue are dropped, failures
/// are retried then given up on, both counted in /metrics and logged with the URL. Only the
/// events configured are sent (the default: no message events).
#[tokio::test]
async fn webhook_that_fails_drops_and_counts_and_never_holds_clients_up() {
    let log = LogCapture::global();
    let service = AuthService::start().await;
    let url = service.url("/events-broken");
    let (handle, addr) = start(config(|c| {
        c.http = Some(pigeon_server::config::HttpConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            ..Default::default()
        });
        c.webhook = Some(WebhookConfig {
            url: url.clone(),
            headers: [("Authorization".to_owned(), "Bearer hook".to_owned())].into(),
            max_queued_events: 2,
            retries: 3,
            ..Default::default()
        })
    }))
    .await;
    // Each event takes 1.4 s to give up on (0.2 + 0.4 + 0.8 s between 4 attempts), 70 s for
    // all 50: clients held up by the webhook could not come and go within 20 s.
    let started = std::time::Instant::now();
    for i in 0..25 {
        let mut client = connect(addr, V5, &format!("c{i}")).await;
        publish_q1(&mut client, "x", b"not an event by default").await;
        client.send(&Packet::Disconnect(Default::default())).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "25 clients took {:?}",
        started.elapsed()
    );
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let http = handle.http_addr().expect("HTTP listener");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (_, text) = common::http(http, "GET", "/metrics", None).await;
        if metric(&text, "pigeon_webhook_queued") == 0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (sent, failed, dropped) = (
        metric(&text, "pigeon_webhook_sent_total"),
        metric(&text, "pigeon_webhook_failed_total"),
        metric(&text, "pigeon_webhook_dropped_total"),
    );
    // 25 connected and 25 disconnected events; no message event was asked for.
    assert_eq!((sent, failed + dropped), (0, 50), "{text}");
    assert!(dropped > 0 && failed > 0, "{text}");
    let requests = service.requests("/events-broken");
    assert_eq!(requests.len() as u64, failed * 4, "4 attempts per event");
    assert!(requests.iter().all(|r| r.body["action"]
        .as_str()
        .is_some_and(|a| a.starts_with("client_"))));
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("webhook: event not delivered"))
        .unwrap_or_else(|| panic!("no failure logged in:\n{text}"));
    assert!(line.contains(&url) && line.contains("500"), "{line}");
    assert!(text.contains("webhook: the queue is full"), "{text}");
    handle.stop().await.expect("stops");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign")
}

#[tokio::test]
async fn jwt_tokens_are_accepted_refused_and_grant_topics() {
    let dir = std::env::temp_dir().join(format!("pigeon-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let other_rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let public = dir.join("jwt-public.pem");
    std::fs::write(&public, rsa.public_key_pem()).expect("write the public key");
    let rs_key = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("RSA PEM");
    let wrong_rs_key =
        EncodingKey::from_rsa_pem(other_rsa.serialize_pem().as_bytes()).expect("RSA PEM");
    let hs_key = EncodingKey::from_secret(b"s3cret");
    let wrong_hs_key = EncodingKey::from_secret(b"guess");

    let jwt = JwtAuthConfig {
        secret: Some("s3cret".into()),
        public_key_file: Some(public),
        ..Default::default()
    };
    let (handle, addr) = start(config(|c| c.auth.jwt = Some(jwt))).await;
    let exp = now() + 600;
    let acl = json!({"pub": ["devices/%u/out"], "sub": ["devices/%u/in", "end"]});
    let claims = |sub: &str| json!({"sub": sub, "exp": exp, "acl": acl});

    for protocol in [V3, V5] {
        let (bad, _) = refusals(protocol);
        for (alg, key) in [(Algorithm::HS256, &hs_key), (Algorithm::RS256, &rs_key)] {
            let token = sign(alg, key, claims("ann"));
            let mut ann = logged_in(addr, protocol, "ann-1", "ann", &token).await;
            let denied = if protocol.is_v5() {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            assert_eq!(
                puback(&mut ann, "devices/ann/out").await,
                ReasonCode::SUCCESS
            );
            assert_eq!(puback(&mut ann, "devices/bob/out").await, denied, "{alg:?}");
            let codes = subscribe_all(
                &mut ann,
                &[
                    ("devices/ann/in", qos(QoS::AtMostOnce)),
                    ("devices/#", qos(QoS::AtMostOnce)),
                ],
                None,
            )
            .await;
            let sub_denied = if protocol.is_v5() {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            };
            assert_eq!(
                codes,
                vec![ReasonCode::GRANTED_QOS_0, sub_denied],
                "{alg:?}"
            );

            // Another username than the token's subject.
            let (_, code) = login(addr, protocol, "x", Some("bob"), &token).await;
            assert_eq!(code, bad, "{protocol:?} {alg:?} subject mismatch");
        }
        // Bad signatures.
        for (alg, key) in [
            (Algorithm::HS256, &wrong_hs_key),
            (Algorithm::RS256, &wrong_rs_key),
        ] {
            let token = sign(alg, key, claims("ann"));
            let (_, code) = login(addr, protocol, "x", Some("ann"), &token).await;
            assert_eq!(code, bad, "{protocol:?} {alg:?} forged");
        }
        // Expired.
        let token = sign(
            Algorithm::HS256,
            &hs_key,
            json!({"sub": "ann", "exp": now() - 5}),
        );
        let (_, code) = login(addr, protocol, "x", Some("ann"), &token).await;
        assert_eq!(code, bad, "{protocol:?} expired");
        // Not a token at all: no backend accepts the password.
        let (_, code) = login(addr, protocol, "x", Some("ann"), "hunter2").await;
        assert_eq!(code, bad, "{protocol:?} plain password");
    }
    assert_eq!(refusals(V3).0, ReasonCode::V3_BAD_USER_NAME_OR_PASSWORD);
    handle.stop().await.expect("stops");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_backend_that_cannot_be_set_up_stops_the_start_with_its_key() {
    let error = |c: Config| async move {
        match pigeon_server::Server::bind(c).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("must not start"),
        }
    };
    let message = error(config(|c| {
        c.auth.jwt = Some(JwtAuthConfig {
            public_key_file: Some("/nonexistent/jwt.pem".into()),
            ..Default::default()
        })
    }))
    .await;
    assert!(
        message.starts_with("[auth.jwt] public_key_file: cannot read /nonexistent/jwt.pem"),
        "{message}"
    );
    // Services that are down at start do not stop it: they refuse clients until they are back.
    let redis = format!("redis://127.0.0.1:{}/0", services::free_port());
    let pg = format!("host=127.0.0.1 port={} user=x", services::free_port());
    let (handle, addr) = start(config(|c| {
        c.auth.redis = Some(RedisAuthConfig {
            url: redis,
            ..Default::default()
        });
        c.auth.postgres = Some(PostgresAuthConfig {
            url: pg,
            ..Default::default()
        });
    }))
    .await;
    let (_, code) = login(addr, V5, "x", Some("client"), "c-pass").await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    handle.stop().await.expect("stops");
}
