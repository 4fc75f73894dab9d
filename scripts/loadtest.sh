#!/usr/bin/env bash
# Load tests behind README's service figures. Loopback only; every loop is bounded.
#   scripts/loadtest.sh related   GET /related on an index of N notes (default 100000): wrk
#                                 latency percentiles and requests/s; RSS per indexed note
#   scripts/loadtest.sh ingest    concurrent single-note PUTs vs offline batched `embed` on the
#                                 default model (SmolLM2-135M), notes/s
# Environment: N, DUR (s), CONN, PORT, INGEST_N, WORK (default target/loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
N=${N:-100000}; DUR=${DUR:-30}; CONN=${CONN:-64}; PORT=${PORT:-18080}; INGEST_N=${INGEST_N:-256}
WORK=${WORK:-target/loadtest}
BIN=target/release/notellm
mkdir -p "$WORK"
export NOTELLM_LOG=${NOTELLM_LOG:-warn}

for tool in wrk bc; do command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $tool >/dev/null; }; done
cargo build --release --quiet

SERVER=
stop() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; SERVER=; }
trap stop EXIT

serve() { # serve MODEL DATA_DIR
  "$BIN" serve --model "$1" --data-dir "$2" --listen "127.0.0.1:$PORT" --device cpu &
  SERVER=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
    sleep 0.5
  done
  echo "server not ready" >&2; exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }

related() {
  local model="$WORK/tiny128"
  [ -f "$model/notellm.json" ] || "$BIN" model init --preset tiny --corpus examples/notes.jsonl --out "$model" --vocab-size 800 --embedding-dim 128
  python3 scripts/gen_notes.py "$N" > "$WORK/notes.jsonl"
  rm -rf "$WORK/empty" "$WORK/data"
  serve "$model" "$WORK/empty"; local rss0; rss0=$(rss_kib); stop
  local t0; t0=$(date +%s.%N)
  "$BIN" ingest "$WORK/notes.jsonl" --model "$model" --data-dir "$WORK/data" --max-batch-notes 64
  echo "ingest of $N notes (tiny model, SQLite): $(echo "$(date +%s.%N) - $t0" | bc) s"
  serve "$model" "$WORK/data"; local rss1; rss1=$(rss_kib)
  echo "RSS empty ${rss0} KiB, with $N notes ${rss1} KiB: $(( (rss1 - rss0) * 1024 / N )) bytes per indexed note"
  N=$N wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s scripts/related.lua "http://127.0.0.1:$PORT" | tee "$WORK/wrk-related.txt"
  stop
}

ingest() {
  head -n "$INGEST_N" "$WORK/notes.jsonl" 2>/dev/null > "$WORK/ingest.jsonl" || true
  [ -s "$WORK/ingest.jsonl" ] || python3 scripts/gen_notes.py "$INGEST_N" 7 > "$WORK/ingest.jsonl"
  local t0 t1
  # embed's own timer: from the first note read to the last written, model load excluded
  local offline; offline=$(NOTELLM_LOG=info "$BIN" embed --device cpu --batch-size 32 < "$WORK/ingest.jsonl" 2>&1 >/dev/null \
    | sed -n 's/.*notes_per_s=\([0-9.]*\).*/\1/p')
  rm -rf "$WORK/ingest-data"
  local model; model=$("$BIN" model fetch smollm2-135m --out "${NOTELLM_CACHE:-$HOME/.cache/notellm}/models/smollm2-135m-instruct" 2>&1 | sed -n 's/^ready: //p')
  serve "$model" "$WORK/ingest-data"
  mkdir -p "$WORK/bodies"
  python3 - "$WORK/ingest.jsonl" "$WORK/bodies" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line); i = d.pop("note_id")
    open(f"{sys.argv[2]}/{i}.json", "w").write(json.dumps(d))
PY
  t0=$(date +%s.%N)
  ls "$WORK/bodies" | sed 's/\.json$//' | xargs -P "$CONN" -I{} curl -sf -o /dev/null -X PUT \
    -H 'content-type: application/json' --data-binary "@$WORK/bodies/{}.json" "http://127.0.0.1:$PORT/notes/{}"
  t1=$(date +%s.%N)
  local online; online=$(echo "$INGEST_N / ($t1 - $t0)" | bc -l)
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^notellm_batch_size_(sum|count)'
  stop
  printf 'offline embed: %.2f notes/s; concurrent PUTs: %.2f notes/s (%.0f%%)\n' "$offline" "$online" "$(echo "100 * $online / $offline" | bc -l)"
}

case "$MODE" in
  related) related ;;
  ingest) ingest ;;
  all) related; ingest ;;
  *) echo "usage: $0 [related|ingest|all]" >&2; exit 2 ;;
esac
