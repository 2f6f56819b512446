//! Adapters behind the ports of `pigeon-core`.
//!
//! # Layout
//! - `embedded`: the default store, a redb file in the data directory.
//! - `redis_store`: the `redis` store, sessions and retained messages in a Redis shared by nodes,
//!   and which node owns each session.
//! - `record`: the byte layout of stored sessions, queue entries and messages.
//! - `password_file`: mosquitto's password file (`$7$`, `$6$`), the authenticator and the editor
//!   behind `pigeon passwd`.
//! - `acl_file`: mosquitto's ACL file, the authorizer.
//! - `http_auth`: the `http` backend, JSON POSTs to the user's auth and ACL endpoints.
//! - `user_db`: users and ACL rows from a database, cached; `redis_auth` and `postgres_auth`
//!   are its lookups.
//! - `webhook`: the broker's events (connected, disconnected, subscribed, unsubscribed,
//!   published, delivered) as JSON POSTs to the user's web service, in EMQX's form.
//! - `jwt`: a JSON Web Token as password, with topic rights in a claim.
//! - `cache`: the bounded TTL cache the external backends share.
//! - `cluster`: the Redis bus shared with aedes nodes: mqemitter-redis envelopes, channel
//!   patterns, id dedupe.

pub mod acl_file;
mod cache;
pub mod cluster;
pub mod embedded;
pub mod http_auth;
pub mod jwt;
pub mod password_file;
pub mod postgres_auth;
mod record;
pub mod redis_auth;
pub mod redis_store;
pub mod user_db;
pub mod webhook;

pub use acl_file::AclFile;
pub use embedded::EmbeddedStore;
pub use http_auth::HttpAuth;
pub use jwt::JwtAuth;
pub use password_file::{FileError, PasswordFile};
pub use redis_store::RedisStore;
pub use user_db::UserDb;
pub use webhook::Webhook;
