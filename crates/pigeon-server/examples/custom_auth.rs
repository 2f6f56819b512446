//! Authentication and authorization written in Rust, plugged into an embedded Pigeon.
//!
//! `Devices` checks passwords against a table held in memory (answered at once, no await) and
//! hands an unknown user to a slower lookup (answered after an await, as a call to a service
//! would be). `OwnTree` lets each user publish and subscribe under `devices/USERNAME/` only.
//!
//! Run: `cargo run -p pigeon-server --example custom_auth`

use pigeon_core::auth::{
    Acl, Action, Authentication, Authenticator, Authorizer, Check, ClientInfo, ConnectRequest,
    Refused,
};
use pigeon_server::config::{Config, ListenerConfig, ListenerProtocol, StorageBackend};
use pigeon_server::Pigeon;
use std::collections::HashMap;
use std::time::Duration;

struct Devices {
    passwords: HashMap<&'static str, &'static str>,
}

impl Authenticator for Devices {
    fn name(&self) -> &str {
        "devices"
    }

    fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
        let (Some(user), Some(password)) = (request.username, request.password) else {
            // No credentials: not ours to judge; allow_anonymous decides.
            return Check::Ready(Authentication::Continue);
        };
        match self.passwords.get(user) {
            // Fast path: decided at once. (A real table would hold hashes and compare in
            // constant time.)
            Some(expected) if expected.as_bytes() == password => {
                Check::Ready(Authentication::Allow { superuser: false })
            }
            Some(_) => Check::Ready(Authentication::Deny {
                code: Refused::BadCredentials,
                reason: "wrong password".into(),
            }),
            // Slow path: ask "the directory service". Only this path boxes a future.
            None => Check::pending(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if user == "ops" && password == b"ops-token" {
                    Authentication::Allow { superuser: true }
                } else {
                    Authentication::Deny {
                        code: Refused::NotAuthorized,
                        reason: "unknown to the directory".into(),
                    }
                }
            }),
        }
    }
}

struct OwnTree;

impl Authorizer for OwnTree {
    fn name(&self) -> &str {
        "own-tree"
    }

    fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        _action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl> {
        let user = client.username.as_deref().unwrap_or("");
        let own = topic
            .strip_prefix("devices/")
            .and_then(|rest| rest.strip_prefix(user))
            .is_some_and(|rest| rest.starts_with('/'));
        Check::Ready(if own {
            Acl::Allow
        } else {
            Acl::Deny("outside devices/USERNAME/".into())
        })
    }
}

/// Connects with rumqttc; returns the client and its event loop once CONNACK arrived, or the
/// refusal.
async fn connect(
    port: u16,
    id: &str,
    user: &str,
    password: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(user, password);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    loop {
        match events.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                return Ok((client, events))
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Subscribes and returns whether the broker granted it.
async fn subscribe(
    client: &rumqttc::AsyncClient,
    events: &mut rumqttc::EventLoop,
    filter: &str,
) -> bool {
    client
        .subscribe(filter, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    loop {
        match events.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) => {
                return ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config {
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse()?,
            ListenerProtocol::Mqtt,
        )],
        http: None,
        ..Config::default()
    };
    config.storage.backend = StorageBackend::Memory;
    let broker = Pigeon::builder()
        .config(config)
        .authenticator(Devices {
            passwords: HashMap::from([("lamp-1", "lamp-secret"), ("lamp-2", "other")]),
        })
        .authorizer(OwnTree)
        .start()
        .await?;
    let port = broker.local_addrs()[0].port();

    let refused = connect(port, "intruder", "lamp-1", "guess").await.err();
    println!("lamp-1 with a wrong password: {refused:?}");
    assert!(refused.is_some());

    let (lamp, mut lamp_events) = connect(port, "lamp-1", "lamp-1", "lamp-secret").await?;
    let own = subscribe(&lamp, &mut lamp_events, "devices/lamp-1/#").await;
    let other = subscribe(&lamp, &mut lamp_events, "devices/lamp-2/#").await;
    println!("lamp-1 subscribes to its own tree: {own}; to lamp-2's: {other}");
    assert!(own && !other);

    // ops is not in the table: the slow path admits it as a superuser, whom no ACL limits.
    let (ops, mut ops_events) = connect(port, "console", "ops", "ops-token").await?;
    let all = subscribe(&ops, &mut ops_events, "devices/#").await;
    println!("ops (superuser, from the slow path) subscribes to devices/#: {all}");
    assert!(all);

    broker.stop().await?;
    println!("broker stopped");
    Ok(())
}
