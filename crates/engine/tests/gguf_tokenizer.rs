//! The tokenizer rebuilt from SmolLM2's GGUF metadata against the reference
//! ids from transformers (`tests/reference/smollm2_greedy_hf.json`).

mod common;

use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::tokenizer::chat_template::TemplateMessage;
use hfms_engine::tokenizer::{ChatTemplate, IncrementalDecoder, Tokenizer};

fn tokenizer() -> Tokenizer {
    let g = GgufFile::open(&common::smollm2_gguf()).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

#[test]
fn probe_sentences_match_reference_ids_and_round_trip() {
    let tok = tokenizer();
    let r = common::reference("smollm2_greedy_hf.json");
    let probes = r["tokenizer_probe_sentences"].as_array().unwrap();
    assert!(probes.len() >= 20);
    let mut bad = Vec::new();
    for p in probes {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?} want {want:?}"));
        }
        assert_eq!(tok.decode(&got, false).unwrap(), text, "round trip of {text:?}");
    }
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn digits_are_split_one_by_one() {
    let tok = tokenizer();
    let r = common::reference("smollm2_greedy_hf.json");
    for (text, ids) in r["tokenizer_conversion"]["digit_probe"].as_object().unwrap() {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
    }
}

#[test]
fn chat_prompt_renders_and_tokenizes_exactly() {
    let g = GgufFile::open(&common::smollm2_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let r = common::reference("smollm2_greedy_hf.json");
    let src = g.get_str("tokenizer.chat_template").unwrap();
    assert_eq!(src, r["chat_template"].as_str().unwrap());
    let t = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap();
    let msgs: Vec<TemplateMessage> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| TemplateMessage {
            role: m["role"].as_str().unwrap().into(),
            content: m["content"].as_str().unwrap().into(),
            ..Default::default()
        })
        .collect();
    let prompt = t.render(&msgs, true).unwrap();
    assert_eq!(prompt, r["prompt"].as_str().unwrap());
    // add_bos_token is false in this GGUF: encode(add_special) adds nothing.
    assert!(!tok.add_bos());
    let ids = tok.encode(&prompt, true).unwrap();
    let want: Vec<u32> = r["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want);
    assert_eq!(tok.eos(), &[2]);
    assert_eq!(tok.bos(), Some(1));
}

#[test]
fn incremental_decoding_equals_full_decoding() {
    let tok = tokenizer();
    for text in [
        "Ça va? Übermäßig schöne Grüße",
        "这是一个用于测试的中文句子。",
        "🙂🙃😉 emoji only line 🎉",
        "tab\tsep\nnew line  two spaces",
    ] {
        let ids = tok.encode(text, false).unwrap();
        let mut dec = IncrementalDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&dec.push(&tok, id).unwrap());
        }
        out.push_str(&dec.flush(&tok).unwrap());
        assert_eq!(out, text);
    }
}

#[test]
fn token_bytes_concatenate_to_the_text() {
    let tok = tokenizer();
    let text = "Grüße 🙂 and\ttabs";
    let ids = tok.encode(text, false).unwrap();
    let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i)).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
}
