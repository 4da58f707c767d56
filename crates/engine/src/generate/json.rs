//! Incremental JSON validation for constrained decoding
//! (`response_format: {"type": "json_object"}`).
//!
//! The scheduler samples one token at a time and a token is a run of raw bytes
//! that may end in the middle of a UTF-8 character, so validation works on
//! bytes and keeps every unfinished construct (string escape, UTF-8 sequence,
//! number, literal) in its state between calls. A token is allowed only while
//! the output stays a prefix of some valid JSON document whose top-level value
//! is an object.
//!
//! Every accepted prefix can still be completed: checks that would otherwise
//! fail late (an overlong UTF-8 form, a lone `\uDC00` surrogate escape) are
//! made at the first byte that decides them, so sampling never walks into a
//! dead end where no token is allowed.
//!
//! The state is a few bytes with no heap data, because `can_accept` clones it
//! for every candidate token of every step.

/// Most whitespace bytes in a row outside strings. JSON allows any amount, but
/// a model that keeps choosing newlines would never finish the document.
pub const MAX_WHITESPACE_RUN: u8 = 8;

/// Deepest nesting of objects and arrays, the top-level object included.
/// Bounded so that a model cannot nest forever, and so that the container
/// stack fits in the bits of one `u64`.
pub const MAX_DEPTH: u8 = 64;

/// State of a JSON document being generated, fed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPrefix {
    mode: Mode,
    /// Open containers as a bit stack: bit `i` is set when the container at
    /// nesting level `i` (0 = the top-level object) is an object, clear when
    /// it is an array.
    containers: u64,
    /// Number of open containers.
    depth: u8,
    /// Whitespace bytes in a row just fed outside strings.
    whitespace_run: u8,
}

/// Where in the grammar the next byte lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the top-level object: whitespace or `{`.
    Start,
    /// Just after `{`: a key or `}`.
    FirstKeyOrEnd,
    /// After `,` in an object: a key (no `}`, so no trailing comma).
    Key,
    /// After a key: `:`.
    Colon,
    /// After `:`, or after `,` in an array: a value.
    Value,
    /// Just after `[`: a value or `]`.
    FirstValueOrEnd,
    /// After a complete value: `,` or the bracket closing its container.
    AfterValue,
    String(StringState),
    Number(NumberState),
    /// Inside `true`, `false` or `null`, `matched` bytes of it seen.
    Literal {
        literal: Literal,
        matched: u8,
    },
    /// The top-level object is closed.
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StringState {
    /// A key is followed by `:`, a value by `,` or a closing bracket.
    is_key: bool,
    escape: Escape,
    /// Continuation bytes still owed by a multi-byte UTF-8 character.
    utf8_pending: u8,
    /// Allowed range of the next continuation byte. Right after some lead
    /// bytes it is narrower than `0x80..=0xBF`; that is how overlong forms,
    /// UTF-8 encoded surrogates and code points above U+10FFFF are refused at
    /// their first wrong byte.
    utf8_min: u8,
    utf8_max: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Not in an escape.
    None,
    /// After `\`.
    Backslash,
    /// Reading the hex digits of `\uXXXX`: `digits` seen so far, their value.
    /// `low_surrogate` when this escape must complete a surrogate pair.
    Hex {
        digits: u8,
        value: u16,
        low_surrogate: bool,
    },
    /// After a high surrogate escape: `\` of the low surrogate escape must
    /// follow. Unpaired surrogates are refused although the RFC grammar allows
    /// them, because they cannot be decoded to a Unicode string (serde_json
    /// and Rust's `String` reject them).
    PairBackslash,
    /// After the `\` that must start a low surrogate escape: `u`.
    PairU,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberState {
    /// `-`
    Minus,
    /// A leading `0`, which no digit may follow.
    Zero,
    /// Integer digits starting with `1`-`9`.
    Integer,
    /// `.`
    Dot,
    /// Digits after `.`.
    Fraction,
    /// `e` or `E`.
    Exponent,
    /// `+` or `-` after the exponent mark.
    ExponentSign,
    /// Digits of the exponent.
    ExponentDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    True,
    False,
    Null,
}

/// What one byte did to a string.
enum StringStep {
    Continue,
    Closed,
    Invalid,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPrefix {
    /// An empty document: optional leading whitespace then `{` is expected.
    pub fn new() -> Self {
        JsonPrefix {
            mode: Mode::Start,
            containers: 0,
            depth: 0,
            whitespace_run: 0,
        }
    }

    /// Feed bytes; returns false (and leaves self unchanged) if they cannot
    /// continue a valid document. Once the document is complete only the
    /// empty slice is accepted, so the scheduler must end the sequence.
    pub fn accept(&mut self, bytes: &[u8]) -> bool {
        let mut next = self.clone();
        if next.feed(bytes) {
            *self = next;
            true
        } else {
            false
        }
    }

    /// Would these bytes be accepted? Does not change self and does not
    /// allocate.
    pub fn can_accept(&self, bytes: &[u8]) -> bool {
        self.clone().feed(bytes)
    }

    /// The top-level object is closed (only trailing whitespace may follow).
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Complete
    }

    /// Feeds every byte, stopping at the first invalid one; on false self is
    /// left part-way and must be discarded.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&byte| self.step(byte))
    }

    fn step(&mut self, byte: u8) -> bool {
        if let Mode::String(string) = &mut self.mode {
            return match string.step(byte) {
                StringStep::Continue => true,
                StringStep::Closed => {
                    self.mode = if string.is_key { Mode::Colon } else { Mode::AfterValue };
                    true
                }
                StringStep::Invalid => false,
            };
        }
        if is_whitespace(byte) {
            if self.whitespace_run >= MAX_WHITESPACE_RUN {
                return false;
            }
            self.whitespace_run += 1;
        } else {
            self.whitespace_run = 0;
        }
        match self.mode {
            Mode::Number(number) => {
                if let Some(next) = number.step(byte) {
                    self.mode = Mode::Number(next);
                    return true;
                }
                // A number only ends at the byte after it, which must then be
                // a delimiter; `1.` or `-` cannot end.
                if !number.can_end() {
                    return false;
                }
                self.mode = Mode::AfterValue;
                self.between_tokens(byte)
            }
            Mode::Literal { literal, matched } => {
                let text = literal.text();
                if text[usize::from(matched)] != byte {
                    return false;
                }
                let matched = matched + 1;
                self.mode = if usize::from(matched) == text.len() {
                    Mode::AfterValue
                } else {
                    Mode::Literal { literal, matched }
                };
                true
            }
            _ => self.between_tokens(byte),
        }
    }

    /// A byte outside strings, numbers and literals: whitespace, punctuation
    /// or the first byte of a value.
    fn between_tokens(&mut self, byte: u8) -> bool {
        match (self.mode, byte) {
            (Mode::Complete, _) => false,
            (_, b' ' | b'\t' | b'\n' | b'\r') => true,
            (Mode::Start, b'{') => self.open(true),
            (Mode::FirstKeyOrEnd, b'}') => self.close(true),
            (Mode::FirstKeyOrEnd | Mode::Key, b'"') => {
                self.mode = Mode::String(StringState::new(true));
                true
            }
            (Mode::Colon, b':') => {
                self.mode = Mode::Value;
                true
            }
            (Mode::FirstValueOrEnd, b']') => self.close(false),
            (Mode::Value | Mode::FirstValueOrEnd, _) => self.start_value(byte),
            (Mode::AfterValue, b',') => {
                self.mode = if self.innermost_is_object() {
                    Mode::Key
                } else {
                    Mode::Value
                };
                true
            }
            (Mode::AfterValue, b'}') => self.close(true),
            (Mode::AfterValue, b']') => self.close(false),
            _ => false,
        }
    }

    fn start_value(&mut self, byte: u8) -> bool {
        self.mode = match byte {
            b'{' => return self.open(true),
            b'[' => return self.open(false),
            b'"' => Mode::String(StringState::new(false)),
            b'-' => Mode::Number(NumberState::Minus),
            b'0' => Mode::Number(NumberState::Zero),
            b'1'..=b'9' => Mode::Number(NumberState::Integer),
            b't' => Literal::True.started(),
            b'f' => Literal::False.started(),
            b'n' => Literal::Null.started(),
            _ => return false,
        };
        true
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        let bit = 1u64 << self.depth;
        if object {
            self.containers |= bit;
            self.mode = Mode::FirstKeyOrEnd;
        } else {
            self.containers &= !bit;
            self.mode = Mode::FirstValueOrEnd;
        }
        self.depth += 1;
        true
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.innermost_is_object() != object {
            return false;
        }
        self.depth -= 1;
        self.mode = if self.depth == 0 {
            Mode::Complete
        } else {
            Mode::AfterValue
        };
        true
    }

    fn innermost_is_object(&self) -> bool {
        self.depth > 0 && (self.containers >> (self.depth - 1)) & 1 == 1
    }
}

impl StringState {
    fn new(is_key: bool) -> Self {
        StringState {
            is_key,
            escape: Escape::None,
            utf8_pending: 0,
            utf8_min: 0x80,
            utf8_max: 0xBF,
        }
    }

    fn step(&mut self, byte: u8) -> StringStep {
        if self.utf8_pending > 0 {
            if !(self.utf8_min..=self.utf8_max).contains(&byte) {
                return StringStep::Invalid;
            }
            self.utf8_pending -= 1;
            self.utf8_min = 0x80;
            self.utf8_max = 0xBF;
            return StringStep::Continue;
        }
        let next_escape = match self.escape {
            Escape::None => return self.unescaped(byte),
            Escape::Backslash => match byte {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                b'u' => Escape::Hex {
                    digits: 0,
                    value: 0,
                    low_surrogate: false,
                },
                _ => return StringStep::Invalid,
            },
            Escape::Hex {
                digits,
                value,
                low_surrogate,
            } => {
                let Some(digit) = hex_digit(byte) else {
                    return StringStep::Invalid;
                };
                let value = (value << 4) | u16::from(digit);
                let digits = digits + 1;
                // The first two digits decide whether the escape is a low
                // surrogate (`DC`-`DF`), so refuse a mismatch right there.
                let decided_wrong = match digits {
                    1 => low_surrogate && value != 0xD,
                    2 => low_surrogate != (0xDC..=0xDF).contains(&value),
                    _ => false,
                };
                if decided_wrong {
                    return StringStep::Invalid;
                }
                if digits < 4 {
                    Escape::Hex {
                        digits,
                        value,
                        low_surrogate,
                    }
                } else if !low_surrogate && (0xD800..=0xDBFF).contains(&value) {
                    Escape::PairBackslash
                } else {
                    Escape::None
                }
            }
            Escape::PairBackslash if byte == b'\\' => Escape::PairU,
            Escape::PairU if byte == b'u' => Escape::Hex {
                digits: 0,
                value: 0,
                low_surrogate: true,
            },
            Escape::PairBackslash | Escape::PairU => return StringStep::Invalid,
        };
        self.escape = next_escape;
        StringStep::Continue
    }

    /// A byte that is neither part of an escape nor a UTF-8 continuation.
    fn unescaped(&mut self, byte: u8) -> StringStep {
        // Continuation bytes owed after a lead byte and the range of the first
        // one (RFC 3629 table of well-formed byte sequences).
        let (pending, min, max) = match byte {
            b'"' => return StringStep::Closed,
            b'\\' => {
                self.escape = Escape::Backslash;
                return StringStep::Continue;
            }
            0x00..=0x1F => return StringStep::Invalid,
            0x20..=0x7F => return StringStep::Continue,
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            // Stray continuation bytes, overlong leads C0/C1, and leads of
            // code points above U+10FFFF.
            0x80..=0xC1 | 0xF5..=0xFF => return StringStep::Invalid,
        };
        self.utf8_pending = pending;
        self.utf8_min = min;
        self.utf8_max = max;
        StringStep::Continue
    }
}

impl NumberState {
    /// The state after `byte`, or None when `byte` is not part of the number.
    fn step(self, byte: u8) -> Option<NumberState> {
        use NumberState::*;
        Some(match (self, byte) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') | (Integer, b'0'..=b'9') => Integer,
            (Zero | Integer, b'.') => Dot,
            (Dot | Fraction, b'0'..=b'9') => Fraction,
            (Zero | Integer | Fraction, b'e' | b'E') => Exponent,
            (Exponent, b'+' | b'-') => ExponentSign,
            (Exponent | ExponentSign | ExponentDigits, b'0'..=b'9') => ExponentDigits,
            _ => return None,
        })
    }

    fn can_end(self) -> bool {
        use NumberState::*;
        matches!(self, Zero | Integer | Fraction | ExponentDigits)
    }
}

impl Literal {
    fn text(self) -> &'static [u8] {
        match self {
            Literal::True => b"true",
            Literal::False => b"false",
            Literal::Null => b"null",
        }
    }

    /// The mode after the first byte of the literal.
    fn started(self) -> Mode {
        Mode::Literal {
            literal: self,
            matched: 1,
        }
    }
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-written valid documents covering every part of the grammar.
    const VALID: &[&str] = &[
        "{}",
        "{ }",
        "        {}",
        r#"{"a":1}"#,
        r#"{"a":[]}"#,
        r#"{"a":{}}"#,
        r#"{"a":[ ]}"#,
        r#"{"a": [1, 2, 3]}"#,
        r#"{"nested":{"deeper":{"deepest":[[[]]]}}}"#,
        r#"{"t":true,"f":false,"n":null}"#,
        r#"{"list":[true,false,null,0,-0,"x",{},[]]}"#,
        r#"{"zero":0,"neg":-12,"frac":3.25,"negfrac":-0.5}"#,
        r#"{"e1":1e5,"e2":1E+5,"e3":2.5e-3,"e4":-0E0,"e5":10e010}"#,
        r#"{"k":[-1.0e-0,0.0,1E9,0e1,0.5E-07]}"#,
        r#"{"big":123456789012345678901234567890}"#,
        r#"{"escapes":"\"\\\/\b\f\n\r\t"}"#,
        r#"{"unicode_escape":"\u00e9\u4E2D\uFFFF\u0000\uD7FF\uE000"}"#,
        r#"{"pair":"\uD83D\uDE42","max":"\uDBFF\uDFFF"}"#,
        r#"{"utf8":"é中🙂"}"#,
        r#"{"ключ":"значение"}"#,
        r#"{"emoji":"🙂🙂","cjk":"中文","accent":"café","edge":"߿ࠀ퟿�𐀀􏿿"}"#,
        r#"{"":""}"#,
        r#"{"a" : 1 , "b" : 2}"#,
        "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {\"c\": null}\n}",
        "{\t\"tab\"\t:\r\n\"cr\"}",
        r#"{"mixed":[{"a":[{"b":[1.5e10]}]}]}"#,
        r#"{"arr":[[1,2],[3,[4,[5]]]]}"#,
        r#"{"spaces":"        lots        of        spaces        "}"#,
        "{\"del\":\"\u{7f}~\\u007f\"}",
        r#"{"slash":"a/b\/c","controls":"\u001f\u0020"}"#,
        r#"{"a":true ,"b":false , "c" :null}"#,
        r#"{"key with \"quotes\"":{"\u0041":[{}, {"x":[null]}]}}"#,
    ];

    /// Tiny deterministic PRNG (xorshift64*), so tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Index of the first byte refused when feeding one byte at a time, or
    /// None when every byte is accepted.
    fn first_rejected(doc: &[u8]) -> Option<usize> {
        let mut state = JsonPrefix::new();
        doc.iter().position(|&byte| !state.accept(&[byte]))
    }

    fn accepts_whole(doc: &[u8]) -> Option<JsonPrefix> {
        let mut state = JsonPrefix::new();
        state.accept(doc).then_some(state)
    }

    fn is_complete_document(doc: &[u8]) -> bool {
        accepts_whole(doc).is_some_and(|state| state.is_complete())
    }

    #[test]
    fn valid_corpus_is_valid_for_serde_json() {
        for doc in VALID {
            let value: serde_json::Value = serde_json::from_str(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert!(value.is_object(), "{doc}");
        }
    }

    #[test]
    fn valid_documents_fed_whole_are_complete() {
        for doc in VALID {
            let state = accepts_whole(doc.as_bytes()).unwrap_or_else(|| panic!("{doc}"));
            assert!(state.is_complete(), "{doc}");
        }
    }

    #[test]
    fn valid_documents_fed_byte_by_byte_every_prefix_accepted_and_incomplete() {
        for doc in VALID {
            let bytes = doc.as_bytes();
            let mut state = JsonPrefix::new();
            for (i, &byte) in bytes.iter().enumerate() {
                assert!(!state.is_complete(), "{doc}: complete before byte {i}");
                assert!(state.can_accept(&[byte]), "{doc}: byte {i}");
                assert!(state.accept(&[byte]), "{doc}: byte {i}");
            }
            assert!(state.is_complete(), "{doc}");
        }
    }

    #[test]
    fn valid_documents_in_random_splits_are_complete() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for doc in VALID {
            let bytes = doc.as_bytes();
            for _ in 0..50 {
                let mut state = JsonPrefix::new();
                let mut at = 0;
                while at < bytes.len() {
                    let end = (at + rng.below(7)).min(bytes.len());
                    let chunk = &bytes[at..end];
                    let before = state.clone();
                    assert!(state.can_accept(chunk), "{doc}: {at}..{end}");
                    assert_eq!(state, before, "can_accept changed the state");
                    assert!(state.accept(chunk), "{doc}: {at}..{end}");
                    assert_eq!(state.is_complete(), end == bytes.len(), "{doc}");
                    at = end;
                }
                assert!(state.is_complete(), "{doc}");
            }
        }
    }

    #[test]
    fn empty_slice_is_always_accepted() {
        let mut state = JsonPrefix::new();
        assert!(state.accept(b""));
        assert_eq!(state, JsonPrefix::new());
        assert!(state.accept(b"{\"a\":\"\xE4"));
        assert!(state.accept(b""));
        assert!(state.accept(b"\xB8\xAD\"}"));
        assert!(state.is_complete());
        assert!(state.accept(b""));
        assert!(state.can_accept(b""));
        assert_eq!(JsonPrefix::default(), JsonPrefix::new());
    }

    fn assert_rejected_at(cases: &[(&[u8], usize)]) {
        for &(doc, at) in cases {
            let shown = String::from_utf8_lossy(doc);
            assert_eq!(first_rejected(doc), Some(at), "{shown}");
            assert!(accepts_whole(doc).is_none(), "{shown}");
            let mut state = JsonPrefix::new();
            assert!(state.accept(&doc[..at]), "{shown}: prefix");
            assert!(!state.can_accept(&doc[at..]), "{shown}: rest");
        }
    }

    #[test]
    fn invalid_structure_rejected_at_the_right_byte() {
        assert_rejected_at(&[
            (b"[1]", 0),
            (b"\"a\"", 0),
            (b"x{}", 0),
            (b"1", 0),
            (b"{'a':1}", 1),
            (b"{\"a\" 1}", 5),
            (b"{\"a\":1,}", 7),
            (b"{,}", 1),
            (b"{\"a\":1 \"b\":2}", 7),
            (b"{\"a\"::1}", 5),
            (b"{1:2}", 1),
            (b"{\"a\"}", 4),
            (b"{\"a\":}", 5),
            (b"{\"a\",1}", 4),
            (b"{\"a\":1,,\"b\":2}", 7),
            (b"{\"a\":[1}", 7),
            (b"{\"a\":{]}", 6),
            (b"{\"a\":1]", 6),
            (b"{\"a\":[1,]}", 8),
            (b"{\"a\":[,1]}", 6),
            (b"{]", 1),
            (b"{\"a\":[1]]", 8),
            (b"{\"a\":1}}", 7),
            (b"{\"a\":{\"b\":1}]", 12),
        ]);
    }

    #[test]
    fn invalid_numbers_rejected_at_the_right_byte() {
        assert_rejected_at(&[
            (b"{\"a\":01}", 6),
            (b"{\"a\":00}", 6),
            (b"{\"a\":-01}", 7),
            (b"{\"a\":1.}", 7),
            (b"{\"a\":-}", 6),
            (b"{\"a\":--1}", 6),
            (b"{\"a\":+1}", 5),
            (b"{\"a\":.5}", 5),
            (b"{\"a\":1e}", 7),
            (b"{\"a\":1e+}", 8),
            (b"{\"a\":1.e5}", 7),
            (b"{\"a\":1.5.2}", 8),
            (b"{\"a\":1ee}", 7),
            (b"{\"a\":1e5.0}", 8),
            (b"{\"a\":1e+-5}", 8),
            (b"{\"a\":0x1}", 6),
            (b"{\"a\":1a}", 6),
            (b"{\"a\":Infinity}", 5),
            (b"{\"a\":NaN}", 5),
            (b"{\"a\":[1 2]}", 8),
        ]);
    }

    #[test]
    fn literals_partial_prefixes_accepted_wrong_ones_rejected() {
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{\"a\":tr"));
        assert!(state.can_accept(b"ue}"));
        assert!(!state.can_accept(b"u}"));
        assert_rejected_at(&[
            (b"{\"a\":tru}", 8),
            (b"{\"a\":truex}", 9),
            (b"{\"a\":True}", 5),
            (b"{\"a\":nul}", 8),
            (b"{\"a\":fals }", 9),
            (b"{\"a\":nulll}", 9),
            (b"{\"a\":t rue}", 6),
            (b"{\"a\":[true,fasle]}", 13),
        ]);
    }

    #[test]
    fn invalid_strings_and_escapes_rejected_at_the_right_byte() {
        assert_rejected_at(&[
            (b"{\"a\":\"\\u12G4\"}", 10),
            (b"{\"a\":\"\\u00\"}", 10),
            (b"{\"a\":\"\\U0041\"}", 7),
            (b"{\"a\":\"\\x\"}", 7),
            (b"{\"a\":\"\\'\"}", 7),
            (b"{\"a\":\"x\ny\"}", 7),
            (b"{\"a\":\"\t\"}", 6),
            (b"{\"a\":\"\x00\"}", 6),
            (b"{\"a\":\"\x1f\"}", 6),
            (b"{\"a\n\":1}", 3),
            (b"{\"a\":\"x\"y\"}", 8),
        ]);
    }

    #[test]
    fn surrogate_escapes_must_pair() {
        assert_rejected_at(&[
            // A lone low surrogate is known at its second digit.
            (b"{\"a\":\"\\uDC00\"}", 9),
            (b"{\"a\":\"\\udfff\"}", 9),
            // A high surrogate must be followed by `\u` + low surrogate.
            (b"{\"a\":\"\\uD800\"}", 12),
            (b"{\"a\":\"\\uD800x\"}", 12),
            (b"{\"a\":\"\\uD800\\n\"}", 13),
            (b"{\"a\":\"\\uD800\\u0041\"}", 14),
            (b"{\"a\":\"\\uD800\\uD800\"}", 15),
            (b"{\"a\":\"\\uDBFF\\uE000\"}", 14),
        ]);
        for doc in [
            "{\"a\":\"\\uD800\\uDC00\"}",
            "{\"a\":\"\\ud83d\\ude42\"}",
            "{\"a\":\"\\uD7FF\\uE000\\uDBFF\\uDFFF\"}",
        ] {
            assert!(is_complete_document(doc.as_bytes()), "{doc}");
        }
        // Why pairing is enforced: the server's own JSON parser refuses them.
        for lone in [r#"{"a":"\uDC00"}"#, r#"{"a":"\uD800"}"#, r#"{"a":"\uD800\u0041"}"#] {
            assert!(serde_json::from_str::<serde_json::Value>(lone).is_err(), "{lone}");
        }
    }

    #[test]
    fn invalid_utf8_rejected_at_the_right_byte() {
        assert_rejected_at(&[
            (b"{\"a\":\"\xC3\x28\"}", 7),
            // UTF-8 encoded surrogate U+D800.
            (b"{\"a\":\"\xED\xA0\x80\"}", 7),
            // Overlong forms.
            (b"{\"a\":\"\xC0\xAF\"}", 6),
            (b"{\"a\":\"\xC1\xBF\"}", 6),
            (b"{\"a\":\"\xE0\x80\xAF\"}", 7),
            (b"{\"a\":\"\xE0\x9F\xBF\"}", 7),
            (b"{\"a\":\"\xF0\x80\x80\xAF\"}", 7),
            (b"{\"a\":\"\xF0\x8F\xBF\xBF\"}", 7),
            // Above U+10FFFF.
            (b"{\"a\":\"\xF4\x90\x80\x80\"}", 7),
            (b"{\"a\":\"\xF5\x80\x80\x80\"}", 6),
            (b"{\"a\":\"\xFF\"}", 6),
            // Stray continuation byte.
            (b"{\"a\":\"\x80\"}", 6),
            // Truncated character.
            (b"{\"a\":\"\xE4\xB8\"}", 8),
            (b"{\"a\":\"\xF0\x9F\x99x\"}", 9),
            // Non-ASCII outside strings, in a key.
            (b"{\xC3\xA9:1}", 1),
            (b"{\"a\":\xC3\xA9}", 5),
            (b"{\"\xC3\xC3\":1}", 3),
        ]);
        for doc in [
            "{\"a\":\"\u{80}\u{7FF}\u{800}\u{D7FF}\u{E000}\u{FFFF}\u{10000}\u{10FFFF}\"}",
            "{\"\u{10FFFF}\":\"\u{E9}\"}",
        ] {
            assert!(is_complete_document(doc.as_bytes()), "{doc}");
        }
    }

    #[test]
    fn multibyte_utf8_split_across_calls() {
        for text in ["é", "中", "🙂", "é中🙂", "aé中b🙂c"] {
            for key in [false, true] {
                let doc = if key {
                    format!("{{\"{text}\":0}}")
                } else {
                    format!("{{\"k\":\"{text}\"}}")
                };
                let bytes = doc.as_bytes();
                // One call per byte, and every two-way split.
                let mut state = JsonPrefix::new();
                for &byte in bytes {
                    assert!(state.accept(&[byte]), "{doc}");
                }
                assert!(state.is_complete(), "{doc}");
                for split in 0..=bytes.len() {
                    let mut state = JsonPrefix::new();
                    assert!(state.accept(&bytes[..split]), "{doc} at {split}");
                    assert!(state.accept(&bytes[split..]), "{doc} at {split}");
                    assert!(state.is_complete(), "{doc} at {split}");
                }
            }
        }
        // Mid-character, the string can neither close nor take ASCII.
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{\"k\":\"\xF0\x9F"));
        assert!(!state.can_accept(b"\""));
        assert!(!state.can_accept(b"a"));
        assert!(!state.can_accept(b"\xF0"));
        assert!(state.accept(b"\x99"));
        assert!(state.accept(b"\x82\"}"));
        assert!(state.is_complete());
    }

    /// Within a string, our acceptance of non-ASCII bytes matches the standard
    /// library's UTF-8 validation, for every sequence of up to three bytes
    /// and random four- and five-byte ones.
    #[test]
    fn utf8_in_strings_matches_std() {
        let mut in_string = JsonPrefix::new();
        assert!(in_string.accept(b"{\"a\":\""));
        let valid_prefix = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        };
        let alphabet: Vec<u8> = (0x80..=0xFF).chain([b'a']).collect();
        for &a in &alphabet {
            for &b in &alphabet {
                for &c in &alphabet {
                    let bytes = [a, b, c];
                    for len in 1..=3 {
                        let bytes = &bytes[..len];
                        assert_eq!(in_string.can_accept(bytes), valid_prefix(bytes), "{bytes:02X?}");
                    }
                }
            }
        }
        let mut rng = Rng(42);
        for _ in 0..200_000 {
            let len = 4 + rng.below(2);
            let mut bytes = [0u8; 5];
            for byte in &mut bytes[..len] {
                *byte = alphabet[rng.below(alphabet.len())];
            }
            let bytes = &bytes[..len];
            assert_eq!(in_string.can_accept(bytes), valid_prefix(bytes), "{bytes:02X?}");
        }
        // Every scalar value that needs no escape is a whole character.
        let mut buf = [0u8; 4];
        for c in (0x20..=0x10FFFF).filter_map(char::from_u32) {
            if c == '"' || c == '\\' {
                continue;
            }
            let mut state = in_string.clone();
            assert!(state.accept(c.encode_utf8(&mut buf).as_bytes()), "{c:?}");
            assert!(state.accept(b"\"}"), "{c:?}");
            assert!(state.is_complete(), "{c:?}");
        }
    }

    #[test]
    fn whitespace_runs_are_capped_outside_strings() {
        let run = |n: usize, byte: u8| vec![byte; n];
        // Leading whitespace.
        let mut doc = run(8, b' ');
        doc.extend_from_slice(b"{}");
        assert!(is_complete_document(&doc));
        let mut doc = run(9, b'\n');
        doc.extend_from_slice(b"{}");
        assert_eq!(first_rejected(&doc), Some(8));
        // Between tokens, mixed kinds of whitespace count together.
        let mut doc = b"{".to_vec();
        doc.extend_from_slice(b"\r\n\t \r\n\t ");
        doc.extend_from_slice(b"}");
        assert!(is_complete_document(&doc));
        let mut doc = b"{\"a\":".to_vec();
        doc.extend(run(9, b'\n'));
        assert_eq!(first_rejected(&doc), Some(5 + 8));
        // A run after a number counts the delimiter that ended it.
        let mut doc = b"{\"a\":1".to_vec();
        doc.extend(run(9, b' '));
        assert_eq!(first_rejected(&doc), Some(6 + 8));
        // Any token resets the run.
        let ws = String::from_utf8(run(8, b' ')).unwrap();
        let doc = format!("{ws}{{{ws}\"a\"{ws}:{ws}[{ws}1{ws},{ws}true{ws}]{ws},{ws}\"b\"{ws}:{ws}\"\"{ws}}}");
        assert!(is_complete_document(doc.as_bytes()), "{doc}");
        // Inside strings, spaces are content and are not limited.
        let doc = format!("{{\"{}\":\"{}\"}}", " ".repeat(100), " ".repeat(1000));
        assert!(is_complete_document(doc.as_bytes()));
        // Fed in one call, a too-long run is refused and nothing changes.
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{"));
        let before = state.clone();
        assert!(!state.accept(&run(9, b' ')));
        assert_eq!(state, before);
        assert!(state.accept(&run(8, b' ')));
        assert!(!state.can_accept(b" "));
        assert!(state.accept(b"}"));
    }

    #[test]
    fn nesting_depth_is_capped() {
        let depth = usize::from(MAX_DEPTH);
        // The top-level object is level 1, so 63 arrays fit inside it.
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{\"a\":"));
        assert!(state.accept("[".repeat(depth - 1).as_bytes()));
        assert!(!state.can_accept(b"["));
        assert!(!state.can_accept(b"{"));
        assert!(state.accept(b"1"));
        assert!(!state.accept(b",{"));
        assert!(state.accept(b",\"ok\",true"));
        assert!(state.accept("]".repeat(depth - 1).as_bytes()));
        assert!(state.accept(b"}"));
        assert!(state.is_complete());
        // Objects count too, and closing brackets free levels again.
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{"));
        for _ in 1..depth {
            assert!(state.accept(b"\"k\":{"));
        }
        assert!(!state.can_accept(b"\"k\":{"));
        assert!(!state.can_accept(b"\"k\":["));
        assert!(state.accept(b"}"));
        assert!(state.accept(b",\"k\":[]"));
        assert!(state.accept("}".repeat(depth - 1).as_bytes()));
        assert!(state.is_complete());
    }

    #[test]
    fn no_bytes_after_completion() {
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{\"a\":[1]}"));
        assert!(state.is_complete());
        let done = state.clone();
        for bytes in [&b" "[..], b"\n", b"}", b"{", b",", b"{}", b"\"", b"\xC3\xA9"] {
            assert!(!state.can_accept(bytes));
            assert!(!state.accept(bytes));
            assert_eq!(state, done);
        }
        assert!(state.accept(b""));
        assert!(state.is_complete());
        // Bytes that complete the document and then go on are refused whole.
        let mut state = JsonPrefix::new();
        assert!(!state.accept(b"{} "));
        assert_eq!(state, JsonPrefix::new());
    }

    #[test]
    fn rejected_accept_leaves_state_unchanged() {
        let mut state = JsonPrefix::new();
        assert!(state.accept(b"{\"a\":"));
        let before = state.clone();
        for bytes in [&b"12x"[..], b"01", b"\"\xC3\x28", b"[1,]", b"tru}", b"\"\\uDC00\""] {
            assert!(!state.accept(bytes), "{bytes:?}");
            assert_eq!(state, before, "{bytes:?}");
        }
        assert!(state.accept(b"\"\xC3"));
        let mid_char = state.clone();
        assert!(!state.accept(b"\x28"));
        assert_eq!(state, mid_char);
        assert!(state.accept(b"\xA9\"}"));
        assert!(state.is_complete());
    }

    /// Bytes that end an accepted prefix as quickly as possible: the test's
    /// witness that the prefix is not a dead end.
    fn completion(state: &JsonPrefix) -> Vec<u8> {
        let mut state = state.clone();
        let mut out = Vec::new();
        while !state.is_complete() {
            let close = if state.innermost_is_object() { b'}' } else { b']' };
            let byte = match state.mode {
                Mode::Start => b'{',
                Mode::FirstKeyOrEnd => b'}',
                Mode::Key => b'"',
                Mode::Colon => b':',
                Mode::Value => b'0',
                Mode::FirstValueOrEnd => b']',
                Mode::AfterValue => close,
                Mode::Number(number) if number.can_end() => close,
                Mode::Number(_) => b'1',
                Mode::Literal { literal, matched } => literal.text()[usize::from(matched)],
                Mode::String(string) if string.utf8_pending > 0 => string.utf8_min,
                Mode::String(string) => match string.escape {
                    Escape::None => b'"',
                    Escape::Backslash => b'n',
                    Escape::Hex {
                        digits: 0,
                        low_surrogate: true,
                        ..
                    } => b'D',
                    Escape::Hex {
                        digits: 1,
                        low_surrogate: true,
                        ..
                    } => b'C',
                    Escape::Hex { .. } => b'0',
                    Escape::PairBackslash => b'\\',
                    Escape::PairU => b'u',
                },
                Mode::Complete => unreachable!(),
            };
            assert!(state.accept(&[byte]), "completion stuck: {state:?}");
            out.push(byte);
            assert!(out.len() < 1000, "completion does not end: {state:?}");
        }
        out
    }

    fn longest_ws_run(doc: &[u8]) -> usize {
        doc.split(|&b| !is_whitespace(b)).map(<[u8]>::len).max().unwrap_or(0)
    }

    /// Random edits of valid documents: the validator agrees with serde_json
    /// on whole documents, and whatever prefix it accepts can still be
    /// completed into a document serde_json parses.
    #[test]
    fn mutated_documents_agree_with_serde_json_and_never_dead_end() {
        const ALPHABET: &[u8] = b"{}[]:,\" \n\t\\/0123456789-+.eEtrufalsnbxUD\x00\x7f\xC3\xA9\x80\xED\xF0\x9F";
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        let (mut agreed_valid, mut agreed_invalid) = (0, 0);
        for round in 0..30_000 {
            let mut doc = VALID[round % VALID.len()].as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(doc.len() + 1);
                let byte = ALPHABET[rng.below(ALPHABET.len())];
                match rng.below(3) {
                    0 if at < doc.len() => doc[at] = byte,
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => doc.insert(at, byte),
                }
            }
            // Whitespace after the object is valid JSON but not accepted here
            // (generation must stop), and long runs are capped on purpose.
            while doc.last().is_some_and(|&b| is_whitespace(b)) {
                doc.pop();
            }
            if longest_ws_run(&doc) > usize::from(MAX_WHITESPACE_RUN) {
                continue;
            }
            let ours = is_complete_document(&doc);
            let theirs = match serde_json::from_slice::<serde_json::Value>(&doc) {
                Ok(value) => value.is_object(),
                // Out-of-range floats are a serde_json limit, not JSON syntax.
                Err(e) if e.to_string().contains("out of range") => continue,
                Err(_) => false,
            };
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&doc));
            if ours {
                agreed_valid += 1;
            } else {
                agreed_invalid += 1;
            }

            let mut state = JsonPrefix::new();
            let accepted = doc.iter().take_while(|&&b| state.accept(&[b])).count();
            let mut completed = doc[..accepted].to_vec();
            completed.extend(completion(&state));
            let value: serde_json::Value = serde_json::from_slice(&completed)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&completed)));
            assert!(value.is_object());
        }
        // The edits reach both outcomes often enough to mean something.
        assert!(agreed_valid > 1000, "{agreed_valid}");
        assert!(agreed_invalid > 10_000, "{agreed_invalid}");
    }

    #[test]
    fn state_is_small_and_heap_free() {
        // `can_accept` clones the state for every candidate token.
        assert!(std::mem::size_of::<JsonPrefix>() <= 24);
    }
}
