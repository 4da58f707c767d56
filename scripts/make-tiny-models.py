#!/usr/bin/env python3
"""Make the tiny random-weight models of tests/fixtures/tiny and their golden outputs.

Run once with the Python reference stack (torch, transformers, tokenizers, safetensors,
gguf, sentencepiece, numpy); the outputs are committed, so the tests need none of it:

    python3 scripts/make-tiny-models.py tests/fixtures/tiny

What it writes:
  tokenizer/            a byte-level BPE tokenizer trained on a small corpus (tokenizer.json)
  <arch>-<dtype>/       HF folders (config.json, model.safetensors, tokenizer files) for
                        llama (f32, tied embeddings), qwen2 (bf16, q/k/v biases),
                        mistral (f16), qwen3 (f32, q/k norms), xlm-roberta (f32, encoder)
  llama-quant.gguf      the llama model as GGUF: Q/K permuted as llama.cpp's converter does,
                        layers in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; rotary on adjacent pairs
  qwen2-q8_0.gguf       the qwen2 model as GGUF in Q8_0 (rotary on halves, biases in F32)
  spm-tokenizer.gguf    a GGUF holding only a SentencePiece (llama) tokenizer
  goldens.json          transformers' outputs: last-position logits and greedy tokens for each
                        decoder (for GGUF: the model with quantise→dequantise weights), hidden
                        states for the encoder, SentencePiece ids for probe strings, and
                        gguf-py's dequantisation of random blocks of every quant type
"""

import json
import os
import sys

import gguf
import numpy as np
import torch
from gguf import quants
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
rng = np.random.default_rng(0)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "Machine learning models need careful evaluation.",
    "Berlin is the capital of Germany; Paris is the capital of France.",
    "def add(a, b): return a + b",
    "Numbers like 12345 and 3.14 appear in text.",
    "Ça va? Übermäßig schöne Grüße aus Zürich.",
    "这是一个用于测试的中文句子。",
] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB = 384

# ---- tokenizer -------------------------------------------------------------------------
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(
    CORPUS,
    trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
)
assert tok.get_vocab_size() <= VOCAB
os.makedirs(f"{out}/tokenizer", exist_ok=True)
tok.save(f"{out}/tokenizer/tokenizer.json")
tok_json = json.load(open(f"{out}/tokenizer/tokenizer.json"))
PROMPT = "<|im_start|>user\nHello, world! How are you?<|im_end|>\n<|im_start|>assistant\n"
prompt_ids = tok.encode(PROMPT).ids
EOS = tok.token_to_id("<|im_end|>")

goldens = {"prompt": PROMPT, "prompt_ids": prompt_ids, "decoders": {}, "eos": EOS}


def base_config(model_type, **kw):
    c = dict(
        model_type=model_type,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        vocab_size=VOCAB,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.token_to_id("<|im_start|>"),
        eos_token_id=EOS,
    )
    c.update(kw)
    return c


def make_hf(model_type, cfg_cls, model_cls, dtype, **kw):
    cfg = cfg_cls(**{k: v for k, v in base_config(model_type, **kw).items() if k != "model_type"})
    torch.manual_seed(hash(model_type) % 1000)
    m = model_cls(cfg).eval()
    # Random init is tiny (std 0.02): widen it so logits have real margins.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return cfg, m


def save_hf(name, cfg, m, dtype):
    d = f"{out}/{name}"
    os.makedirs(d, exist_ok=True)
    cfg.torch_dtype = str(dtype).replace("torch.", "")
    cfg.save_pretrained(d)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in m.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, f"{d}/model.safetensors", metadata={"format": "pt"})
    json.dump(tok_json, open(f"{d}/tokenizer.json", "w"))
    json.dump(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML, "add_bos_token": False},
        open(f"{d}/tokenizer_config.json", "w"),
    )
    json.dump({"eos_token_id": EOS}, open(f"{d}/generation_config.json", "w"))
    # The reference runs in f32 on exactly the stored values.
    for k, v in m.state_dict().items():
        v.copy_(v.to(dtype).to(torch.float32))
    return m


def golden(m, ids):
    with torch.no_grad():
        x = torch.tensor([ids])
        logits = m(x).logits[0, -1].tolist()
        gen = m.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    return {"last_logits": logits, "greedy": gen}


from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    XLMRobertaConfig,
    XLMRobertaModel,
)

specs = [
    ("llama-f32", "llama", LlamaConfig, LlamaForCausalLM, torch.float32, dict(tie_word_embeddings=True)),
    ("qwen2-bf16", "qwen2", Qwen2Config, Qwen2ForCausalLM, torch.bfloat16, dict(use_sliding_window=False)),
    ("mistral-f16", "mistral", MistralConfig, MistralForCausalLM, torch.float16, dict(sliding_window=None)),
    ("qwen3-f32", "qwen3", Qwen3Config, Qwen3ForCausalLM, torch.float32, dict(head_dim=16)),
]
hf_models = {}
for name, mt, cc, mc, dt, kw in specs:
    cfg, m = make_hf(mt, cc, mc, dt, **kw)
    m = save_hf(name, cfg, m, dt)
    hf_models[name] = (cfg, m)
    goldens["decoders"][name] = golden(m, prompt_ids)
    print(name, goldens["decoders"][name]["greedy"])

# Sliding-window attention: the Mistral model again, its window cut to 8 positions (the
# prompt has 29), as transformers applies it; hfms loads the same folder with that window.
_, m = hf_models["mistral-f16"]
m.config.sliding_window = 8
goldens["decoders"]["mistral-f16-window8"] = golden(m, prompt_ids)
m.config.sliding_window = None


# ---- GGUF versions -------------------------------------------------------------------------
def permute(w, n_head):
    # llama.cpp's converter: rotary pairs (i, i + d/2) become adjacent (2i, 2i + 1).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_meta(w):
    vocab = tok_json["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    for a in tok_json["added_tokens"]:
        tokens[a["id"]] = a["content"]
    types = [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.token_to_id("<|im_start|>"))
    w.add_eos_token_id(EOS)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)


def write_gguf(path, arch, cfg, m, qtype_for, permute_qk):
    w = gguf.GGUFWriter(path, arch)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(getattr(cfg, "rope_parameters", None) and cfg.rope_parameters["rope_theta"] or 10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tokenizer_meta(w)
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    deq = {}
    for k, v in sd.items():
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if k in names:
            g = names[k]
        else:
            layer = int(k.split(".")[2])
            g = f"blk.{layer}." + parts[".".join(k.split(".")[3:])]
        arr = v
        if permute_qk and g.endswith("attn_q.weight"):
            arr = permute(arr, cfg.num_attention_heads)
        if permute_qk and g.endswith("attn_k.weight"):
            arr = permute(arr, cfg.num_key_value_heads)
        qt = qtype_for(g) if arr.ndim == 2 else gguf.GGMLQuantizationType.F32
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(g, arr.astype(np.float32))
            back = arr.astype(np.float32)
        else:
            q = quants.quantize(arr.astype(np.float32), qt)
            w.add_tensor(g, q, raw_dtype=qt)
            back = quants.dequantize(q, qt).reshape(arr.shape)
        if permute_qk and g.endswith("attn_q.weight"):
            back = unpermute(back, cfg.num_attention_heads)
        if permute_qk and g.endswith("attn_k.weight"):
            back = unpermute(back, cfg.num_key_value_heads)
        deq[k] = torch.tensor(back)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The golden model: the same architecture with the dequantised weights.
    ref = type(m)(cfg).eval()
    sd2 = {k: deq.get(k, v) for k, v in m.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd2["lm_head.weight"] = sd2["model.embed_tokens.weight"]
    ref.load_state_dict(sd2)
    return ref


T = gguf.GGMLQuantizationType
cycle = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
counter = {"i": 0}


def mixed(name):
    if name == "token_embd.weight":
        return T.Q8_0
    counter["i"] += 1
    return cycle[counter["i"] % len(cycle)]


cfg, m = hf_models["llama-f32"]
ref = write_gguf(f"{out}/llama-quant.gguf", "llama", cfg, m, mixed, True)
goldens["decoders"]["llama-quant.gguf"] = golden(ref, prompt_ids)
cfg, m = hf_models["qwen2-bf16"]
ref = write_gguf(f"{out}/qwen2-q8_0.gguf", "qwen2", cfg, m, lambda n: T.Q8_0, False)
goldens["decoders"]["qwen2-q8_0.gguf"] = golden(ref, prompt_ids)

# ---- encoder -------------------------------------------------------------------------------
ecfg = XLMRobertaConfig(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=130,
    pad_token_id=1,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
)
torch.manual_seed(7)
enc = XLMRobertaModel(ecfg, add_pooling_layer=False).eval()
with torch.no_grad():
    for n, p in enc.named_parameters():
        p.normal_(1.0 if "LayerNorm.weight" in n else 0.0, 0.1 if "LayerNorm" in n else 0.2)
d = f"{out}/xlm-roberta-f32"
os.makedirs(d, exist_ok=True)
ecfg.save_pretrained(d)
save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, f"{d}/model.safetensors", metadata={"format": "pt"})
json.dump(tok_json, open(f"{d}/tokenizer.json", "w"))
enc_inputs = [tok.encode(s).ids for s in ["Hello, world!", "The quick brown fox jumps over the lazy dog.", "x"]]
with torch.no_grad():
    goldens["encoder"] = {
        "inputs": enc_inputs,
        "last_hidden": [enc(torch.tensor([ids])).last_hidden_state[0].flatten().tolist() for ids in enc_inputs],
    }

# ---- SentencePiece tokenizer in GGUF --------------------------------------------------------
import sentencepiece as spm  # noqa: E402

spm.SentencePieceTrainer.train(
    sentence_iterator=iter(CORPUS),
    model_prefix=f"/tmp/tiny-spm",
    vocab_size=400,
    model_type="bpe",
    byte_fallback=True,
    character_coverage=1.0,
    add_dummy_prefix=True,
    # As Llama's tokenizer: no normalisation, whitespace kept as written.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
)
sp = spm.SentencePieceProcessor(model_file="/tmp/tiny-spm.model")
w = gguf.GGUFWriter(f"{out}/spm-tokenizer.gguf", "llama")
w.add_tokenizer_model("llama")
toks, scores, types = [], [], []
for i in range(sp.get_piece_size()):
    toks.append(sp.id_to_piece(i))
    scores.append(sp.get_score(i))
    if sp.is_unknown(i):
        types.append(gguf.TokenType.UNKNOWN)
    elif sp.is_control(i):
        types.append(gguf.TokenType.CONTROL)
    elif sp.is_byte(i):
        types.append(gguf.TokenType.BYTE)
    else:
        types.append(gguf.TokenType.NORMAL)
w.add_token_list(toks)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(sp.bos_id())
w.add_eos_token_id(sp.eos_id())
w.add_unk_token_id(sp.unk_id())
w.add_add_bos_token(True)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
probes = [
    "Hello, world!",
    "The quick brown fox",
    "  leading spaces",
    "Numbers 12345 and 3.14",
    "Grüße aus Zürich",
    "中文句子",
    "emoji 🙂 here",
    "tab\tand\nnewline",
]
goldens["spm"] = [{"text": t, "ids": sp.encode(t)} for t in probes]

# ---- quant blocks --------------------------------------------------------------------------
blocks = {}
for qt in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
    be, bb = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, size=(4, bb), dtype=np.uint8)
    # Scales as small finite f16 values, wherever each type keeps them.
    f16_at = {
        T.Q4_0: [0], T.Q5_0: [0], T.Q8_0: [0], T.Q4_1: [0, 2], T.Q5_1: [0, 2],
        T.Q2_K: [bb - 4, bb - 2], T.Q3_K: [bb - 2], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [bb - 2],
    }[qt]
    for r in range(raw.shape[0]):
        for j, off in enumerate(f16_at):
            v = np.float16(rng.uniform(0.001, 0.05) * (-1 if j == 1 and qt in (T.Q4_1, T.Q5_1) else 1))
            raw[r, off : off + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
    vals = quants.dequantize(raw, qt).reshape(-1)
    blocks[qt.name] = {"hex": raw.tobytes().hex(), "values": [float(x) for x in vals]}
goldens["quant_blocks"] = blocks

json.dump(goldens, open(f"{out}/goldens.json", "w"))
print("wrote", out)
