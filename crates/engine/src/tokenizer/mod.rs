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
        let mut inner =
            HfTokenizer::from_file(path).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
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
        gguf::build(file)
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
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
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

    /// Encode and also return the untruncated length, for usage reporting
    /// and for errors that say how long an input was.
    pub fn encode_with_overflow(&self, text: &str, add_special: bool) -> Result<(Vec<u32>, usize)> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        let over: usize = enc.get_overflowing().iter().map(|o| o.get_ids().len()).sum();
        let ids = enc.get_ids().to_vec();
        let total = ids.len() + over;
        Ok((ids, total))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
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
