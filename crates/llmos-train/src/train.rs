//! The pretraining loop: sample batches, forward + backward, clip, AdamW, log, evaluate,
//! checkpoint. Everything that decides the loss sequence (parameters, optimizer moments,
//! data order) is in the checkpoint, so a resumed run continues bit for bit.

use crate::data::{
    DataError, Meta, eval_windows, read_shard, sample_batch, write_atomic, write_json,
};
use crate::model::{Model, ModelConfig, Rng, Workspace, init_params};
use crate::optim::{AdamW, Decay, clip_factor, lr_at};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Every setting of a run; TOML keys and command-line flags share these names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub layers: usize,
    pub heads: usize,
    /// Defaults to `heads` (no grouping).
    pub kv_heads: Option<usize>,
    pub dim: usize,
    /// SwiGLU width; defaults to 8/3 x dim rounded up to a multiple of 32.
    pub ffn: Option<usize>,
    pub ctx: usize,
    pub tied: bool,
    pub rope_theta: f32,
    pub batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accum: usize,
    pub steps: usize,
    pub lr: f32,
    /// Defaults to lr / 10.
    pub min_lr: Option<f32>,
    pub warmup: usize,
    pub decay: Decay,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub seed: u64,
    /// Worker threads (0: all cores).
    pub threads: usize,
    pub eval_every: usize,
    /// Validation windows evaluated (in batches of `batch`); at most this many batches.
    pub eval_batches: usize,
    pub save_every: usize,
    pub log_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            layers: 6,
            heads: 6,
            kv_heads: None,
            dim: 384,
            ffn: None,
            ctx: 256,
            tied: true,
            rope_theta: 10000.0,
            batch: 8,
            accum: 1,
            steps: 2000,
            lr: 1e-3,
            min_lr: None,
            warmup: 100,
            decay: Decay::Cosine,
            weight_decay: 0.1,
            grad_clip: 1.0,
            seed: 1337,
            threads: 0,
            eval_every: 200,
            eval_batches: 20,
            save_every: 500,
            log_every: 10,
        }
    }
}

impl TrainConfig {
    pub fn model(&self, vocab: usize) -> ModelConfig {
        ModelConfig {
            vocab,
            dim: self.dim,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads.unwrap_or(self.heads),
            ffn: self
                .ffn
                .unwrap_or_else(|| (self.dim * 8 / 3).next_multiple_of(32)),
            ctx: self.ctx,
            tied: self.tied,
            rope_theta: self.rope_theta,
            norm_eps: 1e-5,
            gemma: None,
        }
    }

    pub fn validate(&self, vocab: usize) -> Result<(), String> {
        self.model(vocab).validate()?;
        if self.batch == 0 || self.accum == 0 || self.steps == 0 {
            return Err("batch, accum and steps must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("learning rate {} must be positive", self.lr));
        }
        Ok(())
    }
}

/// One logged step, as written to metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_bpb: Option<f64>,
    pub lr: f32,
    pub grad_norm: f32,
    pub tok_s: f64,
    /// Model FLOPs utilisation; only pretraining measures the GEMM peak it needs (fine-tuning
    /// and preference runs leave it out rather than write 0).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mfu: Option<f64>,
    pub elapsed_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Config(String),
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |err| TrainError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// Everything a run needs to continue: written atomically to RUN_DIR/checkpoint.bin.
pub struct Checkpoint {
    pub step: usize,
    pub config: TrainConfig,
    pub model: ModelConfig,
    pub rng: Rng,
    pub params: Vec<f32>,
    pub opt: AdamW,
    pub elapsed_s: f64,
}

#[derive(Serialize, Deserialize)]
struct CkptHeader {
    step: usize,
    config: TrainConfig,
    model: ModelConfig,
    rng: Rng,
    adam_t: u64,
    n_params: usize,
    elapsed_s: f64,
}

const CKPT_MAGIC: &[u8; 8] = b"LLMOSCKP";

impl Checkpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let h = CkptHeader {
            step: self.step,
            config: self.config.clone(),
            model: self.model.clone(),
            rng: self.rng.clone(),
            adam_t: self.opt.t,
            n_params: self.params.len(),
            elapsed_s: self.elapsed_s,
        };
        let json = serde_json::to_vec(&h).expect("header serializes");
        let mut out = Vec::with_capacity(16 + json.len() + self.params.len() * 12);
        out.extend_from_slice(CKPT_MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for v in [&self.params, &self.opt.m, &self.opt.v] {
            for x in v.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    pub fn from_bytes(path: &Path, b: &[u8]) -> Result<Checkpoint, TrainError> {
        let bad = |msg: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        if b.len() < 16 || &b[..8] != CKPT_MAGIC {
            return Err(bad(
                "not an llmos checkpoint (magic LLMOSCKP missing)".into()
            ));
        }
        let hl = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) as usize;
        let body = b
            .get(16..16usize.saturating_add(hl))
            .ok_or_else(|| bad(format!("header of {hl} bytes runs past the end")))?;
        let h: CkptHeader =
            serde_json::from_slice(body).map_err(|e| bad(format!("header: {e}")))?;
        let n = h.n_params;
        if n != crate::model::Layout::new(&h.model).total {
            return Err(bad(format!("{n} parameters do not fit the model config")));
        }
        let rest = &b[16 + hl..];
        if Some(rest.len()) != n.checked_mul(12) {
            return Err(bad(format!(
                "{} bytes of tensors, expected {} for {n} parameters",
                rest.len(),
                n.saturating_mul(12)
            )));
        }
        let floats = |i: usize| -> Vec<f32> {
            rest[i * n * 4..(i + 1) * n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let mut opt = AdamW::new(0, h.config.weight_decay);
        opt.m = floats(1);
        opt.v = floats(2);
        opt.t = h.adam_t;
        Ok(Checkpoint {
            step: h.step,
            config: h.config,
            model: h.model,
            rng: h.rng,
            params: floats(0),
            opt,
            elapsed_s: h.elapsed_s,
        })
    }

    pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
        let b = std::fs::read(path).map_err(io_err(path))?;
        Checkpoint::from_bytes(path, &b)
    }
}

/// A loss that is not finite ends a run with advice, before it spoils the parameters.
pub fn check_loss(loss: f64, step: usize) -> Result<(), TrainError> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "loss became {loss} at step {}; lower --lr",
            step + 1
        )))
    }
}

/// Optimizer steps of a fine-tuning run: `steps` when given (> 0), else as many as `epochs`
/// passes over `items` in batches of `batch` take (at least one).
pub fn steps_for(steps: usize, epochs: f64, items: usize, batch: usize) -> usize {
    if steps > 0 {
        steps
    } else {
        ((items as f64 * epochs) / batch.max(1) as f64)
            .ceil()
            .max(1.0) as usize
    }
}

/// How a run ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped by the caller's flag (Ctrl-C) after saving a checkpoint at this step.
    Stopped(usize),
}

/// Paths inside a run directory.
pub fn checkpoint_path(run: &Path) -> PathBuf {
    run.join("checkpoint.bin")
}

/// Trains on the prepared data directory `data` into `run`. With `resume`, continues from
/// run/checkpoint.bin (the config must be the same but for the step count). `on_start`
/// gets the GEMM peak (GFLOP/s) that MFU is measured against; `on_log` sees every logged
/// step; `stop` ends the run with a checkpoint at the next step boundary.
pub fn train(
    data: &Path,
    run: &Path,
    cfg: &TrainConfig,
    resume: bool,
    stop: &AtomicBool,
    on_start: &mut dyn FnMut(f64),
    on_log: &mut dyn FnMut(&StepLog),
) -> Result<Outcome, TrainError> {
    let meta = Meta::load(data)?;
    cfg.validate(meta.vocab).map_err(TrainError::Config)?;
    let train_tok = read_shard(&data.join("train.bin"))?.tokens;
    let val_tok = read_shard(&data.join("val.bin"))?.tokens;
    if train_tok.len() <= cfg.ctx + 1 {
        return Err(TrainError::Config(format!(
            "{} training tokens cannot fill one window of ctx {} + 1",
            train_tok.len(),
            cfg.ctx
        )));
    }
    std::fs::create_dir_all(run).map_err(io_err(run))?;
    let mcfg = cfg.model(meta.vocab);
    let model = Model::new(mcfg.clone());
    let ckpt = checkpoint_path(run);
    let (mut params, mut opt, mut rng, start, mut elapsed) = if resume {
        let c = Checkpoint::load(&ckpt)?;
        let mut same = c.config.clone();
        same.steps = cfg.steps;
        same.threads = cfg.threads;
        same.save_every = cfg.save_every;
        if same != *cfg || c.model != mcfg {
            return Err(TrainError::Config(format!(
                "{}: the checkpoint was made with another configuration; resume with the same flags (only --steps, --threads and --save-every may change)",
                ckpt.display()
            )));
        }
        (c.params, c.opt, c.rng, c.step, c.elapsed_s)
    } else {
        let p = init_params(&mcfg, cfg.seed);
        let n = p.len();
        (
            p,
            AdamW::new(n, cfg.weight_decay),
            Rng(cfg.seed ^ 0xda7a),
            0,
            0.0,
        )
    };
    // the run directory describes itself: config, data meta (tokenizer) for export
    let peak = llmos_tensor::gemm::peak_gflops() * 1e9;
    on_start(peak / 1e9);
    let cfg_json = serde_json::json!({"train": cfg, "model": mcfg, "data": data.display().to_string(),
        "matmul_params": mcfg.matmul_params(), "gemm_peak_gflops": peak / 1e9});
    write_json(&run.join("config.json"), &cfg_json)?;
    write_json(&run.join("data-meta.json"), &meta)?;
    if let crate::data::TokenizerSpec::Hf { file } = &meta.tokenizer {
        let b = std::fs::read(data.join(file)).map_err(io_err(&data.join(file)))?;
        write_atomic(&run.join(file), &b)?;
    }
    let metrics_path = run.join("metrics.jsonl");
    let mut history = keep_metrics(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_err(&metrics_path))?;

    let decay = model.layout.decay_ranges();
    let flops_per_token = 6.0 * mcfg.matmul_params() as f64;
    let min_lr = cfg.min_lr.unwrap_or(cfg.lr / 10.0);
    let mut ws = Workspace::default();
    let mut grads = vec![0f32; params.len()];
    let mut batch = Vec::new();
    let (mut win_loss, mut win_steps, mut win_tokens) = (0f64, 0usize, 0usize);
    let mut win_start = Instant::now();
    let bytes_per_token = meta.val_bytes as f64 / meta.val_tokens.max(1) as f64;
    let save = |step: usize,
                params: &[f32],
                opt: &AdamW,
                rng: &Rng,
                elapsed: f64|
     -> Result<(), TrainError> {
        let c = Checkpoint {
            step,
            config: cfg.clone(),
            model: mcfg.clone(),
            rng: rng.clone(),
            params: params.to_vec(),
            opt: opt.clone(),
            elapsed_s: elapsed,
        };
        Ok(write_atomic(&ckpt, &c.to_bytes())?)
    };
    for step in start..cfg.steps {
        let t0 = Instant::now();
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr, min_lr, cfg.decay);
        llmos_tensor::pool::for_each_chunk_mut(&mut grads, 1 << 16, |_, g| g.fill(0.0));
        let mut loss = 0f64;
        for _ in 0..cfg.accum {
            sample_batch(&train_tok, cfg.batch, cfg.ctx, &mut rng, &mut batch);
            loss += model.loss_and_grad(
                &params,
                &mut grads,
                &batch,
                cfg.batch,
                cfg.ctx,
                1.0 / cfg.accum as f32,
                &mut ws,
            );
        }
        loss /= cfg.accum as f64;
        check_loss(loss, step)?;
        let (grad_norm, k) = clip_factor(&grads, cfg.grad_clip);
        opt.step_scaled(&mut params, &grads, k, lr, &decay);
        elapsed += t0.elapsed().as_secs_f64();
        win_loss += loss;
        win_steps += 1;
        win_tokens += cfg.batch * cfg.ctx * cfg.accum;
        let done = step + 1;
        let eval_now = cfg.eval_every > 0 && (done % cfg.eval_every == 0 || done == cfg.steps);
        let log_now =
            done % cfg.log_every.max(1) == 0 || eval_now || done == cfg.steps || done == 1;
        if log_now {
            let secs = win_start.elapsed().as_secs_f64().max(1e-9);
            let tok_s = win_tokens as f64 / secs;
            let mut log = StepLog {
                step: done,
                loss: win_loss / win_steps as f64,
                val_loss: None,
                val_bpb: None,
                lr,
                grad_norm,
                tok_s,
                mfu: Some(tok_s * flops_per_token / peak),
                elapsed_s: elapsed,
            };
            if eval_now {
                let te = Instant::now();
                let v = evaluate(
                    &model,
                    &params,
                    &val_tok,
                    cfg.ctx,
                    cfg.batch,
                    cfg.eval_batches,
                    &mut ws,
                );
                log.val_loss = Some(v);
                log.val_bpb = Some(v / bytes_per_token / std::f64::consts::LN_2);
                elapsed += te.elapsed().as_secs_f64();
            }
            let line = serde_json::to_string(&log).expect("log serializes");
            writeln!(metrics, "{line}").map_err(io_err(&metrics_path))?;
            history.push(log.clone());
            on_log(&log);
            if eval_now {
                write_atomic(&run.join("loss.svg"), loss_svg(&history).as_bytes())?;
            }
            (win_loss, win_steps, win_tokens) = (0.0, 0, 0);
            win_start = Instant::now();
        }
        let stopping = stop.load(Ordering::Relaxed);
        if done == cfg.steps || stopping || (cfg.save_every > 0 && done % cfg.save_every == 0) {
            save(done, &params, &opt, &rng, elapsed)?;
        }
        if stopping && done < cfg.steps {
            return Ok(Outcome::Stopped(done));
        }
    }
    if start >= cfg.steps {
        save(start, &params, &opt, &rng, elapsed)?;
    }
    Ok(Outcome::Finished)
}

/// Mean loss over consecutive validation windows (at most `batches` batches of `b`).
pub fn evaluate(
    model: &Model,
    p: &[f32],
    tokens: &[u32],
    t: usize,
    b: usize,
    batches: usize,
    ws: &mut Workspace,
) -> f64 {
    let wins = eval_windows(tokens, t, batches * b);
    if wins.is_empty() {
        return f64::NAN;
    }
    let mut total = 0f64;
    for group in wins.chunks(b) {
        let toks: Vec<u32> = group.concat();
        total += model.loss(p, &toks, group.len(), t, ws) * group.len() as f64;
    }
    total / wins.len() as f64
}

/// Keeps the metrics lines of steps up to `upto` (a resumed run rewrites what followed its
/// checkpoint) and returns them.
fn keep_metrics(path: &Path, upto: usize) -> Result<Vec<StepLog>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let keep: Vec<StepLog> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<StepLog>(l).ok())
        .filter(|l| l.step <= upto)
        .collect();
    let mut out = String::new();
    for l in &keep {
        out.push_str(&serde_json::to_string(l).expect("log serializes"));
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())?;
    Ok(keep)
}

/// The loss curve as a small standalone SVG: training loss (line) and validation loss
/// (dots) against steps.
pub fn loss_svg(logs: &[StepLog]) -> String {
    let (w, h, m) = (720.0, 420.0, 50.0);
    let max_step = logs.iter().map(|l| l.step).max().unwrap_or(1).max(1) as f64;
    let vals: Vec<f64> = logs
        .iter()
        .flat_map(|l| std::iter::once(l.loss).chain(l.val_loss))
        .filter(|v| v.is_finite())
        .collect();
    let lo = vals
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(f64::MAX);
    let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let x = |s: usize| m + (w - 2.0 * m) * s as f64 / max_step;
    let y = |v: f64| h - m - (h - 2.0 * m) * (v - lo) / (hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m,
        h - m
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        s += &format!("<text x=\"4\" y=\"{:.1}\">{v:.2}</text>\n", y(v) + 4.0);
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\">step {}</text>\n",
        w - m - 60.0,
        h - 15.0,
        max_step as usize
    );
    s += "<text x=\"60\" y=\"20\">loss (nats/token): train line, validation dots</text>\n";
    let pts: Vec<String> = logs
        .iter()
        .filter(|l| l.loss.is_finite())
        .map(|l| format!("{:.1},{:.1}", x(l.step), y(l.loss)))
        .collect();
    s += &format!(
        "<polyline fill=\"none\" stroke=\"steelblue\" stroke-width=\"1.5\" points=\"{}\"/>\n",
        pts.join(" ")
    );
    for l in logs {
        if let Some(v) = l.val_loss.filter(|v| v.is_finite()) {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"darkorange\"/>\n",
                x(l.step),
                y(v)
            );
        }
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Codec, TokenizerSpec, char_vocab, prepare};

    fn tiny_data(dir: &Path) {
        let text: String = (0..300)
            .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog.\n\n\n"))
            .collect();
        let texts = vec![("t.txt".to_string(), text)];
        let chars = char_vocab(texts.iter().map(|(_, t)| t.as_str()));
        let codec = Codec::Char(chars.clone());
        prepare(&texts, TokenizerSpec::Char { chars }, &codec, 0.05, 1, dir).unwrap();
    }

    fn tiny_cfg(steps: usize) -> TrainConfig {
        TrainConfig {
            layers: 2,
            heads: 2,
            kv_heads: Some(1),
            dim: 32,
            ffn: Some(64),
            ctx: 32,
            batch: 4,
            accum: 2,
            steps,
            lr: 3e-3,
            warmup: 5,
            eval_every: 10,
            eval_batches: 2,
            save_every: 0,
            log_every: 1,
            ..TrainConfig::default()
        }
    }

    fn losses(run: &Path) -> Vec<(usize, u64, Option<u64>)> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<StepLog>(l).unwrap())
            .map(|l| (l.step, l.loss.to_bits(), l.val_loss.map(f64::to_bits)))
            .collect()
    }

    /// The loss falls on a tiny corpus, and a run stopped half way and resumed gives
    /// exactly the losses of the uninterrupted run.
    #[test]
    fn training_learns_and_resume_is_bit_exact() {
        crate::tests::init_pool();
        let root = std::env::temp_dir().join(format!("llmos-train-{}", std::process::id()));
        let data = root.join("data");
        tiny_data(&data);
        let no = AtomicBool::new(false);
        let quiet = |run: &Path, resume: bool| {
            train(
                &data,
                run,
                &tiny_cfg(40),
                resume,
                &no,
                &mut |_| {},
                &mut |_| {},
            )
        };
        let (a, b) = (root.join("a"), root.join("b"));
        quiet(&a, false).unwrap();
        let full = losses(&a);
        assert_eq!(full.len(), 40);
        let first = f64::from_bits(full[0].1);
        let last = f64::from_bits(full[39].1);
        assert!(last < first * 0.6, "loss {first} -> {last}");
        // stop after step 17 (the flag is seen at the end of the step), then resume
        let stop = AtomicBool::new(false);
        let mut n = 0;
        let out = train(
            &data,
            &b,
            &tiny_cfg(40),
            false,
            &stop,
            &mut |_| {},
            &mut |_| {
                n += 1;
                if n == 17 {
                    stop.store(true, Ordering::Relaxed);
                }
            },
        )
        .unwrap();
        assert_eq!(out, Outcome::Stopped(17));
        assert_eq!(losses(&b).len(), 17);
        let out = quiet(&b, true).unwrap();
        assert_eq!(out, Outcome::Finished);
        assert_eq!(losses(&b), full);
        assert!(
            std::fs::read_to_string(b.join("loss.svg"))
                .unwrap()
                .contains("<polyline")
        );
        // a different config refuses to resume
        let mut other = tiny_cfg(40);
        other.lr = 1e-3;
        let e = train(&data, &b, &other, true, &no, &mut |_| {}, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("another configuration"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn damaged_checkpoints_are_refused_with_a_reason() {
        let cfg = tiny_cfg(1);
        let m = cfg.model(20);
        let n = crate::model::Layout::new(&m).total;
        let c = Checkpoint {
            step: 3,
            config: cfg,
            model: m,
            rng: Rng(5),
            params: vec![0.5; n],
            opt: AdamW::new(n, 0.1),
            elapsed_s: 1.0,
        };
        let b = c.to_bytes();
        let p = Path::new("ck.bin");
        let back = Checkpoint::from_bytes(p, &b).unwrap();
        assert_eq!((back.step, back.params.len(), back.rng.0), (3, n, 5));
        for cut in [0, 10, 17, 100, b.len() - 1] {
            let e = Checkpoint::from_bytes(p, &b[..cut])
                .err()
                .expect("refused")
                .to_string();
            assert!(e.starts_with("ck.bin: ") && !e.contains('\n'), "{e}");
        }
    }
}
