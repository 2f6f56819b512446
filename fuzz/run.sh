#!/usr/bin/env bash
# Builds the `decode` fuzz target and runs it for SECONDS; exits non-zero if libFuzzer finds a
# crash, a panic or a timeout. Usage: fuzz/run.sh SECONDS
#
# With nightly and cargo-fuzz installed it builds through `cargo fuzz` (AddressSanitizer on).
# Otherwise, or with FUZZ_STABLE=1, it builds on stable with the coverage flags cargo-fuzz
# passes, without ASan; `--target` keeps those flags off build scripts, as cargo-fuzz does. The
# codec has no unsafe code apart from one unchecked str conversion, so ASan adds little.
set -euo pipefail

seconds="${1:?usage: fuzz/run.sh SECONDS}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
# The binary is looked for under fuzz/target, whatever CARGO_TARGET_DIR the caller set.
export CARGO_TARGET_DIR="$here/target"

host="$(rustc -vV | sed -n 's/^host: //p')"
if [ -z "${FUZZ_STABLE:-}" ] && cargo +nightly --version >/dev/null 2>&1 \
    && cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly fuzz build --release decode
    bin="$here/target/$host/release/decode"
else
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        cargo build --release --bin decode --target "$host"
    bin="$here/target/$host/release/decode"
fi

# ASan's default 256 MB quarantine takes a 7-minute run to about 330 MB of RSS; a smaller one
# keeps long runs clear of -rss_limit_mb.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=64}"

# New inputs go to corpus/decode (kept out of git); seeds/ is read only.
mkdir -p corpus/decode artifacts/decode
exec "$bin" -max_total_time="$seconds" -rss_limit_mb=512 -timeout=5 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix=artifacts/decode/ corpus/decode seeds
