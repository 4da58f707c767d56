//! Tokenizers: `tokenizer.json` where a model folder has one, otherwise one
//! rebuilt from GGUF metadata ([`gguf`]). Both end up as a
//! `tokenizers::Tokenizer`, wrapped with what serving needs on top: special
//! token ids, the raw bytes of each token (for logprobs), and incremental
//! decoding for streams.

pub mod chat_template;
mod gguf;

use std::collections::HashSet;
use std::path::Path;

use tokenizers::Tokenizer as HfTokenizer;

use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;

pub use chat_template::ChatTemplate;

/// How the vocabulary spells bytes, which decides how to recover a token's
/// raw bytes for logprobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// GPT-2 byte-level BPE: every byte is a printable stand-in character.
    ByteLevel,
    /// SentencePiece: `▁` for space, `<0xNN>` for raw bytes.
    SentencePiece,
    /// WordPiece (BERT): `##` continues a word.
    WordPiece,
    /// Anything else: fall back to decoding the token alone.
    Other,
}

pub struct Tokenizer {
    inner: HfTokenizer,
    kind: VocabKind,
    bos: Option<u32>,
    /// Tokens that end generation (EOS, end-of-turn tokens).
    eos: Vec<u32>,
    add_bos: bool,
    special: HashSet<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Load `tokenizer.json`. `max_length`: truncate at this many tokens
    /// (None: never). Padding and truncation stored in the file are dropped:
    /// batches here are not padded, and truncation is the model's to decide.
    pub fn from_file(path: &Path, max_length: Option<usize>) -> Result<Self> {
        let mut inner = read_tokenizer_json(path)?;
        inner.with_padding(None);
        let trunc = max_length.map(|max_length| tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        });
        inner.with_truncation(trunc).map_err(tok_err)?;
        let kind = detect_kind(&inner);
        let special: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            kind,
            bos: None,
            eos: Vec::new(),
            add_bos: false,
            special,
            vocab_size,
        })
    }

    /// Rebuild the tokenizer from GGUF metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gguf::build(file))).unwrap_or_else(|p| {
            Err(EngineError::Tokenizer(format!(
                "{}: the tokenizer could not be built: {}",
                file.path.display(),
                panic_text(p.as_ref())
            )))
        })
    }

    /// Truncate inputs at `max_length` tokens, special tokens included
    /// (an encoder's positions; `from_file` takes it as an argument).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        let trunc = tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        };
        self.inner.with_truncation(Some(trunc)).map_err(tok_err)?;
        Ok(self)
    }

    /// Set the special ids from a model's configuration.
    pub fn with_specials(mut self, bos: Option<u32>, eos: Vec<u32>, add_bos: bool) -> Self {
        self.bos = bos;
        for e in eos {
            if !self.eos.contains(&e) {
                self.eos.push(e);
            }
        }
        self.add_bos = add_bos;
        self
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encode text. `add_special`: run the post-processor (BERT's [CLS]/[SEP])
    /// and prepend BOS where the model asks for it.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = guarded(|| self.inner.encode(text, add_special))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special
            && self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Encode several texts on the tokenizers' own thread pool settings.
    pub fn encode_batch(&self, texts: &[String], add_special: bool) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t, add_special)).collect()
    }

    /// Encode a (query, document) pair with the special tokens of the
    /// tokenizer's pair template (BERT: `[CLS] a [SEP] b [SEP]`); returns the
    /// ids and where the second segment (token type 1) starts. Truncation
    /// takes from the longer text first.
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<(Vec<u32>, usize)> {
        let enc = guarded(|| self.inner.encode((a, b), true))?;
        let ids = enc.get_ids().to_vec();
        let second = enc.get_type_ids().iter().position(|&t| t != 0).unwrap_or(ids.len());
        Ok((ids, second))
    }

    /// Encode and also return the untruncated length, for usage reporting
    /// and for errors that say how long an input was.
    pub fn encode_with_overflow(&self, text: &str, add_special: bool) -> Result<(Vec<u32>, usize)> {
        let enc = guarded(|| self.inner.encode(text, add_special))?;
        let over: usize = enc.get_overflowing().iter().map(|o| o.get_ids().len()).sum();
        let ids = enc.get_ids().to_vec();
        let total = ids.len() + over;
        Ok((ids, total))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guarded(|| self.inner.decode(ids, skip_special))
    }

    /// The raw bytes a token stands for (OpenAI's `bytes` in logprobs).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(tok) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.special.contains(&id) {
            return tok.into_bytes();
        }
        match self.kind {
            VocabKind::ByteLevel => {
                let table = byte_level_inverse();
                let mut out = Vec::with_capacity(tok.len());
                for ch in tok.chars() {
                    match table.get(&ch) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                out
            }
            VocabKind::SentencePiece => {
                if let Some(b) = parse_byte_token(&tok) {
                    return vec![b];
                }
                tok.replace('\u{2581}', " ").into_bytes()
            }
            VocabKind::WordPiece => match tok.strip_prefix("##") {
                Some(rest) => rest.as_bytes().to_vec(),
                None => tok.into_bytes(),
            },
            VocabKind::Other => self.decode(&[id], false).unwrap_or_default().into_bytes(),
        }
    }

    /// The display form of a token for logprobs: its bytes as (lossy) UTF-8.
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }
}

/// No real `tokenizer.json` comes near this (the largest vocabularies make
/// some 30 MB); a bigger file is refused before it is read into memory.
const MAX_TOKENIZER_JSON: u64 = 256 << 20;

/// Parse a `tokenizer.json`. The `tokenizers` crate panics on some malformed
/// files (a syntax error inside `decoder` hits an `expect`), so the JSON is
/// checked first, and a panic left in its deserialisers becomes an error too.
fn read_tokenizer_json(path: &Path) -> Result<HfTokenizer> {
    let fail = |msg: String| EngineError::Tokenizer(format!("{}: {msg}", path.display()));
    let len = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?.len();
    if len > MAX_TOKENIZER_JSON {
        return Err(fail(format!(
            "{len} bytes is larger than any tokenizer (at most {MAX_TOKENIZER_JSON})"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let tokenizer = match std::panic::catch_unwind(|| text.parse::<HfTokenizer>()) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Err(p) => return Err(fail(format!("malformed ({})", panic_text(p.as_ref())))),
    };
    let post = serde_json::to_value(tokenizer.get_post_processor()).unwrap_or_default();
    check_post_processor(&post).map_err(|e| fail(format!("post_processor: {e}")))?;
    Ok(tokenizer)
}

/// What the `tokenizers` crate assumes of a `TemplateProcessing` and checks
/// when one is built in code, but not when one is read from a file (it then
/// panics while encoding): every special token a template names is defined,
/// with as many ids as tokens, and the single-sequence template uses only
/// sequence A.
fn check_post_processor(p: &serde_json::Value) -> std::result::Result<(), String> {
    match p.get("type").and_then(|t| t.as_str()) {
        Some("Sequence") => p
            .get("processors")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .try_for_each(check_post_processor),
        Some("TemplateProcessing") => {
            let specials = p.get("special_tokens").and_then(|v| v.as_object());
            for (name, t) in specials.into_iter().flatten() {
                let len = |k: &str| t.get(k).and_then(|v| v.as_array()).map(|a| a.len());
                if len("ids") != len("tokens") {
                    return Err(format!("special token {name:?} has not as many ids as tokens"));
                }
            }
            for (which, template) in ["single", "pair"].map(|k| (k, p.get(k))) {
                for piece in template.and_then(|v| v.as_array()).into_iter().flatten() {
                    if let Some(id) = piece.pointer("/SpecialToken/id").and_then(|v| v.as_str())
                        && !specials.is_some_and(|s| s.contains_key(id))
                    {
                        return Err(format!(
                            "the {which} template names {id:?}, which is not a special token"
                        ));
                    }
                    if which == "single" && piece.pointer("/Sequence/id").and_then(|v| v.as_str()) == Some("B") {
                        return Err("the single template names sequence B".to_string());
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Run a call into the `tokenizers` crate, a panic in it (on a tokenizer
/// file it did not check) becoming an error rather than taking down the
/// request or the model's thread.
fn guarded<T>(f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(tok_err),
        Err(p) => Err(EngineError::Tokenizer(format!(
            "the tokenizer failed: {}",
            panic_text(p.as_ref())
        ))),
    }
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// `<0x0A>` → 0x0A.
fn parse_byte_token(tok: &str) -> Option<u8> {
    let hex = tok.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn detect_kind(t: &HfTokenizer) -> VocabKind {
    let json = serde_json::to_value(t.get_decoder()).unwrap_or_default();
    let model = serde_json::to_value(t.get_model()).unwrap_or_default();
    let dec_type = json.get("type").and_then(|v| v.as_str()).unwrap_or("");
    let model_type = model.get("type").and_then(|v| v.as_str()).unwrap_or("");
    let decoders_text = json.to_string();
    if dec_type == "ByteLevel" || decoders_text.contains("\"ByteLevel\"") {
        VocabKind::ByteLevel
    } else if model_type == "WordPiece" || dec_type == "WordPiece" {
        VocabKind::WordPiece
    } else if decoders_text.contains("\u{2581}") || decoders_text.contains("ByteFallback") {
        VocabKind::SentencePiece
    } else {
        VocabKind::Other
    }
}

/// GPT-2's byte → printable character table, inverted.
fn byte_level_inverse() -> &'static std::collections::HashMap<char, u8> {
    static T: std::sync::OnceLock<std::collections::HashMap<char, u8>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        byte_level_alphabet()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// GPT-2's mapping of each byte to a printable character: printable Latin-1
/// bytes map to themselves, the rest to U+0100 onwards in byte order.
pub(crate) fn byte_level_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    out
}

/// Turns a growing list of token ids into text deltas without re-decoding
/// everything each step, and without emitting half of a multi-byte
/// character (a token may end inside one).
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a token; returns the new text, possibly empty.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{fffd}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back at the end of generation.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            Ok(full[prefix.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hfms-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":null,"post_processor":null,"decoder":{"type":"Fuse"},
        "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(Tokenizer::from_file(&write("good.json", GOOD), None).is_ok());
        // A syntax error inside `decoder` hits an `expect` in the tokenizers
        // crate; a cut anywhere is a syntax error somewhere.
        let bad = GOOD.replace(r#"{"type":"Fuse"}"#, r#"{"type" "Fuse"}"#);
        let e = Tokenizer::from_file(&write("bad-decoder.json", &bad), None).unwrap_err();
        assert!(matches!(e, EngineError::Tokenizer(_)));
        assert!(e.to_string().contains("bad-decoder.json"), "{e}");
        for cut in (0..GOOD.len()).step_by(7) {
            let p = write("cut.json", &GOOD[..cut]);
            assert!(Tokenizer::from_file(&p, None).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn post_processor_templates_are_checked() {
        let with = |post: &str| GOOD.replace(r#""post_processor":null"#, &format!(r#""post_processor":{post}"#));
        let ok = r#"{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},
            {"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},
            {"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"[CLS]":{"id":"[CLS]","ids":[0],"tokens":["a"]}}}"#;
        let t = Tokenizer::from_file(&write("template-ok.json", &with(ok)), None).unwrap();
        assert_eq!(t.encode("a", true).unwrap(), vec![0, 0]);
        // Each of these panicked in `encode`.
        for (bad, why) in [
            (
                ok.replace(r#""special_tokens":{"[CLS]""#, r#""special_tokens":{"[SEP]""#),
                "not a special token",
            ),
            (ok.replace(r#""ids":[0]"#, r#""ids":[0,0]"#), "as many ids as tokens"),
            (ok.replacen(r#""id":"A""#, r#""id":"B""#, 1), "sequence B"),
        ] {
            let post = format!(r#"{{"type":"Sequence","processors":[{bad}]}}"#);
            let e = Tokenizer::from_file(&write("template-bad.json", &with(&post)), None).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
