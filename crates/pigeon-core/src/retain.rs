//! Retained messages: a trie of topic levels, searched with a subscription's filter.
//!
//! The reverse of the subscription index: it stores topics and is asked with a filter, so a
//! subscribe to `a/+/c` visits only the branches the filter allows. An empty payload clears a
//! topic (MQTT-3.3.1-6); expired messages are skipped on lookup and swept by `remove_expired`.

use crate::message::Message;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
}

impl RetainedStore {
    pub fn new() -> RetainedStore {
        RetainedStore::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `message` as the retained message of its topic, or clears the topic when its payload
    /// is empty.
    pub fn set(&mut self, message: Arc<Message>) {
        if message.payload.is_empty() {
            self.clear(&message.topic.clone());
            return;
        }
        let mut node = &mut self.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.len += 1;
        }
    }

    pub fn clear(&mut self, topic: &str) {
        if Self::clear_in(&mut self.root, topic.split('/')) {
            self.len -= 1;
        }
    }

    fn clear_in<'a>(node: &mut Node, mut levels: impl Iterator<Item = &'a str>) -> bool {
        match levels.next() {
            None => node.message.take().is_some(),
            Some(level) => {
                let Some(child) = node.children.get_mut(level) else {
                    return false;
                };
                let removed = Self::clear_in(child, levels);
                if child.is_empty() {
                    node.children.remove(level);
                }
                removed
            }
        }
    }

    /// Calls `f` with every unexpired retained message whose topic matches `filter` (a valid plain
    /// filter).
    pub fn for_each_match(&self, filter: &str, now: Instant, mut f: impl FnMut(&Arc<Message>)) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::walk(&self.root, &levels, true, now, &mut f);
    }

    fn walk(
        node: &Node,
        levels: &[&str],
        at_root: bool,
        now: Instant,
        f: &mut impl FnMut(&Arc<Message>),
    ) {
        let Some((&level, rest)) = levels.split_first() else {
            if let Some(m) = &node.message {
                if !m.is_expired(now) {
                    f(m);
                }
            }
            return;
        };
        match level {
            "#" => {
                // `a/#` matches `a` itself as well as everything below it.
                if let Some(m) = &node.message {
                    if !at_root && !m.is_expired(now) {
                        f(m);
                    }
                }
                for (name, child) in &node.children {
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    Self::walk_all(child, now, f);
                }
            }
            "+" => {
                for (name, child) in &node.children {
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    Self::walk(child, rest, false, now, f);
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    Self::walk(child, rest, false, now, f);
                }
            }
        }
    }

    fn walk_all(node: &Node, now: Instant, f: &mut impl FnMut(&Arc<Message>)) {
        if let Some(m) = &node.message {
            if !m.is_expired(now) {
                f(m);
            }
        }
        for child in node.children.values() {
            Self::walk_all(child, now, f);
        }
    }

    /// Drops every expired message; returns how many.
    pub fn remove_expired(&mut self, now: Instant) -> usize {
        let removed = Self::sweep(&mut self.root, now);
        self.len -= removed;
        removed
    }

    fn sweep(node: &mut Node, now: Instant) -> usize {
        let mut removed = 0;
        if node.message.as_ref().is_some_and(|m| m.is_expired(now)) {
            node.message = None;
            removed += 1;
        }
        node.children.retain(|_, child| {
            removed += Self::sweep(child, now);
            !child.is_empty()
        });
        removed
    }
}
