//! Rebuild a tokenizer from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp
//! does, instead of trusting a converter's approximation.
//!
//! - `gpt2`: byte-level BPE from `tokens` + `merges`; the pre-tokenizer is the
//!   regex sequence llama.cpp uses for `tokenizer.ggml.pre`, each regex
//!   splitting the pieces of the previous one (HF `Split`, `Isolated`).
//!   No prefix space is added (candle's converter adds one: wrong for these).
//! - `llama`: SentencePiece BPE with byte fallback. Merges are derived from
//!   the vocabulary and scores (a pair merges into a token that exists, ranked
//!   by that token's score), the way HF's converter does for Llama.
//!
//! - `bert`: WordPiece with BERT's lower-casing normaliser and `[CLS] … [SEP]`
//!   template. llama.cpp's converter marks word starts with `▁` and drops
//!   the `##` of continuations; both are turned back into WordPiece's form.
//!
//! Tokens of type CONTROL (3) and USER_DEFINED (4) become added tokens, so
//! text like `<|im_start|>` in a rendered chat template maps to its id.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer as HfTokenizer,
};

use super::{Tokenizer, VocabKind};
use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = file
        .get(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| EngineError::Tokenizer(format!("GGUF has no {key}")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| EngineError::Tokenizer(format!("{key} holds a non-string")))
        })
        .collect()
}

fn numbers(file: &GgufFile, key: &str) -> Option<Vec<f64>> {
    let arr = file.get(key)?.as_array()?;
    arr.iter().map(|v| v.as_f64()).collect()
}

/// llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre`.
fn pre_regexes(pre: &str) -> Vec<&'static str> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "dbrx"
        | "smaug-bpe" => vec![LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" | "grok-2" => vec![QWEN2],
        "chatglm-bpe" | "chatglm4" => vec![LLAMA3],
        "gpt-4o" | "llama4" | "minimax-m2" => vec![GPT4O],
        "tekken" => vec![TEKKEN],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code"
        | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
            vec![GPT2]
        }
        "falcon" => vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
        "deepseek-v3" | "hunyuan-dense" => vec![
            r"\p{N}{1,3}",
            r"[一-龥぀-ゟ゠-ヿ]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ],
        "deepseek-coder" => vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
        // llama.cpp's default for an unknown or missing `pre`.
        _ => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    }
}

pub(super) fn build(file: &GgufFile) -> Result<Tokenizer> {
    let model = file.get_str("tokenizer.ggml.model").unwrap_or("llama");
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

    let (mut inner, kind) = match model {
        "gpt2" => {
            let merges = strings(file, "tokenizer.ggml.merges")?;
            let merges: Vec<(String, String)> = merges
                .iter()
                .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect();
            let bpe = BPE::builder()
                .vocab_and_merges(vocab.clone(), merges)
                .ignore_merges(false)
                .build()
                .map_err(err)?;
            let mut t = HfTokenizer::new(bpe);
            let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let mut seq: Vec<PreTokenizerWrapper> = Vec::new();
            for re in pre_regexes(pre) {
                let split = Split::new(
                    SplitPattern::Regex(re.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(err)?;
                seq.push(split.into());
            }
            seq.push(ByteLevel::new(false, true, false).into());
            t.with_pre_tokenizer(Some(PreSequence::new(seq)));
            t.with_decoder(Some(ByteLevelDecoder::new(false, true, false)));
            (t, VocabKind::ByteLevel)
        }
        "llama" => {
            let scores = numbers(file, "tokenizer.ggml.scores").unwrap_or_else(|| vec![0.0; tokens.len()]);
            let merges = merges_from_scores(&tokens, &scores, &types);
            let unk = file
                .get_u64("tokenizer.ggml.unknown_token_id")
                .and_then(|i| tokens.get(i as usize).cloned());
            let mut b = BPE::builder()
                .vocab_and_merges(vocab.clone(), merges)
                .byte_fallback(true)
                .fuse_unk(true);
            if let Some(unk) = unk {
                b = b.unk_token(unk);
            }
            let bpe = b.build().map_err(err)?;
            let mut t = HfTokenizer::new(bpe);
            let add_space = file
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            let mut norms: Vec<NormalizerWrapper> = Vec::new();
            if add_space {
                norms.push(Prepend::new("\u{2581}".to_string()).into());
            }
            norms.push(Replace::new(" ", "\u{2581}").map_err(err)?.into());
            t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)))
                .map_err(err)?;
            let mut decs: Vec<DecoderWrapper> = vec![
                Replace::new("\u{2581}", " ").map_err(err)?.into(),
                ByteFallback::default().into(),
                Fuse::default().into(),
            ];
            if add_space {
                decs.push(Strip::new(' ', 1, 0).into());
            }
            t.with_decoder(Some(DecoderSequence::new(decs)));
            (t, VocabKind::SentencePiece)
        }
        "bert" => (wordpiece(file, &tokens)?, VocabKind::WordPiece),
        other => {
            return Err(EngineError::Tokenizer(format!(
                "GGUF tokenizer model '{other}' is not supported (supported: gpt2, llama, bert)"
            )));
        }
    };

    // Control and user-defined tokens are matched verbatim in input text.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL).normalized(false))
        .collect();
    inner.add_special_tokens(added).map_err(err)?;

    let special = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == TOKEN_TYPE_CONTROL)
        .map(|(i, _)| i as u32)
        .collect();

    let bos = special_id(file, "tokenizer.ggml.bos_token_id", tokens.len());
    let mut eos: Vec<u32> = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = special_id(file, key, tokens.len())
            && !eos.contains(&id)
        {
            eos.push(id);
        }
    }
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(model == "llama");
    let vocab_size = tokens.len();
    Ok(Tokenizer {
        inner,
        kind,
        bos,
        eos,
        add_bos,
        special,
        vocab_size,
    })
}

/// WordPiece from a converted BERT vocabulary: `▁word` starts a word,
/// `piece` continues one (`##piece` in the original), `[X]` is kept as it
/// is (llama.cpp's converter decides by these brackets, not token types).
fn wordpiece(file: &GgufFile, tokens: &[String]) -> Result<HfTokenizer> {
    let vocab: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let original = if t.starts_with('[') && t.ends_with(']') {
                t.clone()
            } else if let Some(word) = t.strip_prefix('\u{2581}') {
                word.to_string()
            } else {
                format!("##{t}")
            };
            (original, i as u32)
        })
        .collect();
    let name = |key: &str, default: &str| {
        special_id(file, key, tokens.len())
            .map(|i| tokens[i as usize].clone())
            .unwrap_or_else(|| default.to_string())
    };
    let unk = name("tokenizer.ggml.unknown_token_id", "[UNK]");
    let cls = name("tokenizer.ggml.cls_token_id", "[CLS]");
    let sep = name("tokenizer.ggml.seperator_token_id", "[SEP]");
    let id = |t: &str| {
        vocab
            .get(t)
            .copied()
            .ok_or_else(|| EngineError::Tokenizer(format!("the BERT vocabulary has no {t} token")))
    };
    // WordPiece falls back to the unknown token: it must be in the vocabulary.
    id(&unk)?;
    let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
    let model = WordPiece::builder()
        .vocab(vocab.into_iter().collect::<ahash::AHashMap<_, _>>())
        .unk_token(unk)
        .continuing_subword_prefix("##".into())
        .build()
        .map_err(err)?;
    let mut t = HfTokenizer::new(model);
    // llama.cpp lower-cases and strips accents for every BERT vocabulary
    // (uncased, as the GGUF BERT embedders are).
    t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(err)?;
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
    t.with_decoder(Some(WordPieceDecoder::default()));
    Ok(t)
}

/// A special token id from the metadata. One outside the vocabulary is
/// ignored, as llama.cpp does ("bad special token"): a BOS that is not a
/// token would make every prompt fail at the embedding lookup.
fn special_id(file: &GgufFile, key: &str, vocab: usize) -> Option<u32> {
    let id = file.get_u64(key)?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < vocab => Some(id),
        _ => {
            tracing::warn!(
                file = %file.path.display(),
                "{key} = {id} is outside the vocabulary of {vocab} tokens; ignored"
            );
            None
        }
    }
}

/// Tokens longer than this are not split into merges: finding a token's
/// merges costs the square of its length, and no SentencePiece vocabulary
/// has pieces anywhere near this long (its default limit is 16 characters).
const MAX_MERGED_TOKEN_BYTES: usize = 512;

/// SentencePiece BPE merges recovered from the vocabulary: every split of a
/// normal token into two tokens that exist is a merge, ranked by the merged
/// token's score (higher merges first), ties by the merged token's id, then
/// the parts' ids (the order HF's converter produces).
fn merges_from_scores(tokens: &[String], scores: &[f64], types: &[i64]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(1) != 1 || tok.len() > MAX_MERGED_TOKEN_BYTES {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(split);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((score, li, ri, id));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.3.cmp(&b.3))
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    merges
        .into_iter()
        .map(|(_, l, r, _)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::testing::{build as gguf, string, strings, u64v, write};

    #[test]
    fn special_ids_outside_the_vocabulary_are_ignored() {
        let bytes = gguf(
            &[
                ("tokenizer.ggml.model", string("gpt2")),
                ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
                ("tokenizer.ggml.merges", strings(&["a b"])),
                // 2^32 + 1 used to wrap onto token 1.
                ("tokenizer.ggml.bos_token_id", u64v((1 << 32) + 1)),
                ("tokenizer.ggml.eos_token_id", u64v(3)),
                ("tokenizer.ggml.eot_token_id", u64v(2)),
            ],
            &[],
            &[],
        );
        let f = GgufFile::open(&write("specials.gguf", &bytes)).unwrap();
        let t = build(&f).unwrap();
        assert_eq!(t.bos(), None);
        assert_eq!(t.eos(), &[2]);
        assert_eq!(t.encode("ab", true).unwrap(), vec![2]);
    }

    /// The payload of an array of i32.
    fn i32s(items: &[i32]) -> (u32, Vec<u8>) {
        let mut b = Vec::new();
        b.extend_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for v in items {
            b.extend_from_slice(&v.to_le_bytes());
        }
        (9, b)
    }

    #[test]
    fn bert_vocabularies_become_wordpiece_again() {
        let tokens = [
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "\u{2581}hello",
            "\u{2581}play",
            "ing",
            "\u{2581}world",
            "\u{2581}!",
            "\u{2581}cafe",
        ];
        let bytes = gguf(
            &[
                ("tokenizer.ggml.model", string("bert")),
                ("tokenizer.ggml.tokens", strings(&tokens)),
                ("tokenizer.ggml.token_type", i32s(&[3, 3, 3, 3, 1, 1, 1, 1, 1, 1])),
                ("tokenizer.ggml.unknown_token_id", u64v(1)),
                ("tokenizer.ggml.cls_token_id", u64v(2)),
                ("tokenizer.ggml.seperator_token_id", u64v(3)),
            ],
            &[],
            &[],
        );
        let f = GgufFile::open(&write("wordpiece.gguf", &bytes)).unwrap();
        let t = build(&f).unwrap();
        assert_eq!(t.kind(), VocabKind::WordPiece);
        // Lower-cased, accents stripped, `##ing` continues `play`.
        let ids = t.encode("Hello PLAYING Café world!", true).unwrap();
        assert_eq!(ids, vec![2, 4, 5, 6, 9, 7, 8, 3]);
        assert_eq!(t.decode(&ids, true).unwrap(), "hello playing cafe world!");
        assert_eq!(t.encode("xyz", false).unwrap(), vec![1]);
        let (pair, second) = t.encode_pair("hello", "world").unwrap();
        assert_eq!((pair, second), (vec![2, 4, 3, 7, 3], 3));
        assert_eq!(t.encode("", true).unwrap(), vec![2, 3]);
        // No [CLS] or [SEP] in the vocabulary: a clear error, not a panic.
        let bytes = gguf(
            &[
                ("tokenizer.ggml.model", string("bert")),
                ("tokenizer.ggml.tokens", strings(&["[UNK]", "\u{2581}a"])),
            ],
            &[],
            &[],
        );
        let f = GgufFile::open(&write("wordpiece-bad.gguf", &bytes)).unwrap();
        let Err(e) = build(&f) else {
            panic!("built without a [CLS]")
        };
        let e = e.to_string();
        assert!(e.contains("[CLS]"), "{e}");
        let bytes = gguf(
            &[
                ("tokenizer.ggml.model", string("bert")),
                ("tokenizer.ggml.tokens", strings(&["[CLS]", "[SEP]", "\u{2581}a"])),
            ],
            &[],
            &[],
        );
        let f = GgufFile::open(&write("wordpiece-no-unk.gguf", &bytes)).unwrap();
        let Err(e) = build(&f) else {
            panic!("built without an [UNK]")
        };
        assert!(e.to_string().contains("[UNK]"), "{e}");
    }

    #[test]
    fn long_tokens_are_not_split_into_merges() {
        let tokens: Vec<String> = vec!["a".into(), "aa".into()];
        assert_eq!(
            merges_from_scores(&tokens, &[0.0; 2], &[1; 2]),
            vec![("a".into(), "aa"[1..].into())]
        );
        // The long token is "a" + a token, but splitting it costs the square
        // of its length: it makes no merge.
        let n = MAX_MERGED_TOKEN_BYTES;
        let tokens: Vec<String> = vec!["a".into(), "a".repeat(n), "a".repeat(n + 1)];
        let merges = merges_from_scores(&tokens, &[0.0; 3], &[1; 3]);
        assert!(merges.iter().all(|(l, r)| l.len() + r.len() <= n), "{}", merges.len());
    }
}
