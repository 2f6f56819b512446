//! `http`: the broker asks the user's web service, with a JSON POST, whether a client may
//! connect (`auth_url`) and publish or subscribe (`acl_url`).
//!
//! The contract is the one EMQX's and mosquitto-go-auth's HTTP backends use. Request bodies:
//! `{"clientid", "username", "password", "peerhost", "peerport", "protocol"}` for a CONNECT and
//! `{"clientid", "username", "peerhost", "topic", "access"}` for a PUBLISH (`access` =
//! `"write"`, the topic name) or a SUBSCRIBE (`"subscribe"`, the filter). Answers: a 2xx with
//! `{"result": "allow"}` (and, for a CONNECT, `"is_superuser": true` if so) or an empty body
//! allows; `{"result": "deny"}` or any non-2xx status denies; `{"result": "ignore"}` passes to
//! the next backend. Redirects are not followed; a body over 64 KiB or not in this form denies.
//! Answers are cached for `cache_ttl` (a CONNECT's by client id, username, address and a
//! SHA-512 of the password; a PUBLISH's and SUBSCRIBE's by client id, username, access and
//! topic), at most `cache_max_entries` of each. 5xx answers and failures are not cached.
//! Fail closed: a service that cannot be reached or does not answer within `timeout` refuses
//! (CONNACK Not authorized, SUBACK / PUBACK Not authorized), and the refusal names the URL and
//! the error. Deliveries are not checked one by one (that check cannot wait on the network):
//! the SUBSCRIBE answer stands for them.

use crate::cache::TtlCache;
use pigeon_codec::{ByteStr, Protocol};
use pigeon_core::auth::{
    Acl, Action, Authentication, Authenticator, Authorizer, Check, ClientInfo, ConnectRequest,
    Reason, Refused,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Largest answer body read.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub auth_url: Option<String>,
    pub acl_url: Option<String>,
    /// Longest wait for one answer, connection included.
    pub timeout: Duration,
    /// Sent with every request (an `Authorization` header, for instance).
    pub headers: Vec<(String, String)>,
    /// How long an answer is reused; zero: every check asks.
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
}

/// Checks an endpoint URL: http or https, with a host.
pub fn check_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "`{url}` is not an http:// or https:// URL with a host"
        ));
    }
    Ok(parsed)
}

/// Checks one configured header.
pub fn check_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not an HTTP header name"))?;
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of `{name}` is not a valid HTTP header value"))?;
    Ok((header, value))
}

/// The URL without its user and password, for logs.
pub(crate) fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::V3_1 => "3.1",
        Protocol::V3_1_1 => "3.1.1",
        Protocol::V5 => "5.0",
    }
}

/// What the service said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Allow { superuser: bool },
    Deny(String),
    Ignore,
}

/// An answer, or a failure that is not cached.
struct Reply {
    answer: Answer,
    cacheable: bool,
}

type AuthKey = (ByteStr, Option<ByteStr>, IpAddr, [u8; 64]);
/// (client id, username, write, topic).
type AclKey = (ByteStr, Option<ByteStr>, bool, ByteStr);

struct Endpoint {
    url: Url,
    /// `url` without credentials, for reasons and logs.
    shown: String,
}

pub struct HttpAuth {
    client: reqwest::Client,
    auth: Option<Endpoint>,
    acl: Option<Endpoint>,
    auth_cache: TtlCache<AuthKey, Authentication>,
    acl_cache: TtlCache<AclKey, Acl>,
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAuth")
            .field("auth_url", &self.auth.as_ref().map(|e| &e.shown))
            .field("acl_url", &self.acl.as_ref().map(|e| &e.shown))
            .finish()
    }
}

/// An error with its causes, on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// A client for the user's web service: `timeout` for each request, connection included;
/// `headers` on every request; no redirects followed, no proxy from the environment.
pub(crate) fn http_client(
    timeout: Duration,
    headers: &[(String, String)],
) -> Result<reqwest::Client, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (name, value) = check_header(name, value)?;
        map.insert(name, value);
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .default_headers(map)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))
}

impl HttpAuth {
    pub fn new(settings: HttpSettings) -> Result<HttpAuth, String> {
        let endpoint = |url: &Option<String>| -> Result<Option<Endpoint>, String> {
            url.as_deref()
                .map(|u| {
                    let url = check_url(u)?;
                    Ok(Endpoint {
                        shown: shown(&url),
                        url,
                    })
                })
                .transpose()
        };
        Ok(HttpAuth {
            client: http_client(settings.timeout, &settings.headers)?,
            auth: endpoint(&settings.auth_url)?,
            acl: endpoint(&settings.acl_url)?,
            auth_cache: TtlCache::new(settings.cache_ttl, settings.cache_max_entries),
            acl_cache: TtlCache::new(settings.cache_ttl, settings.cache_max_entries),
        })
    }

    pub fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    async fn post(&self, endpoint: &Endpoint, body: &Value, connect: bool) -> Reply {
        let sent = self
            .client
            .post(endpoint.url.clone())
            .json(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return self.failed(endpoint, &chain(&e)),
        };
        let status = response.status();
        if !status.is_success() {
            return Reply {
                answer: Answer::Deny(format!("{} answered {status}", endpoint.shown)),
                cacheable: !status.is_server_error(),
            };
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return self.failed(endpoint, "answer body over 64 KiB");
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return self.failed(endpoint, &chain(&e)),
            }
        }
        Reply {
            answer: parse_answer(&body, connect)
                .unwrap_or_else(|why| Answer::Deny(format!("{}: {why}", endpoint.shown))),
            cacheable: true,
        }
    }

    fn failed(&self, endpoint: &Endpoint, error: &str) -> Reply {
        Reply {
            answer: Answer::Deny(format!(
                "http service {} unavailable, refusing (fail closed): {error}",
                endpoint.shown
            )),
            cacheable: false,
        }
    }

    async fn login(&self, endpoint: &Endpoint, request: &ConnectRequest<'_>) -> Authentication {
        let Some(password) = request.password else {
            return Authentication::Continue;
        };
        let Ok(password_text) = std::str::from_utf8(password) else {
            // JSON carries text; a binary password is left to other backends.
            return Authentication::Continue;
        };
        let key: AuthKey = (
            ByteStr::from(request.client_id),
            request.username.map(ByteStr::from),
            request.peer.ip(),
            Sha512::digest(password).into(),
        );
        if let Some(answer) = self.auth_cache.get(&key) {
            return answer;
        }
        let body = json!({
            "clientid": request.client_id,
            "username": request.username,
            "password": password_text,
            "peerhost": request.peer.ip().to_string(),
            "peerport": request.peer.port(),
            "protocol": protocol_name(request.protocol),
        });
        let reply = self.post(endpoint, &body, true).await;
        let answer = match reply.answer {
            Answer::Allow { superuser } => Authentication::Allow { superuser },
            Answer::Ignore => Authentication::Continue,
            Answer::Deny(reason) if reply.cacheable => Authentication::Deny {
                code: Refused::BadCredentials,
                reason: reason.into(),
            },
            Answer::Deny(reason) => Authentication::Deny {
                code: Refused::NotAuthorized,
                reason: reason.into(),
            },
        };
        if reply.cacheable {
            self.auth_cache.insert(key, answer.clone());
        }
        answer
    }

    async fn check(
        &self,
        endpoint: &Endpoint,
        client: &ClientInfo,
        key: AclKey,
        access: &str,
        topic: &str,
    ) -> Acl {
        let body = json!({
            "clientid": &*client.client_id,
            "username": client.username.as_deref(),
            "peerhost": client.peer.ip().to_string(),
            "topic": topic,
            "access": access,
        });
        let reply = self.post(endpoint, &body, false).await;
        let answer = match reply.answer {
            Answer::Allow { .. } => Acl::Allow,
            Answer::Ignore => Acl::Continue,
            Answer::Deny(reason) => Acl::Deny(Reason::Shared(reason.into())),
        };
        if reply.cacheable {
            self.acl_cache.insert(key, answer.clone());
        }
        answer
    }
}

/// A 2xx body: empty allows; otherwise `{"result": ...}`.
fn parse_answer(body: &[u8], connect: bool) -> Result<Answer, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::Allow { superuser: false });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let result = value.get("result").and_then(Value::as_str);
    match result.map(str::to_ascii_lowercase).as_deref() {
        Some("allow") => Ok(Answer::Allow {
            superuser: connect
                && value.get("is_superuser").is_some_and(|v| {
                    v.as_bool() == Some(true) || v.as_str() == Some("true") || v.as_i64() == Some(1)
                }),
        }),
        Some("deny") => Ok(Answer::Deny(
            value.get("reason").and_then(Value::as_str).map_or_else(
                || "the http service denied it".to_owned(),
                |r| format!("the http service denied it: {r}"),
            ),
        )),
        Some("ignore") => Ok(Answer::Ignore),
        _ => Err("answer has no `result` of allow, deny or ignore".into()),
    }
}

impl Authenticator for HttpAuth {
    fn name(&self) -> &str {
        "http"
    }

    fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
        match &self.auth {
            Some(endpoint) => Check::pending(self.login(endpoint, request)),
            None => Check::Ready(Authentication::Continue),
        }
    }

    fn reload(&self) -> Result<(), String> {
        self.auth_cache.clear();
        Ok(())
    }
}

impl Authorizer for HttpAuth {
    fn name(&self) -> &str {
        "http"
    }

    fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl> {
        let Some(endpoint) = &self.acl else {
            return Check::Ready(Acl::Continue);
        };
        let (write, access) = match action {
            Action::Publish { .. } => (true, "write"),
            Action::Subscribe { .. } => (false, "subscribe"),
        };
        // The key copies the topic: one allocation per check, next to a possible HTTP request.
        let key: AclKey = (
            client.client_id.clone(),
            client.username.clone(),
            write,
            ByteStr::from(topic),
        );
        if let Some(answer) = self.acl_cache.get(&key) {
            return Check::Ready(answer);
        }
        Check::pending(self.check(endpoint, client, key, access, topic))
    }

    fn reload(&self) -> Result<(), String> {
        self.acl_cache.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let allow = Answer::Allow { superuser: false };
        assert_eq!(parse_answer(b"", true), Ok(allow.clone()));
        assert_eq!(parse_answer(b" \n", true), Ok(allow.clone()));
        assert_eq!(
            parse_answer(br#"{"result":"allow"}"#, true),
            Ok(allow.clone())
        );
        assert_eq!(
            parse_answer(br#"{"result":"allow","is_superuser":true}"#, true),
            Ok(Answer::Allow { superuser: true })
        );
        assert_eq!(
            parse_answer(br#"{"result":"allow","is_superuser":true}"#, false),
            Ok(allow)
        );
        assert!(matches!(
            parse_answer(br#"{"result":"deny"}"#, true),
            Ok(Answer::Deny(_))
        ));
        assert_eq!(
            parse_answer(br#"{"result":"ignore"}"#, true),
            Ok(Answer::Ignore)
        );
        assert!(parse_answer(br#"{"ok":true}"#, true).is_err());
        assert!(parse_answer(b"yes", true).is_err());
    }

    #[test]
    fn urls_and_headers() {
        let url = check_url("http://user:pw@127.0.0.1:8080/mqtt/auth").expect("valid");
        assert_eq!(shown(&url), "http://127.0.0.1:8080/mqtt/auth");
        assert!(check_url("ftp://x/y").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_header("Authorization", "Bearer x").is_ok());
        assert!(check_header("Bad Name", "x").is_err());
        assert!(check_header("X-Key", "line\nbreak").is_err());
    }
}
