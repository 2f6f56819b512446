//! Password files move between mosquitto and Pigeon unchanged: one written by Debian's
//! `mosquitto_passwd` admits its user to the `pigeon` binary, one written by `pigeon passwd`
//! admits its user to `/usr/sbin/mosquitto`, and a wrong password is refused by both. Also:
//! SIGHUP makes a running `pigeon` read its password file again. scripts/test installs
//! mosquitto and mosquitto-clients.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("pigeon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} || test -x {name}"))
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(found, Ok(true)),
        "{name} is not installed: run scripts/test, which installs mosquitto and mosquitto-clients"
    );
    Command::new(name)
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_pigeon(dir: &Dir, passwd: &Path) -> (Running, u16) {
    let port = free_port();
    let config = dir.path("pigeon.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[storage]\nbackend = \"memory\"\n\n\
             [auth]\npassword_file = \"{}\"\nallow_anonymous = false\n",
            passwd.display()
        ),
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pigeon");
    let running = Running(child);
    wait_listening(port, "pigeon");
    (running, port)
}

fn start_mosquitto(dir: &Dir, passwd: &Path) -> (Running, u16) {
    let port = free_port();
    let config = dir.path("mosquitto.conf");
    // `user root`: mosquitto started as root would otherwise switch to the mosquitto user,
    // which cannot read a password file in our temporary directory.
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nuser root\n",
            passwd.display()
        ),
    )
    .expect("write config");
    let child = tool("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let running = Running(child);
    wait_listening(port, "mosquitto");
    (running, port)
}

/// Publishes once with `mosquitto_pub`; true if the broker accepted the connection.
fn mosquitto_pub(port: u16, version: &str, user: &str, password: &str) -> bool {
    let output = tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args([
            "-u",
            user,
            "-P",
            password,
            "-t",
            "auth/interop",
            "-m",
            "hello",
            "-q",
            "1",
        ])
        .output()
        .expect("run mosquitto_pub");
    output.status.success()
}

#[test]
fn a_password_file_from_mosquitto_passwd_admits_its_user_to_pigeon() {
    let dir = Dir::new("passwd-from-mosquitto");
    let passwd = dir.path("passwd");
    run(tool("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["alice", "wonder"]));
    run(tool("mosquitto_passwd")
        .args(["-H", "sha512", "-b"])
        .arg(&passwd)
        .args(["bob", "builder"]));
    let (_pigeon, port) = start_pigeon(&dir, &passwd);
    for version in ["mqttv311", "mqttv5"] {
        assert!(
            mosquitto_pub(port, version, "alice", "wonder"),
            "$7$ entry, {version}"
        );
        assert!(
            mosquitto_pub(port, version, "bob", "builder"),
            "$6$ entry, {version}"
        );
        assert!(
            !mosquitto_pub(port, version, "alice", "wrong"),
            "wrong password, {version}"
        );
        assert!(
            !mosquitto_pub(port, version, "carol", "wonder"),
            "unknown user, {version}"
        );
    }
}

#[test]
fn a_password_file_from_pigeon_passwd_admits_its_user_to_mosquitto() {
    let dir = Dir::new("passwd-from-pigeon");
    let passwd = dir.path("passwd");
    run(Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["passwd", "-b", "-c"])
        .arg(&passwd)
        .args(["alice", "wonder"]));
    // Without -b, from standard input (not a terminal here).
    let mut child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("passwd")
        .arg(&passwd)
        .arg("dave")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start pigeon passwd");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"from-stdin\n").expect("write password");
    }
    assert!(child.wait().expect("pigeon passwd ends").success());
    let text = std::fs::read_to_string(&passwd).expect("read file");
    assert!(text.starts_with("alice:$7$101$"), "{text}");
    let (_mosquitto, port) = start_mosquitto(&dir, &passwd);
    assert!(mosquitto_pub(port, "mqttv311", "alice", "wonder"));
    assert!(mosquitto_pub(port, "mqttv5", "dave", "from-stdin"));
    assert!(!mosquitto_pub(port, "mqttv311", "alice", "wrong"));
    assert!(!mosquitto_pub(port, "mqttv5", "dave", "wonder"));
}

#[test]
fn sighup_reloads_the_password_file() {
    let dir = Dir::new("passwd-sighup");
    let passwd = dir.path("passwd");
    let pigeon_passwd = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .arg("passwd")
            .args(&args[..args.len() - 2])
            .arg(&passwd)
            .args(&args[args.len() - 2..]));
    };
    pigeon_passwd(&["-b", "-c", "alice", "one"]);
    let (pigeon, port) = start_pigeon(&dir, &passwd);
    assert!(!mosquitto_pub(port, "mqttv5", "bob", "two"));
    pigeon_passwd(&["-b", "bob", "two"]);
    run(Command::new("kill").args(["-HUP", &pigeon.0.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mosquitto_pub(port, "mqttv5", "bob", "two") {
        assert!(Instant::now() < deadline, "bob not admitted after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A file that fails to load keeps the users in use.
    std::fs::remove_file(&passwd).expect("remove");
    run(Command::new("kill").args(["-HUP", &pigeon.0.id().to_string()]));
    std::thread::sleep(Duration::from_millis(200));
    assert!(mosquitto_pub(port, "mqttv5", "alice", "one"));
}
