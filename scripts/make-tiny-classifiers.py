#!/usr/bin/env python3
"""Make the tiny sequence-classification models of tests/fixtures/tiny and their goldens.

Run once with the Python reference stack (torch, transformers, tokenizers, safetensors); the
outputs are committed, so the tests need none of it:

    python3 scripts/make-tiny-classifiers.py tests/fixtures/tiny

What it writes:
  bert-reranker-f32/        BertForSequenceClassification with one label: a cross-encoder as
                            sentence-transformers' CrossEncoder loads one (ms-marco style); a
                            lower-casing WordPiece tokenizer whose pair template is
                            [CLS] A [SEP] B [SEP] with token types 0 then 1; 64 positions
  xlm-roberta-classifier-f32/
                            XLMRobertaForSequenceClassification with three named labels; a
                            byte-level BPE tokenizer whose pair template is <s> A </s></s> B </s>
  classifier_goldens.json   per model: transformers' tokenizer ids (and token types) for single
                            texts and (query, document) pairs — one pair long enough to be cut
                            to the model's length, longest first — and the model's logits for each
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny"
os.makedirs(out, exist_ok=True)

# Queries and passages of a search engine's kind, the text cross-encoders are made for.
CORPUS = [
    "what is the capital of france",
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "how do vaccines work",
    "Vaccines train the immune system to recognise a pathogen.",
    "The stock market closed higher on Friday.",
    "Rust is a systems programming language focused on safety.",
    "I loved this film, the acting was wonderful!",
    "Terrible service, I will never come back.",
    "The package arrived on Tuesday.",
] * 20
QUERY = "what is the capital of france"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "The stock market closed higher on Friday.",
    "capital",
    " ".join(CORPUS[:12]),  # longer than the model: truncated, longest first
]
TEXTS = [
    "I loved this film, the acting was wonderful!",
    "Terrible service, I will never come back.",
    "The package arrived on Tuesday.",
    "",
]


def widen(m, seed):
    """Random init is tiny (std 0.02): widen it so scores have real margins."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(1.0 if "LayerNorm.weight" in n else 0.0, 0.1 if "LayerNorm" in n else 0.2)
    return m.eval()


def save(name, cfg, m, tok_obj):
    d = f"{out}/{name}"
    os.makedirs(d, exist_ok=True)
    cfg.save_pretrained(d)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{d}/model.safetensors", metadata={"format": "pt"})
    tok_obj.save(f"{d}/tokenizer.json")


def goldens(m, fast, max_length):
    def run(enc):
        with torch.no_grad():
            kw = {k: torch.tensor([v]) for k, v in enc.items()}
            return m(**kw).logits[0].tolist()

    res = {"texts": [], "pairs": []}
    for t in TEXTS:
        enc = fast(t, truncation=True, max_length=max_length)
        res["texts"].append({"text": t, "ids": enc["input_ids"], "logits": run(enc)})
    for doc in DOCUMENTS:
        enc = fast(QUERY, doc, truncation=True, max_length=max_length)
        res["pairs"].append(
            {
                "query": QUERY,
                "document": doc,
                "ids": enc["input_ids"],
                "token_type_ids": enc.get("token_type_ids"),
                "logits": run(enc),
            }
        )
    return res


all_goldens = {}

# ---- BERT cross-encoder (one label) ---------------------------------------------------------
wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
wp.normalizer = normalizers.BertNormalizer(lowercase=True)
wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
wp.decoder = decoders.WordPiece()
wp.train_from_iterator(
    CORPUS,
    trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
)
cls_id, sep_id = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
wp.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
)
bcfg = BertConfig(
    vocab_size=wp.get_vocab_size(),
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    type_vocab_size=2,
    num_labels=1,
    pad_token_id=0,
)
bcfg.architectures = ["BertForSequenceClassification"]
bert = widen(BertForSequenceClassification(bcfg), 11)
save("bert-reranker-f32", bcfg, bert, wp)
bfast = PreTrainedTokenizerFast(tokenizer_object=wp, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
bfast.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
all_goldens["bert-reranker-f32"] = goldens(bert, bfast, 64)

# ---- XLM-RoBERTa classifier (three labels) --------------------------------------------------
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(
    CORPUS,
    trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ),
)
bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
xcfg = XLMRobertaConfig(
    vocab_size=bpe.get_vocab_size(),
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=130,
    pad_token_id=1,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    num_labels=3,
    id2label={0: "negative", 1: "neutral", 2: "positive"},
    label2id={"negative": 0, "neutral": 1, "positive": 2},
)
xcfg.architectures = ["XLMRobertaForSequenceClassification"]
xlmr = widen(XLMRobertaForSequenceClassification(xcfg), 12)
save("xlm-roberta-classifier-f32", xcfg, xlmr, bpe)
xfast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
# XLM-R takes no token types (its tokenizer's model_input_names leave them out).
xfast.model_input_names = ["input_ids", "attention_mask"]
all_goldens["xlm-roberta-classifier-f32"] = goldens(xlmr, xfast, 128)

json.dump(all_goldens, open(f"{out}/classifier_goldens.json", "w"), indent=1)
for name, g in all_goldens.items():
    print(name, [p["logits"] for p in g["pairs"]], [t["logits"] for t in g["texts"]])
