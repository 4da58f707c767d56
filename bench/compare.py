#!/usr/bin/env python3
"""Ratios between two `hfms bench` JSON-lines files (or files in the same format).

    compare.py chat       A.jsonl B.jsonl   per concurrency: output tok/s, TTFT p50, ITL p50, e2e p50
                                            (and prompt / output token counts: a check that both
                                            servers were given the same work)
    compare.py embeddings A.jsonl B.jsonl   per batch size x concurrency: inputs/s, latency p50

Ratios are A/B. Standard library only.
"""

import argparse
import json
import sys

METRICS = {
    "chat": (
        ("concurrency",),
        [
            ("output_tokens_per_s", "output tok/s", "higher is better"),
            ("ttft_p50_ms", "TTFT p50 ms", "lower is better"),
            ("itl_p50_ms", "ITL p50 ms", "lower is better"),
            ("e2e_p50_ms", "e2e p50 ms", "lower is better"),
            ("prompt_tokens_mean", "prompt tokens", "same prompts: ~1"),
            ("completion_tokens_total", "output tokens", "ignore_eos: 1"),
        ],
    ),
    "embeddings": (
        ("batch_size", "concurrency"),
        [
            ("inputs_per_s", "inputs/s", "higher is better"),
            ("latency_p50_ms", "latency p50 ms", "lower is better"),
        ],
    ),
}


def load(path, mode):
    rows = {}
    label = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("mode") != mode:
                continue
            label = label or r.get("label") or path
            rows[tuple(r.get(k) for k in METRICS[mode][0])] = r
    return label, rows


def fmt(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(METRICS))
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args()
    keys, metrics = METRICS[args.mode]
    name_a, a = load(args.a, args.mode)
    name_b, b = load(args.b, args.mode)
    common = sorted(set(a) & set(b))
    if not common:
        sys.exit(f"no {args.mode} levels in common between {args.a} and {args.b}")

    print(f"{args.mode}: {name_a} vs {name_b}, ratio = {name_a} / {name_b}")
    table = [["metric", *keys, name_a, name_b, "ratio"]]
    for field, title, better in metrics:
        for i, k in enumerate(common):
            va, vb = a[k].get(field), b[k].get(field)
            ratio = va / vb if va is not None and vb else None
            label = f"{title} ({better})" if i == 0 else ""
            table.append([label, *(str(x) for x in k), fmt(va), fmt(vb), f"{ratio:.2f}" if ratio is not None else "-"])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  " + r[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:])))
    errors = [(n, r.get("errors"), r.get("first_error")) for n, rows in ((name_a, a), (name_b, b)) for r in rows.values()]
    for name, count, first in errors:
        if count:
            print(f"  WARNING: {name} had {count} failed request(s): {first}")
    loads = [r.get("loadavg_1m") for rows in (a, b) for r in rows.values() if r.get("loadavg_1m") is not None]
    if loads:
        print(f"  machine load (1-min average) at level starts: max {max(loads):.2f}")


if __name__ == "__main__":
    main()
