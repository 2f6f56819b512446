//! Malformed and forbidden input. Each case closes only the connection that sent it; a 5.0
//! client first gets DISCONNECT with the reason code the codec maps the error to (5.0 section
//! 4.13); a well-behaved client keeps exchanging messages meanwhile; and the broker logs a line
//! naming the client and the reason.

mod common;
mod support;

use common::Broker;
use pigeon_codec::{Protocol, ReasonCode};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::*;
use tracing_subscriber::fmt::MakeWriter;

struct Case {
    name: &'static str,
    /// Bytes sent after a successful CONNECT at the case's protocol level.
    bytes: &'static [u8],
    /// What the codec maps the error to (the 5.0 DISCONNECT reason).
    reason: ReasonCode,
}

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;

/// 5.0 cases. PUBLISH and SUBSCRIBE carry a property length byte after the packet id.
const V5_CASES: &[Case] = &[
    // [MQTT-2.1.3-1]: PINGREQ flags must be 0000.
    Case {
        name: "reserved flag bits",
        bytes: &[0xC1, 0x00],
        reason: MALFORMED,
    },
    // [MQTT-3.8.1-1]: SUBSCRIBE flags must be 0010.
    Case {
        name: "SUBSCRIBE flags 0000",
        bytes: &[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0x00],
        reason: MALFORMED,
    },
    // [MQTT-3.6.1-1]: PUBREL flags must be 0010.
    Case {
        name: "PUBREL flags 0000",
        bytes: &[0x60, 0x02, 0x00, 0x01],
        reason: MALFORMED,
    },
    // [MQTT-3.3.1-4]
    Case {
        name: "PUBLISH QoS 3",
        bytes: &[0x36, 0x06, 0x00, 0x01, b't', 0x00, 0x01, 0x00],
        reason: MALFORMED,
    },
    // [MQTT-3.3.1-2]
    Case {
        name: "PUBLISH QoS 0 with DUP",
        bytes: &[0x38, 0x04, 0x00, 0x01, b't', 0x00],
        reason: MALFORMED,
    },
    // [MQTT-3.3.2-2]
    Case {
        name: "wildcard in topic name",
        bytes: &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
        reason: ReasonCode::TOPIC_NAME_INVALID,
    },
    // [MQTT-2.2.1-3]
    Case {
        name: "packet identifier 0",
        bytes: &[0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00],
        reason: PROTOCOL,
    },
    // [MQTT-3.8.3-2]
    Case {
        name: "SUBSCRIBE without a filter",
        bytes: &[0x82, 0x03, 0x00, 0x01, 0x00],
        reason: PROTOCOL,
    },
    // Section 4.7: '#' must be the last level.
    Case {
        name: "invalid topic filter",
        bytes: &[
            0x82, 0x0B, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
        ],
        reason: ReasonCode::TOPIC_FILTER_INVALID,
    },
    // [MQTT-3.8.3-5]
    Case {
        name: "subscription options reserved bits",
        bytes: &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0xC0],
        reason: MALFORMED,
    },
    // [MQTT-1.5.4-1]
    Case {
        name: "invalid UTF-8 in topic",
        bytes: &[0x30, 0x04, 0x00, 0x01, 0xFF, 0x00],
        reason: MALFORMED,
    },
    // [MQTT-1.5.4-2]
    Case {
        name: "U+0000 in topic",
        bytes: &[0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
        reason: MALFORMED,
    },
    // Section 1.5.5: a variable byte integer has at most four bytes.
    Case {
        name: "remaining length over four bytes",
        bytes: &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        reason: MALFORMED,
    },
    // Section 2.2.2.2: Payload Format Indicator twice.
    Case {
        name: "duplicate property",
        bytes: &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x01, 0x01, 0x01, 0x01],
        reason: PROTOCOL,
    },
    // A string whose length runs past the end of the packet.
    Case {
        name: "string past the packet end",
        bytes: &[0x30, 0x03, 0x00, 0x05, b't'],
        reason: MALFORMED,
    },
    // Packets only a server sends: well-formed, but a protocol error from a client.
    Case {
        name: "CONNACK from a client",
        bytes: &[0x20, 0x03, 0x00, 0x00, 0x00],
        reason: PROTOCOL,
    },
    Case {
        name: "PINGRESP from a client",
        bytes: &[0xD0, 0x00],
        reason: PROTOCOL,
    },
    // Table 2-1: packet type 0 is reserved.
    Case {
        name: "packet type 0",
        bytes: &[0x00, 0x00],
        reason: MALFORMED,
    },
];

/// 3.1.1 cases: no properties; the broker just closes the connection.
const V311_CASES: &[Case] = &[
    Case {
        name: "reserved flag bits",
        bytes: &[0xC1, 0x00],
        reason: MALFORMED,
    },
    Case {
        name: "PUBLISH QoS 3",
        bytes: &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
        reason: MALFORMED,
    },
    Case {
        name: "PUBLISH QoS 0 with DUP",
        bytes: &[0x38, 0x03, 0x00, 0x01, b't'],
        reason: MALFORMED,
    },
    Case {
        name: "wildcard in topic name",
        bytes: &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#'],
        reason: ReasonCode::TOPIC_NAME_INVALID,
    },
    Case {
        name: "packet identifier 0",
        bytes: &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
        reason: PROTOCOL,
    },
    Case {
        name: "SUBSCRIBE without a filter",
        bytes: &[0x82, 0x02, 0x00, 0x01],
        reason: PROTOCOL,
    },
    Case {
        name: "invalid UTF-8 in topic",
        bytes: &[0x30, 0x03, 0x00, 0x01, 0xC3],
        reason: MALFORMED,
    },
    Case {
        name: "remaining length over four bytes",
        bytes: &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
        reason: MALFORMED,
    },
    Case {
        name: "PINGRESP from a client",
        bytes: &[0xD0, 0x00],
        reason: PROTOCOL,
    },
    // AUTH exists only in 5.0.
    Case {
        name: "AUTH in 3.1.1",
        bytes: &[0xF0, 0x00],
        reason: MALFORMED,
    },
    Case {
        name: "packet type 0",
        bytes: &[0x00, 0x00],
        reason: MALFORMED,
    },
];

/// Log output kept in memory for the test that installed it.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

impl LogBuffer {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A rumqttc 5.0 client subscribed to its own topic, publishing and receiving while the cases run.
struct GoodClient {
    client: rumqttc::v5::AsyncClient,
    received: tokio::sync::mpsc::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl GoodClient {
    async fn start(port: u16) -> GoodClient {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        use rumqttc::v5::mqttbytes::QoS as Q5;
        let opts = rumqttc::v5::MqttOptions::new("good", "127.0.0.1", port);
        let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 10);
        let (tx, received) = tokio::sync::mpsc::channel(16);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx.send(text).await.is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::v5::Event::Incoming(P5::Disconnect(d))) => {
                        panic!("the good client was disconnected: {d:?}")
                    }
                    Ok(_) => {}
                    Err(e) => panic!("the good client lost its connection: {e}"),
                }
            }
        });
        client
            .subscribe("good/t", Q5::AtLeastOnce)
            .await
            .expect("subscribe");
        let mut good = GoodClient {
            client,
            received,
            task,
        };
        good.exchange("ready").await;
        good
    }

    /// Publishes `text` to itself and waits for it to come back.
    async fn exchange(&mut self, text: &str) {
        self.client
            .publish(
                "good/t",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                text.to_owned(),
            )
            .await
            .expect("publish");
        let got = tokio::time::timeout(Duration::from_secs(5), self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("the good client did not get {text:?} back within 5 s"))
            .expect("good client task alive");
        assert_eq!(got, text);
    }
}

async fn run_cases(prefix: &str, protocol: Protocol, cases: &[Case], log: Option<&LogBuffer>) {
    let broker = Broker::start().await;
    let mut good = GoodClient::start(broker.port()).await;
    for (i, case) in cases.iter().enumerate() {
        let client_id = format!("{prefix}-{}-{i}", protocol.level());
        let (mut bad, _) = connected(broker.addr, protocol, &client_id, true, |_| {}).await;
        bad.send_bytes(case.bytes).await;
        if protocol.is_v5() {
            match bad.recv().await {
                Some(pigeon_codec::Packet::Disconnect(d)) => {
                    assert_eq!(d.reason, case.reason, "{}: DISCONNECT reason", case.name)
                }
                other => panic!(
                    "{}: expected DISCONNECT {:?}, got {other:?}",
                    case.name, case.reason
                ),
            }
        }
        match bad.recv().await {
            None => {}
            Some(p) => panic!("{}: expected the connection closed, got {p:?}", case.name),
        }
        good.exchange(case.name).await;
        if let Some(log) = log {
            let code = format!("0x{:02X}", case.reason.0);
            let lines = log.lines();
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&client_id) && l.contains(&code)),
                "{}: no log line names {client_id} and {code}:\n{}",
                case.name,
                lines.join("\n")
            );
        }
    }
    assert!(
        !good.task.is_finished(),
        "the good client's connection survived every case"
    );
    good.task.abort();
}

/// Every test here logs to one global subscriber, installed before any broker runs: a
/// per-test (thread-local) subscriber misses spans whose callsites another test's thread
/// registered first, and the span is what names the client.
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let log = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        log
    })
}

#[tokio::test]
async fn malformed_input_from_a_5_client_gets_disconnect_with_the_mapped_reason() {
    logs();
    run_cases("bad", Protocol::V5, V5_CASES, None).await;
}

#[tokio::test]
async fn malformed_input_from_a_3_1_1_client_closes_only_that_connection() {
    logs();
    run_cases("bad", Protocol::V3_1_1, V311_CASES, None).await;
}

// Rule of thumb 5 in STYLE.md: a user reading the log can tell which client was closed and why.
#[tokio::test]
async fn closing_for_malformed_input_logs_the_client_id_and_the_reason() {
    let log = logs();
    run_cases("logged", Protocol::V5, &V5_CASES[..4], Some(log)).await;
    run_cases("logged", Protocol::V3_1_1, &V311_CASES[..2], Some(log)).await;
}
// A broken packet split across writes is still refused once its bad part arrives, and a client
// that sends garbage before CONNECT completes never reaches the session registry.
#[tokio::test]
async fn malformed_connect_is_refused_without_a_session() {
    logs();
    let broker = Broker::start().await;
    // CONNECT with the reserved flag set [MQTT-3.1.2-3].
    let bytes = [
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3C, 0x00, 0x00, 0x02,
        b'i', b'd',
    ];
    let mut raw = common::Raw::connect(broker.addr, Protocol::V5).await;
    raw.send_bytes(&bytes[..6]).await;
    tokio::task::yield_now().await;
    raw.send_bytes(&bytes[6..]).await;
    match raw.recv().await {
        Some(pigeon_codec::Packet::ConnAck(ack)) => assert_eq!(ack.code, MALFORMED),
        other => panic!("expected CONNACK 0x81, got {other:?}"),
    }
    expect_closed(&mut raw).await;
    assert_eq!(broker.broker.session_count(), 0);
}
