//! `redis`: users and ACL rows in Redis hashes, served by `UserDb` (see `user_db`).
//!
//! Defaults, as EMQX's Redis backend lays them out: the user is the hash `mqtt_user:%u` with the
//! fields `password` (a mosquitto `$7$` / `$6$` hash) and `is_superuser` (`1` or `true`); the
//! ACL is the hash `mqtt_acl:%u`, one field per topic filter, valued 1 (read), 2 (write) or
//! 3 (both). `%u` and `%c` in a key stand for the username and client id. An empty key pattern
//! turns that half off.
//! One multiplexed connection (`ConnectionManager`), made at the first lookup and re-made after
//! the server goes away; plain TCP (`redis://`) or a Unix socket (`redis+unix://`).

use crate::user_db::{AclRow, UserLookup, UserRecord};
use pigeon_core::auth::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Where and what to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/db`
    pub url: String,
    /// The user hash's key; empty: no authentication from Redis.
    pub user_key: String,
    pub password_field: String,
    /// Empty: nobody is a superuser through Redis.
    pub superuser_field: String,
    /// The ACL hash's key; empty: no ACL from Redis.
    pub acl_key: String,
    pub timeout: Duration,
}

/// Checks a URL as `RedisLookup::connect` will read it; the error says why not.
pub fn check_url(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| format!("`{url}` is not a Redis URL: {e}"))
}

/// The service as logs name it: address and database, never the password.
pub fn describe(client: &redis::Client) -> String {
    let info = client.get_connection_info();
    format!("redis {}/{}", info.addr(), info.redis_settings().db())
}

/// Lookups over one `ConnectionManager`.
pub struct RedisLookup {
    connection: ConnectionManager,
    settings: RedisSettings,
}

impl RedisLookup {
    /// Prepares the connection; it is opened at the first lookup, so a Redis that is down at
    /// start refuses logins (fail closed) until it is back, rather than stopping the broker.
    /// Must run inside a tokio runtime.
    pub fn connect(settings: RedisSettings) -> Result<RedisLookup, String> {
        let client = check_url(&settings.url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(2)
            .set_max_delay(settings.timeout);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot prepare the Redis connection: {e}"))?;
        Ok(RedisLookup {
            connection,
            settings,
        })
    }
}

/// `%u` and `%c` replaced in one pass, so a username holding `%c` stays as it is.
pub fn expand(pattern: &str, username: &str, client_id: &str) -> String {
    expansion(pattern, username, client_id).collect()
}

/// The pieces of `pattern` with `%u` and `%c` replaced (`expand` without building the string):
/// text, then what stands for each `%`, in order. A `%` before anything else stays itself.
pub(crate) fn expansion<'a>(
    pattern: &'a str,
    username: &'a str,
    client_id: &'a str,
) -> impl Iterator<Item = &'a str> {
    let mut rest = Some(pattern);
    let mut pending = None;
    std::iter::from_fn(move || {
        if let Some(piece) = pending.take() {
            return Some(piece);
        }
        let text = rest?;
        let Some(i) = text.find('%') else {
            rest = None;
            return Some(text);
        };
        let after = &text[i + 1..];
        let (with, tail) = if let Some(tail) = after.strip_prefix('u') {
            (username, tail)
        } else if let Some(tail) = after.strip_prefix('c') {
            (client_id, tail)
        } else {
            ("%", after)
        };
        pending = Some(with);
        rest = Some(tail);
        Some(&text[..i])
    })
}

fn truthy(value: &str) -> bool {
    matches!(value.trim(), "1" | "true" | "TRUE" | "True")
}

impl UserLookup for RedisLookup {
    fn user<'a>(
        &'a self,
        username: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserRecord>, String>> {
        Box::pin(async move {
            let s = &self.settings;
            let key = expand(&s.user_key, username, client_id);
            let mut connection = self.connection.clone();
            let mut command = redis::cmd("HMGET");
            command.arg(&key).arg(&s.password_field);
            if !s.superuser_field.is_empty() {
                command.arg(&s.superuser_field);
            }
            let fields: Vec<Option<String>> = command
                .query_async(&mut connection)
                .await
                .map_err(|e| format!("HMGET {key}: {e}"))?;
            let mut fields = fields.into_iter();
            let Some(password) = fields.next().flatten() else {
                return Ok(None);
            };
            let superuser = fields.next().flatten().is_some_and(|v| truthy(&v));
            Ok(Some(UserRecord {
                password,
                superuser,
            }))
        })
    }

    fn acl<'a>(
        &'a self,
        username: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AclRow>, String>> {
        Box::pin(async move {
            let key = expand(&self.settings.acl_key, username, client_id);
            let mut connection = self.connection.clone();
            let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .map_err(|e| format!("HGETALL {key}: {e}"))?;
            Ok(fields
                .into_iter()
                .map(|(topic, rw)| AclRow {
                    topic,
                    // Not a number: 0, which the rows' reader skips with a warning.
                    rw: rw.trim().parse().unwrap_or(0),
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_patterns() {
        assert_eq!(expand("mqtt_user:%u", "alice", "c1"), "mqtt_user:alice");
        assert_eq!(expand("acl:%u:%c", "a%c", "c1"), "acl:a%c:c1");
        assert_eq!(expand("100%", "a", "c"), "100%");
        assert_eq!(expand("%x%u", "a", "c"), "%xa");
    }

    #[test]
    fn urls() {
        let client = check_url("redis://:secret@127.0.0.1:6380/2").expect("valid");
        assert_eq!(describe(&client), "redis 127.0.0.1:6380/2");
        assert!(check_url("http://x").is_err());
        assert!(truthy("1") && truthy("true") && !truthy("0") && !truthy(""));
    }
}
