#!/usr/bin/env bash
# The HTTP contract, checked black-box: schemathesis (a pinned version, in a venv under the
# cache) generates requests from the live server's /openapi.json and runs every check on the
# answers (status documented, body matching its schema, schema-invalid input rejected with a
# 4xx, no 5xx, auth enforced, a created note readable and a deleted one gone).
#
#   scripts/schemathesis.sh [NOTELLM_BINARY]
#
# Starts `notellm serve` on a fresh from-scratch tiny checkpoint and SQLite store in a temporary
# directory, with an API key, on a free port; stops it at the end. Bounded: at most
# $SCHEMATHESIS_MAX_EXAMPLES examples per operation and phase (default 25).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/notellm}"
VERSION=4.32.5
CACHE="${NOTELLM_CACHE:-$HOME/.cache/notellm}"
VENV="$CACHE/venv-schemathesis-$VERSION"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
KEY=schemathesis-key

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi

WORK="$(mktemp -d)"
PID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 scripts/gen_notes.py 300 1 > "$WORK/corpus.jsonl"
"$BIN" model init --corpus "$WORK/corpus.jsonl" --out "$WORK/model" --vocab-size 1200 --embedding-dim 32 >/dev/null
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN" serve --model "$WORK/model" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --api-key "$KEY" \
  > "$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then cat "$WORK/serve.log"; echo "notellm serve exited" >&2; exit 1; fi
  sleep 0.5
done
# A few stored notes, so that reads and /related reach their handlers' success paths too.
head -20 "$WORK/corpus.jsonl" | python3 -c '
import json, sys, urllib.request
for i, line in enumerate(sys.stdin):
    n = json.loads(line)
    body = json.dumps({k: n[k] for k in ("title", "content", "hashtags", "category") if k in n}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:'"$PORT"'/notes/seed{i}", data=body, method="PUT",
        headers={"content-type": "application/json", "authorization": "Bearer '"$KEY"'"})
    urllib.request.urlopen(req).read()
'
status=0
# Run from the temporary directory: schemathesis keeps a cache in its working directory. One
# worker: with two, hypothesis (shared by the worker threads) once failed its own example
# generation for POST /notes:batch with FlakyFailure, an error of the tool, not of the service.
CONFIG="$PWD/scripts/schemathesis.toml"
(cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$CONFIG" run "http://127.0.0.1:$PORT/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $KEY" \
  --max-examples "$MAX_EXAMPLES" \
  --seed 1 \
  --workers 1 \
  --no-color) \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log (tail)" >&2
  tail -50 "$WORK/serve.log" >&2
fi
exit "$status"
