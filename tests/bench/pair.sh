#!/usr/bin/env bash
# Weft's proxy pair for the sidecar-pair benchmark (../shared/bench, see its README for the contract):
#
#   load --HTTP--> client-side $BENCH_LISTEN_HTTP ==mTLS HTTP/2 (one connection)==> server-side $BENCH_PEER_HTTP --> $BENCH_BACKEND_HTTP
#   load --TCP---> client-side $BENCH_LISTEN_TCP  ==same tunnel, CONNECT stream==> server-side --> $BENCH_BACKEND_TCP
#
# Both proxies run in the foreground of this script's session; "<role> <pid>" lines go to $BENCH_PIDFILE.
# WEFT_PROXY_BIN overrides the binary (default: target/release/weft-proxy, built if missing).
set -euo pipefail

: "${BENCH_LISTEN_HTTP:?}" "${BENCH_BACKEND_HTTP:?}" "${BENCH_PEER_HTTP:?}" "${BENCH_LISTEN_TCP:?}"
: "${BENCH_BACKEND_TCP:?}" "${BENCH_PEER_TCP:?}" "${BENCH_CERT_DIR:?}" "${BENCH_PAIR_DIR:?}" "${BENCH_PIDFILE:?}"
: "${BENCH_SERVER_ID:?}"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${WEFT_PROXY_BIN:-$root/target/release/weft-proxy}
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --release --quiet -p weft-proxy)
fi
dir=$BENCH_PAIR_DIR
mkdir -p "$dir"
port() { echo "${1##*:}"; }

# The client side's own tunnel takes the port the harness leaves free for a separate L4 hop;
# admin and health ports sit just above the harness's range.
cat > "$dir/client.yaml" << YAML
identity:
  cert: $BENCH_CERT_DIR/client.crt
  key: $BENCH_CERT_DIR/client.key
  bundle: $BENCH_CERT_DIR/ca.crt
tunnel:
  listen: $BENCH_PEER_TCP
admin: 127.0.0.1:${WEFT_BENCH_ADMIN_BASE:-18460}
health: 127.0.0.1:$((${WEFT_BENCH_ADMIN_BASE:-18460} + 1))
outbound:
  - name: http
    listen: $BENCH_LISTEN_HTTP
    peer: $BENCH_PEER_HTTP
    identity: $BENCH_SERVER_ID
    target_port: $(port "$BENCH_BACKEND_HTTP")
    protocol: http
  - name: tcp
    listen: $BENCH_LISTEN_TCP
    peer: $BENCH_PEER_HTTP
    identity: $BENCH_SERVER_ID
    target_port: $(port "$BENCH_BACKEND_TCP")
    protocol: tcp
YAML

cat > "$dir/server.yaml" << YAML
identity:
  cert: $BENCH_CERT_DIR/server.crt
  key: $BENCH_CERT_DIR/server.key
  bundle: $BENCH_CERT_DIR/ca.crt
tunnel:
  listen: $BENCH_PEER_HTTP
  app_host: 127.0.0.1
admin: 127.0.0.1:$((${WEFT_BENCH_ADMIN_BASE:-18460} + 2))
health: 127.0.0.1:$((${WEFT_BENCH_ADMIN_BASE:-18460} + 3))
YAML

export WEFT_LOG=${WEFT_LOG:-warn}
"$bin" run --config "$dir/server.yaml" & server=$!
"$bin" run --config "$dir/client.yaml" & client=$!
printf 'client-side %s\nserver-side %s\n' "$client" "$server" > "$BENCH_PIDFILE"
trap 'kill -TERM $client $server 2>/dev/null; wait' TERM INT
wait -n
exit 1
