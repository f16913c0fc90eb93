//! `llmos tokenizer train`: the written tokenizer.json loads back, reserves the special
//! tokens, compresses its training text, round-trips, and bad input is a one-line error.

mod common;
use common::*;
use llmos_tokenizer::Tokenizer;

fn dir(name: &str) -> TempDir {
    scratch(&format!("tok-{name}"))
}

#[test]
fn trained_vocabulary_loads_back_and_compresses() {
    let d = dir("compress");
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!(
            "The quick brown fox {i} jumps over the lazy dog; naïve café 日本語 {}\n",
            i * 7
        ));
    }
    std::fs::write(d.join("a.txt"), &text).unwrap();
    let out = d.join("tok.json");
    let o = run(&[
        "tokenizer",
        "train",
        "--vocab-size",
        "600",
        "-o",
        out.to_str().unwrap(),
        d.join("a.txt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tok = Tokenizer::from_hf_json(&out).unwrap();
    // training stops early when no pair occurs twice any more; this text allows most merges
    assert!(
        (450..=600).contains(&tok.vocab_size()),
        "{}",
        tok.vocab_size()
    );
    // chat special tokens are reserved at the end and parse as single tokens
    let ids = tok.encode("<|user_start|> fox<|user_end|>", false, true);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(tok.token_text(ids[0]), Some("<|user_start|>"));
    assert_eq!(tok.token_text(ids[2]), Some("<|user_end|>"));
    assert_eq!(
        ids[2] as usize,
        tok.vocab_size() - 7,
        "specials take the last ids, in order"
    );
    let ids = tok.encode(&text, false, false);
    assert!(
        ids.len() * 3 < text.len(),
        "{} tokens for {} bytes",
        ids.len(),
        text.len()
    );
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn bad_training_input_is_a_one_line_error() {
    let d = dir("errors");
    std::fs::write(d.join("bin.txt"), [0xffu8, 0xfe, 0x00]).unwrap();
    let out = d.join("x.json");
    let e = one_line_error(&run(&[
        "tokenizer",
        "train",
        "--vocab-size",
        "300",
        "-o",
        out.to_str().unwrap(),
        d.join("bin.txt").to_str().unwrap(),
    ]));
    assert!(e.contains("not UTF-8"), "{e}");
    let e = one_line_error(&run(&[
        "tokenizer",
        "train",
        "--vocab-size",
        "100",
        "-o",
        out.to_str().unwrap(),
        d.join("bin.txt").to_str().unwrap(),
    ]));
    assert!(e.contains("below the 256 byte tokens"), "{e}");
    assert!(!out.exists(), "nothing written on failure");
}
