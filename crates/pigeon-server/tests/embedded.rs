//! The broker as a library: events from a Rust hook in order with their fields, a subscription
//! rewritten by a hook, Rust authenticators and authorizers that answer after an await, and
//! in-process publish and subscribe.

mod common;
mod flows;

use common::Raw;
use flows::*;
use pigeon_codec::{ByteStr, Packet, Protocol, PubResp, QoS, ReasonCode, SubscriptionOptions};
use pigeon_core::auth::{
    Acl, Action, Authentication, Authenticator, Authorizer, Check, ClientInfo, ConnectRequest,
    Refused,
};
use pigeon_core::hooks::{Disconnection, Hooks, SubscriptionRequest};
use pigeon_core::Message;
use pigeon_server::config::{Config, ListenerConfig, ListenerProtocol, StorageBackend};
use pigeon_server::{Pigeon, PigeonBuilder};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config() -> Config {
    let mut config = Config {
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            ListenerProtocol::Mqtt,
        )],
        http: None,
        ..Config::default()
    };
    config.storage.backend = StorageBackend::Memory;
    config
}

fn builder() -> PigeonBuilder {
    Pigeon::builder().config(config())
}

/// Records every event as one line.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn push(&self, line: String) {
        self.0.lock().expect("recorder").push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("recorder"))
    }

    /// Waits until `n` events are recorded (hooks run in the connection tasks).
    async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.0.lock().expect("recorder").len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.take()
    }
}

fn who(c: &ClientInfo) -> String {
    format!(
        "{}/{}/v{}",
        c.client_id,
        c.username.as_deref().unwrap_or("-"),
        c.protocol.level()
    )
}

impl Hooks for Recorder {
    fn client_connected(&self, c: &ClientInfo) {
        self.push(format!("connected {}", who(c)));
    }
    fn client_disconnected(&self, c: &ClientInfo, how: Disconnection) {
        self.push(format!("disconnected {} {how:?}", who(c)));
    }
    fn message_published(&self, c: Option<&ClientInfo>, m: &Message) {
        let from = c.map(who).unwrap_or_else(|| "in-process".into());
        self.push(format!(
            "published {from} {} q{} {:?}",
            m.topic,
            m.qos as u8,
            String::from_utf8_lossy(&m.payload)
        ));
    }
    fn message_delivered(&self, c: &ClientInfo, m: &Message, qos: QoS) {
        self.push(format!("delivered {} {} q{}", who(c), m.topic, qos as u8));
    }
    fn subscribed(&self, c: &ClientInfo, filter: &str, o: &SubscriptionOptions) {
        self.push(format!("subscribed {} {filter} q{}", who(c), o.qos as u8));
    }
    fn unsubscribed(&self, c: &ClientInfo, filter: &str) {
        self.push(format!("unsubscribed {} {filter}", who(c)));
    }
}

#[tokio::test]
async fn hook_events_arrive_in_order_with_their_fields() {
    let recorder = Recorder::default();
    let handle = builder()
        .hooks(recorder.clone())
        .start()
        .await
        .expect("starts");
    let addr = handle.local_addrs()[0];
    let (mut sub, _) = connect_with(addr, Protocol::V5, "sub", true, |c| {
        c.username = Some(ByteStr::from("ann"))
    })
    .await;
    subscribe(&mut sub, "t/#", QoS::ExactlyOnce).await;
    let mut publisher = connect(addr, Protocol::V3_1_1, "pub").await;
    assert_eq!(
        recorder.wait_for(3).await,
        vec![
            "connected sub/ann/v5",
            "subscribed sub/ann/v5 t/# q2",
            "connected pub/-/v4",
        ]
    );

    // QoS 1: delivered on PUBACK, not on write.
    publish_q1(&mut publisher, "t/1", b"one").await;
    let p = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(
        recorder.wait_for(1).await,
        vec![r#"published pub/-/v4 t/1 q1 "one""#]
    );
    ack(&mut sub, &p).await;
    assert_eq!(
        recorder.wait_for(1).await,
        vec!["delivered sub/ann/v5 t/1 q1"]
    );

    // QoS 2: delivered on PUBCOMP (the broker's PUBREL answered), not on PUBREC.
    publish(&mut publisher, message("t/2", b"two", QoS::ExactlyOnce)).await;
    let p = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    ack(&mut sub, &p).await; // PUBREC
    match sub.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, p.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    assert_eq!(
        recorder.wait_for(1).await,
        vec![r#"published pub/-/v4 t/2 q2 "two""#],
        "no delivery before PUBCOMP"
    );
    sub.send(&Packet::PubComp(PubResp {
        packet_id: p.packet_id,
        ..Default::default()
    }))
    .await;
    assert_eq!(
        recorder.wait_for(1).await,
        vec!["delivered sub/ann/v5 t/2 q2"]
    );

    // QoS 0: delivered once written; then in-process publish.
    handle
        .publish("t/0", "zero", QoS::AtMostOnce, false)
        .expect("valid topic");
    let p = next_publish(&mut sub).await;
    assert_eq!(p.topic.as_str(), "t/0");
    assert_eq!(
        recorder.wait_for(2).await,
        vec![
            r#"published in-process t/0 q0 "zero""#,
            "delivered sub/ann/v5 t/0 q0"
        ]
    );

    assert_eq!(
        unsubscribe(&mut sub, &["t/#", "none"]).await,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert!(sub.recv().await.is_none());
    drop(publisher);
    let events = recorder.wait_for(3).await;
    assert_eq!(
        events,
        vec![
            "unsubscribed sub/ann/v5 t/#",
            "disconnected sub/ann/v5 Client(0x00 (Success))",
            "disconnected pub/-/v4 ConnectionLost",
        ]
    );
    handle.stop().await.expect("stops");
}

/// Rewrites `mine/#` into the user's own tree and caps QoS at 1, as aedes' authorizeSubscribe
/// example does; an `invalid` filter is rewritten into an invalid one.
struct Rewrite;

impl Hooks for Rewrite {
    fn rewrite_subscription(&self, c: &ClientInfo, s: &mut SubscriptionRequest) {
        if s.filter.as_str() == "mine/#" {
            let user = c.username.as_deref().unwrap_or("anonymous");
            s.filter = ByteStr::from(format!("users/{user}/#"));
        }
        if s.filter.as_str() == "invalid" {
            s.filter = ByteStr::from("a/#/b");
        }
        s.qos = s.qos.min(QoS::AtLeastOnce);
    }
}

#[tokio::test]
async fn a_hook_rewrites_a_subscription_before_it_is_stored() {
    let handle = builder().hooks(Rewrite).start().await.expect("starts");
    let addr = handle.local_addrs()[0];
    let (mut alice, _) = connect_with(addr, Protocol::V5, "a", true, |c| {
        c.username = Some(ByteStr::from("alice"))
    })
    .await;
    let codes = subscribe_all(
        &mut alice,
        &[
            ("mine/#", qos(QoS::ExactlyOnce)),
            ("invalid", qos(QoS::AtMostOnce)),
        ],
        None,
    )
    .await;
    assert_eq!(
        codes,
        vec![ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID]
    );
    let session = handle.broker().session("a").expect("session");
    let filters: Vec<String> = (session.lock().subscriptions.get())
        .map(|subscriptions| subscriptions.keys().map(|f| f.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(filters, vec!["users/alice/#"]);
    handle
        .publish("users/alice/x", "for alice", QoS::ExactlyOnce, false)
        .expect("valid");
    handle
        .publish("mine/x", "literal", QoS::AtMostOnce, false)
        .expect("valid");
    let p = next_publish(&mut alice).await;
    assert_eq!(
        (p.topic.as_str(), p.qos),
        ("users/alice/x", QoS::AtLeastOnce)
    );
    expect_no_publish(&mut alice).await;
    handle.stop().await.expect("stops");
}

/// Accepts password "token-USER" after an await, as a backend calling a service would.
struct TokenService;

impl Authenticator for TokenService {
    fn name(&self) -> &str {
        "tokens"
    }

    fn authenticate<'a>(&'a self, r: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
        let Some(user) = r.username else {
            return Check::Ready(Authentication::Continue);
        };
        Check::pending(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let expected = format!("token-{user}");
            if r.password == Some(expected.as_bytes()) {
                Authentication::Allow {
                    superuser: user == "root",
                }
            } else {
                Authentication::Deny {
                    code: Refused::NotAuthorized,
                    reason: "token does not match".into(),
                }
            }
        })
    }
}

/// Users may publish and subscribe under `USER/`; publishes are answered after an await.
struct OwnTree;

impl Authorizer for OwnTree {
    fn name(&self) -> &str {
        "own-tree"
    }

    fn authorize<'a>(
        &'a self,
        c: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl> {
        let own = |c: &ClientInfo| {
            let user = c.username.as_deref().unwrap_or("");
            topic
                .strip_prefix(user)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        match action {
            Action::Subscribe { .. } => {
                Check::Ready(if own(c) { Acl::Allow } else { Acl::Continue })
            }
            Action::Publish { .. } => Check::pending(async move {
                tokio::task::yield_now().await;
                if own(c) {
                    Acl::Allow
                } else {
                    Acl::Deny("outside the user's tree".into())
                }
            }),
        }
    }
}

#[tokio::test]
async fn rust_backends_may_answer_after_an_await() {
    let handle = builder()
        .authenticator(TokenService)
        .authorizer(OwnTree)
        .start()
        .await
        .expect("starts");
    let addr = handle.local_addrs()[0];
    let login = |id: &'static str, user: &'static str, pw: &'static str| async move {
        let (raw, ack) = Raw::mqtt_connect(addr, Protocol::V5, id, true, |c| {
            c.username = Some(ByteStr::from(user));
            c.password = Some(bytes::Bytes::from(pw));
        })
        .await;
        let Packet::ConnAck(ack) = ack else {
            panic!("expected CONNACK")
        };
        (raw, ack.code)
    };
    let (_, code) = login("x", "bob", "token-alice").await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    // A Rust authenticator closes the door to anonymous clients by default.
    let (mut raw, _) = Raw::mqtt_connect(addr, Protocol::V5, "anon", true, |_| {}).await;
    assert!(raw.recv().await.is_none());

    let (mut bob, code) = login("b", "bob", "token-bob").await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let codes = subscribe_all(
        &mut bob,
        &[
            ("bob/#", qos(QoS::AtLeastOnce)),
            ("alice/#", qos(QoS::AtLeastOnce)),
        ],
        None,
    )
    .await;
    assert_eq!(
        codes,
        vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED]
    );
    let (mut root, code) = login("r", "root", "token-root").await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let ack = publish(&mut root, message("bob/from-root", b"1", QoS::AtLeastOnce))
        .await
        .expect("PUBACK");
    assert_eq!(ack.reason, ReasonCode::SUCCESS, "superuser");
    let (mut alice, _) = login("a", "alice", "token-alice").await;
    let ack = publish(&mut alice, message("bob/x", b"2", QoS::AtLeastOnce))
        .await
        .expect("PUBACK");
    assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED);
    // Packets queued behind a pending check keep their order.
    for i in 0..20u8 {
        bob.send(&Packet::Publish(pigeon_codec::Publish {
            qos: QoS::AtMostOnce,
            topic: ByteStr::from("bob/seq"),
            payload: bytes::Bytes::from(vec![i]),
            ..Default::default()
        }))
        .await;
    }
    let got = exactly(&mut bob, 21).await;
    assert_eq!(got[0].payload.as_ref(), b"1");
    let order: Vec<u8> = got[1..].iter().map(|p| p.payload[0]).collect();
    assert_eq!(order, (0..20).collect::<Vec<u8>>());
    handle.stop().await.expect("stops");
}

#[tokio::test]
async fn in_process_subscribers_get_retained_and_live_messages() {
    let handle = builder().start().await.expect("starts");
    let addr = handle.local_addrs()[0];
    handle
        .publish("sensors/1", "retained", QoS::AtLeastOnce, true)
        .expect("valid");
    let mut sub = handle
        .subscribe("sensors/+", QoS::AtLeastOnce)
        .await
        .expect("valid filter");
    let m = sub.recv().await.expect("retained");
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("sensors/1", &b"retained"[..])
    );
    let mut device = connect(addr, Protocol::V3_1_1, "device").await;
    publish_q1(&mut device, "sensors/2", b"live").await;
    let m = sub.recv().await.expect("live");
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("sensors/2", &b"live"[..])
    );
    assert!(handle.subscribe("a/#/b", QoS::AtMostOnce).await.is_err());
    assert!(handle.publish("a/+", "x", QoS::AtMostOnce, false).is_err());
    let sessions = handle.broker().session_count();
    drop(sub);
    for _ in 0..100 {
        if handle.broker().session_count() < sessions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        handle.broker().session_count(),
        sessions - 1,
        "ended with its handle"
    );
    handle.stop().await.expect("stops");
}
