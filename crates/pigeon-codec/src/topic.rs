//! Topic names and topic filters (specification section 4.7), shared by the decoder and the broker.
//!
//! | input              | name  | filter | why                                          |
//! |--------------------|-------|--------|----------------------------------------------|
//! | `a/b`, `/`, `a//b` | yes   | yes    | empty levels are levels                      |
//! | ``                 | no    | no     | at least one character (MQTT-4.7.3-1)        |
//! | `a/+` , `#`, `+`   | no    | yes    | wildcards only in filters (MQTT-3.3.2-2)     |
//! | `a/#/b`, `a#`      | no    | no     | `#` last and alone in its level (MQTT-4.7.1-2)|
//! | `a+`, `+a/b`       | no    | no     | `+` alone in its level (MQTT-4.7.1-3)        |
//! | `$share/g/a/+`     | no    | yes    | shared: non-empty group without `+ # /`      |
//! | `$share/g`, `$share//a`, `$share/g+/a` | no | no | (MQTT-4.8.2-1, MQTT-4.8.2-2)     |

/// Longest topic or filter the wire allows (a two-byte length prefix).
pub const MAX_LEN: usize = 65_535;

/// The prefix of a shared subscription filter (MQTT 5.0 section 4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// A topic name as a PUBLISH or a will may carry it.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_LEN && !has_wildcard(topic)
}

/// Does `s` contain `+` or `#`? Scans bytes, not chars: both are ASCII, and UTF-8 never uses an
/// ASCII byte inside a multi-byte character. A char-pattern `contains` decodes every character,
/// which showed up in the PUBLISH decode profile; a fold without early exit vectorizes.
pub(crate) fn has_wildcard(s: &str) -> bool {
    s.bytes()
        .fold(false, |found, b| found | (b == b'+') | (b == b'#'))
}

/// A topic filter as a SUBSCRIBE or UNSUBSCRIBE may carry it, shared form included.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_LEN {
        return false;
    }
    match parse_shared(filter) {
        Some(Ok((_, inner))) => valid_plain_filter(inner),
        Some(Err(())) => false,
        None => valid_plain_filter(filter),
    }
}

/// `Some(Ok((group, filter)))` for a well-formed `$share/group/filter`, `Some(Err(()))` for a
/// malformed one, `None` when `filter` is not a shared subscription.
#[allow(clippy::result_unit_err)]
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), ()>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(()));
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Some(Err(()));
    }
    Some(Ok((group, inner)))
}

fn valid_plain_filter(filter: &str) -> bool {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" => return levels.peek().is_none(),
            "+" => {}
            _ if has_wildcard(level) => return false,
            _ => {}
        }
    }
    true
}

/// Does `topic` (a valid name) match `filter` (a valid plain filter, not `$share/...`)?
/// This is the reference the subscription index is tested against; the broker routes with the index.
pub fn matches(filter: &str, topic: &str) -> bool {
    // MQTT-4.7.2-1: a filter starting with a wildcard does not match a topic starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters_follow_the_table() {
        for ok in ["a/b", "/", "a//b", "$SYS/x", "a b/ü"] {
            assert!(valid_topic_name(ok), "{ok}");
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for f in [
            "a/+",
            "#",
            "+",
            "+/+/#",
            "a/#",
            "$share/g/a/+",
            "$share/g/#",
        ] {
            assert!(!valid_topic_name(f), "{f}");
            assert!(valid_topic_filter(f), "{f}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a+",
            "+a/b",
            "#/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_specification_examples() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "a/b/c", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tournament", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }
}
