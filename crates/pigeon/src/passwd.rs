//! `pigeon passwd`: adds, changes and deletes users of a mosquitto password file, with
//! `mosquitto_passwd`'s options, writing `$7$` (PBKDF2-SHA512) entries.
//!
//! The password comes from the command line with `-b`; otherwise it is asked for twice on a
//! terminal without echo, or read as one line from standard input when that is not a terminal
//! (scripts). The file is written to a temporary file beside it and renamed over it, so a
//! broker reloading on SIGHUP never reads half a file; a new file is created readable by its
//! owner only (0600), an existing one keeps its permissions.

use clap::Args;
use pigeon_backends::password_file::{PasswdFile, DEFAULT_ITERATIONS};
use std::io::{self, BufRead, IsTerminal};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  pigeon passwd -c /etc/pigeon/passwd alice      (new file; asks for the password)\n  pigeon passwd -b /etc/pigeon/passwd bob s3cret  (add or change, password given)\n  pigeon passwd -D /etc/pigeon/passwd bob         (delete)\n  pigeon passwd -U /etc/pigeon/passwd             (hash a file of user:password lines)"
)]
pub(crate) struct PasswdArgs {
    /// Create the file, replacing any existing one.
    #[arg(short = 'c', conflicts_with_all = ["delete", "update"])]
    create: bool,
    /// Batch: take the password from the command line (it shows in the process list).
    #[arg(short = 'b', conflicts_with_all = ["delete", "update"])]
    batch: bool,
    /// Delete the user.
    #[arg(short = 'D', id = "delete")]
    delete: bool,
    /// Hash every plain-text password of a file of `user:password` lines (entries already
    /// hashed are left as they are).
    #[arg(short = 'U', id = "update", conflicts_with = "delete")]
    update: bool,
    /// PBKDF2 iterations of the new entries.
    #[arg(short = 'I', value_name = "ITERATIONS", default_value_t = DEFAULT_ITERATIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// The password file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The user to add, change or delete.
    #[arg(value_name = "USER", required_unless_present = "update")]
    user: Option<String>,
    /// The password, with -b.
    #[arg(value_name = "PASSWORD", requires = "batch")]
    password: Option<String>,
}

/// Runs the command; the error is the message to print.
pub(crate) fn run(args: PasswdArgs) -> Result<String, String> {
    let path = &args.file;
    if args.update {
        if args.user.is_some() {
            return Err("-U takes only the file".into());
        }
        let mut file = PasswdFile::parse(&read(path)?);
        let n = file.hash_plain_text(args.iterations)?;
        write(path, &file.to_text())?;
        return Ok(format!("{}: {n} password(s) hashed", path.display()));
    }
    let user = args.user.as_deref().expect("clap requires USER without -U");
    if args.delete {
        let mut file = PasswdFile::parse(&read(path)?);
        if !file.delete(user) {
            return Err(format!("user `{user}` is not in {}", path.display()));
        }
        write(path, &file.to_text())?;
        return Ok(format!("{}: user `{user}` deleted", path.display()));
    }
    pigeon_backends::password_file::validate_username(user)?;
    let password = match (&args.password, args.batch) {
        (Some(password), _) => password.clone(),
        (None, true) => return Err("-b needs the password after the username".into()),
        (None, false) => ask_password()?,
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let mut file = if args.create {
        PasswdFile::new()
    } else {
        PasswdFile::parse(&read(path).map_err(|e| format!("{e} (use -c to create it)"))?)
    };
    file.set(user, password.as_bytes(), args.iterations)?;
    write(path, &file.to_text())?;
    Ok(format!("{}: user `{user}` set", path.display()))
}

fn ask_password() -> Result<String, String> {
    if io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let second = rpassword::prompt_password("Reenter password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != second {
            return Err("the passwords do not match".into());
        }
        Ok(first)
    } else {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`.
fn write(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o600);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}
