#!/usr/bin/env bash
# Proxy overhead: an instant upstream, semroute in front of it, and an open-loop load of
# RATE requests/s for SECONDS, once straight to the upstream and once through semroute
# (`model` names the backend, so no classification). The overhead is the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
SECONDS_=${SECONDS_:-10}
cargo build --release --quiet --bin semroute --example instant_upstream --example open_loop
./models/fetch.sh >/dev/null
target/release/examples/instant_upstream 127.0.0.1:9101 2>/dev/null &
UPSTREAM=$!
RUST_LOG=warn target/release/semroute serve --config bench/proxy.yaml --addr 127.0.0.1:9102 2>/dev/null &
SEMROUTE=$!
trap 'kill $UPSTREAM $SEMROUTE 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf 127.0.0.1:9102/readyz >/dev/null && break; sleep 0.1; done
BODY='{"model": "instant", "messages": [{"role": "user", "content": "hello"}]}'
# Warm both paths (connections, pools) before measuring.
target/release/examples/open_loop http://127.0.0.1:9101/v1/chat/completions "$BODY" "$RATE" 2 >/dev/null
target/release/examples/open_loop http://127.0.0.1:9102/v1/chat/completions "$BODY" "$RATE" 2 >/dev/null
echo "direct:  $(target/release/examples/open_loop http://127.0.0.1:9101/v1/chat/completions "$BODY" "$RATE" "$SECONDS_")"
echo "proxied: $(target/release/examples/open_loop http://127.0.0.1:9102/v1/chat/completions "$BODY" "$RATE" "$SECONDS_")"
