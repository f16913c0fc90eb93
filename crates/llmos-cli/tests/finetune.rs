//! Fine-tuning end to end in miniature: a BPE tokenizer with the reserved chat tokens, a
//! tiny pretrained base, `llmos sft` on generated identity conversations, and `llmos eval
//! --task chatformat` before and after; plus bad input to sft and eval.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny base model made by llmos train on plain prose (no conversations in it).
fn tiny_base(d: &Path) -> PathBuf {
    let text: String = (0..300)
        .map(|i| {
            format!(
                "Chapter {i}. The small boat went down the river, and the {} birds sang.\nIt was a quiet day in the town of {}.\n\n\n",
                ["red", "blue", "green"][i % 3],
                ["Oakham", "Bree", "Dale"][i % 3]
            )
        })
        .collect();
    let corpus = d.join("corpus.txt");
    std::fs::write(&corpus, text).unwrap();
    let tok = d.join("tok.json");
    ok(&run(&[
        "tokenizer",
        "train",
        "--vocab-size",
        "400",
        "-o",
        s(&tok),
        s(&corpus),
    ]));
    let data = d.join("data");
    ok(&run(&[
        "data",
        "prepare",
        "--tokenizer",
        s(&tok),
        "-o",
        s(&data),
        s(&corpus),
    ]));
    let runp = d.join("base-run");
    ok(&run(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&runp),
        "--layers",
        "2",
        "--heads",
        "2",
        "--dim",
        "48",
        "--ffn",
        "96",
        "--ctx",
        "128",
        "--batch",
        "8",
        "--steps",
        "60",
        "--lr",
        "3e-3",
        "--warmup",
        "5",
        "--eval-every",
        "0",
        "--threads",
        "2",
    ]));
    let gguf = d.join("base.gguf");
    ok(&run(&["export", s(&runp), "--gguf", s(&gguf)]));
    gguf
}

fn chatformat(model: &Path, val: &Path) -> serde_json::Value {
    let out = ok(&run(&[
        "eval",
        "-m",
        s(model),
        "--task",
        "chatformat",
        "--data",
        s(val),
        "--max-tokens",
        "100",
        "--json",
        "-t",
        "2",
    ]));
    serde_json::from_str(out.trim()).unwrap()
}

/// The SFT acceptance in miniature: a base model that never saw a conversation
/// rarely ends a reply with the end-of-turn token; after SFT on conversations it does, on
/// held-out prompts, and the held-out loss fell.
#[test]
fn sft_teaches_the_chat_format() {
    let d = scratch("sft-e2e");
    let base = tiny_base(&d);
    let train = d.join("train.jsonl");
    let val = d.join("val.jsonl");
    ok(&run(&[
        "data",
        "gen",
        "identity",
        "-n",
        "300",
        "--seed",
        "1",
        "-o",
        s(&train),
    ]));
    ok(&run(&[
        "data",
        "gen",
        "identity",
        "-n",
        "20",
        "--seed",
        "2",
        "-o",
        s(&val),
    ]));
    let before = chatformat(&base, &val);
    assert_eq!(before["task"], "chatformat");
    assert_eq!(before["n"], 20);
    let acc0 = before["accuracy"].as_f64().unwrap();
    let out = d.join("sft");
    let o = run(&[
        "sft",
        "-m",
        s(&base),
        "--data",
        s(&train),
        "--val",
        s(&val),
        "--out",
        s(&out),
        "--steps",
        "300",
        "--batch",
        "8",
        "--ctx",
        "128",
        "--lr",
        "5e-3",
        "--warmup",
        "5",
        "--eval-every",
        "100",
        "-t",
        "2",
    ]);
    ok(&o);
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let vals: Vec<f64> = log.iter().filter_map(|l| l["val_loss"].as_f64()).collect();
    assert!(vals.len() >= 3, "{log:?}");
    let first_loss = log[0]["loss"].as_f64().unwrap();
    assert!(
        *vals.last().unwrap() < 0.5 * first_loss,
        "held-out loss {vals:?} vs first training loss {first_loss}"
    );
    let after = chatformat(&out.join("model.gguf"), &val);
    let acc1 = after["accuracy"].as_f64().unwrap();
    assert!(acc0 < 0.2, "base already follows the chat format: {before}");
    assert!(acc1 >= 0.95, "after SFT: {after} (before {acc0})");
    // the fine-tuned model answers through `llmos chat` with its identity
    let reply = ok(&run(&[
        "chat",
        "-m",
        s(&out.join("model.gguf")),
        "--temp",
        "0",
        "-n",
        "100",
        "Who are you?",
    ]));
    assert!(reply.contains("llmos"), "{reply}");
}

/// LoRA in miniature: rank-16 adapters over the frozen tiny base (stored as F16: a frozen
/// base stays in its own type) teach it the chat format; the adapters applied at run time
/// (`--lora`) and folded in (`export --merge`) give the same greedy replies; an adapter for
/// another model is refused.
#[test]
fn lora_sft_teaches_the_format_and_merges() {
    let d = scratch("lora-e2e");
    let base32 = tiny_base(&d);
    let base = d.join("base-f16.gguf");
    ok(&run(&["quantize", s(&base32), s(&base), "--type", "F16"]));
    let (train, val) = (d.join("train.jsonl"), d.join("val.jsonl"));
    for (f, n, seed) in [(&train, "300", "1"), (&val, "20", "2")] {
        ok(&run(&[
            "data",
            "gen",
            "identity",
            "-n",
            n,
            "--seed",
            seed,
            "-o",
            s(f),
        ]));
    }
    let out = d.join("lora");
    ok(&run(&[
        "sft",
        "-m",
        s(&base),
        "--data",
        s(&train),
        "--val",
        s(&val),
        "--out",
        s(&out),
        "--lora",
        "16",
        "--steps",
        "600",
        "--batch",
        "8",
        "--ctx",
        "128",
        // 1e-2 sat at the edge of divergence (2e-2 diverges): a change in the order of
        // one sum in the attention backward moved the result from 1.0 to 0.3; 3e-3, 5e-3
        // and 7e-3 all reach 1.0 and a lower validation loss (4.16 against 4.24)
        "--lr",
        "5e-3",
        "--warmup",
        "5",
        "--eval-every",
        "100",
        "-t",
        "2",
    ]));
    let adapter = out.join("adapter.gguf");
    assert!(adapter.is_file() && !out.join("model.gguf").exists());
    let eval = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--task",
            "chatformat",
            "--data",
            s(&val),
            "--max-tokens",
            "100",
            "--json",
            "-t",
            "2",
        ];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(ok(&run(&args)).trim()).unwrap();
        v["accuracy"].as_f64().unwrap()
    };
    let before = eval(&["-m", s(&base)]);
    let after = eval(&["-m", s(&base), "--lora", s(&adapter)]);
    assert!(
        before < 0.2,
        "base already follows the chat format: {before}"
    );
    assert!(after >= 0.9, "after LoRA SFT: {after} (before {before})");
    let merged = d.join("merged.gguf");
    // the base comes from the adapter's own record of it
    ok(&run(&["export", s(&out), "--merge", "--gguf", s(&merged)]));
    let greedy = |extra: &[&str]| -> String {
        let mut args = vec![
            "chat",
            "--activations",
            "f32",
            "--temp",
            "0",
            "-n",
            "32",
            "Who are you?",
        ];
        args.extend_from_slice(extra);
        ok(&run(&args))
    };
    let runtime = greedy(&["-m", s(&base), "--lora", s(&adapter)]);
    assert_eq!(runtime, greedy(&["-m", s(&merged)]));
    assert_ne!(runtime, greedy(&["-m", s(&base)]));
    let e = one_line_error(&run(&[
        "run",
        "-m",
        s(&model("smollm2")),
        "--lora",
        s(&adapter),
        "-n",
        "1",
        "-p",
        "hi",
    ]));
    assert!(e.contains("adapter.gguf") && e.contains("shape"), "{e}");
}

#[test]
fn bad_sft_and_eval_input_is_a_one_line_error() {
    let d = scratch("sft-bad");
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n{\"messages\": 3}\n",
    )
    .unwrap();
    let out = d.join("o");
    let e = one_line_error(&run(&[
        "sft",
        "-m",
        "nope.gguf",
        "--data",
        s(&bad),
        "--out",
        s(&out),
    ]));
    assert!(e.contains("bad.jsonl:2"), "{e}");
    let e = one_line_error(&run(&[
        "sft",
        "-m",
        "nope.gguf",
        "--data",
        s(&d.join("missing.jsonl")),
        "--out",
        s(&out),
    ]));
    assert!(e.contains("missing.jsonl"), "{e}");
    let e = one_line_error(&run(&["eval", "--task", "nope"]));
    assert!(e.contains("unknown task"), "{e}");
    let e = one_line_error(&run(&["eval", "--task", "chatformat"]));
    assert!(e.contains("--data"), "{e}");
    let e = one_line_error(&run(&["eval", "--task", "arith", "--level", "9"]));
    assert!(e.contains("--level"), "{e}");
    let e = one_line_error(&run(&["data", "gen", "poems", "-o", s(&d.join("p.jsonl"))]));
    assert!(e.contains("unknown kind"), "{e}");
    // gsm8k lines without a "#### N" answer
    let g = d.join("g.jsonl");
    std::fs::write(&g, "{\"question\": \"q\", \"answer\": \"no number\"}\n").unwrap();
    let e = one_line_error(&run(&["eval", "--task", "gsm8k", "--data", s(&g)]));
    assert!(e.contains("g.jsonl:1") && e.contains("####"), "{e}");
    // a base model without a chat template is refused before any work, naming the flag
    let good = d.join("good.jsonl");
    ok(&run(&[
        "data",
        "gen",
        "identity",
        "-n",
        "3",
        "-o",
        s(&good),
    ]));
    let sft_err = |m: &str, extra: &[&str]| {
        let (m, data, out) = (model(m), s(&good).to_string(), s(&out).to_string());
        let mut args = vec!["sft", "-m", s(&m), "--data", &data, "--out", &out];
        args.extend_from_slice(extra);
        one_line_error(&run(&args))
    };
    let e = sft_err("gemma3", &[]);
    assert!(e.contains("--chat-template"), "{e}");
    // LoRA flags and adapters that do not fit
    let e = sft_err("smollm2", &["--lora", "4", "--lora-alpha=-1"]);
    assert!(e.contains("--lora-alpha"), "{e}");
    let e = sft_err("smollm2", &["--end-weight", "0"]);
    assert!(e.contains("--end-weight"), "{e}");
    let e = one_line_error(&run(&["export", s(&out), "--merge"]));
    assert!(e.contains("--gguf"), "{e}");
    let e = one_line_error(&run(&[
        "export",
        s(&model("smollm2")),
        "--merge",
        "--gguf",
        s(&d.join("m.gguf")),
    ]));
    assert!(e.contains("not a LoRA adapter"), "{e}");
    let e = one_line_error(&run(&[
        "run",
        "-m",
        s(&model("smollm2")),
        "--lora",
        s(&model("smollm2")),
        "-n",
        "1",
        "-p",
        "hi",
    ]));
    assert!(e.contains("not a LoRA adapter"), "{e}");
    assert!(!d.join("m.gguf").exists());
}

/// Comparisons whose better answer is recognisable from its words: what a reward model
/// and DPO must pick up.
fn word_pairs(path: &Path, n: usize, seed: usize) {
    let prompts = [
        "Who are you?",
        "Say something.",
        "Hello!",
        "What do you like?",
    ];
    let text: String = (0..n)
        .map(|i| {
            let p = prompts[(i + seed) % prompts.len()];
            let k = (i * 7 + seed) % 5;
            serde_json::json!({
                "prompt": p,
                "chosen": format!("I am llmos and I like rivers {k}."),
                "rejected": format!("banana banana town {k} day"),
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn last_metrics(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn reward_model_and_dpo_learn_the_preference() {
    let d = scratch("prefs-e2e");
    let base = tiny_base(&d);
    let (train, val) = (d.join("pairs.jsonl"), d.join("val.jsonl"));
    word_pairs(&train, 80, 0);
    word_pairs(&val, 20, 3);
    let rm = d.join("rm");
    ok(&run(&[
        "rm",
        "-m",
        s(&base),
        "--data",
        s(&train),
        "--val",
        s(&val),
        "--out",
        s(&rm),
        "--steps",
        "40",
        "--batch",
        "4",
        "--ctx",
        "64",
        "--lr",
        "1e-3",
        "--eval-every",
        "20",
        "-t",
        "2",
    ]));
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(rm.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["step"], 0);
    let end = last_metrics(&rm);
    assert!(end["val_accuracy"].as_f64().unwrap() >= 0.95, "{end}");
    // the saved reward model scores the held-out pairs the same way
    let o = ok(&run(&[
        "rm",
        "score",
        "-m",
        s(&rm.join("model.gguf")),
        "--data",
        s(&val),
        "--json",
        "--ctx",
        "64",
    ]));
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(v["n"], 20);
    assert_eq!(v["accuracy"].as_f64(), end["val_accuracy"].as_f64());
    let score = |answer: &str| -> f64 {
        let o = ok(&run(&[
            "rm",
            "score",
            "-m",
            s(&rm.join("model.gguf")),
            "--prompt",
            "Hello!",
            "--answer",
            answer,
            "--json",
            "--ctx",
            "64",
        ]));
        serde_json::from_str::<serde_json::Value>(o.trim()).unwrap()["reward"]
            .as_f64()
            .unwrap()
    };
    assert!(score("I am llmos and I like rivers 2.") > score("banana banana town 2 day"));
    // the reward model still runs as a language model (the head is an extra tensor)
    ok(&run(&[
        "run",
        "-m",
        s(&rm.join("model.gguf")),
        "-n",
        "4",
        "--temp",
        "0",
        "-p",
        "Chapter",
    ]));
    // a plain model is not a reward model
    let e = one_line_error(&run(&["rm", "score", "-m", s(&base), "--data", s(&val)]));
    assert!(e.contains("not a reward model"), "{e}");

    let dpo = d.join("dpo");
    ok(&run(&[
        "dpo",
        "-m",
        s(&base),
        "--data",
        s(&train),
        "--val",
        s(&val),
        "--out",
        s(&dpo),
        "--steps",
        "30",
        "--batch",
        "4",
        "--ctx",
        "64",
        "--lr",
        "1e-3",
        "--beta",
        "0.5",
        "--eval-every",
        "15",
        "-t",
        "2",
    ]));
    let end = last_metrics(&dpo);
    assert!(end["val_accuracy"].as_f64().unwrap() >= 0.95, "{end}");
    assert!(dpo.join("model.gguf").is_file());
}

#[test]
fn grpo_runs_and_logs_the_reward_curve() {
    let d = scratch("grpo-e2e");
    let base = tiny_base(&d);
    let tasks = d.join("tasks.jsonl");
    ok(&run(&[
        "data",
        "gen",
        "arith-tasks",
        "--level",
        "1",
        "-n",
        "8",
        "-o",
        s(&tasks),
    ]));
    let out = d.join("grpo");
    // a reward any reply can earn: non-empty text (the format rules still apply)
    ok(&run(&[
        "grpo",
        "-m",
        s(&base),
        "--tasks",
        s(&tasks),
        "--eval-tasks",
        s(&tasks),
        "--out",
        s(&out),
        "--steps",
        "3",
        "--prompts",
        "2",
        "--group",
        "3",
        "--max-tokens",
        "8",
        "--ctx",
        "64",
        "--lr",
        "1e-3",
        "--reward",
        "regex:.",
        "--eval-every",
        "2",
        "-t",
        "2",
    ]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0]["eval_accuracy"].is_number() && lines[2]["eval_accuracy"].is_number());
    for l in &lines[1..] {
        let r = l["mean_reward"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&r) && l["kl"].as_f64().unwrap() >= 0.0,
            "{l}"
        );
    }
    assert!(
        std::fs::read_to_string(out.join("reward.svg"))
            .unwrap()
            .contains("<polyline")
    );
    ok(&run(&[
        "run",
        "-m",
        s(&out.join("model.gguf")),
        "-n",
        "4",
        "--temp",
        "0",
        "-p",
        "Chapter",
    ]));
    let e = one_line_error(&run(&[
        "grpo",
        "-m",
        s(&base),
        "--tasks",
        s(&tasks),
        "--out",
        s(&out),
        "--reward",
        "regex:(",
    ]));
    assert!(e.contains("regular expression"), "{e}");
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"x\", \"answer\": \"seven\"}\n").unwrap();
    let e = one_line_error(&run(&[
        "grpo",
        "-m",
        s(&base),
        "--tasks",
        s(&bad),
        "--out",
        s(&out),
    ]));
    assert!(e.contains("bad.jsonl:1") && e.contains("integer"), "{e}");
}

/// Problems decoded together through the batcher get exactly the replies they get one by
/// one (greedy), in the chat and the few-shot (stop text) formats.
#[test]
fn batched_eval_gives_the_serial_replies() {
    let d = scratch("eval-batched");
    let m = model("smollm2");
    for shots in ["0", "2"] {
        let mut replies = Vec::new();
        for parallel in ["1", "4"] {
            let det = d.join(format!("d-{shots}-{parallel}.jsonl"));
            let j: serde_json::Value = serde_json::from_str(&ok(&run(&[
                "eval",
                "-m",
                s(&m),
                "--task",
                "arith",
                "--level",
                "1",
                "--limit",
                "6",
                "--shots",
                shots,
                "--max-tokens",
                "24",
                "--parallel",
                parallel,
                "--details",
                s(&det),
                "--json",
                "-t",
                "2",
            ])))
            .unwrap();
            assert_eq!(j["n"], 6);
            replies.push(std::fs::read_to_string(&det).unwrap());
        }
        assert_eq!(replies[0], replies[1], "shots {shots}");
        assert_eq!(replies[0].lines().count(), 6);
    }
}
