//! The broker's side of the cluster ports, with a recording bus in place of Redis (the Redis
//! adapter itself is tested against real redis-server and real nodes in
//! crates/pigeon/tests/cluster.rs): what goes to the bus, what the bus is told to subscribe,
//! how bus messages and shared groups are routed, and how a session is handed to another node.

use bytes::Bytes;
use pigeon_codec::{ByteStr, PublishProperties, QoS, ReasonCode, SubscriptionOptions};
use pigeon_core::{
    control_channel, Broker, BrokerSettings, ClusterBus, ConnectionHandle, Control,
    ControlReceiver, Message,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct RecordingBus {
    published: Mutex<Vec<String>>,
    interest: Mutex<Vec<(String, bool)>>,
    connected_clients: Mutex<Vec<String>>,
    up: AtomicBool,
}

impl ClusterBus for RecordingBus {
    fn publish(&self, message: &Arc<Message>) {
        self.published
            .lock()
            .unwrap()
            .push(message.topic.to_string());
    }
    fn interest(&self, filter: &str, present: bool) {
        self.interest
            .lock()
            .unwrap()
            .push((filter.to_owned(), present));
    }
    fn client_connected(&self, client_id: &ByteStr) {
        self.connected_clients
            .lock()
            .unwrap()
            .push(client_id.to_string());
    }
    fn connected(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
}

fn message(topic: &str, retain: bool) -> Arc<Message> {
    Arc::new(Message::new(
        ByteStr::from(topic),
        Bytes::from_static(b"payload"),
        QoS::AtLeastOnce,
        retain,
        PublishProperties::default(),
        None,
    ))
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

async fn connect(
    broker: &Arc<Broker>,
    id: &str,
    expiry: u32,
) -> (Arc<pigeon_core::Session>, ControlReceiver) {
    let (tx, rx) = control_channel();
    let (session, _) = broker
        .attach(
            ByteStr::from(id),
            false,
            expiry,
            None,
            ConnectionHandle { control: tx },
        )
        .await;
    (session, rx)
}

fn queued(session: &pigeon_core::Session) -> Vec<String> {
    session
        .lock()
        .queue
        .iter()
        .map(|d| d.message.topic.to_string())
        .collect()
}

#[tokio::test]
async fn local_messages_go_to_the_bus_once_and_bus_messages_never_go_back() {
    let broker = Broker::new(BrokerSettings::default());
    let bus = Arc::new(RecordingBus::default());
    broker.set_cluster(bus.clone());
    let (sub, _rx) = connect(&broker, "sub", 0).await;
    broker.subscribe(&sub, &ByteStr::from("a/#"), options(QoS::AtLeastOnce), None);

    broker.publish(message("a/local", false));
    broker.publish_from_bus(message("a/remote", false), true);

    assert_eq!(*bus.published.lock().unwrap(), vec!["a/local"]);
    assert_eq!(queued(&sub), vec!["a/local", "a/remote"]);
    assert_eq!(*bus.connected_clients.lock().unwrap(), vec!["sub"]);
}

#[tokio::test]
async fn the_bus_hears_of_a_filter_once_per_node() {
    let broker = Broker::new(BrokerSettings::default());
    let (early, _rx1) = connect(&broker, "early", 0).await;
    broker.subscribe(
        &early,
        &ByteStr::from("x/+"),
        options(QoS::AtMostOnce),
        None,
    );
    let bus = Arc::new(RecordingBus::default());
    // Filters subscribed before the bus came are announced when it comes.
    broker.set_cluster(bus.clone());
    let (a, _rx2) = connect(&broker, "a", 0).await;
    let (b, _rx3) = connect(&broker, "b", 0).await;
    broker.subscribe(&a, &ByteStr::from("chat/#"), options(QoS::AtMostOnce), None);
    broker.subscribe(&b, &ByteStr::from("chat/#"), options(QoS::AtMostOnce), None);
    // A shared subscription needs the same filter from the bus.
    broker.subscribe(
        &b,
        &ByteStr::from("$share/g/chat/#"),
        options(QoS::AtMostOnce),
        None,
    );
    // Subscribing again to the same filter changes nothing.
    broker.subscribe(
        &a,
        &ByteStr::from("chat/#"),
        options(QoS::AtLeastOnce),
        None,
    );
    broker.unsubscribe(&a, &ByteStr::from("chat/#"));
    broker.unsubscribe(&b, &ByteStr::from("chat/#"));
    assert_eq!(
        *bus.interest.lock().unwrap(),
        vec![("x/+".to_owned(), true), ("chat/#".to_owned(), true)]
    );
    broker.unsubscribe(&b, &ByteStr::from("$share/g/chat/#"));
    assert_eq!(
        bus.interest.lock().unwrap().last(),
        Some(&("chat/#".to_owned(), false))
    );
}

#[tokio::test]
async fn shared_groups_are_served_through_the_bus_while_it_is_up() {
    let broker = Broker::new(BrokerSettings::default());
    let bus = Arc::new(RecordingBus::default());
    broker.set_cluster(bus.clone());
    let (member, _rx) = connect(&broker, "member", 0).await;
    broker.subscribe(
        &member,
        &ByteStr::from("$share/g/jobs/+"),
        options(QoS::AtLeastOnce),
        None,
    );

    // Bus down: this node's members serve the group.
    broker.publish(message("jobs/1", false));
    assert_eq!(queued(&member), vec!["jobs/1"]);

    // Bus up: the local publish leaves the group to the bus round trip.
    bus.up.store(true, Ordering::Relaxed);
    broker.publish(message("jobs/2", false));
    assert_eq!(queued(&member), vec!["jobs/1"]);
    assert_eq!(broker.shared_groups("jobs/2"), vec!["g/jobs/+"]);
    broker.publish_to_groups(message("jobs/2", false), &["g/jobs/+".to_owned()]);
    // A group this node did not win gets nothing.
    broker.publish_to_groups(message("jobs/3", false), &["other/jobs/+".to_owned()]);
    assert_eq!(queued(&member), vec!["jobs/1", "jobs/2"]);
}

#[tokio::test]
async fn a_retained_bus_message_is_kept_whether_or_not_this_node_stores_it() {
    let broker = Broker::new(BrokerSettings::default());
    broker.set_cluster(Arc::new(RecordingBus::default()));
    broker.publish_from_bus(message("r/1", true), false);
    assert_eq!(broker.retained_count(), 1);
    let (late, _rx) = connect(&broker, "late", 0).await;
    broker.subscribe(
        &late,
        &ByteStr::from("r/#"),
        options(QoS::AtLeastOnce),
        None,
    );
    assert_eq!(queued(&late), vec!["r/1"]);
}

#[tokio::test]
async fn a_client_that_connects_on_another_node_is_closed_here_and_its_session_goes() {
    let broker = Broker::new(BrokerSettings::default());
    broker.set_cluster(Arc::new(RecordingBus::default()));
    let (session, mut control) = connect(&broker, "mover", 3600).await;
    broker.subscribe(
        &session,
        &ByteStr::from("m/#"),
        options(QoS::AtLeastOnce),
        None,
    );
    let yielding = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move { broker.yield_session(&ByteStr::from("mover")).await })
    };
    // The connection is asked to close with 0x8E, then ends as a connection task does.
    match control.recv().await {
        Some(Control::Disconnect(code)) => assert_eq!(code, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("no disconnect: {other:?}"),
    }
    broker.detach(&session, &control, pigeon_core::Departure::WithWill, None);
    drop(control);
    assert!(yielding.await.unwrap());
    // Without a shared store the session ends here: no session, no subscription left.
    assert!(broker.session("mover").is_none());
    assert_eq!(broker.subscription_count(), 0);
    assert!(!broker.yield_session(&ByteStr::from("mover")).await);
}
