//! `llmos sft`: argument handling and progress display around llmos-train's fine-tuning.

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llmos_formats::Gguf;
use llmos_tokenizer::{ChatTemplate, Tokenizer};
use llmos_train::import;
use llmos_train::sft::{self, SftConfig};
use llmos_train::train::StepLog;
use std::path::PathBuf;

/// `llmos sft -m BASE --data FILE.jsonl --out RUN`.
#[derive(Args)]
pub struct SftArgs {
    /// Base model: alias (smollm2), GGUF path (e.g. one `llmos export` wrote), pypi:... or hf:...
    #[arg(short, long)]
    model: String,
    /// Conversations, JSONL: {"messages": [{"role": "user"|"assistant"|"system", "content"}]}.
    #[arg(long)]
    data: PathBuf,
    /// Held-out conversations (default: --val-fraction of --data, picked by --seed).
    #[arg(long)]
    val: Option<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Run directory: model.gguf (the fine-tuned model; with --lora, adapter.gguf instead),
    /// metrics.jsonl, loss.svg.
    #[arg(short, long)]
    out: PathBuf,
    /// Train LoRA adapters of this rank on every attention and MLP projection instead of
    /// every weight; the base stays frozen in its own (quantized) types. Fold them in with
    /// `llmos export RUN --merge --gguf OUT.gguf`, or run them with `--lora`.
    #[arg(long, default_value_t = 0)]
    lora: usize,
    /// LoRA scale numerator: the update is (alpha / rank) B A (default: 2 x rank).
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// Start from these LoRA adapters (an adapter.gguf of an earlier run: training goes on
    /// from where it ended, with a fresh schedule and optimizer state).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Chat template to train with: `gemma`, `chatml` or a Jinja file (needed for a base
    /// model without one, such as Gemma 3's base; written into the outputs).
    #[arg(long)]
    chat_template: Option<String>,
    /// Optimizer steps (default: --epochs passes over the data).
    #[arg(long, default_value_t = 0)]
    steps: usize,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Conversations per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Longest sequence trained on (longer conversations are cut; the count is printed).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    #[arg(long, default_value_t = 0.0)]
    min_lr: f32,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// Draw this many batches at once and regroup their conversations by length, so a
    /// step pads short conversations less (0: off; 8 is a good value when lengths vary).
    #[arg(long, default_value_t = 0)]
    group_by_length: usize,
    /// Weight of each assistant turn's end-of-turn token against 1 for its other tokens
    /// (above 1, replies learn to end more readily; the loss stays a weighted mean).
    #[arg(long, default_value_t = 1.0)]
    end_weight: f32,
    #[command(flatten)]
    run: LoopArgs,
}

/// Settings every fine-tuning loop shares.
#[derive(Args)]
pub struct LoopArgs {
    /// Seed of the data order (and of the held-out pick and the reward head).
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Held-out evaluation every this many steps (and at the end).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    #[arg(long, default_value_t = 5)]
    log_every: usize,
}

/// The chat template a model's tokenizer carries, with its BOS and EOS texts.
pub fn template_of(tok: &Tokenizer) -> Result<ChatTemplate> {
    let src = tok.chat_template.as_deref().context(
        "this model has no chat template (tokenizer.chat_template): give --chat-template gemma|chatml|FILE, or use `llmos run` for raw completion",
    )?;
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    Ok(ChatTemplate::new(src, &text(tok.bos), &text(tok.eos))?)
}

/// A model to fine-tune: the file, its trainer shape and f32 parameters, tokenizer and chat
/// template.
pub struct Base {
    pub path: PathBuf,
    pub g: Gguf,
    pub cfg: llmos_train::ModelConfig,
    pub params: Vec<f32>,
    pub tok: std::sync::Arc<Tokenizer>,
    pub tpl: ChatTemplate,
}

pub fn load_base(spec: &str, ctx: usize) -> Result<Base> {
    load_base_as(spec, ctx, true, None)
}

/// [`load_base`]; without `f32_copy` the parameters are left empty (a frozen base is read
/// from the mapped file). `template` (a built-in name or a Jinja file) replaces the
/// model's chat template, or gives one to a base model that has none; it is then part of
/// the base's metadata, so every file written from it carries it.
pub fn load_base_as(
    spec: &str,
    ctx: usize,
    f32_copy: bool,
    template: Option<&str>,
) -> Result<Base> {
    let path = crate::resolve(spec)?;
    let mut g = Gguf::open(&path)?;
    let cfg = import::config_of(&g, ctx)?;
    let mut tok = Tokenizer::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
    if let Some(t) = template {
        let src = llmos_tokenizer::template_source(t).with_context(|| {
            format!("--chat-template {t}: not a built-in (gemma, chatml) nor a readable file")
        })?;
        g.metadata.insert(
            "tokenizer.chat_template".into(),
            llmos_formats::Value::String(src.clone()),
        );
        tok.chat_template = Some(src);
    }
    let tpl = template_of(&tok)?;
    let params = if f32_copy {
        import::params_of(&g, &cfg)?
    } else {
        Vec::new()
    };
    Ok(Base {
        path,
        g,
        cfg,
        params,
        tok: tok.into(),
        tpl,
    })
}

impl Base {
    /// One line on what is being trained.
    fn describe(&self) {
        let n = llmos_train::Layout::new(&self.cfg).total;
        eprintln!(
            "base {}: {} layers, dim {}, vocab {}: {:.1} M parameters ({})",
            self.path.display(),
            self.cfg.layers,
            self.cfg.dim,
            self.cfg.vocab,
            n as f64 / 1e6,
            if self.params.is_empty() {
                "frozen, read from the file"
            } else {
                "f32 copy"
            }
        );
    }
}

pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar
}

fn run_name(out: &std::path::Path, default: &str) -> String {
    out.file_name()
        .map_or(default.to_string(), |n| n.to_string_lossy().into_owned())
}

pub fn cmd_sft(a: SftArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", a.val_fraction);
    }
    if a.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let mut sc = SftConfig {
        steps: a.steps,
        epochs: a.epochs,
        batch: a.batch,
        ctx: a.ctx,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        seed: a.run.seed,
        eval_every: a.run.eval_every,
        log_every: a.run.log_every,
        group_by_length: a.group_by_length,
        end_weight: a.end_weight,
        end_ids: Vec::new(),
    };
    if !(a.end_weight.is_finite() && a.end_weight > 0.0) {
        bail!("--end-weight {} must be positive", a.end_weight);
    }
    let mut convs = sft::parse_conversations(&a.data, &crate::read_utf8(&a.data)?)?;
    let val = match &a.val {
        Some(p) => sft::parse_conversations(p, &crate::read_utf8(p)?)?,
        None => {
            let n_val = (convs.len() as f64 * a.val_fraction).round() as usize;
            let n_val = if a.val_fraction > 0.0 && convs.len() >= 2 {
                n_val.max(1)
            } else {
                n_val
            };
            // a seeded pick of whole conversations
            let mut rng = llmos_train::Rng(a.run.seed ^ 0x7a1);
            let mut val = Vec::new();
            for _ in 0..n_val {
                val.push(convs.swap_remove(rng.below(convs.len())));
            }
            val
        }
    };
    if a.lora > 0 && a.lora_alpha.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
        bail!("--lora-alpha must be positive");
    }
    if a.adapter.is_some() && a.lora_alpha.is_some() {
        bail!("--lora-alpha comes from the --adapter file; give one or the other");
    }
    let lora_run = a.lora > 0 || a.adapter.is_some();
    llmos_tensor::init_threads(a.run.threads);
    crate::trainer::install_stop_handler()?;
    let base = load_base_as(&a.model, a.ctx, !lora_run, a.chat_template.as_deref())?;
    base.describe();
    let Base {
        g,
        cfg,
        params,
        tok,
        tpl,
        ..
    } = base;
    // adapters to start from: fresh ones of rank --lora, or those of --adapter
    let start = match &a.adapter {
        Some(p) => {
            let ag = Gguf::open(p)?;
            let (l, v) = import::read_adapter(&ag, &cfg)?;
            if a.lora > 0 && a.lora != l.rank {
                bail!("--lora {} but {} has rank {}", a.lora, p.display(), l.rank);
            }
            Some((l, Some(v)))
        }
        None if a.lora > 0 => {
            let alpha = a.lora_alpha.unwrap_or(2.0 * a.lora as f32);
            Some((llmos_train::lora::Lora::new(&cfg, a.lora, alpha), None))
        }
        None => None,
    };
    let (lora, lora_init) = match start {
        Some((l, v)) => (Some(l), v),
        None => (None, None),
    };
    let frozen = match &lora {
        Some(_) => Some(import::GgufWeights::new(&g, &cfg)?),
        None => None,
    };
    let (target, params) = match (&lora, &frozen) {
        (Some(l), Some(f)) => {
            eprintln!(
                "LoRA: rank {}, alpha {}, {:.2} M trainable parameters on {} projections",
                l.rank,
                l.alpha,
                l.total as f64 / 1e6,
                l.blocks.len() * 7
            );
            let init = lora_init.unwrap_or_else(|| l.init(a.run.seed));
            (sft::Target::Lora { base: f, lora: l }, init)
        }
        _ => (sft::Target::Full, params),
    };
    let train = sft::prepare(&tpl, &tok, &convs, a.ctx, cfg.vocab)?;
    let valp = sft::prepare(&tpl, &tok, &val, a.ctx, cfg.vocab)?;
    let learn: usize = train
        .rows
        .iter()
        .map(|r| r.learn[1..].iter().filter(|&&l| l).count())
        .sum();
    let total: usize = train.rows.iter().map(|r| r.ids.len()).sum();
    eprintln!(
        "train: {} conversations, {total} tokens, {learn} of them the assistant's (the loss); held out: {}",
        train.rows.len(),
        valp.rows.len()
    );
    if train.truncated + valp.truncated > 0 || train.dropped + valp.dropped > 0 {
        eprintln!(
            "warning: {} conversations cut at --ctx {}; {} dropped (no assistant token left)",
            train.truncated + valp.truncated,
            a.ctx,
            train.dropped + valp.dropped
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let pad = tok.eos.unwrap_or(0);
    if sc.end_weight != 1.0 {
        sc.end_ids = (0..tok.vocab_size() as u32)
            .filter(|&i| tok.is_eog(i))
            .collect();
    }
    let bar = progress_bar();
    let mut last_val = String::new();
    let mut on_log = |l: &StepLog, steps: usize| {
        bar.set_length(steps as u64);
        if let Some(v) = l.val_loss {
            last_val = format!(" | val {v:.4}");
            bar.println(format!(
                "step {}: loss {:.4}, held-out loss {v:.4} (per assistant token)",
                l.step, l.loss
            ));
        }
        bar.set_position(l.step as u64);
        bar.set_message(format!(
            "loss {:.4}{last_val} | {:.0} tok/s | lr {:.2e}",
            l.loss, l.tok_s, l.lr
        ));
    };
    let (params, done) = sft::finetune(
        &cfg,
        target,
        params,
        &train.rows,
        &valp.rows,
        pad,
        &sc,
        &a.out,
        &crate::trainer::STOP,
        &mut on_log,
    )?;
    bar.finish();
    let name = a.out.file_name().map_or("llmos-sft".to_string(), |n| {
        n.to_string_lossy().into_owned()
    });
    if let Some(l) = &lora {
        let out = a.out.join("adapter.gguf");
        import::adapter_gguf(&g, &a.model, l, &params, &name)
            .write(&out)
            .with_context(|| format!("{}", out.display()))?;
        eprintln!(
            "{}: after {done} steps; merge with `llmos export {} --merge --gguf OUT.gguf`, or run with `-m {} --lora {}`",
            out.display(),
            a.out.display(),
            a.model,
            out.display()
        );
        return Ok(());
    }
    let out = a.out.join("model.gguf");
    import::write_like(&g, &cfg, &params, None, &out, &name)?;
    eprintln!("{}: after {done} steps", out.display());
    Ok(())
}

/// `llmos rm` (train a reward model) and `llmos dpo`: comparisons in, a model out.
#[derive(Args)]
pub struct PrefArgs {
    /// Starting model: alias, GGUF path, pypi:... or hf:...
    #[arg(short, long)]
    model: String,
    /// Comparisons, JSONL: {"prompt", "chosen", "rejected"}.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out comparisons (default: --val-fraction of --data, picked by --seed).
    #[arg(long)]
    val: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Run directory: model.gguf, metrics.jsonl.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Optimizer steps (default: --epochs passes).
    #[arg(long, default_value_t = 0)]
    steps: usize,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Comparisons per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    #[arg(long, default_value_t = 1e-5)]
    lr: f32,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// DPO: strength of the pull towards the reference model.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    // the loop flags are spelled out here rather than flattened from LoopArgs: `llmos rm`
    // holds these arguments as an Option, and clap cannot tell a nested group is present
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Held-out evaluation every this many steps (and at the end).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    #[arg(long, default_value_t = 5)]
    log_every: usize,
}

#[derive(clap::Subcommand)]
pub enum RmCmd {
    /// Score answers with a reward model: pairwise accuracy on comparisons (--data), or the
    /// reward of one answer (--prompt and --answer).
    Score {
        #[arg(short, long)]
        model: String,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long)]
        answer: Option<String>,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        #[arg(long)]
        json: bool,
        #[arg(short, long, default_value_t = 0)]
        threads: usize,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RmArgs {
    #[command(subcommand)]
    cmd: Option<RmCmd>,
    #[command(flatten)]
    train: Option<PrefArgs>,
}

fn split_val<T>(items: &mut Vec<T>, frac: f64, seed: u64) -> Vec<T> {
    let n = (items.len() as f64 * frac).round() as usize;
    let n = if frac > 0.0 && items.len() >= 2 {
        n.max(1)
    } else {
        n
    };
    let mut rng = llmos_train::Rng(seed ^ 0x7a1);
    (0..n)
        .map(|_| items.swap_remove(rng.below(items.len())))
        .collect()
}

pub fn cmd_rm(a: RmArgs) -> Result<()> {
    match (a.cmd, a.train) {
        (
            Some(RmCmd::Score {
                model,
                data,
                prompt,
                answer,
                ctx,
                json,
                threads,
            }),
            _,
        ) => rm_score(&model, data, prompt, answer, ctx, json, threads),
        (None, Some(t)) => cmd_pref(t, true),
        (None, None) => bail!("give -m BASE --data PAIRS.jsonl --out RUN, or `llmos rm score`"),
    }
}

pub fn cmd_dpo(a: PrefArgs) -> Result<()> {
    cmd_pref(a, false)
}

fn cmd_pref(a: PrefArgs, rm: bool) -> Result<()> {
    use llmos_train::prefs::{self, Objective, PrefConfig, PrefEval};
    let data = a.data.clone().context("--data PAIRS.jsonl is required")?;
    let out = a.out.clone().context("--out RUN is required")?;
    if !(0.0..1.0).contains(&a.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", a.val_fraction);
    }
    if !(a.beta > 0.0 && a.beta.is_finite()) {
        bail!("--beta must be positive");
    }
    let mut comps = prefs::parse_comparisons(&data, &crate::read_utf8(&data)?)?;
    let val = match &a.val {
        Some(p) => prefs::parse_comparisons(p, &crate::read_utf8(p)?)?,
        None => split_val(&mut comps, a.val_fraction, a.seed),
    };
    llmos_tensor::init_threads(a.threads);
    crate::trainer::install_stop_handler()?;
    let base = load_base(&a.model, a.ctx)?;
    base.describe();
    let (train, cut1) = prefs::render_pairs(&base.tpl, &base.tok, &comps, a.ctx, base.cfg.vocab)?;
    let (valp, cut2) = prefs::render_pairs(&base.tpl, &base.tok, &val, a.ctx, base.cfg.vocab)?;
    eprintln!(
        "{}: {} training comparisons, {} held out",
        if rm { "reward model" } else { "DPO" },
        train.len(),
        valp.len()
    );
    if cut1 + cut2 > 0 {
        eprintln!(
            "warning: {} comparisons cut at --ctx {}",
            cut1 + cut2,
            a.ctx
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
    let pc = PrefConfig {
        steps: a.steps,
        epochs: a.epochs,
        batch: a.batch,
        ctx: a.ctx,
        lr: a.lr,
        warmup: a.warmup,
        grad_clip: a.grad_clip,
        seed: a.seed,
        beta: a.beta,
        eval_every: a.eval_every,
        log_every: a.log_every,
    };
    let pad = base.tok.eos.unwrap_or(0);
    let bar = progress_bar();
    let mut last_val = String::new();
    let mut on_log = |l: &StepLog, e: Option<&PrefEval>, steps: usize| {
        bar.set_length(steps as u64);
        if let Some(e) = e {
            last_val = format!(" | val acc {:.1}%", e.accuracy * 100.0);
            bar.println(format!(
                "step {}: held-out loss {:.4}, pairwise accuracy {:.1}%",
                l.step,
                e.loss,
                e.accuracy * 100.0
            ));
        }
        bar.set_position(l.step as u64);
        if l.step > 0 {
            bar.set_message(format!(
                "loss {:.4}{last_val} | {:.0} tok/s | lr {:.2e}",
                l.loss, l.tok_s, l.lr
            ));
        }
    };
    // a fresh head: small random weights from the seed, no bias
    let mut head: Vec<f32> = {
        let mut rng = llmos_train::Rng(a.seed ^ 0x4ead);
        let s = 1.0 / (base.cfg.dim as f64).sqrt();
        (0..base.cfg.dim)
            .map(|_| (rng.normal() * s * 0.1) as f32)
            .chain(std::iter::once(0.0))
            .collect()
    };
    let objective = if rm {
        Objective::Reward { head: &mut head }
    } else {
        Objective::Dpo
    };
    let (params, done) = prefs::train_prefs(
        &base.cfg,
        base.params.clone(),
        objective,
        &train,
        &valp,
        pad,
        &pc,
        &out,
        &crate::trainer::STOP,
        &mut on_log,
    )?;
    bar.finish();
    let path = out.join("model.gguf");
    let name = run_name(&out, if rm { "llmos-rm" } else { "llmos-dpo" });
    import::write_like(
        &base.g,
        &base.cfg,
        &params,
        rm.then_some(&head[..]),
        &path,
        &name,
    )?;
    eprintln!("{}: after {done} steps", path.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn rm_score(
    model: &str,
    data: Option<PathBuf>,
    prompt: Option<String>,
    answer: Option<String>,
    ctx: usize,
    json: bool,
    threads: usize,
) -> Result<()> {
    use llmos_train::prefs;
    llmos_tensor::init_threads(threads);
    let base = load_base(model, ctx)?;
    let head = import::reward_head(&base.g, &base.cfg)?.with_context(|| {
        format!(
            "{}: not a reward model (no {})",
            base.path.display(),
            import::RM_HEAD
        )
    })?;
    let m = llmos_train::Model::new(base.cfg.clone());
    let mut ws = llmos_train::Workspace::default();
    let pad = base.tok.eos.unwrap_or(0);
    match (data, prompt, answer) {
        (Some(d), None, None) => {
            let comps = prefs::parse_comparisons(&d, &crate::read_utf8(&d)?)?;
            let (pairs, _) =
                prefs::render_pairs(&base.tpl, &base.tok, &comps, ctx, base.cfg.vocab)?;
            let e = prefs::eval_rm(&m, &base.params, &head, &pairs, 4, pad, &mut ws);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"n": pairs.len(), "accuracy": e.accuracy, "loss": e.loss})
                );
            } else {
                println!(
                    "{} comparisons: pairwise accuracy {:.1}%, loss {:.4}",
                    pairs.len(),
                    e.accuracy * 100.0,
                    e.loss
                );
            }
        }
        (None, Some(p), Some(ans)) => {
            let c = prefs::Comparison {
                prompt: p,
                chosen: ans.clone(),
                rejected: ans,
            };
            let (pairs, _) = prefs::render_pairs(&base.tpl, &base.tok, &[c], ctx, base.cfg.vocab)?;
            let rows = prefs::pair_rows(&[&pairs[0]], pad);
            let r = llmos_train::objectives::rewards(&m, &base.params, &head, &rows, &mut ws)[0];
            if json {
                println!("{}", serde_json::json!({"reward": r}));
            } else {
                println!("{r:.4}");
            }
        }
        _ => bail!("give --data PAIRS.jsonl, or --prompt and --answer"),
    }
    Ok(())
}

/// `llmos data pairs`: comparisons from the model's own samples, ranked by the checker.
#[derive(Args)]
pub struct PairsArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// Verifiable tasks, JSONL {"prompt", "answer"} (e.g. `llmos data gen arith-tasks`).
    #[arg(long)]
    tasks: PathBuf,
    /// Samples per prompt.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    #[arg(long, default_value_t = 0.9)]
    temp: f32,
    #[arg(long, default_value_t = 96)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sequences sampled together by the continuous batcher.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Output comparisons JSONL.
    #[arg(short, long)]
    out: PathBuf,
}

/// The JSON values of a JSONL file, each with its "FILE:LINE" (blank lines skipped).
pub fn jsonl(path: &std::path::Path) -> Result<Vec<(String, serde_json::Value)>> {
    let text = crate::read_utf8(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v = serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        out.push((at, v));
    }
    Ok(out)
}

/// Verifiable tasks: lines {"prompt", "answer"} with an integer answer.
pub fn read_tasks(path: &std::path::Path) -> Result<Vec<llmos_train::tasks::Problem>> {
    let mut out = Vec::new();
    for (at, v) in jsonl(path)? {
        let prompt = v["prompt"]
            .as_str()
            .with_context(|| format!("{at}: no \"prompt\" string"))?;
        let answer = match &v["answer"] {
            serde_json::Value::String(s) => s.trim().replace(',', "").parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .with_context(|| format!("{at}: \"answer\" is not an integer"))?;
        out.push(llmos_train::tasks::Problem {
            prompt: prompt.to_string(),
            answer,
        });
    }
    if out.is_empty() {
        bail!("{}: no tasks", path.display());
    }
    Ok(out)
}

pub fn cmd_pairs(a: PairsArgs) -> Result<()> {
    use crate::Loaded;
    use llmos_engine::SamplerConfig;
    use llmos_train::evals::{Format, Runner, check_answer, user_marker};
    if a.samples < 2 {
        bail!("--samples must be at least 2 to make a comparison");
    }
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let tasks = read_tasks(&a.tasks)?;
    let l = crate::load(&a.model)?;
    let ctx = crate::ctx_of(&a.model, &l.model)?;
    let tpl = template_of(&l.tok)?;
    let marker = user_marker(&tpl).map_err(anyhow::Error::msg)?;
    let runner = Runner::new(&l.model, &l.tok, ctx, a.max_tokens);
    // every sample of every task goes to the batcher at once; seeds differ per sample
    let mut jobs = Vec::new();
    for (ti, t) in tasks.iter().enumerate() {
        let ids = runner
            .prompt_ids(&Format::Chat(&tpl), &t.prompt)
            .map_err(anyhow::Error::msg)?;
        for k in 0..a.samples {
            let cfg = SamplerConfig {
                temperature: a.temp,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: a.seed.wrapping_add((ti * a.samples + k) as u64),
                ..SamplerConfig::default()
            };
            jobs.push((ids.clone(), cfg));
        }
    }
    drop(runner);
    let bar = progress_bar();
    bar.set_length(jobs.len() as u64);
    bar.set_message(format!("sampling {} x {} replies", tasks.len(), a.samples));
    let Loaded { model, tok, .. } = l;
    let tok = std::sync::Arc::new(tok);
    let replies = llmos_train::evals::sample_batch(
        std::sync::Arc::new(model),
        tok,
        ctx,
        a.max_tokens,
        a.parallel,
        jobs,
        &mut |d| bar.set_position(d as u64),
    )
    .map_err(anyhow::Error::msg)?;
    let (mut lines, mut good_total, mut n_total) = (String::new(), 0usize, 0usize);
    let mut pairs = 0;
    for (t, group) in tasks.iter().zip(replies.chunks(a.samples)) {
        let (mut good, mut bad) = (None, None);
        for r in group {
            let (wf, correct) = check_answer(&r.raw, r.stop, &marker, Some(t.answer), &r.text);
            n_total += 1;
            if wf && correct {
                good_total += 1;
                good.get_or_insert(r.text.clone());
            } else {
                bad.get_or_insert(r.text.clone());
            }
        }
        if let (Some(c), Some(r)) = (good, bad) {
            let v = serde_json::json!({"prompt": t.prompt, "chosen": c, "rejected": r});
            lines.push_str(&v.to_string());
            lines.push('\n');
            pairs += 1;
        }
    }
    bar.finish_and_clear();
    llmos_train::data::write_atomic(&a.out, lines.as_bytes())?;
    eprintln!(
        "{}: {pairs} comparisons from {} prompts x {} samples ({:.1}% of samples correct and well-formed)",
        a.out.display(),
        tasks.len(),
        a.samples,
        100.0 * good_total as f64 / n_total.max(1) as f64
    );
    Ok(())
}

/// `llmos grpo`: reinforcement learning with verifiable rewards.
#[derive(Args)]
pub struct GrpoArgs {
    /// Starting policy: alias, GGUF path, pypi:... or hf:...
    #[arg(short, long)]
    model: String,
    /// Training tasks, JSONL {"prompt", "answer"} (e.g. `llmos data gen arith-tasks`).
    #[arg(long)]
    tasks: PathBuf,
    /// Held-out tasks for greedy accuracy during training (same format).
    #[arg(long)]
    eval_tasks: Option<PathBuf>,
    /// Run directory: model.gguf, metrics.jsonl, reward.svg.
    #[arg(short, long)]
    out: PathBuf,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Answers sampled per prompt.
    #[arg(long, default_value_t = 8)]
    group: usize,
    #[arg(long, default_value_t = 2e-6)]
    lr: f32,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Weight of the KL penalty to the starting model.
    #[arg(long, default_value_t = 0.04)]
    beta: f64,
    /// Ratio clip epsilon.
    #[arg(long, default_value_t = 0.2)]
    clip: f64,
    #[arg(long, default_value_t = 1.0)]
    temp: f32,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// number (exact final integer, well-formed), regex:PATTERN (reply matches), or
    /// rm:PATH (a reward model from `llmos rm`).
    #[arg(long, default_value = "number")]
    reward: String,
    #[arg(long, default_value_t = 10)]
    eval_every: usize,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
}

/// Scores a reply with a reward model.
struct RmReward {
    base: Base,
    head: Vec<f32>,
    model: llmos_train::Model,
    ws: llmos_train::Workspace,
}

impl llmos_train::grpo::Reward for RmReward {
    fn score(&mut self, task: &llmos_train::tasks::Problem, r: &llmos_train::evals::Reply) -> f64 {
        let c = llmos_train::prefs::Comparison {
            prompt: task.prompt.clone(),
            chosen: r.text.clone(),
            rejected: r.text.clone(),
        };
        let b = &self.base;
        match llmos_train::prefs::render_pairs(&b.tpl, &b.tok, &[c], b.cfg.ctx, b.cfg.vocab) {
            Ok((pairs, _)) => {
                let rows = llmos_train::prefs::pair_rows(&[&pairs[0]], b.tok.eos.unwrap_or(0));
                llmos_train::objectives::rewards(
                    &self.model,
                    &b.params,
                    &self.head,
                    &rows,
                    &mut self.ws,
                )[0]
            }
            Err(_) => 0.0,
        }
    }
}

pub fn cmd_grpo(a: GrpoArgs) -> Result<()> {
    use llmos_train::grpo::{self, ExactNumber, GrpoConfig, GrpoLog, Pattern, Policy, Reward};
    let train = read_tasks(&a.tasks)?;
    let eval = match &a.eval_tasks {
        Some(p) => read_tasks(p)?,
        None => Vec::new(),
    };
    if a.group < 2 || a.prompts == 0 || a.steps == 0 {
        bail!("--group must be at least 2, --prompts and --steps at least 1");
    }
    if !(a.lr > 0.0 && a.lr.is_finite()) || a.beta < 0.0 || a.clip <= 0.0 {
        bail!("--lr and --clip must be positive, --beta at least 0");
    }
    llmos_tensor::init_threads(a.threads);
    crate::trainer::install_stop_handler()?;
    // the reward's spelling is checked before anything loads
    let pattern = match a.reward.as_str() {
        r if r.starts_with("regex:") => Some(
            regex::Regex::new(&r["regex:".len()..])
                .with_context(|| format!("--reward {r}: not a valid regular expression"))?,
        ),
        r if r == "number" || r.starts_with("rm:") => None,
        r => bail!("unknown --reward {r:?} (number, regex:PATTERN, rm:PATH)"),
    };
    let base = load_base(&a.model, a.ctx)?;
    base.describe();
    let marker = llmos_train::evals::user_marker(&base.tpl).map_err(anyhow::Error::msg)?;
    let mut reward: Box<dyn Reward> = match (a.reward.as_str(), pattern) {
        (_, Some(re)) => Box::new(Pattern {
            re,
            user_marker: marker,
        }),
        ("number", None) => Box::new(ExactNumber {
            user_marker: marker,
        }),
        (r, None) if r.starts_with("rm:") => {
            let rm = load_base(&r["rm:".len()..], a.ctx)?;
            let head = import::reward_head(&rm.g, &rm.cfg)?.with_context(|| {
                format!(
                    "{}: not a reward model (no {})",
                    rm.path.display(),
                    import::RM_HEAD
                )
            })?;
            Box::new(RmReward {
                model: llmos_train::Model::new(rm.cfg.clone()),
                head,
                base: rm,
                ws: llmos_train::Workspace::default(),
            })
        }
        (r, None) => bail!("unknown --reward {r:?} (number, regex:PATTERN, rm:PATH)"),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let gc = GrpoConfig {
        steps: a.steps,
        prompts: a.prompts,
        group: a.group,
        lr: a.lr,
        warmup: a.warmup,
        beta: a.beta,
        clip_eps: a.clip,
        temperature: a.temp,
        max_tokens: a.max_tokens,
        ctx: a.ctx,
        seed: a.seed,
        eval_every: a.eval_every,
    };
    eprintln!(
        "GRPO: {} training tasks, {} held out; {} steps of {} prompts x {} samples",
        train.len(),
        eval.len(),
        a.steps,
        a.prompts,
        a.group
    );
    let bar = progress_bar();
    bar.set_length(a.steps as u64);
    let mut last_eval = String::new();
    let mut on_log = |l: &GrpoLog| {
        if let Some(acc) = l.eval_accuracy {
            last_eval = format!(" | held-out {:.1}%", acc * 100.0);
            bar.println(format!(
                "step {}: held-out accuracy {:.1}%",
                l.step,
                acc * 100.0
            ));
        }
        bar.set_position(l.step as u64);
        if l.step > 0 {
            bar.set_message(format!(
                "reward {:.3} | KL {:.4}{last_eval} | sample {:.0} s, train {:.0} s",
                l.mean_reward, l.kl, l.sample_s, l.train_s
            ));
        }
    };
    let policy = Policy {
        base: &base.g,
        cfg: &base.cfg,
        tok: &base.tok,
        tpl: &base.tpl,
    };
    let (params, done) = grpo::grpo(
        &policy,
        base.params.clone(),
        &train,
        &eval,
        &gc,
        reward.as_mut(),
        &a.out,
        &crate::trainer::STOP,
        &mut on_log,
    )?;
    bar.finish();
    let path = a.out.join("model.gguf");
    import::write_like(
        &base.g,
        &base.cfg,
        &params,
        None,
        &path,
        &run_name(&a.out, "llmos-grpo"),
    )?;
    eprintln!("{}: after {done} steps", path.display());
    Ok(())
}
