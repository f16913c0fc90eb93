//! llama.cpp's tokenizer test suite: every `ggml-vocab-NAME.gguf` that has `.inp`/`.out`
//! cases, tokenized with add_special = false and parse_special = false, ids compared
//! exactly. scripts/fetch-test-assets puts the suite in the cache.
//!
//! Every vocabulary with cases must match all of them; a file that cannot be loaded fails
//! the test too. Files without cases are named as skipped, with the reason.

mod common;

use llmos_formats::Gguf;
use llmos_tokenizer::Tokenizer;
use std::path::PathBuf;

fn suite_dir() -> PathBuf {
    let d = common::home().join("vocab-suite/llama-cpp-python-0.3.36");
    assert!(
        d.join(".complete").is_file(),
        "{} is missing: run scripts/fetch-test-assets first",
        d.display()
    );
    d
}

/// Splits an `.inp` file into its cases: each case is followed by the separator.
fn cases(inp: &str) -> Vec<&str> {
    let mut v: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    // the file ends with a separator, leaving one empty tail that is not a case
    if v.last() == Some(&"") {
        v.pop();
    }
    v
}

fn expected(out: &str) -> Vec<Vec<u32>> {
    out.split('\n')
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect()
}

#[test]
fn llama_cpp_vocab_suite() {
    let dir = suite_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            n.strip_prefix("ggml-vocab-")?
                .strip_suffix(".gguf")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    let mut failures = Vec::new();
    let mut skipped = 0;
    for name in &names {
        let base = dir.join(format!("ggml-vocab-{name}.gguf"));
        let (inp, out) = (
            base.with_extension("gguf.inp"),
            base.with_extension("gguf.out"),
        );
        if !inp.is_file() || !out.is_file() {
            eprintln!("{name:>16}: skipped (no .inp/.out cases in this release)");
            skipped += 1;
            continue;
        }
        let inp = std::fs::read_to_string(&inp).unwrap();
        let out = std::fs::read_to_string(&out).unwrap();
        let (cs, want) = (cases(&inp), expected(&out));
        assert!(
            want.len() >= cs.len(),
            "{name}: {} cases but {} expected lines",
            cs.len(),
            want.len()
        );
        let tok = match Gguf::open(&base)
            .map_err(|e| e.to_string())
            .and_then(|g| Tokenizer::from_gguf(&g).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name:>16}: cannot load: {e}");
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut ok = 0;
        let mut first_bad = None;
        for (i, (c, w)) in cs.iter().zip(&want).enumerate() {
            let got = tok.encode(c, false, false);
            if &got == w {
                ok += 1;
            } else if first_bad.is_none() {
                first_bad = Some(format!("case {i} {c:?}: got {got:?}, want {w:?}"));
            }
        }
        eprintln!("{name:>16}: {ok}/{} cases match ({})", cs.len(), tok.kind);
        if ok != cs.len() {
            if let Some(b) = &first_bad {
                eprintln!("{:>16}  first mismatch: {b}", "");
            }
            failures.push(format!(
                "{name}: {ok}/{} cases; {}",
                cs.len(),
                first_bad.unwrap()
            ));
        }
    }
    let tested = names.len() - skipped;
    eprintln!("{tested} vocabularies tested, {skipped} skipped");
    assert!(
        tested >= 15,
        "only {tested} vocabularies had cases; is the suite complete?"
    );
    assert!(failures.is_empty(), "mismatches: {failures:#?}");
}
