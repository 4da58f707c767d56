"""The hardening issue's table, run against a live `hfms serve`, with figures.

    python3 bench/hostile.py --base-url http://127.0.0.1:PORT --pid PID [--only NAME,...]

Cases (each prints one JSON line):
  keep_alive   chat and /models/load with hostile keep_alive values; then
               whether /v1/models and /status still answer.
  embeddings   one /v1/embeddings request of 2048 inputs x ~400 words (a
               ~2 MB body): status, seconds, the server's peak RSS (VmHWM)
               before and after; then whether the server keeps computing
               after a client that gives up (client timeout --give-up-s).
  health       /health latency (p50, p99, max) while chat streams and
               embedding batches saturate every core.

Needs only the Python standard library. bench/hostile.sh starts a release
server and runs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import threading
import time
import urllib.parse


def kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


class Client:
    def __init__(self, base: str):
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port

    def request(self, method: str, path: str, body=None, timeout: float = 120.0):
        """(status, parsed body or text) or ("dropped", error)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw.decode("utf-8", "replace")[:200]
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            return "dropped", f"{type(e).__name__}: {e}"
        finally:
            conn.close()


def case_keep_alive(c: Client, args) -> dict:
    out = []
    for ka in [1e300, "nan", "inf", "99999999999999999999d", 1e19, -1e300, "-inf", "1e400"]:
        st, body = c.request(
            "POST",
            "/v1/chat/completions",
            {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "keep_alive": ka},
        )
        after = {p: c.request("GET", p)[0] for p in ["/v1/models", "/status"]}
        out.append({"keep_alive": ka, "status": st, "then": after})
    st, _ = c.request("POST", "/models/load", {"model": "smollm2", "keep_alive": "inf"})
    out.append({"load_keep_alive": "inf", "status": st, "then": {p: c.request("GET", p)[0] for p in ["/v1/models", "/status"]}})
    # Leave the model as it was.
    c.request("POST", "/models/load", {"model": "smollm2", "keep_alive": -1})
    return {"case": "keep_alive", "results": out}


def words(n: int, rng: random.Random) -> str:
    vocab = ["server", "model", "token", "memory", "request", "batch", "vector", "client", "budget", "kernel",
             "matrix", "cache", "queue", "latency", "throughput", "embedding", "sentence", "transformer"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def case_embeddings(c: Client, args) -> dict:
    rng = random.Random(7)
    inputs = [words(400, rng) for _ in range(2048)]
    body = {"model": "all-minilm", "input": inputs}
    size = len(json.dumps(body))
    res = {"case": "embeddings", "body_bytes": size}
    if not args.give_up_only:
        hwm_before = kib(args.pid, "VmHWM")
        rss_before = kib(args.pid, "VmRSS")
        t0 = time.monotonic()
        st, resp = c.request("POST", "/v1/embeddings", body, timeout=args.timeout)
        secs = time.monotonic() - t0
        ok = st == 200 and isinstance(resp, dict) and len(resp.get("data", [])) == 2048
        res.update({
            "status": st,
            "complete": ok,
            "seconds": round(secs, 2),
            "rss_before_mib": round(rss_before / 1024, 1),
            "peak_rss_before_mib": round(hwm_before / 1024, 1),
            "peak_rss_after_mib": round(kib(args.pid, "VmHWM") / 1024, 1),
            "error": None if st == 200 else (resp if isinstance(resp, str) else json.dumps(resp)[:300]),
        })
    # A client that gives up: does the server stop working for it? (A batch
    # already running finishes; the next one is not started.)
    t0 = time.monotonic()
    st2, _ = c.request("POST", "/v1/embeddings", body, timeout=args.give_up_s)
    left = time.monotonic()
    windows = []
    cpu = cpu_seconds(args.pid)
    for _ in range(3):
        time.sleep(5.0)
        now = cpu_seconds(args.pid)
        windows.append(round(now - cpu, 2))
        cpu = now
    res["give_up"] = {
        "client_timeout_s": args.give_up_s,
        "status": st2,
        "client_left_after_s": round(left - t0, 2),
        "server_cpu_s_per_5s_after": windows,
    }
    return res


def case_health(c: Client, args) -> dict:
    stop = threading.Event()

    def chat_load():
        while not stop.is_set():
            conn = http.client.HTTPConnection(c.host, c.port, timeout=120)
            try:
                conn.request(
                    "POST",
                    "/v1/chat/completions",
                    body=json.dumps(
                        {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a long story."}],
                         "max_tokens": 128, "stream": True, "temperature": 0.8}
                    ),
                    headers={"content-type": "application/json"},
                )
                conn.getresponse().read()
            except Exception:
                time.sleep(0.1)
            finally:
                conn.close()

    def embed_load():
        rng = random.Random(threading.get_ident())
        while not stop.is_set():
            c.request("POST", "/v1/embeddings", {"model": "all-minilm", "input": [words(60, rng) for _ in range(32)]})

    threads = [threading.Thread(target=chat_load) for _ in range(8)] + [threading.Thread(target=embed_load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    lat = []
    for _ in range(args.health_probes):
        t0 = time.monotonic()
        s = socket.create_connection((c.host, c.port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        lat.append((time.monotonic() - t0) * 1e3)
        s.close()
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    lat.sort()
    return {
        "case": "health",
        "probes": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
        "max_ms": round(lat[-1], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--only", default="keep_alive,embeddings,health")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--give-up-s", type=float, default=3.0)
    ap.add_argument("--health-probes", type=int, default=200)
    ap.add_argument("--give-up-only", action="store_true", help="embeddings: only the client that gives up")
    args = ap.parse_args()
    c = Client(args.base_url)
    cases = {"keep_alive": case_keep_alive, "embeddings": case_embeddings, "health": case_health}
    for name in args.only.split(","):
        print(json.dumps(cases[name](c, args)), flush=True)


if __name__ == "__main__":
    main()
