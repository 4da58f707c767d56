#!/usr/bin/env python3
"""transformers' NomicBertModel embeddings of nomic-embed-text-v1.5 (the F16 GGUF of
`make models-extra`) for tests/reference/inputs/sentences.json and one long input.

Run once with torch, transformers (5.x, which has NomicBert) and gguf (the output is
committed; tests need none of them):

    python3 scripts/make-nomic-reference.py \
        models-extra/nomic-ai/nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf \
        models/sentence-transformers/all-MiniLM-L6-v2 tests/reference/nomic_hf.json

The GGUF's tensors (llama.cpp's names) are mapped onto transformers' NomicBertModel and
run in f32 (the F16 weights widened exactly). The token ids come from a tokenizer this
script does not build from the GGUF: nomic-embed uses bert-base-uncased's vocabulary,
which all-MiniLM-L6-v2 (a default model) ships with its tokenizer.json; the script
first checks that the GGUF's vocabulary is that one. Embeddings: mean pooling, then L2
normalisation (sentence-transformers' pipeline for this model; llama.cpp's pooling_type
1 is mean). `shortened`: the first four inputs at 256 dimensions by the model card's
Matryoshka recipe (layer norm, keep the first 256, normalise).
"""

import json
import sys

import numpy as np
import torch
import transformers
from gguf import GGUFReader
from transformers import AutoTokenizer, NomicBertConfig, NomicBertModel

gguf_path, tok_dir, out = sys.argv[1:4]
r = GGUFReader(gguf_path)
meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}
tokens = r.fields["tokenizer.ggml.tokens"].contents()
arch = meta["general.architecture"]
assert arch == "nomic-bert", arch

# llama.cpp writes word starts as "▁word" and continuations without "##".
def original(t):
    if t.startswith("[") and t.endswith("]"):
        return t
    return t[1:] if t.startswith("\u2581") else "##" + t

tok = AutoTokenizer.from_pretrained(tok_dir)
hf_vocab = tok.get_vocab()
gguf_vocab = {original(t): i for i, t in enumerate(tokens)}
assert gguf_vocab == hf_vocab, "the GGUF's vocabulary is not bert-base-uncased's"

t = {x.name: torch.from_numpy(np.array(x.data, dtype=np.float32)) for x in r.tensors}
h = meta[f"{arch}.embedding_length"]
cfg = NomicBertConfig(
    vocab_size=len(tokens),
    hidden_size=h,
    num_hidden_layers=meta[f"{arch}.block_count"],
    num_attention_heads=meta[f"{arch}.attention.head_count"],
    intermediate_size=meta[f"{arch}.feed_forward_length"],
    max_position_embeddings=meta[f"{arch}.context_length"],
    type_vocab_size=2,
    layer_norm_eps=meta[f"{arch}.attention.layer_norm_epsilon"],
    rope_parameters={"rope_type": "default", "rope_theta": meta[f"{arch}.rope.freq_base"]},
)
sd = {
    "embeddings.word_embeddings.weight": t["token_embd.weight"],
    "embeddings.token_type_embeddings.weight": t["token_types.weight"],
    "embeddings.LayerNorm.weight": t["token_embd_norm.weight"],
    "embeddings.LayerNorm.bias": t["token_embd_norm.bias"],
}
for i in range(cfg.num_hidden_layers):
    q, k, v = t[f"blk.{i}.attn_qkv.weight"].split(h, dim=0)
    p = f"layers.{i}."
    sd |= {
        p + "self_attn.q_proj.weight": q,
        p + "self_attn.k_proj.weight": k,
        p + "self_attn.v_proj.weight": v,
        p + "self_attn.o_proj.weight": t[f"blk.{i}.attn_output.weight"],
        p + "post_attention_layernorm.weight": t[f"blk.{i}.attn_output_norm.weight"],
        p + "post_attention_layernorm.bias": t[f"blk.{i}.attn_output_norm.bias"],
        p + "mlp.gate_proj.weight": t[f"blk.{i}.ffn_gate.weight"],
        p + "mlp.up_proj.weight": t[f"blk.{i}.ffn_up.weight"],
        p + "mlp.down_proj.weight": t[f"blk.{i}.ffn_down.weight"],
        p + "post_mlp_layernorm.weight": t[f"blk.{i}.layer_output_norm.weight"],
        p + "post_mlp_layernorm.bias": t[f"blk.{i}.layer_output_norm.bias"],
    }
model = NomicBertModel(cfg, add_pooling_layer=False).eval()
missing, unexpected = model.load_state_dict(sd, strict=False)
assert not unexpected, unexpected
assert not [m for m in missing if "position_ids" not in m and "token_type_ids" not in m], missing

sentences = json.load(open("tests/reference/inputs/sentences.json"))
# One input past BERT's 512 positions: rotary positions have no table to run out of.
long = " ".join(f"search_document: paragraph {i} says that {s.lower()}" for i, s in enumerate(sentences * 3))
sentences = sentences + ["search_query: what is the capital of France?", long]
ids = [tok(s, truncation=True, max_length=cfg.max_position_embeddings)["input_ids"] for s in sentences]
MATRYOSHKA = 256
embs, short = [], []
with torch.no_grad():
    for i in ids:
        x = torch.tensor([i])
        states = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
        e = states.mean(dim=0)
        embs.append((e / e.norm().clamp_min(1e-12)).tolist())
        # The model card's recipe for fewer dimensions: layer norm, cut, normalise.
        s = torch.nn.functional.layer_norm(e[None], (e.shape[0],))[0, :MATRYOSHKA]
        short.append((s / s.norm()).tolist())
json.dump(
    {
        "model": "nomic-ai/nomic-embed-text-v1.5 (GGUF F16)",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "pooling": "mean, then L2 normalised",
        "sentences": sentences,
        "token_ids": ids,
        "embeddings": [[round(float(v), 7) for v in e] for e in embs],
        "dimensions": MATRYOSHKA,
        "shortened": [[round(float(v), 7) for v in e] for e in short[:4]],
    },
    open(out, "w"),
)
print(len(sentences), "inputs,", [len(i) for i in ids])
