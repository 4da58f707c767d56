#!/usr/bin/env python3
"""The GPU check's driver (scripts/gpu-check.sh runs it; standard library only,
so it runs under whatever python3 a GPU machine has).

One binary, two servers: the reference with CUDA forbidden (the native CPU
engine), then the same models placed freely, which on a machine with an
NVIDIA GPU must put every model on cuda:0. Both answer the same greedy chat
requests (with log-probabilities) and embedding requests; the GPU's tokens
must equal the CPU's, except at a near-tie (the CPU's two best tokens within
NEAR_TIE nats, where 16-bit weights may pick the other one; the comparison
stops there, since the texts diverge), and its embeddings must have cosine
>= MIN_COSINE with the CPU's. Then `hfms bench` on both, at c=1/8/32.

Without a GPU it stops after the CPU part (exit 2, or 0 with --no-gpu-ok), so
that a CPU machine exercises everything up to the point a GPU is needed.

Writes to --out (few files: a device run brings back at most eight):
summary.txt, summary.json (with `hfms hardware --json` and both runs' raw
answers), bench-cpu.json, bench-gpu.json and the two servers' logs.
"""

import argparse
import json
import math
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

# 16-bit weights and activations move the tiny fixtures' logits by up to
# 0.065 (bf16) and 0.01 (f16) from the f32 ones, as measured on candle's CPU
# device (crates/backend-candle/tests/candle_cpu.rs); a margin under twice that
# may flip.
NEAR_TIE = 0.15
# Log-probabilities of the same tokens further apart than this are wrong
# maths, not rounding.
MAX_LOGPROB_DIFF = 0.5
MIN_COSINE = 0.999
REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests/fixtures/tiny"
DECODERS = ["llama-f32", "mistral-f16", "qwen2-bf16", "qwen3-f32", "llama-quant", "qwen2-q8_0"]
ENCODERS = ["xlm-roberta-f32"]
PROMPT = "Hello, world! How are you?"
SENTENCES = [
    "A GPU runs the same model as the CPU.",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings of one sentence, then of a batch.",
    "hfms serves many models behind one endpoint.",
]


def log(msg):
    print(f"gpu-check: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{path}: HTTP {e.code}: {e.read()[:500]!r}") from None


class Server:
    def __init__(self, binary, out, name, extra):
        self.port = free_port()
        self.data = tempfile.mkdtemp(prefix=f"hfms-gpu-check-{name}-")
        self.log_path = out / f"server-{name}.log"
        args = [
            binary, "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--models-dir", str(FIXTURES), "--no-hf-cache", "--data-dir", self.data,
        ] + extra
        log(f"starting the {name} server: {' '.join(args[1:])}")
        # Loads and placement, not a line per bench request.
        env = dict(os.environ, HFMS_LOG=os.environ.get("HFMS_LOG", "warn,hfms_engine=info"))
        self.proc = subprocess.Popen(args, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the {name} server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                call(self.port, "/health", timeout=2)
                break
            except (OSError, RuntimeError):
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"the {name} server did not answer in 120 s; see {self.log_path}")
                time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data, ignore_errors=True)


def run_models(server, decoders, encoders):
    """Greedy chat with log-probabilities per decoder, embeddings per encoder,
    and where placement put each model."""
    out = {"decoders": {}, "encoders": {}, "devices": {}}
    for m in decoders:
        t0 = time.time()
        r = call(server.port, "/v1/chat/completions", {
            "model": m,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 24,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        })
        steps = [
            {"bytes": s["bytes"], "logprob": s["logprob"],
             "top": [[t["bytes"], t["logprob"]] for t in s["top_logprobs"]]}
            for s in r["choices"][0]["logprobs"]["content"]
        ]
        out["decoders"][m] = {"steps": steps, "seconds": time.time() - t0}
    for m in encoders:
        r = call(server.port, "/v1/embeddings", {"model": m, "input": SENTENCES})
        out["encoders"][m] = [d["embedding"] for d in r["data"]]
    for s in call(server.port, "/status")["models"]:
        if s["id"] in decoders or s["id"] in encoders:
            out["devices"][s["id"]] = s["device"]
    return out


def compare(cpu, gpu):
    """Per model: equal tokens, or where and how they part."""
    report, ok = {}, True
    def margin(step):
        top = step["top"]
        return top[0][1] - top[1][1] if len(top) > 1 else math.inf

    for m, c in cpu["decoders"].items():
        g = gpu["decoders"][m]["steps"]
        c = c["steps"]
        entry = {"steps": len(c), "gpu_steps": len(g), "equal": True, "max_logprob_diff": 0.0}
        diff = next((i for i, (a, b) in enumerate(zip(c, g)) if a["bytes"] != b["bytes"]), None)
        if diff is None and len(c) != len(g):
            # One side ended (end of sequence) where the other went on: the
            # CPU's margin at that step, where it has one, says whether
            # that was a near-tie.
            diff = min(len(c), len(g))
        for a, b in zip(c[:diff], g[:diff]):
            entry["max_logprob_diff"] = max(entry["max_logprob_diff"], abs(a["logprob"] - b["logprob"]))
        if diff is None:
            entry["verdict"] = "equal"
        else:
            m_cpu = margin(c[diff]) if diff < len(c) else math.inf
            entry.update(equal=False, first_difference=diff, cpu_margin=m_cpu)
            if m_cpu >= NEAR_TIE:
                entry["verdict"] = f"FAIL: step {diff} differs where the CPU's margin is {m_cpu:.3f}"
                ok = False
            else:
                entry["verdict"] = f"near-tie at step {diff} (CPU margin {m_cpu:.4f} < {NEAR_TIE})"
        if entry["max_logprob_diff"] > MAX_LOGPROB_DIFF:
            entry["verdict"] = f"FAIL: log-probs differ by {entry['max_logprob_diff']:.3f} > {MAX_LOGPROB_DIFF}"
            ok = False
        report[m] = entry
    for m, c in cpu["encoders"].items():
        g = gpu["encoders"][m]
        if len(c) != len(g) or any(len(a) != len(b) for a, b in zip(c, g)):
            report[m] = {"verdict": "FAIL: the GPU's embeddings have other counts or dimensions"}
            ok = False
            continue
        cos = []
        for a, b in zip(c, g):
            dot = sum(x * y for x, y in zip(a, b))
            na = math.sqrt(sum(x * x for x in a))
            nb = math.sqrt(sum(y * y for y in b))
            cos.append(dot / (na * nb))
        worst = min(cos)
        passed = worst >= MIN_COSINE
        ok &= passed
        report[m] = {"min_cosine": worst, "verdict": "ok" if passed else f"FAIL: cosine {worst:.5f} < {MIN_COSINE}"}
    return report, ok


def bench(binary, server, out_file, decoder, encoder, seconds):
    args = [
        binary, "bench", "--base-url", f"http://127.0.0.1:{server.port}/v1",
        "--mode", "chat" + (",embeddings" if encoder else ""),
        "--model", decoder, "--concurrency", "1,8,32", "--max-tokens", "64", "--prompt-tokens", "32",
        "--ignore-eos", "--duration", str(seconds), "--json", str(out_file),
    ]
    if encoder:
        args += ["--embed-model", encoder, "--batch-sizes", "1,32", "--embed-concurrency", "1"]
    log("bench: " + " ".join(args[1:]))
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"hfms bench failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", action="append", default=[],
                    help="an extra real model, ID=PATH (an encoder if its id says minilm/bert/embed)")
    ap.add_argument("--bench-seconds", type=float, default=10)
    ap.add_argument("--no-gpu-ok", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"binary": a.bin, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        return check(a, out, summary)
    except Exception as e:
        # What ran so far, and why it stopped, still go to $OUT.
        summary["verdict"] = f"FAIL: {e}"
        write_summary(out, summary)
        raise


def check(a, out, summary):
    hw = subprocess.run([a.bin, "hardware", "--json"], capture_output=True, text=True, timeout=120)
    if hw.returncode != 0:
        raise RuntimeError(f"hfms hardware --json failed: {hw.stderr}")
    summary["hardware"] = json.loads(hw.stdout)
    cuda = next(p for p in summary["hardware"]["platforms"] if p["platform"] == "cuda")
    summary["cuda"] = {k: cuda.get(k) for k in ("present", "reason", "build_supports", "build_reason", "driver_version")}
    summary["cuda"]["devices"] = [
        {k: d.get(k) for k in ("id", "name", "total_bytes", "free_bytes", "capabilities")} for d in cuda["devices"]
    ]
    if not cuda["build_supports"]:
        raise RuntimeError(f"{a.bin} has no CUDA backend: {cuda['build_reason']}")
    log(f"CUDA backend built in; {len(cuda['devices'])} CUDA device(s): {cuda['reason']}")

    decoders, encoders, extra = list(DECODERS), list(ENCODERS), []
    for spec in a.model:
        mid, _, path = spec.partition("=")
        extra += ["--model", f"{mid}={path}"]
        (encoders if any(k in mid.lower() for k in ("minilm", "bert", "embed")) else decoders).append(mid)

    def serve(name, flags):
        """One server's answers and bench, recorded under `name`."""
        server = Server(a.bin, out, name, extra + flags)
        try:
            run = run_models(server, decoders, encoders)
            summary[f"bench_{name}"] = bench(a.bin, server, out / f"bench-{name}.json", "qwen2-q8_0",
                                             encoders[-1], a.bench_seconds)
        finally:
            server.stop()
        summary[name] = run
        summary[f"{name}_devices"] = run["devices"]
        return run

    cpu = serve("cpu", ["--forbid-platform", "cuda"])
    log(f"CPU reference done: {len(decoders)} decoders, {len(encoders)} encoders on {sorted(set(cpu['devices'].values()))}")

    if not cuda["devices"]:
        summary["verdict"] = "stopped: no CUDA device, so nothing past the CPU reference ran"
        write_summary(out, summary)
        return 0 if a.no_gpu_ok else 2

    gpu = serve("gpu", [])
    placed = set(gpu["devices"]) == set(decoders + encoders) and all(d == "cuda:0" for d in gpu["devices"].values())
    report, same = compare(cpu, gpu)
    summary["comparison"] = report
    summary["verdict"] = "pass" if placed and same else "FAIL" + ("" if placed else ": not every model was placed on cuda:0")
    write_summary(out, summary)
    return 0 if summary["verdict"] == "pass" else 1


def write_summary(out, summary):
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"verdict: {summary['verdict']}", f"cuda: {json.dumps(summary.get('cuda'))}",
             f"CPU run placed: {summary.get('cpu_devices')}", f"GPU run placed: {summary.get('gpu_devices')}"]
    for m, r in summary.get("comparison", {}).items():
        lines.append(f"{m}: {json.dumps(r)}")
    for k in ("bench_cpu", "bench_gpu"):
        if k in summary:
            lines += [f"--- {k}", summary[k]]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one clear line, not a traceback, for a short remote run
        log(f"error: {e}")
        sys.exit(1)
