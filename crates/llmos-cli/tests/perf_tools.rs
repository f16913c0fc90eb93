//! `llmos quantize`, `llmos perplexity` and `llmos bench` through the binary.

mod common;
use common::{model, one_line_error, run};

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// SmolLM2 requantized to Q8_0 is a valid GGUF that runs, and Q8_0 keeps it close to the
/// original: the greedy continuation of the raw prompt starts " Paris".
#[test]
fn quantize_to_q8_0_runs_and_keeps_the_answer() {
    let src = model("smollm2");
    let dir = std::env::temp_dir().join(format!("llmos-quant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("smollm2-q8_0.gguf");
    let o = run(&[
        "quantize",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("requantizing"),
        "warns about requantizing: {err}"
    );
    let info = run(&["info", "-m", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("general.file_type = 7"), "{text}");
    assert!(
        !text.contains("Q4_1"),
        "every Q4_1 weight became Q8_0: {text}"
    );
    let r = json(&run(&[
        "run",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "The capital of France is",
        "--temp",
        "0",
        "-n",
        "2",
        "--json",
        "-t",
        "2",
    ]));
    assert_eq!(r["ids"][0], 7042, "first token ' Paris': {r}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantize_rejects_bad_input_in_one_line() {
    let src = model("smollm2");
    let e = one_line_error(&run(&[
        "quantize",
        src.to_str().unwrap(),
        "/tmp/never-written.gguf",
        "--type",
        "q3_z",
    ]));
    assert!(e.contains("unknown --type") && e.contains("Q8_0"), "{e}");
    assert!(!std::path::Path::new("/tmp/never-written.gguf").exists());
    let e = one_line_error(&run(&[
        "quantize",
        "/nonexistent.gguf",
        "/tmp/x.gguf",
        "--type",
        "q8_0",
    ]));
    assert!(e.contains("/nonexistent.gguf"), "{e}");
}

/// Perplexity of a short English text is finite and far below the vocabulary size, and a
/// text shorter than one chunk is a clear error.
#[test]
fn perplexity_of_a_text_and_too_short_text() {
    let dir = std::env::temp_dir().join(format!("llmos-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.txt");
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    std::fs::write(&f, &text).unwrap();
    let m = model("smollm2");
    let r = json(&run(&[
        "perplexity",
        "-m",
        m.to_str().unwrap(),
        f.to_str().unwrap(),
        "-c",
        "128",
        "--json",
        "-t",
        "2",
    ]));
    let ppl = r["ppl"].as_f64().unwrap();
    // a repeated sentence becomes nearly certain once seen
    assert!(ppl.is_finite() && (1.0..3.0).contains(&ppl), "ppl {ppl}");
    assert_eq!(r["ctx"], 128);
    std::fs::write(&f, "too short").unwrap();
    let e = one_line_error(&run(&[
        "perplexity",
        "-m",
        m.to_str().unwrap(),
        f.to_str().unwrap(),
    ]));
    assert!(e.contains("fewer than one chunk"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_json_has_the_documented_fields() {
    let m = model("smollm2");
    let r = json(&run(&[
        "bench",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "-T",
        "1,2",
        "--json",
        "--no-bandwidth",
    ]));
    for k in ["model", "type", "size_bytes", "bandwidth_gb_s", "results"] {
        assert!(r.get(k).is_some(), "missing {k}: {r}");
    }
    assert_eq!(r["type"], "Q4_1");
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    for (x, t) in res.iter().zip([1, 2]) {
        assert_eq!(x["threads"], t);
        for k in [
            "pp_tok_s",
            "pp_std",
            "tg_tok_s",
            "tg_std",
            "tg_bandwidth_gb_s",
        ] {
            assert!(x[k].as_f64().is_some(), "missing {k}: {x}");
        }
        assert!(x["pp_tok_s"].as_f64().unwrap() > 0.0 && x["tg_tok_s"].as_f64().unwrap() > 0.0);
    }
}
