//! The processes of a cluster test: one `redis-server`, Pigeon nodes (the real binary with a
//! generated config file), aedes nodes (tests/cluster/aedes-node.js) and the injector scripts.
//! Each is killed when dropped, so a failing test leaves nothing running.

use super::resp::Resp;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A fresh directory under the system temp dir, unique to this process and call.
pub fn temp_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("pigeon-cluster-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The repository's tests/cluster directory.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cluster")
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The last lines of a log file, for a panic message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `redis-server` with no persistence on 127.0.0.1: stopping it loses its data.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut redis = Redis {
            child: None,
            port: 0,
            dir: temp_dir("redis"),
        };
        for _ in 0..3 {
            redis.port = free_port();
            if redis.spawn().await {
                return redis;
            }
        }
        panic!(
            "redis-server did not start; its log:\n{}",
            tail(&redis.dir.join("redis.log"), 20)
        );
    }

    async fn spawn(&mut self) -> bool {
        let binary = in_path("redis-server")
            .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
            .unwrap_or_else(|| {
                panic!("redis-server not found: install Debian's redis-server (scripts/test does)")
            });
        let log = File::create(self.dir.join("redis.log")).expect("create the redis log");
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if let Ok(mut c) = Resp::connect(self.port).await {
                if c.cmd(&[b"PING"]).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server at once (SIGKILL): connections drop, data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// `PUBLISH channel message` as any backend does; returns how many subscribers Redis counted.
    pub async fn publish(&self, channel: &[u8], message: &[u8]) -> i64 {
        let mut c = Resp::connect(self.port).await.expect("connect to redis");
        match c.cmd(&[b"PUBLISH", channel, message]).await {
            Ok(super::resp::Reply::Int(n)) => n,
            other => panic!("PUBLISH: {other:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Memory,
    Redis,
}

/// A `pigeon` process with `[cluster]` on the test's Redis, an MQTT listener and `[http]`.
pub struct Node {
    pub id: String,
    pub port: u16,
    pub http_port: u16,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub async fn start(redis: &Redis, id: &str, storage: Storage) -> Node {
        let dir = temp_dir(&format!("node-{id}"));
        let port = free_port();
        let http_port = free_port();
        let storage = match storage {
            Storage::Memory => "backend = \"memory\"\n".to_string(),
            Storage::Redis => format!("backend = \"redis\"\nredis_url = \"{}\"\n", redis.url()),
        };
        let config = dir.join("pigeon.toml");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nbind = \"127.0.0.1:{port}\"\nprotocol = \"mqtt\"\n\n\
                 [storage]\n{storage}\n\
                 [cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nheartbeat_interval = 1\n\n\
                 [http]\nbind = \"127.0.0.1:{http_port}\"\n",
                redis.url()
            ),
        )
        .expect("write the node config");
        let mut node = Node {
            id: id.to_string(),
            port,
            http_port,
            log: dir.join("pigeon.log"),
            dir,
            config,
            child: None,
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the node log");
        let child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start pigeon");
        self.child = Some(child);
        eprintln!(
            "pigeon node {}: mqtt 127.0.0.1:{}, http 127.0.0.1:{}, log {}",
            self.id,
            self.port,
            self.http_port,
            self.log.display()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if !self.alive() {
                panic!(
                    "pigeon node {} exited at start; its log:\n{}",
                    self.id,
                    tail(&self.log, 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "pigeon node {} did not listen on {} within 20 s",
                self.id,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.settle().await;
    }

    /// Waits (bounded) for the node's bus connection, as its /metrics reports it.
    /// Without the metric the wait is short: the tests' own probes then find out.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let no_metric_deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.bus_connected().await {
                Some(true) => return,
                None if Instant::now() > no_metric_deadline => return,
                _ if Instant::now() > deadline => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }

    /// Starts the same node again (same config, ports and node id).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Panics with the log if the process is gone.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            panic!(
                "pigeon node {} died {when} ({status}); its log:\n{}",
                self.id,
                tail(&self.log, 40)
            );
        }
        assert!(self.child.is_some(), "node {} is not running", self.id);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }

    /// GET /metrics, or `None` if the node does not answer it with 200.
    pub async fn metrics(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let get = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port))
                .await
                .ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .ok()?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await.ok()?;
            let text = String::from_utf8_lossy(&body).into_owned();
            let (head, body) = text.split_once("\r\n\r\n")?;
            head.lines()
                .next()?
                .contains(" 200")
                .then(|| body.to_string())
        };
        tokio::time::timeout(Duration::from_secs(3), get)
            .await
            .ok()
            .flatten()
    }

    /// `pigeon_cluster_bus_connected` from /metrics; `None` without the metric.
    pub async fn bus_connected(&self) -> Option<bool> {
        let text = self.metrics().await?;
        text.lines()
            .find(|l| l.starts_with("pigeon_cluster_bus_connected"))
            .and_then(|l| l.split_whitespace().last())
            .map(|v| v.trim() == "1")
    }

    /// Polls the metric until it reads `want`; the values seen, if it never did.
    pub async fn wait_bus(&self, want: bool, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.bus_connected().await;
            if last == Some(want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "node {}: /metrics never showed pigeon_cluster_bus_connected {} within {wait:?} (last: {last:?})",
            self.id,
            u8::from(want)
        ))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An aedes 1.x node with mqemitter-redis, started from tests/cluster/aedes-node.js.
pub struct Aedes {
    pub port: u16,
    pub broker_id: String,
    child: Child,
    log: PathBuf,
}

impl Aedes {
    pub fn start(redis: &Redis, id: &str) -> Aedes {
        let dir = scripts_dir();
        let node = in_path("node").unwrap_or_else(|| {
            panic!("`node` not found: install Debian's nodejs and npm (scripts/test does)")
        });
        assert!(
            dir.join("node_modules/aedes").is_dir() && dir.join("node_modules/mqemitter-redis").is_dir(),
            "aedes and mqemitter-redis are not installed in {}: run `npm ci` there (scripts/test does)",
            dir.display()
        );
        let log = temp_dir(&format!("aedes-{id}")).join("aedes.log");
        let port = free_port();
        let mut child = Command::new(node)
            .arg(dir.join("aedes-node.js"))
            .arg(port.to_string())
            .arg(redis.url())
            .arg(id)
            .current_dir(&dir)
            // stdin stays open while the test runs: the node exits when it closes.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("aedes log"))
            .spawn()
            .expect("start node aedes-node.js");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.starts_with("aedes ready") => {
                let broker_id = line.split_whitespace().nth(3).unwrap_or(id).to_string();
                Aedes {
                    port,
                    broker_id,
                    child,
                    log,
                }
            }
            other => {
                kill9(&mut child);
                panic!(
                    "aedes node did not print its ready line ({other:?}); its stderr:\n{}",
                    tail(&log, 30)
                )
            }
        }
    }

    pub fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the aedes node died {when} ({status}); its stderr:\n{}",
                tail(&self.log, 30)
            );
        }
    }
}

impl Drop for Aedes {
    fn drop(&mut self) {
        kill9(&mut self.child);
        if !std::thread::panicking() {
            if let Some(dir) = self.log.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Python 3 with PyPI's redis and msgpack, or a panic saying what to install.
pub fn python_with_modules() -> PathBuf {
    let python = in_path("python3")
        .unwrap_or_else(|| panic!("python3 not found: install Debian's python3 and python3-pip"));
    let ok = Command::new(&python)
        .args(["-c", "import redis, msgpack"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python's redis and msgpack modules are missing: python3 -m pip install redis msgpack (scripts/test does)"
    );
    python
}

/// PHP with the redis and msgpack extensions, or a panic saying what to install.
pub fn php_with_extensions() -> PathBuf {
    let php = in_path("php").unwrap_or_else(|| {
        panic!("php not found: apt-get install php-cli php-redis php-msgpack (scripts/test does)")
    });
    let modules = Command::new(&php)
        .arg("-m")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
        .unwrap_or_default();
    let has = |m: &str| modules.lines().any(|l| l.trim() == m);
    assert!(
        has("redis") && has("msgpack"),
        "PHP lacks the redis or msgpack extension: apt-get install php-cli php-redis php-msgpack (scripts/test does)"
    );
    php
}

/// Runs an injector script (`inject.php` / `inject.py`) and returns the id it used.
pub fn run_injector(interpreter: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(interpreter)
        .arg(scripts_dir().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
