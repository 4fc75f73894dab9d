#!/usr/bin/env bash
# CI check of the deployment files: docker/, deploy/ and docs/configuration.md. Exits non-zero,
# naming the file and what is wrong, when any of them is broken.
#
#   bash scripts/check_deploy.sh
#
# What it does (docs/operations.md, "How these files are checked"):
#  1. tools, installed only when missing and cached under $NOTELLM_CACHE/tools: promtool (only
#     the binary, extracted from Debian's prometheus package: no service is installed or started)
#     and a Python venv with pinned PyYAML, kubernetes-validate and check-jsonschema (PyPI);
#  2. builds the debug binary (`cargo build --bin notellm`; NOTELLM_BIN overrides), checks that
#     docs/configuration.md equals what scripts/gen_config_reference.sh writes now;
#  3. makes a tiny model (`notellm model init --preset tiny`), starts `notellm serve` on it with
#     SQLite on a free loopback port, writes and reads a few notes, scrapes /metrics, stops it
#     with SIGTERM and checks it exits 0;
#  4. scripts/check_deploy.py: the dashboard, the alert rules, prometheus.yml, the compose file,
#     the Kubernetes manifests and the Dockerfiles, against that real /metrics and `--help`;
#     then the schemas: every Kubernetes object (kubernetes-validate --strict, the API's own
#     OpenAPI schemas of 1.29 and 1.37, unknown fields rejected) and the compose file (the
#     compose-spec JSON schema, through check-jsonschema);
#  5. promtool: check rules (alerts.yml, and every dashboard query as a recording rule), check
#     config (prometheus.yml, whose rule_files must resolve), test rules (alerts_test.yml);
#  6. when the tools are present (they are optional): `docker compose config` (no daemon needed)
#     and `kubectl kustomize deploy/k8s`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n=== check_deploy: %s (%ss)\n' "$1" "$((SECONDS - started))"; }
die() { echo "check_deploy: FAILED: $*" >&2; exit 1; }

tools="${NOTELLM_CACHE:-$HOME/.cache/notellm}/tools"
work="$(mktemp -d "${TMPDIR:-/tmp}/check_deploy.XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ---- 1. tools ---------------------------------------------------------------------------------
step "tools"
promtool="$(command -v promtool || true)"
if [ -z "$promtool" ]; then
  promtool="$tools/promtool"
  if [ ! -x "$promtool" ]; then
    echo "promtool missing: extracting it from Debian's prometheus package (nothing installed)"
    mkdir -p "$tools" "$work/deb"
    chmod 777 "$work/deb"   # apt-get download runs as _apt where it can
    if ! (cd "$work/deb" && apt-get download prometheus >/dev/null 2>&1); then
      as_root apt-get update -qq >/dev/null
      (cd "$work/deb" && apt-get download prometheus >/dev/null) || die "apt-get download prometheus"
    fi
    dpkg-deb -x "$work"/deb/prometheus_*.deb "$work/deb/x"
    install -m 0755 "$work/deb/x/usr/bin/promtool" "$promtool.tmp" && mv "$promtool.tmp" "$promtool"
  fi
fi
"$promtool" --version 2>&1 | head -1

# Python tools in a venv of their own, pinned, cached under $NOTELLM_CACHE/tools: PyYAML for
# check_deploy.py, kubernetes-validate (the Kubernetes OpenAPI schemas, bundled: no cluster) and
# check-jsonschema (bundles the compose-spec schema). About 15 s the first time.
pydeps="PyYAML==6.0.3 kubernetes-validate==1.37.0 check-jsonschema==0.39.0"
venv="$tools/venv-$(echo "$pydeps" | cksum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "creating $venv ($pydeps)"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$venv"; python3 -m venv "$venv" || die "python3 -m venv"
  fi
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pydeps || { rm -rf "$venv"; die "pip install $pydeps"; }
fi
python="$venv/bin/python"
echo "python: $("$python" --version), $("$venv/bin/kubernetes-validate" --version | head -1 | sed 's/^/kubernetes-validate /'), $("$venv/bin/check-jsonschema" --version | head -1)"

# ---- 2. binary and configuration reference ------------------------------------------------------
step "binary"
bin="${NOTELLM_BIN:-}"
if [ -z "$bin" ]; then
  bin="${CARGO_TARGET_DIR:-target}/debug/notellm"
  cargo build --quiet --bin notellm || die "cargo build --bin notellm"
fi
[ -x "$bin" ] || die "no binary at $bin"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
echo "$bin"

step "docs/configuration.md is current"
NOTELLM_BIN="$bin" bash scripts/gen_config_reference.sh --stdout > "$work/configuration.md"
if ! diff -u docs/configuration.md "$work/configuration.md" > "$work/configuration.diff"; then
  head -40 "$work/configuration.diff" >&2
  die "docs/configuration.md is out of date: run 'bash scripts/gen_config_reference.sh' and commit it"
fi
echo "up to date"

# ---- 3. the real /metrics ----------------------------------------------------------------------
step "tiny model"
# A clean environment: nothing of the caller's NOTELLM_* or DATABASE_URL may leak in.
clean_env=(env -i "PATH=$PATH" "HOME=$HOME" "NOTELLM_CACHE=$work/cache" "NOTELLM_LOG=warn,notellm=info")
"${clean_env[@]}" "$bin" model init --preset tiny --corpus examples/notes.jsonl --out "$work/model" \
  2> "$work/init.log" || { cat "$work/init.log" >&2; die "notellm model init"; }

step "serve and scrape"
"${clean_env[@]}" NOTELLM_LOG_FORMAT=json "$bin" serve --model "$work/model" --device cpu \
  --data-dir "$work/data" --listen 127.0.0.1:0 --snapshot-interval-secs 1 2> "$work/serve.log" &
server_pid=$!
base=""
for _ in $(seq 1 300); do
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; die "notellm serve exited at start"; }
  addr="$(sed -n 's/.*"addr":"\([0-9.:]*\)".*"listening".*/\1/p; s/.*"listening".*"addr":"\([0-9.:]*\)".*/\1/p' "$work/serve.log" | head -1)"
  if [ -n "$addr" ] && curl -fsS "http://$addr/readyz" >/dev/null 2>&1; then base="http://$addr"; break; fi
  sleep 0.2
done
[ -n "$base" ] || { cat "$work/serve.log" >&2; die "notellm serve not ready after 60 s"; }
echo "ready at $base"
curl -fsS "$base/healthz" >/dev/null || die "GET /healthz"
req() {  # req METHOD PATH [BODY]: any answer but a 5xx is fine (a 4xx is traffic too)
  local code
  code="$(curl -sS -o /dev/null -w '%{http_code}' -X "$1" -H 'content-type: application/json' \
    ${3:+-d "$3"} "$base$2")" || die "$1 $2: no answer"
  case "$code" in 5*) die "$1 $2 answered $code";; esac
}
req PUT /notes/n1 '{"title":"Three days in Kyoto","content":"Capsule hotel, bikes, Fushimi Inari at sunrise.","hashtags":["kyoto"],"category":"travel"}'
req PUT /notes/n2 '{"title":"Weekend in Lisbon","content":"Trams, custard tarts and the view from the castle.","hashtags":["lisbon"],"category":"travel"}'
req POST /notes:batch '{"notes":[{"note_id":"n3","title":"Sourdough basics","content":"Starter, autolyse, stretch and fold."}]}'
req GET '/related/n1?k=5'
req POST /related '{"title":"Osaka food","content":"Takoyaki and okonomiyaki"}'
req POST /suggest-tags '{"title":"Hiking in the Alps","content":"Three huts in three days","max_hashtags":2}'
req DELETE /notes/n3
req GET /notes/missing
sleep 1.5   # one snapshot tick, so that the snapshot gauges have moved
curl -fsS "$base/metrics" > "$work/metrics.txt" || die "GET /metrics"
echo "$(grep -c '^notellm_' "$work/metrics.txt") notellm_* samples"

kill -TERM "$server_pid"
rc=0; wait "$server_pid" || rc=$?
server_pid=""
[ "$rc" = 0 ] || { tail -20 "$work/serve.log" >&2; die "notellm serve exited $rc on SIGTERM"; }
grep -q 'final snapshot written\|index unchanged since the last snapshot' "$work/serve.log" \
  || die "no final snapshot on SIGTERM (see the serve log)"

# ---- 4. the files against the metrics and the CLI ---------------------------------------------
step "deploy files"
"$python" scripts/check_deploy.py --metrics "$work/metrics.txt" --config-reference "$work/configuration.md" \
  --dashboard-rules "$work/dashboard_rules.yml" || die "scripts/check_deploy.py (see above)"

step "schemas: Kubernetes objects (1.29 and 1.37), compose-spec"
k8s_files=()
for f in deploy/k8s/*.yaml; do
  case "$f" in */kustomization.yaml|*/servicemonitor.yaml) ;; *) k8s_files+=("$f") ;; esac
done
for v in 1.29.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${k8s_files[@]}" \
    || die "deploy/k8s does not validate against the Kubernetes $v schemas"
done
echo "kubernetes-validate --strict: ${#k8s_files[@]} files"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml \
  || die "deploy/compose.yaml does not validate against the compose-spec schema"

# ---- 5. promtool -------------------------------------------------------------------------------
step "promtool"
"$promtool" check rules deploy/prometheus/alerts.yml || die "promtool check rules deploy/prometheus/alerts.yml"
"$promtool" check config deploy/prometheus/prometheus.yml || die "promtool check config deploy/prometheus/prometheus.yml"
"$promtool" test rules deploy/prometheus/alerts_test.yml || die "promtool test rules deploy/prometheus/alerts_test.yml"
"$promtool" check rules "$work/dashboard_rules.yml" > "$work/dashboard_rules.log" 2>&1 \
  || { cat "$work/dashboard_rules.log" >&2; die "a dashboard query is not valid PromQL (deploy/grafana/notellm.json)"; }
echo "dashboard queries parse as PromQL"

# ---- 6. optional tools -------------------------------------------------------------------------
step "optional: docker compose config, kubectl kustomize"
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose.yaml config -q || die "docker compose config: deploy/compose.yaml"
  echo "docker compose config: ok"
else
  echo "docker compose not available: skipped (check_deploy.py checked the file)"
fi
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/k8s > "$work/k8s.yaml" || die "kubectl kustomize deploy/k8s"
  echo "kubectl kustomize: $(grep -c '^kind:' "$work/k8s.yaml") objects"
else
  echo "kubectl not available: skipped"
fi

step "all deployment checks passed"
