#!/usr/bin/env python3
"""Replica figures for docs/benchmarks.md, run by `scripts/loadtest.sh replicas`:

  replica_lag.py A_URL B_URL B_PID WRITES BURST CONC

1. Write-to-visible lag: WRITES notes PUT one at a time on replica A; after each acknowledgement,
   replica B's /readyz is polled until its applied seq reaches the write's seq (B's index then
   holds the note). Lag = B applied it - A acknowledged it.
2. A follower's CPU per applied write: BURST notes PUT on A by CONC writers at once; B's CPU time
   (user + system, /proc/B_PID/stat) from the burst's start until B has applied its last seq,
   divided by the writes, and the same for an idle stretch of equal length (B's heartbeat, polls
   and probes alone) to subtract.

Prints `RESULT ...` lines. Loopback only; standard library only."""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def conn(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def call(c, method, path, body=None, headers=None):
    """One request on a keep-alive connection, reopened once if the server closed it idle."""
    for attempt in (0, 1):
        try:
            c.request(method, path, body, headers or {})
            r = c.getresponse()
            return r, r.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            c.close()
            if attempt:
                raise


def put(c, note_id, i):
    body = json.dumps({
        "title": f"replica lag note {i}",
        "content": f"written on one replica and read on another, number {i} " + "word " * (i % 40),
        "hashtags": ["replicas"],
        "category": "tech",
    })
    r, data = call(c, "PUT", f"/notes/{note_id}", body, {"content-type": "application/json"})
    if r.status not in (200, 201):
        sys.exit(f"PUT {note_id}: {r.status} {data[:200]!r}")
    return json.loads(data)["seq"]


def applied(c):
    _, body = call(c, "GET", "/readyz")
    data = json.loads(body or b"{}")
    return data.get("follow", {}).get("applied_seq", 0)


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def wait_applied(c, seq, limit_s=120, pause_s=0.0):
    deadline = time.monotonic() + limit_s
    while applied(c) < seq:
        if time.monotonic() > deadline:
            sys.exit(f"B never applied seq {seq}")
        time.sleep(pause_s)


def main():
    a_url, b_url, b_pid, writes, burst, conc = sys.argv[1:7]
    writes, burst, conc, b_pid = int(writes), int(burst), int(conc), int(b_pid)
    a, b = conn(a_url), conn(b_url)
    lags = []
    for i in range(writes):
        seq = put(a, f"lag{i}", i)
        acked = time.monotonic()
        wait_applied(b, seq, 30)
        lags.append((time.monotonic() - acked) * 1e3)
    print(f"RESULT lag writes={writes} p50_ms={pct(lags, 50):.2f} p90_ms={pct(lags, 90):.2f} "
          f"p99_ms={pct(lags, 99):.2f} max_ms={max(lags):.2f}")

    seqs, lock = [], threading.Lock()

    def writer(w):
        c = conn(a_url)
        for i in range(w, burst, conc):
            s = put(c, f"burst{i}", i)
            with lock:
                seqs.append(s)

    cpu0, t0 = cpu_s(b_pid), time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_applied(b, max(seqs), pause_s=0.005)
    busy_s, busy_cpu = time.monotonic() - t0, cpu_s(b_pid) - cpu0
    cpu0 = cpu_s(b_pid)
    time.sleep(busy_s)
    idle_cpu = cpu_s(b_pid) - cpu0
    per_write_us = 1e6 * (busy_cpu - idle_cpu) / burst
    print(f"RESULT follower writes={burst} writers={conc} wall_s={busy_s:.2f} writes_per_s={burst / busy_s:.0f} "
          f"follower_cpu_s={busy_cpu:.3f} idle_cpu_s_same_wall={idle_cpu:.3f} "
          f"follower_cpu_us_per_write={per_write_us:.1f}")


if __name__ == "__main__":
    main()
