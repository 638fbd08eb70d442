#!/usr/bin/env bash
# The cost of context: POST /classify with the longest conversation of the SGD dev split
# (20 user turns, 39 messages) against the same last user message alone, at RATE requests/s
# for SECONDS_ each, open loop. The earlier turns are scored once and then come from the
# router's score cache (as in a chat, where each request repeats the turns before it);
# the last message is embedded every time in both cases. Run with the SGD routes and with
# CLINC150's 150 routes (scoring a message for every route costs more with more routes).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SEMROUTE_SHARED:-../shared}
RATE=${RATE:-100}
SECONDS_=${SECONDS_:-15}
cargo build --release --quiet --bin semroute --example open_loop
./models/fetch.sh >/dev/null
BODIES=$(mktemp -d)
trap 'kill $SEMROUTE 2>/dev/null || true; rm -rf "$BODIES"' EXIT
python3 - "$SHARED/datasets/sgd/dev.jsonl" "$BODIES" <<'PY'
import json, sys
items = [json.loads(l) for l in open(sys.argv[1])]
longest = max(items, key=lambda v: len(v["messages"]))["messages"]
# One more turn from another dialogue make it 20 user turns.
extra = next(v["messages"] for v in items if v["turn"] == 0)
messages = longest + [{"role": "assistant", "content": "Anything else?"}] + extra
users = sum(m["role"] == "user" for m in messages)
json.dump({"messages": messages}, open(sys.argv[2] + "/conversation.json", "w"))
json.dump({"text": messages[-1]["content"]}, open(sys.argv[2] + "/single.json", "w"))
print(f"conversation: {users} user turns, {len(messages)} messages", file=sys.stderr)
PY
for routes in "$SHARED/datasets/sgd/routes-10shot.yaml" "$SHARED/datasets/clinc150/routes-10shot.yaml"; do
  RUST_LOG=warn target/release/semroute serve --config "$routes" --addr 127.0.0.1:9131 2>/dev/null &
  SEMROUTE=$!
  for _ in $(seq 300); do curl -sf 127.0.0.1:9131/readyz >/dev/null && break; sleep 0.1; done
  URL=http://127.0.0.1:9131/classify
  # Warm up: connections, and the earlier turns' scores.
  target/release/examples/open_loop $URL "$(cat "$BODIES/conversation.json")" "$RATE" 2 >/dev/null
  target/release/examples/open_loop $URL "$(cat "$BODIES/single.json")" "$RATE" 2 >/dev/null
  echo "$(basename "$(dirname "$routes")")"
  echo "  single message: $(target/release/examples/open_loop $URL "$(cat "$BODIES/single.json")" "$RATE" "$SECONDS_")"
  echo "  20-turn chat:   $(target/release/examples/open_loop $URL "$(cat "$BODIES/conversation.json")" "$RATE" "$SECONDS_")"
  kill $SEMROUTE; wait $SEMROUTE 2>/dev/null || true
done
