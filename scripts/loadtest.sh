#!/usr/bin/env bash
# Load tests behind the service figures in docs/benchmarks.md. Loopback only; every loop is bounded.
#   scripts/loadtest.sh related   GET /related/n<id>?k=20 on an index of N notes (default 100000,
#                                 tiny model, 128-d): wrk requests/s, p50/p90/p99, server CPU per
#                                 request and the answer cache's hit share, for
#                                   1. uniform ids, answer cache off: every request searches
#                                   2. uniform ids, cache on, from empty (a cold start)
#                                   3. Zipf(ZIPF_S) ids after WARM s of the same traffic (a feed)
#                                 and the RSS per indexed note
#   scripts/loadtest.sh recall    HNSW recall@10/20 against exact search and search-alone latency
#                                 at 100k clustered 128-d vectors (the index's own measurement)
#   scripts/loadtest.sh ingest    concurrent single-note PUTs vs offline batched `embed` on the
#                                 default model (SmolLM2-135M), notes/s
#   scripts/loadtest.sh backends  the same N notes in one Postgres schema served by the in-process
#                                 index and by pgvector, one after the other: wrk req/s and
#                                 p50/p99 (uniform ids, answer cache off), recall@10 of /related
#                                 against exact search (scripts/backend_recall.py), server RSS and
#                                 Postgres bytes per note
#   scripts/loadtest.sh replicas  two `serve --follow` replicas on one Postgres schema:
#                                 write-to-visible lag over LAG_WRITES writes and the follower's CPU
#                                 per applied write over a burst (scripts/replica_lag.py)
# Environment: N, DUR (s per measured run), WARM (s of Zipf warm-up), RELATED_CONN (wrk
# connections for `related`, default 8: at the target's 10,000 req/s, Little's law gives 8
# connections a mean latency of 0.8 ms, under the 2 ms p99 target; 64 could not average under
# 6.4 ms), WRK_THREADS (1), ZIPF_S (1.0), K (20), CONN (concurrent PUTs for `ingest`), PORT,
# INGEST_N, REINGEST=1 (rebuild the N-note store even when WORK holds one), WORK (default
# target/loadtest), CARGO_TARGET_DIR (where the release binary is built), NOTELLM_BIN (run this
# binary instead of building one: to compare two builds on the same store and machine),
# PG_URL (Postgres for `backends` and `replicas`; default TEST_DATABASE_URL, else the local test
# database), RECALL_SAMPLES (200), LAG_WRITES (1000), BURST (5000), BURST_CONC (8).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
N=${N:-100000}; DUR=${DUR:-30}; WARM=${WARM:-30}; CONN=${CONN:-64}; PORT=${PORT:-18080}; INGEST_N=${INGEST_N:-256}
RELATED_CONN=${RELATED_CONN:-8}; WRK_THREADS=${WRK_THREADS:-1}; ZIPF_S=${ZIPF_S:-1.0}; K=${K:-20}
WORK=${WORK:-target/loadtest}
BIN=${NOTELLM_BIN:-${CARGO_TARGET_DIR:-target}/release/notellm}
mkdir -p "$WORK"
export NOTELLM_LOG=${NOTELLM_LOG:-warn}

for tool in wrk bc; do command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $tool >/dev/null; }; done
[ -n "${NOTELLM_BIN:-}" ] || cargo build --release --quiet

PG_URL=${PG_URL:-${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
RECALL_SAMPLES=${RECALL_SAMPLES:-200}; LAG_WRITES=${LAG_WRITES:-1000}; BURST=${BURST:-5000}; BURST_CONC=${BURST_CONC:-8}

SERVER=
FOLLOWER=
stop() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; SERVER=; }
stop_all() { stop; [ -n "$FOLLOWER" ] && kill "$FOLLOWER" 2>/dev/null && wait "$FOLLOWER" 2>/dev/null; FOLLOWER=; }
trap stop_all EXIT

wait_ready() { # wait_ready PORT
  for _ in $(seq 1 1200); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.5
  done
  echo "server on port $1 not ready" >&2; exit 1
}

serve() { # serve MODEL DATA_DIR
  "$BIN" serve --model "$1" --data-dir "$2" --listen "127.0.0.1:$PORT" --device cpu &
  SERVER=$!
  wait_ready "$PORT"
}

tiny_model() { # the load tests' model: tiny, 128-d, trained on the example notes (prints its path)
  local model="$WORK/tiny128"
  [ -f "$model/notellm.json" ] || "$BIN" model init --preset tiny --corpus examples/notes.jsonl --out "$model" \
    --vocab-size 800 --embedding-dim 128 >&2
  echo "$model"
}

psql_at() { psql "$PG_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
# Server CPU time (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
metric() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# wrk_run LABEL DIST SECONDS: one wrk run of scripts/related.lua; prints a summary line with the
# server's CPU per request and the cache's hit share over the run.
wrk_run() {
  local label=$1 dist=$2 secs=$3 out="$WORK/wrk-related-$1.txt"
  local h0 m0 c0 h1 m1 c1
  h0=$(metric notellm_related_cache_hits_total); m0=$(metric notellm_related_cache_misses_total); c0=$(cpu_ticks)
  N=$N K=$K DIST=$dist ZIPF_S=$ZIPF_S wrk -t"$WRK_THREADS" -c"$RELATED_CONN" -d"${secs}s" --latency \
    -s scripts/related.lua "http://127.0.0.1:$PORT" > "$out"
  h1=$(metric notellm_related_cache_hits_total); m1=$(metric notellm_related_cache_misses_total); c1=$(cpu_ticks)
  local result; result=$(sed -n 's/^RESULT //p' "$out")
  [ -n "$result" ] || { cat "$out" >&2; echo "wrk printed no RESULT line" >&2; exit 1; }
  local requests; requests=$(echo "$result" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
  local bad; bad=$(echo "$result" | sed -n 's/.*non2xx=\([0-9]*\) socket_errors=\([0-9]*\).*/\1 + \2/p' | bc)
  [ "$bad" = 0 ] || { cat "$out" >&2; echo "$label: $bad failed requests" >&2; exit 1; }
  awk -v l="$label" -v r="$result" -v hits=$((h1 - h0)) -v misses=$((m1 - m0)) -v ticks=$((c1 - c0)) \
    -v hz="$(getconf CLK_TCK)" -v n="$requests" -v c="$RELATED_CONN" -v t="$WRK_THREADS" 'BEGIN {
      share = hits + misses > 0 ? sprintf("%.1f%%", 100 * hits / (hits + misses)) : "n/a (cache off)"
      printf "%-28s wrk -t%d -c%d: %s cache_hit_share=%s server_cpu_us_per_request=%.1f\n",
        l, t, c, r, share, 1e6 * ticks / hz / n }' | tee -a "$WORK/related-summary.txt"
}

related() {
  local model; model=$(tiny_model)
  rm -rf "$WORK/empty"
  serve "$model" "$WORK/empty"; local rss0; rss0=$(rss_kib); stop
  if [ "${REINGEST:-0}" = 1 ] || [ "$(cat "$WORK/data/.notes" 2>/dev/null)" != "$N" ]; then
    python3 scripts/gen_notes.py "$N" > "$WORK/notes.jsonl"
    rm -rf "$WORK/data"
    local t0; t0=$(date +%s.%N)
    "$BIN" ingest "$WORK/notes.jsonl" --model "$model" --data-dir "$WORK/data" --max-batch-notes 64
    echo "ingest of $N notes (tiny model, SQLite): $(echo "$(date +%s.%N) - $t0" | bc) s"
    echo "$N" > "$WORK/data/.notes"
  else
    echo "reusing the $N-note store in $WORK/data (REINGEST=1 to rebuild it)"
  fi
  : > "$WORK/related-summary.txt"
  NOTELLM_RELATED_CACHE_ENTRIES=0 serve "$model" "$WORK/data"
  local rss1; rss1=$(rss_kib)
  echo "RSS empty ${rss0} KiB, with $N notes ${rss1} KiB: $(( (rss1 - rss0) * 1024 / N )) bytes per indexed note"
  wrk_run uniform-no-cache uniform "$DUR"
  stop
  serve "$model" "$WORK/data"
  wrk_run uniform-cold-cache uniform "$DUR"
  stop
  serve "$model" "$WORK/data"
  N=$N K=$K DIST=zipf ZIPF_S=$ZIPF_S wrk -t"$WRK_THREADS" -c"$RELATED_CONN" -d"${WARM}s" \
    -s scripts/related.lua "http://127.0.0.1:$PORT" > "$WORK/wrk-related-warmup.txt"
  echo "warm-up: $WARM s of Zipf traffic, $(metric notellm_related_cache_entries) answers cached"
  wrk_run "zipf-s$ZIPF_S-warm-cache" zipf "$DUR"
  echo "answers cached at the end: $(metric notellm_related_cache_entries)"
  stop
}

recall() {
  NOTELLM_INDEX_BENCH=${NOTELLM_INDEX_BENCH:-blobs100} cargo test --release -p notellm-index --lib recall -- --ignored --nocapture
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

backends() {
  local model; model=$(tiny_model)
  local schema="nl_loadtest_$N"
  export DATABASE_URL=$PG_URL NOTELLM_DATABASE_SCHEMA=$schema NOTELLM_RELATED_CACHE_ENTRIES=0
  local have; have=$(psql_at -c "SELECT count(*) FROM $schema.notes" 2>/dev/null || echo 0)
  if [ "${REINGEST:-0}" = 1 ] || [ "$have" != "$N" ]; then
    [ -s "$WORK/notes.jsonl" ] && [ "$(wc -l < "$WORK/notes.jsonl")" = "$N" ] || python3 scripts/gen_notes.py "$N" > "$WORK/notes.jsonl"
    psql_at -c "DROP SCHEMA IF EXISTS $schema CASCADE"
    local t0; t0=$(date +%s.%N)
    "$BIN" ingest "$WORK/notes.jsonl" --model "$model" --data-dir "$WORK/pg-ingest" --max-batch-notes 64
    echo "ingest of $N notes (tiny model, Postgres): $(echo "$(date +%s.%N) - $t0" | bc) s"
  else
    echo "reusing the $N-note schema $schema (REINGEST=1 to rebuild it)"
  fi
  : > "$WORK/backends-summary.txt"
  # pgvector first: its start-up fills the vec column that exact search reads, then builds its index.
  for index in pgvector hnsw; do
    rm -rf "$WORK/pg-data-$index"
    local t0; t0=$(date +%s.%N)
    NOTELLM_INDEX=$index serve "$model" "$WORK/pg-data-$index"
    echo "$index: ready in $(echo "$(date +%s.%N) - $t0" | bc) s (start-up from the store, no snapshot)" | tee -a "$WORK/backends-summary.txt"
    echo "$index: server RSS $(rss_kib) KiB, $(( $(rss_kib) * 1024 / N )) bytes per note" | tee -a "$WORK/backends-summary.txt"
    wrk_run "$index-uniform-no-cache" uniform "$DUR"
    grep "^$index-uniform" "$WORK/related-summary.txt" | tail -1 >> "$WORK/backends-summary.txt"
    echo "$index: $(python3 scripts/backend_recall.py "http://127.0.0.1:$PORT" "$PG_URL" "$schema" "$N" "$RECALL_SAMPLES" 10)" \
      | tee -a "$WORK/backends-summary.txt"
    stop
  done
  psql_at -F ' ' -c "SELECT 'postgres bytes per note: notes table (with TOAST) ' || pg_table_size('$schema.notes') / $N
      || ', all indexes of notes ' || pg_indexes_size('$schema.notes') / $N
      || ', of which the HNSW index ' || coalesce((SELECT pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace s
         ON s.oid = c.relnamespace WHERE s.nspname = '$schema' AND c.relname LIKE 'notes_vec_hnsw_%' LIMIT 1), 0) / $N" \
    | tee -a "$WORK/backends-summary.txt"
  unset DATABASE_URL NOTELLM_DATABASE_SCHEMA NOTELLM_RELATED_CACHE_ENTRIES
}

replicas() {
  local model; model=$(tiny_model)
  local schema=nl_loadtest_replicas port_b=$((PORT + 1))
  psql_at -c "DROP SCHEMA IF EXISTS $schema CASCADE"
  export DATABASE_URL=$PG_URL NOTELLM_DATABASE_SCHEMA=$schema NOTELLM_FOLLOW=true
  rm -rf "$WORK/replica-a" "$WORK/replica-b"
  serve "$model" "$WORK/replica-a"
  "$BIN" serve --model "$model" --data-dir "$WORK/replica-b" --listen "127.0.0.1:$port_b" --device cpu &
  FOLLOWER=$!
  wait_ready "$port_b"
  python3 scripts/replica_lag.py "http://127.0.0.1:$PORT" "http://127.0.0.1:$port_b" "$FOLLOWER" \
    "$LAG_WRITES" "$BURST" "$BURST_CONC" | tee "$WORK/replicas-summary.txt"
  curl -sf "http://127.0.0.1:$port_b/metrics" | grep -E '^notellm_follow_(applied_changes|reconnects)_total'
  stop_all
  psql_at -c "DROP SCHEMA IF EXISTS $schema CASCADE"
  unset DATABASE_URL NOTELLM_DATABASE_SCHEMA NOTELLM_FOLLOW
}

case "$MODE" in
  related) related ;;
  backends) backends ;;
  replicas) replicas ;;
  recall) recall ;;
  ingest) ingest ;;
  all) related; recall; ingest ;;
  *) echo "usage: $0 [related|recall|ingest|backends|replicas|all]" >&2; exit 2 ;;
esac
