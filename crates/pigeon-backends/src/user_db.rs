//! `UserDb`: the authenticator and authorizer behind the Redis and PostgreSQL backends, over a
//! `UserLookup` that fetches one user's record and ACL rows.
//!
//! A user's password is a mosquitto hash (`$7$` or `$6$`), checked as the password file checks
//! it; a user the database does not know is left to the next backend. ACL rows are `(topic, rw)`
//! with rw 1 read, 2 write, 3 both; a topic may hold `+`, `#`, and `%u` / `%c` levels. A
//! client's rows become level tries (`AclRules`), cached per username and client id for
//! `cache_ttl`, so a PUBLISH or a delivery is checked without a query while they are fresh.
//! A delivery (`authorize_read`, synchronous) checks the cached rows, fresh or expired, and
//! starts one background refresh when they are expired.
//! Fail closed: a lookup that fails or times out refuses the CONNECT (Not authorized) or the
//! PUBLISH / SUBSCRIBE, with the service and error in the reason; a failed ACL lookup is
//! remembered for at most a second, so a burst of messages does not hammer a service that is down.

use crate::acl_file::{Access, AclRules};
use crate::cache::TtlCache;
use crate::password_file::PasswordHash;
use pigeon_codec::ByteStr;
use pigeon_core::auth::{
    Acl, Action, Authentication, Authenticator, Authorizer, BoxFuture, Check, ClientInfo,
    ConnectRequest, Reason, Refused,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A user as the database stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// `$7$...` or `$6$...`, as in a mosquitto password file.
    pub password: String,
    pub superuser: bool,
}

/// One ACL row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRow {
    /// A topic filter; `%u` and `%c` levels stand for the username and client id.
    pub topic: String,
    /// 1 read, 2 write, 3 read and write.
    pub rw: i64,
}

/// Fetches users and ACL rows from a database. Errors are one line for the log.
pub trait UserLookup: Send + Sync + 'static {
    /// The record of `username`; `None` when the database does not know it.
    fn user<'a>(
        &'a self,
        username: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserRecord>, String>>;

    /// Every ACL row of `username`.
    fn acl<'a>(
        &'a self,
        username: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AclRow>, String>>;
}

/// How a `UserDb` names itself and how long it waits and remembers.
#[derive(Debug, Clone)]
pub struct UserDbSettings {
    /// The backend's name in logs and in `[auth] order`.
    pub name: &'static str,
    /// The service as a log names it (`redis 127.0.0.1:6379`), without credentials.
    pub service: String,
    /// Longest wait for one lookup.
    pub timeout: Duration,
    /// How long a client's ACL rows are used before they are fetched again; zero: every
    /// PUBLISH and SUBSCRIBE queries, and deliveries are not checked one by one.
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
}

/// A client's rules, or why they could not be fetched.
type Rules = Result<Arc<AclRules>, Arc<str>>;
/// (username, client id).
type Key = (ByteStr, ByteStr);

/// How long a failed ACL lookup is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(1);

/// The Redis and PostgreSQL backends: see the module documentation.
pub struct UserDb<L> {
    settings: UserDbSettings,
    lookup: Arc<L>,
    rules: Arc<TtlCache<Key, Rules>>,
}

impl<L> fmt::Debug for UserDb<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDb")
            .field("name", &self.settings.name)
            .field("service", &self.settings.service)
            .finish()
    }
}

impl<L: UserLookup> UserDb<L> {
    pub fn new(lookup: L, settings: UserDbSettings) -> UserDb<L> {
        UserDb {
            rules: Arc::new(TtlCache::new(
                settings.cache_ttl,
                settings.cache_max_entries,
            )),
            lookup: Arc::new(lookup),
            settings,
        }
    }

    pub fn service(&self) -> &str {
        &self.settings.service
    }

    fn unavailable(&self, error: &str) -> String {
        format!(
            "{} unavailable, refusing (fail closed): {error}",
            self.settings.service
        )
    }

    async fn verify(&self, request: &ConnectRequest<'_>, username: &str) -> Authentication {
        let lookup = self.lookup.user(username, request.client_id);
        let record = match tokio::time::timeout(self.settings.timeout, lookup).await {
            Ok(Ok(record)) => record,
            Ok(Err(e)) => return unavailable_login(self.unavailable(&e)),
            Err(_) => {
                return unavailable_login(
                    self.unavailable(&no_answer_within(self.settings.timeout)),
                )
            }
        };
        let Some(record) = record else {
            return Authentication::Continue;
        };
        let hash = match PasswordHash::parse(record.password.trim()) {
            Ok(hash) => hash,
            Err(e) => {
                return Authentication::Deny {
                    code: Refused::BadCredentials,
                    reason: format!(
                        "{}: the stored password of `{username}` is not usable: {e}",
                        self.settings.service
                    )
                    .into(),
                }
            }
        };
        match request.password {
            Some(password) if hash.verify(password) => Authentication::Allow {
                superuser: record.superuser,
            },
            Some(_) => Authentication::Deny {
                code: Refused::BadCredentials,
                reason: Reason::Shared(format!("wrong password ({})", self.settings.name).into()),
            },
            None if request.certificate_identity.is_some() => Authentication::Continue,
            None => Authentication::Deny {
                code: Refused::BadCredentials,
                reason: Reason::Shared(
                    format!("no password given ({})", self.settings.name).into(),
                ),
            },
        }
    }

    /// Rules for `key`, fetched now (and cached).
    async fn fetch(
        lookup: &L,
        rules: &TtlCache<Key, Rules>,
        settings: &UserDbSettings,
        key: Key,
    ) -> Rules {
        let (username, client_id) = (&key.0, &key.1);
        let fetched = tokio::time::timeout(settings.timeout, lookup.acl(username, client_id)).await;
        let fetched = match fetched {
            Ok(Ok(rows)) => Ok(Arc::new(to_rules(settings, username, &rows))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(no_answer_within(settings.timeout)),
        };
        match fetched {
            Ok(found) => {
                rules.insert(key, Ok(Arc::clone(&found)));
                Ok(found)
            }
            Err(e) => {
                let reason: Arc<str> = format!(
                    "{} unavailable, refusing (fail closed): {e}",
                    settings.service
                )
                .into();
                rules.insert_for(key, Err(Arc::clone(&reason)), rules.ttl().min(FAILURE_TTL));
                Err(reason)
            }
        }
    }
}

fn unavailable_login(reason: String) -> Authentication {
    Authentication::Deny {
        code: Refused::NotAuthorized,
        reason: reason.into(),
    }
}

fn no_answer_within(timeout: Duration) -> String {
    format!("no answer within {} ms", timeout.as_millis())
}

/// Rows to level tries; a row with an unknown rw or an invalid filter is skipped with a warning.
fn to_rules(settings: &UserDbSettings, username: &str, rows: &[AclRow]) -> AclRules {
    let mut rules = AclRules::default();
    for row in rows {
        let access = match row.rw {
            1 => Access::Read,
            2 => Access::Write,
            3 => Access::ReadWrite,
            other => {
                tracing::warn!(service = %settings.service, user = username, topic = %row.topic, rw = other, "ACL row skipped: rw must be 1 (read), 2 (write) or 3 (both)");
                continue;
            }
        };
        let rule = format!("{} row `{}` rw {}", settings.service, row.topic, row.rw).into();
        if let Err(e) = rules.add_pattern(&row.topic, access, rule) {
            tracing::warn!(service = %settings.service, user = username, "ACL row skipped: {e}");
        }
    }
    rules
}

/// The answer of fetched rules for one action.
fn answer(rules: &Rules, client: &ClientInfo, username: &str, ask: Ask<'_>) -> Acl {
    let rules = match rules {
        Ok(rules) => rules,
        Err(reason) => return Acl::Deny(Reason::Shared(Arc::clone(reason))),
    };
    let client_id = &client.client_id;
    match ask {
        Ask::Publish(topic) => rules.check_topic(Some(username), client_id, topic, true),
        Ask::Subscribe(filter) => rules.check_filter(Some(username), client_id, filter),
        Ask::Read(topic) => rules.check_topic(Some(username), client_id, topic, false),
    }
}

#[derive(Clone, Copy)]
enum Ask<'a> {
    Publish(&'a str),
    Subscribe(&'a str),
    Read(&'a str),
}

impl<L: UserLookup> Authenticator for UserDb<L> {
    fn name(&self) -> &str {
        self.settings.name
    }

    fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
        let Some(username) = request.username else {
            return Check::Ready(Authentication::Continue);
        };
        Check::pending(self.verify(request, username))
    }

    fn reload(&self) -> Result<(), String> {
        self.rules.clear();
        Ok(())
    }
}

impl<L: UserLookup> Authorizer for UserDb<L> {
    fn name(&self) -> &str {
        self.settings.name
    }

    fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl> {
        let Some(username) = &client.username else {
            return Check::Ready(Acl::Continue);
        };
        let ask = match action {
            Action::Publish { .. } => Ask::Publish(topic),
            Action::Subscribe { .. } => Ask::Subscribe(topic),
        };
        let key = (username.clone(), client.client_id.clone());
        if let Some(rules) = self.rules.get(&key) {
            return Check::Ready(answer(&rules, client, username, ask));
        }
        Check::pending(async move {
            let rules = Self::fetch(&self.lookup, &self.rules, &self.settings, key).await;
            answer(&rules, client, username, ask)
        })
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> Acl {
        let Some(username) = &client.username else {
            return Acl::Continue;
        };
        if !self.rules.enabled() {
            return Acl::Continue;
        }
        let key = (username.clone(), client.client_id.clone());
        let Some(cached) = self.rules.get_any(&key) else {
            // Evicted: the SUBSCRIBE-time decision stands until the next PUBLISH or SUBSCRIBE
            // fetches the rows again.
            return Acl::Continue;
        };
        if !cached.fresh && self.rules.claim_refresh(&key) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (lookup, rules) = (Arc::clone(&self.lookup), Arc::clone(&self.rules));
                let settings = self.settings.clone();
                runtime.spawn(async move {
                    let client_id = key.1.clone();
                    if let Err(reason) = Self::fetch(&lookup, &rules, &settings, key).await {
                        tracing::warn!(client_id = %client_id, %reason, "ACL refresh failed; deliveries are refused until it succeeds");
                    }
                });
            }
        }
        answer(&cached.value, client, username, Ask::Read(topic))
    }

    fn reload(&self) -> Result<(), String> {
        self.rules.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_codec::{Protocol, QoS};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The table of issue 6, in memory, counting ACL queries.
    struct Table {
        acl_queries: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl UserLookup for Table {
        fn user<'a>(
            &'a self,
            username: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<UserRecord>, String>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err("connection refused".into());
                }
                let password = |p: &str| {
                    PasswordHash::new_pbkdf2(p.as_bytes(), 101)
                        .expect("hash")
                        .to_string()
                };
                Ok(match username {
                    "client" => Some(UserRecord {
                        password: password("c-pass"),
                        superuser: false,
                    }),
                    "admin" => Some(UserRecord {
                        password: password("a-pass"),
                        superuser: true,
                    }),
                    "broken" => Some(UserRecord {
                        password: "plain".into(),
                        superuser: false,
                    }),
                    _ => None,
                })
            })
        }

        fn acl<'a>(
            &'a self,
            username: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<AclRow>, String>> {
            Box::pin(async move {
                self.acl_queries.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    return Err("connection refused".into());
                }
                let row = |topic: &str, rw| AclRow {
                    topic: topic.into(),
                    rw,
                };
                Ok(match username {
                    "client" => vec![
                        row("/p/client/upload", 2),
                        row("/p/client/download", 1),
                        row("own/%c/#", 3),
                        row("odd", 7),
                    ],
                    "server" => vec![row("/p/client/upload", 3), row("/p/client/download", 3)],
                    _ => vec![],
                })
            })
        }
    }

    fn db(ttl_ms: u64) -> UserDb<Table> {
        UserDb::new(
            Table {
                acl_queries: AtomicUsize::new(0),
                down: false.into(),
            },
            UserDbSettings {
                name: "test",
                service: "test db".into(),
                timeout: Duration::from_secs(1),
                cache_ttl: Duration::from_millis(ttl_ms),
                cache_max_entries: 100,
            },
        )
    }

    fn client(username: &str) -> ClientInfo {
        ClientInfo {
            client_id: "dev-1".into(),
            username: Some(username.into()),
            peer: "127.0.0.1:1".parse().expect("addr"),
            protocol: Protocol::V5,
            keep_alive: 60,
            listener: None,
            certificate_identity: None,
            superuser: false,
        }
    }

    const PUBLISH: Action = Action::Publish {
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    const SUBSCRIBE: Action = Action::Subscribe {
        qos: QoS::AtLeastOnce,
    };

    #[tokio::test]
    async fn passwords_superusers_and_failures() {
        let db = db(1000);
        let login = |user: &'static str, password: &'static str| {
            let db = &db;
            async move {
                let request = ConnectRequest {
                    client_id: "c",
                    username: Some(user),
                    password: Some(password.as_bytes()),
                    peer: "127.0.0.1:1".parse().expect("addr"),
                    protocol: Protocol::V5,
                    listener: None,
                    certificate_identity: None,
                };
                db.authenticate(&request).resolve().await
            }
        };
        assert_eq!(
            login("client", "c-pass").await,
            Authentication::Allow { superuser: false }
        );
        assert_eq!(
            login("admin", "a-pass").await,
            Authentication::Allow { superuser: true }
        );
        assert!(matches!(
            login("client", "nope").await,
            Authentication::Deny {
                code: Refused::BadCredentials,
                ..
            }
        ));
        assert_eq!(login("stranger", "x").await, Authentication::Continue);
        let Authentication::Deny { reason, .. } = login("broken", "plain").await else {
            panic!("a plain-text password is not accepted")
        };
        assert!(reason.as_str().contains("not usable"), "{reason}");
        db.lookup.down.store(true, Ordering::SeqCst);
        let Authentication::Deny { code, reason } = login("client", "c-pass").await else {
            panic!("fails closed")
        };
        assert_eq!(code, Refused::NotAuthorized);
        assert_eq!(
            reason.as_str(),
            "test db unavailable, refusing (fail closed): connection refused"
        );
    }

    /// The answer, and whether it came without a query.
    async fn ask(db: &UserDb<Table>, who: &ClientInfo, action: Action, topic: &str) -> (Acl, bool) {
        let check = db.authorize(who, action, topic);
        let ready = matches!(check, Check::Ready(_));
        (check.resolve().await, ready)
    }

    #[tokio::test]
    async fn the_issue_table_with_a_cache() {
        let db = db(60_000);
        let (c, s) = (client("client"), client("server"));
        let ask = |who, action, topic| ask(&db, who, action, topic);
        // The first check queries, the next ones are answered from the cache.
        assert_eq!(
            ask(&c, PUBLISH, "/p/client/upload").await,
            (Acl::Allow, false)
        );
        assert_eq!(
            ask(&c, PUBLISH, "/p/client/upload").await,
            (Acl::Allow, true)
        );
        assert_eq!(
            ask(&c, PUBLISH, "/p/client/download").await.0,
            Acl::Continue
        );
        assert_eq!(ask(&c, SUBSCRIBE, "/p/client/download").await.0, Acl::Allow);
        assert_eq!(
            ask(&c, SUBSCRIBE, "/p/client/upload").await.0,
            Acl::Continue
        );
        assert_eq!(ask(&c, SUBSCRIBE, "/p/+/download").await.0, Acl::Continue);
        assert_eq!(ask(&c, PUBLISH, "own/dev-1/x").await.0, Acl::Allow);
        assert_eq!(ask(&c, PUBLISH, "own/dev-2/x").await.0, Acl::Continue);
        assert_eq!(db.authorize_read(&c, "/p/client/download"), Acl::Allow);
        assert_eq!(db.authorize_read(&c, "/p/client/upload"), Acl::Continue);
        for topic in ["/p/client/upload", "/p/client/download"] {
            assert_eq!(ask(&s, PUBLISH, topic).await.0, Acl::Allow);
            assert_eq!(ask(&s, SUBSCRIBE, topic).await.0, Acl::Allow);
        }
        assert_eq!(db.lookup.acl_queries.load(Ordering::SeqCst), 2);
        // SIGHUP forgets the rows.
        Authorizer::reload(&db).expect("reload");
        assert_eq!(
            ask(&c, PUBLISH, "/p/client/upload").await,
            (Acl::Allow, false)
        );
    }

    #[tokio::test]
    async fn expired_rows_are_refreshed_and_a_failure_denies() {
        let db = db(20);
        let c = client("client");
        assert_eq!(
            db.authorize(&c, PUBLISH, "/p/client/upload")
                .resolve()
                .await,
            Acl::Allow
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Expired: the delivery uses the old rows and refreshes them in the background.
        assert_eq!(db.authorize_read(&c, "/p/client/download"), Acl::Allow);
        for _ in 0..100 {
            if db.lookup.acl_queries.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(db.lookup.acl_queries.load(Ordering::SeqCst), 2);
        db.lookup.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let Acl::Deny(reason) = db
            .authorize(&c, PUBLISH, "/p/client/upload")
            .resolve()
            .await
        else {
            panic!("fails closed")
        };
        assert!(reason.as_str().contains("fail closed"), "{reason}");
        assert!(matches!(
            db.authorize_read(&c, "/p/client/download"),
            Acl::Deny(_)
        ));
    }
}
