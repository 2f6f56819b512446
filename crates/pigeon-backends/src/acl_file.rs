//! `acl_file`: mosquitto's ACL file, served by the `AclFile` authorizer.
//!
//! Format (mosquitto 2.0): `topic [read|write|readwrite|deny] FILTER` (no access word means
//! readwrite), `user NAME` starts the rules of one user, `topic` lines before any `user` line are
//! for anonymous clients, `pattern [access] FILTER` applies to every client with `%u` (username)
//! and `%c` (client id) standing for the client, as a whole level or within one
//! (`inbox/%u-mail`), `#` starts a comment. An invalid line stops
//! the load with its file and line.
//! Order of decision, as mosquitto: the client's own rules (its user's, or the anonymous ones),
//! then the patterns; within each, a matching `deny` wins over any allow. No match: Continue
//! (the chain's default denies). A topic starting with `$` matches only rules that start with
//! `$`. A username or client id containing `+` or `#` is denied by patterns (mosquitto too).
//! Rules live in level tries (one per user, one for anonymous, one for patterns), so a check
//! walks the topic's levels, not the list of rules: cost grows with the topic's depth and the
//! wildcard branches taken, not with the 10,000 rules of a large file. Checks do not allocate.
//! SUBSCRIBE checks that the filter lies inside one rule's filter (`a/+` covers `a/b` and
//! `a/+`, not `a/#`), since every topic the subscription can receive must be readable;
//! `authorize_read` checks each delivered topic, so `deny` rules and reloads apply to existing
//! subscriptions.

use crate::password_file::FileError;
use crate::redis_auth::expansion;
use arc_swap::ArcSwap;
use pigeon_codec::topic::valid_topic_filter;
use pigeon_core::auth::{Acl, Action, Authorizer, Check, ClientInfo, Reason};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// The rules that end at one trie position, each kept as the description of its first line.
#[derive(Debug, Default)]
struct Grants {
    read: Option<Arc<str>>,
    write: Option<Arc<str>>,
    deny: Option<Arc<str>>,
}

impl Grants {
    fn add(&mut self, access: Access, rule: &Arc<str>) {
        let set = |slot: &mut Option<Arc<str>>| {
            slot.get_or_insert_with(|| Arc::clone(rule));
        };
        match access {
            Access::Read => set(&mut self.read),
            Access::Write => set(&mut self.write),
            Access::ReadWrite => {
                set(&mut self.read);
                set(&mut self.write);
            }
            Access::Deny => set(&mut self.deny),
        }
    }
}

/// One level of a rule trie.
#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// A pattern level that is exactly `%u`.
    username: Option<Box<Node>>,
    /// A pattern level that is exactly `%c`.
    client_id: Option<Box<Node>>,
    /// Pattern levels with `%u` or `%c` among other text (`%u-inbox`), matched once filled in.
    templates: Vec<(Box<str>, Node)>,
    /// Rules whose filter ends here.
    here: Grants,
    /// Rules whose filter ends here with `/#` (or is `#`, at the root).
    hash: Grants,
}

impl Node {
    fn insert(&mut self, filter: &str, pattern: bool, access: Access, rule: &Arc<str>) {
        let mut node = self;
        for level in filter.split('/') {
            node = match level {
                "#" => {
                    node.hash.add(access, rule);
                    return;
                }
                "+" => node.plus.get_or_insert_with(Box::default),
                "%u" if pattern => node.username.get_or_insert_with(Box::default),
                "%c" if pattern => node.client_id.get_or_insert_with(Box::default),
                _ if pattern && is_template(level) => {
                    let at = match node.templates.iter().position(|(t, _)| **t == *level) {
                        Some(at) => at,
                        None => {
                            node.templates.push((level.into(), Node::default()));
                            node.templates.len() - 1
                        }
                    };
                    &mut node.templates[at].1
                }
                _ => node.literal.entry(level.into()).or_default(),
            };
        }
        node.here.add(access, rule);
    }
}

/// What a walk found: the first deny, and the first allow of the access asked for.
struct Found<'r> {
    write: bool,
    deny: Option<&'r Arc<str>>,
    allow: Option<&'r Arc<str>>,
}

impl<'r> Found<'r> {
    fn new(write: bool) -> Found<'r> {
        Found {
            write,
            deny: None,
            allow: None,
        }
    }

    fn add(&mut self, grants: &'r Grants) {
        if self.deny.is_none() {
            self.deny = grants.deny.as_ref();
        }
        if self.allow.is_none() {
            self.allow = if self.write {
                grants.write.as_ref()
            } else {
                grants.read.as_ref()
            };
        }
    }

    fn answer(&self) -> Option<Acl> {
        match (self.deny, self.allow) {
            (Some(rule), _) => Some(Acl::Deny(Reason::Shared(Arc::clone(rule)))),
            (None, Some(_)) => Some(Acl::Allow),
            (None, None) => None,
        }
    }
}

/// Who the `%u` and `%c` levels stand for.
struct Subject<'a> {
    username: Option<&'a str>,
    client_id: &'a str,
}

/// A pattern level holding `%u` or `%c` among other text.
fn is_template(level: &str) -> bool {
    level != "%u" && level != "%c" && (level.contains("%u") || level.contains("%c"))
}

/// Whether `level` is `template` with `%u` and `%c` filled in (none for an anonymous client's
/// `%u`), as mosquitto substitutes them.
fn fills(template: &str, level: &str, who: &Subject<'_>) -> bool {
    if who.username.is_none() && template.contains("%u") {
        return false;
    }
    let mut rest = level;
    for piece in expansion(template, who.username.unwrap_or(""), who.client_id) {
        match rest.strip_prefix(piece) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

fn split(text: &str) -> (&str, Option<&str>) {
    match text.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (text, None),
    }
}

/// Rules that match the topic name `topic` (the rest of it from `node`; `None`: all consumed).
fn walk_topic<'r>(
    node: &'r Node,
    topic: Option<&str>,
    root: bool,
    who: &Subject<'_>,
    found: &mut Found<'r>,
) {
    let dollar = root && topic.is_some_and(|t| t.starts_with('$'));
    if !dollar {
        found.add(&node.hash);
    }
    let Some(topic) = topic else {
        found.add(&node.here);
        return;
    };
    let (level, rest) = split(topic);
    if let Some(child) = node.literal.get(level) {
        walk_topic(child, rest, false, who, found);
    }
    if let (Some(child), false) = (&node.plus, dollar) {
        walk_topic(child, rest, false, who, found);
    }
    if let (Some(child), Some(user)) = (&node.username, who.username) {
        if user == level {
            walk_topic(child, rest, false, who, found);
        }
    }
    if let Some(child) = &node.client_id {
        if who.client_id == level {
            walk_topic(child, rest, false, who, found);
        }
    }
    for (template, child) in &node.templates {
        if fills(template, level, who) {
            walk_topic(child, rest, false, who, found);
        }
    }
}

/// Rules whose filter covers the whole filter `filter` (every topic it matches, they match).
fn walk_filter<'r>(
    node: &'r Node,
    filter: Option<&str>,
    root: bool,
    who: &Subject<'_>,
    found: &mut Found<'r>,
) {
    let dollar = root && filter.is_some_and(|f| f.starts_with('$'));
    if !dollar {
        found.add(&node.hash);
    }
    let Some(filter) = filter else {
        found.add(&node.here);
        return;
    };
    let (level, rest) = split(filter);
    match level {
        // Only a rule `#` at this depth covers `#`: added above.
        "#" => {}
        "+" => {
            if let Some(child) = &node.plus {
                walk_filter(child, rest, false, who, found);
            }
        }
        _ => {
            if let Some(child) = node.literal.get(level) {
                walk_filter(child, rest, false, who, found);
            }
            if let (Some(child), false) = (&node.plus, dollar) {
                walk_filter(child, rest, false, who, found);
            }
            if let (Some(child), Some(user)) = (&node.username, who.username) {
                if user == level {
                    walk_filter(child, rest, false, who, found);
                }
            }
            if let Some(child) = &node.client_id {
                if who.client_id == level {
                    walk_filter(child, rest, false, who, found);
                }
            }
            for (template, child) in &node.templates {
                if fills(template, level, who) {
                    walk_filter(child, rest, false, who, found);
                }
            }
        }
    }
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub struct AclRules {
    users: HashMap<String, Node>,
    anonymous: Node,
    patterns: Node,
    has_patterns: bool,
    /// Rule lines, for logs.
    count: usize,
}

/// What a check asks.
#[derive(Clone, Copy)]
enum Ask {
    /// Publish or deliver one topic name: write or read.
    Topic { write: bool },
    /// Subscribe: read access covering a filter.
    Filter,
}

impl AclRules {
    /// Parses the text of an ACL file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AclRules, FileError> {
        let mut rules = AclRules::default();
        let mut user: Option<String> = None;
        let name = path.display().to_string();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let error = |reason: String| FileError::Line {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => (line, ""),
            };
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` needs a username".into()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let pattern = keyword == "pattern";
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((word, filter)) => {
                            let access = match word {
                                "read" => Access::Read,
                                "write" => Access::Write,
                                "readwrite" => Access::ReadWrite,
                                "deny" => Access::Deny,
                                other => {
                                    return Err(error(format!(
                                        "`{other}` is not an access type (read, write, readwrite or deny)"
                                    )))
                                }
                            };
                            (access, filter.trim())
                        }
                        None => (Access::ReadWrite, rest),
                    };
                    if filter.is_empty() {
                        return Err(error(format!("`{keyword}` needs a topic filter")));
                    }
                    if !valid_topic_filter(filter) {
                        return Err(error(format!("`{filter}` is not a valid topic filter")));
                    }
                    let rule: Arc<str> = format!("{name}:{} `{line}`", i + 1).into();
                    if pattern {
                        if !filter.contains("%u") && !filter.contains("%c") {
                            tracing::warn!("{name}:{}: pattern `{filter}` has no %u or %c level; it applies to every client", i + 1);
                        }
                        rules.patterns.insert(filter, true, access, &rule);
                        rules.has_patterns = true;
                    } else {
                        let node = match &user {
                            Some(u) => rules.users.entry(u.clone()).or_default(),
                            None => &mut rules.anonymous,
                        };
                        node.insert(filter, false, access, &rule);
                    }
                    rules.count += 1;
                }
                other => {
                    return Err(error(format!(
                        "`{other}` is not a keyword (topic, pattern or user)"
                    )))
                }
            }
        }
        Ok(rules)
    }

    /// Adds a rule that does not come from a file (a database row, a token's claim), as a
    /// `pattern` line: `%u` and `%c` levels stand for the client. `rule` names it in denials.
    pub fn add_pattern(
        &mut self,
        filter: &str,
        access: Access,
        rule: Arc<str>,
    ) -> Result<(), String> {
        if !valid_topic_filter(filter) {
            return Err(format!("`{filter}` is not a valid topic filter"));
        }
        self.patterns.insert(filter, true, access, &rule);
        self.has_patterns = true;
        self.count += 1;
        Ok(())
    }

    /// Number of `topic` and `pattern` lines.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn check(&self, username: Option<&str>, client_id: &str, ask: Ask, text: &str) -> Acl {
        let own = match username {
            Some(u) => self.users.get(u),
            None => Some(&self.anonymous),
        };
        let who = Subject {
            username,
            client_id,
        };
        let walk = |node: &Node| {
            let write = matches!(ask, Ask::Topic { write: true });
            let mut found = Found::new(write);
            match ask {
                Ask::Topic { .. } => walk_topic(node, Some(text), true, &who, &mut found),
                Ask::Filter => walk_filter(node, Some(text), true, &who, &mut found),
            }
            found.answer()
        };
        if let Some(answer) = own.and_then(walk) {
            return answer;
        }
        if self.has_patterns {
            let dangerous = |s: &str| s.contains(['+', '#']);
            if username.is_some_and(dangerous) || dangerous(client_id) {
                return Acl::Deny(Reason::Static(
                    "username or client id contains + or #, which patterns refuse",
                ));
            }
            if let Some(answer) = walk(&self.patterns) {
                return answer;
            }
        }
        Acl::Continue
    }

    /// Publish (`write`) or read access to a topic name.
    pub fn check_topic(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        write: bool,
    ) -> Acl {
        self.check(username, client_id, Ask::Topic { write }, topic)
    }

    /// Read access to every topic a filter can match.
    pub fn check_filter(&self, username: Option<&str>, client_id: &str, filter: &str) -> Acl {
        self.check(username, client_id, Ask::Filter, filter)
    }
}

/// The `acl_file` authorizer.
pub struct AclFile {
    path: PathBuf,
    rules: ArcSwap<AclRules>,
}

impl fmt::Debug for AclFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclFile")
            .field("path", &self.path)
            .field("rules", &self.rules.load().len())
            .finish()
    }
}

impl AclFile {
    pub fn load(path: &Path) -> Result<AclFile, FileError> {
        Ok(AclFile {
            path: path.to_owned(),
            rules: ArcSwap::from_pointee(read_rules(path)?),
        })
    }

    /// An authorizer over rules given as text (tests, embedding); `name` stands for the path.
    pub fn from_text(text: &str, name: &str) -> Result<AclFile, FileError> {
        let path = PathBuf::from(name);
        Ok(AclFile {
            rules: ArcSwap::from_pointee(AclRules::parse(text, &path)?),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rule_count(&self) -> usize {
        self.rules.load().len()
    }

    /// Reads the file again; on error the rules loaded before stay.
    pub fn reload_rules(&self) -> Result<(), FileError> {
        self.rules.store(Arc::new(read_rules(&self.path)?));
        Ok(())
    }
}

fn read_rules(path: &Path) -> Result<AclRules, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    AclRules::parse(&text, path)
}

impl Authorizer for AclFile {
    fn name(&self) -> &str {
        "acl_file"
    }

    fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl> {
        let rules = self.rules.load();
        let username = client.username.as_deref();
        let answer = match action {
            Action::Publish { .. } => rules.check_topic(username, &client.client_id, topic, true),
            Action::Subscribe { .. } => rules.check_filter(username, &client.client_id, topic),
        };
        Check::Ready(answer)
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> Acl {
        self.rules
            .load()
            .check_topic(client.username.as_deref(), &client.client_id, topic, false)
    }

    fn reload(&self) -> Result<(), String> {
        self.reload_rules().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> AclRules {
        AclRules::parse(text, Path::new("acl")).expect("valid")
    }

    fn allowed(a: Acl) -> Option<bool> {
        match a {
            Acl::Allow => Some(true),
            Acl::Deny(_) => Some(false),
            Acl::Continue => None,
        }
    }

    /// The table of issue 6: 1 = read, 2 = write, 3 = both.
    const TABLE: &str = "\
user client
topic write /p/client/upload
topic read /p/client/download

user server
topic readwrite /p/client/upload
topic readwrite /p/client/download
";

    #[test]
    fn the_issue_table() {
        let r = rules(TABLE);
        let pubs = |user, topic| allowed(r.check_topic(Some(user), "id", topic, true));
        let reads = |user, topic| allowed(r.check_topic(Some(user), "id", topic, false));
        assert_eq!(pubs("client", "/p/client/upload"), Some(true));
        assert_eq!(pubs("client", "/p/client/download"), None);
        assert_eq!(reads("client", "/p/client/download"), Some(true));
        assert_eq!(reads("client", "/p/client/upload"), None);
        assert_eq!(reads("client", "/p/other/download"), None);
        for topic in ["/p/client/upload", "/p/client/download"] {
            assert_eq!(pubs("server", topic), Some(true));
            assert_eq!(reads("server", topic), Some(true));
        }
        assert_eq!(pubs("nobody", "/p/client/upload"), None);
        assert_eq!(pubs("client", "/p/client/upload/x"), None);
    }

    /// (rule, topic, matches) — mosquitto_topic_matches_sub plus the `$` rule.
    #[test]
    fn topic_matching_table() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("/p/#", "/p/q", true),
            ("/p/#", "p/q", false),
        ];
        for (rule, topic, expect) in cases {
            let r = rules(&format!("topic read {rule}\n"));
            let got = allowed(r.check_topic(None, "c", topic, false)) == Some(true);
            assert_eq!(got, expect, "rule {rule} topic {topic}");
        }
    }

    /// (rule, filter, covered): a subscription is allowed only inside one rule.
    #[test]
    fn filter_coverage_table() {
        let cases = [
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/#", "a/#", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a", true),
            ("a/b", "a/+", false),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker/+", true),
            ("+/+", "+/x", true),
            ("+/+", "#", false),
        ];
        for (rule, filter, expect) in cases {
            let r = rules(&format!("topic read {rule}\n"));
            let got = allowed(r.check_filter(None, "c", filter)) == Some(true);
            assert_eq!(got, expect, "rule {rule} filter {filter}");
        }
    }

    #[test]
    fn deny_wins_and_users_come_before_patterns() {
        let r = rules(
            "topic read public/#\ntopic deny public/secret\n\
             user alice\ntopic readwrite a/#\ntopic deny a/private\n\
             pattern readwrite devices/%u/#\npattern read clients/%c\npattern deny a/#\n",
        );
        assert_eq!(
            allowed(r.check_topic(None, "c", "public/x", false)),
            Some(true)
        );
        assert_eq!(
            allowed(r.check_topic(None, "c", "public/secret", false)),
            Some(false)
        );
        // A subscription that includes a denied topic is allowed; the delivery check drops it.
        assert_eq!(allowed(r.check_filter(None, "c", "public/#")), Some(true));
        assert_eq!(
            allowed(r.check_filter(None, "c", "public/secret")),
            Some(false)
        );
        // alice's own rules decide before the pattern deny.
        assert_eq!(
            allowed(r.check_topic(Some("alice"), "c", "a/x", true)),
            Some(true)
        );
        assert_eq!(
            allowed(r.check_topic(Some("alice"), "c", "a/private", true)),
            Some(false)
        );
        assert_eq!(
            allowed(r.check_topic(Some("bob"), "c", "a/x", true)),
            Some(false)
        );
        // Patterns.
        assert_eq!(
            allowed(r.check_topic(Some("bob"), "c", "devices/bob/t", true)),
            Some(true)
        );
        assert_eq!(
            allowed(r.check_topic(Some("bob"), "c", "devices/eve/t", true)),
            None
        );
        assert_eq!(
            allowed(r.check_topic(Some("bob"), "dev1", "clients/dev1", false)),
            Some(true)
        );
        assert_eq!(
            allowed(r.check_filter(Some("bob"), "c", "devices/+/t")),
            None
        );
        assert_eq!(
            allowed(r.check_filter(Some("bob"), "c", "devices/bob/#")),
            Some(true)
        );
        // Anonymous clients have no %u.
        assert_eq!(allowed(r.check_topic(None, "c", "devices/c/t", true)), None);
        assert_eq!(
            allowed(r.check_topic(Some("b+"), "c", "devices/b+/t", true)),
            Some(false)
        );
    }

    /// `%u` and `%c` within a level are filled in as mosquitto does; the literal text is not a
    /// rule of its own.
    #[test]
    fn patterns_fill_in_within_a_level() {
        let r = rules("pattern write w/%u-inbox\npattern read part/x%c/#\n");
        let write = |user: Option<&str>, topic: &str| {
            allowed(r.check_topic(user, "c1", topic, true)) == Some(true)
        };
        assert!(write(Some("bob"), "w/bob-inbox"));
        assert!(!write(Some("bob"), "w/alice-inbox"));
        assert!(!write(Some("bob"), "w/bob-inbox/x"));
        assert!(!write(Some("bob"), "w/%u-inbox"), "not a literal rule");
        assert!(!write(None, "w/-inbox"), "anonymous clients have no %u");
        assert!(!write(Some("bob"), "w/bobby-inbox"));
        let read = |filter: &str| allowed(r.check_filter(Some("bob"), "c1", filter)) == Some(true);
        assert!(read("part/xc1/a"));
        assert!(read("part/xc1/#"));
        assert!(!read("part/xc2/a"));
        assert!(!read("part/+/a"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let err = |text: &str| {
            AclRules::parse(text, Path::new("acl.conf"))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            err("# c\ntopic read a\ntopic reed a/b\n"),
            "acl.conf:3: `reed` is not an access type (read, write, readwrite or deny)"
        );
        assert_eq!(
            err("topic read a/#/b\n"),
            "acl.conf:1: `a/#/b` is not a valid topic filter"
        );
        assert_eq!(err("user\n"), "acl.conf:1: `user` needs a username");
        assert_eq!(
            err("topics a\n"),
            "acl.conf:1: `topics` is not a keyword (topic, pattern or user)"
        );
        let r = rules("topic a/b\nuser x y\ntopic deny c\n");
        assert_eq!(allowed(r.check_topic(None, "c", "a/b", true)), Some(true));
        assert_eq!(
            allowed(r.check_topic(Some("x y"), "c", "c", true)),
            Some(false)
        );
        assert_eq!(r.len(), 2);
    }

    /// 10,000 rules: a check follows the topic's levels, so its time does not grow with the
    /// number of rules. Compared against one rule, with a generous bound for a noisy machine.
    #[test]
    fn ten_thousand_rules_cost_about_what_one_does() {
        let mut text = String::from("topic read devices/0/state\n");
        for i in 0..5000 {
            text.push_str(&format!("user user{i}\ntopic readwrite devices/{i}/#\n"));
        }
        let mut one_user = String::from("user big\n");
        for i in 0..10_000 {
            one_user.push_str(&format!("topic write fleet/{i}/+/state\n"));
        }
        let many = rules(&format!("{text}{one_user}"));
        let few = rules("user big\ntopic write fleet/9999/+/state\n");
        assert_eq!(many.len(), 15_001);
        let time = |r: &AclRules| {
            let start = std::time::Instant::now();
            for _ in 0..20_000 {
                let a = r.check_topic(Some("big"), "c", "fleet/9999/x/state", true);
                assert_eq!(a, Acl::Allow);
            }
            start.elapsed()
        };
        let (t_few, t_many) = (time(&few), time(&many));
        assert!(
            t_many < t_few * 5 + std::time::Duration::from_millis(20),
            "10k rules: {t_many:?}, 1 rule: {t_few:?}"
        );
    }
}
