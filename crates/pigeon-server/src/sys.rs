//! The `$SYS/broker/...` topics: what the broker reports about itself every `[mqtt]
//! sys_interval` seconds, as retained QoS 0 messages under the names mosquitto uses, so the
//! dashboards and scripts written for mosquitto read Pigeon too. A figure is published again
//! only when it changed, except the uptime. Each node reports on itself (`publish_local`).

use bytes::Bytes;
use pigeon_codec::{ByteStr, QoS};
use pigeon_core::{Broker, Message};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const UPTIME: &str = "$SYS/broker/uptime";

/// Publishes the `$SYS` topics at once and then every `interval`, until `stop` changes.
pub(crate) async fn publish_every(
    broker: Arc<Broker>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The last value of each topic, in `figures`' order.
    let mut last: Vec<String> = Vec::new();
    publish(
        &broker,
        "$SYS/broker/version",
        format!("pigeon version {}", env!("CARGO_PKG_VERSION")),
    );
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = figures(&broker);
        for (i, (topic, value)) in now.iter().enumerate() {
            if *topic != UPTIME && last.get(i) == Some(value) {
                continue;
            }
            publish(&broker, topic, value.clone());
        }
        last = now.into_iter().map(|(_, value)| value).collect();
    }
}

/// Each topic and its value now.
fn figures(broker: &Broker) -> Vec<(&'static str, String)> {
    let stats = &broker.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let connected = get(&stats.connections_current);
    let sessions = broker.session_count() as u64;
    vec![
        (UPTIME, format!("{} seconds", broker.uptime().as_secs())),
        ("$SYS/broker/clients/connected", connected.to_string()),
        (
            "$SYS/broker/clients/disconnected",
            sessions.saturating_sub(connected).to_string(),
        ),
        ("$SYS/broker/clients/total", sessions.to_string()),
        (
            "$SYS/broker/publish/messages/received",
            get(&stats.messages_received).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/sent",
            get(&stats.messages_sent).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped",
            get(&stats.messages_dropped).to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            broker.subscription_count().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            broker.retained_count().to_string(),
        ),
    ]
}

fn publish(broker: &Broker, topic: &str, value: String) {
    broker.publish_local(Arc::new(Message::new(
        ByteStr::from(topic),
        Bytes::from(value),
        QoS::AtMostOnce,
        true,
        Default::default(),
        None,
    )));
}
