//! Supervised fine-tuning on conversations: JSONL in the OpenAI `messages` shape, rendered
//! with the model's own chat template, the loss on the assistant's tokens only (the text
//! each assistant turn adds to the rendering, its end-of-turn marker included).

use crate::data::{write_atomic, write_json};
use crate::lora::Lora;
use crate::model::{Model, ModelConfig, Rng, Weights, Workspace};
use crate::optim::{AdamW, Decay, clip_grad, lr_at};
use crate::train::{StepLog, TrainError, loss_svg};
use llmos_tokenizer::{ChatTemplate, Message, Tokenizer};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One training conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct RawConversation {
    messages: Vec<RawMessage>,
}

/// Parses JSONL conversations (`{"messages": [{"role", "content"}, ...]}` per line; blank
/// lines skipped). Roles are system, user and assistant; at least one assistant turn.
/// Errors name the file and line.
pub fn parse_conversations(path: &Path, text: &str) -> Result<Vec<Conversation>, TrainError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| TrainError::Config(format!("{}:{}: {msg}", path.display(), i + 1));
        let raw: RawConversation = serde_json::from_str(line)
            .map_err(|e| at(format!("not a {{\"messages\": [...]}} object: {e}")))?;
        if let Some(m) = raw
            .messages
            .iter()
            .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
        {
            return Err(at(format!(
                "role {:?} (expected system, user or assistant)",
                m.role
            )));
        }
        if !raw.messages.iter().any(|m| m.role == "assistant") {
            return Err(at("no assistant message: nothing to learn from".into()));
        }
        out.push(Conversation {
            messages: raw
                .messages
                .into_iter()
                .map(|m| Message::new(&m.role, &m.content))
                .collect(),
        });
    }
    if out.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no conversations",
            path.display()
        )));
    }
    Ok(out)
}

/// A rendered conversation: token ids and, per id, whether the model learns to produce it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub learn: Vec<bool>,
}

/// Renders `conv` with the template and marks the assistant's spans. Each assistant turn's
/// span is what rendering the conversation up to and including that turn adds to the
/// rendering up to it with the generation prompt; spans are tokenized on their own, as the
/// model produces them after the prompt.
pub fn render(
    tpl: &ChatTemplate,
    tok: &Tokenizer,
    conv: &Conversation,
) -> Result<Rendered, TrainError> {
    let terr = |e: llmos_tokenizer::TokenizerError| TrainError::Config(e.to_string());
    let full = tpl.render(&conv.messages, false).map_err(terr)?;
    // (start, end) byte offsets of each assistant span in `full`
    let mut spans = Vec::new();
    for (i, m) in conv.messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = tpl.render(&conv.messages[..i], true).map_err(terr)?;
        let upto = tpl.render(&conv.messages[..=i], false).map_err(terr)?;
        if !upto.starts_with(&prompt) || !full.starts_with(&upto) {
            return Err(TrainError::Config(
                "the chat template does not render conversations turn by turn (a later turn changes earlier text), so assistant tokens cannot be located".into(),
            ));
        }
        spans.push((prompt.len(), upto.len()));
    }
    let mut ids = Vec::new();
    let mut learn = Vec::new();
    let mut at = 0;
    let mut push = |text: &str, l: bool| {
        let t = tok.encode(text, false, true);
        learn.extend(std::iter::repeat_n(l, t.len()));
        ids.extend(t);
    };
    for (s, e) in spans {
        if s > at {
            push(&full[at..s], false);
        }
        push(&full[s..e], true);
        at = e;
    }
    if at < full.len() {
        push(&full[at..], false);
    }
    Ok(Rendered { ids, learn })
}

/// Settings of a fine-tuning run (flags of `llmos sft` of the same names).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftConfig {
    /// Optimizer steps; 0: as many as `epochs` passes over the training conversations take.
    pub steps: usize,
    pub epochs: f64,
    /// Conversations per step.
    pub batch: usize,
    /// Longest sequence trained on; longer conversations are cut (and counted).
    pub ctx: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: usize,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub seed: u64,
    pub eval_every: usize,
    pub log_every: usize,
    /// Batches drawn together and regrouped by length (0 or 1: off): rows of like length
    /// share a batch, so less of each step is padding. The batches then run in a shuffled
    /// order.
    #[serde(default)]
    pub group_by_length: usize,
    /// Weight of a target that ends an assistant turn (one of `end_ids`) against 1 for the
    /// turn's other tokens (the batch loss stays a weighted mean). Above 1 it teaches a
    /// model to end its turn more readily.
    #[serde(default = "one")]
    pub end_weight: f32,
    /// The tokens that end a turn (the tokenizer's end-of-generation set).
    #[serde(skip)]
    pub end_ids: Vec<u32>,
}

fn one() -> f32 {
    1.0
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            steps: 0,
            epochs: 1.0,
            batch: 8,
            ctx: 512,
            lr: 1e-4,
            min_lr: 0.0,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 1337,
            eval_every: 50,
            log_every: 5,
            group_by_length: 0,
            end_weight: 1.0,
            end_ids: Vec::new(),
        }
    }
}

/// Conversations ready to train on: cut to `ctx + 1` tokens (an assistant turn the cut
/// leaves unfinished is not learned), those with nothing left to learn dropped.
pub struct Prepared {
    pub rows: Vec<Rendered>,
    /// Conversations cut at the context length.
    pub truncated: usize,
    /// Conversations dropped because the cut left no assistant token.
    pub dropped: usize,
}

pub fn prepare(
    tpl: &ChatTemplate,
    tok: &Tokenizer,
    convs: &[Conversation],
    ctx: usize,
    vocab: usize,
) -> Result<Prepared, TrainError> {
    let mut p = Prepared {
        rows: Vec::new(),
        truncated: 0,
        dropped: 0,
    };
    for c in convs {
        let mut r = render(tpl, tok, c)?;
        if let Some(&bad) = r.ids.iter().find(|&&x| x as usize >= vocab) {
            return Err(TrainError::Config(format!(
                "token id {bad} outside the model's vocabulary of {vocab}"
            )));
        }
        if r.ids.len() > ctx + 1 {
            p.truncated += 1;
            // cut inside an assistant turn: the unfinished turn is not learned (without its
            // end-of-turn marker it would teach the model to run on)
            let inside = r.learn[ctx + 1];
            r.ids.truncate(ctx + 1);
            r.learn.truncate(ctx + 1);
            if inside {
                for l in r.learn.iter_mut().rev().take_while(|l| **l) {
                    *l = false;
                }
            }
        }
        // the first token is never a target
        if r.ids.len() < 2 || !r.learn[1..].iter().any(|&l| l) {
            p.dropped += 1;
            continue;
        }
        p.rows.push(r);
    }
    Ok(p)
}

/// Packs conversations into a b x (t + 1) batch padded at the end (t: the longest), with
/// one weight per target: `1 / (assistant tokens in the batch)` where the target is the
/// assistant's, else 0. Returns the number of assistant targets.
pub fn pack(
    rows: &[&Rendered],
    pad: u32,
    tokens: &mut Vec<u32>,
    weights: &mut Vec<f32>,
) -> (usize, usize) {
    let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(2) - 1;
    tokens.clear();
    weights.clear();
    for r in rows {
        tokens.extend_from_slice(&r.ids);
        tokens.extend(std::iter::repeat_n(pad, t + 1 - r.ids.len()));
        weights.extend(r.learn[1..].iter().map(|&l| f32::from(u8::from(l))));
        weights.extend(std::iter::repeat_n(0.0, t + 1 - r.ids.len()));
    }
    let n = weights.iter().filter(|&&w| w > 0.0).count();
    let inv = 1.0 / n.max(1) as f32;
    weights.iter_mut().for_each(|w| *w *= inv);
    (t, n)
}

/// Multiplies the weight of every target in `ends` by `w`, then rescales the weights to
/// sum to 1 again (`tokens`: rows of t + 1, `weights`: rows of t, as [`pack`] makes them).
pub fn weigh_ends(tokens: &[u32], t: usize, ends: &[u32], w: f32, weights: &mut [f32]) {
    for (i, x) in weights.iter_mut().enumerate() {
        let (row, j) = (i / t, i % t);
        if *x > 0.0 && ends.contains(&tokens[row * (t + 1) + j + 1]) {
            *x *= w;
        }
    }
    let sum: f32 = weights.iter().sum();
    if sum > 0.0 {
        weights.iter_mut().for_each(|x| *x /= sum);
    }
}

/// The next batches of row indices: one batch of `b` rows in data order, or with
/// `group > 1`, `group` batches' worth of rows sorted by length, cut into batches and
/// shuffled (returned in the order they are popped).
pub fn draw_batches(
    rows: &[Rendered],
    b: usize,
    group: usize,
    order: &mut crate::model::Passes,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let g = group.max(1);
    let mut idx: Vec<usize> = (0..b * g).map(|_| order.next(rows.len(), rng)).collect();
    if g == 1 {
        return vec![idx];
    }
    idx.sort_by_key(|&i| rows[i].ids.len());
    let mut out: Vec<Vec<usize>> = idx.chunks(b).map(<[usize]>::to_vec).collect();
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

/// What fine-tuning trains: every weight of the model, or LoRA adapters over a frozen base
/// (which may stay quantized).
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Full,
    Lora {
        base: &'a dyn Weights,
        lora: &'a Lora,
    },
}

/// Mean loss per assistant token over `rows`, in batches of `b`. `p` is the model's
/// parameters (full) or the adapters (LoRA).
pub fn evaluate(
    model: &Model,
    target: Target,
    p: &[f32],
    rows: &[Rendered],
    b: usize,
    pad: u32,
    ws: &mut Workspace,
) -> f64 {
    let (mut tokens, mut weights) = (Vec::new(), Vec::new());
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in rows.chunks(b.max(1)) {
        let refs: Vec<&Rendered> = chunk.iter().collect();
        let (t, n) = pack(&refs, pad, &mut tokens, &mut weights);
        let w = Some(&weights[..]);
        let loss = match target {
            Target::Full => model.loss_weighted(p, &tokens, w, refs.len(), t, ws),
            Target::Lora { base, lora } => {
                model.loss_lora(base, Some((lora, p)), &tokens, w, refs.len(), t, ws)
            }
        };
        sum += loss * n as f64;
        count += n;
    }
    sum / count.max(1) as f64
}

/// Fine-tunes `params` (shape `cfg`; with a LoRA target, the adapters) on `train`,
/// logging to `run`/metrics.jsonl and evaluating on `val`. Returns the final parameters
/// (also when `stop` ends it early).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    cfg: &ModelConfig,
    target: Target,
    mut params: Vec<f32>,
    train: &[Rendered],
    val: &[Rendered],
    pad: u32,
    sc: &SftConfig,
    run: &Path,
    stop: &AtomicBool,
    on_log: &mut dyn FnMut(&StepLog, usize),
) -> Result<(Vec<f32>, usize), TrainError> {
    if train.is_empty() {
        return Err(TrainError::Config("no training conversations".into()));
    }
    if sc.batch == 0 || !sc.lr.is_finite() || sc.lr <= 0.0 {
        return Err(TrainError::Config(
            "--batch and --lr must be positive".into(),
        ));
    }
    let model = Model::new(cfg.clone());
    let steps = crate::train::steps_for(sc.steps, sc.epochs, train.len(), sc.batch);
    let decay = match target {
        Target::Full => model.layout.decay_ranges(),
        Target::Lora { .. } => std::iter::once(0..params.len()).collect(),
    };
    let mut opt = AdamW::new(params.len(), sc.weight_decay);
    let mut grads = vec![0f32; params.len()];
    let mut ws = Workspace::default();
    let mut rng = Rng(sc.seed ^ 0x5f7);
    let mut order = crate::model::Passes::default();
    let mut pending: Vec<Vec<usize>> = Vec::new();
    let (mut tokens, mut weights) = (Vec::new(), Vec::new());
    let metrics_path = run.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).map_err(|err| TrainError::Io {
        path: metrics_path.clone(),
        err,
    })?;
    let mut history = Vec::new();
    let (mut win_loss, mut win_n, mut win_tok) = (0f64, 0usize, 0usize);
    let mut win_start = Instant::now();
    let start = Instant::now();
    for step in 0..steps {
        let lr = lr_at(step, steps, sc.warmup, sc.lr, sc.min_lr, Decay::Linear);
        if pending.is_empty() {
            pending = draw_batches(train, sc.batch, sc.group_by_length, &mut order, &mut rng);
        }
        let batch: Vec<&Rendered> = pending
            .pop()
            .expect("drawn")
            .iter()
            .map(|&i| &train[i])
            .collect();
        let (t, n) = pack(&batch, pad, &mut tokens, &mut weights);
        if sc.end_weight != 1.0 {
            weigh_ends(&tokens, t, &sc.end_ids, sc.end_weight, &mut weights);
        }
        grads.fill(0.0);
        let (w, b) = (Some(&weights[..]), batch.len());
        let loss = match target {
            Target::Full => {
                model.loss_and_grad_weighted(&params, &mut grads, &tokens, w, b, t, 1.0, &mut ws)
            }
            Target::Lora { base, lora } => model.lora_loss_and_grad(
                base, lora, &params, &mut grads, &tokens, w, b, t, 1.0, &mut ws,
            ),
        };
        crate::train::check_loss(loss, step)?;
        let grad_norm = clip_grad(&mut grads, sc.grad_clip);
        opt.step(&mut params, &grads, lr, &decay);
        win_loss += loss * n as f64;
        win_n += n;
        win_tok += batch.len() * t;
        let done = step + 1;
        let stopping = stop.load(Ordering::Relaxed);
        let eval_now = !val.is_empty()
            && ((sc.eval_every > 0 && done % sc.eval_every == 0) || done == steps || stopping);
        if done % sc.log_every.max(1) == 0 || eval_now || done == 1 || done == steps || stopping {
            let tok_s = win_tok as f64 / win_start.elapsed().as_secs_f64().max(1e-9);
            let mut log = StepLog {
                step: done,
                loss: win_loss / win_n.max(1) as f64,
                val_loss: None,
                val_bpb: None,
                lr,
                grad_norm,
                tok_s,
                mfu: None,
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            if eval_now {
                log.val_loss = Some(evaluate(
                    &model, target, &params, val, sc.batch, pad, &mut ws,
                ));
            }
            let line = serde_json::to_string(&log).expect("log serializes");
            writeln!(metrics, "{line}").map_err(|err| TrainError::Io {
                path: metrics_path.clone(),
                err,
            })?;
            history.push(log.clone());
            on_log(&log, steps);
            if eval_now {
                write_atomic(&run.join("loss.svg"), loss_svg(&history).as_bytes())?;
            }
            (win_loss, win_n, win_tok) = (0.0, 0, 0);
            win_start = Instant::now();
        }
        if stopping {
            return Ok((params, done));
        }
    }
    write_json(&run.join("sft-config.json"), sc)?;
    Ok((params, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_parse_and_bad_lines_are_located() {
        let p = Path::new("c.jsonl");
        let ok = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]}\n\n";
        let c = parse_conversations(p, ok).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].messages[1], Message::new("assistant", "hello"));
        for (bad, want) in [
            (
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                "c.jsonl:3: no assistant",
            ),
            (
                "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}",
                "c.jsonl:3: role \"bot\"",
            ),
            ("[1,2]", "c.jsonl:3: not a"),
            ("{\"messages\":[{\"role\":\"user\"}]}", "c.jsonl:3: not a"),
        ] {
            let e = parse_conversations(p, &format!("{ok}{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
        }
        assert!(
            parse_conversations(p, "\n")
                .unwrap_err()
                .to_string()
                .contains("no conversations")
        );
    }

    /// A byte-level tokenizer (no merges) with the reserved chat tokens llmos writes.
    fn byte_tokenizer() -> Tokenizer {
        use llmos_formats::{Gguf, GgufWriter, Value};
        let mut tokens: Vec<String> = llmos_tokenizer::byte_to_char()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let specials = [
            "<|bos|>",
            "<|user_start|>",
            "<|user_end|>",
            "<|assistant_start|>",
            "<|assistant_end|>",
        ];
        let mut types = vec![1i32; tokens.len()];
        for s in specials {
            tokens.push(s.into());
            types.push(3);
        }
        let s = |x: &str| Value::String(x.into());
        let mut w = GgufWriter::new();
        w.set("general.architecture", s("llama"));
        w.set("tokenizer.ggml.model", s("gpt2"));
        w.set("tokenizer.ggml.pre", s("llama-bpe"));
        w.set(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        );
        w.set(
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        );
        w.set("tokenizer.ggml.merges", Value::Array(vec![]));
        w.set("tokenizer.ggml.bos_token_id", Value::U32(256));
        w.set("tokenizer.ggml.eos_token_id", Value::U32(260));
        let g = Gguf::from_bytes("t.gguf", w.to_bytes()).unwrap();
        Tokenizer::from_gguf(&g).unwrap()
    }

    /// Exactly the assistants' words and their end-of-turn markers are learned, for every
    /// assistant turn; the prompt, the user's turns and the system text are not.
    #[test]
    fn render_marks_exactly_the_assistant_turns() {
        let tok = byte_tokenizer();
        let tpl = ChatTemplate::new(crate::export::CHAT_TEMPLATE, "<|bos|>", "<|assistant_end|>")
            .unwrap();
        let conv = Conversation {
            messages: vec![
                Message::new("user", "Hi there"),
                Message::new("assistant", "Hello!"),
                Message::new("user", "2+2?"),
                Message::new("assistant", "4"),
            ],
        };
        let r = render(&tpl, &tok, &conv).unwrap();
        assert_eq!(r.ids.len(), r.learn.len());
        let text: Vec<u8> = r
            .ids
            .iter()
            .flat_map(|&i| tok.token_bytes(i, true))
            .collect();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            tpl.render(&conv.messages, false).unwrap()
        );
        let learned: Vec<u32> = r
            .ids
            .iter()
            .zip(&r.learn)
            .filter(|(_, l)| **l)
            .map(|(i, _)| *i)
            .collect();
        let mut want = tok.encode("Hello!<|assistant_end|>", false, true);
        want.extend(tok.encode("4<|assistant_end|>", false, true));
        assert_eq!(learned, want);
        // the learned spans sit right after each <|assistant_start|>
        let start = tok.token_id("<|assistant_start|>").unwrap();
        for (i, &id) in r.ids.iter().enumerate().skip(1) {
            if r.learn[i] && !r.learn[i - 1] {
                assert_eq!(r.ids[i - 1], start);
            }
            let _ = id;
        }
        // cut at the context: a conversation whose assistant text is all cut is dropped
        let p = prepare(&tpl, &tok, std::slice::from_ref(&conv), 8, 300).unwrap();
        assert_eq!((p.rows.len(), p.truncated, p.dropped), (0, 1, 1));
        let p = prepare(&tpl, &tok, std::slice::from_ref(&conv), 1000, 300).unwrap();
        assert_eq!((p.rows.len(), p.truncated, p.dropped), (1, 0, 0));
        // cut just before the second reply's end-of-turn marker: only the first reply is
        // learned, none of the unfinished second one
        let last = r.learn.iter().rposition(|&l| l).unwrap();
        let p = prepare(&tpl, &tok, &[conv], last - 1, 300).unwrap();
        assert_eq!(p.truncated, 1);
        let first_span = tok.encode("Hello!<|assistant_end|>", false, true).len();
        assert_eq!(p.rows[0].learn.iter().filter(|&&l| l).count(), first_span);
    }

    #[test]
    fn packing_pads_and_normalises_weights() {
        let a = Rendered {
            ids: vec![1, 2, 3, 4],
            learn: vec![false, false, true, true],
        };
        let b = Rendered {
            ids: vec![5, 6],
            learn: vec![false, true],
        };
        let (mut t, mut w) = (Vec::new(), Vec::new());
        let (len, n) = pack(&[&a, &b], 0, &mut t, &mut w);
        assert_eq!((len, n), (3, 3));
        assert_eq!(t, vec![1, 2, 3, 4, 5, 6, 0, 0]);
        let third = 1.0 / 3.0;
        assert_eq!(w, vec![0.0, third, third, third, 0.0, 0.0]);
    }

    #[test]
    fn length_groups_cover_a_pass_and_cut_padding() {
        let rows: Vec<Rendered> = (0..48)
            .map(|i| Rendered {
                ids: vec![1; 2 + (i * 37) % 200],
                learn: vec![true; 2 + (i * 37) % 200],
            })
            .collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            let longest = |b: &Vec<usize>| b.iter().map(|&i| rows[i].ids.len()).max().unwrap();
            batches.iter().map(|b| b.len() * longest(b)).sum()
        };
        let draw = |group: usize| {
            let (mut order, mut rng) = (crate::model::Passes::default(), Rng(9));
            let mut all = Vec::new();
            while all.len() < 6 {
                all.extend(draw_batches(&rows, 8, group, &mut order, &mut rng));
            }
            all
        };
        // off: the old order, one batch at a time
        let plain = draw(0);
        let (mut order, mut rng) = (crate::model::Passes::default(), Rng(9));
        let first: Vec<usize> = (0..8).map(|_| order.next(rows.len(), &mut rng)).collect();
        assert_eq!(plain[0], first);
        // grouped: every row of the pass exactly once, batches sorted within the group,
        // and far less padding
        let grouped = draw(6);
        assert_eq!(grouped.len(), 6);
        let mut seen: Vec<usize> = grouped.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..48).collect::<Vec<_>>());
        let mut spans: Vec<(usize, usize)> = grouped
            .iter()
            .map(|b| {
                let l = b.iter().map(|&i| rows[i].ids.len());
                (l.clone().min().unwrap(), l.max().unwrap())
            })
            .collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
        assert!(
            padded(&grouped) * 3 < padded(&plain) * 2,
            "{} vs {}",
            padded(&grouped),
            padded(&plain)
        );
    }

    #[test]
    fn end_of_turn_targets_can_weigh_more() {
        let a = Rendered {
            ids: vec![1, 2, 3, 9, 4],
            learn: vec![false, true, true, true, false],
        };
        let (mut t, mut w) = (Vec::new(), Vec::new());
        let (len, n) = pack(&[&a], 0, &mut t, &mut w);
        assert_eq!((len, n), (4, 3));
        weigh_ends(&t, len, &[9], 4.0, &mut w);
        // targets 2, 3, 9, 4: the end marker 9 weighs 4 against 1, the rest stays 0
        assert_eq!(w, vec![1.0 / 6.0, 1.0 / 6.0, 4.0 / 6.0, 0.0]);
    }
}
