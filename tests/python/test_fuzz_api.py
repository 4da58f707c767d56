"""Schemathesis fuzzes the real server through its own /openapi.json.

The server runs with the two real models, small per-request limits (so a
fuzzed request cannot ask for minutes of generation) and an admin key, which
every fuzzed request carries: the admin API (keys, usage, the dashboard's
session) is fuzzed too, with auth on. The schema is the
server's own, with one change: the `model` fields list the models this
server has, so most generated requests reach the engine instead of stopping
at a 404 (the fuzzer still tries other values).

Checks: no 5xx, no dropped connection, every status code, content type and
body as documented. Bounded by FUZZ_EXAMPLES examples per operation
(default 25) and FUZZ_SEED (default: a fixed seed, so a run is repeatable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import CHAT_MODEL, CHAT_MODEL_ID, EMBED_MODEL, EMBED_MODEL_ID, start_server

ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("FUZZ_SEED", "20261201")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def fuzz_server():
    srv = start_server(
        [
            "--max-completion-tokens", "16",
            "--max-embedding-tokens", "4096",
            "--request-timeout", "120",
            "--admin-key", ADMIN_KEY,
        ]
    )
    yield srv
    srv.stop()


def with_real_models(doc: dict) -> dict:
    """`model` of each request schema: the ids and aliases of this server."""
    chat = [CHAT_MODEL, CHAT_MODEL_ID]
    embed = [EMBED_MODEL, EMBED_MODEL_ID]
    per_schema = {
        "ChatCompletionRequest": chat,
        "CompletionRequest": chat,
        "EmbeddingRequest": embed,
        "LoadRequest": chat + embed,
        "UnloadRequest": chat + embed,
    }
    schemas = doc["components"]["schemas"]
    for name, models in per_schema.items():
        schemas[name]["properties"]["model"] = {"type": "string", "enum": models}
    return doc


def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzz_server, tmp_path: Path):
    base = fuzz_server.base_url
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=30) as r:
        doc = json.load(r)
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(with_real_models(doc)))
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st), "run", str(schema),
        "--url", base,
        "--header", f"Authorization: Bearer {ADMIN_KEY}",
        "--checks", CHECKS,
        "--max-examples", str(EXAMPLES),
        "--seed", SEED,
        "--workers", "1",
        "--generation-database", "none",
        "--suppress-health-check", "filter_too_much,too_slow",
        "--request-timeout", "180",
        "--no-color",
        "--report", "junit",
        "--report-dir", str(tmp_path / "report"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    out = run.stdout + run.stderr
    print(out[-6000:])
    assert run.returncode == 0, f"schemathesis failed (exit {run.returncode}):\n{out[-12000:]}"
    # The server survived all of it, and nothing it logged was a panic.
    with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
        assert r.status == 200
    panics = [line for line in fuzz_server.errors if "panicked" in line]
    assert not panics, "\n".join(panics[:5])
