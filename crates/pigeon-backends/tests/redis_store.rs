//! The `redis` store against a real `redis-server` started by each test on a free loopback port
//! (Debian's `redis-server`; a missing binary fails the test saying what to install): what one
//! commit writes `load_session` reads back exactly, deletes leave no key behind, retained
//! messages and ownership are shared between two stores (two nodes), and a Redis restart fails
//! one commit without wedging the next.

use bytes::Bytes;
use pigeon_backends::RedisStore;
use pigeon_codec::{ByteStr, PublishProperties, QoS, RetainHandling, SubscriptionOptions};
use pigeon_core::session::OutStage;
use pigeon_core::store::{
    LoadedSession, Persistence, QueueEntry, SessionRecord, Store, StoreOp, SyncPolicy,
};
use pigeon_core::Message;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `redis-server` with no persistence on 127.0.0.1, stopped and its directory removed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pigeon-redis-store-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
        };
        for _ in 0..3 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; its log:\n{}", server.log());
    }

    /// Starts the process on `self.port`; false if it exited (port taken in the meantime).
    fn spawn(&mut self) -> bool {
        let log = File::create(self.dir.join("redis.log")).expect("create the redis log");
        let child = Command::new(redis_binary())
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
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection of the test's own, to look at the keys.
    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis")
    }

    /// Every key.
    fn keys(&self) -> Vec<Vec<u8>> {
        redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.connection())
            .expect("KEYS")
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
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

    /// Starts it again on the same port (its data is gone: there is no persistence).
    fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server did not restart on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn redis_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("redis-server"));
    let mut candidates = on_path.chain([PathBuf::from("/usr/bin/redis-server")]);
    candidates.find(|p| Path::is_file(p)).unwrap_or_else(|| {
        panic!("`redis-server` not found in PATH nor in /usr/bin: install Debian's redis-server (scripts/test does: apt-get install redis-server)")
    })
}

fn open(server: &RedisServer) -> RedisStore {
    RedisStore::open(&server.url(), "pigeon:").expect("open the store")
}

fn message(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Arc<Message> {
    let properties = PublishProperties {
        user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
        content_type: Some(ByteStr::from("text/plain")),
        message_expiry_interval: Some(300),
        ..Default::default()
    };
    Arc::new(Message::new(
        ByteStr::from(topic),
        Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties,
        Some(ByteStr::from("publisher")),
    ))
}

fn entry(payload: &[u8], qos: QoS, packet_id: u16, stage: Option<OutStage>) -> QueueEntry {
    QueueEntry {
        message: message("a/b", payload, qos, false),
        qos,
        retain: false,
        subscription_ids: vec![7, 300],
        packet_id,
        stage,
    }
}

fn assert_same_message(a: &Message, b: &Message) {
    assert_eq!(
        (
            &a.topic,
            &a.payload,
            a.qos,
            a.retain,
            &a.properties,
            &a.origin
        ),
        (
            &b.topic,
            &b.payload,
            b.qos,
            b.retain,
            &b.properties,
            &b.origin
        )
    );
    let now = tokio::time::Instant::now();
    let (left_a, left_b) = (a.remaining_expiry(now), b.remaining_expiry(now));
    assert!(
        left_a.zip(left_b).is_some_and(|(x, y)| x.abs_diff(y) <= 1) || left_a == left_b,
        "expiry {left_a:?} vs {left_b:?}"
    );
}

/// A session with everything a session can hold, as the ops that write it.
fn full_session(cid: &ByteStr) -> Vec<StoreOp> {
    let c = || cid.clone();
    vec![
        StoreOp::SessionPut {
            client_id: c(),
            record: SessionRecord {
                expiry_interval: 3600,
                disconnected_at_ms: Some(1_700_000_000_123),
                will: Some((message("will/t", b"gone", QoS::AtLeastOnce, true), 30)),
            },
        },
        StoreOp::SubscriptionPut {
            client_id: c(),
            filter: ByteStr::from("a/+"),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            },
            id: Some(7),
        },
        StoreOp::SubscriptionPut {
            client_id: c(),
            filter: ByteStr::from("$share/g/x/#"),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            id: None,
        },
        StoreOp::QueuePut {
            client_id: c(),
            seq: 300,
            entry: entry(b"third", QoS::AtLeastOnce, 0, None),
        },
        StoreOp::QueuePut {
            client_id: c(),
            seq: 9,
            entry: entry(
                b"\x00first\xff",
                QoS::ExactlyOnce,
                41,
                Some(OutStage::Released),
            ),
        },
        StoreOp::QueuePut {
            client_id: c(),
            seq: 10,
            entry: entry(b"second", QoS::ExactlyOnce, 42, Some(OutStage::Published)),
        },
        StoreOp::IncomingPut {
            client_id: c(),
            packet_id: 65535,
        },
        StoreOp::IncomingPut {
            client_id: c(),
            packet_id: 3,
        },
    ]
}

fn check_full_session(s: &LoadedSession, cid: &ByteStr) {
    assert_eq!(&s.client_id, cid);
    assert_eq!(
        (s.record.expiry_interval, s.record.disconnected_at_ms),
        (3600, Some(1_700_000_000_123))
    );
    let (will, delay) = s.record.will.as_ref().expect("the will");
    assert_eq!(*delay, 30);
    assert_same_message(will, &message("will/t", b"gone", QoS::AtLeastOnce, true));

    let subs: Vec<_> = s
        .subscriptions
        .iter()
        .map(|(f, o, id)| (f.as_str(), *o, *id))
        .collect();
    assert_eq!(
        subs,
        vec![
            (
                "$share/g/x/#",
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
                None
            ),
            (
                "a/+",
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::Never,
                },
                Some(7)
            ),
        ]
    );

    let queue: Vec<_> = s
        .queue
        .iter()
        .map(|(seq, e)| {
            (
                *seq,
                e.qos,
                e.retain,
                e.packet_id,
                e.stage,
                e.subscription_ids.clone(),
            )
        })
        .collect();
    assert_eq!(
        queue,
        vec![
            (
                9,
                QoS::ExactlyOnce,
                false,
                41,
                Some(OutStage::Released),
                vec![7, 300]
            ),
            (
                10,
                QoS::ExactlyOnce,
                false,
                42,
                Some(OutStage::Published),
                vec![7, 300]
            ),
            (300, QoS::AtLeastOnce, false, 0, None, vec![7, 300]),
        ],
        "in sequence order"
    );
    for ((_, e), payload) in s
        .queue
        .iter()
        .zip([&b"\x00first\xff"[..], b"second", b"third"])
    {
        assert_same_message(&e.message, &message("a/b", payload, e.qos, false));
    }
    assert_eq!(s.incoming, vec![3, 65535]);
}

#[test]
fn a_session_round_trips_through_commit_and_load_session() {
    let server = RedisServer::start();
    let store = open(&server);
    let cid = ByteStr::from("client-1");
    store.commit(&full_session(&cid), true).expect("commit");

    let loaded = store
        .load_session(&cid)
        .expect("load")
        .expect("the session is there");
    check_full_session(&loaded, &cid);

    // Another node reads the same.
    let other = open(&server);
    let loaded = other.load_session(&cid).expect("load").expect("there");
    check_full_session(&loaded, &cid);

    assert!(store
        .load_session(&ByteStr::from("nobody"))
        .expect("load")
        .is_none());
    assert!(
        store.load().expect("load").sessions.is_empty(),
        "load() leaves sessions to load_session"
    );
}

#[test]
fn deletes_of_queue_entries_subscriptions_and_incoming_ids() {
    let server = RedisServer::start();
    let store = open(&server);
    let cid = ByteStr::from("c");
    store.commit(&full_session(&cid), false).expect("commit");
    store
        .commit(
            &[
                StoreOp::QueueDelete {
                    client_id: cid.clone(),
                    seq: 10,
                },
                StoreOp::SubscriptionDelete {
                    client_id: cid.clone(),
                    filter: ByteStr::from("a/+"),
                },
                StoreOp::IncomingDelete {
                    client_id: cid.clone(),
                    packet_id: 65535,
                },
                // Replaces seq 9 in place: the stage moves on.
                StoreOp::QueuePut {
                    client_id: cid.clone(),
                    seq: 9,
                    entry: entry(b"\x00first\xff", QoS::ExactlyOnce, 41, None),
                },
            ],
            false,
        )
        .expect("commit the deletes");
    let s = store.load_session(&cid).expect("load").expect("there");
    let seqs: Vec<_> = s
        .queue
        .iter()
        .map(|(seq, e)| (*seq, e.packet_id, e.stage))
        .collect();
    assert_eq!(seqs, vec![(9, 41, None), (300, 0, None)]);
    let filters: Vec<_> = s.subscriptions.iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(filters, vec!["$share/g/x/#"]);
    assert_eq!(s.incoming, vec![3]);
}

#[test]
fn session_delete_leaves_no_key_of_the_client() {
    let server = RedisServer::start();
    let store = open(&server);
    let gone = ByteStr::from("gone-client");
    let kept = ByteStr::from("kept-client");
    store.commit(&full_session(&gone), true).expect("commit");
    store.commit(&full_session(&kept), true).expect("commit");
    store.claim(&gone, "node-a").expect("claim");
    assert!(server
        .keys()
        .iter()
        .any(|k| k.windows(gone.len()).any(|w| w == gone.as_bytes().as_ref())));

    store
        .commit(
            &[StoreOp::SessionDelete {
                client_id: gone.clone(),
            }],
            true,
        )
        .expect("delete");
    assert!(store.release(&gone, "node-a").expect("release"));

    let left: Vec<String> = server
        .keys()
        .iter()
        .filter(|k| k.windows(gone.len()).any(|w| w == gone.as_bytes().as_ref()))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(left.is_empty(), "keys left behind: {left:?}");
    assert!(store.load_session(&gone).expect("load").is_none());
    let kept_back = store.load_session(&kept).expect("load").expect("untouched");
    check_full_session(&kept_back, &kept);
}

#[test]
fn retained_messages_are_shared_between_nodes() {
    let server = RedisServer::start();
    let a = open(&server);
    let b = open(&server);
    let ops: Vec<StoreOp> = (0..2500)
        .map(|i| StoreOp::RetainPut {
            message: message(
                &format!("r/{i}"),
                format!("v{i}").as_bytes(),
                QoS::AtLeastOnce,
                true,
            ),
        })
        .collect();
    a.commit(&ops, true).expect("commit");
    a.commit(
        &[
            StoreOp::RetainDelete {
                topic: ByteStr::from("r/7"),
            },
            StoreOp::RetainPut {
                message: message("r/8", b"replaced", QoS::AtMostOnce, true),
            },
        ],
        true,
    )
    .expect("commit");

    let snapshot = b.load().expect("load from the other node");
    assert_eq!(
        snapshot.retained.len(),
        2499,
        "paged through every topic once"
    );
    assert!(snapshot.retained.iter().all(|m| m.topic.as_str() != "r/7"));
    let r8 = snapshot
        .retained
        .iter()
        .find(|m| m.topic.as_str() == "r/8")
        .expect("r/8");
    assert_same_message(r8, &message("r/8", b"replaced", QoS::AtMostOnce, true));
    let r9 = snapshot
        .retained
        .iter()
        .find(|m| m.topic.as_str() == "r/9")
        .expect("r/9");
    assert_same_message(r9, &message("r/9", b"v9", QoS::AtLeastOnce, true));
}

#[test]
fn claim_release_and_owner_between_two_nodes() {
    let server = RedisServer::start();
    let a = open(&server);
    let b = open(&server);
    let cid = ByteStr::from("roaming");

    assert_eq!(a.owner(&cid).expect("owner"), None);
    assert_eq!(a.claim(&cid, "node-a").expect("claim"), None);
    assert_eq!(b.owner(&cid).expect("owner").as_deref(), Some("node-a"));
    assert_eq!(
        a.claim(&cid, "node-a").expect("claim again").as_deref(),
        Some("node-a")
    );
    assert_eq!(a.owned_by("node-a").expect("owned"), vec![cid.clone()]);

    // B takes it over: the answer names A, the owned sets follow.
    assert_eq!(
        b.claim(&cid, "node-b").expect("take over").as_deref(),
        Some("node-a")
    );
    assert_eq!(a.owner(&cid).expect("owner").as_deref(), Some("node-b"));
    assert!(a.owned_by("node-a").expect("owned").is_empty());
    assert_eq!(a.owned_by("node-b").expect("owned"), vec![cid.clone()]);

    // A, no longer the owner, cannot release it.
    assert!(!a.release(&cid, "node-a").expect("release by a non-owner"));
    assert_eq!(a.owner(&cid).expect("owner").as_deref(), Some("node-b"));
    assert_eq!(a.owned_by("node-b").expect("owned"), vec![cid.clone()]);

    assert!(b.release(&cid, "node-b").expect("release by the owner"));
    assert_eq!(a.owner(&cid).expect("owner"), None);
    assert!(b.owned_by("node-b").expect("owned").is_empty());
    assert!(!b.release(&cid, "node-b").expect("release twice"));
}

#[test]
fn heartbeats_and_adoption_of_a_dead_nodes_sessions() {
    let server = RedisServer::start();
    let a = open(&server);
    let b = open(&server);
    let c = open(&server);
    let ids: Vec<ByteStr> = ["s1", "s2", "s3"].into_iter().map(ByteStr::from).collect();
    for id in &ids {
        a.claim(id, "node-a").expect("claim");
    }
    a.heartbeat("node-a", Duration::from_millis(300))
        .expect("heartbeat");
    b.heartbeat("node-b", Duration::from_secs(30))
        .expect("heartbeat");
    c.heartbeat("node-c", Duration::from_secs(30))
        .expect("heartbeat");
    assert!(b.is_alive("node-a").expect("alive"));
    assert_eq!(
        b.nodes().expect("nodes"),
        vec!["node-a", "node-b", "node-c"]
    );
    assert!(b.dead_owners().expect("dead").is_empty());
    assert!(
        b.adopt("node-a", "node-b").expect("adopt").is_empty(),
        "a live node keeps its sessions"
    );

    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.is_alive("node-a").expect("alive"));
    assert_eq!(b.nodes().expect("nodes"), vec!["node-b", "node-c"]);
    assert_eq!(b.dead_owners().expect("dead"), vec!["node-a"]);

    let mut moved = b.adopt("node-a", "node-b").expect("adopt");
    moved.sort();
    assert_eq!(moved, ids);
    assert!(
        c.adopt("node-a", "node-c").expect("adopt").is_empty(),
        "only one node adopts"
    );
    for id in &ids {
        assert_eq!(c.owner(id).expect("owner").as_deref(), Some("node-b"));
    }
    let mut owned = c.owned_by("node-b").expect("owned");
    owned.sort();
    assert_eq!(owned, ids);
    assert!(c.owned_by("node-a").expect("owned").is_empty());
    assert!(c.dead_owners().expect("dead").is_empty());
}

#[test]
fn elect_picks_one_caller_per_key() {
    let server = RedisServer::start();
    let a = open(&server);
    let b = open(&server);
    assert!(a.elect("p:msg-1", Duration::from_secs(10)).expect("elect"));
    assert!(!b.elect("p:msg-1", Duration::from_secs(10)).expect("elect"));
    assert!(!a.elect("p:msg-1", Duration::from_secs(10)).expect("elect"));
    assert!(b.elect("p:msg-2", Duration::from_secs(10)).expect("elect"));
    // The key is raw (the aedes scheme's), with a TTL.
    let mut c = server.connection();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("p:msg-1")
        .query(&mut c)
        .expect("PTTL");
    assert!((1..=10_000).contains(&ttl), "{ttl}");
    let raw: Option<String> = redis::cmd("GET")
        .arg("pigeon:p:msg-1")
        .query(&mut c)
        .expect("GET");
    assert_eq!(raw, None);
}

#[test]
fn a_redis_restart_fails_one_commit_and_not_the_next() {
    let mut server = RedisServer::start();
    let store = open(&server);
    let cid = ByteStr::from("survivor");
    store.commit(&full_session(&cid), true).expect("commit");

    server.stop();
    let started = Instant::now();
    let err = store
        .commit(
            &[StoreOp::IncomingPut {
                client_id: cid.clone(),
                packet_id: 1,
            }],
            true,
        )
        .expect_err("no Redis: the commit fails");
    assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
    assert!(err.to_string().contains(&server.url()), "{err}");
    assert!(store.load_session(&cid).is_err());
    assert!(store.claim(&cid, "node-a").is_err());

    // Its data is gone (no persistence); the store reconnects and writes again.
    server.restart();
    store
        .commit(&full_session(&cid), true)
        .expect("the commit after the restart succeeds");
    let s = store.load_session(&cid).expect("load").expect("there");
    check_full_session(&s, &cid);

    // A restart while the store is idle costs no call: the broken connection is replaced.
    server.restart();
    store.commit(&full_session(&cid), true).expect("commit");
    assert!(store.load_session(&cid).expect("load").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn persistence_commits_what_was_submitted_during_an_outage() {
    let mut server = RedisServer::start();
    let store = Arc::new(open(&server));
    let persistence =
        Persistence::start(Arc::clone(&store) as Arc<dyn Store>, SyncPolicy::Always, 0);
    let mut committed = persistence.committed();
    let cid = ByteStr::from("queued-meanwhile");

    server.stop();
    let mut last = 0;
    for op in full_session(&cid) {
        last = persistence.submit(op);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        *committed.borrow() < last,
        "nothing is committed while Redis is down"
    );

    let _server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart redis");
    tokio::time::timeout(Duration::from_secs(20), committed.wait_for(|c| *c >= last))
        .await
        .expect("the writer recovers once Redis is back")
        .expect("committed");
    let loaded = store.load_session(&cid).expect("load").expect("there");
    check_full_session(&loaded, &cid);
    persistence.stop().await;
}

#[test]
fn client_ids_with_any_characters_work() {
    let server = RedisServer::start();
    let store = open(&server);
    let ids = [
        "a:b:c",
        "star*and?[glob]\\",
        "with spaces and\ttab",
        "中文-Ωmega-🐦",
        "pigeon:session:nested",
        "",
    ];
    for id in ids {
        let cid = ByteStr::from(id);
        store.commit(&full_session(&cid), true).expect("commit");
        assert_eq!(store.claim(&cid, "node-ü").expect("claim"), None);
    }
    for id in ids {
        let cid = ByteStr::from(id);
        let s = store.load_session(&cid).expect("load").expect("there");
        check_full_session(&s, &cid);
        assert_eq!(store.owner(&cid).expect("owner").as_deref(), Some("node-ü"));
    }
    let mut owned = store.owned_by("node-ü").expect("owned");
    owned.sort();
    let mut expected: Vec<ByteStr> = ids.iter().map(|id| ByteStr::from(*id)).collect();
    expected.sort();
    assert_eq!(owned, expected);

    // Deleting "a:b:c" touches no other client's keys, prefix-sharing or not.
    store
        .commit(
            &[StoreOp::SessionDelete {
                client_id: ByteStr::from("a:b:c"),
            }],
            true,
        )
        .expect("delete");
    assert!(store
        .load_session(&ByteStr::from("a:b:c"))
        .expect("load")
        .is_none());
    for id in &ids[1..] {
        assert!(
            store
                .load_session(&ByteStr::from(*id))
                .expect("load")
                .is_some(),
            "{id}"
        );
    }
}

#[test]
fn open_names_the_url_without_its_password() {
    let port = free_port();
    let url = format!("redis://user:hunter2@127.0.0.1:{port}/0");
    let err = RedisStore::open(&url, "pigeon:")
        .err()
        .expect("nothing listens there");
    let text = err.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}
