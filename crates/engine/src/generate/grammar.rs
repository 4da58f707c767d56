//! Constrained decoding: structured outputs and tool calls, through
//! llguidance's grammar engine built on the model's own vocabulary.
//!
//! A [`GrammarVocab`] is built once per model, on the first constrained
//! request (a token trie of the whole vocabulary: ~0.1 s for 151k tokens).
//! Each request compiles its [`GrammarSpec`] into a [`Grammar`] before it is
//! admitted, so a schema the engine cannot enforce is a 400, not a failed
//! stream. The scheduler then asks the grammar for the set of allowed tokens
//! at every step of that sequence and feeds it the token it sampled.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{self, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// Whitespace allowed between JSON tokens: JSON allows any amount, but a
/// model that keeps choosing newlines would never finish the document, so a
/// gap is at most this long (enough for indentation ten levels deep).
const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,24}";

/// What a request constrains its output to.
#[derive(Debug, Clone)]
pub enum GrammarSpec {
    /// `response_format: json_object`: any JSON object.
    JsonObject,
    /// `response_format: json_schema`: a document valid against the schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (tool calls are built as one).
    Lark(String),
}

impl GrammarSpec {
    fn what(&self) -> &'static str {
        match self {
            GrammarSpec::JsonObject | GrammarSpec::JsonSchema(_) => "JSON schema",
            GrammarSpec::Lark(_) => "grammar",
        }
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(json_options(serde_json::json!({
                "type": "object"
            }))),
            GrammarSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(json_options(schema.clone())),
            GrammarSpec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        }
    }
}

/// The engine's JSON formatting options, set on the schema (llguidance reads
/// them from `x-guidance`); a client's own `x-guidance` is replaced, so it
/// cannot lift the whitespace bound.
pub fn json_options(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert(
            "x-guidance".into(),
            serde_json::json!({
                "whitespace_flexible": false,
                "whitespace_pattern": JSON_WHITESPACE,
                "item_separator": ", ",
                "key_separator": ": ",
            }),
        );
    }
    schema
}

/// The model's vocabulary as llguidance needs it.
pub struct GrammarVocab {
    factory: ParserFactory,
    /// The token llguidance treats as end of sequence (the model's first EOS).
    eos: u32,
}

impl std::fmt::Debug for GrammarVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarVocab").field("eos", &self.eos).finish()
    }
}

/// llguidance's view of our tokenizer: the trie for masks, and encoding
/// for the literal strings of a grammar.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// llguidance tokenizes the bytes a grammar forces, which may start or
    /// end inside a UTF-8 character (a constant "😀" after its first byte
    /// token): text runs go through the tokenizer, stray bytes through the
    /// trie. (A lossy conversion turned them into U+FFFD, and the mask then
    /// allowed the token spelling "�".)
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.trie
            .tokenize_with_greedy_fallback(s, |text| self.tokenizer.encode(text, false).unwrap_or_default())
    }
}

impl GrammarVocab {
    /// `n_logits`: the width of the model's output, which may exceed the
    /// tokenizer's vocabulary (padding rows that are never allowed).
    pub fn new(tokenizer: Arc<Tokenizer>, n_logits: usize) -> Result<Self> {
        let vocab = tokenizer.vocab_size().max(n_logits);
        let eos = *tokenizer
            .eos()
            .first()
            .ok_or_else(|| EngineError::internal("constrained decoding needs an end-of-sequence token"))?;
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                if id as usize >= tokenizer.vocab_size() {
                    return Vec::new();
                }
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_special(id) {
                    // The trie's marker for tokens that no text spells.
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(&bytes);
                    marked
                } else {
                    bytes
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(VocabEnv { trie, tokenizer });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| EngineError::internal(format!("building the grammar vocabulary: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // A request's grammar is compiled on a blocking thread before it
            // is admitted; these bound what a hostile schema can cost there
            // and, per step, on the scheduler thread every sequence shares:
            // the grammar's size, the lexer's states (1-2 kB each: ~100 MB
            // at most, not llguidance's default 250,000) and the lexer work
            // for one mask (half the default: ~7 ms).
            max_grammar_size: 200_000,
            max_lexer_states: 50_000,
            step_lexer_fuel: 100_000,
            ..ParserLimits::default()
        };
        Ok(GrammarVocab { factory, eos })
    }

    /// Compile a request's constraint; a grammar the engine cannot build or
    /// enforce is the client's error.
    pub fn compile(self: &Arc<Self>, spec: &GrammarSpec, param: &'static str) -> Result<Grammar> {
        let refused = |why: String| {
            EngineError::invalid(
                format!("cannot enforce this {}: {}", spec.what(), brief(&why)),
                Some(param),
            )
        };
        let parser = self
            .factory
            .create_parser(spec.top_level())
            .map_err(|e| refused(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(refused(e));
        }
        // A grammar whose language is empty (`{"$ref": "#"}`: a value
        // that must contain itself), or only the empty output, would end
        // every output at once.
        match matcher.clone().compute_mask() {
            Ok(mask) if !(mask.is_zero() || mask.num_set() == 1 && mask.is_allowed(self.eos)) => {}
            Ok(_) => return Err(refused("no non-empty output satisfies it".into())),
            Err(e) => return Err(refused(e.to_string())),
        }
        Ok(Grammar {
            matcher,
            vocab: self.clone(),
        })
    }
}

/// llguidance's errors can quote the whole grammar: the first line, cut.
fn brief(error: &str) -> String {
    const MAX: usize = 300;
    let line = error.lines().next().unwrap_or_default();
    if line.len() <= MAX {
        return line.to_string();
    }
    let cut = line.floor_char_boundary(MAX);
    format!("{}…", &line[..cut])
}

/// A compiled constraint, ready to follow one sequence (clone it per
/// sequence: each clone keeps its own parse state).
#[derive(Clone)]
pub struct Grammar {
    matcher: Matcher,
    vocab: Arc<GrammarVocab>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

/// The tokens a grammar allows next.
pub struct AllowedTokens {
    mask: toktrie::SimpleVob,
    eos: u32,
}

impl AllowedTokens {
    /// Whether `id` may come next; `is_eos` says the token ends the
    /// sequence (any of the model's EOS tokens stands for llguidance's one).
    pub fn allows(&self, id: u32, is_eos: bool) -> bool {
        let id = if is_eos { self.eos } else { id };
        (id as usize) < self.mask.len() && self.mask.is_allowed(id)
    }

    pub fn is_empty(&self) -> bool {
        self.mask.is_zero()
    }
}

impl Grammar {
    /// The tokens allowed next; None when the grammar has failed (then the
    /// sequence must end).
    pub fn allowed(&mut self) -> Option<AllowedTokens> {
        let mask = self.matcher.compute_mask_or_eos().ok()?;
        Some(AllowedTokens {
            mask,
            eos: self.vocab.eos,
        })
    }

    /// Feed the sampled token (an EOS counts as llguidance's EOS).
    pub fn accept(&mut self, id: u32, is_eos: bool) -> bool {
        let id = if is_eos { self.vocab.eos } else { id };
        self.matcher.consume_token(id).is_ok()
    }

    /// Whether the grammar can take nothing more: the output is complete.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the output so far is a complete match (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy byte-level BPE vocabulary: one token per byte, no merges, and
    /// an end-of-sequence token.
    fn toy_tokenizer() -> Arc<Tokenizer> {
        static TOKENIZER: std::sync::OnceLock<Arc<Tokenizer>> = std::sync::OnceLock::new();
        TOKENIZER.get_or_init(build_toy_tokenizer).clone()
    }

    fn build_toy_tokenizer() -> Arc<Tokenizer> {
        let alphabet = crate::tokenizer::byte_level_alphabet();
        let vocab: serde_json::Map<String, Value> = alphabet
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 256, "content": "<eos>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "vocab": vocab, "merges": []}
        });
        let dir = std::env::temp_dir().join(format!("hfms-grammar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        Arc::new(
            Tokenizer::from_file(&path, None)
                .unwrap()
                .with_specials(None, vec![256], false),
        )
    }

    fn run(grammar: &mut Grammar, tok: &Tokenizer, text: &str) -> bool {
        let alphabet = crate::tokenizer::byte_level_alphabet();
        for b in text.bytes() {
            let id = tok.token_id(&alphabet[b as usize].to_string()).unwrap();
            let allowed = grammar.allowed().unwrap();
            if !allowed.allows(id, false) {
                return false;
            }
            assert!(grammar.accept(id, false));
        }
        true
    }

    #[test]
    fn json_object_allows_objects_only() {
        let tok = toy_tokenizer();
        let vocab = Arc::new(GrammarVocab::new(tok.clone(), tok.vocab_size()).unwrap());
        let g = vocab.compile(&GrammarSpec::JsonObject, "response_format").unwrap();
        assert!(run(&mut g.clone(), &tok, r#"{"a": [1, 2.5, "x"], "b": {"c": null}}"#));
        assert!(!run(&mut g.clone(), &tok, "[1]"));
        assert!(!run(&mut g.clone(), &tok, r#"{"a": 1,}"#));
        let mut done = g.clone();
        assert!(run(&mut done, &tok, r#"{"a": true}"#));
        assert!(done.is_accepting());
        let eos = tok.eos()[0];
        assert!(done.allowed().unwrap().allows(eos, true));
        // Whitespace between tokens is bounded.
        assert!(!run(&mut g.clone(), &tok, &format!("{{{}}}", " ".repeat(40))));
    }

    #[test]
    fn schema_is_enforced() {
        let tok = toy_tokenizer();
        let vocab = Arc::new(GrammarVocab::new(tok.clone(), tok.vocab_size()).unwrap());
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "n": {"type": "integer"}},
            "required": ["unit", "n"],
            "additionalProperties": false
        });
        let g = vocab
            .compile(&GrammarSpec::JsonSchema(schema), "response_format")
            .unwrap();
        assert!(run(&mut g.clone(), &tok, r#"{"unit": "c", "n": 3}"#));
        assert!(!run(&mut g.clone(), &tok, r#"{"unit": "k""#));
        assert!(!run(&mut g.clone(), &tok, r#"{"unit": "c", "n": 3.5"#));
        assert!(!run(&mut g.clone(), &tok, r#"{"unit": "c", "n": 3, "x""#));
    }

    #[test]
    fn characters_split_across_byte_tokens_are_followed() {
        // One token per byte: every character of these is spelled by
        // tokens that are not UTF-8 on their own.
        let tok = toy_tokenizer();
        let vocab = Arc::new(GrammarVocab::new(tok.clone(), tok.vocab_size()).unwrap());
        for text in ["😀", "漢字", "é"] {
            for spec in [
                GrammarSpec::JsonSchema(serde_json::json!({"const": text})),
                GrammarSpec::Lark(format!("start: {}", serde_json::to_string(text).unwrap())),
            ] {
                let mut g = vocab.compile(&spec, "response_format").unwrap();
                let want = match spec {
                    GrammarSpec::Lark(_) => text.to_string(),
                    _ => format!("\"{text}\""),
                };
                assert!(run(&mut g, &tok, &want), "{spec:?}");
                assert!(g.is_accepting(), "{spec:?}");
            }
        }
    }

    #[test]
    fn unsupported_schemas_are_client_errors() {
        let tok = toy_tokenizer();
        let vocab = Arc::new(GrammarVocab::new(tok.clone(), tok.vocab_size()).unwrap());
        for bad in [
            serde_json::json!({"type": "object", "properties": {"a": {"type": "nonsense"}}}),
            serde_json::json!({"type": "string", "pattern": "("}),
            serde_json::json!({"$ref": "#/definitions/missing"}),
            serde_json::json!({"type": "integer", "minimum": 5, "maximum": 1}),
            // Its language is empty. (One that only infinite documents
            // satisfy is not detected: such an output ends at max_tokens.)
            serde_json::json!({"$ref": "#"}),
        ] {
            let e = vocab
                .compile(
                    &GrammarSpec::JsonSchema(bad.clone()),
                    "response_format.json_schema.schema",
                )
                .unwrap_err();
            assert!(matches!(e, EngineError::InvalidRequest { .. }), "{bad}: {e}");
        }
    }
}
