#!/usr/bin/env python3
"""Checks docker/ and deploy/ against the service itself; run by scripts/check_deploy.sh, which
provides the real /metrics exposition of a running `notellm serve` and the configuration reference
generated from `--help`.

Every problem is printed as `FILE: what is wrong`, and the exit status is 1 when there is one.
Needs Python 3.8+ and PyYAML (check_deploy.sh installs it when missing).

What is checked:
  metrics     every notellm_* name in the dashboard and the alert rules is a series of the real
              /metrics (histograms as _bucket/_sum/_count); every label in a selector, a
              `by`/`on` clause or a legend exists on the service's metrics (or is a target label
              such as instance/job), and a fixed label value (route="...", queue="...") is one
              the service exports
  dashboard   JSON, uid/title, unique panel ids, grid positions, datasource through the
              `datasource` variable, variables defined, the required panels (request rate and
              latency by route, queue depth, batch size, inference time, index size); every
              query is also written out as a recording rule for `promtool check rules`
  alerts      the required alerts (error rate, p99 latency, queue saturation, snapshot age,
              readiness), severity and summary on each
  prometheus  rule_files resolve; the notellm scrape target is the compose service and port
  compose     services, build files, bind-mount sources, named volumes, depends_on, the database
              URL against the postgres service, ports against NOTELLM_LISTEN, Grafana's
              provisioning against the mounted dashboard and the Prometheus service
  k8s         apiVersion/kind/metadata.name on every object, the kustomization's files, probes'
              paths and ports against the container port, Secret and ConfigMap keys and names,
              the PVC, volumes and mounts, the GPU request, selectors of Service/PDB/
              ServiceMonitor against the pod labels, the scrape annotations
  docker      stages, non-root USER, HEALTHCHECK on /healthz, EXPOSE against the listen port,
              ENTRYPOINT/CMD, cache mounts, the cuda feature, COPY sources
  everywhere  every NOTELLM_* variable named in these files is one the binary reads; the data
              directory, the port and the image name agree across Docker, compose and Kubernetes
"""

import argparse
import difflib
import json
import os
import re
import shlex
import sys
from urllib.parse import urlparse

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
DASHBOARD = os.path.join(DEPLOY, "grafana", "notellm.json")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yml")
PROMETHEUS = os.path.join(DEPLOY, "prometheus", "prometheus.yml")
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
GRAFANA_PROV = os.path.join(DEPLOY, "grafana", "provisioning")
DOCKERFILES = [os.path.join(ROOT, "docker", "Dockerfile"), os.path.join(ROOT, "docker", "Dockerfile.cuda")]

# Labels Prometheus attaches at scrape time (static, Kubernetes pod/service discovery).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "service", "endpoint", "node"}
# Variables the binary reads besides its flags' (docs/configuration.md lists them).
EXTRA_ENV = {"NOTELLM_CACHE", "NOTELLM_PYTHON"}
# Labels whose values depend on traffic: their values are not checked against one scrape.
DYNAMIC_LABELS = {"status", "method", "le", "version", "model_version", "store"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__range_ms"}

errors = []


def rel(path):
    return os.path.relpath(path, ROOT)


def err(path, msg):
    errors.append(f"{rel(path)}: {msg}")


def load_yaml_docs(path):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        err(path, f"not valid YAML: {e}")
        return []


def load_yaml(path):
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        if docs:
            err(path, f"expected one YAML document, found {len(docs)}")
        return None
    return docs[0]


# ---------------------------------------------------------------------------------------------
# The service's /metrics


class Exposition:
    """Series names, their label names and the label values seen, from the text format."""

    def __init__(self, text):
        self.types = {}
        self.series = {}  # sample name -> set of label names
        self.values = {}  # label name -> set of values
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                self.types[name] = kind
                continue
            if not line or line.startswith("#"):
                continue
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
            if not m:
                continue
            labels = self.series.setdefault(m.group(1), set())
            for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""):
                labels.add(k)
                self.values.setdefault(k, set()).add(v)
        # A histogram or summary with no sample yet still names its series.
        for name, kind in self.types.items():
            if kind == "histogram":
                for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set())):
                    self.series.setdefault(name + suffix, set())
                    self.series[name + suffix] |= extra
            else:
                self.series.setdefault(name, set())

    def label_names(self):
        names = set()
        for labels in self.series.values():
            names |= labels
        return names


# ---------------------------------------------------------------------------------------------
# PromQL, as far as these checks need it


def split_selectors(expr):
    """(metric name, [(label, op, value)]) for every `notellm_*` selector of a PromQL expression."""
    out = []
    for m in re.finditer(r"\b(notellm_[a-zA-Z0-9_:]*)", expr):
        name, i = m.group(1), m.end()
        while i < len(expr) and expr[i] == " ":
            i += 1
        matchers = []
        if i < len(expr) and expr[i] == "{":
            body, _ = read_braces(expr, i)
            for lm in re.finditer(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?', body):
                matchers.append((lm.group(1), lm.group(2), lm.group(3)))
        out.append((name, matchers))
    return out


def read_braces(s, i):
    """The text between s[i] == '{' and its closing brace, skipping quoted strings."""
    j, quote = i + 1, None
    while j < len(s):
        c = s[j]
        if quote:
            if c == "\\":
                j += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c == "}":
            return s[i + 1 : j], j
        j += 1
    return s[i + 1 :], len(s)


def grouping_labels(expr):
    names = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        names |= {n.strip() for n in m.group(1).split(",") if n.strip()}
    return names


def check_expr(path, where, expr, expo, grafana=False):
    """Metric names and labels of one expression against the exposition."""
    known_labels = expo.label_names() | TARGET_LABELS
    names = []
    for name, matchers in split_selectors(expr):
        names.append(name)
        if name not in expo.series:
            near = difflib.get_close_matches(name, list(expo.series), n=3, cutoff=0.7)
            err(
                path,
                f"{where}: metric {name} is not exported by the service"
                + (f" (near: {', '.join(near)})" if near else ""),
            )
            continue
        have = expo.series[name] | TARGET_LABELS
        for label, op, value in matchers:
            if label == "__name__":
                continue
            if label not in have:
                err(
                    path,
                    f"{where}: {name} has no label '{label}' (it has: {', '.join(sorted(expo.series[name])) or 'none'})",
                )
                continue
            if label in TARGET_LABELS or label in DYNAMIC_LABELS or (grafana and "$" in value):
                continue
            seen = expo.values.get(label, set())
            if op == "=" and value not in seen:
                err(
                    path,
                    f"{where}: {label}=\"{value}\" is not a value the service exports (it has: {', '.join(sorted(seen))})",
                )
            elif op == "=~":
                try:
                    rx = re.compile(value.replace("\\\\", "\\"))
                except re.error as e:
                    err(path, f"{where}: bad regex {value!r}: {e}")
                    continue
                if not any(rx.fullmatch(v) for v in seen):
                    err(
                        path,
                        f"{where}: {label}=~\"{value}\" matches none of the exported values ({', '.join(sorted(seen))})",
                    )
    for label in grouping_labels(expr):
        if label not in known_labels and label != "le":
            err(path, f"{where}: grouping label '{label}' is on no notellm metric")
    return names


# ---------------------------------------------------------------------------------------------
# Dashboard


def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def promql_for_promtool(expr):
    """Grafana's variables replaced by values promtool can parse."""
    expr = re.sub(r"\$__rate_interval|\$__interval|\$__range|\$\{__rate_interval\}", "5m", expr)
    return re.sub(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?", ".*", expr)


def check_dashboard(expo, rules_out, provisioned_uids):
    path = DASHBOARD
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        err(path, f"not valid JSON: {e}")
        return set()
    for key in ("uid", "title", "panels", "schemaVersion"):
        if not dash.get(key):
            err(path, f"missing '{key}'")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    used, ids, records = set(), set(), []

    def check_vars(where, text):
        for v in re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", text):
            if v not in variables and v not in GRAFANA_BUILTINS:
                err(path, f"{where}: variable ${v} is not defined in templating")

    def check_datasource(where, ds):
        if not isinstance(ds, dict) or ds.get("type") != "prometheus":
            err(path, f"{where}: datasource must be {{type: prometheus, uid: ...}}, is {ds!r}")
        elif ds.get("uid") != "${datasource}" and ds.get("uid") not in provisioned_uids:
            err(path, f"{where}: datasource uid {ds.get('uid')!r} is neither ${{datasource}} nor a provisioned one")
        else:
            check_vars(where, ds.get("uid", ""))

    for name, v in variables.items():
        where = f"variable {name}"
        if v.get("type") == "query":
            check_datasource(where, v.get("datasource"))
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            if not q:
                err(path, f"{where}: empty query")
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", q.strip())
            inner = m.group(1) if m else q
            used.update(check_expr(path, where, inner, expo, grafana=True))
            if m and m.group(2) not in expo.label_names() | TARGET_LABELS:
                err(path, f"{where}: label {m.group(2)} is on no notellm metric")
    for p in walk_panels(dash.get("panels")):
        pid, title = p.get("id"), p.get("title", "?")
        where = f"panel {pid} '{title}'"
        if pid in ids:
            err(path, f"{where}: duplicate panel id")
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g.get("x", 0) + g.get("w", 0) > 24:
            err(path, f"{where}: bad gridPos {g}")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            err(path, f"{where}: no queries")
        check_datasource(where, p.get("datasource"))
        for t in targets:
            tw = f"{where} query {t.get('refId')}"
            expr = t.get("expr", "")
            if not expr.strip():
                err(path, f"{tw}: empty expr")
                continue
            check_datasource(tw, t.get("datasource", p.get("datasource")))
            check_vars(tw, expr)
            used.update(check_expr(path, tw, expr, expo, grafana=True))
            for label in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", t.get("legendFormat", "")):
                if label not in expo.label_names() | TARGET_LABELS:
                    err(path, f"{tw}: legend uses label '{label}', which no notellm metric has")
            records.append(
                {
                    "record": f"dashboard_check:panel_{pid}_{t.get('refId', 'x')}".lower(),
                    "expr": promql_for_promtool(expr),
                }
            )
    required = {
        "request rate by route": "notellm_http_requests_total",
        "latency by route": "notellm_http_request_duration_seconds_bucket",
        "queue depth": "notellm_queue_depth",
        "batch sizes": "notellm_batch_size_bucket",
        "inference time": "notellm_inference_duration_seconds_bucket",
        "index size": "notellm_notes_indexed",
    }
    for what, metric in required.items():
        if metric not in used:
            err(path, f"no panel shows {what} ({metric})")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard_check", "rules": records}]}, f, sort_keys=False)
    return used


# ---------------------------------------------------------------------------------------------
# Alerts and Prometheus


def check_alerts(expo):
    path = ALERTS
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        return set()
    used, names = set(), set()
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            where = f"rule {name}"
            if name in names:
                err(path, f"{where}: duplicate name")
            names.add(name)
            used.update(check_expr(path, where, r.get("expr", ""), expo))
            if r.get("alert"):
                if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    err(path, f"{where}: labels.severity must be critical, warning or info")
                if not r.get("annotations", {}).get("summary"):
                    err(path, f"{where}: no annotations.summary")
    # The list: error rate, p99 latency, queue saturation, snapshot age, readiness.
    for what, metric, label in (
        ("error rate", "notellm_http_requests_total", 'status=~"5..'),
        ("p99 latency", "notellm_http_request_duration_seconds_bucket", "histogram_quantile(0.99"),
        ("queue saturation", "notellm_queue_depth", ""),
        ("snapshot age", "notellm_snapshot_age_seconds", ""),
        ("readiness", "notellm_http_requests_total", 'route="/readyz"'),
    ):
        ok = any(
            metric in r.get("expr", "") and label in r.get("expr", "")
            for g in doc.get("groups", [])
            for r in g.get("rules", [])
            if r.get("alert")
        )
        if not ok:
            err(path, f"no alert on {what} ({metric})")
    return used


def check_prometheus(compose):
    path = PROMETHEUS
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        return
    for rf in doc.get("rule_files", []):
        if not os.path.exists(os.path.join(os.path.dirname(path), rf)):
            err(path, f"rule_files: {rf} does not exist beside the file")
    jobs = {j.get("job_name"): j for j in doc.get("scrape_configs", [])}
    job = jobs.get("notellm")
    if not job:
        err(path, "no scrape job 'notellm' (the alerts' up{job=\"notellm\"} needs it)")
        return
    if job.get("metrics_path", "/metrics") != "/metrics":
        err(path, "job notellm: metrics_path must be /metrics")
    targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    svc = (compose or {}).get("services", {}).get("notellm", {})
    port = listen_port(env_of_compose(svc).get("NOTELLM_LISTEN", ""))
    if f"notellm:{port}" not in targets:
        err(path, f"job notellm: targets {targets} do not include the compose service notellm:{port}")


# ---------------------------------------------------------------------------------------------
# Environment variables, ports, images


def env_names(reference_text):
    return set(re.findall(r"\[env:\s+(NOTELLM_[A-Z0-9_]+)", reference_text)) | EXTRA_ENV


def check_env_name(path, where, name, valid):
    if name.startswith("NOTELLM_") and name not in valid:
        err(path, f"{where}: {name} is not a variable notellm reads (see docs/configuration.md)")


def listen_port(listen):
    m = re.search(r":(\d+)$", str(listen))
    return int(m.group(1)) if m else None


def env_of_compose(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: str(v) for k, v in env.items()}


def image_parts(image):
    """('notellm', '0.1.0') from 'registry/x/notellm:0.1.0'."""
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    return name.split("/")[-1], tag


# ---------------------------------------------------------------------------------------------
# Compose and Grafana provisioning


def check_compose(valid_env, facts):
    path = COMPOSE
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        return None
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    for need in ("postgres", "notellm", "prometheus", "grafana"):
        if need not in services:
            err(path, f"no service '{need}'")
    base = os.path.dirname(path)
    for name, svc in services.items():
        where = f"service {name}"
        if not svc.get("image") and not svc.get("build"):
            err(path, f"{where}: neither image nor build")
        b = svc.get("build")
        if isinstance(b, dict):
            ctx = os.path.join(base, b.get("context", "."))
            if not os.path.isdir(ctx):
                err(path, f"{where}: build context {b.get('context')} does not exist")
            elif not os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))):
                err(path, f"{where}: dockerfile {b.get('dockerfile')} does not exist in the context")
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")):
                if not os.path.exists(os.path.join(base, src)):
                    err(path, f"{where}: bind mount source {src} does not exist")
            elif src not in volumes:
                err(path, f"{where}: named volume {src} is not declared under volumes")
        deps = svc.get("depends_on") or []
        for d in deps if isinstance(deps, list) else deps.keys():
            if d not in services:
                err(path, f"{where}: depends_on {d}, which is no service")
        for k in env_of_compose(svc):
            check_env_name(path, where, k, valid_env)
    n = services.get("notellm", {})
    env = env_of_compose(n)
    port = listen_port(env.get("NOTELLM_LISTEN", ""))
    if port is None:
        err(path, "service notellm: NOTELLM_LISTEN must be set to <addr>:<port>")
    facts["ports"].append((path, "compose NOTELLM_LISTEN", port))
    published = [str(p).split(":")[-1] for p in n.get("ports", [])]
    if str(port) not in published:
        err(path, f"service notellm: ports {n.get('ports')} do not publish the listen port {port}")
    hc = " ".join(n.get("healthcheck", {}).get("test", []))
    if f":{port}/readyz" not in hc and f":{port}/healthz" not in hc:
        err(path, f"service notellm: healthcheck {hc!r} does not probe /readyz or /healthz on port {port}")
    data_dir = env.get("NOTELLM_DATA_DIR")
    mounts = [v.split(":")[1] for v in n.get("volumes", []) if isinstance(v, str) and ":" in v]
    if data_dir not in mounts:
        err(path, f"service notellm: NOTELLM_DATA_DIR {data_dir} is not a mounted volume ({mounts})")
    facts["data_dirs"].append((path, "compose NOTELLM_DATA_DIR", data_dir))
    facts["images"].append((path, "compose notellm", n.get("image", ""), "cpu"))
    # The database URL against the postgres service.
    url = env.get("DATABASE_URL") or env.get("NOTELLM_DATABASE_URL")
    pg = env_of_compose(services.get("postgres", {}))
    if not url:
        err(path, "service notellm: no DATABASE_URL")
    else:
        u = urlparse(url)
        if u.scheme != "postgres" or u.hostname != "postgres" or (u.port or 5432) != 5432:
            err(path, f"service notellm: DATABASE_URL {url} does not point at the postgres service")
        if u.username != pg.get("POSTGRES_USER") or u.path.lstrip("/") != pg.get("POSTGRES_DB"):
            err(path, "service notellm: DATABASE_URL user/database differ from POSTGRES_USER/POSTGRES_DB")
        if u.password != pg.get("POSTGRES_PASSWORD"):
            err(path, "service notellm: DATABASE_URL password differs from POSTGRES_PASSWORD")
    if "postgres" not in (n.get("depends_on") or {}):
        err(path, "service notellm: must depend on postgres")
    # Prometheus: this folder's config mounted where the command reads it.
    prom = services.get("prometheus", {})
    cfg = next(
        (a.split("=", 1)[1] for a in prom.get("command", []) if a.startswith("--config.file=")),
        "/etc/prometheus/prometheus.yml",
    )
    mapped = mount_source(prom, os.path.dirname(cfg))
    if not mapped or not os.path.isfile(os.path.join(base, mapped, os.path.basename(cfg))):
        err(path, f"service prometheus: {cfg} is not mounted from deploy/prometheus")
    # Grafana: provisioning folder, the dashboard file where the provider looks.
    gr = services.get("grafana", {})
    if os.path.normpath(os.path.join(base, mount_source(gr, "/etc/grafana/provisioning") or "x")) != GRAFANA_PROV:
        err(path, "service grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning")
    dash_mount = next(
        (
            v.split(":")[1]
            for v in gr.get("volumes", [])
            if isinstance(v, str) and os.path.normpath(os.path.join(base, v.split(":")[0])) == DASHBOARD
        ),
        None,
    )
    if not dash_mount:
        err(path, "service grafana: deploy/grafana/notellm.json is not mounted")
    return doc, dash_mount


def mount_source(svc, target):
    for v in svc.get("volumes", []):
        if isinstance(v, str) and v.count(":") >= 1 and v.split(":")[1] == target:
            return v.split(":")[0]
    return None


def check_grafana_provisioning(compose_doc, dash_mount):
    uids = set()
    ds_dir = os.path.join(GRAFANA_PROV, "datasources")
    db_dir = os.path.join(GRAFANA_PROV, "dashboards")
    prom_port = 9090
    for fn in sorted(os.listdir(ds_dir)) if os.path.isdir(ds_dir) else []:
        p = os.path.join(ds_dir, fn)
        doc = load_yaml(p) or {}
        if doc.get("apiVersion") != 1:
            err(p, "apiVersion must be 1")
        for ds in doc.get("datasources", []):
            uids.add(ds.get("uid"))
            if ds.get("type") == "prometheus":
                u = urlparse(ds.get("url", ""))
                if u.hostname not in (compose_doc or {}).get("services", {}) or u.port != prom_port:
                    err(
                        p,
                        f"datasource {ds.get('name')}: url {ds.get('url')} is not the compose prometheus service on {prom_port}",
                    )
    if not uids:
        err(ds_dir, "no datasource provisioned")
    paths = []
    for fn in sorted(os.listdir(db_dir)) if os.path.isdir(db_dir) else []:
        p = os.path.join(db_dir, fn)
        doc = load_yaml(p) or {}
        if doc.get("apiVersion") != 1:
            err(p, "apiVersion must be 1")
        paths += [pr.get("options", {}).get("path") for pr in doc.get("providers", [])]
    if dash_mount and os.path.dirname(dash_mount) not in paths:
        err(db_dir, f"no dashboard provider reads {os.path.dirname(dash_mount)}, where compose mounts notellm.json")
    # The dashboard's `datasource` variable defaults to a provisioned datasource.
    try:
        with open(DASHBOARD) as f:
            dash = json.load(f)
        for v in dash.get("templating", {}).get("list", []):
            if v.get("type") == "datasource" and v.get("current", {}).get("value") not in uids:
                err(
                    DASHBOARD,
                    f"variable {v.get('name')}: default {v.get('current', {}).get('value')!r} is no provisioned datasource uid {sorted(uids)}",
                )
    except (OSError, ValueError):
        pass
    return uids


# ---------------------------------------------------------------------------------------------
# Kubernetes


def check_k8s(valid_env, facts):
    objects = {}
    kust_path = os.path.join(K8S, "kustomization.yaml")
    kust = load_yaml(kust_path) or {}
    files = sorted(f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")))
    for fn in files:
        p = os.path.join(K8S, fn)
        for d in load_yaml_docs(p):
            if not isinstance(d, dict):
                err(p, "a document is not a mapping")
                continue
            if not d.get("apiVersion") or not d.get("kind"):
                err(p, "apiVersion and kind are required")
                continue
            if d["kind"] == "Kustomization":
                continue
            name = (d.get("metadata") or {}).get("name")
            if not name:
                err(p, f"{d['kind']}: metadata.name is required")
                continue
            if (d["kind"], name) in objects:
                err(p, f"{d['kind']}/{name} defined twice")
            objects[(d["kind"], name)] = (p, d)
    for r in kust.get("resources", []):
        if not os.path.isfile(os.path.join(K8S, r)):
            err(kust_path, f"resource {r} does not exist")
    ns = kust.get("namespace")
    if ns and ("Namespace", ns) not in objects:
        err(kust_path, f"namespace {ns} has no Namespace object")

    def get(kind, name):
        return objects.get((kind, name), (None, None))[1]

    deployments = [(p, d) for (k, _), (p, d) in objects.items() if k == "Deployment"]
    if not deployments:
        err(K8S, "no Deployment")
    for p, d in deployments:
        tmpl = d.get("spec", {}).get("template", {})
        pod_labels = tmpl.get("metadata", {}).get("labels", {})
        sel = d.get("spec", {}).get("selector", {}).get("matchLabels", {})
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            err(p, "spec.selector.matchLabels does not match the pod template's labels")
        spec = tmpl.get("spec", {})
        volumes = {v.get("name"): v for v in spec.get("volumes", [])}
        containers = spec.get("containers", [])
        if not containers:
            err(p, "no containers")
        for c in containers:
            cw = f"container {c.get('name')}"
            ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports", [])}
            env = {}
            for ef in c.get("envFrom", []):
                cm = ef.get("configMapRef", {}).get("name")
                sr = ef.get("secretRef", {}).get("name")
                if cm:
                    obj = get("ConfigMap", cm)
                    if obj is None:
                        err(p, f"{cw}: envFrom ConfigMap {cm} is not defined in deploy/k8s")
                    else:
                        env.update({k: str(v) for k, v in (obj.get("data") or {}).items()})
                if sr and get("Secret", sr) is None:
                    err(p, f"{cw}: envFrom Secret {sr} is not defined in deploy/k8s")
            for e in c.get("env", []):
                check_env_name(p, cw, e.get("name", ""), valid_env)
                vf = e.get("valueFrom", {})
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                if ref:
                    kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                    obj = get(kind, ref.get("name"))
                    if obj is None:
                        err(
                            p,
                            f"{cw}: env {e.get('name')} reads {kind} {ref.get('name')}, which is not defined in deploy/k8s",
                        )
                    else:
                        keys = set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())
                        if ref.get("key") not in keys:
                            err(
                                p,
                                f"{cw}: env {e.get('name')} reads key {ref.get('key')} of {kind} {ref.get('name')}, which has {sorted(keys)}",
                            )
                else:
                    env[e.get("name")] = str(e.get("value", ""))
            for k in env:
                check_env_name(p, cw, k, valid_env)
            listen = listen_port(env.get("NOTELLM_LISTEN", ""))
            if listen is None:
                err(p, f"{cw}: NOTELLM_LISTEN is not set (the image's default is 0.0.0.0:8080; set it explicitly)")
            if listen not in ports.values():
                err(p, f"{cw}: listen port {listen} is not a containerPort ({ports})")
            facts["ports"].append((p, "k8s NOTELLM_LISTEN", listen))
            # With --probe-listen the probes go to their own port (see docs/operations.md).
            probe_listen = env.get("NOTELLM_PROBE_LISTEN")
            probe_target = listen_port(probe_listen) if probe_listen else listen
            if probe_listen:
                if probe_target is None:
                    err(p, f"{cw}: NOTELLM_PROBE_LISTEN {probe_listen!r} names no port")
                elif probe_target == listen:
                    err(p, f"{cw}: NOTELLM_PROBE_LISTEN uses the listen port {listen}")
                elif probe_target not in ports.values():
                    err(p, f"{cw}: probe listen port {probe_target} is not a containerPort ({ports})")

            def probe_port(probe, what, path_want):
                if not probe:
                    err(p, f"{cw}: no {what}")
                    return
                hg = probe.get("httpGet", {})
                port = hg.get("port")
                port = ports.get(port) if isinstance(port, str) else port
                if port != probe_target:
                    err(p, f"{cw}: {what} port {hg.get('port')} is not the probe port {probe_target}")
                if hg.get("path") not in path_want:
                    err(p, f"{cw}: {what} path {hg.get('path')} should be {' or '.join(path_want)}")

            probe_port(c.get("livenessProbe"), "livenessProbe", ["/healthz"])
            probe_port(c.get("readinessProbe"), "readinessProbe", ["/readyz"])
            probe_port(c.get("startupProbe"), "startupProbe", ["/readyz", "/healthz"])
            sp = c.get("startupProbe") or {}
            budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
            if budget < 300:
                err(p, f"{cw}: startupProbe allows {budget} s; model load and an index rebuild need minutes (>= 300 s)")
            res = c.get("resources", {})
            if "nvidia.com/gpu" not in res.get("limits", {}) or "nvidia.com/gpu" not in res.get("requests", {}):
                err(p, f"{cw}: resources must request and limit nvidia.com/gpu")
            if env.get("NOTELLM_DEVICE", "").startswith("cpu"):
                err(p, f"{cw}: NOTELLM_DEVICE is cpu on a GPU pod")
            mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts", [])}
            for mp, vn in mounts.items():
                if vn not in volumes:
                    err(p, f"{cw}: volumeMount {mp} uses volume {vn}, which is not defined")
            data_dir = env.get("NOTELLM_DATA_DIR")
            vol = volumes.get(mounts.get(data_dir), {})
            claim = vol.get("persistentVolumeClaim", {}).get("claimName")
            following = env.get("NOTELLM_FOLLOW", "").lower() in ("true", "1", "yes")
            if claim:
                if get("PersistentVolumeClaim", claim) is None:
                    err(p, f"{cw}: PersistentVolumeClaim {claim} is not defined in deploy/k8s")
            elif not (following and "emptyDir" in vol):
                # Snapshots alone (Postgres) may live in a pod's emptyDir; the SQLite store may not.
                err(p, f"{cw}: NOTELLM_DATA_DIR {data_dir} is neither a PersistentVolumeClaim nor (replica mode) an emptyDir")
            replicas = d.get("spec", {}).get("replicas", 1)
            if replicas > 1:
                if not following:
                    err(p, f"{cw}: replicas > 1 without NOTELLM_FOLLOW=true serve stale /related for notes written through another replica")
                if "DATABASE_URL" not in env and "DATABASE_URL" not in {e.get("name") for e in c.get("env", [])}:
                    err(p, f"{cw}: replicas > 1 need the shared Postgres store (DATABASE_URL)")
                strat = d.get("spec", {}).get("strategy", {})
                if strat.get("type") != "RollingUpdate" or str(strat.get("rollingUpdate", {}).get("maxUnavailable")) != "0":
                    err(p, "replicas > 1: strategy must be RollingUpdate with maxUnavailable 0 (gated by readiness)")
                for (kind, name), (op, o) in objects.items():
                    if kind == "PodDisruptionBudget":
                        ma = o.get("spec", {}).get("minAvailable")
                        if not isinstance(ma, int) or not 1 <= ma < replicas:
                            err(op, f"PodDisruptionBudget/{name}: minAvailable {ma} must be 1..{replicas - 1} for {replicas} replicas")
            facts["data_dirs"].append((p, "k8s NOTELLM_DATA_DIR", data_dir))
            facts["images"].append((p, f"k8s {cw}", c.get("image", ""), "cuda"))
            ann = tmpl.get("metadata", {}).get("annotations", {})
            if ann.get("prometheus.io/scrape") == "true":
                if (
                    str(ann.get("prometheus.io/port")) != str(listen)
                    or ann.get("prometheus.io/path", "/metrics") != "/metrics"
                ):
                    err(p, f"pod annotations: prometheus.io/port|path must be {listen} and /metrics")
            sc = spec.get("securityContext", {})
            if not sc.get("runAsNonRoot") or sc.get("runAsUser", 0) == 0:
                err(p, "pod securityContext must run as a non-root user")
        for (kind, name), (op, o) in objects.items():
            if kind in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
                s = o.get("spec", {}).get("selector", {})
                s = s.get("matchLabels", s) if kind != "Service" else s
                target = pod_labels
                if kind == "ServiceMonitor":
                    svc = [sv for (k2, _), (_, sv) in objects.items() if k2 == "Service"]
                    target = svc[0].get("metadata", {}).get("labels", {}) if svc else {}
                if not s or any(target.get(k) != v for k, v in s.items()):
                    err(
                        op,
                        f"{kind}/{name}: selector {s} does not match {'the Service labels' if kind == 'ServiceMonitor' else 'the pod labels'}",
                    )
            if kind == "Service":
                for sp_ in o.get("spec", {}).get("ports", []):
                    tp = sp_.get("targetPort")
                    all_ports = {
                        pt.get("name"): pt.get("containerPort") for c in containers for pt in c.get("ports", [])
                    }
                    if (isinstance(tp, str) and tp not in all_ports) or (
                        isinstance(tp, int) and tp not in all_ports.values()
                    ):
                        err(op, f"Service/{name}: targetPort {tp} is not a container port ({all_ports})")
            if kind == "ServiceMonitor":
                svc_ports = {
                    sp_.get("name")
                    for (k2, _), (_, sv) in objects.items()
                    if k2 == "Service"
                    for sp_ in sv.get("spec", {}).get("ports", [])
                }
                for ep in o.get("spec", {}).get("endpoints", []):
                    if ep.get("port") not in svc_ports:
                        err(
                            op,
                            f"ServiceMonitor/{name}: endpoint port {ep.get('port')} is not a Service port name ({svc_ports})",
                        )
                    if ep.get("path", "/metrics") != "/metrics":
                        err(op, f"ServiceMonitor/{name}: path must be /metrics")
    for kind in ("Service", "PodDisruptionBudget", "Secret", "ConfigMap"):
        if not any(k == kind for k, _ in objects):
            err(K8S, f"no {kind}")
    # The kustomization's image override names the Deployment's image.
    for im in kust.get("images", []):
        imgs = [i for (f, _, i, _) in facts["images"] if f.startswith(K8S) and image_parts(i)[0] == im.get("name")]
        if not imgs:
            err(kust_path, f"images: {im.get('name')} is no container's image")
        elif im.get("newTag") and any(image_parts(i)[1] != im["newTag"] for i in imgs):
            err(kust_path, f"images: newTag {im['newTag']} differs from the Deployment's {imgs}")


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_instructions(path):
    with open(path) as f:
        text = f.read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, rest = s.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(path, valid_env, facts):
    if not os.path.isfile(path):
        err(path, "missing")
        return
    if not os.path.isfile(path + ".dockerignore"):
        err(path, f"no {os.path.basename(path)}.dockerignore beside it (the context would include target/)")
    ins = dockerfile_instructions(path)
    stages, final, env, args = [], [], {}, {}
    for word, rest in ins:
        if word == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append(m.group(2) if m and m.group(2) else None)
            final = []
        final.append((word, rest))
        if word == "ARG":
            k, _, v = rest.partition("=")
            args[k] = v
        if word in ("COPY", "ADD"):
            m = re.search(r"--from=(\S+)", rest)
            if m and m.group(1) not in stages and "/" not in m.group(1) and ":" not in m.group(1):
                err(path, f"COPY --from={m.group(1)}: no such stage before it")
            if not m:
                srcs = [a for a in shlex.split(rest) if not a.startswith("--")][:-1]
                for s in srcs:
                    if not os.path.exists(os.path.join(ROOT, s)):
                        err(path, f"COPY source {s} does not exist in the build context")
    text = open(path).read()
    runs = " ".join(r for w, r in ins if w == "RUN")
    if "MODEL" not in args:
        err(path, "no build argument MODEL (bake the model in, or none)")
    if "--mount=type=cache" not in runs:
        err(path, "no cargo cache mount (--mount=type=cache)")
    if "cargo build --release" not in runs:
        err(path, "no `cargo build --release`")
    if path.endswith(".cuda") and not re.search(r"cargo build [^&;]*--features cuda", runs):
        err(path, "the CUDA image must build with --features cuda")
    fw = [w for w, _ in final]
    for word, rest in final:
        if word == "ENV":
            for k, v in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest):
                env[k] = v.strip('"')
                check_env_name(path, "ENV", k, valid_env)
    users = [r for w, r in final if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        err(path, "the final stage must switch to a non-root USER")
    hc = " ".join(r for w, r in final if w == "HEALTHCHECK")
    if "/healthz" not in hc:
        err(path, "no HEALTHCHECK on /healthz in the final stage")
    port = listen_port(env.get("NOTELLM_LISTEN", ""))
    exposed = [int(x.split("/")[0]) for w, r in final if w == "EXPOSE" for x in r.split()]
    if port is None or port not in exposed:
        err(path, f"EXPOSE {exposed} does not include the NOTELLM_LISTEN port {port}")
    facts["ports"].append((path, "NOTELLM_LISTEN", port))
    data_dir = env.get("NOTELLM_DATA_DIR")
    vols = " ".join(r for w, r in final if w == "VOLUME")
    if not data_dir or data_dir not in vols:
        err(path, f"NOTELLM_DATA_DIR {data_dir} is not a VOLUME")
    facts["data_dirs"].append((path, "NOTELLM_DATA_DIR", data_dir))
    if not env.get("NOTELLM_MODEL"):
        err(path, "NOTELLM_MODEL is not set: without it the service would try pip at run time")
    ep = next((r for w, r in reversed(final) if w == "ENTRYPOINT"), "")
    cmd = next((r for w, r in reversed(final) if w == "CMD"), "")
    if json.loads(ep or "[]")[:1] != ["notellm"] or "serve" not in cmd:
        err(path, 'ENTRYPOINT must be ["notellm"] and CMD ["serve"]')
    if "STOPSIGNAL" in fw and "SIGTERM" not in " ".join(r for w, r in final if w == "STOPSIGNAL"):
        err(path, "STOPSIGNAL must be SIGTERM (graceful drain and snapshot)")
    device = env.get("NOTELLM_DEVICE", "")
    if path.endswith(".cuda") != device.startswith("cuda"):
        err(path, f"NOTELLM_DEVICE {device} does not fit this image")
    # The tags the header comment builds: notellm:<tag> and notellm:<tag>-cuda.
    for tag in re.findall(r"-t (notellm:\S+)", text):
        facts["images"].append((path, "docker build -t", tag, "cuda" if path.endswith(".cuda") else "cpu"))


def check_consistency(facts):
    ports = {p for (_, _, p) in facts["ports"]}
    if len(ports) > 1:
        err(DEPLOY, "the listen port differs: " + "; ".join(f"{rel(f)} {w}={p}" for f, w, p in facts["ports"]))
    dirs = {d for (_, _, d) in facts["data_dirs"]}
    if len(dirs) > 1:
        err(DEPLOY, "the data directory differs: " + "; ".join(f"{rel(f)} {w}={d}" for f, w, d in facts["data_dirs"]))
    # Images: one repository name, tags <version> (CPU) and <version>-cuda (CUDA), one version.
    versions = set()
    for f, where, image, flavour in facts["images"]:
        name, tag = image_parts(image)
        if name != "notellm":
            err(f, f"{where}: image {image} should be named notellm")
            continue
        if flavour == "cuda" and not tag.startswith(tuple(v + "-cuda" for v in [tag.split("-cuda")[0]])):
            err(f, f"{where}: the GPU image's tag {tag} should end in -cuda (<version>-cuda)")
        if flavour == "cpu" and "cuda" in tag:
            err(f, f"{where}: the CPU image's tag {tag} says cuda")
        versions.add(tag.split("-")[0])
    if len(versions) > 1:
        err(
            DEPLOY,
            "image tags name different versions: " + "; ".join(f"{rel(f)} {w}: {i}" for f, w, i, _ in facts["images"]),
        )


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metrics", required=True, help="/metrics text of a running notellm serve")
    ap.add_argument("--config-reference", required=True, help="docs/configuration.md as generated now")
    ap.add_argument("--dashboard-rules", required=True, help="where to write the dashboard's queries as rules")
    a = ap.parse_args()
    with open(a.metrics) as f:
        expo = Exposition(f.read())
    if not any(n.startswith("notellm_") for n in expo.series):
        err(a.metrics, "no notellm_* metric in the scrape")
    with open(a.config_reference) as f:
        valid_env = env_names(f.read())
    facts = {"ports": [], "data_dirs": [], "images": []}

    compose = check_compose(valid_env, facts)
    compose_doc, dash_mount = compose if compose else (None, None)
    uids = check_grafana_provisioning(compose_doc, dash_mount)
    used = check_dashboard(expo, a.dashboard_rules, uids)
    used |= check_alerts(expo)
    check_prometheus(compose_doc)
    check_k8s(valid_env, facts)
    for df in DOCKERFILES:
        check_dockerfile(df, valid_env, facts)
    check_consistency(facts)

    families = sorted(n for n, t in expo.types.items() if n.startswith("notellm_"))
    unused = [n for n in families if not any(u == n or u.startswith(n + "_") for u in used)]
    print(f"metrics: {len(families)} notellm_* families exported; dashboard and alerts query {len(used)} series names")
    if unused:
        print("note: exported but on no panel or alert: " + ", ".join(unused))
    if errors:
        print(f"\n{len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print("deploy files: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
