//! cl100k and o200k against the real `tiktoken` package: scripts/fetch-test-assets writes a
//! 1 MB mixed corpus (prose, code, CJK, emoji, numbers, whitespace runs) and tiktoken's ids
//! for it into the cache on every run.

mod common;
use common::home;

use llmos_tokenizer::Tokenizer;

fn check(name: &str) {
    let h = home();
    let corpus_path = h.join("tiktoken-ref/corpus.txt");
    assert!(
        corpus_path.is_file(),
        "{} is missing: run scripts/fetch-test-assets first",
        corpus_path.display()
    );
    let corpus = std::fs::read_to_string(&corpus_path).unwrap();
    assert!(
        corpus.len() >= 1_000_000,
        "corpus is only {} bytes",
        corpus.len()
    );
    let raw = std::fs::read(h.join(format!("tiktoken-ref/{name}.ids"))).unwrap();
    let want: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let tok = Tokenizer::from_tiktoken_file(&h.join(format!("tiktoken/{name}.tiktoken"))).unwrap();
    let got = tok.encode(&corpus, false, false);
    if got != want {
        let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let ctx = |v: &[u32]| v[i.saturating_sub(3)..(i + 5).min(v.len())].to_vec();
        let text_at: String = tok.decode(&want[i.saturating_sub(3)..(i + 5).min(want.len())]);
        panic!(
            "{name}: first difference at id {i} of {}: got {:?}, want {:?} (text {:?}); lengths {} vs {}",
            want.len(),
            ctx(&got),
            ctx(&want),
            text_at,
            got.len(),
            want.len()
        );
    }
    // the ids decode back to the corpus byte for byte
    assert_eq!(tok.decode(&got), corpus);
    eprintln!(
        "{name}: {} bytes -> {} ids, identical to tiktoken",
        corpus.len(),
        got.len()
    );
}

#[test]
fn cl100k_matches_tiktoken_on_1mb_mixed_corpus() {
    check("cl100k_base");
}

#[test]
fn o200k_matches_tiktoken_on_1mb_mixed_corpus() {
    check("o200k_base");
}

#[test]
fn r50k_and_p50k_match_tiktoken_on_1mb_mixed_corpus() {
    check("r50k_base");
    check("p50k_base");
}
