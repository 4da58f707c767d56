"""Fixtures for the Python end-to-end tests: one real hfms server per session,
and the helpers that start tests/hub/testhub.py (the Hub look-alike) and run
huggingface_hub against it.

Environment:
  HFMS_BIN          the server binary (default: <repo>/target/fast/hfms)
  HFMS_TEST_MODELS  the models folder (default: <repo>/models)
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tests" / "reference"
TESTHUB = REPO / "tests" / "hub" / "testhub.py"

LISTEN_TIMEOUT_S = 60
READY_TIMEOUT_S = 120
LISTENING = re.compile(r"hfms listening on (http://\S+)")

CHAT_MODEL = "smollm2"
CHAT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBED_MODEL = "all-minilm"
EMBED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class Server:
    """A running `hfms serve` whose stderr is drained by a thread."""

    def __init__(self, binary: Path, models: Path, extra: list[str] | None = None):
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        # Every log line at error level or above, and any panic, kept whole.
        self.errors: list[str] = []
        self.base_url: str | None = None
        self._listening = threading.Event()
        self.proc = subprocess.Popen(
            [
                str(binary), "serve",
                "--port", "0",
                "--models-dir", str(models),
                "--no-hf-cache",
                "--preload", f"{CHAT_MODEL},{EMBED_MODEL}",
                "--log-format", "json",
                # Its own database: keys another run left must not turn auth on.
                "--data-dir", tempfile.mkdtemp(prefix="hfms-test-data-"),
                *(extra or []),
            ],
            # Servers that know HFMS_EXIT_ON_STDIN_EOF exit when this pipe
            # closes, so even a killed pytest leaves no server behind; older
            # ones ignore it (and are terminated in stop()).
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "HFMS_EXIT_ON_STDIN_EOF": "true"},
        )
        # One thread reads stderr for the whole session, so the pipe never
        # fills up and blocks the server; it also spots the listening line.
        self._drain = threading.Thread(target=self._read_stderr, name="hfms-stderr", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if '"level":"ERROR"' in line or "panicked" in line:
                self.errors.append(line)
            if not self._listening.is_set():
                m = LISTENING.search(line)
                if m:
                    self.base_url = m.group(1).rstrip("/")
                    self._listening.set()
        self._listening.set()  # EOF: wake the waiter; it sees the exit

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(list(self.log)[-n:])

    def wait_listening(self, timeout: float) -> str:
        if not self._listening.wait(timeout) or self.base_url is None:
            code = self.proc.poll()
            raise RuntimeError(
                f"hfms did not print its listening line within {timeout}s "
                f"(exit code {code}); stderr:\n{self.log_tail()}"
            )
        return self.base_url

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hfms exited with {self.proc.returncode}; stderr:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=5) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:  # 503 while models load
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.25)
        raise RuntimeError(f"/ready did not answer 200 within {timeout}s ({last}); stderr:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._drain.join(timeout=5)


def hfms_binary() -> Path:
    """$HFMS_BIN, else target/fast/hfms; fails the test when it is missing."""
    binary = Path(os.environ.get("HFMS_BIN", REPO / "target" / "fast" / "hfms"))
    if not binary.is_file():
        pytest.fail(f"hfms binary not found at {binary} (build it, or set HFMS_BIN)")
    return binary


def models_dir() -> Path:
    """$HFMS_TEST_MODELS, else models/; fails the test when it is missing."""
    models = Path(os.environ.get("HFMS_TEST_MODELS", REPO / "models"))
    if not models.is_dir():
        pytest.fail(f"models folder not found at {models} (run scripts/fetch-models.sh, or set HFMS_TEST_MODELS)")
    return models


def start_server(extra: list[str] | None = None) -> Server:
    """A ready `hfms serve` with the two test models (and `extra` flags)."""
    binary = hfms_binary()
    models = models_dir()
    srv = Server(binary, models, extra)
    try:
        srv.wait_listening(LISTEN_TIMEOUT_S)
        srv.wait_ready(READY_TIMEOUT_S)
    except RuntimeError as e:
        srv.stop()
        pytest.fail(str(e))
    return srv


@pytest.fixture(scope="session")
def server():
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base_url(server) -> str:
    """`http://HOST:PORT`, without the /v1 prefix."""
    return server.base_url


@pytest.fixture(scope="session")
def client(base_url) -> openai.OpenAI:
    # The server ignores API keys in this version; the SDK insists on one.
    # No retries: every error should surface as it is.
    c = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="session")
def reference_chat() -> dict:
    """tests/reference/inputs/chat.json: messages, max_tokens 48, temperature 0."""
    return json.loads((REFERENCE / "inputs" / "chat.json").read_text())


@pytest.fixture(scope="session")
def minilm_reference() -> dict:
    return json.loads((REFERENCE / "minilm_st.json").read_text())


# --- tests/hub/testhub.py, the Hub look-alike, and huggingface_hub against it.

try:
    HF_VERSION = importlib.metadata.version("huggingface_hub")
except importlib.metadata.PackageNotFoundError:
    HF_VERSION = None


class Hub:
    """A running testhub.py (on 127.0.0.1, a free port), with its request log.
    `args` are testhub's repo flags (--repo, --file, --gated, ...). Call
    stop() when done, also on failure (it is idempotent)."""

    def __init__(self, workdir: Path, args: list[str]):
        self.workdir = workdir
        self.log_path = workdir / "requests.jsonl"
        self.port_file = workdir / "port"
        self.stdout_path = workdir / "stdout"
        self.stderr_path = workdir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(TESTHUB), "--host", "127.0.0.1", "--port", "0",
                 "--port-file", str(self.port_file), "--log", str(self.log_path),
                 "--exit-on-stdin-eof", *args],
                stdin=subprocess.PIPE, stdout=out, stderr=err,
            )
        try:
            self.port = self._wait_port(timeout=20)
        except BaseException:
            self.stop()
            raise
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists():
                port = int(self.port_file.read_text())
                # The one stdout line comes right after the port file.
                while self.stdout_path.read_text() == "" and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert self.stdout_path.read_text() == f"PORT {port}\n"
                return port
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"testhub did not start (exit code {self.proc.poll()}):\n{self.stderr_path.read_text()}")

    def requests(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        elif self.proc.stdin:
            self.proc.stdin.close()


def clean_env() -> dict[str, str]:
    """os.environ without the Hub, proxy and hfms settings of the user's, so
    neither huggingface_hub nor hfms reaches past 127.0.0.1 or reads a token
    or cache of theirs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_", "HUGGINGFACE_", "TRANSFORMERS_", "HFMS_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


PRELUDE = """
import json, sys
P = json.loads(sys.argv[1])
def out(x):
    print(json.dumps(x))
"""


def run_hf(hub: Hub, cache: Path, code: str, **params) -> dict:
    """Run `code` in a fresh interpreter pointed at the hub (HF_ENDPOINT), with
    HF_HUB_CACHE=cache/hub and HF_HOME=cache/home; it reports with
    out({...}), which this returns. huggingface_hub reads its environment
    when it is imported, hence the fresh interpreter."""
    if HF_VERSION is None:
        pytest.fail("huggingface_hub is not installed: pip install -r tests/python/requirements.txt")
    env = clean_env()
    env.update({
        "HF_ENDPOINT": hub.base,
        "HF_HOME": str(cache / "home"),  # no token file of the user's, no writes to ~
        "HF_HUB_CACHE": str(cache / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    })
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), json.dumps(params)],
                       env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.fail(f"huggingface_hub script failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])
