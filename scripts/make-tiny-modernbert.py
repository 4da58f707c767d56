#!/usr/bin/env python3
"""Make the tiny random-weight ModernBERT of tests/fixtures/tiny and its goldens.

Run once with torch and transformers (5.x); the outputs are committed, so the tests need
neither:

    python3 scripts/make-tiny-modernbert.py tests/fixtures/tiny

What it writes:
  modernbert-f32/          ModernBertModel as transformers saves it: a fused Wqkv, rotary
                           positions with a global base (layer 0) and a local one (layers 1,
                           2), bidirectional sliding windows of local_attention 8 (|i - j| <=
                           4), pre-norm layers (layer 0 without an attention norm), GeGLU (the
                           activation on the first half of Wi), no biases anywhere, a final
                           norm; xlm-roberta-f32's tokenizer
  modernbert_goldens.json  the last hidden states of three inputs (one longer than the window)
                           and their mean-pooled unit-norm embeddings
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import ModernBertConfig, ModernBertModel

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny"
cfg = ModernBertConfig(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=256,
    local_attention=8,
    global_attn_every_n_layers=3,
    global_rope_theta=160000.0,
    local_rope_theta=10000.0,
    hidden_activation="gelu",
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    cls_token_id=0,
    sep_token_id=2,
)
cfg.architectures = ["ModernBertModel"]
torch.manual_seed(11)
m = ModernBertModel(cfg).eval()
with torch.no_grad():
    for n, p in m.named_parameters():
        p.normal_(1.0 if "norm" in n else 0.0, 0.1 if "norm" in n else 0.2)
d = f"{out}/modernbert-f32"
os.makedirs(d, exist_ok=True)
cfg.save_pretrained(d)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{d}/model.safetensors", metadata={"format": "pt"})
shutil.copy(f"{out}/xlm-roberta-f32/tokenizer.json", f"{d}/tokenizer.json")
inputs = [[0, 35, 2], [0] + list(range(40, 60)) + [2], [0, 7, 8, 9, 10, 11, 12, 13, 14, 2]]
hidden, pooled = [], []
with torch.no_grad():
    for ids in inputs:
        h = m(torch.tensor([ids])).last_hidden_state[0]
        hidden.append(h.flatten().tolist())
        e = h.mean(dim=0)
        pooled.append((e / e.norm()).tolist())
json.dump({"inputs": inputs, "last_hidden": hidden, "embeddings": pooled}, open(f"{out}/modernbert_goldens.json", "w"))
print("layer types", cfg.layer_types, "window", cfg.sliding_window)
