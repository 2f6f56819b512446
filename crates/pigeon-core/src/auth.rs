//! The auth ports: who may connect (`Authenticator`), publish and subscribe (`Authorizer`), and
//! `AuthChain`, which asks the configured backends in order.
//!
//! A backend answers `Check::Ready` when it can decide at once (files, in-memory rules: no
//! allocation, no await) and `Check::Pending(future)` when it needs I/O (HTTP, Redis, SQL): only
//! that slow path boxes a future. The chain stays synchronous while every answer is ready, so a
//! PUBLISH checked against an ACL file costs a lookup, not a task switch.
//! Each backend says Allow, Deny or Continue; the first Allow or Deny wins. When all continue:
//! CONNECT falls back to `allow_anonymous` (or a verified certificate identity); PUBLISH and
//! SUBSCRIBE are denied if any authorizer is configured (default deny), allowed if none is.
//! Read access is checked at SUBSCRIBE (the filter must lie inside what a rule allows) and again,
//! synchronously, at each delivery (`Authorizer::authorize_read`), so explicit `deny` rules and
//! reloaded files apply to existing subscriptions, as mosquitto checks at delivery.
//! Superusers (a backend's `Allow { superuser: true }`, or `superusers` naming an authenticated
//! user) skip the authorizers.

use pigeon_codec::{ByteStr, Protocol, QoS, ReasonCode};
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, the slow path of a `Check`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend's answer: at once, or after I/O.
pub enum Check<'a, T> {
    Ready(T),
    Pending(BoxFuture<'a, T>),
}

impl<'a, T> Check<'a, T> {
    /// Wraps a future (the slow path).
    pub fn pending(future: impl Future<Output = T> + Send + 'a) -> Check<'a, T> {
        Check::Pending(Box::pin(future))
    }

    /// Waits for the answer.
    pub async fn resolve(self) -> T {
        match self {
            Check::Ready(value) => value,
            Check::Pending(future) => future.await,
        }
    }
}

impl<T> From<T> for Check<'_, T> {
    fn from(value: T) -> Self {
        Check::Ready(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Check<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ready(value) => f.debug_tuple("Ready").field(value).finish(),
            Check::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Why a backend refused, for the log: a fixed text or a shared one (an ACL rule's file and
/// line), so a denial on the hot path does not allocate.
#[derive(Clone, PartialEq, Eq)]
pub enum Reason {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Reason {
    pub fn as_str(&self) -> &str {
        match self {
            Reason::Static(s) => s,
            Reason::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Reason {
    fn from(s: &'static str) -> Reason {
        Reason::Static(s)
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Reason {
        Reason::Shared(s.into())
    }
}

impl From<Arc<str>> for Reason {
    fn from(s: Arc<str>) -> Reason {
        Reason::Shared(s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What a CONNECT presents to the authenticators.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    pub client_id: &'a str,
    /// CONNECT's username, or the certificate's Common Name on a `use_identity_as_username`
    /// listener.
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    /// The local address of the listener that accepted the connection.
    pub listener: Option<SocketAddr>,
    /// The verified client certificate's Common Name, when the listener uses it as username.
    pub certificate_identity: Option<&'a str>,
}

/// Which refusal a CONNECT gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 5.0 0x86 Bad User Name or Password; 3.1.1 return code 4.
    BadCredentials,
    /// 5.0 0x87 Not authorized; 3.1.1 return code 5.
    NotAuthorized,
    /// 5.0 0x8A Banned; 3.1.1 return code 5.
    Banned,
}

impl Refused {
    /// The 5.0 CONNACK reason code (`ReasonCode::to_v3_connack` maps it for 3.1.1).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Refused::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            Refused::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            Refused::Banned => ReasonCode::BANNED,
        }
    }
}

/// An authenticator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// The client is who it says; a superuser skips the authorizers.
    Allow {
        superuser: bool,
    },
    Deny {
        code: Refused,
        reason: Reason,
    },
    /// No opinion (unknown user, no password given): ask the next backend.
    Continue,
}

/// Checks CONNECT credentials. `authenticate` runs once per connection attempt.
pub trait Authenticator: Send + Sync + 'static {
    /// The backend's name in logs and in `[auth] order`.
    fn name(&self) -> &str;

    fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Authentication>;

    /// Reads the backend's files again (SIGHUP). On error the old data stays in use.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
}

/// An admitted client, as the authorizers and hooks see it. Made once per connection and kept
/// for its life, so it is kept small: what every connection of a listener shares is shared, and
/// what few have is a pointer.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: ByteStr,
    pub username: Option<ByteStr>,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    /// The keep alive in force, in seconds: the client's, or the server's where it lowered it
    /// (0: none). It fits in the struct's padding: the size stays 128 bytes.
    pub keep_alive: u16,
    /// The local address of the listener, one copy for all of its connections; `None` for the
    /// in-process client of an embedded broker.
    pub listener: Option<Arc<SocketAddr>>,
    /// The verified client certificate's Common Name, when the listener uses it as username.
    pub certificate_identity: Option<Arc<str>>,
    /// Skips the authorizers.
    pub superuser: bool,
}

// Every connection holds one: a field more must fit in the padding (see `keep_alive`).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ClientInfo>() <= 128);

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name (write access).
    Publish { qos: QoS, retain: bool },
    /// SUBSCRIBE to a topic filter (read access to every topic it can match).
    Subscribe { qos: QoS },
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acl {
    Allow,
    Deny(Reason),
    /// No rule of this backend applies: ask the next.
    Continue,
}

/// Decides what an admitted client may publish and subscribe to.
pub trait Authorizer: Send + Sync + 'static {
    /// The backend's name in logs and in `[auth] order`.
    fn name(&self) -> &str;

    /// PUBLISH (topic name) or SUBSCRIBE (topic filter, without any `$share/group/` prefix).
    fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl>;

    /// Read access to one delivered message, checked in the subscriber's task before the
    /// PUBLISH is written. Synchronous by design: it runs per message and per subscriber. A
    /// backend that can only answer with I/O keeps the default (Continue), and its SUBSCRIBE
    /// answer stands.
    fn authorize_read(&self, _client: &ClientInfo, _topic: &str) -> Acl {
        Acl::Continue
    }

    /// Reads the backend's files again (SIGHUP). On error the old data stays in use.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Where a CONNECT stands after the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Accepted {
        superuser: bool,
        /// The backend that allowed it, or `allow_anonymous` / `certificate`.
        by: Arc<str>,
    },
    Refused {
        code: Refused,
        reason: Reason,
        /// The backend that refused it, or `allow_anonymous` / `default`.
        by: Arc<str>,
    },
}

/// An ACL verdict after the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied {
        reason: Reason,
        /// The backend that denied it, or `default` (no backend allowed it).
        by: Arc<str>,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

/// The configured backends in order, the superuser list and the anonymous policy.
pub struct AuthChain {
    authenticators: Vec<Arc<dyn Authenticator>>,
    authorizers: Vec<Arc<dyn Authorizer>>,
    superusers: HashSet<String>,
    allow_anonymous: bool,
    names: Names,
}

/// Names interned once, so verdicts share them.
struct Names {
    authenticators: Vec<Arc<str>>,
    authorizers: Vec<Arc<str>>,
    anonymous: Arc<str>,
    certificate: Arc<str>,
    default: Arc<str>,
}

impl fmt::Debug for AuthChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthChain")
            .field("authenticators", &self.names.authenticators)
            .field("authorizers", &self.names.authorizers)
            .field("superusers", &self.superusers)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl Default for AuthChain {
    /// No backends, anonymous clients allowed: everyone may do everything.
    fn default() -> Self {
        AuthChain::new(Vec::new(), Vec::new(), Vec::new(), true)
    }
}

impl AuthChain {
    pub fn new(
        authenticators: Vec<Arc<dyn Authenticator>>,
        authorizers: Vec<Arc<dyn Authorizer>>,
        superusers: Vec<String>,
        allow_anonymous: bool,
    ) -> AuthChain {
        let names = Names {
            authenticators: authenticators.iter().map(|a| a.name().into()).collect(),
            authorizers: authorizers.iter().map(|a| a.name().into()).collect(),
            anonymous: "allow_anonymous".into(),
            certificate: "certificate".into(),
            default: "default".into(),
        };
        AuthChain {
            authenticators,
            authorizers,
            superusers: superusers.into_iter().collect(),
            allow_anonymous,
            names,
        }
    }

    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    pub fn has_authenticators(&self) -> bool {
        !self.authenticators.is_empty()
    }

    pub fn has_authorizers(&self) -> bool {
        !self.authorizers.is_empty()
    }

    /// Asks the authenticators in order.
    pub fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Admission> {
        for (i, backend) in self.authenticators.iter().enumerate() {
            match backend.authenticate(request) {
                Check::Ready(Authentication::Continue) => continue,
                Check::Ready(answer) => return Check::Ready(self.admit(request, answer, i)),
                Check::Pending(first) => {
                    return Check::pending(async move {
                        let mut answer = first.await;
                        let mut at = i;
                        while answer == Authentication::Continue {
                            at += 1;
                            let Some(next) = self.authenticators.get(at) else {
                                break;
                            };
                            answer = next.authenticate(request).resolve().await;
                        }
                        self.admit(request, answer, at)
                    })
                }
            }
        }
        Check::Ready(self.admit(request, Authentication::Continue, self.authenticators.len()))
    }

    fn admit(&self, request: &ConnectRequest<'_>, answer: Authentication, at: usize) -> Admission {
        let by = |at: usize| Arc::clone(&self.names.authenticators[at]);
        match answer {
            Authentication::Allow { superuser } => Admission::Accepted {
                superuser: superuser || self.is_superuser(request.username),
                by: by(at),
            },
            Authentication::Deny { code, reason } => Admission::Refused {
                code,
                reason,
                by: by(at),
            },
            Authentication::Continue if request.certificate_identity.is_some() => {
                Admission::Accepted {
                    superuser: self.is_superuser(request.username),
                    by: Arc::clone(&self.names.certificate),
                }
            }
            Authentication::Continue => {
                let credentials = request.username.is_some() || request.password.is_some();
                if credentials && !self.authenticators.is_empty() {
                    Admission::Refused {
                        code: Refused::BadCredentials,
                        reason: "no backend accepted the username and password".into(),
                        by: Arc::clone(&self.names.default),
                    }
                } else if self.allow_anonymous {
                    // Admitted without proof of identity: never a superuser by name.
                    Admission::Accepted {
                        superuser: false,
                        by: Arc::clone(&self.names.anonymous),
                    }
                } else {
                    Admission::Refused {
                        code: Refused::NotAuthorized,
                        reason: "anonymous clients are not allowed (allow_anonymous = false)"
                            .into(),
                        by: Arc::clone(&self.names.anonymous),
                    }
                }
            }
        }
    }

    fn is_superuser(&self, username: Option<&str>) -> bool {
        username.is_some_and(|u| self.superusers.contains(u))
    }

    /// Asks the authorizers in order about a PUBLISH or SUBSCRIBE.
    pub fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Verdict> {
        if client.superuser || self.authorizers.is_empty() {
            return Check::Ready(Verdict::Allowed);
        }
        for (i, backend) in self.authorizers.iter().enumerate() {
            match backend.authorize(client, action, topic) {
                Check::Ready(Acl::Continue) => continue,
                Check::Ready(answer) => return Check::Ready(self.verdict(answer, i)),
                Check::Pending(first) => {
                    return Check::pending(async move {
                        let mut answer = first.await;
                        let mut at = i;
                        while answer == Acl::Continue {
                            at += 1;
                            let Some(next) = self.authorizers.get(at) else {
                                break;
                            };
                            answer = next.authorize(client, action, topic).resolve().await;
                        }
                        self.verdict(answer, at)
                    })
                }
            }
        }
        Check::Ready(self.verdict(Acl::Continue, self.authorizers.len()))
    }

    fn verdict(&self, answer: Acl, at: usize) -> Verdict {
        match answer {
            Acl::Allow => Verdict::Allowed,
            Acl::Deny(reason) => Verdict::Denied {
                reason,
                by: Arc::clone(&self.names.authorizers[at]),
            },
            Acl::Continue => Verdict::Denied {
                reason: "no ACL rule allows it".into(),
                by: Arc::clone(&self.names.default),
            },
        }
    }

    /// Read access to a delivery (see `Authorizer::authorize_read`). When every authorizer
    /// continues, the SUBSCRIBE-time decision stands: allowed.
    pub fn authorize_read(&self, client: &ClientInfo, topic: &str) -> Verdict {
        if client.superuser {
            return Verdict::Allowed;
        }
        for (i, backend) in self.authorizers.iter().enumerate() {
            match backend.authorize_read(client, topic) {
                Acl::Continue => continue,
                answer => return self.verdict(answer, i),
            }
        }
        Verdict::Allowed
    }

    /// Whether deliveries to `client` need `authorize_read`.
    pub fn checks_reads(&self, client: &ClientInfo) -> bool {
        !client.superuser && !self.authorizers.is_empty()
    }

    /// Reloads every backend (SIGHUP). Each failure is returned as (backend, error); a backend
    /// that failed keeps its old data.
    pub fn reload(&self) -> Vec<(Arc<str>, String)> {
        let mut failed = Vec::new();
        for (backend, name) in self.authenticators.iter().zip(&self.names.authenticators) {
            if let Err(e) = backend.reload() {
                failed.push((Arc::clone(name), e));
            }
        }
        for (backend, name) in self.authorizers.iter().zip(&self.names.authorizers) {
            if let Err(e) = backend.reload() {
                failed.push((Arc::clone(name), e));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Authentication);

    impl Authenticator for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn authenticate<'a>(&'a self, _: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
            Check::Ready(self.1.clone())
        }
    }

    /// Answers after an await, as an HTTP backend would.
    struct Slow(Authentication);

    impl Authenticator for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn authenticate<'a>(&'a self, _: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
            Check::pending(async move {
                tokio::task::yield_now().await;
                self.0.clone()
            })
        }
    }

    struct Rules(Acl);

    impl Authorizer for Rules {
        fn name(&self) -> &str {
            "rules"
        }
        fn authorize<'a>(&'a self, _: &'a ClientInfo, _: Action, _: &'a str) -> Check<'a, Acl> {
            Check::Ready(self.0.clone())
        }
    }

    fn request<'a>(username: Option<&'a str>, password: Option<&'a [u8]>) -> ConnectRequest<'a> {
        ConnectRequest {
            client_id: "c",
            username,
            password,
            peer: "127.0.0.1:1".parse().expect("addr"),
            protocol: Protocol::V5,
            listener: None,
            certificate_identity: None,
        }
    }

    fn client(superuser: bool) -> ClientInfo {
        ClientInfo {
            client_id: "c".into(),
            username: Some("u".into()),
            peer: "127.0.0.1:1".parse().expect("addr"),
            protocol: Protocol::V5,
            keep_alive: 60,
            listener: None,
            certificate_identity: None,
            superuser,
        }
    }

    fn ready<T: fmt::Debug>(check: Check<'_, T>) -> T {
        match check {
            Check::Ready(value) => value,
            Check::Pending(_) => panic!("expected a ready answer"),
        }
    }

    #[test]
    fn first_decision_wins_and_continue_falls_through() {
        let chain = AuthChain::new(
            vec![
                Arc::new(Fixed("a", Authentication::Continue)),
                Arc::new(Fixed("b", Authentication::Allow { superuser: false })),
                Arc::new(Fixed(
                    "c",
                    Authentication::Deny {
                        code: Refused::NotAuthorized,
                        reason: "never asked".into(),
                    },
                )),
            ],
            Vec::new(),
            vec!["admin".into()],
            false,
        );
        let admitted = ready(chain.authenticate(&request(Some("admin"), Some(b"pw"))));
        assert_eq!(
            admitted,
            Admission::Accepted {
                superuser: true,
                by: "b".into()
            }
        );
    }

    #[test]
    fn nobody_decides() {
        let backend: Arc<dyn Authenticator> = Arc::new(Fixed("file", Authentication::Continue));
        let strict = AuthChain::new(vec![Arc::clone(&backend)], Vec::new(), Vec::new(), false);
        let open = AuthChain::new(vec![backend], Vec::new(), vec!["admin".into()], true);
        let code = |a: Admission| match a {
            Admission::Refused { code, .. } => Some(code),
            Admission::Accepted { .. } => None,
        };
        // Credentials no backend accepted: bad credentials, whatever allow_anonymous says.
        assert_eq!(
            code(ready(strict.authenticate(&request(Some("u"), Some(b"x"))))),
            Some(Refused::BadCredentials)
        );
        assert_eq!(
            code(ready(open.authenticate(&request(Some("u"), Some(b"x"))))),
            Some(Refused::BadCredentials)
        );
        // No credentials: anonymous.
        assert_eq!(
            code(ready(strict.authenticate(&request(None, None)))),
            Some(Refused::NotAuthorized)
        );
        assert_eq!(code(ready(open.authenticate(&request(None, None)))), None);
        // Without authenticators a username is only a label, never a superuser.
        let none = AuthChain::new(Vec::new(), Vec::new(), vec!["admin".into()], true);
        assert_eq!(
            ready(none.authenticate(&request(Some("admin"), None))),
            Admission::Accepted {
                superuser: false,
                by: "allow_anonymous".into()
            }
        );
    }

    #[tokio::test]
    async fn a_pending_backend_continues_the_chain() {
        let chain = AuthChain::new(
            vec![
                Arc::new(Slow(Authentication::Continue)),
                Arc::new(Fixed("file", Authentication::Allow { superuser: false })),
            ],
            Vec::new(),
            Vec::new(),
            false,
        );
        let req = request(Some("u"), Some(b"pw"));
        let check = chain.authenticate(&req);
        assert!(matches!(check, Check::Pending(_)));
        assert_eq!(
            check.resolve().await,
            Admission::Accepted {
                superuser: false,
                by: "file".into()
            }
        );
    }

    #[test]
    fn acl_default_deny_and_superuser() {
        let publish = Action::Publish {
            qos: QoS::AtMostOnce,
            retain: false,
        };
        let open = AuthChain::default();
        assert!(ready(open.authorize(&client(false), publish, "a")).is_allowed());
        let chain = AuthChain::new(
            Vec::new(),
            vec![Arc::new(Rules(Acl::Continue))],
            Vec::new(),
            true,
        );
        assert_eq!(
            ready(chain.authorize(&client(false), publish, "a")),
            Verdict::Denied {
                reason: "no ACL rule allows it".into(),
                by: "default".into()
            }
        );
        assert!(ready(chain.authorize(&client(true), publish, "a")).is_allowed());
        // Reads fall back to the SUBSCRIBE-time decision.
        assert!(chain.authorize_read(&client(false), "a").is_allowed());
    }
}
