//! Continuous batching: many generations share one model. A scheduler thread keeps up to
//! `parallel` slots, each with its own KV cache; requests join free slots and leave between
//! steps, and every step runs one forward pass for all busy slots together, so the weights
//! are read once per step whatever the number of users. A finished slot keeps the ids in its
//! cache, and a new request goes to the free slot that shares the longest prefix with it: a
//! repeated system prompt is not computed again.

use crate::EngineError;
use crate::sampler::{Sampler, SamplerConfig};
use llmos_model::{KvCache, Model};
use llmos_tokenizer::{StreamDecoder, Tokenizer};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};

/// Prompt tokens one step may run for all slots together (longer prompts go in chunks, so
/// a long prompt delays the others' next token by one chunk, not by the whole prompt).
const PREFILL_CHUNK: usize = 256;

/// Masks the logits to what a grammar allows (structured output).
pub trait Constraint: Send {
    /// Sets every logit the grammar forbids next to minus infinity.
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// Advances the grammar past `id`.
    fn accept(&mut self, id: u32) -> Result<(), String>;
    /// The grammar is complete: nothing more may follow.
    fn done(&self) -> bool;
}

/// One generation to run.
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// OpenAI's penalties: subtracted from a token's logit once if it was generated before
    /// (presence) and once per time it was (frequency).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Texts that end the generation; none of them appears in the output.
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    pub constraint: Option<Box<dyn Constraint>>,
    pub ignore_eos: bool,
}

impl Request {
    pub fn new(prompt: Vec<u32>, max_tokens: usize, sampler: SamplerConfig) -> Request {
        Request {
            prompt,
            max_tokens,
            sampler,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            ignore_eos: false,
        }
    }
}

/// A token's log-probability under the model (before sampling settings) and the most likely
/// alternatives at its position.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End-of-turn token, a stop text, or a complete grammar.
    Stop,
    /// `max_tokens` or the context window reached.
    Length,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// One generated token and the text it completes (empty while it is held back: part of a
    /// character, or maybe the start of a stop text).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        /// Prompt tokens whose keys and values were already cached.
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Receives a request's events; returns false when nobody listens any more (the client went
/// away), which frees the slot at once.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Counters for /metrics, updated by the scheduler.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// Sum over steps of the sequences in the step (mean batch = this / steps).
    pub batched_seqs: AtomicU64,
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("server busy: {0} requests already waiting")]
    QueueFull(usize),
    #[error("prompt of {prompt} tokens leaves no room to generate in a context of {ctx} tokens")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("the generation thread has stopped")]
    Stopped,
}

struct Job {
    req: Request,
    sink: Sink,
}

/// The handle requests go through; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: Arc<Mutex<Sender<Job>>>,
    pub stats: Arc<Stats>,
    ctx: usize,
    max_queue: usize,
}

impl Batcher {
    /// Starts the scheduler thread with `parallel` slots of `ctx` positions each; at most
    /// `max_queue` requests wait for a slot.
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        parallel: usize,
        ctx: usize,
        max_queue: usize,
    ) -> Batcher {
        let (tx, rx) = channel();
        let stats = Arc::new(Stats::default());
        let ctx = ctx.min(model.config.ctx_train).max(2);
        let sched = Scheduler {
            slots: (0..parallel.max(1))
                .map(|_| Slot {
                    cache: model.new_cache(ctx),
                    cached: Vec::new(),
                    run: None,
                })
                .collect(),
            model,
            tokenizer,
            rx,
            waiting: VecDeque::new(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("llmos-batch".into())
            .spawn(move || sched.run())
            .expect("spawn the generation thread");
        Batcher {
            tx: Arc::new(Mutex::new(tx)),
            stats,
            ctx,
            max_queue,
        }
    }

    /// Positions per slot.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Queues a request; its events go to `sink` from the scheduler thread.
    pub fn submit(&self, req: Request, sink: Sink) -> Result<(), SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() >= self.ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                ctx: self.ctx,
            });
        }
        let queued = self.stats.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queue {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(queued));
        }
        let tx = self.tx.lock().map_err(|_| SubmitError::Stopped)?;
        tx.send(Job { req, sink }).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })
    }
}

/// A request in a slot.
struct Run {
    req: Request,
    sink: Sink,
    sampler: Sampler,
    /// Prompt tokens not yet run.
    pending: Vec<u32>,
    /// The sampled token to run next step.
    next: Option<u32>,
    history: Vec<u32>,
    generated: usize,
    counts: HashMap<u32, u32>,
    dec: StreamDecoder,
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
    cached_tokens: usize,
}

struct Slot {
    cache: KvCache,
    /// The ids whose keys and values are in `cache`.
    cached: Vec<u32>,
    run: Option<Run>,
}

struct Scheduler {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    slots: Vec<Slot>,
    rx: Receiver<Job>,
    waiting: VecDeque<Job>,
    stats: Arc<Stats>,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            let busy = self.slots.iter().any(|s| s.run.is_some());
            if !busy && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if self.waiting.is_empty() && self.slots.iter().all(|s| s.run.is_none()) {
                            return;
                        }
                        break;
                    }
                }
            }
            self.admit();
            if let Err(e) = self.step() {
                // a model error fails every request in the step; the slots start clean
                for slot in &mut self.slots {
                    if let Some(mut run) = slot.run.take() {
                        (run.sink)(Event::Error(e.to_string()));
                        self.stats.active.fetch_sub(1, Ordering::SeqCst);
                    }
                    self.model.truncate_cache(&mut slot.cache, 0);
                    slot.cached.clear();
                }
            }
        }
    }

    /// Moves waiting requests into free slots (first come, first served), each to the free
    /// slot whose cache shares the longest prefix with its prompt; requests that share
    /// nothing take the slots nobody else can reuse.
    fn admit(&mut self) {
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].run.is_none())
            .collect();
        let n = free.len().min(self.waiting.len());
        if n == 0 {
            return;
        }
        let jobs: Vec<Job> = self.waiting.drain(..n).collect();
        let shared = |slot: &Slot, prompt: &[u32]| {
            slot.cached
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        // best pairs first, greedily
        let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            for &i in &free {
                pairs.push((shared(&self.slots[i], &job.req.prompt), j, i));
            }
        }
        pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut slot_of = vec![usize::MAX; n];
        let mut taken = vec![false; self.slots.len()];
        for (_, j, i) in pairs {
            if slot_of[j] == usize::MAX && !taken[i] {
                slot_of[j] = i;
                taken[i] = true;
            }
        }
        for (job, i) in jobs.into_iter().zip(slot_of) {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            let slot = &mut self.slots[i];
            let prompt = &job.req.prompt;
            // the last prompt token always runs, to give the logits of the first new token
            let common = shared(slot, prompt).min(prompt.len() - 1);
            self.model.truncate_cache(&mut slot.cache, common);
            slot.cached.truncate(common);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats
                .prompt_tokens
                .fetch_add(prompt.len() as u64, Ordering::Relaxed);
            self.stats
                .cached_tokens
                .fetch_add(common as u64, Ordering::Relaxed);
            self.stats.active.fetch_add(1, Ordering::SeqCst);
            let Job { req, sink } = job;
            slot.run = Some(Run {
                sampler: Sampler::new(req.sampler.clone()),
                pending: req.prompt[common..].to_vec(),
                history: req.prompt.clone(),
                next: None,
                generated: 0,
                counts: HashMap::new(),
                dec: StreamDecoder::default(),
                text: String::new(),
                sent: 0,
                cached_tokens: common,
                req,
                sink,
            });
        }
    }

    /// One forward pass for every busy slot, then a token for each that finished its prompt.
    fn step(&mut self) -> Result<(), EngineError> {
        let mut budget = PREFILL_CHUNK;
        let mut which = Vec::new();
        let mut inputs: Vec<Vec<u32>> = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(run) = &mut slot.run else { continue };
            if let Some(t) = run.next.take() {
                which.push(i);
                inputs.push(vec![t]);
            } else if !run.pending.is_empty() && budget > 0 {
                let n = run.pending.len().min(budget);
                budget -= n;
                which.push(i);
                inputs.push(run.pending.drain(..n).collect());
            }
        }
        if which.is_empty() {
            return Ok(());
        }
        let mut logits = {
            let mut caches: Vec<&mut KvCache> = busy_slots(&mut self.slots, &which)
                .into_iter()
                .map(|slot| &mut slot.cache)
                .collect();
            let toks: Vec<&[u32]> = inputs.iter().map(|v| &v[..]).collect();
            self.model.forward_batch(&mut caches, &toks)?
        };
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .batched_seqs
            .fetch_add(which.len() as u64, Ordering::Relaxed);
        let v = self.model.config.n_vocab;
        // each sequence that has its prompt done picks its next token: sampling (an
        // exponential per vocabulary id), penalties and grammar masks are the sequence's
        // own, so they run in parallel, in place on the step's logits rows; the reports
        // (text, callbacks) follow in slot order
        let chosen: Vec<_> = {
            let mut picks: Vec<Pick> = Vec::new();
            let mut rows = logits.chunks_exact_mut(v);
            for (k, slot) in busy_slots(&mut self.slots, &which).into_iter().enumerate() {
                let row = rows.next().expect("one logits row per sequence");
                slot.cached.extend_from_slice(&inputs[k]);
                let run = slot.run.as_mut().expect("busy slot");
                if run.pending.is_empty() {
                    picks.push(Pick {
                        run,
                        row,
                        out: None,
                    });
                }
            }
            llmos_tensor::pool::for_each_chunk_mut(&mut picks, 1, |_, p| {
                let p = &mut p[0];
                p.out = Some(choose(p.run, p.row));
            });
            picks
                .into_iter()
                .map(|p| p.out.expect("every pick ran"))
                .collect()
        };
        let mut chosen = chosen.into_iter();
        for &i in &which {
            let slot = &mut self.slots[i];
            let run = slot.run.as_mut().expect("busy slot");
            if !run.pending.is_empty() {
                continue; // more prompt to run first
            }
            let (len, ctx) = (slot.cache.len(), slot.cache.ctx());
            let pick = chosen.next().expect("a pick per finished prompt");
            let outcome = pick.and_then(|(id, lp)| report(run, &self.tokenizer, id, lp, len, ctx));
            if let Ok(Outcome::Continue) = outcome {
                self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut run = slot.run.take().expect("busy slot");
            self.stats.active.fetch_sub(1, Ordering::SeqCst);
            match outcome {
                Ok(Outcome::Continue) => unreachable!("handled above"),
                Ok(Outcome::Finished(finish)) => {
                    self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    (run.sink)(Event::Done {
                        finish,
                        prompt_tokens: run.req.prompt.len(),
                        cached_tokens: run.cached_tokens,
                        completion_tokens: run.generated,
                    });
                }
                Ok(Outcome::Gone) => {
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    (run.sink)(Event::Error(e));
                }
            }
        }
        Ok(())
    }
}

enum Outcome {
    /// `run.next` holds the token to run next step.
    Continue,
    Finished(Finish),
    /// The listener went away.
    Gone,
}

/// The slots at the indices `which` (ascending), in that order.
fn busy_slots<'a>(slots: &'a mut [Slot], which: &[usize]) -> Vec<&'a mut Slot> {
    slots
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| which.binary_search(i).is_ok())
        .map(|(_, slot)| slot)
        .collect()
}

/// One sequence's share of a step's token choice (see [`Scheduler::step`]).
struct Pick<'a> {
    run: &'a mut Run,
    row: &'a mut [f32],
    out: Option<Result<(u32, Option<TokenLogprob>), String>>,
}

/// Picks one token from `logits` (the run's penalties, grammar and sampler) and records it
/// in the run's history; returns it with its log-probabilities when asked for.
fn choose(run: &mut Run, logits: &mut [f32]) -> Result<(u32, Option<TokenLogprob>), String> {
    let req = &run.req;
    // log-probabilities are the model's own, before penalties and masks
    let raw = req.logprobs.map(|k| {
        let (lse, top) = log_softmax_top(logits, k);
        (lse, top, logits.to_vec())
    });
    if req.presence_penalty != 0.0 || req.frequency_penalty != 0.0 {
        for (&t, &n) in &run.counts {
            logits[t as usize] -= req.presence_penalty + req.frequency_penalty * n as f32;
        }
    }
    if let Some(c) = run.req.constraint.as_mut() {
        c.mask(logits)?;
    }
    let id = run.sampler.sample(logits, &run.history);
    if let Some(c) = run.req.constraint.as_mut() {
        c.accept(id)?;
    }
    run.history.push(id);
    run.generated += 1;
    *run.counts.entry(id).or_default() += 1;
    let logprob = raw.map(|(lse, top, raw)| TokenLogprob {
        id,
        logprob: raw[id as usize] - lse,
        top,
    });
    Ok((id, logprob))
}

/// Reports a chosen token: its text to the listener, then the checks that end the run.
fn report(
    run: &mut Run,
    tok: &Tokenizer,
    id: u32,
    logprob: Option<TokenLogprob>,
    cache_len: usize,
    ctx: usize,
) -> Result<Outcome, String> {
    let eos = tok.is_eog(id) && !run.req.ignore_eos;
    let mut finish = None;
    if eos {
        finish = Some(Finish::Stop);
    } else {
        let piece = run.dec.push(&tok.token_bytes(id, false));
        run.text.push_str(&piece);
    }
    // stop texts: cut at the first one; otherwise hold back a tail that may begin one
    let mut safe = run.text.len();
    let mut cut = false;
    if !run.req.stop.is_empty() {
        let from = run
            .sent
            .saturating_sub(run.req.stop.iter().map(|s| s.len()).max().unwrap_or(0));
        let from = floor_char(&run.text, from);
        if let Some(at) = run
            .req
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| run.text[from..].find(s.as_str()).map(|p| from + p))
            .min()
        {
            run.text.truncate(at);
            safe = at;
            cut = true;
            finish = Some(Finish::Stop);
        } else {
            safe = run.text.len() - held_back(&run.text, &run.req.stop);
        }
    }
    if finish.is_none() {
        if run.constraint_done() {
            finish = Some(Finish::Stop);
        } else if run.generated >= run.req.max_tokens || cache_len + 1 >= ctx {
            finish = Some(Finish::Length);
        }
    }
    // ended without a stop text: whatever was held back (a partial character, a possible
    // start of a stop text) is output now; after a stop text, nothing past it is
    if finish.is_some() && !cut {
        let tail = run.dec.finish();
        run.text.push_str(&tail);
        safe = run.text.len();
    }
    let safe = floor_char(&run.text, safe.max(run.sent));
    let text = run.text[run.sent..safe].to_string();
    run.sent = safe;
    if !(run.sink)(Event::Token { id, text, logprob }) {
        return Ok(Outcome::Gone);
    }
    match finish {
        Some(f) => Ok(Outcome::Finished(f)),
        None => {
            run.next = Some(id);
            Ok(Outcome::Continue)
        }
    }
}

impl Run {
    fn constraint_done(&self) -> bool {
        self.req.constraint.as_ref().is_some_and(|c| c.done())
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Bytes at the end of `text` that could be the beginning of one of `stops`.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for s in stops {
        for n in (1..s.len().min(text.len() + 1)).rev() {
            if n > keep && text.as_bytes().ends_with(&s.as_bytes()[..n]) {
                keep = n;
                break;
            }
        }
    }
    keep
}

/// log-sum-exp of `logits` and the `k` largest (id, log-probability), best first.
fn log_softmax_top(logits: &[f32], k: usize) -> (f32, Vec<(u32, f32)>) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = logits.iter().map(|&l| ((l - m) as f64).exp()).sum();
    let lse = m + s.ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_by(cmp);
    let top = idx
        .into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect();
    (lse, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_keeps_only_a_possible_stop_start() {
        let stops = vec!["</end>".to_string(), "\n\n".to_string()];
        assert_eq!(held_back("hello </e", &stops), 3);
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("<", &stops), 1);
        assert_eq!(held_back("", &stops), 0);
    }

    #[test]
    fn log_softmax_top_is_normalised_and_sorted() {
        let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
        let (lse, top) = log_softmax_top(&logits, 4);
        let total: f32 = top.iter().map(|&(_, l)| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0, 3]);
        assert!((lse - (1f32.exp() + 3f32.exp() + 2f32.exp()).ln()).abs() < 1e-5);
        assert_eq!(floor_char("añb", 2), 1);
    }
}
