#!/usr/bin/env bash
# Instructions per request for the proxy pair, counted by valgrind's callgrind (repeatable where wall
# clocks on a shared machine are not). The pair is tests/bench/pair.sh's (same configs), each proxy run
# under callgrind; one curl process sends the requests over one keep-alive connection to a small HTTP
# backend. Two runs, with FEW and MANY requests, cancel start-up and shutdown:
#
#   instructions per request = (pair total at MANY - pair total at FEW) / (MANY - FEW)
#
# The proxies run one worker thread (WEFT_WORKER_THREADS=1, tokio's current-thread scheduler), the shape
# they have in the shared bench, which pins the pair to one CPU: the count is then the same from run to
# run (±0.2%). With two workers, which threads wake and steal under valgrind's serialised threads depends
# on the host's load, and the count moves by ±3% (set WEFT_WORKER_THREADS=2 to measure that shape).
# tests/bench/callgrind_profile.py OUT says where the instructions go; tests/bench/syscalls.sh counts the
# kernel's side (system calls and context switches per request).
#
# Usage: tests/bench/callgrind.sh [PROXY_BIN]   (default target/release/weft-proxy, built if missing)
# Environment: FEW [200], MANY [2200], WEFT_WORKER_THREADS [1], PORT_BASE [18540: ports +3..+53], BACKEND_BIN [target/release/examples/demo-app], OUT [target/bench/callgrind], CERTS (a certs.sh folder; made with
# ../shared/bench/certs.sh when absent). Needs valgrind and curl. Loopback only.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${1:-$root/target/release/weft-proxy}
few=${FEW:-200}
many=${MANY:-2200}
out=${OUT:-$root/target/bench/callgrind}
certs=${CERTS:-$out/certs}
mkdir -p "$out"
for tool in valgrind curl; do
    command -v $tool > /dev/null || { echo "callgrind.sh: $tool is not installed" >&2; exit 3; }
done
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --release --quiet -p weft-proxy)
fi
backend_bin=${BACKEND_BIN:-$root/target/release/examples/demo-app}
if [[ ! -x $backend_bin ]]; then
    (cd "$root" && cargo build --release --quiet --example demo-app)
fi
[[ -s $certs/ca.crt ]] || bash "$root/../shared/bench/certs.sh" "$certs" > /dev/null

# PORT_BASE moves every port of the pair, so two measurements can run side by side.
p=${PORT_BASE:-18540}
export BENCH_LISTEN_HTTP=127.0.0.1:$((p + 41)) BENCH_BACKEND_HTTP=127.0.0.1:$((p + 40))
export BENCH_PEER_HTTP=127.0.0.1:$((p + 3)) BENCH_LISTEN_TCP=127.0.0.1:$((p + 42))
export BENCH_BACKEND_TCP=127.0.0.1:$((p + 43)) BENCH_PEER_TCP=127.0.0.1:$((p + 4))
export BENCH_CERT_DIR=$certs BENCH_SERVER_ID=spiffe://cluster.local/ns/default/sa/server
export WEFT_BENCH_ADMIN_BASE=$((p + 50)) WEFT_WORKER_THREADS=${WEFT_WORKER_THREADS:-1}

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null || true; done; wait 2> /dev/null || true; }
trap cleanup EXIT

"$backend_bin" http --listen "$BENCH_BACKEND_HTTP" --name backend > /dev/null 2>&1 &
pids+=($!)

# One run: both proxies under callgrind, `n` requests, then SIGTERM (callgrind writes on exit).
run() {
    local n=$1 dir=$out/run-$1
    rm -rf "$dir" && mkdir -p "$dir"
    export BENCH_PAIR_DIR=$dir BENCH_PIDFILE=$dir/pids
    local wrap=$dir/proxy.sh
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/cg.%%p "%s" "$@"\n' \
        "$dir" "$bin" > "$wrap"
    chmod +x "$wrap"
    WEFT_PROXY_BIN=$wrap setsid bash "$root/tests/bench/pair.sh" > "$dir/pair.log" 2>&1 &
    local pair=$!
    local deadline=$((SECONDS + 120))
    until curl -sf -o /dev/null "http://$BENCH_LISTEN_HTTP/"; do
        ((SECONDS < deadline)) || { echo "callgrind.sh: the pair did not answer" >&2; cat "$dir/pair.log" >&2; exit 1; }
        sleep 0.5
    done
    if ((n > 0)); then
        timeout 600 curl -sf -o /dev/null "http://$BENCH_LISTEN_HTTP/r[1-$n]"
    fi
    kill -TERM -- "-$pair" 2> /dev/null || true
    wait "$pair" 2> /dev/null || true
    sleep 1
    cat "$dir"/cg.* | awk '/^summary:/ {s += $2} END {printf "%.0f\n", s}'
}

a=$(run "$few")
b=$(run "$many")
per=$(((b - a) / (many - few)))
printf 'pair instructions: %s at %s requests, %s at %s requests\n' "$a" "$few" "$b" "$many"
printf 'instructions per request (pair, HTTP/1 keep-alive through mTLS HTTP/2): %s\n' "$per"
