//! The `http`, `redis`, `postgres` and `jwt` backends, built from their `[auth.*]` sections.
//!
//! Building does no I/O besides reading the JWT key file: Redis and PostgreSQL connect at the
//! first lookup, so a service that is down at start refuses clients (fail closed) until it is
//! back instead of stopping the broker. Each backend is an authenticator, an authorizer or both,
//! by what its section configures.

use crate::config::AuthConfig;
use crate::server::Error;
use pigeon_backends::postgres_auth::{self, PostgresLookup};
use pigeon_backends::redis_auth::{self, RedisLookup};
use pigeon_backends::user_db::UserDbSettings;
use pigeon_backends::{HttpAuth, JwtAuth, UserDb};
use pigeon_core::auth::{Authenticator, Authorizer};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// One backend's places in the chain.
#[derive(Default)]
pub(crate) struct Built {
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
}

fn failed(key: &str, reason: String) -> Error {
    Error::AuthBackend {
        key: key.to_owned(),
        reason,
    }
}

/// Builds the backend `name` (one of `http`, `redis`, `postgres`, `jwt`) from its section.
pub(crate) fn build(name: &str, auth: &AuthConfig) -> Result<Built, Error> {
    match name {
        "http" => {
            let config = auth.http.as_ref().expect("listed only when set");
            let backend =
                Arc::new(HttpAuth::new(config.settings()).map_err(|e| failed("[auth.http]", e))?);
            info!(
                auth_url = config.auth_url.as_deref(),
                acl_url = config.acl_url.as_deref(),
                "http auth backend configured"
            );
            Ok(Built {
                authenticator: backend
                    .has_auth()
                    .then(|| Arc::clone(&backend) as Arc<dyn Authenticator>),
                authorizer: backend.has_acl().then_some(backend as Arc<dyn Authorizer>),
            })
        }
        "redis" => {
            let config = auth.redis.as_ref().expect("listed only when set");
            let client =
                redis_auth::check_url(&config.url).map_err(|e| failed("[auth.redis] url", e))?;
            let settings = db_settings(
                "redis",
                redis_auth::describe(&client),
                config.timeout_ms,
                config.cache_ttl_ms,
                config.cache_max_entries,
            );
            let lookup = RedisLookup::connect(config.settings())
                .map_err(|e| failed("[auth.redis] url", e))?;
            info!(service = %settings.service, "redis auth backend configured");
            Ok(user_db(
                UserDb::new(lookup, settings),
                !config.user_key.is_empty(),
                !config.acl_key.is_empty(),
            ))
        }
        "postgres" => {
            let config = auth.postgres.as_ref().expect("listed only when set");
            let pg = postgres_auth::check_url(&config.url)
                .map_err(|e| failed("[auth.postgres] url", e))?;
            let settings = db_settings(
                "postgres",
                postgres_auth::describe(&pg),
                config.timeout_ms,
                config.cache_ttl_ms,
                config.cache_max_entries,
            );
            let lookup = PostgresLookup::connect(config.settings())
                .map_err(|e| failed("[auth.postgres] url", e))?;
            info!(service = %settings.service, pool_size = config.pool_size, "postgres auth backend configured");
            Ok(user_db(
                UserDb::new(lookup, settings),
                !config.auth_query.trim().is_empty(),
                !config.acl_query.trim().is_empty(),
            ))
        }
        "jwt" => {
            let config = auth.jwt.as_ref().expect("listed only when set");
            let key = if config.public_key_file.is_some() {
                "[auth.jwt] public_key_file"
            } else {
                "[auth.jwt]"
            };
            let backend = Arc::new(JwtAuth::new(config.settings()).map_err(|e| failed(key, e))?);
            info!(
                hs256 = config.secret.is_some(),
                rs256 = config.public_key_file.is_some(),
                "jwt auth backend configured"
            );
            let authorizer =
                (!config.acl_claim.is_empty()).then(|| Arc::clone(&backend) as Arc<dyn Authorizer>);
            Ok(Built {
                authenticator: Some(backend),
                authorizer,
            })
        }
        other => unreachable!("config validation lets only known backends through: {other}"),
    }
}

fn db_settings(
    name: &'static str,
    service: String,
    timeout_ms: u64,
    cache_ttl_ms: u64,
    cache_max_entries: usize,
) -> UserDbSettings {
    UserDbSettings {
        name,
        service,
        timeout: Duration::from_millis(timeout_ms),
        cache_ttl: Duration::from_millis(cache_ttl_ms),
        cache_max_entries,
    }
}

fn user_db<L: pigeon_backends::user_db::UserLookup>(
    db: UserDb<L>,
    authenticates: bool,
    authorizes: bool,
) -> Built {
    let db = Arc::new(db);
    Built {
        authenticator: authenticates.then(|| Arc::clone(&db) as Arc<dyn Authenticator>),
        authorizer: authorizes.then_some(db as Arc<dyn Authorizer>),
    }
}
