#!/usr/bin/env bash
# The answer cache: an instant upstream, semroute with bench/cache.yaml in front of it, and
# on each path the latency of one client on one keep-alive connection (wrk -c1, SECONDS)
# and of an open-loop load of RATE requests/s (examples/open_loop, a heavier client): the
# instant upstream straight (what any HTTP round trip costs here), an exact hit, the same
# request uncached (temperature 0.5, through the proxy to the upstream), a semantic hit
# (model auto, a prompt similar to a cached one), /classify of that prompt (the
# classification's own time), and the same auto request uncached. Needs wrk
# (`apt-get install wrk`).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-200}
SECONDS_=${SECONDS_:-10}
cargo build --release --quiet --bin semroute --example instant_upstream --example open_loop
./models/fetch.sh >/dev/null
target/release/examples/instant_upstream 127.0.0.1:9111 2>/dev/null &
UPSTREAM=$!
RUST_LOG=warn target/release/semroute serve --config bench/cache.yaml --addr 127.0.0.1:9112 2>/dev/null &
SEMROUTE=$!
trap 'kill $UPSTREAM $SEMROUTE 2>/dev/null || true' EXIT
command -v wrk >/dev/null || { echo "bench/cache.sh needs wrk: apt-get install wrk" >&2; exit 1; }
for _ in $(seq 600); do curl -sf 127.0.0.1:9112/readyz >/dev/null && break; sleep 0.1; done
CHAT=http://127.0.0.1:9112/v1/chat/completions
exact='{"model": "support", "temperature": 0, "messages": [{"role": "user", "content": "reset my password"}]}'
uncached='{"model": "support", "temperature": 0.5, "messages": [{"role": "user", "content": "reset my password"}]}'
first='{"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "how do I reset my password?"}]}'
similar='{"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "how can I reset my password"}]}'
similar_uncached='{"model": "auto", "temperature": 0.5, "messages": [{"role": "user", "content": "how can I reset my password"}]}'
# Fill the cache, and show what each request gets.
for body in "$exact" "$first"; do curl -s "$CHAT" -H 'content-type: application/json' -d "$body" >/dev/null; done
for body in "$exact" "$similar" "$uncached"; do
  echo "x-semroute-cache for $(echo "$body" | cut -c1-60)...: $(curl -s -D - -o /dev/null "$CHAT" -H 'content-type: application/json' -d "$body" | tr -d '\r' | grep -i '^x-semroute-cache' | cut -d' ' -f2)"
done
WORK=$(mktemp -d)
trap 'kill $UPSTREAM $SEMROUTE 2>/dev/null || true; rm -rf "$WORK"' EXIT
one() {  # wrk, one connection: p50 / p90 / p99
  printf 'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\nwrk.body = [[%s]]\n' "$2" >"$WORK/body.lua"
  wrk -t1 -c1 -d"${SECONDS_}s" --latency -s "$WORK/body.lua" "$1" | awk '/^ +(50|90|99)%/ {printf "%s %s  ", $1, $2} /Requests\/sec/ {printf "(%s/s)", $2}'
}
load() { target/release/examples/open_loop "$1" "$2" "$RATE" "$SECONDS_"; }
load "$CHAT" "$exact" >/dev/null   # warm the connections
for path in "instant upstream straight|http://127.0.0.1:9111/v1/chat/completions|$exact" \
            "exact hit|$CHAT|$exact" \
            "uncached, same request|$CHAT|$uncached" \
            "semantic hit (auto)|$CHAT|$similar" \
            "/classify, same prompt|http://127.0.0.1:9112/classify|{\"text\": \"how can I reset my password\"}" \
            "uncached auto|$CHAT|$similar_uncached"; do
  IFS='|' read -r name url body <<<"$path"
  echo "$name"
  echo "  wrk -c1:          $(one "$url" "$body")"
  echo "  open loop $RATE/s: $(load "$url" "$body")"
done
curl -s 127.0.0.1:9112/metrics | grep '^semroute_cache'
