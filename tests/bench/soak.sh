#!/usr/bin/env bash
# Soak: a long load through real pods while the mesh changes under it, counting every failed request
# and watching the sidecars' memory. Not part of the test suite (it runs for minutes); run it as root:
#
#   tests/bench/soak.sh                      # 1,000,000 requests (SOAK_REQUESTS) at concurrency 16
#
#   client pod ──▶ reviews (v1 | v2) ──▶ ratings        every hop mTLS through the pods' sidecars
#
# While the load runs (oha in the client pod, keep-alive connections, plain names): reviews is shifted
# 100/0 -> 90/10 -> 50/50 -> 0/100 (each shift acknowledged by every proxy), workload certificates live
# SOAK_CERT_TTL (30 s) so every sidecar renews its certificate several times, the control plane's own
# certificate lives 60 s, and the control plane is stopped (SIGTERM) and started again on its state
# directory part-way. It prints the load's answers (every status and error), the events with their
# times, each sidecar's certificate renewals and its RSS after a warm-up through every pod, at the end and at its peak.
# Exit status: 0 when every request got a 2xx, every event happened while the load was running and no
# sidecar's RSS grew by more than SOAK_RSS_GROWTH_PCT (25) per cent plus 2 MiB; 1 otherwise.
#
# Environment: SOAK_REQUESTS [1000000], SOAK_CONCURRENCY [16], SOAK_CERT_TTL [30s], SOAK_EVENT_GAP
# [12] (seconds between events), SOAK_RSS_GROWTH_PCT [25], OUT [target/soak]. Needs root, ip, iptables,
# curl, python3 and oha (installed with `cargo install --locked oha` when missing). Uses the pod network
# `soak` (198.18.96.0/20, its own namespaces) and the operator API on 127.0.0.1:15114; removes every
# namespace and process on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
requests=${SOAK_REQUESTS:-1000000}
concurrency=${SOAK_CONCURRENCY:-16}
cert_ttl=${SOAK_CERT_TTL:-30s}
gap=${SOAK_EVENT_GAP:-12}
growth_pct=${SOAK_RSS_GROWTH_PCT:-25}
work=${OUT:-$root/target/soak}
net=soak
gateway=198.18.96.1
operator=127.0.0.1:15114

say() { printf '\033[1m[soak]\033[0m %s\n' "$*" >&2; }
die() { printf 'soak: %s\n' "$*" >&2; exit 1; }

# --- set-up ----------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root: pods are network namespaces with iptables rules"
for tool in ip iptables curl python3 cargo; do
    command -v "$tool" > /dev/null || die "$tool not found"
done
if ! command -v oha > /dev/null; then
    say "installing oha (cargo install --locked oha)"
    cargo install --locked oha
fi
oha=$(command -v oha)
say "building the release binaries"
cargo build --release --quiet --workspace --bins --examples
bin=$root/target/release
shop=$bin/examples/shop
export WEFT_SERVER=http://$operator WEFT_TOKEN_FILE=$work/state/operator.token WEFT_RUN_DIR=$work/run
weftctl() { "$bin/weftctl" "$@"; }
if (exec 3<> "/dev/tcp/${operator%:*}/${operator#*:}") 2> /dev/null; then
    die "$operator is in use (another soak?); stop it first"
fi
weftctl network delete $net --force > /dev/null 2>&1 || true
rm -rf "$work"
mkdir -p "$work/logs"

cp_pid=
load_pid=
runners=()
cleanup() {
    trap - EXIT INT TERM
    [[ -n $load_pid ]] && kill "$load_pid" 2> /dev/null || true
    weftctl network delete $net --force > /dev/null 2>&1 || true
    if ((${#runners[@]})); then wait "${runners[@]}" 2> /dev/null || true; fi
    [[ -n $cp_pid ]] && kill -TERM "$cp_pid" 2> /dev/null && wait "$cp_pid" 2> /dev/null || true
    say "network namespaces left: $(ip netns list | grep -c "^weft-$net" || true) (logs in $work)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_control() {
    "$bin/weft-control" --state-dir "$work/state" --trust-domain soak.local \
        --api-netns weft-$net --api-listen $gateway:15010 --operator-listen $operator \
        --serving-certificate-ttl 60s >> "$work/logs/control.log" 2>&1 &
    cp_pid=$!
    for _ in $(seq 100); do curl -fs "http://$operator/ready" > /dev/null && return; sleep 0.1; done
    tail "$work/logs/control.log" >&2
    die "weft-control did not start"
}

ready_proxies() {
    weftctl status -o json 2> /dev/null | python3 -c \
        'import json,sys; print(sum(1 for p in json.load(sys.stdin)["proxies"] if p["ready"] and p["connected"]))' \
        2> /dev/null || echo 0
}

wait_ready() {
    local n
    for _ in $(seq 300); do
        n=$(ready_proxies)
        [[ $n -ge $1 ]] && return
        sleep 0.1
    done
    die "only $n of $1 proxies are connected and ready"
}

# --- the mesh --------------------------------------------------------------------------------
say "pod network $net and the control plane"
weftctl network create $net --cidr 198.18.96.0/20 > /dev/null
start_control
weftctl apply -f examples/shop/services.yaml > /dev/null
weftctl apply -f - > /dev/null << EOF
apiVersion: weft.dev/v1
kind: MeshConfig
metadata: {name: default}
spec:
  trustDomain: soak.local
  certificateTtl: $cert_ttl
EOF
weftctl shift reviews v1=100 > /dev/null

pod() {
    local name=$1
    shift
    weftctl pod run --network $net --name "$name" "$@" > "$work/logs/pod-$name.log" 2>&1 &
    runners+=($!)
}
pod ratings --service ratings --port 9080 -- "$shop" ratings
pod reviews-v1 --service reviews --label version=v1 --port 9080 -- "$shop" reviews --version v1
pod reviews-v2 --service reviews --label version=v2 --port 9080 -- "$shop" reviews --version v2 --ratings http://ratings:9080
pod client -- sleep infinity
pods=(client reviews-v1 reviews-v2 ratings)
wait_ready ${#pods[@]}

in_pod() {
    local p=$1
    shift
    ip netns exec "weft-$net-$p" "$@"
}
sidecar_pid() {
    local pid
    for pid in $(ip netns pids "weft-$net-$1"); do
        [[ $(cat "/proc/$pid/comm" 2> /dev/null) == weft-proxy ]] && { echo "$pid"; return; }
    done
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2> /dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2> /dev/null || echo 0; }
metric() { # POD NAME LABEL-FILTER: the sum of the sidecar's series NAME matching the filter
    in_pod "$1" curl -fs 127.0.0.1:15020/metrics 2> /dev/null |
        awk -v n="$2" -v f="$3" '$1 ~ "^"n && index($1, f) {s += $2} END {print s + 0}'
}

url=http://reviews:9080/
# The warm-up reaches every pod (v2 calls ratings), so the RSS taken after it is each sidecar's
# working set, not that of one that has not carried a request yet.
say "warm-up: 20,000 requests at 50/50, then back to 100/0"
weftctl shift reviews v1=50 v2=50 > /dev/null
in_pod client "$oha" --no-tui -n 20000 -c "$concurrency" "$url" > "$work/warmup.txt"
weftctl shift reviews v1=100 v2=0 > /dev/null
declare -A pid_of rss_start renew_start
for p in "${pods[@]}"; do
    pid_of[$p]=$(sidecar_pid "$p")
    [[ -n ${pid_of[$p]} ]] || die "no sidecar found in pod $p"
    rss_start[$p]=$(rss_kib "${pid_of[$p]}")
    renew_start[$p]=$(metric "$p" weft_proxy_cert_renewals_total 'result="ok"')
done

# --- the load and the events -----------------------------------------------------------------
say "load: $requests requests at concurrency $concurrency to $url"
t0=$(date +%s.%N)
in_pod client "$oha" --no-tui -n "$requests" -c "$concurrency" --output-format json -o "$work/load.json" "$url" \
    > "$work/logs/oha.log" 2>&1 &
load_pid=$!
events=()
event() {
    local what=$1
    shift
    sleep "$gap"
    kill -0 "$load_pid" 2> /dev/null || { events+=("MISSED (load already over): $what"); return; }
    local at
    at=$(python3 -c "import time; print(f'{time.time() - $t0:6.1f}')")
    # Run in this shell (not a subshell): the restart must update $cp_pid.
    local out=$work/logs/event.txt status=0
    "$@" > "$out" 2>&1 || status=$?
    local said
    said=$(tr '\n' ' ' < "$out")
    ((status == 0)) || said="FAILED (exit $status): $said"
    events+=("t=${at}s $what: $said")
    say "t=${at}s $what"
}
shift_to() { weftctl shift reviews "v1=$1" "v2=$2"; }
restart_control() {
    kill -TERM "$cp_pid"
    wait "$cp_pid" || true
    start_control
    wait_ready ${#pods[@]}
    echo "stopped, started again, ${#pods[@]} proxies reconnected"
}
event "shift reviews 90/10" shift_to 90 10
event "control plane restart" restart_control
event "shift reviews 50/50" shift_to 50 50
event "shift reviews 0/100" shift_to 0 100
wait "$load_pid" || true
load_pid=
t1=$(date +%s.%N)
sleep 2

# --- the report ------------------------------------------------------------------------------
# The block below runs in a pipeline (a subshell): its verdicts are printed, then read back from the file.
failed=0
report=$work/report.txt
{
    echo "Soak: $requests requests, concurrency $concurrency, client -> reviews (v1|v2) -> ratings"
    python3 - "$work/load.json" "$t0" "$t1" << 'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("summary", {})
codes = r.get("statusCodeDistribution", {})
errors = r.get("errorDistribution", {})
total = sum(codes.values()) + sum(errors.values())
ok = sum(n for c, n in codes.items() if c.startswith("2"))
print(f"  requests {total}, 2xx {ok}, other statuses "
      f"{ {c: n for c, n in codes.items() if not c.startswith('2')} }, errors {errors}")
print(f"  {float(sys.argv[3]) - float(sys.argv[2]):.0f} s, {s.get('requestsPerSec', 0):.0f} requests/s")
lat = r.get("latencyPercentiles", {})
print("  latency p50 {:.2f} ms, p99 {:.2f} ms, p99.9 {:.2f} ms".format(
    *(1000 * float(lat.get(k) or 0) for k in ("p50", "p99", "p99.9"))))
EOF
    serving=$(curl -fs "http://$operator/metrics" |
        awk '/^weft_control_serving_certificate_renewals_total/ && /result="ok"/ {s += $2} END {print s + 0}')
    echo "Control plane: its own certificate (60 s) renewed $serving times since its restart"
    echo "Events (each while the load was running):"
    printf '  %s\n' "${events[@]}"
    printf 'Sidecars: %-11s %14s %14s %14s %s\n' pod "RSS start KiB" "RSS end KiB" "peak KiB" "certificate renewals"
    for p in "${pods[@]}"; do
        end=$(rss_kib "${pid_of[$p]}")
        renewed=$(metric "$p" weft_proxy_cert_renewals_total 'result="ok"')
        printf '          %-11s %14s %14s %14s %s\n' "$p" "${rss_start[$p]}" "$end" "$(hwm_kib "${pid_of[$p]}")" \
            "$((${renewed%.*} - ${renew_start[$p]%.*}))"
        if ((end > rss_start[$p] * (100 + growth_pct) / 100 + 2048)); then
            echo "  RSS of $p grew by more than $growth_pct% + 2 MiB"
        fi
        ((${renewed%.*} > ${renew_start[$p]%.*})) || echo "  $p renewed no certificate during the load"
    done
} | tee "$report"
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
codes, errors = r.get("statusCodeDistribution", {}), r.get("errorDistribution", {})
bad = sum(n for c, n in codes.items() if not c.startswith("2")) + sum(errors.values())
total = sum(codes.values()) + sum(errors.values())
sys.exit(0 if bad == 0 and total == int(sys.argv[2]) else 1)' "$work/load.json" "$requests" || failed=1
grep -q "MISSED\|FAILED" "$report" && failed=1
grep -q "RSS of\|renewed no" "$report" && failed=1
if ((failed)); then say "FAILED (see $report)"; exit 1; fi
say "passed: every request answered 2xx, every event during the load, RSS flat (report: $report)"
