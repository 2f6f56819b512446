//! Pigeon's tokio server: listeners, connection tasks and shutdown around `pigeon_core::Broker`.
//!
//! # Layout
//! - `alloc`: the global allocator `pigeon` uses: the system's, with tokio's cache-aligned task
//!   and I/O blocks pooled (two per connection).
//! - `config`: the typed configuration and its validation.
//! - `listener`: accept loops; each accepted socket gets its own task at once, which runs the
//!   TLS and WebSocket handshakes under a timeout and then the connection.
//! - `tls`: rustls configs from PEM files, client certificates, reload.
//! - `ws`: the WebSocket upgrade and the stream adapter from WebSocket messages to bytes.
//! - `connection`: one client's task: CONNECT, then one poll function over the socket, the
//!   session queue and the broker's control line (takeover, keep alive, shutdown).
//! - `http`: the HTTP listener: health, index and static files.
//! - `login_limit`: failed logins counted per client address, and bans.
//! - `server`: `Server::bind` / `Server::run`, which tests call with port 0; the auth chain from
//!   the configuration; SIGHUP reloads.
//! - `external_auth`: the http, redis, postgres and jwt backends from their `[auth.*]` sections.
//! - `embed`: `Pigeon::builder()`, the broker as a library: Rust auth backends and hooks,
//!   in-process publish and subscribe, graceful stop.

pub mod alloc;
pub mod config;
mod connection;
mod embed;
mod external_auth;
mod http;
mod listener;
mod login_limit;
mod server;
mod sys;
mod tls;
mod ws;

pub use config::Config;
pub use embed::{InProcessError, Pigeon, PigeonBuilder, PigeonHandle, StartError, Subscription};
pub use server::{check_files, AuthReloader, Error, Extensions, Server, TlsReloader};
pub use tls::TlsError;
