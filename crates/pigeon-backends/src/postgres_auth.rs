//! `postgres`: users and ACL rows in PostgreSQL tables, served by `UserDb` (see `user_db`).
//!
//! Two queries from the configuration, prepared once per pooled connection. `$1` is the
//! username and `$2`, if the query uses it, the client id. The auth query returns the password
//! hash (a mosquitto `$7$` / `$6$` string) in its first column and, optionally, a superuser flag
//! (boolean, number or text) in its second; no row: the user is unknown here. The ACL query
//! returns `(topic, rw)` rows, rw 1 read, 2 write, 3 both (a number or its text). The defaults
//! read the table of issue 6 (`mqtt_acl(id, username, topic, rw)`) and a `mqtt_user` table. An
//! empty query turns that half off.
//! Connections come from a deadpool pool, opened when first needed; TLS is not built in, so
//! `sslmode=require` is refused at load.

use crate::user_db::{AclRow, UserLookup, UserRecord};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pigeon_core::auth::BoxFuture;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

pub const DEFAULT_AUTH_QUERY: &str =
    "SELECT password, is_superuser FROM mqtt_user WHERE username = $1";
pub const DEFAULT_ACL_QUERY: &str = "SELECT topic, rw FROM mqtt_acl WHERE username = $1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// `host=... port=... user=... dbname=...` or `postgres://user@host:port/dbname`.
    pub url: String,
    /// Empty: no authentication from PostgreSQL.
    pub auth_query: String,
    /// Empty: no ACL from PostgreSQL.
    pub acl_query: String,
    pub pool_size: usize,
    pub timeout: Duration,
}

/// Parses a connection string as `PostgresLookup::connect` will; the error says why not.
pub fn check_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    if config.get_ssl_mode() == SslMode::Require {
        return Err("sslmode=require: TLS to PostgreSQL is not built in (use a local socket, a tunnel, or sslmode=disable)".into());
    }
    Ok(config)
}

/// The service as logs name it: host, port and database, never the password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("postgres {host}:{port}/{db}")
}

pub struct PostgresLookup {
    pool: Pool,
    settings: PostgresSettings,
}

impl PostgresLookup {
    /// Builds the pool; connections are opened when first needed, so a database that is down at
    /// start refuses logins (fail closed) until it is back.
    pub fn connect(settings: PostgresSettings) -> Result<PostgresLookup, String> {
        let config = check_url(&settings.url)?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"))?;
        Ok(PostgresLookup { pool, settings })
    }

    async fn query(
        &self,
        query: &str,
        username: &str,
        client_id: &str,
    ) -> Result<Vec<Row>, String> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| format!("no connection: {e}"))?;
        let statement = client
            .prepare_cached(query)
            .await
            .map_err(|e| format!("`{query}`: {e}"))?;
        let params: &[&(dyn ToSql + Sync)] = match statement.params().len() {
            1 => &[&username],
            2 => &[&username, &client_id],
            n => {
                return Err(format!(
                    "`{query}` takes {n} parameters; expected $1 (username) and optionally $2 (client id)"
                ))
            }
        };
        client
            .query(&statement, params)
            .await
            .map_err(|e| format!("`{query}`: {e}"))
    }
}

/// A text column; `None` for NULL.
fn text(row: &Row, i: usize) -> Result<Option<String>, String> {
    row.try_get::<_, Option<String>>(i)
        .map_err(|e| format!("column {}: {e}", i + 1))
}

/// A number given as any integer type or as text.
fn number(row: &Row, i: usize) -> Option<i64> {
    let column = row.columns().get(i)?;
    match *column.type_() {
        Type::INT2 => row.try_get::<_, Option<i16>>(i).ok()?.map(i64::from),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).ok()?.map(i64::from),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).ok()?,
        _ => row
            .try_get::<_, Option<String>>(i)
            .ok()??
            .trim()
            .parse()
            .ok(),
    }
}

/// A superuser flag given as a boolean, a number or text (`true`, `1`).
fn flag(row: &Row, i: usize) -> bool {
    let Some(column) = row.columns().get(i) else {
        return false;
    };
    if *column.type_() == Type::BOOL {
        return row
            .try_get::<_, Option<bool>>(i)
            .ok()
            .flatten()
            .unwrap_or(false);
    }
    if let Some(n) = number(row, i) {
        return n != 0;
    }
    row.try_get::<_, Option<String>>(i)
        .ok()
        .flatten()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("true"))
}

impl UserLookup for PostgresLookup {
    fn user<'a>(
        &'a self,
        username: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserRecord>, String>> {
        Box::pin(async move {
            let rows = self
                .query(&self.settings.auth_query, username, client_id)
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let Some(password) = text(row, 0)? else {
                return Ok(None);
            };
            Ok(Some(UserRecord {
                password,
                superuser: flag(row, 1),
            }))
        })
    }

    fn acl<'a>(
        &'a self,
        username: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AclRow>, String>> {
        Box::pin(async move {
            let rows = self
                .query(&self.settings.acl_query, username, client_id)
                .await?;
            let mut acl = Vec::with_capacity(rows.len());
            for row in &rows {
                let Some(topic) = text(row, 0)? else { continue };
                acl.push(AclRow {
                    topic,
                    // Not a number: 0, which the rows' reader skips with a warning.
                    rw: number(row, 1).unwrap_or(0),
                });
            }
            Ok(acl)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let config = check_url("host=127.0.0.1 port=5433 user=pigeon password=x dbname=mqtt")
            .expect("valid");
        assert_eq!(describe(&config), "postgres 127.0.0.1:5433/mqtt");
        let config = check_url("postgres://pigeon:x@db.example:5432/auth").expect("valid");
        assert_eq!(describe(&config), "postgres db.example:5432/auth");
        assert!(check_url("host=a sslmode=require")
            .expect_err("no TLS")
            .contains("sslmode=require"));
        assert!(check_url("host=a bogus=1").is_err());
    }
}
