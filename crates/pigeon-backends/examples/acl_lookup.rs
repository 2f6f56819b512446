//! Cost of one ACL check against a mosquitto ACL file of 10,000 rules, next to a file of one
//! rule: nanoseconds per publish (write) check, per delivery (read) check and per subscribe
//! (filter coverage) check. The rules are those of the "Auth on the hot path" benchmark in
//! docs/benchmarks.md.
//!
//! Run: `cargo run --release -p pigeon-backends --example acl_lookup`; with `-- --write FILE`
//! it writes the 10,000 rules to FILE instead, for a broker's `acl_file`.

use pigeon_backends::acl_file::AclRules;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

/// 5,000 rules for anonymous clients and 5,000 in 2,500 user sections.
fn ten_thousand() -> String {
    let mut text = String::new();
    for i in 0..500 {
        text.push_str(&format!("topic readwrite bench/p2p/{i}\n"));
    }
    for i in 0..4499 {
        text.push_str(&format!("topic write bench/{i}\n"));
    }
    text.push_str("topic read bench/+\n");
    for u in 0..2500 {
        text.push_str(&format!(
            "user device-{u}\ntopic readwrite devices/{u}/#\ntopic read fleet/{u}/+/state\n"
        ));
    }
    text
}

fn time(label: &str, rounds: u32, mut check: impl FnMut(u32) -> bool) {
    let start = Instant::now();
    let mut allowed = 0u32;
    for i in 0..rounds {
        allowed += u32::from(black_box(check(i)));
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
    println!("{label:<58} {ns:>7.1} ns/check (allowed {allowed}/{rounds})");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, file] = &args[..] {
        assert_eq!(flag, "--write", "usage: acl_lookup [--write FILE]");
        std::fs::write(file, ten_thousand()).expect("write the ACL file");
        return;
    }
    let path = Path::new("acl");
    let big = AclRules::parse(&ten_thousand(), path).expect("valid rules");
    let small = AclRules::parse("topic readwrite bench/p2p/7\n", path).expect("valid rule");
    assert_eq!(big.len(), 10_000);
    let rounds = 2_000_000;
    let topics: Vec<String> = (0..500).map(|i| format!("bench/p2p/{i}")).collect();
    let allow = |a: pigeon_core::auth::Acl| a == pigeon_core::auth::Acl::Allow;
    for (name, rules) in [("1 rule", &small), ("10,000 rules", &big)] {
        time(
            &format!("{name}: publish bench/p2p/7 (anonymous)"),
            rounds,
            |_| allow(rules.check_topic(None, "c", "bench/p2p/7", true)),
        );
        time(
            &format!("{name}: publish bench/p2p/<i> (anonymous)"),
            rounds,
            |i| allow(rules.check_topic(None, "c", &topics[(i % 500) as usize], true)),
        );
        time(
            &format!("{name}: deliver bench/p2p/7 (anonymous)"),
            rounds,
            |_| allow(rules.check_topic(None, "c", "bench/p2p/7", false)),
        );
        time(
            &format!("{name}: publish devices/1234/x/y (user)"),
            rounds,
            |_| allow(rules.check_topic(Some("device-1234"), "c", "devices/1234/x/y", true)),
        );
        time(
            &format!("{name}: subscribe fleet/1234/+/state (user)"),
            rounds,
            |_| allow(rules.check_filter(Some("device-1234"), "c", "fleet/1234/+/state")),
        );
    }
}
