"""The requests a 60 RPM key gets per minute from two replicas behind HAProxy.

Two `hfms serve` replicas behind Debian's HAProxy (round-robin), a client
sending a steady 4 requests/s through it with one key limited to RPM (60),
for MINUTES (3) minutes; answers counted per minute. Run twice: the
replicas sharing one redis-server (`--redis-url`: one limit), then with
their own in-process limiters (the bug a shared store exists to prevent:
the limit multiplied by the replica count). Both share one SQLite key
database, so the key works on both either way.

The limit is GCRA: a fresh key may spend its minute at once, then one
request per 60 s / RPM. The first minute therefore admits the burst plus a
minute's refill (~2 x RPM); every later minute admits RPM.

    python3 bench/replicas_rpm.py        # needs redis-server and haproxy
    HFMS_BIN=target/fast/hfms MINUTES=2 RPM=60 python3 bench/replicas_rpm.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HFMS = os.environ.get("HFMS_BIN", str(ROOT / "target/release/hfms"))
MINUTES = int(os.environ.get("MINUTES", "3"))
RPM = int(os.environ.get("RPM", "60"))
RATE = float(os.environ.get("RATE", "4"))  # requests per second sent
ADMIN = "bench-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start")


def request(url: str, method: str = "GET", body: dict | None = None, key: str = ADMIN) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"authorization": f"Bearer {key}"})
    if data:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, {}


def run(shared_redis: bool, tmp: Path) -> dict:
    procs: list[subprocess.Popen] = []
    try:
        models = tmp / "models"
        models.mkdir(exist_ok=True)
        data = tmp / ("data-redis" if shared_redis else "data-local")
        extra = []
        if shared_redis:
            rport = free_port()
            redis = subprocess.Popen(
                ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(redis)
            wait_port(rport, redis, "redis-server")
            extra = ["--redis-url", f"redis://127.0.0.1:{rport}/0"]
        ports = []
        for _ in range(2):
            port = free_port()
            p = subprocess.Popen(
                [HFMS, "serve", "--host", "127.0.0.1", "--port", str(port), "--models-dir", str(models),
                 "--no-hf-cache", "--data-dir", str(data), "--admin-key", ADMIN, "--threads", "1", *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p, "hfms")
            ports.append(port)
        lb_port = free_port()
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n"
            f"  timeout server 30s\nfrontend api\n  bind 127.0.0.1:{lb_port}\n  default_backend replicas\n"
            "backend replicas\n  balance roundrobin\n"
            + "".join(f"  server r{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports)))
        lb = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        procs.append(lb)
        wait_port(lb_port, lb, "haproxy")
        base = f"http://127.0.0.1:{lb_port}"
        status, made = request(f"{base}/admin/keys", "POST", {"name": "bench", "rpm": RPM})
        assert status == 201, (status, made)
        key = made["secret"]
        per_minute = [0] * MINUTES
        start = time.time()
        sent = 0
        while (elapsed := time.time() - start) < MINUTES * 60:
            status, _ = request(f"{base}/v1/models", key=key)
            if status == 200:
                per_minute[int(elapsed // 60)] += 1
            sent += 1
            time.sleep(max(0.0, start + sent / RATE - time.time()))
        return {
            "label": "replicas-rpm",
            "limit_store": "redis (shared)" if shared_redis else "in process (each replica its own)",
            "rpm": RPM,
            "sent_per_minute": RATE * 60,
            "admitted_per_minute": per_minute,
        }
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    for tool in ("redis-server", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (scripts/install-deps.sh redis-server haproxy)")
    out = ROOT / "bench/out" / time.strftime("%Y%m%dT%H%M%SZ-replicas-rpm.jsonl", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for shared in (True, False):
            result = run(shared, Path(d))
            line = json.dumps(result)
            print(line, flush=True)
            with out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
