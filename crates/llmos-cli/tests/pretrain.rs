//! The pretraining commands end to end on a tiny corpus: data prepare, train (TOML and
//! flags), export to GGUF and HF, run the exported model, eval bpb; and bad input to each
//! is a one-line error.

mod common;
use common::*;
use std::path::Path;

fn corpus(d: &Path) -> std::path::PathBuf {
    let text: String = (0..120)
        .map(|i| {
            format!(
                "Scene {i}. ROMEO: the sun is up, and so am I.\nJULIET: {} stars.\n\n\n",
                i * 7
            )
        })
        .collect();
    let p = d.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p
}

/// `llmos data prepare` of `text` into d/data with the given tokenizer.
fn prepare(d: &Path, text: &Path, tokenizer: &str) -> std::path::PathBuf {
    let data = d.join("data");
    let (ds, ts) = (data.to_str().unwrap(), text.to_str().unwrap());
    ok(&run(&[
        "data",
        "prepare",
        "--tokenizer",
        tokenizer,
        "-o",
        ds,
        ts,
    ]));
    data
}

/// The greedy ids `llmos run` gives for `prompt` (n tokens, one thread).
fn greedy_ids(m: &Path, prompt: &str, n: usize) -> Vec<u64> {
    let n = n.to_string();
    let j: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        prompt,
        "-n",
        &n,
        "--temp",
        "0",
        "--json",
        "-t",
        "1",
    ])))
    .unwrap();
    ids(&j["ids"])
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn prepare_train_export_run_and_eval() {
    let d = scratch("pretrain-e2e");
    let text = corpus(&d);
    let data = d.join("data");
    let out = ok(&run(&[
        "data",
        "prepare",
        "--tokenizer",
        "char",
        "--val-fraction",
        "0.05",
        "-o",
        data.to_str().unwrap(),
        text.to_str().unwrap(),
    ]));
    assert!(out.contains("val"), "{out}");
    assert!(data.join("val.txt").is_file());
    // settings from TOML, one overridden by a flag
    let toml = d.join("cfg.toml");
    std::fs::write(&toml, "layers = 2\nheads = 2\ndim = 32\nffn = 64\nctx = 32\nbatch = 4\nsteps = 999\nlr = 0.003\nwarmup = 5\neval_every = 20\nlog_every = 5\n").unwrap();
    let run_dir = d.join("run");
    ok(&run(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run_dir.to_str().unwrap(),
        "--config",
        toml.to_str().unwrap(),
        "--steps",
        "40",
        "-t",
        "2",
    ]));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["train"]["steps"], 40);
    assert_eq!(cfg["model"]["layers"], 2);
    let m = metrics(&run_dir);
    let steps: Vec<u64> = m.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 5, 10, 15, 20, 25, 30, 35, 40]);
    for l in &m {
        for k in ["loss", "tok_s", "mfu", "lr"] {
            assert!(l[k].as_f64().is_some_and(f64::is_finite), "{k} in {l}");
        }
    }
    let (first, last) = (
        m[0]["loss"].as_f64().unwrap(),
        m[8]["loss"].as_f64().unwrap(),
    );
    assert!(last < first * 0.75, "loss {first} -> {last}");
    assert!(m[4]["val_loss"].as_f64().is_some() && m[8]["val_bpb"].as_f64().is_some());
    assert!(
        std::fs::read_to_string(run_dir.join("loss.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    // export, then the inference engine runs the file and scores the held-out text
    let gguf = d.join("m.gguf");
    let hf = d.join("hf");
    ok(&run(&[
        "export",
        run_dir.to_str().unwrap(),
        "--gguf",
        gguf.to_str().unwrap(),
        "--hf",
        hf.to_str().unwrap(),
    ]));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(hf.join(f).is_file(), "{f}");
    }
    assert_eq!(greedy_ids(&gguf, "ROMEO:", 8).len(), 8);
    // chat works too: a char model gets the plain-text chat format
    let c: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "chat",
        "-m",
        gguf.to_str().unwrap(),
        "--temp",
        "0",
        "-n",
        "6",
        "--json",
        "-t",
        "1",
        "JULIET",
    ])))
    .unwrap();
    assert!(
        c["prompt"].as_str().unwrap().contains("USER:\nJULIET"),
        "{c}"
    );
    let b: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "eval",
        "bpb",
        "-m",
        gguf.to_str().unwrap(),
        data.join("val.txt").to_str().unwrap(),
        "--json",
        "-t",
        "1",
    ])))
    .unwrap();
    let bpb = b["bpb"].as_f64().unwrap();
    // a char model that has learnt something spends well under 8 bits on an ASCII byte
    assert!(bpb > 0.1 && bpb < 5.0, "{b}");
    assert!(b["gzip"].as_f64().is_some() || b["gzip"].is_null());
    hf_checkpoint_quantizes_like_the_gguf(&d, &gguf, &hf);
}

/// `llmos quantize` of the HF export (config.json, model.safetensors, tokenizer.json) writes
/// what quantizing the GGUF export writes: every tensor with the same name, shape, type and
/// bytes (so Q and K rows come back from HF's half-split order), and the same metadata
/// apart from the name; the two files generate the same tokens.
fn hf_checkpoint_quantizes_like_the_gguf(d: &Path, gguf: &Path, hf: &Path) {
    use llmos_formats::Gguf;
    for ty in ["f32", "q8_0"] {
        let (from_hf, from_gguf) = (
            d.join(format!("hf-{ty}.gguf")),
            d.join(format!("g-{ty}.gguf")),
        );
        for (src, dst) in [(hf, &from_hf), (gguf, &from_gguf)] {
            ok(&run(&[
                "quantize",
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
                "--type",
                ty,
            ]));
        }
        let (a, b) = (
            Gguf::open(&from_hf).unwrap(),
            Gguf::open(&from_gguf).unwrap(),
        );
        assert_eq!(a.tensors.len(), b.tensors.len(), "{ty}");
        for t in &b.tensors {
            let u = a
                .tensors
                .iter()
                .find(|u| u.name == t.name)
                .unwrap_or_else(|| panic!("{ty}: {} missing from the HF conversion", t.name));
            assert_eq!((&u.dims, u.dtype), (&t.dims, t.dtype), "{ty}: {}", t.name);
            assert!(
                a.tensor_data(u) == b.tensor_data(t),
                "{ty}: {} differs",
                t.name
            );
        }
        for (k, v) in &b.metadata {
            if k != "general.name" {
                assert_eq!(a.metadata.get(k), Some(v), "{ty}: metadata {k}");
            }
        }
        assert_eq!(
            greedy_ids(&from_hf, "JULIET:", 12),
            greedy_ids(&from_gguf, "JULIET:", 12),
            "{ty}"
        );
    }
    // a folder without the checkpoint, and a config of another architecture: one line each
    let e = one_line_error(&run(&[
        "quantize",
        d.to_str().unwrap(),
        "/tmp/x.gguf",
        "--type",
        "q8_0",
    ]));
    assert!(e.contains("model.safetensors"), "{e}");
    let other = d.join("hf-other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(hf.join(f), other.join(f)).unwrap();
    }
    std::fs::write(
        other.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let e = one_line_error(&run(&[
        "quantize",
        other.to_str().unwrap(),
        "/tmp/x.gguf",
        "--type",
        "q8_0",
    ]));
    assert!(
        e.contains("config.json") && e.contains("GPT2LMHeadModel"),
        "{e}"
    );
    assert!(!Path::new("/tmp/x.gguf").exists());
}

#[test]
fn resume_continues_where_the_run_stopped() {
    let d = scratch("pretrain-resume");
    let text = corpus(&d);
    let data = prepare(&d, &text, "byte");
    let args = |run_dir: &Path, steps: &str| -> Vec<String> {
        [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            run_dir.to_str().unwrap(),
            "--layers",
            "1",
            "--heads",
            "2",
            "--dim",
            "16",
            "--ctx",
            "16",
            "--batch",
            "2",
            "--steps",
            steps,
            "--eval-every",
            "0",
            "--log-every",
            "1",
            "--warmup",
            "2",
            "--decay",
            "constant",
            "-t",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, b) = (d.join("a"), d.join("b"));
    ok(&llmos().args(args(&a, "12")).output().unwrap());
    // b: 6 steps, then resumed with --steps 12 (a constant schedule after warm-up does not
    // depend on the step count, so the 12 losses must equal a's)
    ok(&llmos().args(args(&b, "6")).output().unwrap());
    let mut resume = args(&b, "12");
    resume.push("--resume".into());
    ok(&llmos().args(&resume).output().unwrap());
    let la: Vec<f64> = metrics(&a)
        .iter()
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    let lb: Vec<f64> = metrics(&b)
        .iter()
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(la, lb);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let d = scratch("pretrain-bad");
    let text = corpus(&d);
    let data = d.join("data");
    let ds = data.to_str().unwrap();
    ok(&run(&[
        "data",
        "prepare",
        "--tokenizer",
        "char",
        "-o",
        ds,
        text.to_str().unwrap(),
    ]));
    let rd = d.join("r");
    let rs = rd.to_str().unwrap();
    let bad_toml = d.join("bad.toml");
    std::fs::write(&bad_toml, "layers = 2\nwidth = 3\n").unwrap();
    let not_toml = d.join("not.toml");
    std::fs::write(&not_toml, "layers = = 2").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train",
                "--data",
                ds,
                "--out",
                rs,
                "--config",
                bad_toml.to_str().unwrap(),
            ],
            "width",
        ),
        (
            vec![
                "train",
                "--data",
                ds,
                "--out",
                rs,
                "--config",
                not_toml.to_str().unwrap(),
            ],
            "not.toml",
        ),
        (
            vec!["train", "--data", "/nonexistent/data", "--out", rs],
            "nonexistent",
        ),
        (
            vec![
                "train", "--data", ds, "--out", rs, "--dim", "30", "--heads", "4",
            ],
            "multiple of heads",
        ),
        (
            vec!["train", "--data", ds, "--out", rs, "--decay", "sideways"],
            "sideways",
        ),
        (
            vec![
                "train", "--data", ds, "--out", rs, "--resume", "--steps", "1",
            ],
            "checkpoint.bin",
        ),
        (
            vec!["export", rs, "--gguf", "/tmp/x.gguf"],
            "checkpoint.bin",
        ),
        (vec!["export", rs], "nothing to do"),
        (
            vec![
                "data",
                "prepare",
                "--tokenizer",
                "char",
                "-o",
                rs,
                "/nonexistent.txt",
            ],
            "nonexistent.txt",
        ),
        (
            vec![
                "data",
                "prepare",
                "--tokenizer",
                "char",
                "--val-fraction",
                "1.5",
                "-o",
                rs,
                text.to_str().unwrap(),
            ],
            "val-fraction",
        ),
    ];
    for (args, want) in cases {
        let e = one_line_error(&run(&args));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // a damaged shard is named with what is wrong
    let shard = data.join("train.bin");
    let b = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &b[..b.len() - 1]).unwrap();
    let e = one_line_error(&run(&["train", "--data", ds, "--out", rs, "--steps", "1"]));
    assert!(e.contains("train.bin") && e.contains("header says"), "{e}");
    // a non-UTF-8 text is refused by prepare and by eval bpb
    let bin = d.join("bin.txt");
    std::fs::write(&bin, [0x66, 0x6f, 0xff, 0x6f]).unwrap();
    let e = one_line_error(&run(&[
        "data",
        "prepare",
        "--tokenizer",
        "char",
        "-o",
        rs,
        bin.to_str().unwrap(),
    ]));
    assert!(e.contains("not UTF-8"), "{e}");
}

/// Ctrl-C (SIGINT) ends a run cleanly: a checkpoint at the step reached, exit status 0,
/// and `--resume` carries on from it.
#[test]
fn interrupt_saves_a_checkpoint_and_resume_continues() {
    let d = scratch("pretrain-sigint");
    let text = corpus(&d);
    let data = prepare(&d, &text, "char");
    let rd = d.join("run");
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        rd.to_str().unwrap(),
        "--layers",
        "2",
        "--heads",
        "2",
        "--dim",
        "32",
        "--ctx",
        "32",
        "--batch",
        "2",
        "--steps",
        "100000",
        "--eval-every",
        "0",
        "--log-every",
        "1",
        "--save-every",
        "0",
        "-t",
        "1",
    ];
    let child = llmos()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_to_string(rd.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped at step"), "{err}");
    let steps = metrics(&rd).last().unwrap()["step"].as_u64().unwrap();
    assert!(rd.join("checkpoint.bin").is_file());
    // resume to a few steps past the interruption
    let target = (steps + 3).to_string();
    let mut resume: Vec<&str> = args.to_vec();
    let at = resume.iter().position(|a| *a == "100000").unwrap();
    resume[at] = &target;
    resume.push("--resume");
    ok(&llmos().args(&resume).output().unwrap());
    assert_eq!(
        metrics(&rd).last().unwrap()["step"].as_u64().unwrap(),
        steps + 3
    );
}
