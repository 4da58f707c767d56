"""Repeat one deterministic request against a server and report the server's
own time for the cache hits (the `ms` of its "request done" log lines) and
the client's round trip.

    python3 bench/cache_hits.py --base-url http://127.0.0.1:PORT --log SERVER.log [--requests 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
import urllib.parse


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--log", required=True, help="the server's JSON log file")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    body = json.dumps({"model": "smollm2", "temperature": 0, "max_tokens": 32,
                       "messages": [{"role": "user", "content": "Write one sentence about caches."}]})
    rids, client_ms, hits = [], [], 0
    for i in range(args.requests + 1):
        rid = f"cachebench-{args.label}-{i}"
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json", "x-request-id": rid})
        r = conn.getresponse()
        r.read()
        dt = (time.perf_counter() - t0) * 1e3
        if i == 0:
            assert r.getheader("x-cache") == "miss", r.getheader("x-cache")
            time.sleep(0.3)  # stored in the background
            continue
        if r.getheader("x-cache") == "hit":
            hits += 1
            rids.append(rid)
            client_ms.append(dt)
    time.sleep(0.5)
    wanted = set(rids)
    server_ms = []
    with open(args.log) as f:
        for line in f:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == "request done" and v.get("span", {}).get("request_id") in wanted:
                server_ms.append(float(v["ms"]))
    print(json.dumps({
        "label": args.label, "requests": args.requests, "hits": hits,
        "server_ms": {"p50": round(statistics.median(server_ms), 3), "p99": round(pct(server_ms, 99), 3),
                      "max": round(max(server_ms), 3)},
        "client_ms": {"p50": round(statistics.median(client_ms), 3), "p99": round(pct(client_ms, 99), 3)},
    }))


if __name__ == "__main__":
    main()
