//! The subscription index: a trie of topic levels that finds every filter matching a topic.
//!
//! Matching walks one path per literal level plus the `+` and `#` branches, so its cost grows with
//! the topic's depth and the number of matching filters, never with the number of filters that do
//! not match. It owns no session state: entries point at sessions, which own their subscriptions'
//! record of truth. Invariants: a (filter, share group, session) triple appears at most once;
//! empty nodes are pruned on removal, so the trie's size follows the live subscriptions.

use crate::session::{Session, SessionId};
use pigeon_codec::SubscriptionOptions;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// The members of one `$share/<group>/<filter>`; each message goes to one of them.
#[derive(Debug, Default)]
pub struct SharedGroup {
    /// `<group>/<filter>`: names the group across nodes.
    key: Box<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Round robin, preferring members whose client is connected; an offline member is chosen
    /// only when none is connected (its session queues the message).
    pub fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|s| s.session.is_connected())
            .or_else(|| self.members.get(start % n))
    }

    pub fn members(&self) -> &[Subscriber] {
        &self.members
    }

    /// `<group>/<filter>`, the shared subscription without its `$share/` prefix.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// One match found while walking the trie.
pub enum Match<'a> {
    Single(&'a Subscriber),
    Shared(&'a SharedGroup),
}

#[derive(Debug, Default)]
struct Leaf {
    subscribers: HashMap<SessionId, Subscriber>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Leaf {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.shared.is_empty()
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node, LevelHashState>,
    plus: Option<Box<Node>>,
    /// Subscribers of `<path to here>/#`.
    hash: Option<Box<Leaf>>,
    /// Subscribers of exactly `<path to here>`.
    exact: Option<Box<Leaf>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.exact.is_none()
    }
}

#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    root: Node,
    len: usize,
}

/// Builds the hashers of a node's children: a key drawn from std's `RandomState` per node, so
/// which levels collide cannot be worked out ahead of time, and a multiply-fold hash of the
/// level's bytes, which costs a fraction of the SipHash `RandomState` hashes with (a look-up per
/// routed message spent some 150 instructions hashing a five-byte level).
#[derive(Debug, Clone)]
struct LevelHashState {
    key: u64,
}

impl Default for LevelHashState {
    fn default() -> LevelHashState {
        LevelHashState {
            key: std::collections::hash_map::RandomState::new().hash_one(0x5049_4745_4f4e_u64) | 1,
        }
    }
}

impl BuildHasher for LevelHashState {
    type Hasher = LevelHasher;

    fn build_hasher(&self) -> LevelHasher {
        LevelHasher { h: self.key }
    }
}

/// The hasher `LevelHashState` builds: 8 bytes at a time, each mixed in by a 64x64->128-bit
/// multiply folded to 64 bits.
struct LevelHasher {
    h: u64,
}

const LEVEL_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for LevelHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            self.h = fold_mul(self.h ^ word, LEVEL_MUL);
        }
        let tail = chunks.remainder();
        let mut word = [0u8; 8];
        word[..tail.len()].copy_from_slice(tail);
        // The length keeps "a" and "a\0" apart.
        let word = u64::from_le_bytes(word) ^ ((bytes.len() as u64) << 56);
        self.h = fold_mul(self.h ^ word, LEVEL_MUL);
    }

    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.h = fold_mul(self.h ^ u64::from(b), LEVEL_MUL);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

/// Splits off the first level of `rest`: `None` once the topic is exhausted.
///
/// Scans bytes for `/`: `split_once('/')` goes through the `char` searcher, which cost several
/// times as much on the short levels of real topics (it was 7 % of a routed message). `/` is
/// ASCII, so the byte position is a char boundary on both sides.
#[inline]
fn next_level(rest: Option<&str>) -> Option<(&str, Option<&str>)> {
    let rest = rest?;
    Some(match rest.as_bytes().iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    })
}

/// The first level of a topic or filter (the whole of it when it has one level).
#[inline]
fn first_level(topic: &str) -> &str {
    next_level(Some(topic)).map_or(topic, |(level, _)| level)
}

impl SubscriptionIndex {
    pub fn new() -> SubscriptionIndex {
        SubscriptionIndex::default()
    }

    /// Number of (filter, group, session) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `sub` under `filter` (a valid plain filter; `group` for `$share/group/`).
    /// Returns true if the session already had this subscription.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let leaf = Self::leaf_mut(&mut self.root, filter);
        let existed = match group {
            None => leaf.subscribers.insert(sub.session.id(), sub).is_some(),
            Some(g) => {
                let group = leaf.shared.entry(g.into()).or_insert_with(|| SharedGroup {
                    key: format!("{g}/{filter}").into(),
                    ..SharedGroup::default()
                });
                let id = sub.session.id();
                match group.members.iter_mut().find(|m| m.session.id() == id) {
                    Some(m) => {
                        *m = sub;
                        true
                    }
                    None => {
                        group.members.push(sub);
                        false
                    }
                }
            }
        };
        if !existed {
            self.len += 1;
        }
        existed
    }

    fn leaf_mut<'a>(root: &'a mut Node, filter: &str) -> &'a mut Leaf {
        let mut node = root;
        let mut rest = Some(filter);
        while let Some((level, tail)) = next_level(rest) {
            match level {
                "#" => return node.hash.get_or_insert_with(Default::default),
                "+" => node = node.plus.get_or_insert_with(Default::default),
                _ => node = node.children.entry(level.into()).or_default(),
            }
            rest = tail;
        }
        node.exact.get_or_insert_with(Default::default)
    }

    /// Removes the session's subscription; true if there was one.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let removed = Self::remove_in(&mut self.root, Some(filter), group, session);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(
        node: &mut Node,
        rest: Option<&str>,
        group: Option<&str>,
        session: SessionId,
    ) -> bool {
        let Some((level, tail)) = next_level(rest) else {
            return Self::remove_from_leaf(&mut node.exact, group, session);
        };
        match level {
            "#" => Self::remove_from_leaf(&mut node.hash, group, session),
            "+" => {
                let Some(child) = node.plus.as_mut() else {
                    return false;
                };
                let removed = Self::remove_in(child, tail, group, session);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            _ => {
                let Some(child) = node.children.get_mut(level) else {
                    return false;
                };
                let removed = Self::remove_in(child, tail, group, session);
                if child.is_empty() {
                    node.children.remove(level);
                }
                removed
            }
        }
    }

    fn remove_from_leaf(
        slot: &mut Option<Box<Leaf>>,
        group: Option<&str>,
        session: SessionId,
    ) -> bool {
        let Some(leaf) = slot.as_mut() else {
            return false;
        };
        let removed = match group {
            None => leaf.subscribers.remove(&session).is_some(),
            Some(g) => match leaf.shared.get_mut(g) {
                None => false,
                Some(grp) => {
                    let before = grp.members.len();
                    grp.members.retain(|m| m.session.id() != session);
                    let removed = grp.members.len() != before;
                    if grp.members.is_empty() {
                        leaf.shared.remove(g);
                    }
                    removed
                }
            },
        };
        if leaf.is_empty() {
            *slot = None;
        }
        removed
    }

    /// Calls `f` for every subscription whose filter matches `topic` (a valid topic name), once per
    /// matching filter: a session with overlapping filters is reported once for each.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a>)) {
        // MQTT-4.7.2-1: filters starting with a wildcard do not match topics starting with '$'.
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, Some(topic), true, dollar, &mut f);
    }

    fn walk<'a>(
        node: &'a Node,
        rest: Option<&str>,
        at_root: bool,
        dollar: bool,
        f: &mut impl FnMut(Match<'a>),
    ) {
        let wildcards_allowed = !(at_root && dollar);
        if wildcards_allowed {
            if let Some(leaf) = &node.hash {
                Self::emit(leaf, f);
            }
        }
        let Some((level, tail)) = next_level(rest) else {
            if let Some(leaf) = &node.exact {
                Self::emit(leaf, f);
            }
            return;
        };
        if let Some(child) = node.children.get(level) {
            Self::walk(child, tail, false, dollar, f);
        }
        if wildcards_allowed {
            if let Some(child) = &node.plus {
                Self::walk(child, tail, false, dollar, f);
            }
        }
    }

    fn emit<'a>(leaf: &'a Leaf, f: &mut impl FnMut(Match<'a>)) {
        for sub in leaf.subscribers.values() {
            f(Match::Single(sub));
        }
        for group in leaf.shared.values() {
            f(Match::Shared(group));
        }
    }
}

/// The subscription index split into shards by a topic's first level, each behind its own
/// `RwLock`, so publishes on different first levels touch different locks and a SUBSCRIBE blocks
/// only its shard. Filters whose first level is a wildcard (`+/...`, `#`, and shared ones) live
/// in one more shard, which a publish reads only while it holds any filter.
#[derive(Debug)]
pub struct ShardedIndex {
    shards: Box<[RwLock<SubscriptionIndex>]>,
    wild: RwLock<SubscriptionIndex>,
    wild_len: AtomicUsize,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // The trie stays consistent at every step a panic could interrupt.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// A cheap, stable hash of a topic level (FNV-1a): it only spreads first levels over shards.
fn level_hash(level: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in level.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as usize
}

impl ShardedIndex {
    pub fn new(shards: usize) -> ShardedIndex {
        ShardedIndex {
            shards: (0..shards.max(1)).map(|_| RwLock::default()).collect(),
            wild: RwLock::default(),
            wild_len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, first_level: &str) -> &RwLock<SubscriptionIndex> {
        &self.shards[level_hash(first_level) % self.shards.len()]
    }

    /// The shard that holds `filter` (a plain filter), and whether it is the wildcard shard.
    fn home(&self, filter: &str) -> (&RwLock<SubscriptionIndex>, bool) {
        let first = first_level(filter);
        match first {
            "+" | "#" => (&self.wild, true),
            _ => (self.shard(first), false),
        }
    }

    pub fn insert(&self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let (lock, wild) = self.home(filter);
        let existed = write(lock).insert(filter, group, sub);
        if wild && !existed {
            self.wild_len.fetch_add(1, Ordering::Relaxed);
        }
        existed
    }

    pub fn remove(&self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let (lock, wild) = self.home(filter);
        let removed = write(lock).remove(filter, group, session);
        if wild && removed {
            self.wild_len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Number of (filter, group, session) entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum::<usize>() + read(&self.wild).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every subscription whose filter matches `topic`, as
    /// `SubscriptionIndex::for_each_match` does, reading at most two shards.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(Match<'_>)) {
        let first = first_level(topic);
        read(self.shard(first)).for_each_match(topic, &mut f);
        // Wildcard-first filters never match `$` topics (MQTT-4.7.2-1).
        if !topic.starts_with('$') && self.wild_len.load(Ordering::Relaxed) > 0 {
            read(&self.wild).for_each_match(topic, &mut f);
        }
    }
}
