//! The `pigeon` binary as a user runs it: exit codes, what goes to stdout and stderr.
//!
//! Each test writes its files under the system temp directory with a name of its own and
//! removes them at the end; servers bind 127.0.0.1:0.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const PIGEON: &str = env!("CARGO_BIN_EXE_pigeon");

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pigeon-cli-{}-{unique}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    fn display(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pigeon(args: &[&str]) -> Output {
    Command::new(PIGEON)
        .args(args)
        .output()
        .expect("run pigeon")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const GOOD: &str = r#"[[listener]]
bind = "127.0.0.1:0"

# Tests must not write a store into the source tree.
[storage]
backend = "memory"

[limits]
max_inflight = 100
"#;

#[test]
fn check_config_accepts_a_good_file() {
    let file = TempFile::new("good.toml", GOOD);
    let output = pigeon(&["check-config", &file.display()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}: ok\n", file.display()));
}

#[test]
fn check_config_names_file_line_and_key() {
    let file = TempFile::new(
        "bad.toml",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[limits]\nmax_inflight = 0\n",
    );
    let output = pigeon(&["check-config", &file.display()]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        format!(
            "{}:5:1: [limits] max_inflight: must be between 1 and 65535 (got 0)\n",
            file.display()
        )
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn check_config_names_an_unknown_key() {
    let file = TempFile::new("typo.toml", "[[listener]]\nbnd = \"127.0.0.1:0\"\n");
    let output = pigeon(&["check-config", &file.display()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "{}:2:1: [[listener]] bnd: unknown field `bnd`",
            file.display()
        )),
        "{message}"
    );
}

/// The password and ACL files the configuration names are read too, as a start would: a bad
/// line is reported with its file and line, and a missing file by its path.
#[test]
fn check_config_reads_the_acl_and_password_files() {
    let acl = TempFile::new("acl", "topic read a/#\ntopic reed b\n");
    let config = TempFile::new(
        "auth.toml",
        &format!("{GOOD}\n[auth]\nacl_file = \"{}\"\n", acl.display()),
    );
    let output = pigeon(&["check-config", &config.display()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("[auth] acl_file") && message.contains(&format!("{}:2", acl.display())),
        "{message}"
    );
    assert!(message.contains("reed"), "{message}");
    assert!(stdout(&output).is_empty());

    let missing = TempFile::new(
        "auth-missing.toml",
        &format!("{GOOD}\n[auth]\npassword_file = \"/nonexistent/pigeon-pw\"\n"),
    );
    let output = pigeon(&["check-config", &missing.display()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("[auth] password_file") && message.contains("/nonexistent/pigeon-pw"),
        "{message}"
    );

    let good = TempFile::new("acl-good", "topic read a/#\n");
    let config = TempFile::new(
        "auth-good.toml",
        &format!("{GOOD}\n[auth]\nacl_file = \"{}\"\n", good.display()),
    );
    let output = pigeon(&["check-config", &config.display()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn check_config_of_a_missing_file() {
    let output = pigeon(&["check-config", "/nonexistent/pigeon.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "cannot read /nonexistent/pigeon.toml: No such file or directory\n"
    );
}

#[test]
fn default_config_passes_check_config() {
    let output = pigeon(&["default-config"]);
    assert_eq!(output.status.code(), Some(0));
    let example = stdout(&output);
    assert!(example.contains("[[listener]]"), "{example}");

    let file = TempFile::new("default.toml", &example);
    let output = pigeon(&["check-config", &file.display()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}: ok\n", file.display()));
}

#[test]
fn check_config_reads_stdin_for_a_dash() {
    let example = pigeon(&["default-config"]).stdout;
    let mut child = Command::new(PIGEON)
        .args(["check-config", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pigeon");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&example)
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "<stdin>: ok\n");
}

#[test]
fn help_lists_the_commands() {
    let output = pigeon(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for word in [
        "check-config",
        "default-config",
        "--config",
        "--threads",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    let output = pigeon(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).starts_with("pigeon "));
}

#[test]
fn serving_a_bad_config_exits_2_without_a_panic() {
    let file = TempFile::new("serve-bad.toml", "[limits]\nmax_packet_size = 1\n");
    let output = pigeon(&["--config", &file.display()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.starts_with(&file.display()), "{message}");
    assert!(!message.contains("panicked"), "{message}");

    let output = pigeon(&["-c", "/nonexistent/pigeon.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).starts_with("cannot read /nonexistent/pigeon.toml"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(pigeon(&["--no-such-flag"]).status.code(), Some(2));
    assert_eq!(pigeon(&["--threads", "0"]).status.code(), Some(2));
    let file = TempFile::new("conflict.toml", GOOD);
    let output = pigeon(&["--config", &file.display(), "check-config", &file.display()]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let file = TempFile::new(
        "in-use.toml",
        &format!("[[listener]]\nbind = \"{address}\"\n"),
    );
    let output = pigeon(&["--config", &file.display()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("error: "), "{}", stderr(&output));
}

#[test]
fn sigterm_stops_the_server_with_exit_0() {
    let file = TempFile::new("serve.toml", GOOD);
    let mut child = Command::new(PIGEON)
        .args(["--config", &file.display(), "--threads", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pigeon");

    // Wait for the listener to be up: the signal handlers are installed before binding.
    let (lines_tx, lines) = mpsc::channel();
    let child_stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(child_stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening") {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no \"listening\" line within 10 s; log so far:\n{log}");
            }
        }
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "log:\n{log}");
}
