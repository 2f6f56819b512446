//! Interoperability with other real clients: Debian's mosquitto_pub/mosquitto_sub and Python's
//! paho-mqtt talk to the real `pigeon` binary. The README's test command installs both.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Pigeon {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Drop for Pigeon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

fn start_pigeon() -> Pigeon {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("pigeon-interop-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("pigeon.toml");
    std::fs::write(
        &config,
        format!("[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[storage]\nbackend = \"memory\"\n"),
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pigeon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pigeon did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Pigeon {
        child,
        port,
        _dir: dir,
    }
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(found, Ok(true)),
        "{name} is not installed: run scripts/test, which installs mosquitto-clients and paho-mqtt"
    );
    Command::new(name)
}

#[test]
fn mosquitto_clients_exchange_messages_through_pigeon() {
    let broker = start_pigeon();
    let port = broker.port.to_string();
    for (version, label) in [("mqttv311", "v311"), ("mqttv5", "v5"), ("mqttv31", "v31")] {
        let topic = format!("interop/mosquitto/{label}");
        let mut sub = tool("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                "2",
                "-v",
                "-C",
                "3",
                "-W",
                "10",
            ])
            .args(["-t", &format!("{topic}/#"), "-i", &format!("sub-{label}")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        // mosquitto_sub has no "subscribed" signal: publish a retained probe and wait for it.
        let status = tool("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                "1",
                "-r",
            ])
            .args(["-t", &format!("{topic}/ready"), "-m", "ready"])
            .status()
            .expect("run mosquitto_pub");
        assert!(status.success(), "mosquitto_pub {version} failed");
        let stdout = sub.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("a line from mosquitto_sub")
            .expect("utf-8 line");
        assert_eq!(first, format!("{topic}/ready ready"));
        for qos in ["1", "2"] {
            let status = tool("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", qos])
                .args([
                    "-t",
                    &format!("{topic}/q{qos}"),
                    "-m",
                    &format!("hello {qos}"),
                ])
                .status()
                .expect("run mosquitto_pub");
            assert!(status.success());
        }
        let rest: Vec<String> = lines.map(|l| l.expect("utf-8 line")).collect();
        assert_eq!(
            rest,
            vec![format!("{topic}/q1 hello 1"), format!("{topic}/q2 hello 2")],
            "{version}"
        );
        assert!(sub.wait().expect("mosquitto_sub exits").success());
        // Clear the retained probe.
        tool("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-r",
                "-n",
                "-t",
                &format!("{topic}/ready"),
            ])
            .status()
            .expect("clear retained");
    }
}

#[test]
fn paho_mqtt_python_exchanges_messages_through_pigeon() {
    let broker = start_pigeon();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/paho_check.py");
    let out = tool("python3")
        .arg(&script)
        .arg(broker.port.to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "paho check failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ok: paho-mqtt v311") && stdout.contains("ok: paho-mqtt v5"),
        "{stdout}"
    );
}
