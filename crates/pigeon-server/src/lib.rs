//! Pigeon's tokio server: listeners, connection tasks and shutdown around `pigeon_core::Broker`.
//!
//! # Layout
//! - `config`: the typed configuration and its validation.
//! - `listener`: accept loops; each accepted socket gets its own task at once.
//! - `connection`: one client's task: CONNECT, then a `select!` over socket, session queue,
//!   keep alive, broker control and shutdown.
//! - `server`: `Server::bind` / `Server::run`, which tests call with port 0.

pub mod config;
mod connection;
mod listener;
mod server;

pub use config::Config;
pub use server::{Error, Server};
