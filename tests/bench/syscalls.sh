#!/usr/bin/env bash
# System calls and context switches per request for each proxy of the pair (tests/bench/pair.sh's, same
# configs as callgrind.sh), the kernel's side of what callgrind.sh counts in user space. One curl process
# sends the requests over one keep-alive connection, one at a time: every request pays its own wake-ups,
# as at a low fixed rate.
#
#   syscalls:  strace -c -f attached to each proxy for FEW and for MANY requests; per request =
#              (calls at MANY - calls at FEW) / (MANY - FEW), which cancels attaching and detaching
#   trace:     the calls of three requests, in order, in OUT/strace-3-{client,server}.log
#   switches:  voluntary and involuntary context switches of every thread of each proxy
#              (/proc/PID/task/*/status) over MANY requests, without strace (ptrace adds its own)
#
# Usage: tests/bench/syscalls.sh [PROXY_BIN]   (default target/release/weft-proxy, built if missing)
# Environment: FEW [200], MANY [2200], WEFT_WORKER_THREADS [1, as callgrind.sh], BACKEND_BIN
# [target/release/examples/demo-app], OUT [target/bench/syscalls], CERTS (a certs.sh folder; made with
# ../shared/bench/certs.sh when absent). Needs strace and curl. Loopback only.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${1:-$root/target/release/weft-proxy}
few=${FEW:-200}
many=${MANY:-2200}
out=${OUT:-$root/target/bench/syscalls}
certs=${CERTS:-$out/certs}
mkdir -p "$out"
for tool in strace curl python3; do
    command -v $tool > /dev/null || { echo "syscalls.sh: $tool is not installed" >&2; exit 3; }
done
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --release --quiet -p weft-proxy)
fi
backend_bin=${BACKEND_BIN:-$root/target/release/examples/demo-app}
if [[ ! -x $backend_bin ]]; then
    (cd "$root" && cargo build --release --quiet --example demo-app)
fi
[[ -s $certs/ca.crt ]] || bash "$root/../shared/bench/certs.sh" "$certs" > /dev/null

# Ports apart from callgrind.sh's, so the two never meet.
export BENCH_LISTEN_HTTP=127.0.0.1:18681 BENCH_BACKEND_HTTP=127.0.0.1:18680
export BENCH_PEER_HTTP=127.0.0.1:18643 BENCH_LISTEN_TCP=127.0.0.1:18682
export BENCH_BACKEND_TCP=127.0.0.1:18683 BENCH_PEER_TCP=127.0.0.1:18644
export BENCH_CERT_DIR=$certs BENCH_SERVER_ID=spiffe://cluster.local/ns/default/sa/server
export WEFT_BENCH_ADMIN_BASE=18690 BENCH_PAIR_DIR=$out/pair BENCH_PIDFILE=$out/pair/pids
export WEFT_PROXY_BIN=$bin WEFT_WORKER_THREADS=${WEFT_WORKER_THREADS:-1}

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM -- "$p" 2> /dev/null || true; done; wait 2> /dev/null || true; }
trap cleanup EXIT

"$backend_bin" http --listen "$BENCH_BACKEND_HTTP" --name backend > /dev/null 2>&1 &
pids+=($!)
rm -rf "$BENCH_PAIR_DIR" && mkdir -p "$BENCH_PAIR_DIR"
setsid bash "$root/tests/bench/pair.sh" > "$out/pair.log" 2>&1 &
pair=$!
pids+=("-$pair")
deadline=$((SECONDS + 60))
until curl -sf -o /dev/null "http://$BENCH_LISTEN_HTTP/"; do
    ((SECONDS < deadline)) || { echo "syscalls.sh: the pair did not answer" >&2; cat "$out/pair.log" >&2; exit 1; }
    sleep 0.2
done
declare -A pid
while read -r role p; do pid[${role%-side}]=$p; done < "$BENCH_PIDFILE"
requests() { curl -sf -o /dev/null "http://$BENCH_LISTEN_HTTP/r[1-$1]"; }
requests 200 # warm: pooled tunnel, app connection, allocator

switches() { cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ {s[$1] += $2} END {print s["voluntary_ctxt_switches:"], s["nonvoluntary_ctxt_switches:"]}'; }
for side in client server; do switches "${pid[$side]}" > "$out/switches-$side-before"; done
requests "$many"
for side in client server; do switches "${pid[$side]}" > "$out/switches-$side-after"; done

for n in "$few" "$many"; do
    tracers=()
    for side in client server; do
        strace -f -c -o "$out/strace-$n-$side.txt" -p "${pid[$side]}" 2> /dev/null &
        tracers+=($!)
    done
    # Every thread of both proxies traced before the first request.
    for side in client server; do
        until ! grep -q '^TracerPid:[[:space:]]*0$' /proc/"${pid[$side]}"/task/*/status; do sleep 0.05; done
    done
    requests "$n"
    kill -INT "${tracers[@]}"
    wait "${tracers[@]}" 2> /dev/null || true
done

# The calls themselves, for three requests: which ones a request needs, in order (strace-3-SIDE.log).
tracers=()
for side in client server; do
    strace -f -tt -e trace='!futex' -s 64 -o "$out/strace-3-$side.log" -p "${pid[$side]}" 2> /dev/null &
    tracers+=($!)
done
for side in client server; do
    until ! grep -q '^TracerPid:[[:space:]]*0$' /proc/"${pid[$side]}"/task/*/status; do sleep 0.05; done
done
requests 3
kill -INT "${tracers[@]}"
wait "${tracers[@]}" 2> /dev/null || true

python3 - "$out" "$few" "$many" << 'PY'
import re, sys
out, few, many = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n = many - few
def calls(path):
    d = {}
    for line in open(path):
        f = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
            d[f[-1]] = int(f[3])
    return d
pair = 0.0
for side in ("client", "server"):
    a, b = calls(f"{out}/strace-{few}-{side}.txt"), calls(f"{out}/strace-{many}-{side}.txt")
    per = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
    total = sum(per.values())
    pair += total
    v0, i0 = map(int, open(f"{out}/switches-{side}-before").read().split())
    v1, i1 = map(int, open(f"{out}/switches-{side}-after").read().split())
    print(f"{side} side: {total:.2f} syscalls per request; context switches per request: "
          f"{(v1 - v0) / many:.2f} voluntary, {(i1 - i0) / many:.2f} involuntary")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        if abs(v) >= 0.005:
            print(f"  {v:6.2f}  {k}")
print(f"pair: {pair:.2f} syscalls per request")
PY
