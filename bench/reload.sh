#!/usr/bin/env bash
# Hot reload under load: the 150-route CLINC150 file served, one route's utterance edited
# and reloaded (POST /admin/reload) RELOADS times while RATE requests/s of POST /classify
# go on open loop; then the same load without reloads, for comparison. Prints the reloads'
# own times (from reading the file to the swap, as each answer reports them; first without
# load, then under it) and the load's failures and latency percentiles in both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SEMROUTE_SHARED:-../shared}
RATE=${RATE:-200}
RELOADS=${RELOADS:-50}
PORT=${PORT:-9137}
cargo build --release --quiet --bin semroute --example open_loop
./models/fetch.sh >/dev/null
WORK=$(mktemp -d)
trap 'kill $SEMROUTE 2>/dev/null || true; rm -rf "$WORK"' EXIT
cp "$SHARED/datasets/clinc150/routes-10shot.yaml" "$WORK/routes.yaml"
RUST_LOG=warn target/release/semroute serve --config "$WORK/routes.yaml" --addr 127.0.0.1:$PORT 2>"$WORK/log" &
SEMROUTE=$!
for _ in $(seq 600); do curl -sf 127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT/classify
BODY='{"text": "can you tell me if applebees takes reservations tonight"}'

# One route's last utterance, rewritten with a new word each time: one new embedding.
reload() {
  sed -i "s/can applebees take any reservations.*\"/can applebees take any reservations $1\"/" "$WORK/routes.yaml"
  curl -s -X POST 127.0.0.1:$PORT/admin/reload
}
summary() {
  python3 -c '
import json, sys
done = [json.loads(l) for l in sys.stdin if l.strip()]
ok = [d for d in done if d.get("result") == "ok"]
ms = sorted(d["ms"] for d in ok)
emb = sorted(set(d["embedded"] for d in ok))
print(f"{len(ok)}/{len(done)} ok, embedded per reload {emb}, swap ms p50 {ms[len(ms)//2]:.0f} max {ms[-1]:.0f}")'
}

target/release/examples/open_loop $URL "$BODY" "$RATE" 2 >/dev/null   # warm up
echo "reloads, no load:    $(for i in $(seq 10); do reload "quiet$i"; echo; sleep 0.3; done | summary)"
target/release/examples/open_loop $URL "$BODY" "$RATE" $((RELOADS / 2 + 5)) >"$WORK/loaded.json" &
LOAD=$!
sleep 2
for i in $(seq "$RELOADS"); do reload "w$i"; echo; sleep 0.4; done >"$WORK/reloads.jsonl"
wait $LOAD
echo "reloads under load:  $(summary <"$WORK/reloads.jsonl")"
echo "load with reloads:   $(cat "$WORK/loaded.json")"
echo "load without:        $(target/release/examples/open_loop $URL "$BODY" "$RATE" $((RELOADS / 2 + 5)))"
echo "reloads counted:     $(curl -s 127.0.0.1:$PORT/metrics | grep '^semroute_config_reloads_total' | tr '\n' ' ')"
