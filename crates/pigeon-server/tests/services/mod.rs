//! Real Redis and PostgreSQL servers for the auth backend tests: Debian's `redis-server` and
//! PostgreSQL (`initdb`, `postgres`), each started by the test on 127.0.0.1 with its files in a
//! temporary directory, and stopped (and the directory removed) when dropped.
//! PostgreSQL refuses to run as root; as root (CI) the data directory is given to the
//! `postgres` user and the server runs as that user. A missing binary fails the test with what
//! to install (`scripts/test` installs both).
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, unique to this process and call.
fn temp_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pigeon-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// A port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn find(name: &str, candidates: &[PathBuf], install: &str) -> PathBuf {
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    for path in candidates {
        if path.is_file() {
            return path.clone();
        }
    }
    panic!("`{name}` not found in PATH nor in {candidates:?}: install Debian's {install} (scripts/test does: apt-get install {install})");
}

/// Asks the process to stop with `signal`, waits up to 5 s, then kills it.
fn stop_child(child: &mut Child, signal: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of a log file, for a panic message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A `redis-server` with no persistence, on 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let dir = temp_dir("redis");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
        };
        for _ in 0..3 {
            server.port = free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "redis-server did not start; its log:\n{}",
            tail(&server.dir.join("redis.log"))
        );
    }

    /// Starts the process on `self.port`; false if it exited (port taken in the meantime).
    async fn spawn(&mut self) -> bool {
        let binary = find(
            "redis-server",
            &[PathBuf::from("/usr/bin/redis-server")],
            "redis-server",
        );
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
            if let Ok(mut c) = self.connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Stops the server (its data is lost: there is no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, "TERM");
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "redis-server did not restart on port {}; its log:\n{}",
            self.port,
            tail(&self.dir.join("redis.log"))
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of PostgreSQL's server programs: Debian's newest
/// /usr/lib/postgresql/N/bin, else `pg_config --bindir`, else PATH.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    find("initdb", &[], "postgresql")
        .parent()
        .expect("a file has a parent")
        .to_owned()
}

/// The uid and gid of `user`, from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster made by `initdb` for one test, trust authentication, on 127.0.0.1.
pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    pub async fn start() -> PostgresServer {
        let bin = postgres_bin();
        let dir = temp_dir("postgres");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create the data dir");
        // As root, PostgreSQL runs as the `postgres` user, who must own the directory.
        let ids = if running_as_root() {
            let ids = user_ids("postgres").unwrap_or_else(|| {
                panic!("running as root and there is no `postgres` user to run PostgreSQL as: install Debian's postgresql")
            });
            for path in [&dir, &data] {
                std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1))
                    .expect("give the data dir to postgres");
            }
            Some(ids)
        } else {
            None
        };
        let command = |program: &str| {
            let mut command = Command::new(bin.join(program));
            command
                .current_dir(&dir)
                .env("LC_ALL", "C")
                .env("LANG", "C")
                .stdin(Stdio::null());
            if let Some((uid, gid)) = ids {
                command.uid(uid).gid(gid);
            }
            command
        };
        let initdb = command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let log_path = dir.join("postgres.log");
        for _ in 0..3 {
            let port = free_port();
            let log = File::create(&log_path).expect("create the postgres log");
            let child = command("postgres")
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .arg("-k")
                .arg(&dir)
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "fsync=off"])
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "synchronous_commit=off"])
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn postgres");
            let mut server = PostgresServer {
                child: Some(child),
                port,
                dir: dir.clone(),
            };
            if server.wait_ready().await {
                return server;
            }
            // Keep the directory for the next try.
            server.stop();
            server.dir = PathBuf::new();
        }
        let log = tail(&log_path);
        let _ = std::fs::remove_dir_all(&dir);
        panic!("postgres did not start; its log:\n{log}");
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok((client, connection)) =
                tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await
            {
                drop(client);
                let _ = connection.await;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A connection string for `tokio_postgres` and `[auth.postgres] url`.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Runs SQL statements (separated by `;`).
    pub async fn execute(&self, sql: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        let task = tokio::spawn(connection);
        client.batch_execute(sql).await.expect("SQL runs");
        drop(client);
        let _ = task.await;
    }

    /// Stops the server (fast shutdown: open connections are closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, "INT");
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
