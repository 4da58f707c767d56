"""Does constrained decoding slow the unconstrained sequences it shares a batch
with? Against a running server (standard library only):

    python3 bench/constrained.py [--base-url http://127.0.0.1:8000/v1] [--model smollm2]
                                 [--concurrency 8] [--max-tokens 128] [--rounds 3]

Each round runs two phases of `concurrency` streamed chat requests at once,
`ignore_eos` and `max_tokens` so every sequence runs its full length:
  plain  every request unconstrained;
  mixed  half unconstrained, half with a `response_format` JSON schema that
         cannot close before max_tokens (an array of at least 500 strings).
It prints the unconstrained requests' decode rate (tokens after the first /
time after the first, per request, averaged) in both phases, their ratio,
and the aggregate tokens/s of each phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

LONG_SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 500}


def stream_one(base: str, body: dict, out: list, i: int) -> None:
    req = urllib.request.Request(f"{base}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    start = time.perf_counter()
    first = None
    chunks = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if c.get("choices") and c["choices"][0]["delta"].get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
            usage = c.get("usage")
            if usage:
                tokens = usage["completion_tokens"]
    end = time.perf_counter()
    out[i] = {"tokens": tokens, "start": start, "first": first or end, "end": end,
              "constrained": "response_format" in body}


def phase(base: str, model: str, n: int, max_tokens: int, constrained: int) -> dict:
    bodies = []
    for i in range(n):
        b = {"model": model, "stream": True, "stream_options": {"include_usage": True},
             # No seed: a seeded request could be answered from the response cache.
             "max_tokens": max_tokens, "ignore_eos": True, "temperature": 1,
             "messages": [{"role": "user", "content": f"List some words ({i}, {time.time()})."}]}
        if i < constrained:
            b["response_format"] = {"type": "json_schema", "json_schema": {"name": "words", "schema": LONG_SCHEMA}}
        bodies.append(b)
    out: list = [None] * n
    threads = [threading.Thread(target=stream_one, args=(base, b, out, i)) for i, b in enumerate(bodies)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    plain = [r for r in out if not r["constrained"]]
    rate = statistics.mean((r["tokens"] - 1) / (r["end"] - r["first"]) for r in plain)
    return {"plain_decode_tok_s": rate, "aggregate_tok_s": sum(r["tokens"] for r in out) / wall,
            "constrained_tokens": [r["tokens"] for r in out if r["constrained"]]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    # Warm up: the model loaded, the vocabulary's trie built.
    phase(a.base_url, a.model, 2, 8, 1)
    plain, mixed = [], []
    for _ in range(a.rounds):
        plain.append(phase(a.base_url, a.model, a.concurrency, a.max_tokens, 0))
        mixed.append(phase(a.base_url, a.model, a.concurrency, a.max_tokens, a.concurrency // 2))
    pr = statistics.median(r["plain_decode_tok_s"] for r in plain)
    mr = statistics.median(r["plain_decode_tok_s"] for r in mixed)
    print(json.dumps({
        "model": a.model, "concurrency": a.concurrency, "max_tokens": a.max_tokens, "rounds": a.rounds,
        "unconstrained_decode_tok_s_plain": round(pr, 2),
        "unconstrained_decode_tok_s_mixed": round(mr, 2),
        "ratio_mixed_over_plain": round(mr / pr, 3),
        "aggregate_tok_s_plain": round(statistics.median(r["aggregate_tok_s"] for r in plain), 2),
        "aggregate_tok_s_mixed": round(statistics.median(r["aggregate_tok_s"] for r in mixed), 2),
        "constrained_tokens": mixed[-1]["constrained_tokens"],
    }))


if __name__ == "__main__":
    main()
