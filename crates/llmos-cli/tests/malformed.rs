//! Bad input through the binary: every malformed GGUF case, bad sources and bad flags give a
//! non-zero exit and one line naming the problem.

mod common;
use common::*;
use llmos_formats::{GgufWriter, Value};
use llmos_tensor::DType;

fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("llmos-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn valid() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.add_tensor("t.weight", &[32, 4], DType::Q8_0, vec![0u8; 34 * 4]);
    w.to_bytes()
}

fn info_error(name: &str, bytes: &[u8]) -> String {
    let p = tmp(name, bytes);
    let o = run(&["info", "-m", p.to_str().unwrap()]);
    one_line_error(&o)
}

#[test]
fn each_malformed_gguf_case_is_named() {
    let good = valid();
    let type_at = good.windows(8).position(|w| w == b"t.weight").unwrap() + 8 + 4 + 16;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "magic.gguf",
            b"GGML0000000000000000000000".to_vec(),
            "not a GGUF file",
        ),
        ("header.gguf", good[..20].to_vec(), "truncated"),
        (
            "data.gguf",
            good[..good.len() - 50].to_vec(),
            "ends at byte",
        ),
        (
            "type.gguf",
            {
                let mut v = good.clone();
                v[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
                v
            },
            "unknown type id 77",
        ),
        (
            "past.gguf",
            {
                let mut v = good.clone();
                v[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
                v
            },
            "ends at byte",
        ),
        (
            "count.gguf",
            {
                let mut v = good.clone();
                v[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
                v
            },
            "1152921504606846976 tensors",
        ),
    ];
    for (name, bytes, want) in cases {
        let e = info_error(name, &bytes);
        assert!(e.contains(want) && e.contains(name), "{name}: {e}");
    }
    let e = one_line_error(&run(&["info", "-m", "/no/such/file.gguf"]));
    assert!(e.contains("/no/such/file.gguf"), "{e}");
}

#[test]
fn a_valid_file_without_a_model_is_a_clear_error_for_run() {
    let p = tmp("nomodel.gguf", &valid());
    let e = one_line_error(&run(&["run", "-m", p.to_str().unwrap(), "-p", "hi"]));
    assert!(
        e.contains("tokenizer.ggml.model") || e.contains("missing"),
        "{e}"
    );
}

#[test]
fn hf_source_fails_with_the_url_when_unreachable() {
    let home = std::env::temp_dir().join(format!("llmos-hf-{}", std::process::id()));
    let o = llmos()
        .env("LLMOS_HOME", &home)
        .args(["pull", "hf:nobody/nothing/x.gguf"])
        .output()
        .unwrap();
    let e = one_line_error(&o);
    assert!(
        e.contains("https://huggingface.co/nobody/nothing/resolve/main/x.gguf"),
        "{e}"
    );
    // nothing half-written is left to be taken for a model later
    let left: Vec<_> = walk(&home);
    assert!(left.iter().all(|p| !p.ends_with("x.gguf")), "{left:?}");
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn bad_sources_and_flags_are_one_line_errors() {
    let e = one_line_error(&run(&["pull", "definitely-not-a-model"]));
    assert!(e.contains("not a file, an alias"), "{e}");
    let e = one_line_error(&run(&["pull", "pypi:bad name"]));
    assert!(e.contains("bad package spec"), "{e}");
}
