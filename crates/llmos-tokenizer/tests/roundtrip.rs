//! decode(encode(s)) == s on byte-level vocabularies for random valid UTF-8 (ASCII, whitespace
//! runs, CJK, emoji, combining marks, arbitrary scalar values), and streaming decode, fed one
//! token at a time, never emits part of a character and ends with exactly `s`.

mod common;
use common::home;

use llmos_formats::Gguf;
use llmos_tokenizer::{StreamDecoder, Tokenizer};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_string(r: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..r.below(40) {
        let c = match r.below(8) {
            0 => char::from(b' ' + r.below(95) as u8),
            1 => [' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}'][r.below(6) as usize],
            2 => char::from_u32(0x4E00 + r.below(0x5000) as u32).unwrap(),
            3 => char::from_u32(0x1F300 + r.below(0x300) as u32).unwrap(),
            4 => char::from_u32(0x300 + r.below(0x70) as u32).unwrap(),
            5 => ['\'', 's', 'l', 'L', '1', '2', '3'][r.below(7) as usize],
            _ => loop {
                if let Some(c) = char::from_u32(r.below(0x11_0000) as u32) {
                    break c;
                }
            },
        };
        s.push(c);
    }
    s
}

fn check(name: &str, tok: &Tokenizer) {
    let mut r = Rng(0x5eed_0000 + name.len() as u64);
    for _ in 0..2000 {
        let s = random_string(&mut r);
        let ids = tok.encode(&s, false, false);
        if tok.decode(&ids) != s {
            // name the smallest failing piece: a single character if one fails alone
            let bad = s.chars().find(|c| {
                let t = c.to_string();
                tok.decode(&tok.encode(&t, false, false)) != t
            });
            panic!(
                "{name}: round trip of {s:?} gives {:?}; failing character: {bad:?}",
                tok.decode(&ids)
            );
        }
        let mut d = StreamDecoder::default();
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&d.push(&tok.token_bytes(id, false)));
            assert!(
                s.starts_with(&out),
                "{name}: streamed {out:?} is not a prefix of {s:?}"
            );
        }
        out.push_str(&d.finish());
        assert_eq!(out, s, "{name}: streamed text");
    }
}

#[test]
fn byte_level_vocabularies_round_trip_random_text() {
    let h = home();
    let tk = h.join("tiktoken");
    assert!(
        tk.join(".complete").is_file(),
        "run scripts/fetch-test-assets first"
    );
    for n in ["cl100k_base", "o200k_base"] {
        check(
            n,
            &Tokenizer::from_tiktoken_file(&tk.join(format!("{n}.tiktoken"))).unwrap(),
        );
    }
    check(
        "llama3 tokenizer.json",
        &Tokenizer::from_hf_json(&h.join("hf-tokenizers/llama3/tokenizer.json")).unwrap(),
    );
    let suite = h.join("vocab-suite/llama-cpp-python-0.3.36");
    let mut tested = 0;
    for v in [
        "gpt-2",
        "llama-bpe",
        "qwen2",
        "deepseek-coder",
        "deepseek-llm",
        "falcon",
        "mpt",
        "starcoder",
        "refact",
        "command-r",
    ] {
        let g = Gguf::open(suite.join(format!("ggml-vocab-{v}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        match tok.byte_coverage() {
            Some(256) => {
                check(v, &tok);
                tested += 1;
            }
            // such a vocabulary drops the bytes it has no token for (so do llama.cpp and HF)
            other => eprintln!("{v}: skipped, only {other:?} of 256 bytes have a token"),
        }
    }
    assert!(
        tested >= 5,
        "only {tested} suite vocabularies cover all bytes"
    );
}
