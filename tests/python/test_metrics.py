"""/metrics after known traffic, scraped by a real Prometheus (Debian's
`prometheus`, started here on a free loopback port in a temp dir), and every
PromQL expression of deploy/grafana/hfms-dashboard.json evaluated through
Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import CHAT_MODEL, CHAT_MODEL_ID, EMBED_MODEL, EMBED_MODEL_ID, REPO, start_server

DASHBOARD = REPO / "deploy" / "grafana" / "hfms-dashboard.json"
# Panels that must show data after the traffic below.
MAIN_PANELS = [
    "Requests per second",
    "Errors per second",
    "Request latency (end to end)",
    "Time to first token",
    "Inter-token latency",
    "Tokens per second",
    "Queue depth and running",
    "KV cache usage",
    "Request outcomes",
    "Embeddings: inputs per second",
    "Models loaded",
    "Device memory",
    "HTTP latency p95 by route",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base: str, path: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(base: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(base + "/metrics", headers={"accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers["content-type"], r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (labels must match exactly those given)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture(scope="module")
def metrics_server():
    srv = start_server()
    yield srv
    srv.stop()


def test_metrics_count_exactly_what_was_sent(metrics_server):
    base = metrics_server.base_url
    _, before = scrape(base)

    def delta(after: str, name: str, **labels) -> float:
        try:
            b = sample(before, name, **labels)
        except AssertionError:
            b = 0.0
        return sample(after, name, **labels) - b

    for _ in range(3):
        st, _ = post(base, "/v1/chat/completions", {"model": CHAT_MODEL, "max_tokens": 4, "ignore_eos": True,
                                                    "messages": [{"role": "user", "content": "Count to ten."}]})
        assert st == 200
    st, body = post(base, "/v1/chat/completions", {"model": CHAT_MODEL, "max_tokens": 5, "ignore_eos": True, "stream": True,
                                                  "messages": [{"role": "user", "content": "Hi"}]})
    assert st == 200 and body.rstrip().endswith(b"[DONE]")
    st, _ = post(base, "/v1/embeddings", {"model": EMBED_MODEL, "input": ["one", "two", "three"]})
    assert st == 200
    st, _ = post(base, "/v1/embeddings", {"model": EMBED_MODEL, "input": []})
    assert st == 400
    st, _ = post(base, "/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    assert st == 404
    time.sleep(0.3)  # the streamed response is counted when its body ends
    ctype, after = scrape(base)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype

    chat = {"model": CHAT_MODEL_ID}
    assert delta(after, "hfms_request_success_total", finished_reason="length", **chat) == 4
    assert delta(after, "hfms_generation_tokens_total", **chat) == 3 * 4 + 5
    assert delta(after, "hfms_time_to_first_token_seconds_count", **chat) == 4
    assert delta(after, "hfms_e2e_request_latency_seconds_count", **chat) == 4
    assert delta(after, "hfms_inter_token_latency_seconds_count", **chat) == 3 * 3 + 4
    assert delta(after, "hfms_request_generation_tokens_sum", **chat) == 17
    emb = {"model": EMBED_MODEL_ID}
    assert delta(after, "hfms_embedding_requests_total", **emb) == 1
    assert delta(after, "hfms_embedding_inputs_total", **emb) == 3
    http = {"method": "POST", "route": "/v1/chat/completions"}
    assert delta(after, "hfms_http_requests_total", status="200", **http) == 4
    assert delta(after, "hfms_http_requests_total", status="404", **http) == 1
    assert delta(after, "hfms_http_requests_total", method="POST", route="/v1/embeddings", status="400") == 1
    assert delta(after, "hfms_errors_total", type="invalid_request_error", code="model_not_found", model="") == 1
    assert sample(after, "hfms_model_loaded", **chat) == 1
    assert sample(after, "hfms_num_requests_running", **chat) == 0
    assert 0 <= sample(after, "hfms_kv_cache_usage_ratio", **chat) <= 1

    # OpenMetrics on request; the same counters, named the OpenMetrics way.
    ctype, om = scrape(base, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert ctype.startswith("application/openmetrics-text"), ctype
    assert om.rstrip().endswith("# EOF")
    assert "# TYPE hfms_request_success counter" in om

    # The last errors are in /status, without prompts.
    with urllib.request.urlopen(base + "/status", timeout=30) as r:
        status = json.load(r)
    codes = [e["code"] for e in status["errors"]]
    assert "model_not_found" in codes, status["errors"]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
            out.append((panel["title"], expr))
    return out


def test_a_real_prometheus_scrapes_and_the_dashboard_queries_work(metrics_server, tmp_path: Path):
    assert shutil.which("prometheus"), "prometheus is not installed (make test installs it)"
    base = metrics_server.base_url
    target = base.removeprefix("http://")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    # The shipped scrape config, pointed at this server and scraping fast.
    shipped = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "job_name: hfms" in shipped and "metrics_path: /metrics" in shipped
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: hfms\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> dict:
        url = f"{api}/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)

    try:
        # Traffic spread over a few scrapes, so rates and quantiles have data.
        deadline = time.monotonic() + 60
        while True:
            try:
                up = query('up{job="hfms"}')
                if up["data"]["result"] and up["data"]["result"][0]["value"][1] == "1":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, prom.stderr.read().decode() if prom.poll() is not None else "no scrape"
            time.sleep(0.5)
        for i in range(6):
            post(base, "/v1/chat/completions", {"model": CHAT_MODEL, "max_tokens": 8, "ignore_eos": True,
                                                "messages": [{"role": "user", "content": f"Story {i}"}]})
            post(base, "/v1/embeddings", {"model": EMBED_MODEL, "input": [f"sentence {i}"] * 4})
            post(base, "/v1/embeddings", {"model": EMBED_MODEL, "input": []})
            time.sleep(0.7)
        time.sleep(3)
        empty = []
        for title, expr in dashboard_exprs():
            res = query(expr)
            assert res["status"] == "success", (title, expr, res)
            if title in MAIN_PANELS and not res["data"]["result"]:
                empty.append((title, expr))
        # A panel has data when any of its expressions returns series.
        with_data = {t for t, e in dashboard_exprs() if (t, e) not in empty}
        missing = [t for t in MAIN_PANELS if t not in with_data]
        assert not missing, f"main panels without data: {missing}"
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
