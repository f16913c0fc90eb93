//! `llmos data prepare` and `llmos train`: argument handling and progress display around
//! llmos-train.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use llmos_train::data::{Codec, TokenizerSpec, char_vocab, prepare};
use llmos_train::optim::Decay;
use llmos_train::train::{Outcome, StepLog, TrainConfig, train};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Subcommand)]
pub enum DataCmd {
    /// Tokenize text files into train/val token shards (validation held out by document).
    Prepare {
        /// char (one token per character seen), byte, or a HF tokenizer.json (e.g. from
        /// `llmos tokenizer train`).
        #[arg(long)]
        tokenizer: String,
        /// Share of the text (by bytes, whole documents) held out for validation.
        #[arg(long, default_value_t = 0.01)]
        val_fraction: f64,
        /// Seed of the validation pick.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (train.bin, val.bin, meta.json).
        #[arg(short, long)]
        out: PathBuf,
        /// UTF-8 text files; documents are separated by two or more blank lines.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Comparisons from a model's own samples on verifiable tasks: per prompt, a sample
    /// that is correct and well-formed is chosen over one that is wrong or malformed.
    Pairs(Box<crate::tune::PairsArgs>),
    /// Generate seeded conversations (JSONL, OpenAI messages): `identity` (who the model
    /// is), `arith` (arithmetic questions answered "The answer is N."), or `arith-tasks`
    /// (the problems as {"prompt", "answer"} lines, for GRPO).
    Gen {
        /// identity, arith or arith-tasks
        kind: String,
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        /// arith difficulty, 1 to 5 (0: a mix of levels 1 to 3)
        #[arg(long, default_value_t = 0)]
        level: u32,
        /// train or test side of the arith split
        #[arg(long, default_value = "train")]
        split: String,
        /// The assistant's name in identity conversations.
        #[arg(long, default_value = "llmos-chat")]
        name: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(short, long)]
        out: PathBuf,
    },
}

#[allow(clippy::too_many_arguments)]
fn cmd_data_gen(
    kind: &str,
    n: usize,
    level: u32,
    split: &str,
    name: &str,
    seed: u64,
    out: &Path,
) -> Result<()> {
    use llmos_train::tasks::{Split, arith_reply, arith_set, identity_pairs};
    let split = match split {
        "train" => Split::Train,
        "test" => Split::Test,
        s => bail!("--split {s:?}: train or test"),
    };
    if level > 5 {
        bail!("--level {level} must be between 0 and 5");
    }
    let conv = |q: &str, a: &str| serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]});
    let problems = |n: usize| -> Vec<llmos_train::tasks::Problem> {
        if level > 0 {
            return arith_set(level, split, n, seed);
        }
        let mut all: Vec<_> = (1..=3)
            .flat_map(|l| arith_set(l, split, n.div_ceil(3), seed + l as u64))
            .collect();
        // interleave levels deterministically, then cut to n
        let mut rng = llmos_train::Rng(seed);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i + 1));
        }
        all.truncate(n);
        all
    };
    let lines: Vec<serde_json::Value> = match kind {
        "identity" => identity_pairs(name, &mut llmos_train::Rng(seed), n)
            .iter()
            .map(|(q, a)| conv(q, a))
            .collect(),
        "arith" => problems(n)
            .iter()
            .map(|p| conv(&p.prompt, &arith_reply(p)))
            .collect(),
        "arith-tasks" => problems(n)
            .iter()
            .map(|p| serde_json::json!({"prompt": p.prompt, "answer": p.answer.to_string()}))
            .collect(),
        k => bail!("unknown kind {k:?} (identity, arith, arith-tasks)"),
    };
    let mut text = String::new();
    for l in &lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    llmos_train::data::write_atomic(out, text.as_bytes())?;
    eprintln!("{}: {} lines", out.display(), lines.len());
    Ok(())
}

pub fn cmd_data(c: DataCmd) -> Result<()> {
    let (tokenizer, val_fraction, seed, out, files) = match c {
        DataCmd::Pairs(a) => return crate::tune::cmd_pairs(*a),
        DataCmd::Gen {
            kind,
            n,
            level,
            split,
            name,
            seed,
            out,
        } => return cmd_data_gen(&kind, n, level, &split, &name, seed, &out),
        DataCmd::Prepare {
            tokenizer,
            val_fraction,
            seed,
            out,
            files,
        } => (tokenizer, val_fraction, seed, out, files),
    };
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("--val-fraction {val_fraction} must be in [0, 1)");
    }
    let mut texts = Vec::new();
    for f in &files {
        texts.push((f.display().to_string(), crate::read_utf8(f)?));
    }
    let (spec, codec) = match tokenizer.as_str() {
        "char" => {
            let chars = char_vocab(texts.iter().map(|(_, t)| t.as_str()));
            (
                TokenizerSpec::Char {
                    chars: chars.clone(),
                },
                Codec::Char(chars),
            )
        }
        "byte" => (TokenizerSpec::Byte, Codec::Byte),
        path => {
            let p = Path::new(path);
            let p = if p.is_dir() {
                p.join("tokenizer.json")
            } else {
                p.to_path_buf()
            };
            let tok = llmos_tokenizer::Tokenizer::from_hf_json(&p)
                .with_context(|| format!("{}", p.display()))?;
            std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
            let bytes = std::fs::read(&p).with_context(|| format!("{}", p.display()))?;
            llmos_train::data::write_atomic(&out.join("tokenizer.json"), &bytes)?;
            (
                TokenizerSpec::Hf {
                    file: "tokenizer.json".into(),
                },
                Codec::Hf(Box::new(tok)),
            )
        }
    };
    let meta = prepare(&texts, spec, &codec, val_fraction, seed, &out)?;
    println!(
        "{}: vocab {}, train {} tokens ({} documents, {} bytes), val {} tokens ({} documents, {} bytes)",
        out.display(),
        meta.vocab,
        meta.train_tokens,
        meta.train_docs,
        meta.train_bytes,
        meta.val_tokens,
        meta.val_docs,
        meta.val_bytes
    );
    Ok(())
}

/// `llmos train` flags; each overrides the TOML key of the same name.
#[derive(Args)]
pub struct TrainArgs {
    /// Prepared data directory (from `llmos data prepare`).
    #[arg(long)]
    data: PathBuf,
    /// Run directory: config.json, metrics.jsonl, loss.svg, checkpoint.bin.
    #[arg(long)]
    out: PathBuf,
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue from the run directory's checkpoint, bit for bit.
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    #[arg(long)]
    dim: Option<usize>,
    /// SwiGLU hidden width (default 8/3 x dim, rounded up to 32).
    #[arg(long)]
    ffn: Option<usize>,
    #[arg(long)]
    ctx: Option<usize>,
    /// Untied output head (default: the head shares the embedding).
    #[arg(long)]
    untied: bool,
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    accum: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    min_lr: Option<f32>,
    #[arg(long)]
    warmup: Option<usize>,
    /// cosine, linear or constant.
    #[arg(long)]
    decay: Option<String>,
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long)]
    grad_clip: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    eval_batches: Option<usize>,
    #[arg(long)]
    save_every: Option<usize>,
    #[arg(long)]
    log_every: Option<usize>,
}

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C asks a training loop to save and stop at the next step; a second one
/// exits at once.
pub(crate) fn install_stop_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")
}

fn build_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let s = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            toml::from_str::<TrainConfig>(&s).map_err(|e| {
                anyhow::anyhow!("{}: {}", p.display(), e.to_string().replace('\n', " "))
            })?
        }
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f { c.$f = v; })* };
    }
    set!(
        layers,
        heads,
        dim,
        ctx,
        batch,
        accum,
        steps,
        lr,
        warmup,
        weight_decay,
        grad_clip,
        seed,
        threads,
        eval_every,
        eval_batches,
        save_every,
        log_every
    );
    if a.kv_heads.is_some() {
        c.kv_heads = a.kv_heads;
    }
    if a.ffn.is_some() {
        c.ffn = a.ffn;
    }
    if a.min_lr.is_some() {
        c.min_lr = a.min_lr;
    }
    if a.untied {
        c.tied = false;
    }
    if let Some(d) = &a.decay {
        c.decay = match d.as_str() {
            "cosine" => Decay::Cosine,
            "linear" => Decay::Linear,
            "constant" => Decay::Constant,
            other => bail!("--decay {other}: expected cosine, linear or constant"),
        };
    }
    Ok(c)
}

pub fn cmd_train(a: TrainArgs) -> Result<()> {
    let cfg = build_config(&a)?;
    llmos_tensor::init_threads(cfg.threads);
    install_stop_handler()?;
    let meta = llmos_train::data::Meta::load(&a.data)?;
    let m = cfg.model(meta.vocab);
    m.validate()
        .map_err(|e| anyhow::anyhow!("model shape: {e}"))?;
    let bar = crate::tune::progress_bar();
    bar.set_length(cfg.steps as u64);
    let mut last_val = String::new();
    let mut on_log = |l: &StepLog| {
        if let (Some(v), Some(b)) = (l.val_loss, l.val_bpb) {
            last_val = format!(" | val {v:.4} ({b:.3} bpb)");
            bar.println(format!(
                "step {}: loss {:.4}, val loss {v:.4}, val {b:.4} bits/byte",
                l.step, l.loss
            ));
        }
        bar.set_position(l.step as u64);
        bar.set_message(format!(
            "loss {:.4}{last_val} | {:.0} tok/s | MFU {:.0}% | lr {:.2e}",
            l.loss,
            l.tok_s,
            l.mfu.unwrap_or(0.0) * 100.0,
            l.lr
        ));
    };
    let n_params = llmos_train::model::Layout::new(&m).total;
    let mut on_start = |peak: f64| {
        eprintln!(
            "model: {} layers, {} heads ({} kv), dim {}, ffn {}, ctx {}, vocab {}: {:.2} M parameters; {} steps of {} x {} x {} tokens",
            m.layers,
            m.heads,
            m.kv_heads,
            m.dim,
            m.ffn,
            m.ctx,
            m.vocab,
            n_params as f64 / 1e6,
            cfg.steps,
            cfg.batch,
            cfg.accum,
            cfg.ctx
        );
        eprintln!(
            "f32 GEMM peak here: {peak:.1} GFLOP/s on {} threads (MFU = 6 x {:.2} M x tok/s over it)",
            llmos_tensor::pool::threads(),
            m.matmul_params() as f64 / 1e6
        )
    };
    let out = train(
        &a.data,
        &a.out,
        &cfg,
        a.resume,
        &STOP,
        &mut on_start,
        &mut on_log,
    )?;
    bar.finish();
    match out {
        Outcome::Finished => eprintln!("done: {}", a.out.display()),
        Outcome::Stopped(s) => eprintln!(
            "stopped at step {s}; checkpoint saved; continue with the same command and --resume"
        ),
    }
    Ok(())
}

/// `llmos export RUN_DIR --gguf OUT.gguf --hf DIR`.
#[derive(Args)]
pub struct ExportArgs {
    /// Run directory of `llmos train` (its last checkpoint is exported); with --merge, a
    /// run directory of `llmos sft --lora` or its adapter.gguf.
    run: PathBuf,
    /// Write a GGUF file (architecture llama, F32) here.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Fold LoRA adapters into their base and write the result to --gguf.
    #[arg(long)]
    merge: bool,
    /// With --merge: the base model (default: the one the adapter was trained on).
    #[arg(short, long)]
    model: Option<String>,
    /// With --merge: the type of the merged matrices (F32 keeps them exact; other tensors
    /// keep the base's types).
    #[arg(long = "type", default_value = "F32")]
    ty: String,
    /// Write a Hugging Face directory (config.json, model.safetensors, tokenizer.json) here.
    #[arg(long)]
    hf: Option<PathBuf>,
}

/// `llmos export RUN --merge --gguf OUT`: a LoRA run's adapters folded into its base.
fn cmd_merge(a: ExportArgs) -> Result<()> {
    let Some(out) = &a.gguf else {
        bail!("--merge writes a GGUF file: give --gguf OUT.gguf");
    };
    if a.hf.is_some() {
        bail!("--merge writes GGUF only (no --hf)");
    }
    let ty = crate::perf::parse_type(&a.ty)?;
    let adapter = if a.run.is_dir() {
        a.run.join("adapter.gguf")
    } else {
        a.run.clone()
    };
    let ag = llmos_formats::Gguf::open(&adapter)
        .with_context(|| format!("{}: no LoRA adapter here", adapter.display()))?;
    if ag
        .get("general.type")
        .and_then(llmos_formats::Value::as_str)
        != Some("adapter")
    {
        bail!(
            "{}: not a LoRA adapter (general.type is not \"adapter\")",
            adapter.display()
        );
    }
    let spec = match &a.model {
        Some(m) => m.clone(),
        None => ag
            .get("llmos.lora.base")
            .and_then(llmos_formats::Value::as_str)
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{}: the adapter does not name its base; give -m BASE",
                    adapter.display()
                )
            })?,
    };
    let path = crate::resolve(&spec)?;
    let mut g = llmos_formats::Gguf::open(&path)?;
    // the chat template the adapters were trained with goes into the merged model
    if let Some(t) = ag.get("tokenizer.chat_template") {
        g.metadata
            .insert("tokenizer.chat_template".into(), t.clone());
    }
    // the context only matters to training; the base's own is kept in the metadata
    let cfg = llmos_train::import::config_of(&g, 1)?;
    let (lora, params) = llmos_train::import::read_adapter(&ag, &cfg)?;
    let name = out.file_stem().map_or("llmos-merged".to_string(), |n| {
        n.to_string_lossy().into_owned()
    });
    llmos_train::import::merged_gguf(&g, &cfg, &lora, &params, ty, &name)?
        .write(out)
        .with_context(|| format!("{}", out.display()))?;
    eprintln!(
        "{}: {} with the rank-{} adapters of {} folded in ({} matrices as {})",
        out.display(),
        path.display(),
        lora.rank,
        adapter.display(),
        lora.blocks.len() * 7,
        ty.name()
    );
    Ok(())
}

pub fn cmd_export(a: ExportArgs) -> Result<()> {
    if a.merge {
        return cmd_merge(a);
    }
    if a.gguf.is_none() && a.hf.is_none() {
        bail!("nothing to do: give --gguf OUT.gguf and/or --hf DIR");
    }
    let m = llmos_train::export::load_run(&a.run)?;
    let name = a
        .run
        .file_name()
        .map_or("llmos".to_string(), |n| n.to_string_lossy().into_owned());
    if let Some(p) = &a.gguf {
        llmos_train::export::write_gguf(&m, p, &name)?;
        eprintln!(
            "{}: step {} of {name}, {} tensors",
            p.display(),
            m.step,
            llmos_train::model::Layout::new(&m.cfg).tensors.len()
        );
    }
    if let Some(d) = &a.hf {
        llmos_train::export::write_hf(&m, d)?;
        eprintln!("{}: HF Llama directory", d.display());
    }
    Ok(())
}
