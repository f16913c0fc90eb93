//! Group-relative policy optimisation with verifiable rewards. Each step: rebuild the
//! sampling policy from the current parameters (matrices in Q8_0 for fast decoding), sample
//! a group of answers per prompt with the engine, reward each, normalise rewards within the
//! group, then one update of the clipped policy loss plus a KL penalty to the frozen
//! starting model.

use crate::evals::{Format, Reply, Runner};
use crate::import::gguf_like;
use crate::model::{Model, ModelConfig, Rng, Workspace};
use crate::objectives::{GrpoLoss, Rows, group_advantages, grpo_loss_and_grad};
use crate::optim::{AdamW, Decay, clip_grad, lr_at};
use crate::tasks::{Problem, last_number};
use crate::train::TrainError;
use llmos_engine::{SamplerConfig, StopReason};
use llmos_formats::Gguf;
use llmos_tensor::DType;
use llmos_tokenizer::{ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A verifiable reward of one sampled answer.
pub trait Reward {
    fn score(&mut self, task: &Problem, reply: &Reply) -> f64;
}

/// 1 when the reply is well-formed (ended with the end-of-turn token, never wrote the
/// user's turn) and its last integer is the answer, else 0.
pub struct ExactNumber {
    pub user_marker: String,
}

impl Reward for ExactNumber {
    fn score(&mut self, task: &Problem, r: &Reply) -> f64 {
        let ok = r.stop == StopReason::Eos
            && !r.raw.contains(&self.user_marker)
            && last_number(&r.text) == Some(task.answer);
        f64::from(u8::from(ok))
    }
}

/// 1 when the reply matches a pattern (and is well-formed), else 0.
pub struct Pattern {
    pub re: regex::Regex,
    pub user_marker: String,
}

impl Reward for Pattern {
    fn score(&mut self, _task: &Problem, r: &Reply) -> f64 {
        let ok = r.stop == StopReason::Eos
            && !r.raw.contains(&self.user_marker)
            && self.re.is_match(&r.text);
        f64::from(u8::from(ok))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrpoConfig {
    pub steps: usize,
    /// Prompts per step.
    pub prompts: usize,
    /// Samples per prompt (the group).
    pub group: usize,
    pub lr: f32,
    pub warmup: usize,
    pub beta: f64,
    pub clip_eps: f64,
    pub temperature: f32,
    pub max_tokens: usize,
    pub ctx: usize,
    pub seed: u64,
    /// Greedy accuracy on the held-out tasks every this many steps (0: only at the ends).
    pub eval_every: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            steps: 50,
            prompts: 4,
            group: 8,
            lr: 2e-6,
            warmup: 3,
            beta: 0.04,
            clip_eps: 0.2,
            temperature: 1.0,
            max_tokens: 64,
            ctx: 512,
            seed: 1337,
            eval_every: 10,
        }
    }
}

/// One logged step.
#[derive(Clone, Debug, Serialize)]
pub struct GrpoLog {
    pub step: usize,
    pub mean_reward: f64,
    pub kl: f64,
    pub loss: f64,
    /// Groups whose rewards all agreed (no signal).
    pub flat_groups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    pub sample_s: f64,
    pub train_s: f64,
    pub elapsed_s: f64,
}

/// Everything GRPO needs of the starting model.
pub struct Policy<'a> {
    pub base: &'a Gguf,
    pub cfg: &'a ModelConfig,
    pub tok: &'a std::sync::Arc<Tokenizer>,
    pub tpl: &'a ChatTemplate,
}

fn engine_model(p: &Policy, params: &[f32]) -> Result<llmos_model::Model, TrainError> {
    let bytes = gguf_like(p.base, p.cfg, params, None, DType::Q8_0, "policy").to_bytes();
    let g =
        Gguf::from_bytes("policy.gguf", bytes).map_err(|e| TrainError::Config(e.to_string()))?;
    llmos_model::Model::load(Arc::new(g)).map_err(|e| TrainError::Config(e.to_string()))
}

/// Greedy accuracy of `params` on `tasks` (chat format).
pub fn accuracy(
    p: &Policy,
    params: &[f32],
    tasks: &[Problem],
    max_tokens: usize,
    ctx: usize,
) -> Result<f64, TrainError> {
    let m = engine_model(p, params)?;
    let mut runner = Runner::new(&m, p.tok, ctx, max_tokens);
    let items = runner
        .problems(&Format::Chat(p.tpl), tasks, &mut |_| {})
        .map_err(TrainError::Config)?;
    Ok(items.iter().filter(|i| i.ok).count() as f64 / items.len().max(1) as f64)
}

/// Runs GRPO from `params` on `train` tasks, evaluating on `eval`; metrics to
/// `run`/metrics.jsonl and the reward curve to `run`/reward.svg.
#[allow(clippy::too_many_arguments)]
pub fn grpo(
    policy: &Policy,
    mut params: Vec<f32>,
    train: &[Problem],
    eval: &[Problem],
    gc: &GrpoConfig,
    reward: &mut dyn Reward,
    run: &Path,
    stop: &AtomicBool,
    on_log: &mut dyn FnMut(&GrpoLog),
) -> Result<(Vec<f32>, usize), TrainError> {
    if train.is_empty() || gc.group < 2 || gc.prompts == 0 {
        return Err(TrainError::Config(
            "GRPO needs tasks, --group of at least 2 and --prompts of at least 1".into(),
        ));
    }
    let model = Model::new(policy.cfg.clone());
    let reference = params.clone();
    let mut opt = AdamW::new(params.len(), 0.0);
    let mut grads = vec![0f32; params.len()];
    let mut ws = Workspace::default();
    let mut rng = Rng(gc.seed ^ 0x6790);
    let mut order = crate::model::Passes::default();
    let pad = policy.tok.eos.unwrap_or(0);
    let metrics_path = run.join("metrics.jsonl");
    let io = |err| TrainError::Io {
        path: metrics_path.clone(),
        err,
    };
    let mut metrics = std::fs::File::create(&metrics_path).map_err(io)?;
    let mut history: Vec<GrpoLog> = Vec::new();
    let start = Instant::now();
    let lossc = GrpoLoss {
        clip_eps: gc.clip_eps,
        beta: gc.beta,
    };
    let first = if eval.is_empty() {
        None
    } else {
        Some(accuracy(policy, &params, eval, gc.max_tokens, gc.ctx)?)
    };
    let log0 = GrpoLog {
        step: 0,
        mean_reward: f64::NAN,
        kl: 0.0,
        loss: 0.0,
        flat_groups: 0,
        eval_accuracy: first,
        sample_s: 0.0,
        train_s: 0.0,
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    writeln!(
        metrics,
        "{}",
        serde_json::to_string(&log0).expect("serializes")
    )
    .map_err(io)?;
    on_log(&log0);
    for step in 0..gc.steps {
        let t0 = Instant::now();
        let lr = lr_at(step, gc.steps, gc.warmup, gc.lr, gc.lr, Decay::Constant);
        let m = engine_model(policy, &params)?;
        let runner = Runner::new(&m, policy.tok, gc.ctx, gc.max_tokens);
        // every sample of the step goes to the engine's batcher at once
        let mut picked = Vec::new();
        let mut jobs = Vec::new();
        for _ in 0..gc.prompts {
            let task = &train[order.next(train.len(), &mut rng)];
            let ids = runner
                .prompt_ids(&Format::Chat(policy.tpl), &task.prompt)
                .map_err(TrainError::Config)?;
            picked.push((task, ids.clone()));
            for _ in 0..gc.group {
                let cfg = SamplerConfig {
                    temperature: gc.temperature,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    seed: gc.seed.wrapping_add(step as u64 * 7919 + jobs.len() as u64),
                    ..SamplerConfig::default()
                };
                jobs.push((ids.clone(), cfg));
            }
        }
        drop(runner);
        let replies = crate::evals::sample_batch(
            Arc::new(m),
            policy.tok.clone(),
            gc.ctx,
            gc.max_tokens,
            (gc.prompts * gc.group).min(8),
            jobs,
            &mut |_| {},
        )
        .map_err(TrainError::Config)?;
        // (prompt ids, completion ids) per sample, and rewards
        let mut seqs: Vec<(Vec<u32>, Vec<bool>)> = Vec::new();
        let mut rewards = Vec::new();
        for ((task, ids), group) in picked.iter().zip(replies.chunks(gc.group)) {
            for r in group {
                rewards.push(reward.score(task, r));
                let mut all = ids.clone();
                all.extend_from_slice(&r.ids);
                let mut learn = vec![false; ids.len()];
                learn.extend(std::iter::repeat_n(true, r.ids.len()));
                all.truncate(gc.ctx);
                learn.truncate(gc.ctx);
                seqs.push((all, learn));
            }
        }
        let sample_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let adv = group_advantages(&rewards, gc.group);
        let flat_groups = rewards
            .chunks(gc.group)
            .filter(|g| g.iter().all(|&r| r == g[0]))
            .count();
        let refs: Vec<(&[u32], &[bool])> = seqs
            .iter()
            .map(|(a, b)| (a.as_slice(), b.as_slice()))
            .collect();
        let rows = Rows::pack(&refs, pad);
        // one update per batch: the sampling policy is the current one (ratio 1)
        let mut refn = vec![0f32; rows.b * rows.t];
        model.token_nll(&reference, &rows.tokens, rows.b, rows.t, &mut ws, &mut refn);
        grads.fill(0.0);
        let (loss, kl) = grpo_loss_and_grad(
            &model, &params, &mut grads, &rows, &adv, None, &refn, lossc, &mut ws,
        );
        crate::train::check_loss(loss, step)?;
        clip_grad(&mut grads, 1.0);
        opt.step(&mut params, &grads, lr, &[]);
        let done = step + 1;
        let stopping = stop.load(Ordering::Relaxed);
        let eval_now = !eval.is_empty()
            && ((gc.eval_every > 0 && done % gc.eval_every == 0) || done == gc.steps || stopping);
        let log = GrpoLog {
            step: done,
            mean_reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
            kl,
            loss,
            flat_groups,
            eval_accuracy: if eval_now {
                Some(accuracy(policy, &params, eval, gc.max_tokens, gc.ctx)?)
            } else {
                None
            },
            sample_s,
            train_s: t1.elapsed().as_secs_f64(),
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&log).expect("serializes")
        )
        .map_err(io)?;
        on_log(&log);
        history.push(log);
        crate::data::write_atomic(&run.join("reward.svg"), reward_svg(&history).as_bytes())?;
        if stopping {
            return Ok((params, done));
        }
    }
    crate::data::write_json(&run.join("grpo-config.json"), gc)?;
    Ok((params, gc.steps))
}

/// Mean reward per step (and held-out accuracy where measured) as an SVG line chart.
pub fn reward_svg(logs: &[GrpoLog]) -> String {
    let (w, h, m) = (720.0, 420.0, 50.0);
    let max_step = logs.iter().map(|l| l.step).max().unwrap_or(1).max(1) as f64;
    let x = |s: usize| m + (w - 2.0 * m) * s as f64 / max_step;
    let y = |v: f64| h - m - (h - 2.0 * m) * v.clamp(0.0, 1.0);
    let line = |pts: Vec<(f64, f64)>, color: &str| -> String {
        let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            d.join(" ")
        )
    };
    let reward: Vec<(f64, f64)> = logs
        .iter()
        .filter(|l| l.mean_reward.is_finite())
        .map(|l| (x(l.step), y(l.mean_reward)))
        .collect();
    let acc: Vec<(f64, f64)> = logs
        .iter()
        .filter_map(|l| l.eval_accuracy.map(|a| (x(l.step), y(a))))
        .collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for i in 0..=4 {
        let v = i as f64 / 4.0;
        s.push_str(&format!(
            "<line x1=\"{m}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"8\" y=\"{:.1}\">{v:.2}</text>\n",
            w - m,
            y(v),
            y(v),
            y(v) + 4.0
        ));
    }
    s.push_str(&line(reward, "#1f77b4"));
    s.push_str(&line(acc, "#d62728"));
    s.push_str(&format!(
        "\n<text x=\"{m}\" y=\"20\">mean reward per step (blue), held-out accuracy (red); step 0..{max_step}</text>\n</svg>\n"
    ));
    s
}
