//! `password_file`: mosquitto's password file, read by the `PasswordFile` authenticator and
//! edited by `pigeon passwd`.
//!
//! A line is `username:hash`; lines starting with `#` and lines without `:` are skipped, as
//! mosquitto does. Hashes: `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512) and `$6$SALT$HASH`
//! (one SHA-512 over password then salt), salt of 12 or 64 bytes, standard base64 with padding,
//! a 64-byte hash. An entry that does not decode is skipped with a warning naming file and line
//! (mosquitto drops it too). Comparisons are constant-time. We write `$7$101$` with a 12-byte
//! random salt, what mosquitto 2.0's `mosquitto_passwd` writes.
//! The table sits behind an `ArcSwap`: a reload replaces it whole, readers never wait.

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pigeon_core::auth::{Authentication, Authenticator, Check, ConnectRequest, Refused};
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Iterations `pigeon passwd` writes (mosquitto 2.0's default).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt bytes `pigeon passwd` writes (mosquitto 2.0's length).
pub const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash($6$)"),
            PasswordHash::Pbkdf2 { iterations, .. } => write!(f, "PasswordHash($7${iterations}$)"),
        }
    }
}

impl PasswordHash {
    /// Parses the part after `username:`.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let decode = |what: &str, b64: &str| {
            STANDARD
                .decode(b64)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        let salt_ok = |salt: Vec<u8>| {
            if salt.len() == SALT_LEN || salt.len() == HASH_LEN {
                Ok(salt)
            } else {
                Err(format!(
                    "salt is {} bytes; expected {SALT_LEN} or {HASH_LEN}",
                    salt.len()
                ))
            }
        };
        let hash_ok = |hash: Vec<u8>| -> Result<[u8; HASH_LEN], String> {
            let len = hash.len();
            hash.try_into()
                .map_err(|_| format!("hash is {len} bytes; expected {HASH_LEN}"))
        };
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("expected $7$ITERATIONS$SALT$HASH".into());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("iterations `{iterations}` is not a positive number"))?;
            Ok(PasswordHash::Pbkdf2 {
                iterations,
                salt: salt_ok(decode("salt", salt)?)?,
                hash: hash_ok(decode("hash", hash)?)?,
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("expected $6$SALT$HASH".into());
            };
            Ok(PasswordHash::Sha512 {
                salt: salt_ok(decode("salt", salt)?)?,
                hash: hash_ok(decode("hash", hash)?)?,
            })
        } else if text.starts_with("$argon2") {
            Err("argon2 hashes (mosquitto 2.1) are not supported; write the entry with `pigeon passwd` or mosquitto 2.0".into())
        } else {
            Err("unknown hash type; expected $7$ (PBKDF2-SHA512) or $6$ (SHA-512)".into())
        }
    }

    /// A `$7$` hash of `password` with a new random salt.
    pub fn new_pbkdf2(password: &[u8], iterations: u32) -> Result<PasswordHash, String> {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        Ok(PasswordHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` hashes to this, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (expected, computed) = match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let out: [u8; HASH_LEN] = digest.finalize().into();
                (hash, out)
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (hash, out)
            }
        };
        bool::from(expected.ct_eq(&computed))
    }
}

impl fmt::Display for PasswordHash {
    /// The file form, `$7$101$salt$hash` or `$6$salt$hash`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
        }
    }
}

/// An error that stops a password or ACL file from loading.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The parsed users of a password file, and the entries skipped.
#[derive(Debug, Default)]
pub struct Users {
    pub hashes: HashMap<String, PasswordHash>,
    /// `file:line: reason` of each entry skipped.
    pub skipped: Vec<String>,
}

/// One line of a password file, as `pigeon passwd` keeps it.
enum Line {
    /// A comment, blank line or line without `:`: written back as it was.
    Other(String),
    Entry {
        user: String,
        secret: String,
    },
}

/// Splits a line into user and secret as mosquitto does: `#` lines and lines without `:` are
/// not entries; both parts are trimmed.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (user, secret) = line.split_once(':')?;
    Some((user.trim(), secret.trim()))
}

/// Parses the text of a password file; `name` is used in the warnings.
pub fn parse_users(text: &str, name: &str) -> Users {
    let mut users = Users::default();
    for (i, line) in text.lines().enumerate() {
        let Some((user, secret)) = split_entry(line) else {
            continue;
        };
        if user.is_empty() {
            users
                .skipped
                .push(format!("{name}:{}: empty username", i + 1));
            continue;
        }
        match PasswordHash::parse(secret) {
            Ok(hash) => {
                users.hashes.insert(user.to_owned(), hash);
            }
            Err(reason) => users
                .skipped
                .push(format!("{name}:{}: user `{user}`: {reason}", i + 1)),
        }
    }
    users
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The `password_file` authenticator.
pub struct PasswordFile {
    path: PathBuf,
    users: ArcSwap<HashMap<String, PasswordHash>>,
    /// Verified against when the user is unknown, so an unknown name costs as long as a known
    /// one and timing does not tell which names exist.
    decoy: PasswordHash,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("path", &self.path)
            .field("users", &self.users.load().len())
            .finish()
    }
}

impl PasswordFile {
    /// Reads the file; returns the authenticator and the warnings for skipped entries.
    pub fn load(path: &Path) -> Result<(PasswordFile, Vec<String>), FileError> {
        let users = parse_users(&read(path)?, &path.display().to_string());
        let decoy = PasswordHash::Pbkdf2 {
            iterations: DEFAULT_ITERATIONS,
            salt: vec![0; SALT_LEN],
            hash: [0; HASH_LEN],
        };
        Ok((
            PasswordFile {
                path: path.to_owned(),
                users: ArcSwap::from_pointee(users.hashes),
                decoy,
            },
            users.skipped,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn user_count(&self) -> usize {
        self.users.load().len()
    }

    /// Reads the file again; on error the users loaded before stay. Returns the warnings.
    pub fn reload_users(&self) -> Result<Vec<String>, FileError> {
        let users = parse_users(&read(&self.path)?, &self.path.display().to_string());
        self.users.store(Arc::new(users.hashes));
        Ok(users.skipped)
    }
}

impl Authenticator for PasswordFile {
    fn name(&self) -> &str {
        "password_file"
    }

    fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
        let Some(username) = request.username else {
            return Check::Ready(Authentication::Continue);
        };
        let users = self.users.load();
        let Some(hash) = users.get(username) else {
            if let Some(password) = request.password {
                let _ = self.decoy.verify(password);
            }
            // Unknown here: another backend may know the user (the chain's default refuses).
            return Check::Ready(Authentication::Continue);
        };
        let answer = match request.password {
            Some(password) if hash.verify(password) => Authentication::Allow { superuser: false },
            Some(_) => Authentication::Deny {
                code: Refused::BadCredentials,
                reason: "wrong password for a user of the password file".into(),
            },
            // A verified client certificate names the user; the chain admits it.
            None if request.certificate_identity.is_some() => Authentication::Continue,
            None => Authentication::Deny {
                code: Refused::BadCredentials,
                reason: "no password given for a user of the password file".into(),
            },
        };
        Check::Ready(answer)
    }

    fn reload(&self) -> Result<(), String> {
        let skipped = self.reload_users().map_err(|e| e.to_string())?;
        for warning in skipped {
            tracing::warn!("password_file entry skipped: {warning}");
        }
        Ok(())
    }
}

/// A password file being edited by `pigeon passwd`: other lines and their order are kept.
pub struct PasswdFile {
    lines: Vec<Line>,
}

impl PasswdFile {
    /// An empty file (`-c`).
    pub fn new() -> PasswdFile {
        PasswdFile { lines: Vec::new() }
    }

    pub fn parse(text: &str) -> PasswdFile {
        let lines = text
            .lines()
            .map(|line| match split_entry(line) {
                Some((user, secret)) => Line::Entry {
                    user: user.to_owned(),
                    secret: secret.to_owned(),
                },
                None => Line::Other(line.to_owned()),
            })
            .collect();
        PasswdFile { lines }
    }

    /// Adds the user, or replaces its password; the new entry is a `$7$` hash.
    pub fn set(&mut self, user: &str, password: &[u8], iterations: u32) -> Result<(), String> {
        validate_username(user)?;
        let secret = PasswordHash::new_pbkdf2(password, iterations)?.to_string();
        for line in &mut self.lines {
            if let Line::Entry { user: u, secret: s } = line {
                if u == user {
                    *s = secret;
                    return Ok(());
                }
            }
        }
        self.lines.push(Line::Entry {
            user: user.to_owned(),
            secret,
        });
        Ok(())
    }

    /// Removes the user; false if it was not there.
    pub fn delete(&mut self, user: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { user: u, .. } if u == user));
        self.lines.len() != before
    }

    /// `-U`: hashes every plain-text password. Entries already hashed (`$6$`, `$7$`) are left as
    /// they are, so running it twice does no harm. Returns how many were converted.
    pub fn hash_plain_text(&mut self, iterations: u32) -> Result<usize, String> {
        let mut converted = 0;
        for line in &mut self.lines {
            if let Line::Entry { secret, .. } = line {
                if secret.starts_with("$6$") || secret.starts_with("$7$") {
                    continue;
                }
                *secret = PasswordHash::new_pbkdf2(secret.as_bytes(), iterations)?.to_string();
                converted += 1;
            }
        }
        Ok(converted)
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(text) => out.push_str(text),
                Line::Entry { user, secret } => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(secret);
                }
            }
            out.push('\n');
        }
        out
    }
}

impl Default for PasswdFile {
    fn default() -> Self {
        PasswdFile::new()
    }
}

/// A username `mosquitto_passwd` would accept: not empty, no `:`, no control characters.
pub fn validate_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("the username is empty".into());
    }
    if user.contains(':') {
        return Err("a username may not contain `:`".into());
    }
    if user.chars().any(char::is_control) {
        return Err("a username may not contain control characters".into());
    }
    if user.len() > 65535 {
        return Err("the username is longer than 65535 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_codec::Protocol;

    // Written by Debian's mosquitto_passwd 2.0.11 (`-b`, then `-H sha512 -b`), password "secret".
    const MOSQUITTO_FILE: &str = "alice:$7$101$Q6hXcbVdAav8p0ku$aEQqFg44ZgRYU864BMm7SEYejm9aD7VRo6W/8SmCyIhpOHJFQnNjibCFpBp3Pqd4n/oc9xa8prcP8RQT5zRvag==
bob:$6$5whj9a/W7nMxZg5c$lHw3M8TL/Eysj0FdHbMxMhTnngtBKYLzN0v68ymA+I06XUh4YZD1uJxhKSkeGmLDyj+tLgu7xVnwIR3C1xlicg==
";

    fn request<'a>(user: &'a str, password: &'a [u8]) -> ConnectRequest<'a> {
        ConnectRequest {
            client_id: "c",
            username: Some(user),
            password: Some(password),
            peer: "127.0.0.1:1".parse().expect("addr"),
            protocol: Protocol::V3_1_1,
            listener: None,
            certificate_identity: None,
        }
    }

    #[test]
    fn written_hashes_verify_and_round_trip() {
        let hash = PasswordHash::new_pbkdf2(b"pw", DEFAULT_ITERATIONS).expect("salt");
        let text = hash.to_string();
        assert!(text.starts_with("$7$101$"), "{text}");
        let parsed = PasswordHash::parse(&text).expect("parses");
        assert_eq!(parsed, hash);
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pW"));
    }

    #[test]
    fn sha512_entries_verify() {
        let salt = [7u8; SALT_LEN];
        let mut digest = Sha512::new();
        digest.update(b"pw");
        digest.update(salt);
        let hash: [u8; HASH_LEN] = digest.finalize().into();
        let line = format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash));
        let parsed = PasswordHash::parse(&line).expect("parses");
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"other"));
        assert_eq!(parsed.to_string(), line);
    }

    #[test]
    fn bad_entries_are_skipped_with_their_line() {
        let text =
            "# comment\nnocolon\nbob:$7$0$AAAA$AAAA\ncarol:$argon2id$v=19$x\ndave:plain\n:$6$x$y\n";
        let users = parse_users(text, "pw");
        assert!(users.hashes.is_empty());
        assert_eq!(users.skipped.len(), 4, "{:?}", users.skipped);
        assert!(users.skipped[0].starts_with("pw:3: user `bob`: iterations"));
        assert!(users.skipped[1].contains("argon2"));
        assert!(users.skipped[3].starts_with("pw:6: empty username"));
    }

    #[test]
    fn authenticator_answers() {
        let dir = std::env::temp_dir().join(format!("pigeon-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("passwd");
        let mut file = PasswdFile::new();
        file.set("alice", b"secret", DEFAULT_ITERATIONS)
            .expect("set");
        std::fs::write(&path, file.to_text()).expect("write");
        let (auth, skipped) = PasswordFile::load(&path).expect("load");
        assert!(skipped.is_empty());
        let answer = |user, pw| match auth.authenticate(&request(user, pw)) {
            Check::Ready(a) => a,
            Check::Pending(_) => panic!("file answers at once"),
        };
        assert_eq!(
            answer("alice", b"secret"),
            Authentication::Allow { superuser: false }
        );
        assert!(matches!(
            answer("alice", b"nope"),
            Authentication::Deny {
                code: Refused::BadCredentials,
                ..
            }
        ));
        assert_eq!(answer("mallory", b"secret"), Authentication::Continue);
        std::fs::write(&path, "").expect("write");
        auth.reload().expect("reload");
        assert_eq!(answer("alice", b"secret"), Authentication::Continue);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn mosquitto_passwd_entries_verify() {
        let users = parse_users(MOSQUITTO_FILE, "pw");
        assert!(users.skipped.is_empty(), "{:?}", users.skipped);
        for user in ["alice", "bob"] {
            assert!(users.hashes[user].verify(b"secret"), "{user}");
            assert!(!users.hashes[user].verify(b"Secret"), "{user}");
        }
        // Written back unchanged.
        let line = MOSQUITTO_FILE.lines().next().expect("line");
        assert_eq!(format!("alice:{}", users.hashes["alice"]), line);
    }

    #[test]
    fn editing_keeps_other_lines() {
        let mut file = PasswdFile::parse("# users\nalice:plain\nbob:$6$x$y\n");
        assert_eq!(file.hash_plain_text(DEFAULT_ITERATIONS).expect("hash"), 1);
        assert!(file.delete("bob"));
        assert!(!file.delete("bob"));
        file.set("carol", b"pw", 5).expect("set");
        let text = file.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# users");
        assert!(lines[1].starts_with("alice:$7$101$"));
        assert!(lines[2].starts_with("carol:$7$5$"));
        let users = parse_users(&text, "pw");
        assert!(users.hashes["alice"].verify(b"plain"));
        assert!(file.set("a:b", b"pw", 5).is_err());
    }
}
