#!/usr/bin/env bash
# Budget overspend under concurrency: two replicas on one Redis, CONCURRENCY clients spread
# over both, each sending until the $5 budget refuses it. Prints what was answered, the
# spend Redis holds (nano-USD), the overspend against the limit and what is still reserved
# once every request has settled.
set -euo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY=${CONCURRENCY:-128}
export BENCH_KEY=sk-bench-0123456789abcdef
cargo build --release --quiet --bin semroute --example instant_upstream --example overspend
./models/fetch.sh >/dev/null
redis-server --port 9103 --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
REDIS=$!
target/release/examples/instant_upstream 127.0.0.1:9101 2>/dev/null &
UPSTREAM=$!
RUST_LOG=warn target/release/semroute serve --config bench/overspend.yaml --addr 127.0.0.1:9105 2>/dev/null &
A=$!
RUST_LOG=warn target/release/semroute serve --config bench/overspend.yaml --addr 127.0.0.1:9106 2>/dev/null &
B=$!
trap 'kill $REDIS $UPSTREAM $A $B 2>/dev/null || true' EXIT
for port in 9105 9106; do
  for _ in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
done
echo "load: $(target/release/examples/overspend http://127.0.0.1:9105 http://127.0.0.1:9106 "$BENCH_KEY" "$CONCURRENCY")"
sleep 1
KEY=$(redis-cli -p 9103 --scan --pattern 'semroute:usd:key:bench:d:*' | grep -v ':[ar]$' | head -1)
SPENT=$(redis-cli -p 9103 hget "$KEY" spent)
RESERVED=$(redis-cli -p 9103 hget "$KEY" reserved)
echo "spent: $SPENT nano-USD (limit 5000000000), overspend: $((SPENT - 5000000000)) nano-USD, still reserved: $RESERVED"
