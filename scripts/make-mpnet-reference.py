#!/usr/bin/env python3
"""sentence-transformers' embeddings of all-mpnet-base-v2 for tests/reference/inputs/sentences.json.

Run once with torch and sentence-transformers (the output is committed; tests need neither):

    python3 scripts/make-mpnet-reference.py models-extra/sentence-transformers/all-mpnet-base-v2 \
        tests/reference/mpnet_st.json

Writes each sentence's token ids (as the model's tokenizer gives them, truncated to its
max_seq_length of 384) and its unit-norm embedding (rounded to 7 decimals).
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

path, out = sys.argv[1], sys.argv[2]
sentences = json.load(open("tests/reference/inputs/sentences.json"))
m = SentenceTransformer(path, device="cpu")
emb = m.encode(sentences, convert_to_numpy=True, normalize_embeddings=False, batch_size=8)
ids = [m.tokenizer(s, truncation=True, max_length=m.max_seq_length)["input_ids"] for s in sentences]
json.dump(
    {
        "model": "sentence-transformers/all-mpnet-base-v2",
        "versions": {"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__},
        "max_seq_length": m.max_seq_length,
        "sentences": sentences,
        "token_ids": ids,
        "embeddings": [[round(float(x), 7) for x in e] for e in emb],
    },
    open(out, "w"),
)
print(len(sentences), "sentences,", [len(i) for i in ids])
