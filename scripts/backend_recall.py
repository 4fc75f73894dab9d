#!/usr/bin/env python3
"""Recall@K of a running service's `GET /related` against exact search in Postgres, run by
`scripts/loadtest.sh backends`:

  backend_recall.py SERVICE_URL DATABASE_URL SCHEMA N SAMPLES K

SAMPLES ids drawn (seed 42) from the load test's n0 .. n<N-1>. For each, the service's top K and
the exact top K by a sequential scan of the store's `vec` column (pgvector's `<=>`, cosine
distance; no index can serve that expression). A returned note counts as found when its score is
at least the exact K-th score (minus 1e-5), so ties at the boundary are not misses. Needs psql and
the `vec` column (written once the store was served with `--index pgvector`)."""
import http.client
import json
import random
import subprocess
import sys
import urllib.parse


def main():
    url, db, schema, n, samples, k = sys.argv[1:7]
    n, samples, k = int(n), int(samples), int(k)
    ids = random.Random(42).sample(range(n), samples)
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    served = {}
    for i in ids:
        c.request("GET", f"/related/n{i}?k={k}")
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"GET /related/n{i}: {r.status} {body[:200]!r}")
        served[f"n{i}"] = [h["score"] for h in json.loads(body)["related"]]
    sql = [f"SET search_path TO {schema}, public;", "SET enable_indexscan = off;", "SET enable_bitmapscan = off;"]
    for i in ids:
        q = f"n{i}"
        sql.append(
            f"SELECT '{q}', 1 - (t.vec <=> q.vec) FROM notes t, (SELECT vec FROM notes WHERE note_id = '{q}') q "
            f"WHERE t.note_id <> '{q}' ORDER BY t.vec <=> q.vec LIMIT {k};")
    out = subprocess.run(["psql", db, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1"],
                         input="\n".join(sql), capture_output=True, text=True, check=True).stdout
    exact = {}
    for line in out.splitlines():
        q, score = line.split("\t")
        exact.setdefault(q, []).append(float(score))
    found = total = 0
    for q, scores in served.items():
        truth = exact.get(q, [])
        if len(truth) < k:
            sys.exit(f"exact search found {len(truth)} neighbours of {q}: is the vec column filled?")
        floor = truth[k - 1] - 1e-5
        found += sum(1 for s in scores[:k] if s >= floor)
        total += k
    print(f"RESULT recall_at_{k}={found / total:.4f} queries={samples}")


if __name__ == "__main__":
    main()
