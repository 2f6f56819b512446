//! An MQTT broker inside a Rust program: Pigeon started from code, an in-process subscriber
//! and publisher, a TCP client (rumqttc) talking to it, hooks that print events, and a graceful
//! stop.
//!
//! Run: `cargo run -p pigeon-server --example embedded`

use pigeon_codec::QoS;
use pigeon_core::auth::ClientInfo;
use pigeon_core::hooks::{Disconnection, Hooks};
use pigeon_core::Message;
use pigeon_server::config::{Config, ListenerConfig, ListenerProtocol, StorageBackend};
use pigeon_server::Pigeon;
use std::time::Duration;

/// Prints what happens; a real program would count, audit or forward these.
struct PrintEvents;

impl Hooks for PrintEvents {
    fn client_connected(&self, client: &ClientInfo) {
        println!("hook: {} connected from {}", client.client_id, client.peer);
    }
    fn message_published(&self, client: Option<&ClientInfo>, message: &Message) {
        let from = client.map_or("in-process", |c| c.client_id.as_str());
        println!("hook: {from} published to {}", message.topic);
    }
    fn client_disconnected(&self, client: &ClientInfo, how: Disconnection) {
        println!("hook: {} disconnected ({how:?})", client.client_id);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One TCP listener on a free loopback port, state in memory, no HTTP listener.
    let config = Config {
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse()?,
            ListenerProtocol::Mqtt,
        )],
        http: None,
        storage: pigeon_server::config::StorageConfig {
            backend: StorageBackend::Memory,
            ..Default::default()
        },
        ..Config::default()
    };
    let broker = Pigeon::builder()
        .config(config)
        .hooks(PrintEvents)
        .start()
        .await?;
    let addr = broker.local_addrs()[0];
    println!("broker listening on {addr}");

    // The program itself listens to what devices report.
    let mut readings = broker.subscribe("sensors/#", QoS::AtLeastOnce).await?;

    // A device on TCP: subscribes to its commands and reports a reading.
    let mut options = rumqttc::MqttOptions::new("thermostat", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(10));
    let (device, mut events) = rumqttc::AsyncClient::new(options, 10);
    device
        .subscribe("commands/thermostat", rumqttc::QoS::AtLeastOnce)
        .await?;
    device
        .publish("sensors/kitchen", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await?;

    // Drive the device's event loop; hand over the first command it receives.
    let (command_tx, command_rx) = tokio::sync::oneshot::channel();
    let device_loop = tokio::spawn(async move {
        let mut command_tx = Some(command_tx);
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if let Some(tx) = command_tx.take() {
                        let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("device connection ended: {e}");
                    return;
                }
            }
        }
    });

    let reading = tokio::time::timeout(Duration::from_secs(5), readings.recv())
        .await?
        .ok_or("broker stopped")?;
    println!(
        "in-process subscriber got {} = {}",
        reading.topic,
        String::from_utf8_lossy(&reading.payload)
    );

    // The program answers with a command to the device, published in-process. Retained, so
    // the device gets it even if its SUBSCRIBE is still on its way.
    broker.publish("commands/thermostat", "set 20", QoS::AtLeastOnce, true)?;
    let command = tokio::time::timeout(Duration::from_secs(5), command_rx).await??;
    println!("device got command: {command}");
    assert_eq!(command, "set 20");

    device.disconnect().await?;
    device_loop.await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.stop().await?;
    println!("broker stopped");
    Ok(())
}
