#!/usr/bin/env bash
# Measures semroute and its peers in one run on this machine, for BENCHMARKS.md:
# `semroute bench` (float32, bfloat16 and int8, then float32 and int8 at 1, 2 and 4 threads),
# ONNX Runtime fp32 and int8 and sentence-transformers (../shared/peers/embed_bench.py), the
# Python semantic-router (aurelio_eval.py), and an HTTP load test of /classify with wrk at
# concurrency 1, 8 and 32 (float32, bfloat16, int8) plus a 4x overload.
# Needs: ./models/fetch.sh done, `bash ../shared/peers/setup.sh`, and wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared=${SEMROUTE_SHARED:-../shared}
routes=$shared/datasets/clinc150/routes-10shot.yaml
val=$shared/datasets/clinc150/val.jsonl
venv=${PEER_VENV:-$HOME/.cache/semroute-peers/venv}
cargo build --release --quiet
bf16=$(mktemp --suffix .yaml)
int8=$(mktemp --suffix .yaml)
trap 'rm -f "$bf16" "$int8"; pkill -f "semroute serve --config .* --addr 127.0.0.1:1809" || true' EXIT
{ echo "encoder: {precision: bf16}"; cat "$routes"; } > "$bf16"
{ echo "encoder: {precision: int8}"; cat "$routes"; } > "$int8"

for precision in f32 bf16 int8; do
  echo "== semroute bench ($precision, default threads)"
  ./target/release/semroute bench --config "$routes" --data "$val" --json --precision $precision
done
echo "== thread scaling (4 threads is more than a 2-core machine has: capped, see BENCHMARKS.md)"
for precision in f32 int8; do
  for threads in 1 2 4; do
    ./target/release/semroute bench --config "$routes" --data "$val" --json --precision $precision --threads $threads
  done
done
echo "== peers: embed_bench.py"
"$venv/bin/python" "$shared/peers/embed_bench.py" models/all-MiniLM-L6-v2 "$val" 2>/dev/null | grep '^{'
echo "== peers: aurelio_eval.py (Python semantic-router)"
"$venv/bin/python" "$shared/peers/aurelio_eval.py" models/all-MiniLM-L6-v2 "$routes" "$val" 2>/dev/null | grep '^{'

load() {  # name config port [serve flags...]
  local name=$1 config=$2 port=$3; shift 3
  ./target/release/semroute serve --config "$config" --addr "127.0.0.1:$port" "$@" 2>/dev/null &
  local pid=$!
  until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.2; done
  for c in 1 8 32; do
    echo "$name c=$c: $(wrk -t1 -c$c -d10s -s bench/classify.lua "http://127.0.0.1:$port" | tail -n 1)"
  done
  echo "$name rss_kb=$(ps -o rss= -p $pid)"
  kill -TERM $pid; wait $pid || true
}
echo "== /classify load (wrk, 1 client thread, CLINC150 routes)"
load f32 "$routes" 18091
load bf16 "$bf16" 18092
load int8 "$int8" 18094
echo "== 4x overload: --queue 64, 256 connections"
./target/release/semroute serve --config "$routes" --addr 127.0.0.1:18093 --queue 64 2>/dev/null &
pid=$!
until curl -sf 127.0.0.1:18093/readyz >/dev/null; do sleep 0.2; done
echo "overload: $(wrk -t1 -c256 -d15s -s bench/classify.lua http://127.0.0.1:18093 | tail -n 1)"
echo "overload rss_kb=$(ps -o rss= -p $pid) ready_after=$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18093/readyz)"
kill -TERM $pid; wait $pid || true
