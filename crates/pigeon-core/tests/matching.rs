//! The subscription index and the retained store against the reference matcher
//! `pigeon_codec::topic::matches`, on generated topics and filters.

use bytes::Bytes;
use pigeon_codec::{topic, ByteStr, PublishProperties, QoS, SubscriptionOptions};
use pigeon_core::retain::RetainedStore;
use pigeon_core::subscriptions::{Match, ShardedIndex, Subscriber, SubscriptionIndex};
use pigeon_core::{Message, Session};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("".to_string()),
        Just("$x".to_string()),
        Just("c".to_string())
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![3 => level(), 1 => Just("+".to_string())];
    (prop::collection::vec(lvl, 1..5), any::<bool>()).prop_map(|(mut v, hash)| {
        if hash {
            v.push("#".to_string());
        }
        v.join("/")
    })
}

fn subscriber(id: u64) -> Subscriber {
    Subscriber {
        session: Arc::new(Session::new(id, ByteStr::from(format!("c{id}")), 0)),
        options: SubscriptionOptions::default(),
        id: None,
    }
}

fn matched_ids(index: &SubscriptionIndex, topic: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    index.for_each_match(topic, |m| {
        if let Match::Single(s) = m {
            ids.insert(s.session.id());
        }
    });
    ids
}

proptest! {
    #[test]
    fn index_agrees_with_reference(filters in prop::collection::vec(filter(), 1..20), topics in prop::collection::vec(topic_name(), 1..10), removed in prop::collection::vec(any::<bool>(), 20)) {
        // The plain trie and the sharded index that the broker routes with get the same edits.
        let mut index = SubscriptionIndex::new();
        let sharded = ShardedIndex::new(4);
        let mut live = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            prop_assume!(topic::valid_topic_filter(f));
            index.insert(f, None, subscriber(i as u64));
            sharded.insert(f, None, subscriber(i as u64));
            live.push((i as u64, f.clone()));
        }
        // Remove some again: the index must forget exactly those.
        live.retain(|(i, f)| {
            if removed[*i as usize] {
                assert!(index.remove(f, None, *i));
                assert!(sharded.remove(f, None, *i));
                false
            } else {
                true
            }
        });
        prop_assert_eq!(index.len(), live.len());
        prop_assert_eq!(sharded.len(), live.len());
        for t in &topics {
            let expected: BTreeSet<u64> = live.iter().filter(|(_, f)| topic::matches(f, t)).map(|(i, _)| *i).collect();
            prop_assert_eq!(matched_ids(&index, t), expected.clone(), "topic {}", t);
            let mut got = BTreeSet::new();
            sharded.for_each_match(t, |m| {
                if let Match::Single(s) = m {
                    got.insert(s.session.id());
                }
            });
            prop_assert_eq!(got, expected, "sharded, topic {}", t);
        }
    }

    #[test]
    fn retained_lookup_agrees_with_reference(topics in prop::collection::vec(topic_name(), 1..20), filters in prop::collection::vec(filter(), 1..10)) {
        let mut store = RetainedStore::new();
        let mut set = BTreeSet::new();
        for t in &topics {
            let m = Message::new(ByteStr::from(t.as_str()), Bytes::from_static(b"x"), QoS::AtMostOnce, true, PublishProperties::default(), None);
            store.set(Arc::new(m));
            set.insert(t.clone());
        }
        prop_assert_eq!(store.len(), set.len());
        let now = tokio::time::Instant::now();
        for f in &filters {
            prop_assume!(topic::valid_topic_filter(f));
            let mut found = BTreeSet::new();
            store.for_each_match(f, now, |m| { found.insert(m.topic.to_string()); });
            let expected: BTreeSet<String> = set.iter().filter(|t| topic::matches(f, t)).cloned().collect();
            prop_assert_eq!(found, expected, "filter {}", f);
        }
    }
}

#[test]
fn removing_every_subscription_leaves_an_empty_index() {
    let mut index = SubscriptionIndex::new();
    let filters = ["a/b", "a/+", "a/#", "#", "+/+", "a/b/c/d", "$share/g/a/b"];
    for (i, f) in filters.iter().enumerate() {
        let (group, plain) = match topic::parse_shared(f) {
            Some(Ok((g, p))) => (Some(g), p),
            _ => (None, *f),
        };
        index.insert(plain, group, subscriber(i as u64));
    }
    assert_eq!(index.len(), filters.len());
    for (i, f) in filters.iter().enumerate() {
        let (group, plain) = match topic::parse_shared(f) {
            Some(Ok((g, p))) => (Some(g), p),
            _ => (None, *f),
        };
        assert!(index.remove(plain, group, i as u64), "{f}");
    }
    assert!(index.is_empty());
    assert!(matched_ids(&index, "a/b").is_empty());
}

#[test]
fn shared_group_spreads_messages_over_its_members() {
    let mut index = SubscriptionIndex::new();
    for i in 0..3 {
        index.insert("jobs/+", Some("workers"), subscriber(i));
    }
    let mut picks = Vec::new();
    for _ in 0..6 {
        index.for_each_match("jobs/1", |m| match m {
            Match::Shared(g) => picks.push(g.pick().expect("group has members").session.id()),
            Match::Single(_) => panic!("only a shared subscription exists"),
        });
    }
    picks.sort();
    assert_eq!(picks, vec![0, 0, 1, 1, 2, 2]);
}
