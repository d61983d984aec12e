#!/usr/bin/env bash
# L4 bulk throughput through the proxy pair (tests/bench/pair.sh's): iperf3 -c -> client-side proxy's
# opaque TCP listener -> CONNECT stream on the mTLS HTTP/2 tunnel -> server-side proxy -> iperf3 -s.
# Pinned like the shared bench: the pair and the iperf3 server on CPU $SERVER_CPUS, the iperf3 client on
# CPU $LOADGEN_CPUS. Four modes:
#
#   l4.sh compare BIN_A [BIN_B...] RUNS rounds of `iperf3 -t TIME`, a fresh pair per run, the binaries
#                                 alternated (A B, B A, ...); prints Gbit/s and the pair's CPU seconds
#                                 per GiB carried (utime+stime of both proxies from /proc/PID/stat over
#                                 the run, divided by the bytes iperf3 sent) and the pair's peak RSS
#                                 (VmHWM, both proxies), per run and the medians
#   l4.sh strace BIN              system calls per MiB for each proxy: strace -c -f attached over
#                                 `iperf3 -n FEW_MB` and `-n MANY_MB`, subtracted; then the sizes of the
#                                 reads and writes over a short stream (OUT/sizes-SIDE.txt)
#   l4.sh perf BIN                perf record (cpu-clock) of both proxies over `iperf3 -t TIME`: where
#                                 the time goes, kernel included (OUT/perf-SIDE.data)
#   l4.sh callgrind BIN           instructions per KiB: both proxies under callgrind for FEW_MB and for
#                                 MANY_MB, subtracted; OUT/callgrind holds run-<KiB> dirs that
#                                 tests/bench/callgrind_profile.py OUT/callgrind FEW_KIB MANY_KIB reads
#
# A "binary" may be a wrapper script that sets environment variables and then `exec`s the proxy (the
# pids stay the proxies'); not under callgrind, which must run the binary itself.
#
# Environment: RUNS [3], TIME [5], FEW_MB [200], MANY_MB [1000] (callgrind: 50 and 250), PORT_BASE
# [21500: ports +0..+5, admin +90..+93], SHARED_BENCH [../shared/bench], SERVER_CPUS [1],
# LOADGEN_CPUS [0], WEFT_WORKER_THREADS (unset: the proxy picks by its CPUs, i.e. one worker when
# pinned to one CPU), OUT [target/bench/l4], CERTS (a certs.sh folder; made when absent). Loopback
# only. Needs iperf3, taskset, curl, python3; strace, perf or valgrind for those modes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mode=${1:?usage: l4.sh compare BIN_A [BIN_B...] | strace BIN | perf BIN | callgrind BIN}
shift
out=${OUT:-$root/target/bench/l4}
certs=${CERTS:-$out/certs}
runs=${RUNS:-3}
time_s=${TIME:-5}
server_cpus=${SERVER_CPUS:-1}
loadgen_cpus=${LOADGEN_CPUS:-0}
mkdir -p "$out"
for tool in iperf3 taskset curl python3; do
    command -v $tool > /dev/null || { echo "l4.sh: $tool is not installed" >&2; exit 3; }
done
# The shared bench sits beside the main checkout (../shared/bench); SHARED_BENCH points elsewhere.
shared=${SHARED_BENCH:-$root/../shared/bench}
[[ -s $certs/ca.crt ]] || bash "$shared/certs.sh" "$certs" > /dev/null

p=${PORT_BASE:-21500}
export BENCH_BACKEND_HTTP=127.0.0.1:$p BENCH_LISTEN_HTTP=127.0.0.1:$((p + 1))
export BENCH_LISTEN_TCP=127.0.0.1:$((p + 2)) BENCH_PEER_HTTP=127.0.0.1:$((p + 3))
export BENCH_PEER_TCP=127.0.0.1:$((p + 4)) BENCH_BACKEND_TCP=127.0.0.1:$((p + 5))
export BENCH_CERT_DIR=$certs BENCH_SERVER_ID=spiffe://cluster.local/ns/default/sa/server
export WEFT_BENCH_ADMIN_BASE=$((p + 90))
listen_port=$((p + 2))

pids=()
pair=
declare -A pid
cleanup() {
    [[ -n $pair ]] && kill -TERM -- "-$pair" 2> /dev/null
    for q in "${pids[@]}"; do kill -TERM "$q" 2> /dev/null || true; done
    wait 2> /dev/null || true
}
trap cleanup EXIT

taskset -c "$server_cpus" iperf3 -s -B 127.0.0.1 -p $((p + 5)) > "$out/iperf3-server.log" 2>&1 &
pids+=($!)

# Starts the pair with proxy binary $1 (or wrapper) in $2; sets $pair and the pids client/server.
start_pair() {
    local bin=$1 dir=$2
    rm -rf "$dir" && mkdir -p "$dir"
    export BENCH_PAIR_DIR=$dir BENCH_PIDFILE=$dir/pids
    WEFT_PROXY_BIN=$bin taskset -c "$server_cpus" setsid bash "$root/tests/bench/pair.sh" > "$dir/pair.log" 2>&1 &
    pair=$!
    local deadline=$((SECONDS + ${READY_TIMEOUT:-30}))
    until [[ -s $BENCH_PIDFILE ]] && ss -Hltn "sport = :$listen_port" | grep -q LISTEN &&
        curl -sf -o /dev/null "http://127.0.0.1:$((p + 91))/ready"; do
        ((SECONDS < deadline)) || { echo "l4.sh: the pair did not come up" >&2; cat "$dir/pair.log" >&2; exit 1; }
        sleep 0.2
    done
    while read -r role q; do pid[${role%-side}]=$q; done < "$BENCH_PIDFILE"
}

stop_pair() {
    kill -TERM -- "-$pair" 2> /dev/null || true
    wait "$pair" 2> /dev/null || true
    pair=
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One iperf3 run (JSON on stdout); again after a moment while the server is still closing the last one.
iperf() {
    local res try
    for try in 1 2 3 4 5 6 7 8 9 10; do
        res=$(taskset -c "$loadgen_cpus" timeout 300 iperf3 -c 127.0.0.1 -p "$listen_port" -J "$@" || true)
        grep -q 'server is busy' <<< "$res" || break
        sleep 0.5
    done
    printf '%s\n' "$res"
}

compare() {
    local bins=("$@") r i order bin dir c0 s0 c1 s1
    local hz
    hz=$(getconf CLK_TCK)
    : > "$out/compare.tsv"
    for ((r = 0; r < runs; r++)); do
        # Forward on even runs, backward on odd ones.
        order=()
        for ((i = 0; i < ${#bins[@]}; i++)); do
            if ((r % 2 == 0)); then order+=("$i"); else order=("$i" "${order[@]}"); fi
        done
        for i in "${order[@]}"; do
            bin=${bins[$i]}
            dir=$out/pair-$i-r$r
            start_pair "$bin" "$dir"
            iperf -t 1 > /dev/null # the tunnel and both allocators warmed
            c0=$(ticks "${pid[client]}") s0=$(ticks "${pid[server]}")
            iperf -t "$time_s" > "$dir/iperf.json"
            c1=$(ticks "${pid[client]}") s1=$(ticks "${pid[server]}")
            hwm=$(cat /proc/"${pid[client]}"/status /proc/"${pid[server]}"/status | awk '/^VmHWM/ {s += $2} END {print s}')
            stop_pair
            python3 - "$dir/iperf.json" "$i" "$r" "$((c1 - c0))" "$((s1 - s0))" "$hz" "$bin" "$hwm" >> "$out/compare.tsv" << 'PY'
import json, sys
j = json.load(open(sys.argv[1]))
i, r, dc, ds, hz, binary = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
s = j["end"]["sum_sent"]
gib = s["bytes"] / 2**30
print(f"{i}\t{r}\t{s['bits_per_second'] / 1e9:.2f}\t{(dc + ds) / hz / gib:.3f}\t{dc / hz / gib:.3f}\t{ds / hz / gib:.3f}\t{binary}\t{int(sys.argv[8]) / 1024:.1f}")
PY
            tail -1 "$out/compare.tsv" | awk -F'\t' '{printf "run %s bin %s: %s Gbit/s, pair %s CPU s/GiB (client %s, server %s), pair VmHWM %s MiB  %s\n", $2, $1, $3, $4, $5, $6, $8, $7}'
        done
    done
    python3 - "$out/compare.tsv" << 'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for i, r, g, c, cc, cs, b, hwm in rows:
    by.setdefault((i, b), []).append((float(g), float(c), float(cc), float(cs), float(hwm)))
med = {}
for (i, b), v in sorted(by.items()):
    m = [statistics.median(x[k] for x in v) for k in range(5)]
    med[i] = m
    print(f"bin {i} median of {len(v)}: {m[0]:.2f} Gbit/s, {m[1]:.3f} CPU s/GiB (client {m[2]:.3f}, "
          f"server {m[3]:.3f}), pair VmHWM {m[4]:.1f} MiB  {b}")
for i in sorted(med)[1:]:
    print(f"bin {i} / bin 0: throughput {med[i][0] / med['0'][0]:.3f}x, CPU per GiB {med[i][1] / med['0'][1]:.3f}x")
PY
}

# strace -c -f on both proxies over `iperf3 -n $1 MB`; tables in $out/strace-$1-SIDE.txt.
strace_run() {
    local mb=$1 tracers=() side
    for side in client server; do
        strace -f -c -o "$out/strace-$mb-$side.txt" -p "${pid[$side]}" 2> /dev/null &
        tracers+=($!)
    done
    for side in client server; do
        until ! grep -q '^TracerPid:[[:space:]]*0$' /proc/"${pid[$side]}"/task/*/status; do sleep 0.05; done
    done
    iperf -n "${mb}M" > "$out/iperf-strace-$mb.json"
    kill -INT "${tracers[@]}"
    wait "${tracers[@]}" 2> /dev/null || true
}

strace_mode() {
    local bin=$1 few=${FEW_MB:-200} many=${MANY_MB:-1000} side
    command -v strace > /dev/null || { echo "l4.sh: strace is not installed" >&2; exit 3; }
    start_pair "$bin" "$out/pair-strace"
    iperf -t 1 > /dev/null
    strace_run "$few"
    strace_run "$many"
    # Sizes of every read and write over a short stream.
    local tracers=()
    for side in client server; do
        strace -f -e trace=read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg -o "$out/sizes-raw-$side.log" \
            -p "${pid[$side]}" 2> /dev/null &
        tracers+=($!)
    done
    for side in client server; do
        until ! grep -q '^TracerPid:[[:space:]]*0$' /proc/"${pid[$side]}"/task/*/status; do sleep 0.05; done
    done
    iperf -n 100M > /dev/null
    kill -INT "${tracers[@]}"
    wait "${tracers[@]}" 2> /dev/null || true
    stop_pair
    python3 - "$out" "$few" "$many" << 'PY'
import collections, re, sys
out, few, many = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def calls(path):
    d = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
            d[f[-1]] = int(f[3])
    return d
pair = 0.0
for side in ("client", "server"):
    a, b = calls(f"{out}/strace-{few}-{side}.txt"), calls(f"{out}/strace-{many}-{side}.txt")
    per = {k: (b.get(k, 0) - a.get(k, 0)) / (many - few) for k in set(a) | set(b)}
    total = sum(per.values())
    pair += total
    print(f"{side} side: {total:.2f} system calls per MiB")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        if abs(v) >= 0.05:
            print(f"  {v:7.2f}  {k}")
    # Sizes: call(fd, ...) = N; by call and fd, the count and the distribution of N.
    sizes = collections.defaultdict(list)
    for line in open(f"{out}/sizes-raw-{side}.log"):
        m = re.match(r"^\d+\s+(\w+)\((\d+),.*\)\s+=\s+(-?\d+)", line)
        if m:
            sizes[(m.group(1), int(m.group(2)))].append(int(m.group(3)))
    with open(f"{out}/sizes-{side}.txt", "w") as f:
        for (call, fd), v in sorted(sizes.items(), key=lambda kv: -len(kv[1])):
            ok = [x for x in v if x > 0]
            if not ok:
                line = f"{call}(fd {fd}): {len(v)} calls, none moved bytes"
            else:
                ok.sort()
                common = collections.Counter(ok).most_common(3)
                line = (f"{call}(fd {fd}): {len(v)} calls ({len(v) - len(ok)} <= 0), bytes per call: "
                        f"mean {sum(ok) / len(ok):,.0f}, median {ok[len(ok) // 2]:,}, max {ok[-1]:,}; "
                        f"most common {common}")
            print("   ", line)
            f.write(line + "\n")
print(f"pair: {pair:.2f} system calls per MiB")
PY
}

callgrind_mode() {
    local bin=$1 few=${FEW_MB:-50} many=${MANY_MB:-250} mb dir wrap
    command -v valgrind > /dev/null || { echo "l4.sh: valgrind is not installed" >&2; exit 3; }
    local totals=()
    for mb in "$few" "$many"; do
        dir=$out/callgrind/run-$((mb * 1024))
        mkdir -p "$dir"
        wrap=$out/callgrind/proxy-$mb.sh
        printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/cg.%%p "%s" "$@"\n' \
            "$dir" "$bin" > "$wrap"
        chmod +x "$wrap"
        READY_TIMEOUT=120 start_pair "$wrap" "$dir"
        iperf -n "${mb}M" > "$dir/iperf.json"
        stop_pair
        sleep 1
        totals+=("$(cat "$dir"/cg.* | awk '/^summary:/ {s += $2} END {printf "%.0f\n", s}')")
    done
    local per=$(((totals[1] - totals[0]) / ((many - few) * 1024)))
    printf 'pair instructions: %s at %s MiB, %s at %s MiB\n' "${totals[0]}" "$few" "${totals[1]}" "$many"
    printf 'instructions per KiB (pair, opaque TCP through the mTLS HTTP/2 tunnel): %s\n' "$per"
    printf 'by function: tests/bench/callgrind_profile.py %s %s %s\n' "$out/callgrind" $((few * 1024)) $((many * 1024))
}

# Samples of both proxies over `iperf3 -t TIME` (perf record, cpu-clock), then where the time went.
perf_mode() {
    local bin=$1 side
    command -v perf > /dev/null || { echo "l4.sh: perf is not installed" >&2; exit 3; }
    start_pair "$bin" "$out/pair-perf"
    iperf -t 1 > /dev/null
    for side in client server; do
        perf record -e cpu-clock -F 4999 -g -o "$out/perf-$side.data" -p "${pid[$side]}" 2> /dev/null &
        pids+=($!)
    done
    sleep 0.5
    iperf -t "$time_s" > "$out/iperf-perf.json"
    kill -INT "${pids[@]:1}"
    wait "${pids[@]:1}" 2> /dev/null || true
    pids=("${pids[0]}")
    stop_pair
    for side in client server; do
        echo "=== $side side"
        perf report -i "$out/perf-$side.data" --no-children --sort symbol --stdio -g none 2> /dev/null |
            grep -v '^#' | grep -v '^$' | head -40
    done
}

case $mode in
    compare) compare "$@" ;;
    perf) perf_mode "$1" ;;
    strace) strace_mode "$1" ;;
    callgrind) callgrind_mode "$1" ;;
    *) echo "l4.sh: unknown mode $mode" >&2; exit 2 ;;
esac
