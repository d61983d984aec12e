#!/usr/bin/env bash
# Weft explicit-mode demo (no root, no namespaces): two mesh-unaware apps talk through a pair of weft-proxy sidecars over mutual TLS.
#
#   demo-app client --> frontend proxy (outbound listeners) ==mTLS HTTP/2==> backend proxy (tunnel) --> backend apps
#
# It builds what it needs, makes a mesh CA and two workload identities, starts the apps and proxies on
# loopback, sends HTTP/1.1, HTTP/2, gRPC-style, WebSocket and raw TCP traffic through them, prints what
# each hop saw (including the peer's SPIFFE ID), and stops everything on exit or Ctrl-C.
#
# Options: --keep   keep everything running after the narration until Ctrl-C
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
keep=0
[[ ${1:-} == --keep ]] && keep=1

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# --- set-up (idempotent) ---------------------------------------------------------------------
command -v cargo > /dev/null || die "cargo not found: install a Rust toolchain (https://rustup.rs) first"
if ! command -v curl > /dev/null; then
    echo "installing curl" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl > /dev/null
fi
echo "building weft-proxy, weftctl and the demo apps (release)..." >&2
cargo build --release --quiet --workspace --bins --examples
bin=$root/target/release
proxy=$bin/weft-proxy weftctl=$bin/weftctl app=$bin/examples/demo-app

# Fixed loopback ports keep the narration readable; refuse to start if one is taken.
HTTP_APP=18080 TCP_APP=18090 BANNER_APP=18091
FE_HTTP=19080 FE_TCP=19090 FE_BANNER=19091 FE_WRONG=19081
BE_TUNNEL=15008 BE_ADMIN=15000 BE_HEALTH=15020
FE_TUNNEL=15108 FE_ADMIN=15100 FE_HEALTH=15120
for p in $HTTP_APP $TCP_APP $BANNER_APP $FE_HTTP $FE_TCP $FE_BANNER $FE_WRONG $BE_TUNNEL $BE_ADMIN $BE_HEALTH \
    $FE_TUNNEL $FE_ADMIN $FE_HEALTH; do
    if (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null; then die "port 127.0.0.1:$p is in use; stop what listens there"; fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/weft-demo.XXXXXX")
pids=()
cleanup() {
    trap - EXIT INT TERM
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2> /dev/null || true
        wait "${pids[@]}" 2> /dev/null || true
    fi
    rm -rf "$work"
    echo "demo: stopped everything and removed $work" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- identities ------------------------------------------------------------------------------
bold "1. A mesh CA and two workload identities (keys made locally, CSRs signed by the CA)"
"$weftctl" ca init --dir "$work/ca" --trust-domain weft.local | sed 's/^/   /'
for sa in frontend backend; do
    "$weftctl" cert issue --ca-dir "$work/ca" --id "spiffe://weft.local/ns/demo/sa/$sa" --ttl 1h --out "$work/$sa" | sed 's/^/   /'
done

# --- apps and proxies ------------------------------------------------------------------------
bold "2. Starting the backend apps (they know nothing of the mesh) and the two sidecars"
"$app" http --listen 127.0.0.1:$HTTP_APP --name backend > "$work/app-http.log" 2>&1 & pids+=($!)
"$app" tcp-echo --listen 127.0.0.1:$TCP_APP > "$work/app-tcp.log" 2>&1 & pids+=($!)
"$app" banner --listen 127.0.0.1:$BANNER_APP --text "220 backend.demo ESMTP ready" > "$work/app-banner.log" 2>&1 & pids+=($!)

cat > "$work/backend.yaml" << YAML
identity: { cert: backend.crt, key: backend.key, bundle: backend-bundle.crt }
tunnel: { listen: 127.0.0.1:$BE_TUNNEL, allowed_ports: [$HTTP_APP, $TCP_APP, $BANNER_APP] }
admin: 127.0.0.1:$BE_ADMIN
health: 127.0.0.1:$BE_HEALTH
YAML
backend_id=spiffe://weft.local/ns/demo/sa/backend
cat > "$work/frontend.yaml" << YAML
identity: { cert: frontend.crt, key: frontend.key, bundle: frontend-bundle.crt }
tunnel: { listen: 127.0.0.1:$FE_TUNNEL }
admin: 127.0.0.1:$FE_ADMIN
health: 127.0.0.1:$FE_HEALTH
outbound:
  - { name: backend-http, listen: 127.0.0.1:$FE_HTTP, peer: 127.0.0.1:$BE_TUNNEL, identity: $backend_id, target_port: $HTTP_APP }
  - { name: backend-tcp, listen: 127.0.0.1:$FE_TCP, peer: 127.0.0.1:$BE_TUNNEL, identity: $backend_id, target_port: $TCP_APP }
  - { name: backend-smtp, listen: 127.0.0.1:$FE_BANNER, peer: 127.0.0.1:$BE_TUNNEL, identity: $backend_id, target_port: $BANNER_APP }
  # Expects another identity than the backend presents: every connection through it is refused.
  - { name: payments, listen: 127.0.0.1:$FE_WRONG, peer: 127.0.0.1:$BE_TUNNEL, identity: spiffe://weft.local/ns/demo/sa/payments, target_port: $HTTP_APP }
YAML
WEFT_LOG=info,weft_proxy::inbound=debug "$proxy" run --config "$work/backend.yaml" > "$work/backend-proxy.log" 2>&1 & pids+=($!)
WEFT_LOG=info "$proxy" run --config "$work/frontend.yaml" > "$work/frontend-proxy.log" 2>&1 & pids+=($!)
for h in $BE_HEALTH $FE_HEALTH; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$h/ready" > /dev/null && break; sleep 0.1; done
    curl -fs "http://127.0.0.1:$h/ready" > /dev/null || { tail "$work"/*-proxy.log; die "a proxy did not become ready"; }
done
note "backend apps: http 127.0.0.1:$HTTP_APP, tcp echo :$TCP_APP, banner :$BANNER_APP"
note "backend sidecar: tunnel 127.0.0.1:$BE_TUNNEL (mTLS + HTTP/2), admin :$BE_ADMIN, health :$BE_HEALTH"
note "frontend sidecar: listeners :$FE_HTTP (http) :$FE_TCP (tcp) :$FE_BANNER (banner) -> backend tunnel"
for port in $FE_ADMIN $BE_ADMIN; do
    curl -fs "http://127.0.0.1:$port/identity" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("   identity", d["spiffe_id"], "expires in", d["expires_in_seconds"], "s")'
done

# --- traffic ---------------------------------------------------------------------------------
bold "3. HTTP/1.1 from the frontend's client to its local listener (the app sees who called)"
"$app" get 127.0.0.1:$FE_HTTP /info -H "x-forwarded-for:6.6.6.6" | sed 's/^/   /'
note "(the client's forged x-forwarded-for was replaced by the address the proxy saw)"

bold "4. HTTP/2 prior knowledge, carried as HTTP/2 to the app"
"$app" get --h2 127.0.0.1:$FE_HTTP /info | sed 's/^/   /'

bold "5. gRPC-style calls: unary, an error status in trailers, bidirectional streaming"
"$app" grpc 127.0.0.1:$FE_HTTP | sed 's/^/   /'

bold "6. WebSocket over the HTTP/1.1 upgrade"
"$app" ws 127.0.0.1:$FE_HTTP | sed 's/^/   /'

bold "7. Raw TCP with half-close, and a server-speaks-first service"
"$app" tcp 127.0.0.1:$FE_TCP | sed 's/^/   /'
"$app" banner-read 127.0.0.1:$FE_BANNER | sed 's/^/   /'
sleep 0.2
note "backend sidecar saw these TCP streams from:"
grep -h 'inbound tcp stream done' "$work/backend-proxy.log" | grep -o 'peer_id=[^ ]* port=[0-9]*' | sed 's/^/   /' || true

bold "8. A listener that expects another identity is refused before any byte reaches the backend"
curl -s -w '   (HTTP %{http_code})\n' "http://127.0.0.1:$FE_WRONG/info" | sed 's/^/   /'
note "frontend sidecar log:"
grep -h 'request failed' "$work/frontend-proxy.log" | tail -1 | fold -w 140 | sed 's/^/   /'
note "backend sidecar log (the refused handshake):"
grep -h 'TLS handshake failed' "$work/backend-proxy.log" | tail -1 | fold -w 140 | sed 's/^/   /' || true

bold "9. Everything above crossed one multiplexed mTLS connection"
curl -fs "http://127.0.0.1:$FE_HEALTH/metrics" | grep -E '^weft_proxy_peer_connections_opened_total' | sed 's/^/   frontend: /'
curl -fs "http://127.0.0.1:$BE_HEALTH/metrics" | grep -E '^weft_proxy_connections_opened_total.*tunnel' | sed 's/^/   backend:  /'

if ((keep)); then
    bold "Running; try: $app get 127.0.0.1:$FE_HTTP /info   (Ctrl-C stops everything)"
    wait
fi
bold "Done: stopping the proxies (SIGTERM: drain, then exit 0) and the apps"
