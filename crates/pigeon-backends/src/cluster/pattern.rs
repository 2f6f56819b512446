//! The Redis channel that carries the topics of one MQTT topic filter.
//!
//! A message is published on the channel named by its topic, byte for byte (mqemitter-redis).
//! A filter without wildcards is that channel (SUBSCRIBE). A filter with wildcards becomes a
//! glob pattern (PSUBSCRIBE): `+` becomes `*`, and `#` becomes `*` together with the one `/`
//! before it, as mqemitter-redis converts, so `a/#` still matches the topic `a`.
//!
//! Invariant: the pattern matches every topic the filter matches, and may match more; receivers
//! route on `msg.topic` with the MQTT matcher. To keep that true, the glob characters
//! `* ? [ ] \` in the filter's own text are escaped, which mqemitter-redis does not do (its
//! `q?/[x]/+` misses the topic `q?/[x]/a`).

/// What to subscribe to on Redis for one filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A channel name for SUBSCRIBE: the filter itself, unescaped.
    Exact(String),
    /// A glob for PSUBSCRIBE.
    Pattern(String),
}

impl Channel {
    /// The channel name or the pattern, as it goes to Redis.
    pub fn name(&self) -> &str {
        match self {
            Channel::Exact(name) | Channel::Pattern(name) => name,
        }
    }
}

/// The channel for `filter`, a valid plain filter (the filter inside `$share/<group>/`, for a
/// shared subscription).
pub fn channel_for(filter: &str) -> Channel {
    if !filter.contains(['+', '#']) {
        return Channel::Exact(filter.to_owned());
    }
    let mut pattern = String::with_capacity(filter.len() + 4);
    for c in filter.chars() {
        match c {
            '+' => pattern.push('*'),
            '#' => {
                // Only a `/` from the filter can end `pattern` here: escapes end in the escaped
                // character, never `/`.
                if pattern.ends_with('/') {
                    pattern.pop();
                }
                pattern.push('*');
            }
            '*' | '?' | '[' | ']' | '\\' => {
                pattern.push('\\');
                pattern.push(c);
            }
            _ => pattern.push(c),
        }
    }
    Channel::Pattern(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_codec::topic::{matches, valid_topic_filter, valid_topic_name};
    use proptest::prelude::*;

    /// Redis's glob (`stringmatchlen`, case-sensitive) over bytes: `*` any run, `?` one byte,
    /// `[...]` a set with `^` negation, `a-z` ranges and `\x` escapes, `\x` the byte `x`.
    fn glob(pattern: &[u8], s: &[u8]) -> bool {
        let (mut p, mut i) = (0, 0);
        // Where to resume after the last `*`: the pattern after it, and the next start in `s`.
        let mut star: Option<(usize, usize)> = None;
        loop {
            if p < pattern.len() {
                if pattern[p] == b'*' {
                    p += 1;
                    star = Some((p, i));
                    continue;
                }
                if let Some(&c) = s.get(i) {
                    if let Some(len) = one(&pattern[p..], c) {
                        p += len;
                        i += 1;
                        continue;
                    }
                }
            } else if i == s.len() {
                return true;
            }
            match star {
                Some((sp, si)) if si < s.len() => {
                    star = Some((sp, si + 1));
                    p = sp;
                    i = si + 1;
                }
                _ => return false,
            }
        }
    }

    /// Does the single-byte token at the start of `pattern` match `c`? Its length if so.
    fn one(pattern: &[u8], c: u8) -> Option<usize> {
        match pattern[0] {
            b'?' => Some(1),
            b'\\' if pattern.len() >= 2 => (pattern[1] == c).then_some(2),
            b'[' => {
                let mut j = 1;
                let negated = pattern.get(1) == Some(&b'^');
                if negated {
                    j += 1;
                }
                let mut hit = false;
                // An unclosed set runs to the end of the pattern, as in Redis.
                while let Some(&b) = pattern.get(j) {
                    if b == b']' {
                        j += 1;
                        break;
                    }
                    if b == b'\\' && j + 1 < pattern.len() {
                        hit |= pattern[j + 1] == c;
                        j += 2;
                    } else if pattern.get(j + 1) == Some(&b'-') && j + 2 < pattern.len() {
                        let (lo, hi) = (b.min(pattern[j + 2]), b.max(pattern[j + 2]));
                        hit |= (lo..=hi).contains(&c);
                        j += 3;
                    } else {
                        hit |= b == c;
                        j += 1;
                    }
                }
                (hit != negated).then_some(j)
            }
            b => (b == c).then_some(1),
        }
    }

    #[test]
    fn the_glob_follows_redis() {
        let cases = [
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hxllo", false),
            ("h[\\]]llo", "h]llo", true),
            ("a*", "a", true),
            ("a*", "a/b/c", true),
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ];
        for (pattern, s, expected) in cases {
            assert_eq!(
                glob(pattern.as_bytes(), s.as_bytes()),
                expected,
                "{pattern} {s}"
            );
        }
    }

    #[test]
    fn filters_map_as_mqemitter_redis_maps_them() {
        // redis-cli MONITOR while aedes subscribed each filter (redis-wire.md section 2).
        let cases = [
            ("a/+/b", Channel::Pattern("a/*/b".into())),
            ("a/#", Channel::Pattern("a*".into())),
            ("#", Channel::Pattern("*".into())),
            ("+/x", Channel::Pattern("*/x".into())),
            ("exact/topic", Channel::Exact("exact/topic".into())),
            ("deep/+/+/z", Channel::Pattern("deep/*/*/z".into())),
            (
                "$SYS/+/heartbeat",
                Channel::Pattern("$SYS/*/heartbeat".into()),
            ),
            ("$SYS/sub/+", Channel::Pattern("$SYS/sub/*".into())),
            ("/#", Channel::Pattern("*".into())),
            ("+/#", Channel::Pattern("**".into())),
            ("a//#", Channel::Pattern("a/*".into())),
        ];
        for (filter, expected) in cases {
            assert_eq!(channel_for(filter), expected, "{filter}");
        }
    }

    #[test]
    fn glob_characters_are_escaped_in_patterns_only() {
        let cases = [
            ("q?/[x]/+", Channel::Pattern("q\\?/\\[x\\]/*".into())),
            ("a*b/#", Channel::Pattern("a\\*b*".into())),
            ("back\\slash/+", Channel::Pattern("back\\\\slash/*".into())),
            ("q?/[x]", Channel::Exact("q?/[x]".into())),
            ("a*b\\c", Channel::Exact("a*b\\c".into())),
        ];
        for (filter, expected) in cases {
            assert_eq!(channel_for(filter), expected, "{filter}");
        }
        assert!(glob(channel_for("q?/[x]/+").name().as_bytes(), b"q?/[x]/a"));
        assert!(!glob(channel_for("q?/[x]/+").name().as_bytes(), b"qq/x/a"));
    }

    /// Topics from a small alphabet rich in glob characters, so collisions are frequent.
    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec("[ab*?\\[\\]\\\\$é]{0,3}", 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("a topic name", |t| valid_topic_name(t))
    }

    /// A filter made from `topic`: each level kept, replaced by `+`, or the rest replaced by `#`.
    fn filter_for(topic: &str, choices: &[u8]) -> String {
        let mut levels = Vec::new();
        for (level, choice) in topic.split('/').zip(choices.iter().cycle()) {
            match choice % 5 {
                0 => levels.push("+"),
                1 => {
                    levels.push("#");
                    break;
                }
                _ => levels.push(level),
            }
        }
        levels.join("/")
    }

    proptest! {
        #[test]
        fn the_channel_carries_every_topic_the_filter_matches(
            topic in topic(),
            choices in proptest::collection::vec(any::<u8>(), 1..6),
            other in topic(),
            extra_level in proptest::bool::ANY,
        ) {
            let mut filters = vec![filter_for(&topic, &choices), filter_for(&other, &choices)];
            if extra_level {
                filters.push(format!("{topic}/#"));
            }
            for filter in filters {
                prop_assert!(valid_topic_filter(&filter), "{}", filter);
                if matches(&filter, &topic) {
                    match channel_for(&filter) {
                        Channel::Exact(name) => prop_assert_eq!(name, topic.clone()),
                        Channel::Pattern(pattern) => prop_assert!(
                            glob(pattern.as_bytes(), topic.as_bytes()),
                            "{} -> {} misses {}", filter, pattern, topic
                        ),
                    }
                }
            }
        }
    }
}
