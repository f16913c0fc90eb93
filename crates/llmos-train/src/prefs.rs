//! Preference training: comparisons `{"prompt", "chosen", "rejected"}` (JSONL), a reward
//! model trained on them with the Bradley-Terry loss, and DPO against the frozen starting
//! model. Both render each answer as one assistant turn with the model's chat template.

use crate::data::write_json;
use crate::model::{Model, ModelConfig, Rng, Workspace};
use crate::objectives::{Rows, dpo_loss_and_grad, rewards, rm_loss_and_grad, seq_logps};
use crate::optim::{AdamW, Decay, clip_grad, lr_at};
use crate::sft::{Conversation, Rendered, render};
use crate::train::{StepLog, TrainError};
use llmos_tokenizer::{ChatTemplate, Message, Tokenizer};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One comparison: two answers to a prompt, the better one first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Parses comparisons JSONL; errors name the file and line.
pub fn parse_comparisons(path: &Path, text: &str) -> Result<Vec<Comparison>, TrainError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c: Comparison = serde_json::from_str(line).map_err(|e| {
            TrainError::Config(format!(
                "{}:{}: not a {{\"prompt\", \"chosen\", \"rejected\"}} object: {e}",
                path.display(),
                i + 1
            ))
        })?;
        out.push(c);
    }
    if out.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no comparisons",
            path.display()
        )));
    }
    Ok(out)
}

/// A comparison rendered: the chosen and the rejected conversation.
pub struct Pair {
    pub chosen: Rendered,
    pub rejected: Rendered,
}

/// Renders comparisons, cutting each side at `ctx` tokens (the count of cut pairs is
/// returned with them).
pub fn render_pairs(
    tpl: &ChatTemplate,
    tok: &Tokenizer,
    comps: &[Comparison],
    ctx: usize,
    vocab: usize,
) -> Result<(Vec<Pair>, usize), TrainError> {
    let mut cut = 0;
    let mut out = Vec::with_capacity(comps.len());
    for c in comps {
        let side = |answer: &str| -> Result<Rendered, TrainError> {
            let conv = Conversation {
                messages: vec![
                    Message::new("user", &c.prompt),
                    Message::new("assistant", answer),
                ],
            };
            let mut r = render(tpl, tok, &conv)?;
            if let Some(&bad) = r.ids.iter().find(|&&x| x as usize >= vocab) {
                return Err(TrainError::Config(format!(
                    "token id {bad} outside the model's vocabulary of {vocab}"
                )));
            }
            if r.ids.len() > ctx {
                r.ids.truncate(ctx);
                r.learn.truncate(ctx);
            }
            Ok(r)
        };
        let (a, b) = (side(&c.chosen)?, side(&c.rejected)?);
        if a.ids.len() == ctx || b.ids.len() == ctx {
            cut += 1;
        }
        out.push(Pair {
            chosen: a,
            rejected: b,
        });
    }
    Ok((out, cut))
}

/// Rows for a batch of pairs: chosen answers first, then the rejected ones.
pub fn pair_rows(pairs: &[&Pair], pad: u32) -> Rows {
    let mut seqs: Vec<(&[u32], &[bool])> = Vec::with_capacity(2 * pairs.len());
    for p in pairs {
        seqs.push((&p.chosen.ids, &p.chosen.learn));
    }
    for p in pairs {
        seqs.push((&p.rejected.ids, &p.rejected.learn));
    }
    Rows::pack(&seqs, pad)
}

/// Settings shared by `llmos rm` and `llmos dpo`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrefConfig {
    pub steps: usize,
    pub epochs: f64,
    /// Pairs per step.
    pub batch: usize,
    pub ctx: usize,
    pub lr: f32,
    pub warmup: usize,
    pub grad_clip: f32,
    pub seed: u64,
    /// DPO's beta (strength of the pull back to the reference).
    pub beta: f64,
    pub eval_every: usize,
    pub log_every: usize,
}

impl Default for PrefConfig {
    fn default() -> Self {
        PrefConfig {
            steps: 0,
            epochs: 1.0,
            batch: 4,
            ctx: 512,
            lr: 1e-5,
            warmup: 10,
            grad_clip: 1.0,
            seed: 1337,
            beta: 0.1,
            eval_every: 50,
            log_every: 5,
        }
    }
}

/// Held-out figures of a preference run.
#[derive(Clone, Debug, Serialize)]
pub struct PrefEval {
    pub loss: f64,
    /// Pairs ranked the right way (reward model: by reward; DPO: by implicit reward).
    pub accuracy: f64,
}

/// Which objective a preference run optimises.
pub enum Objective<'a> {
    /// Reward model: the trunk plus this scalar head ([w, bias]), trained together.
    Reward { head: &'a mut Vec<f32> },
    /// DPO against the starting parameters (frozen).
    Dpo,
}

/// The reward model's pairwise accuracy and loss on `pairs`.
pub fn eval_rm(
    model: &Model,
    p: &[f32],
    head: &[f32],
    pairs: &[Pair],
    b: usize,
    pad: u32,
    ws: &mut Workspace,
) -> PrefEval {
    let (mut loss, mut right) = (0.0, 0usize);
    for chunk in pairs.chunks(b.max(1)) {
        let refs: Vec<&Pair> = chunk.iter().collect();
        let rows = pair_rows(&refs, pad);
        let r = rewards(model, p, head, &rows, ws);
        let k = refs.len();
        for i in 0..k {
            let d = r[i] - r[k + i];
            loss += (1.0 + (-d).exp()).ln();
            right += usize::from(d > 0.0);
        }
    }
    let n = pairs.len().max(1) as f64;
    PrefEval {
        loss: loss / n,
        accuracy: right as f64 / n,
    }
}

fn seq_logps_all(
    model: &Model,
    p: &[f32],
    pairs: &[Pair],
    b: usize,
    pad: u32,
    ws: &mut Workspace,
) -> Vec<Vec<f64>> {
    pairs
        .chunks(b.max(1))
        .map(|chunk| {
            let refs: Vec<&Pair> = chunk.iter().collect();
            seq_logps(model, p, &pair_rows(&refs, pad), ws)
        })
        .collect()
}

/// DPO's held-out loss and implicit-reward accuracy, given the reference's log-probs per
/// chunk of `b` pairs.
#[allow(clippy::too_many_arguments)]
fn eval_dpo(
    model: &Model,
    p: &[f32],
    pairs: &[Pair],
    refs: &[Vec<f64>],
    beta: f64,
    b: usize,
    pad: u32,
    ws: &mut Workspace,
) -> PrefEval {
    let pol = seq_logps_all(model, p, pairs, b, pad, ws);
    let (mut loss, mut right, mut n) = (0.0, 0usize, 0usize);
    for (pc, rc) in pol.iter().zip(refs) {
        let k = pc.len() / 2;
        for i in 0..k {
            let z = beta * ((pc[i] - rc[i]) - (pc[k + i] - rc[k + i]));
            loss += (1.0 + (-z).exp()).ln();
            right += usize::from(z > 0.0);
            n += 1;
        }
    }
    PrefEval {
        loss: loss / n.max(1) as f64,
        accuracy: right as f64 / n.max(1) as f64,
    }
}

/// Trains `params` (and the reward head) on `train` pairs; logs to `run`/metrics.jsonl.
/// Returns the parameters and the steps done (fewer when `stop` was raised).
#[allow(clippy::too_many_arguments)]
pub fn train_prefs(
    cfg: &ModelConfig,
    mut params: Vec<f32>,
    objective: Objective,
    train: &[Pair],
    val: &[Pair],
    pad: u32,
    pc: &PrefConfig,
    run: &Path,
    stop: &AtomicBool,
    on_log: &mut dyn FnMut(&StepLog, Option<&PrefEval>, usize),
) -> Result<(Vec<f32>, usize), TrainError> {
    if train.is_empty() {
        return Err(TrainError::Config("no training comparisons".into()));
    }
    if pc.batch == 0 || !pc.lr.is_finite() || pc.lr <= 0.0 {
        return Err(TrainError::Config(
            "--batch and --lr must be positive".into(),
        ));
    }
    let model = Model::new(cfg.clone());
    let steps = crate::train::steps_for(pc.steps, pc.epochs, train.len(), pc.batch);
    let mut ws = Workspace::default();
    // DPO's reference: the starting model, its log-probs computed once
    let (dpo_train_ref, dpo_val_ref) = match objective {
        Objective::Dpo => (
            Some(params.clone()),
            Some(seq_logps_all(&model, &params, val, pc.batch, pad, &mut ws)),
        ),
        Objective::Reward { .. } => (None, None),
    };
    let (mut head, is_rm) = match objective {
        Objective::Reward { head } => (Some(head), true),
        Objective::Dpo => (None, false),
    };
    let evaluate = |params: &[f32], head: Option<&[f32]>, ws: &mut Workspace| match head {
        Some(h) => eval_rm(&model, params, h, val, pc.batch, pad, ws),
        None => eval_dpo(
            &model,
            params,
            val,
            dpo_val_ref.as_ref().expect("dpo"),
            pc.beta,
            pc.batch,
            pad,
            ws,
        ),
    };
    let mut opt = AdamW::new(params.len(), 0.0);
    let mut hopt = AdamW::new(cfg.dim + 1, 0.0);
    let mut grads = vec![0f32; params.len()];
    let mut ghead = vec![0f32; cfg.dim + 1];
    let no_decay: Vec<std::ops::Range<usize>> = Vec::new();
    let mut rng = Rng(pc.seed ^ 0x9a1);
    let mut order = crate::model::Passes::default();
    let metrics_path = run.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).map_err(|err| TrainError::Io {
        path: metrics_path.clone(),
        err,
    })?;
    if !val.is_empty() {
        let e = evaluate(&params, head.as_deref().map(|h| h.as_slice()), &mut ws);
        let log = StepLog {
            step: 0,
            loss: f64::NAN,
            val_loss: Some(e.loss),
            val_bpb: None,
            lr: 0.0,
            grad_norm: 0.0,
            tok_s: 0.0,
            mfu: None,
            elapsed_s: 0.0,
        };
        on_log(&log, Some(&e), steps);
        let line = serde_json::json!({"step": 0, "val_loss": e.loss, "val_accuracy": e.accuracy});
        writeln!(metrics, "{line}").map_err(|err| TrainError::Io {
            path: metrics_path.clone(),
            err,
        })?;
    }
    let start = Instant::now();
    let (mut win_loss, mut win_acc, mut win_n, mut win_tok) = (0f64, 0f64, 0usize, 0usize);
    let mut win_start = Instant::now();
    for step in 0..steps {
        let lr = lr_at(step, steps, pc.warmup, pc.lr, 0.0, Decay::Linear);
        let mut batch: Vec<&Pair> = Vec::with_capacity(pc.batch);
        while batch.len() < pc.batch {
            batch.push(&train[order.next(train.len(), &mut rng)]);
        }
        let rows = pair_rows(&batch, pad);
        grads.fill(0.0);
        ghead.fill(0.0);
        let (loss, acc) = match head.as_deref_mut() {
            Some(h) => rm_loss_and_grad(&model, &params, h, &mut grads, &mut ghead, &rows, &mut ws),
            None => {
                let r = dpo_train_ref.as_ref().expect("dpo");
                let ref_logps = seq_logps(&model, r, &rows, &mut ws);
                dpo_loss_and_grad(
                    &model, &params, &mut grads, &rows, &ref_logps, pc.beta, &mut ws,
                )
            }
        };
        crate::train::check_loss(loss, step)?;
        let grad_norm = clip_grad(&mut grads, pc.grad_clip);
        opt.step(&mut params, &grads, lr, &no_decay);
        if let Some(h) = head.as_deref_mut() {
            clip_grad(&mut ghead, pc.grad_clip);
            // the fresh head learns faster than the pretrained trunk
            hopt.step(h, &ghead, lr * 10.0, &no_decay);
        }
        win_loss += loss;
        win_acc += acc;
        win_n += 1;
        win_tok += rows.b * rows.t;
        let done = step + 1;
        let stopping = stop.load(Ordering::Relaxed);
        let eval_now = !val.is_empty()
            && ((pc.eval_every > 0 && done % pc.eval_every == 0) || done == steps || stopping);
        if done % pc.log_every.max(1) == 0 || eval_now || done == steps || stopping {
            let mut log = StepLog {
                step: done,
                loss: win_loss / win_n as f64,
                val_loss: None,
                val_bpb: None,
                lr,
                grad_norm,
                tok_s: win_tok as f64 / win_start.elapsed().as_secs_f64().max(1e-9),
                mfu: None,
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            let e =
                eval_now.then(|| evaluate(&params, head.as_deref().map(|h| h.as_slice()), &mut ws));
            log.val_loss = e.as_ref().map(|e| e.loss);
            let mut line = serde_json::to_value(&log).expect("log serializes");
            line["accuracy"] = (win_acc / win_n as f64).into();
            if let Some(e) = &e {
                line["val_accuracy"] = e.accuracy.into();
            }
            writeln!(metrics, "{line}").map_err(|err| TrainError::Io {
                path: metrics_path.clone(),
                err,
            })?;
            on_log(&log, e.as_ref(), steps);
            (win_loss, win_acc, win_n, win_tok) = (0.0, 0.0, 0, 0);
            win_start = Instant::now();
        }
        if stopping {
            return Ok((params, done));
        }
    }
    let name = if is_rm {
        "rm-config.json"
    } else {
        "dpo-config.json"
    };
    write_json(&run.join(name), pc)?;
    Ok((params, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_parse_and_bad_lines_are_located() {
        let p = Path::new("p.jsonl");
        let ok = "{\"prompt\":\"2+2?\",\"chosen\":\"4\",\"rejected\":\"5\"}\n";
        assert_eq!(parse_comparisons(p, ok).unwrap()[0].chosen, "4");
        let e = parse_comparisons(p, &format!("{ok}{{\"prompt\":\"x\",\"chosen\":\"y\"}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.jsonl:2: "), "{e}");
        assert!(
            parse_comparisons(p, "")
                .unwrap_err()
                .to_string()
                .contains("no comparisons")
        );
    }
}
