//! The browser test as part of `cargo test`: runs `node tests/browser/run.mjs`, which starts this
//! `pigeon` binary, opens an MQTT.js page and a paho-mqtt.js page in headless Chromium over
//! ws://127.0.0.1, and checks that both exchange messages with each other and with a TCP
//! client, then drives the admin dashboard (`/dashboard`): a wrong token refused, the three
//! clients listed, one disconnected at a click. Screenshots and the broker's log go to
//! `target/tmp/browser/`.
//!
//! It fails, saying what is missing, when Node.js, Chromium or the npm packages are absent:
//! `scripts/test` installs all three.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn mqtt_js_and_paho_in_chromium_over_websocket() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "Node.js is missing (`node --version` failed: {node:?}); scripts/test installs it \
         (apt-get install nodejs npm)"
    );
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.exists(),
        "Chromium is missing at {}; scripts/test installs it (apt-get install chromium)",
        chromium.display()
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "the npm packages are missing; run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let output = Command::new("node")
        .arg(dir.join("run.mjs"))
        .env("PIGEON_BIN", env!("CARGO_BIN_EXE_pigeon"))
        .env("PIGEON_BROWSER_OUT", &out)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "tests/browser/run.mjs failed ({}); screenshots and broker log in {}\n{stdout}\n{stderr}",
        output.status,
        out.display()
    );
    for page in ["mqttjs.png", "paho.png", "dashboard.png"] {
        assert!(
            out.join(page).is_file(),
            "no screenshot {page} in {}",
            out.display()
        );
    }
}
