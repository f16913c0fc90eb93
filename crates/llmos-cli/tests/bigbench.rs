//! `llmos eval --task bigbench:NAME`: BIG-bench multiple-choice scoring by log-likelihood
//! on SmolLM2, checked against a plain forward pass; bad task files are one-line errors.

mod common;
use common::*;
use llmos_formats::Gguf;
use llmos_model::Model;
use llmos_tokenizer::Tokenizer;

/// A small task in BIG-bench's JSON format whose answers a 135M model knows.
const TASK: &str = r#"{"name": "capitals", "description": "toy", "keywords": [],
  "metrics": ["multiple_choice_grade"], "preferred_score": "multiple_choice_grade",
  "append_choices_to_input": false, "example_input_prefix": "", "example_output_prefix": " ",
  "examples": [
    {"input": "The capital of France is", "target_scores": {"Paris": 1, "banana": 0}},
    {"input": "The capital of Germany is", "target_scores": {"Berlin": 1, "purple": 0}},
    {"input": "One, two, three, four,", "target_scores": {"five": 1, "umbrella": 0}},
    {"input": "The opposite of hot is", "target_scores": {"cold": 1, "Tuesday": 0}}]}"#;

/// Each choice's score is the log-probability of its tokens after the prompt: the harness
/// (prompt run once, each choice continuing from the cached prompt) equals one forward
/// pass over prompt + choice, summed by hand.
#[test]
fn choice_scores_equal_a_plain_forward_pass() {
    llmos_tensor::pool::init(2);
    let g = std::sync::Arc::new(Gguf::open(model("smollm2")).unwrap());
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let m = Model::load(g).unwrap();
    let task = llmos_train::bigbench::Task::parse(TASK, "capitals").unwrap();
    let e = &task.examples[0];
    let prompt = tok.encode(&task.prompt(e), true, false);
    let choices: Vec<Vec<u32>> = e
        .choices
        .iter()
        .map(|(c, _)| tok.encode(c, false, false))
        .collect();
    let mut cache = m.new_cache(256);
    let got = llmos_train::bigbench::choice_log_probs(&m, &mut cache, &prompt, &choices).unwrap();
    for (c, &lp) in choices.iter().zip(&got) {
        let mut all = prompt.clone();
        all.extend(c);
        let mut fresh = m.new_cache(256);
        let logits = m.forward(&mut fresh, &all, true).unwrap();
        let v = logits.len() / all.len();
        let mut want = 0f64;
        for (i, &t) in c.iter().enumerate() {
            let row = &logits[(prompt.len() + i - 1) * v..(prompt.len() + i) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            want += row[t as usize] as f64 - max - sum.ln();
        }
        assert!((lp - want).abs() < 1e-3, "{c:?}: {lp} vs {want}");
    }
}

#[test]
fn eval_bigbench_task_reports_accuracy() {
    let d = scratch("bigbench");
    let f = d.join("task.json");
    std::fs::write(&f, TASK).unwrap();
    let details = d.join("details.jsonl");
    let j: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "eval",
        "-m",
        model("smollm2").to_str().unwrap(),
        "--task",
        "bigbench:capitals",
        "--data",
        f.to_str().unwrap(),
        "--json",
        "--details",
        details.to_str().unwrap(),
        "-t",
        "2",
    ])))
    .unwrap();
    assert_eq!(j["task"], "bigbench:capitals");
    assert_eq!(j["n"], 4);
    assert!(j["wall_s"].as_f64().is_some());
    // a model of this size knows these; a model answering at random would get 50%
    assert_eq!(j["accuracy"].as_f64(), Some(1.0), "{j}");
    let lines = std::fs::read_to_string(&details).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(lines.contains("\"chosen\":\"Paris\""), "{lines}");
}

#[test]
fn bad_bigbench_input_is_a_one_line_error() {
    let d = scratch("bigbench-bad");
    let f = d.join("task.json");
    std::fs::write(&f, r#"{"examples": [{"input": "x", "target": "y"}]}"#).unwrap();
    let m = model("smollm2");
    let e = one_line_error(&run(&[
        "eval",
        "-m",
        m.to_str().unwrap(),
        "--task",
        "bigbench:gen",
        "--data",
        f.to_str().unwrap(),
    ]));
    assert!(
        e.contains("task.json") && e.contains("not a multiple-choice"),
        "{e}"
    );
    let e = one_line_error(&run(&["eval", "--task", "bigbench:"]));
    assert!(e.contains("bigbench:navigate"), "{e}");
    let e = one_line_error(&run(&[
        "eval",
        "-m",
        m.to_str().unwrap(),
        "--task",
        "bigbench:no_such_task_here",
    ]));
    assert!(e.contains("fetch-eval-data bigbench"), "{e}");
}
