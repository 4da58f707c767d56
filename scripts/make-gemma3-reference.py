#!/usr/bin/env python3
"""Greedy reference outputs of gemma-3-270m (GGUF Q4_K_M, dequantised to f32 by transformers).

Run once with torch, transformers and gguf (the output is committed; tests need none of it):

    python3 scripts/make-gemma3-reference.py models-extra/google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf \
        tests/reference/gemma3_greedy_hf.json

For each prompt: transformers' token ids (BOS added, as the GGUF asks), 12 greedy tokens, and
at each step the top-1 log-probability and its margin over the runner-up (compare tokens only
where the margin is clear).
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

path, out = sys.argv[1], sys.argv[2]
d, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "1, 2, 3, 4, 5,",
]
res = {"model": name, "transformers": transformers.__version__, "torch": torch.__version__, "prompts": []}
for p in PROMPTS:
    ids = tok(p)["input_ids"]
    x = torch.tensor([ids])
    steps = []
    with torch.no_grad():
        for _ in range(12):
            logp = torch.log_softmax(model(x).logits[0, -1].float(), -1)
            top = torch.topk(logp, 2)
            nxt = int(top.indices[0])
            steps.append({"token": nxt, "logprob": float(top.values[0]), "margin": float(top.values[0] - top.values[1])})
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
    res["prompts"].append({"prompt": p, "ids": ids, "steps": steps, "text": tok.decode([s["token"] for s in steps])})
    print(p, "→", repr(res["prompts"][-1]["text"]))
json.dump(res, open(out, "w"), indent=1)
