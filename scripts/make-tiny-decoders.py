#!/usr/bin/env python3
"""Make the tiny random-weight decoders of tests/fixtures/tiny beyond the Llama family, and goldens.

Run once with torch and transformers; the outputs are committed, so the tests need neither:

    python3 scripts/make-tiny-decoders.py tests/fixtures/tiny

What it writes:
  gemma3-f32/           Gemma3ForCausalLM (model_type gemma3_text) as transformers saves it: norms
                        stored as w for (1 + w), pre/post attention and feed-forward norms, QK-norm,
                        GeGLU, sliding layers with their own rotary base, query_pre_attn_scalar unlike
                        head_dim, a window of 8 (shorter than the prompt), tied head; the tokenizer of
                        tests/fixtures/tiny/tokenizer
  gpt2-f32/             GPT2LMHeadModel: learned positions, LayerNorm, fused Conv1D c_attn, GELU MLP,
                        biases everywhere, tied head; the same tokenizer
  decoder_goldens.json  per model: the last-position logits of the prompt of goldens.json and 8
                        greedy tokens
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny"
prompt_ids = json.load(open(f"{out}/goldens.json"))["prompt_ids"]
vocab = json.load(open(f"{out}/tokenizer/tokenizer.json"))["model"]["vocab"]
goldens = {}


def save(name, cfg, m):
    d = f"{out}/{name}"
    os.makedirs(d, exist_ok=True)
    cfg.save_pretrained(d)
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight" and not k.endswith(".attn.bias")}
    save_file(sd, f"{d}/model.safetensors", metadata={"format": "pt"})
    shutil.copy(f"{out}/tokenizer/tokenizer.json", f"{d}/tokenizer.json")
    with torch.no_grad():
        x = torch.tensor([prompt_ids])
        logits = m(x).logits[0, -1].tolist()
        greedy = m.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt_ids) :]
    goldens[name] = {"last_logits": logits, "greedy": greedy.tolist()}
    print(name, "greedy", goldens[name]["greedy"])


cfg = Gemma3TextConfig(
    vocab_size=max(vocab.values()) + 1,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    query_pre_attn_scalar=24,
    max_position_embeddings=256,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
    },
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
cfg.architectures = ["Gemma3ForCausalLM"]
torch.manual_seed(3)
m = Gemma3ForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in m.named_parameters():
        # Norm weights are the w of (1 + w): small, either sign. Embeddings
        # small, as sqrt(hidden) scales them: else the residual stream is the
        # input token and greedy decoding repeats it.
        p.normal_(0.0, 0.1 if "norm" in name else 0.03 if "embed" in name else 0.2)
save("gemma3-f32", cfg, m)

gcfg = GPT2Config(
    vocab_size=max(vocab.values()) + 1,
    n_embd=64,
    n_layer=2,
    n_head=4,
    n_positions=128,
    activation_function="gelu_new",
    bos_token_id=1,
    eos_token_id=2,
)
gcfg.architectures = ["GPT2LMHeadModel"]
torch.manual_seed(4)
g = GPT2LMHeadModel(gcfg).eval()
with torch.no_grad():
    for name, p in g.named_parameters():
        if "ln_" in name:
            p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
        else:
            p.normal_(0.0, 0.05 if "wte" in name or "wpe" in name else 0.2)
save("gpt2-f32", gcfg, g)
json.dump({"prompt_ids": prompt_ids, **goldens}, open(f"{out}/decoder_goldens.json", "w"))
