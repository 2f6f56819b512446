//! `[auth.http]`, `[auth.redis]`, `[auth.postgres]` and `[auth.jwt]`: the external auth
//! backends. A section present turns its backend on; its name (`http`, `redis`, `postgres`,
//! `jwt`) may then go in `[auth] order`. Values are checked here, at load, with the backend
//! crate's own parsers (URLs, headers, connection strings), so a typo stops the start with the
//! file, line and key rather than failing at the first login.

use super::{Key, KeyPath, Kind, Problem};
use pigeon_backends::postgres_auth::{DEFAULT_ACL_QUERY, DEFAULT_AUTH_QUERY};
use pigeon_backends::{http_auth, postgres_auth, redis_auth};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[auth.http]`: JSON POSTs to the user's web service (`pigeon_backends::http_auth`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// Asked at CONNECT; unset: the service does not authenticate.
    pub auth_url: Option<String>,
    /// Asked at PUBLISH and SUBSCRIBE; unset: the service does not authorize.
    pub acl_url: Option<String>,
    /// Longest wait for an answer, connection included.
    pub timeout_ms: u64,
    /// Sent with every request.
    pub headers: BTreeMap<String, String>,
    /// How long an answer is reused; 0: every check asks.
    pub cache_ttl_ms: u64,
    /// Answers kept at most, for CONNECT and for ACL checks each.
    pub cache_max_entries: usize,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            auth_url: None,
            acl_url: None,
            timeout_ms: 5000,
            headers: BTreeMap::new(),
            cache_ttl_ms: 30_000,
            cache_max_entries: 100_000,
        }
    }
}

/// `[auth.redis]`: users and ACL rows in Redis hashes (`pigeon_backends::redis_auth`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisAuthConfig {
    pub url: String,
    /// Key of a user's hash; `%u` username, `%c` client id. Empty: no authentication.
    pub user_key: String,
    pub password_field: String,
    /// Empty: nobody is a superuser through Redis.
    pub superuser_field: String,
    /// Key of a user's ACL hash (field = topic filter, value 1 read, 2 write, 3 both).
    /// Empty: no ACL.
    pub acl_key: String,
    pub timeout_ms: u64,
    /// How long a client's ACL rows are used before they are read again; 0: every check reads.
    pub cache_ttl_ms: u64,
    pub cache_max_entries: usize,
}

impl Default for RedisAuthConfig {
    fn default() -> Self {
        RedisAuthConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            user_key: "mqtt_user:%u".into(),
            password_field: "password".into(),
            superuser_field: "is_superuser".into(),
            acl_key: "mqtt_acl:%u".into(),
            timeout_ms: 5000,
            cache_ttl_ms: 30_000,
            cache_max_entries: 100_000,
        }
    }
}

/// `[auth.postgres]`: users and ACL rows in PostgreSQL (`pigeon_backends::postgres_auth`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresAuthConfig {
    /// `host=... port=... user=... password=... dbname=...` or `postgres://...`. Required.
    pub url: String,
    /// `$1` username, `$2` (optional) client id; returns (password hash, superuser).
    /// Empty: no authentication.
    pub auth_query: String,
    /// Returns (topic, rw) rows. Empty: no ACL.
    pub acl_query: String,
    /// Connections kept open at most.
    pub pool_size: usize,
    pub timeout_ms: u64,
    pub cache_ttl_ms: u64,
    pub cache_max_entries: usize,
}

impl Default for PostgresAuthConfig {
    fn default() -> Self {
        PostgresAuthConfig {
            url: String::new(),
            auth_query: DEFAULT_AUTH_QUERY.into(),
            acl_query: DEFAULT_ACL_QUERY.into(),
            pool_size: 4,
            timeout_ms: 5000,
            cache_ttl_ms: 30_000,
            cache_max_entries: 100_000,
        }
    }
}

/// `[auth.jwt]`: a JSON Web Token in the password field (`pigeon_backends::jwt`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtAuthConfig {
    /// HMAC secret for HS256 (HS384, HS512) tokens.
    pub secret: Option<String>,
    /// RSA public key, PEM, for RS256 (RS384, RS512) tokens. Read again on SIGHUP.
    pub public_key_file: Option<PathBuf>,
    /// Claim that must equal CONNECT's username when both are present; empty: not checked.
    pub username_claim: String,
    /// Claim with topic rights, `{"pub": [...], "sub": [...], "all": [...]}`; empty: none.
    pub acl_claim: String,
    /// Seconds of clock difference tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Connections whose token rights are kept at most.
    pub cache_max_entries: usize,
}

impl Default for JwtAuthConfig {
    fn default() -> Self {
        JwtAuthConfig {
            secret: None,
            public_key_file: None,
            username_claim: "sub".into(),
            acl_claim: "acl".into(),
            leeway_secs: 0,
            cache_max_entries: 100_000,
        }
    }
}

impl HttpAuthConfig {
    pub fn settings(&self) -> http_auth::HttpSettings {
        http_auth::HttpSettings {
            auth_url: self.auth_url.clone(),
            acl_url: self.acl_url.clone(),
            timeout: ms(self.timeout_ms),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cache_ttl: ms(self.cache_ttl_ms),
            cache_max_entries: self.cache_max_entries,
        }
    }
}

impl RedisAuthConfig {
    pub fn settings(&self) -> redis_auth::RedisSettings {
        redis_auth::RedisSettings {
            url: self.url.clone(),
            user_key: self.user_key.clone(),
            password_field: self.password_field.clone(),
            superuser_field: self.superuser_field.clone(),
            acl_key: self.acl_key.clone(),
            timeout: ms(self.timeout_ms),
        }
    }
}

impl PostgresAuthConfig {
    pub fn settings(&self) -> postgres_auth::PostgresSettings {
        postgres_auth::PostgresSettings {
            url: self.url.clone(),
            auth_query: self.auth_query.clone(),
            acl_query: self.acl_query.clone(),
            pool_size: self.pool_size,
            timeout: ms(self.timeout_ms),
        }
    }
}

impl JwtAuthConfig {
    pub fn settings(&self) -> pigeon_backends::jwt::JwtSettings {
        pigeon_backends::jwt::JwtSettings {
            secret: self.secret.clone(),
            public_key_file: self.public_key_file.clone(),
            username_claim: self.username_claim.clone(),
            acl_claim: self.acl_claim.clone(),
            leeway_secs: self.leeway_secs,
            max_grants: self.cache_max_entries,
        }
    }
}

fn ms(value: u64) -> std::time::Duration {
    std::time::Duration::from_millis(value)
}

/// A problem with a whole `[auth.SECTION]`.
fn section_problem(section: &str, reason: &str) -> Problem {
    Problem {
        path: KeyPath {
            segments: vec![Key("auth".into()), Key(section.into())],
            kind: Kind::Table,
        },
        reason: reason.into(),
    }
}

/// A problem at `[auth.SECTION] key`.
fn problem(section: &str, key: &str, reason: String) -> Problem {
    Problem::new(&[Key("auth"), Key(section), Key(key)], reason)
}

fn positive(section: &str, key: &str, value: u64) -> Result<(), Problem> {
    if value == 0 {
        return Err(problem(section, key, "must be at least 1".into()));
    }
    Ok(())
}

/// The rules of the four sections.
pub(super) fn check(auth: &super::AuthConfig) -> Result<(), Problem> {
    if let Some(http) = &auth.http {
        if http.auth_url.is_none() && http.acl_url.is_none() {
            return Err(section_problem("http", "set `auth_url`, `acl_url` or both"));
        }
        for (key, url) in [("auth_url", &http.auth_url), ("acl_url", &http.acl_url)] {
            if let Some(url) = url {
                http_auth::check_url(url).map_err(|e| problem("http", key, e))?;
            }
        }
        for (name, value) in &http.headers {
            http_auth::check_header(name, value).map_err(|e| problem("http", "headers", e))?;
        }
        positive("http", "timeout_ms", http.timeout_ms)?;
        positive("http", "cache_max_entries", http.cache_max_entries as u64)?;
    }
    if let Some(redis) = &auth.redis {
        redis_auth::check_url(&redis.url).map_err(|e| problem("redis", "url", e))?;
        if redis.user_key.is_empty() && redis.acl_key.is_empty() {
            return Err(problem(
                "redis",
                "user_key",
                "`user_key` and `acl_key` are both empty: the backend would do nothing".into(),
            ));
        }
        if !redis.user_key.is_empty() && redis.password_field.is_empty() {
            return Err(problem(
                "redis",
                "password_field",
                "must name the field of the password hash".into(),
            ));
        }
        positive("redis", "timeout_ms", redis.timeout_ms)?;
        positive("redis", "cache_max_entries", redis.cache_max_entries as u64)?;
    }
    if let Some(pg) = &auth.postgres {
        if pg.url.trim().is_empty() {
            return Err(section_problem(
                "postgres",
                "`url` is required, e.g. \"host=127.0.0.1 port=5432 user=pigeon dbname=mqtt\"",
            ));
        }
        postgres_auth::check_url(&pg.url).map_err(|e| problem("postgres", "url", e))?;
        if pg.auth_query.trim().is_empty() && pg.acl_query.trim().is_empty() {
            return Err(problem(
                "postgres",
                "auth_query",
                "`auth_query` and `acl_query` are both empty: the backend would do nothing".into(),
            ));
        }
        positive("postgres", "pool_size", pg.pool_size as u64)?;
        positive("postgres", "timeout_ms", pg.timeout_ms)?;
        positive("postgres", "cache_max_entries", pg.cache_max_entries as u64)?;
    }
    if let Some(jwt) = &auth.jwt {
        match (&jwt.secret, &jwt.public_key_file) {
            (None, None) => {
                return Err(section_problem(
                    "jwt",
                    "set `secret` (HS256) or `public_key_file` (RS256)",
                ))
            }
            (Some(secret), _) if secret.is_empty() => {
                return Err(problem("jwt", "secret", "must not be empty".into()))
            }
            _ => {}
        }
        positive("jwt", "cache_max_entries", jwt.cache_max_entries as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const ONE_LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:1883\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_str(&format!("{ONE_LISTENER}{text}"), "pigeon.toml")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sections_parse_with_their_defaults() {
        let config = parse(
            "[auth]\norder = [\"jwt\", \"postgres\"]\n\
             [auth.http]\nauth_url = \"http://127.0.0.1:8080/auth\"\n\
             headers = { Authorization = \"Bearer x\" }\n\
             [auth.redis]\n\
             [auth.postgres]\nurl = \"host=127.0.0.1 user=pigeon dbname=mqtt\"\n\
             [auth.jwt]\nsecret = \"s\"\n",
        )
        .expect("valid");
        let auth = &config.auth;
        let http = auth.http.as_ref().expect("[auth.http]");
        assert_eq!(http.timeout_ms, 5000);
        assert_eq!(http.headers["Authorization"], "Bearer x");
        assert_eq!(auth.redis, Some(RedisAuthConfig::default()));
        let pg = auth.postgres.as_ref().expect("[auth.postgres]");
        assert_eq!(pg.acl_query, DEFAULT_ACL_QUERY);
        assert_eq!(auth.jwt.as_ref().expect("[auth.jwt]").username_claim, "sub");
        assert_eq!(
            auth.backend_order(),
            vec!["jwt", "postgres", "redis", "http"]
        );
        assert!(auth.has_authenticator());
        // An ACL-only HTTP service authenticates nobody: anonymous stays the loopback default.
        let config = parse("[auth.http]\nacl_url = \"http://127.0.0.1:1/acl\"\n").expect("valid");
        assert!(!config.auth.has_authenticator());
    }

    #[test]
    fn errors_name_line_and_key() {
        let error = |text: &str| parse(text).expect_err("invalid");
        assert_eq!(
            error("[auth.http]\ntimeout_ms = 5\n"),
            "pigeon.toml:3:7: [auth.http]: set `auth_url`, `acl_url` or both"
        );
        assert_eq!(
            error("[auth.http]\nauth_url = \"ftp://x/a\"\n"),
            "pigeon.toml:4:1: [auth.http] auth_url: `ftp://x/a` is not an http:// or https:// URL with a host"
        );
        assert_eq!(
            error("[auth.http]\nacl_url = \"http://h/\"\nheaders = { \"Bad Name\" = \"x\" }\n"),
            "pigeon.toml:5:1: [auth.http] headers: `Bad Name` is not an HTTP header name"
        );
        let message = error("[auth.redis]\nurl = \"mysql://x\"\n");
        assert!(
            message
                .starts_with("pigeon.toml:4:1: [auth.redis] url: `mysql://x` is not a Redis URL"),
            "{message}"
        );
        assert_eq!(
            error("[auth.postgres]\npool_size = 2\n"),
            "pigeon.toml:3:7: [auth.postgres]: `url` is required, e.g. \"host=127.0.0.1 port=5432 user=pigeon dbname=mqtt\""
        );
        assert!(error("[auth.postgres]\nurl = \"host=h sslmode=require\"\n")
            .starts_with("pigeon.toml:4:1: [auth.postgres] url: sslmode=require"));
        assert_eq!(
            error("[auth.jwt]\nleeway_secs = 5\n"),
            "pigeon.toml:3:7: [auth.jwt]: set `secret` (HS256) or `public_key_file` (RS256)"
        );
        let message = error("[auth.jwt]\nsecret = \"s\"\nalgorithm = \"HS256\"\n");
        assert!(
            message.starts_with("pigeon.toml:5:1: [auth.jwt] algorithm: unknown field `algorithm`"),
            "{message}"
        );
    }
}
