//! Adapters behind the ports of `pigeon-core`.
//!
//! # Layout
//! - `embedded`: the default store, a redb file in the data directory.
//! - `record`: the byte layout of stored sessions, queue entries and messages.
//! - `password_file`: mosquitto's password file (`$7$`, `$6$`), the authenticator and the editor
//!   behind `pigeon passwd`.
//! - `acl_file`: mosquitto's ACL file, the authorizer.

pub mod acl_file;
pub mod embedded;
pub mod password_file;
mod record;

pub use acl_file::AclFile;
pub use embedded::EmbeddedStore;
pub use password_file::{FileError, PasswordFile};
