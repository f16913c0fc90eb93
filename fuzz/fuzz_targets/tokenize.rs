//! Encode and decode arbitrary input with several real vocabularies: no panic, no hang, and
//! byte-level vocabularies that cover all bytes round-trip exactly. The vocabularies come from
//! the test-asset cache (scripts/fetch-test-assets); run with
//! `cargo fuzz run tokenize -- -max_total_time=600`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmos_formats::Gguf;
use llmos_tokenizer::{StreamDecoder, Tokenizer};
use std::path::PathBuf;
use std::sync::OnceLock;

fn tokenizers() -> &'static Vec<(String, Tokenizer)> {
    static T: OnceLock<Vec<(String, Tokenizer)>> = OnceLock::new();
    T.get_or_init(|| {
        let home = std::env::var_os("LLMOS_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/llmos"));
        let suite = home.join("vocab-suite/llama-cpp-python-0.3.36");
        let mut v = Vec::new();
        for name in ["gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "falcon", "llama-spm", "phi-3", "bert-bge", "gemma-4"] {
            let g = Gguf::open(suite.join(format!("ggml-vocab-{name}.gguf"))).expect("run scripts/fetch-test-assets");
            v.push((name.to_string(), Tokenizer::from_gguf(&g).unwrap()));
        }
        v.push(("cl100k".into(), Tokenizer::from_tiktoken_file(&home.join("tiktoken/cl100k_base.tiktoken")).unwrap()));
        v.push(("llama3-json".into(), Tokenizer::from_hf_json(&home.join("hf-tokenizers/llama3/tokenizer.json")).unwrap()));
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for (name, tok) in tokenizers() {
        for parse_special in [false, true] {
            let ids = tok.encode(text, true, parse_special);
            let back = tok.decode(&ids);
            let mut d = StreamDecoder::default();
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&d.push(&tok.token_bytes(id, false)));
            }
            streamed.push_str(&d.finish());
            assert_eq!(streamed, back, "{name}: streaming and whole decode differ");
            if !parse_special && tok.byte_coverage() == Some(256) && !tok.add_bos {
                assert_eq!(back, text, "{name}: round trip");
            }
        }
    }
    // arbitrary bytes as a GGUF header never panic either
    let _ = Gguf::from_bytes("fuzz.gguf", data.to_vec());
});
