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
    /// Run directory: model.gguf (the fine-tuned model), metrics.jsonl, loss.svg.
    #[arg(short, long)]
    out: PathBuf,
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
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    #[arg(long, default_value_t = 5)]
    log_every: usize,
}

/// The chat template a model's tokenizer carries, with its BOS and EOS texts.
pub fn template_of(tok: &Tokenizer) -> Result<ChatTemplate> {
    let src = tok.chat_template.as_deref().context(
        "this model has no chat template (tokenizer.chat_template); use `llmos run` for raw completion",
    )?;
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    Ok(ChatTemplate::new(src, &text(tok.bos), &text(tok.eos))?)
}

pub fn cmd_sft(a: SftArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", a.val_fraction);
    }
    if a.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let sc = SftConfig {
        steps: a.steps,
        epochs: a.epochs,
        batch: a.batch,
        ctx: a.ctx,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        seed: a.seed,
        eval_every: a.eval_every,
        log_every: a.log_every,
    };
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
            let mut rng = llmos_train::Rng(a.seed ^ 0x7a1);
            let mut val = Vec::new();
            for _ in 0..n_val {
                val.push(convs.swap_remove(rng.below(convs.len())));
            }
            val
        }
    };
    llmos_tensor::init_threads(a.threads);
    crate::trainer::install_stop_handler()?;
    let path = crate::resolve(&a.model)?;
    let g = Gguf::open(&path)?;
    let cfg = import::config_of(&g, a.ctx)?;
    let tok = Tokenizer::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
    let tpl = template_of(&tok)?;
    let params = import::params_of(&g, &cfg)?;
    let train = sft::prepare(&tpl, &tok, &convs, a.ctx, cfg.vocab)?;
    let valp = sft::prepare(&tpl, &tok, &val, a.ctx, cfg.vocab)?;
    let learn: usize = train
        .rows
        .iter()
        .map(|r| r.learn[1..].iter().filter(|&&l| l).count())
        .sum();
    let total: usize = train.rows.iter().map(|r| r.ids.len()).sum();
    eprintln!(
        "base {}: {} layers, dim {}, vocab {}: {:.1} M parameters (f32 copy)",
        path.display(),
        cfg.layers,
        cfg.dim,
        cfg.vocab,
        params.len() as f64 / 1e6
    );
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
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
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
    let out = a.out.join("model.gguf");
    let name = a.out.file_name().map_or("llmos-sft".to_string(), |n| {
        n.to_string_lossy().into_owned()
    });
    import::write_like(&g, &cfg, &params, &out, &name)?;
    eprintln!("{}: after {done} steps", out.display());
    Ok(())
}
