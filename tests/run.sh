#!/usr/bin/env bash
# Runs every Weft test on a fresh Debian machine with a Rust toolchain: installs what is missing
# (idempotent), checks formatting and lints, builds the binaries, then runs the unit tests of every
# crate and the end-to-end tests against the real binaries.
#
# Environment: WEFT_E2E_REQUIRE=1 turns a missing privilege or tool into a failure (CI sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1m[tests]\033[0m %s\n' "$*" >&2; }

# --- set-up ----------------------------------------------------------------------------------
if ! command -v cargo > /dev/null; then
    echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
if command -v rustup > /dev/null; then
    for c in rustfmt clippy; do
        rustup component list --installed 2> /dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi
# The pod tests build network namespaces, bridges and iptables rules; the telemetry tests run a real
# Prometheus (and promtool) from Debian's `prometheus` package; the clock-skew tests skew a proxy's clock
# with libfaketime (Debian's `faketime`); the control-plane store tests run a real etcd (Debian's
# `etcd-server`); the etcd client's build compiles etcd's protobuf API with `protoc`.
missing=()
for tool in ip:iproute2 iptables:iptables curl:curl openssl:openssl prometheus:prometheus promtool:prometheus faketime:faketime etcd:etcd-server protoc:protobuf-compiler; do
    command -v "${tool%%:*}" > /dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    else
        say "missing ${missing[*]}: the pod tests will fail under WEFT_E2E_REQUIRE=1 (install them as root)"
    fi
fi
if ! cargo nextest --version > /dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# --- checks ----------------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
say "cargo clippy: no function over 80 lines in non-test code (clippy.toml sets the threshold)"
cargo clippy --workspace --lib --bins --examples --all-features --quiet -- -D warnings -D clippy::too_many_lines
say "building binaries and examples"
cargo build --workspace --bins --examples --quiet

# --- tests -----------------------------------------------------------------------------------
say "running every test"
WEFT_SKIP_BUILD=1 cargo nextest run --workspace --all-features "$@"

# --- fuzz smoke ------------------------------------------------------------------------------
# Every cargo-fuzz target for FUZZ_SECONDS (10 s here) of coverage-guided fuzzing from its seed corpus
# (the corpus itself already ran above, on stable, as weft-fuzz-checks' corpus test). Needs nightly
# and cargo-fuzz: both installed when missing; under WEFT_E2E_REQUIRE=1 a nightly that cannot be had fails the run.
if ! cargo +nightly --version > /dev/null 2>&1 && command -v rustup > /dev/null; then
    say "installing the nightly toolchain (minimal) for the fuzz smoke"
    rustup toolchain install nightly --profile minimal || true
fi
if ! cargo +nightly --version > /dev/null 2>&1; then
    if [[ ${WEFT_E2E_REQUIRE:-0} == 1 ]]; then
        echo "the fuzz smoke needs the nightly toolchain (rustup toolchain install nightly)" >&2
        exit 1
    fi
    say "no nightly toolchain: fuzz smoke skipped"
    exit 0
fi
if ! cargo fuzz --version > /dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
say "fuzz smoke: every target ${FUZZ_SECONDS:-10}s"
FUZZ_SECONDS=${FUZZ_SECONDS:-10} ./tests/fuzz.sh
