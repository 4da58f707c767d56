#!/usr/bin/env python3
"""Times sentence-transformers in-process on the sentences `hfms bench` sends.

Request i of batch size b embeds sentences i*b .. i*b+b-1 of the file (one sentence a
line, from `hfms bench --print-sentences N`), one request after another, exactly as
`hfms bench --mode embeddings --embed-concurrency 1` does over HTTP. Writes JSON lines
in hfms bench's format (mode "embeddings"), so bench/compare.py reads both.
"""

import argparse
import datetime
import json
import os
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="sentence-transformers model folder")
    p.add_argument("--sentences", required=True, help="file with one sentence a line")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--requests", type=int, default=32, help="requests per batch size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True, help="JSON lines out")
    p.add_argument("--label", default="sentence-transformers")
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    with open(args.sentences) as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]

    batches = [int(b) for b in args.batch_sizes.split(",")]
    with open(args.json, "w") as out:
        for b in batches:
            need = args.requests * b
            if len(sentences) < need:
                raise SystemExit(f"{args.sentences} has {len(sentences)} sentences, batch {b} needs {need}")
            for _ in range(args.warmup):
                model.encode(sentences[:b], batch_size=b)
            load = os.getloadavg()[0]
            latencies = []
            start = time.perf_counter()
            for i in range(args.requests):
                batch = sentences[i * b : (i + 1) * b]
                t = time.perf_counter()
                emb = model.encode(batch, batch_size=b)
                latencies.append(time.perf_counter() - t)
                assert emb.shape[0] == b
            wall = time.perf_counter() - start
            # Tokens (as embedded: truncated to max_seq_length), counted outside the timing.
            tok = model.tokenizer(
                sentences[:need], truncation=True, max_length=model.max_seq_length, add_special_tokens=True
            )
            tokens = sum(len(ids) for ids in tok["input_ids"])
            ms = np.array(latencies) * 1e3
            record = {
                "mode": "embeddings",
                "label": args.label,
                "base_url": None,
                "model": os.path.basename(os.path.normpath(args.model)),
                "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                "in_process": True,
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "loadavg_1m": load,
                "batch_size": b,
                "concurrency": 1,
                "requests": args.requests,
                "errors": 0,
                "first_error": None,
                "inputs_total": need,
                "prompt_tokens_total": tokens,
                "wall_s": wall,
                "inputs_per_s": need / wall,
                "tokens_per_s": tokens / wall,
                "requests_per_s": args.requests / wall,
                "latency_p50_ms": float(np.percentile(ms, 50)),
                "latency_p90_ms": float(np.percentile(ms, 90)),
                "latency_p99_ms": float(np.percentile(ms, 99)),
                "latency_mean_ms": float(ms.mean()),
            }
            out.write(json.dumps(record) + "\n")
            print(
                f"  {args.label} in-process: batch {b}: {record['inputs_per_s']:.0f} sentences/s, "
                f"latency p50 {record['latency_p50_ms']:.2f} ms (p90 {record['latency_p90_ms']:.2f}, "
                f"p99 {record['latency_p99_ms']:.2f}), {args.requests} requests"
            )


if __name__ == "__main__":
    main()
