#!/usr/bin/env bash
# What auth + rate limits + budgets cost per request with Redis on loopback: the instant
# upstream, semroute without tenants (bench/proxy.yaml) and with them (bench/tenants.yaml,
# one Redis round trip to admit and one to settle each request), both under the same
# open-loop load of RATE requests/s for SECONDS_ over USERS distinct users. Prints each
# run's latency percentiles, then the tenant replica's resident memory before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
SECONDS_=${SECONDS_:-10}
USERS=${USERS:-100000}
export BENCH_KEY=sk-bench-0123456789abcdef
cargo build --release --quiet --bin semroute --example instant_upstream --example open_loop
./models/fetch.sh >/dev/null
redis-server --port 9103 --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
REDIS=$!
target/release/examples/instant_upstream 127.0.0.1:9101 2>/dev/null &
UPSTREAM=$!
RUST_LOG=warn target/release/semroute serve --config bench/proxy.yaml --addr 127.0.0.1:9102 2>/dev/null &
PLAIN=$!
RUST_LOG=warn target/release/semroute serve --config bench/tenants.yaml --addr 127.0.0.1:9104 2>/dev/null &
TENANTS=$!
trap 'kill $REDIS $UPSTREAM $PLAIN $TENANTS 2>/dev/null || true' EXIT
for port in 9102 9104; do
  for _ in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
done
BODY='{"model": "instant", "user": "__USER__", "messages": [{"role": "user", "content": "hello"}]}'
rss() { awk '/VmRSS/ {print $2 " kB"}' /proc/$TENANTS/status; }
echo "tenant replica RSS before: $(rss)"
BEARER=$BENCH_KEY USERS=2 target/release/examples/open_loop http://127.0.0.1:9102/v1/chat/completions "$BODY" "$RATE" 2 >/dev/null
BEARER=$BENCH_KEY USERS=2 target/release/examples/open_loop http://127.0.0.1:9104/v1/chat/completions "$BODY" "$RATE" 2 >/dev/null
echo "without tenants: $(BEARER=$BENCH_KEY USERS=$USERS target/release/examples/open_loop http://127.0.0.1:9102/v1/chat/completions "$BODY" "$RATE" "$SECONDS_")"
echo "with tenants:    $(BEARER=$BENCH_KEY USERS=$USERS target/release/examples/open_loop http://127.0.0.1:9104/v1/chat/completions "$BODY" "$RATE" "$SECONDS_")"
echo "tenant replica RSS after $((RATE * SECONDS_)) requests over $USERS users: $(rss)"
echo "Redis keys: $(redis-cli -p 9103 dbsize), Redis memory: $(redis-cli -p 9103 info memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')"
