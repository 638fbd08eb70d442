#!/usr/bin/env bash
# Huge requests: semroute (release build) in front of the instant upstream; 30 MiB chat
# requests of mostly non-ASCII text, one alone then two at once, with `model: auto` (the
# whole text is scanned by the keywords and patterns, its prefix embedded) and with a
# backend named (the data-class scan only), while /healthz is probed every 5 ms.
# Last, the worst case for the pattern scan (see examples/huge_request.rs: adversarial).
# Prints one JSON line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-30}
cargo build --release --quiet --bin semroute --example instant_upstream --example huge_request
./models/fetch.sh >/dev/null
target/release/examples/instant_upstream 127.0.0.1:9111 2>/dev/null &
UPSTREAM=$!
trap 'kill $UPSTREAM ${SEMROUTE:-} 2>/dev/null || true' EXIT
run() {
  RUST_LOG=warn target/release/semroute serve --config bench/huge.yaml --addr 127.0.0.1:9112 2>/dev/null &
  SEMROUTE=$!
  for _ in $(seq 300); do curl -sf 127.0.0.1:9112/readyz >/dev/null && break; sleep 0.1; done
  # A small request first, so the peak below is the huge requests' own.
  curl -sf 127.0.0.1:9112/v1/chat/completions -H 'content-type: application/json' \
       -d '{"model": "auto", "messages": [{"role": "user", "content": "hello"}]}' >/dev/null
  target/release/examples/huge_request http://127.0.0.1:9112 "$SEMROUTE" "$MIB" "$1" "$2" ${3:-}
  kill $SEMROUTE; wait $SEMROUTE 2>/dev/null || true
}
run 1 auto
run 2 auto
run 2 instant
run 1 auto adversarial
