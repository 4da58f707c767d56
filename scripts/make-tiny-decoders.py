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
  gpt2-f32.gguf         the same GPT-2 as llama.cpp's converter writes it (F32): token_embd,
                        position_embd, blk.N.attn_qkv / attn_output / ffn_up / ffn_down transposed
                        to [out, in] rows, LayerNorms as attn_norm / ffn_norm / output_norm with
                        biases, output a copy of token_embd (as the converter writes GPT-2's tied
                        head); the tokenizer as GGUF gpt2 BPE metadata
  gemma2-f32/           Gemma2ForCausalLM: Gemma 3's layout without QK-norm, one rotary base, even
                        layers sliding (window 8), and soft caps small enough to bite (attention
                        0.5, final logits 5.0)
  phi3-f32/             Phi3ForCausalLM: fused qkv_proj and gate_up_proj, half the head rotated
                        (partial_rotary_factor 0.5), LongRoPE short factors and attention factor,
                        a window of 8 in every layer
  phi3-f32.gguf         the same Phi-3 as llama.cpp's converter writes it (F32): attn_qkv, ffn_up
                        holding gate and up, rope_factors_short/long, the attention factor
  mixtral-f32/          MixtralForCausalLM (saved as the hub's w1/w2/w3 experts): 4 experts, top 2,
                        weights renormalised over the chosen
  mixtral-f32.gguf      the same Mixtral as llama.cpp's converter writes it (F32, architecture llama
                        with expert_count, Q/K permuted, experts stacked in ffn_*_exps)
  qwen2moe-f32/         Qwen2MoeForCausalLM: 4 experts, top 2 renormalised, a shared expert of its
                        own width behind a sigmoid gate, q/k/v biases
  qwen3moe-f32/         Qwen3MoeForCausalLM: 4 experts of their own width, top 2 without
                        renormalising, QK-norm, and layer 1 a dense MLP (mlp_only_layers)
  decoder_goldens.json  per model: the last-position logits of the prompt of goldens.json and 8
                        greedy tokens
"""

import json
import math
import os
import shutil
import sys

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny"
prompt_ids = json.load(open(f"{out}/goldens.json"))["prompt_ids"]
vocab = json.load(open(f"{out}/tokenizer/tokenizer.json"))["model"]["vocab"]
goldens = {}


def save(name, cfg, m, hub_layout=False):
    """hub_layout: save_pretrained's names (MoE experts one tensor each, as
    checkpoints on the hub are), else the state dict as it is."""
    d = f"{out}/{name}"
    os.makedirs(d, exist_ok=True)
    if hub_layout:
        m.save_pretrained(d)
        for f in os.listdir(d):
            if f not in ("config.json", "model.safetensors"):
                os.remove(f"{d}/{f}")
    else:
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


def tokenizer_meta(w, cfg):
    """The tiny tokenizer as GGUF gpt2 BPE metadata."""
    tj = json.load(open(f"{out}/tokenizer/tokenizer.json"))
    tokens = [None] * (max(tj["model"]["vocab"].values()) + 1)
    for t, i in tj["model"]["vocab"].items():
        tokens[i] = t
    specials = set()
    for a in tj["added_tokens"]:
        tokens[a["id"]] = a["content"]
        specials.add(a["content"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([x if isinstance(x, str) else " ".join(x) for x in tj["model"]["merges"]])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_add_bos_token(False)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gpt2_gguf(path, cfg, m):
    """llama.cpp's GPT-2 layout: Conv1D weights transposed to [out, in]."""
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    tokenizer_meta(w, cfg)
    sd = {k.removeprefix("transformer."): v.detach().float().numpy() for k, v in m.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["wte.weight"])
    w.add_tensor("output.weight", sd["wte.weight"].copy())
    w.add_tensor("position_embd.weight", sd["wpe.weight"])
    w.add_tensor("output_norm.weight", sd["ln_f.weight"])
    w.add_tensor("output_norm.bias", sd["ln_f.bias"])
    parts = {
        "ln_1": "attn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    for i in range(cfg.n_layer):
        for hf, gg in parts.items():
            weight = sd[f"h.{i}.{hf}.weight"]
            if not hf.startswith("ln_"):
                weight = weight.T.copy()
            w.add_tensor(f"blk.{i}.{gg}.weight", weight)
            w.add_tensor(f"blk.{i}.{gg}.bias", sd[f"h.{i}.{hf}.bias"])
    finish(w)


write_gpt2_gguf(f"{out}/gpt2-f32.gguf", gcfg, g)

def build(name, cls, cfg, seed):
    """A model of `cls` with random weights from `seed`, saved in the hub's layout."""
    cfg.architectures = [cls.__name__]
    m = cls(cfg).eval()
    randomise(m, seed)
    save(name, cfg, m, hub_layout=True)
    return m


def randomise(m, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.05 if "embed" in name else 0.2)


common = dict(vocab_size=max(vocab.values()) + 1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
g2cfg = Gemma2Config(
    **common,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    query_pre_attn_scalar=24,
    max_position_embeddings=256,
    sliding_window=8,
    attn_logit_softcapping=0.5,
    final_logit_softcapping=5.0,
    tie_word_embeddings=True,
)
g2cfg.architectures = ["Gemma2ForCausalLM"]
torch.manual_seed(8)
g2 = Gemma2ForCausalLM(g2cfg).eval()
with torch.no_grad():
    for name, p in g2.named_parameters():
        p.normal_(0.0, 0.1 if "norm" in name else 0.03 if "embed" in name else 0.2)
save("gemma2-f32", g2cfg, g2)

pcfg = Phi3Config(
    **common,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    original_max_position_embeddings=128,
    sliding_window=8,
    tie_word_embeddings=False,
    rope_parameters={
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "short_factor": [1.0, 1.3, 1.7, 2.5],
        "long_factor": [1.5, 3.0, 6.0, 12.0],
        "original_max_position_embeddings": 128,
    },
)
p3 = build("phi3-f32", Phi3ForCausalLM, pcfg, 5)


def decoder_meta(w, cfg, rope_dims):
    """The sizes every llama.cpp decoder writes, from a transformers config."""
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(rope_dims)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    tokenizer_meta(w, cfg)


def write_phi3_gguf(path, cfg, m):
    """llama.cpp's Phi-3: fused attn_qkv, gate and up fused in ffn_up (gate first),
    LongRoPE as rope_factors_short/long tensors and an attention factor."""
    w = gguf.GGUFWriter(path, "phi3")
    rp = cfg.rope_parameters
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    original = rp["original_max_position_embeddings"]
    decoder_meta(w, cfg, int(head_dim * rp["partial_rotary_factor"]))
    w.add_rope_scaling_orig_ctx_len(original)
    w.add_sliding_window(cfg.sliding_window)
    scale = cfg.max_position_embeddings / original
    w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    w.add_tensor("rope_factors_long.weight", np.array(rp["long_factor"], dtype=np.float32))
    w.add_tensor("rope_factors_short.weight", np.array(rp["short_factor"], dtype=np.float32))
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    parts = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.qkv_proj.weight": "attn_qkv.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            w.add_tensor(f"blk.{i}.{gg}", sd[f"model.layers.{i}.{hf}"])
    finish(w)


write_phi3_gguf(f"{out}/phi3-f32.gguf", pcfg, p3)

mcfg = MixtralConfig(
    **common,
    hidden_size=64,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
mx = build("mixtral-f32", MixtralForCausalLM, mcfg, 6)


def permute(w, n_head):
    # llama.cpp's converter: rotary pairs (i, i + d/2) become adjacent (2i, 2i + 1).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_mixtral_gguf(path, cfg, m):
    """llama.cpp's Mixtral: architecture llama with experts, Q/K permuted for its
    interleaved rotary, each layer's experts stacked into ffn_*_exps [experts, rows, cols]."""
    w = gguf.GGUFWriter(path, "llama")
    decoder_meta(w, cfg, cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_expert_count(cfg.num_local_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    ffn = cfg.intermediate_size
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(b + "attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(b + "attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        w.add_tensor(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"])
        # transformers 5 holds the experts fused: gate_up [E, 2 ffn, h] (gate first), down [E, h, ffn].
        gate_up = sd[p + "mlp.experts.gate_up_proj"]
        w.add_tensor(b + "ffn_gate_exps.weight", gate_up[:, :ffn, :].copy())
        w.add_tensor(b + "ffn_up_exps.weight", gate_up[:, ffn:, :].copy())
        w.add_tensor(b + "ffn_down_exps.weight", sd[p + "mlp.experts.down_proj"].copy())
    finish(w)


write_mixtral_gguf(f"{out}/mixtral-f32.gguf", mcfg, mx)

# What the two Qwen MoE fixtures share: 4 experts of width 40, top 2.
qwen_moe = dict(
    **common,
    hidden_size=64,
    intermediate_size=80,
    moe_intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
q2cfg = Qwen2MoeConfig(**qwen_moe, shared_expert_intermediate_size=56, norm_topk_prob=True)
q2 = build("qwen2moe-f32", Qwen2MoeForCausalLM, q2cfg, 9)

qcfg = Qwen3MoeConfig(**qwen_moe, head_dim=16, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1])
qm = build("qwen3moe-f32", Qwen3MoeForCausalLM, qcfg, 7)

json.dump({"prompt_ids": prompt_ids, **goldens}, open(f"{out}/decoder_goldens.json", "w"))
