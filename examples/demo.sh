#!/usr/bin/env bash
# Weft demo: the whole mesh on one machine, with zero change to the apps.
#
#   client pod ──▶ frontend pod ──▶ reviews pods (v1, v2) ──▶ ratings pod
#
# Every pod is a network namespace whose sidecar intercepts its traffic (iptables); every hop is mutual
# TLS with SPIFFE identities issued by the control plane. The apps (examples/shop.rs) are plain HTTP
# programs that call each other by name (http://reviews:9080). The script builds what it needs, starts
# the control plane on its own state directory (target/demo/), starts the pods, shows each hop's
# identity, shifts reviews traffic 100/0 -> 90/10 -> 50/50 -> 0/100 printing the split observed after each
# step, shows an access-log line and metrics, explains an authorization decision (`weftctl why`) and
# checks it against the sidecars, and removes every namespace, rule and process on exit or Ctrl-C.
#
# Needs root (namespaces and iptables). Options: --keep   keep the mesh running until Ctrl-C
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
keep=0
[[ ${1:-} == --keep ]] && keep=1

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# --- set-up (idempotent) ---------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root: pods are network namespaces with iptables rules"
command -v cargo > /dev/null || die "cargo not found: install a Rust toolchain (https://rustup.rs) first"
missing=()
# protoc: the control plane's etcd client compiles etcd's protobuf API at build time.
for tool in ip:iproute2 iptables:iptables curl:curl protoc:protobuf-compiler; do
    command -v "${tool%%:*}" > /dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi
echo "building weft-control, weft-proxy, weftctl and the shop apps (release)..." >&2
cargo build --release --quiet --workspace --bins --examples
bin=$root/target/release
shop=$bin/examples/shop
work=$root/target/demo
export WEFT_SERVER=http://127.0.0.1:15014 WEFT_TOKEN_FILE=$work/state/operator.token WEFT_RUN_DIR=$work/run
weftctl() { "$bin/weftctl" "$@"; }
net=demo

if (exec 3<> /dev/tcp/127.0.0.1/15014) 2> /dev/null; then
    die "127.0.0.1:15014 is in use (another weft-control?); stop it first"
fi
# A previous run killed hard may have left its pods: remove them before starting afresh.
weftctl network delete $net --force > /dev/null 2>&1 || true
rm -rf "$work"
mkdir -p "$work/logs"

cp_pid=
runners=()
cleanup() {
    trap - EXIT INT TERM
    echo >&2
    echo "demo: stopping pods (each app gets SIGTERM, its sidecar drains) and the control plane" >&2
    weftctl network delete $net --force > /dev/null 2>&1 || true
    if ((${#runners[@]})); then wait "${runners[@]}" 2> /dev/null || true; fi
    [[ -n $cp_pid ]] && kill -TERM "$cp_pid" 2> /dev/null && wait "$cp_pid" 2> /dev/null || true
    left=$(ip netns list | grep -c "^weft-$net" || true)
    echo "demo: done; network namespaces left: $left (state and logs in $work)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- control plane ---------------------------------------------------------------------------
bold "1. A pod network and the control plane"
weftctl network create $net | sed 's/^/   /'
"$bin/weft-control" --state-dir "$work/state" --trust-domain shop.local \
    --api-netns weft-$net --api-listen 198.18.0.1:15010 > "$work/logs/control.log" 2>&1 &
cp_pid=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:15014/ready > /dev/null && break; sleep 0.1; done
curl -fs http://127.0.0.1:15014/ready > /dev/null || { tail "$work/logs/control.log"; die "weft-control did not start"; }
note "weft-control: proxy API 198.18.0.1:15010 (inside the pod network), operator API 127.0.0.1:15014"
note "mesh CA $(cat "$work/state/ca/fingerprint")"
weftctl apply -f examples/shop/services.yaml | sed 's/^/   /'
weftctl shift reviews v1=100 | sed 's/^/   /'

# --- pods ------------------------------------------------------------------------------------
bold "2. Pods: each gets a namespace, an address, interception rules and a sidecar before its app starts"
pod() {
    local name=$1
    shift
    weftctl pod run --network $net --name "$name" "$@" > "$work/logs/pod-$name.log" 2>&1 &
    runners+=($!)
}
pod ratings --service ratings --port 9080 -- "$shop" ratings
pod reviews-v1 --service reviews --label version=v1 --port 9080 -- "$shop" reviews --version v1
pod reviews-v2 --service reviews --label version=v2 --port 9080 -- "$shop" reviews --version v2 --ratings http://ratings:9080
pod frontend --service frontend --port 8080 -- "$shop" frontend
pod client -- sleep infinity
for _ in $(seq 300); do
    ready=$(weftctl status -o json 2> /dev/null | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["proxies"] if p["ready"] and p["connected"]))' 2> /dev/null || echo 0)
    [[ $ready -ge 5 ]] && break
    sleep 0.1
done
[[ $ready -ge 5 ]] || { tail -n 5 "$work"/logs/pod-*.log; die "the pods did not all become ready"; }
sleep 0.5
weftctl pod list --network $net | column -t -s $'\t' | sed 's/^/   /'
echo
weftctl status 2>&1 | cut -c1-110 | sed 's/^/   /'

in_client() { ip netns exec weft-$net-client "$@"; }

# --- identities ------------------------------------------------------------------------------
bold "3. One request from the client pod: who called whom, as each app saw it (mTLS identities)"
note "the client app runs: shop call --url http://frontend:8080/   (a plain name, plain HTTP)"
in_client getent hosts frontend | sed 's/^/   frontend resolves to the service address /'
in_client "$shop" call --url http://frontend:8080/ | sed 's/^/ /'
note "(the route sends every reviews call to v1, which does not call ratings; v2 does: step 5)"

# --- traffic shift ---------------------------------------------------------------------------
bold "4. Traffic shift of reviews: one command per step, acknowledged by every proxy before it returns"
for step in "90 10" "50 50" "0 100"; do
    set -- $step
    printf '   \033[1m$ weftctl shift reviews v1=%s v2=%s\033[0m\n' "$1" "$2"
    weftctl shift reviews "v1=$1" "v2=$2" | sed 's/^/      /'
    in_client "$shop" load --url http://frontend:8080/ --count 200 2> /dev/null | sed -n "1s/^/      observed: /p"
done

bold "5. Now every call goes frontend -> reviews v2 -> ratings:"
in_client "$shop" call --url http://frontend:8080/ | sed 's/^/ /'

bold "6. What the client's sidecar recorded of that call: its access-log line and request metrics"
tail -n 1 "$work/run/$net/pods/client/access.log" 2> /dev/null | sed 's/^/   /' || true
in_client curl -s 127.0.0.1:15020/metrics | grep -m 3 '^weft_proxy_http_requests_total' | cut -c1-220 | sed 's/^/   /' || true
note "(every sidecar writes pods/<name>/access.log and serves /metrics on :15020; docs/metrics.md)"

bold "7. Who may call whom: only reviews may read ratings (examples/shop/ratings-policy.yaml)"
weftctl apply -f examples/shop/ratings-policy.yaml | sed 's/^/   /'
printf '   \033[1m$ weftctl why --from default/client --to ratings --path /ratings\033[0m\n'
weftctl why --from default/client --to ratings --path /ratings | sed 's/^/      /' || true
printf '   \033[1m$ weftctl why --from default/reviews --to ratings --path /ratings\033[0m\n'
weftctl why --from default/reviews --to ratings --path /ratings | grep '^verdict' | sed 's/^/      /'
note "and the sidecars agree: the client is refused, the shop still works"
in_client curl -s -o /dev/null -w '   client -> ratings: %{http_code} (%header{weft-denied-by})\n' http://ratings:9080/ratings || true
in_client "$shop" call --url http://frontend:8080/ | tail -n 2 | sed 's/^/ /'

if ((keep)); then
    bold "Running; try: ip netns exec weft-$net-client $shop call --url http://frontend:8080/   (Ctrl-C stops everything)"
    wait "$cp_pid"
fi
