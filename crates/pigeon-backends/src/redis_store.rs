//! `[storage] backend = "redis"`: sessions and retained messages in one Redis that every node shares.
//!
//! Keys start with a prefix (`pigeon:` by default, written `{p}`); client ids and topics go in
//! raw, since Redis keys and fields are binary-safe. Values are `record`'s encodings, the bytes the
//! embedded store keeps.
//! - `{p}session:<cid>` string: the session record. `{p}subs:<cid>` hash: filter → options and
//!   subscription id. `{p}queue:<cid>` hash: decimal seq → queue entry. `{p}incoming:<cid>` set:
//!   decimal ids of inbound QoS 2 packets. `{p}retained` hash: topic → message.
//! - `{p}owner:<cid>` string: the broker id of the node that owns the session (only it writes the
//!   keys above for that client; the store does not check). `{p}owned:<broker>` set: its client
//!   ids. `{p}node:<broker>`: its heartbeat, with a TTL. `{p}adopt:<broker>`: for 60 s, which node
//!   took over a dead node's sessions. `elect` keys are raw, no prefix (`p:<id>` in the aedes scheme).
//!
//! `load` returns only the retained messages: other nodes own sessions too, so the broker reads
//! one with `load_session` when its client connects. `commit` sends a batch as one MULTI/EXEC
//! (one round trip); `sync` is ignored, Redis's `appendonly`/`appendfsync` decide durability.
//! SessionDelete removes the four session keys, not ownership (`release` does that).
//! Ownership changes are Lua scripts run with EVAL (the crate's `script` feature is off). They
//! touch keys they compute, so they need one Redis, not Redis Cluster.
//! One sync connection; any error drops it and the next call reconnects. A call that only reads
//! or whose replay is harmless (`commit`: its ops overwrite or delete) is tried once more on a
//! fresh connection when a reused one turns out broken (Redis restarted while we were idle);
//! `claim`, `release`, `elect` and `adopt` are not, as a replay would change their answer.

use crate::record::*;
use bytes::Bytes;
use pigeon_codec::{ByteStr, SubscriptionOptions};
use pigeon_core::store::{now_ms, LoadedSession, Snapshot, Store, StoreError, StoreOp};
use redis::{Connection, RedisError, RedisResult};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The key prefix when the configuration names none.
pub const DEFAULT_PREFIX: &str = "pigeon:";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per read or write on the socket: a Redis that hangs fails the call rather than the thread.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an adoption marker keeps other nodes from adopting the same dead node.
const ADOPT_MARKER_MS: u64 = 60_000;
/// Keys and fields asked for per SCAN/HSCAN page.
const SCAN_COUNT: u32 = 1000;

const SESSION: &str = "session:";
const SUBS: &str = "subs:";
const QUEUE: &str = "queue:";
const INCOMING: &str = "incoming:";
const RETAINED: &str = "retained";
const OWNER: &str = "owner:";
const OWNED: &str = "owned:";
const NODE: &str = "node:";
const ADOPT: &str = "adopt:";

/// KEYS: owner key. ARGV: me, `{p}owned:`, client id. Returns the previous owner.
const CLAIM: &str = r"
local prev = redis.call('GET', KEYS[1])
if prev ~= ARGV[1] then
  if prev then redis.call('SREM', ARGV[2] .. prev, ARGV[3]) end
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SADD', ARGV[2] .. ARGV[1], ARGV[3])
end
return prev
";

/// KEYS: owner key, my owned set. ARGV: me, client id. 1 if it was mine and is now nobody's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// KEYS: adopt marker, dead's owned set, my owned set, dead's node key.
/// ARGV: me, `{p}owner:`, marker TTL in ms, dead. Returns the client ids moved to me.
const ADOPT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then return {} end
local moved = {}
for _, cid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local owner = ARGV[2] .. cid
  if redis.call('GET', owner) == ARGV[4] then
    redis.call('SET', owner, ARGV[1])
    redis.call('SADD', KEYS[3], cid)
    moved[#moved + 1] = cid
  end
end
redis.call('DEL', KEYS[2])
return moved
";

/// Whether a call may be sent again after its connection broke under it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    Safe,
    Never,
}

pub struct RedisStore {
    client: redis::Client,
    /// The URL without its password, for errors and logs.
    url: String,
    prefix: Vec<u8>,
    /// A std mutex: every method is sync (the persistence thread or `spawn_blocking`), so nothing
    /// awaits while holding it. `None` after an error, until the next call reconnects.
    connection: Mutex<Option<Connection>>,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port/db` or `redis+unix://`) and checks
    /// the server answers. Errors name the URL with its password replaced by `***`.
    pub fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let redacted = redact(url);
        let client = redis::Client::open(url).map_err(|e| StoreError::Backend {
            path: redacted.clone(),
            message: format!("not a Redis URL: {e}"),
        })?;
        let store = RedisStore {
            client,
            url: redacted,
            prefix: prefix.as_bytes().to_vec(),
            connection: Mutex::new(None),
        };
        store.run("PING", Replay::Safe, |c| {
            redis::cmd("PING").query::<String>(c)
        })?;
        Ok(store)
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything stored for one session, or `None` if it has no session record. One MULTI/EXEC,
    /// so the parts are from the same moment.
    pub fn load_session(&self, client_id: &ByteStr) -> Result<Option<LoadedSession>, StoreError> {
        let cid = client_id.as_bytes();
        let (session, subs, queue, incoming) = (
            self.key(SESSION, cid),
            self.key(SUBS, cid),
            self.key(QUEUE, cid),
            self.key(INCOMING, cid),
        );
        type Raw = HashMap<Vec<u8>, Vec<u8>>;
        let (record, subs, queue, incoming): (Option<Vec<u8>>, Raw, Raw, Vec<Vec<u8>>) =
            self.run("load session", Replay::Safe, |c| {
                redis::pipe()
                    .atomic()
                    .cmd("GET")
                    .arg(&session)
                    .cmd("HGETALL")
                    .arg(&subs)
                    .cmd("HGETALL")
                    .arg(&queue)
                    .cmd("SMEMBERS")
                    .arg(&incoming)
                    .query(c)
            })?;
        let Some(record) = record else {
            return Ok(None);
        };
        let corrupt = |table, detail: String| self.corrupt(table, client_id, detail);
        let record = decode_session(&record).map_err(|e| corrupt("session", e))?;
        let mut subscriptions = Vec::with_capacity(subs.len());
        for (filter, value) in subs {
            let filter = ByteStr::from_utf8(Bytes::from(filter))
                .ok_or_else(|| corrupt("subs", "filter is not UTF-8".into()))?;
            let (options, id) = decode_subscription(&value).map_err(|e| corrupt("subs", e))?;
            subscriptions.push((filter, options, id));
        }
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(queue.len());
        for (seq, value) in queue {
            let seq = parse_decimal(&seq)
                .ok_or_else(|| corrupt("queue", format!("bad sequence {seq:?}")))?;
            entries.push((seq, decode_entry(&value).map_err(|e| corrupt("queue", e))?));
        }
        entries.sort_by_key(|(seq, _)| *seq);
        let mut ids = Vec::with_capacity(incoming.len());
        for id in incoming {
            let n = parse_decimal(&id)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| corrupt("incoming", format!("bad packet id {id:?}")))?;
            ids.push(n);
        }
        ids.sort_unstable();
        Ok(Some(LoadedSession {
            client_id: client_id.clone(),
            record,
            subscriptions,
            queue: entries,
            incoming: ids,
        }))
    }

    /// The session's subscriptions alone (empty when it has none or no session): what a node
    /// must listen for while the session comes to it.
    pub fn subscriptions(
        &self,
        client_id: &ByteStr,
    ) -> Result<Vec<(ByteStr, SubscriptionOptions, Option<u32>)>, StoreError> {
        let key = self.key(SUBS, client_id.as_bytes());
        let subs: HashMap<Vec<u8>, Vec<u8>> = self.run("subscriptions", Replay::Safe, |c| {
            redis::cmd("HGETALL").arg(&key).query(c)
        })?;
        let corrupt = |detail: String| self.corrupt("subs", client_id, detail);
        let mut out = Vec::with_capacity(subs.len());
        for (filter, value) in subs {
            let filter = ByteStr::from_utf8(Bytes::from(filter))
                .ok_or_else(|| corrupt("filter is not UTF-8".into()))?;
            let (options, id) = decode_subscription(&value).map_err(corrupt)?;
            out.push((filter, options, id));
        }
        Ok(out)
    }

    /// Makes `me` the owner of `client_id`'s session; returns the owner before (`Some(me)` if it
    /// already was).
    pub fn claim(&self, client_id: &ByteStr, me: &str) -> Result<Option<String>, StoreError> {
        let owned = self.key(OWNED, b"");
        self.run("claim", Replay::Never, |c| {
            redis::cmd("EVAL")
                .arg(CLAIM)
                .arg(1)
                .arg(self.key(OWNER, client_id.as_bytes()))
                .arg(me)
                .arg(&owned)
                .arg(client_id.as_bytes().as_ref())
                .query(c)
        })
    }

    /// Ends `me`'s ownership of `client_id`'s session; false (and nothing changes) if another
    /// node owns it, or nobody does.
    pub fn release(&self, client_id: &ByteStr, me: &str) -> Result<bool, StoreError> {
        self.run("release", Replay::Never, |c| {
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(2)
                .arg(self.key(OWNER, client_id.as_bytes()))
                .arg(self.key(OWNED, me.as_bytes()))
                .arg(me)
                .arg(client_id.as_bytes().as_ref())
                .query(c)
        })
    }

    /// The broker id owning `client_id`'s session.
    pub fn owner(&self, client_id: &ByteStr) -> Result<Option<String>, StoreError> {
        let key = self.key(OWNER, client_id.as_bytes());
        self.run("owner", Replay::Safe, |c| {
            redis::cmd("GET").arg(&key).query(c)
        })
    }

    /// The client ids whose sessions `broker_id` owns.
    pub fn owned_by(&self, broker_id: &str) -> Result<Vec<ByteStr>, StoreError> {
        let key = self.key(OWNED, broker_id.as_bytes());
        let raw: Vec<Vec<u8>> = self.run("owned", Replay::Safe, |c| {
            redis::cmd("SMEMBERS").arg(&key).query(c)
        })?;
        self.client_ids(raw, "owned")
    }

    /// Says `me` is alive for `ttl` (at least 1 ms). The value is the wall-clock time, in ms.
    pub fn heartbeat(&self, me: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key(NODE, me.as_bytes());
        self.run("heartbeat", Replay::Safe, |c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(now_ms())
                .arg("PX")
                .arg(ttl_ms(ttl))
                .exec(c)
        })
    }

    /// Whether `broker_id`'s last heartbeat is still within its TTL.
    pub fn is_alive(&self, broker_id: &str) -> Result<bool, StoreError> {
        let key = self.key(NODE, broker_id.as_bytes());
        self.run("is_alive", Replay::Safe, |c| {
            redis::cmd("EXISTS").arg(&key).query(c)
        })
    }

    /// The broker ids with a live heartbeat, sorted.
    pub fn nodes(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.scan_ids(NODE)?.into_iter().collect())
    }

    /// Broker ids that own sessions but have no live heartbeat: candidates for `adopt`.
    pub fn dead_owners(&self) -> Result<Vec<String>, StoreError> {
        let mut dead = Vec::new();
        for id in self.scan_ids(OWNED)? {
            if !self.is_alive(&id)? {
                dead.push(id);
            }
        }
        Ok(dead)
    }

    /// Moves every session `dead` owns to `me`, once: nothing if `dead` is alive or another node
    /// adopted it in the last 60 s. Returns the client ids moved.
    pub fn adopt(&self, dead: &str, me: &str) -> Result<Vec<ByteStr>, StoreError> {
        if dead == me {
            return Ok(Vec::new());
        }
        let owner = self.key(OWNER, b"");
        let raw: Vec<Vec<u8>> = self.run("adopt", Replay::Never, |c| {
            redis::cmd("EVAL")
                .arg(ADOPT_SCRIPT)
                .arg(4)
                .arg(self.key(ADOPT, dead.as_bytes()))
                .arg(self.key(OWNED, dead.as_bytes()))
                .arg(self.key(OWNED, me.as_bytes()))
                .arg(self.key(NODE, dead.as_bytes()))
                .arg(me)
                .arg(&owner)
                .arg(ADOPT_MARKER_MS)
                .arg(dead)
                .query(c)
        })?;
        self.client_ids(raw, "owned")
    }

    /// `SET <key> 1 PX ttl NX`: true for the one caller that set it. `key` is used as it is,
    /// without the prefix, so it matches what other programs on the same Redis elect with.
    pub fn elect(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self.run("elect", Replay::Never, |c| {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .arg("NX")
                .query(c)
        })?;
        Ok(set.is_some())
    }

    fn key(&self, kind: &str, id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + kind.len() + id.len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(id);
        key
    }

    /// The ids after `{p}<kind>` of every key SCAN finds with that start.
    fn scan_ids(&self, kind: &str) -> Result<BTreeSet<String>, StoreError> {
        let start = self.key(kind, b"");
        let mut pattern = glob_escape(&start);
        pattern.push(b'*');
        let mut ids = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self.run("scan", Replay::Safe, |c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(c)
            })?;
            ids.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(start.as_slice()))
                    .map(|id| String::from_utf8_lossy(id).into_owned()),
            );
            if next == 0 {
                return Ok(ids);
            }
            cursor = next;
        }
    }

    fn client_ids(
        &self,
        raw: Vec<Vec<u8>>,
        table: &'static str,
    ) -> Result<Vec<ByteStr>, StoreError> {
        raw.into_iter()
            .map(|id| {
                ByteStr::from_utf8(Bytes::from(id)).ok_or_else(|| StoreError::Corrupt {
                    path: self.url.clone(),
                    table,
                    detail: "client id is not UTF-8".into(),
                })
            })
            .collect()
    }

    /// Runs `f` on the connection, connecting first if there is none. Any error drops the
    /// connection: after a timeout or a half-read reply it is out of step with the server.
    fn run<T>(
        &self,
        what: &str,
        replay: Replay,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let reused = slot.is_some();
        let connection = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(self.connect()?),
        };
        let first = f(connection);
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        *slot = None;
        if !(reused && replay == Replay::Safe && broken(&e)) {
            return Err(self.error(what, e));
        }
        let connection = slot.insert(self.connect()?);
        f(connection).map_err(|e| {
            *slot = None;
            self.error(what, e)
        })
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let c = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| self.error("connect", e))?;
        c.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| c.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| self.error("connect", e))?;
        Ok(c)
    }

    fn error(&self, what: &str, e: RedisError) -> StoreError {
        StoreError::Backend {
            path: self.url.clone(),
            message: format!("{what}: {e}"),
        }
    }

    fn corrupt(&self, table: &'static str, client_id: &ByteStr, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.url.clone(),
            table,
            detail: format!("client {client_id:?}: {detail}"),
        }
    }
}

impl Store for RedisStore {
    /// The retained messages only; sessions are read per client with `load_session`. HSCAN in
    /// pages, so a large retained set does not block Redis for other nodes.
    fn load(&self) -> Result<Snapshot, StoreError> {
        let key = self.key(RETAINED, b"");
        // HSCAN may return a field twice (the hash grows during the scan): keyed by topic.
        let mut messages: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) =
                self.run("load retained", Replay::Safe, |c| {
                    redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query(c)
                })?;
            let mut page = page.into_iter();
            while let (Some(topic), Some(value)) = (page.next(), page.next()) {
                messages.insert(topic, value);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut retained = Vec::with_capacity(messages.len());
        for (topic, value) in messages {
            let m = decode_message(&value).map_err(|e| StoreError::Corrupt {
                path: self.url.clone(),
                table: "retained",
                detail: format!("topic {:?}: {e}", String::from_utf8_lossy(&topic)),
            })?;
            retained.push(Arc::new(m));
        }
        Ok(Snapshot {
            sessions: Vec::new(),
            retained,
        })
    }

    fn commit(&self, ops: &[StoreOp], _sync: bool) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for op in ops {
            match op {
                StoreOp::SessionPut { client_id, record } => {
                    pipe.cmd("SET")
                        .arg(self.key(SESSION, client_id.as_bytes()))
                        .arg(encode_session(record))
                        .ignore();
                }
                StoreOp::SessionDelete { client_id } => {
                    let cid = client_id.as_bytes();
                    pipe.cmd("DEL")
                        .arg(self.key(SESSION, cid))
                        .arg(self.key(SUBS, cid))
                        .arg(self.key(QUEUE, cid))
                        .arg(self.key(INCOMING, cid))
                        .ignore();
                }
                StoreOp::SubscriptionPut {
                    client_id,
                    filter,
                    options,
                    id,
                } => {
                    pipe.cmd("HSET")
                        .arg(self.key(SUBS, client_id.as_bytes()))
                        .arg(filter.as_bytes().as_ref())
                        .arg(encode_subscription(options, *id))
                        .ignore();
                }
                StoreOp::SubscriptionDelete { client_id, filter } => {
                    pipe.cmd("HDEL")
                        .arg(self.key(SUBS, client_id.as_bytes()))
                        .arg(filter.as_bytes().as_ref())
                        .ignore();
                }
                StoreOp::QueuePut {
                    client_id,
                    seq,
                    entry,
                } => {
                    pipe.cmd("HSET")
                        .arg(self.key(QUEUE, client_id.as_bytes()))
                        .arg(*seq)
                        .arg(encode_entry(entry))
                        .ignore();
                }
                StoreOp::QueueDelete { client_id, seq } => {
                    pipe.cmd("HDEL")
                        .arg(self.key(QUEUE, client_id.as_bytes()))
                        .arg(*seq)
                        .ignore();
                }
                StoreOp::IncomingPut {
                    client_id,
                    packet_id,
                } => {
                    pipe.cmd("SADD")
                        .arg(self.key(INCOMING, client_id.as_bytes()))
                        .arg(*packet_id)
                        .ignore();
                }
                StoreOp::IncomingDelete {
                    client_id,
                    packet_id,
                } => {
                    pipe.cmd("SREM")
                        .arg(self.key(INCOMING, client_id.as_bytes()))
                        .arg(*packet_id)
                        .ignore();
                }
                StoreOp::RetainPut { message } => {
                    let mut value = Vec::with_capacity(32 + message.payload.len());
                    encode_message(message, &mut value);
                    pipe.cmd("HSET")
                        .arg(self.key(RETAINED, b""))
                        .arg(message.topic.as_bytes().as_ref())
                        .arg(value)
                        .ignore();
                }
                StoreOp::RetainDelete { topic } => {
                    pipe.cmd("HDEL")
                        .arg(self.key(RETAINED, b""))
                        .arg(topic.as_bytes().as_ref())
                        .ignore();
                }
            }
        }
        // A replay after a broken connection is harmless: every op overwrites or deletes, so the
        // batch applied twice leaves what it leaves once.
        self.run("commit", Replay::Safe, |c| pipe.exec(c))
    }

    /// 0: Redis's memory is shared with other nodes and other programs.
    fn disk_bytes(&self) -> u64 {
        0
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

/// Redis writes integers as decimal text.
fn parse_decimal(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A failure of the connection itself rather than an answer from Redis; not a timeout, which
/// a second try would only double.
fn broken(e: &RedisError) -> bool {
    (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()) && !e.is_timeout()
}

/// `bytes` matched literally by a SCAN MATCH pattern.
fn glob_escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// `url` with its password replaced by `***`: in the user part (`redis://user:pw@host`, or
/// `redis://pw@host`, which some clients read as a password) and in `pass=`/`password=`
/// query parameters (`redis+unix:///path?pass=pw`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if matches!(k, "pass" | "password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis://user:s3cr@t@host:6379/2",
                "redis://user:***@host:6379/2",
            ),
            ("redis://:pw@host", "redis://:***@host"),
            ("redis://pw@host/1", "redis://***@host/1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=pw",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape(b"p*[x]?\\:"), b"p\\*\\[x\\]\\?\\\\:".to_vec());
        assert_eq!(glob_escape(b"pigeon:node:"), b"pigeon:node:".to_vec());
    }
}
