//! A generation session: one model, one KV cache, and the ids the cache holds, so a new
//! prompt that extends the previous one (the next chat turn) only runs its new tokens.

use crate::EngineError;
use crate::sampler::Sampler;
use llmos_model::{KvCache, Model};
use llmos_tokenizer::{StreamDecoder, Tokenizer};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenParams {
    pub max_tokens: usize,
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    Context,
    /// The caller's callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids (the end token included when the model produced one).
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Prompt tokens actually run (those not already in the cache).
    pub prompt_evaluated: usize,
    pub prompt_s: f64,
    pub gen_s: f64,
}

impl Generation {
    pub fn prompt_tok_s(&self) -> f64 {
        rate(self.prompt_evaluated, self.prompt_s)
    }

    pub fn gen_tok_s(&self) -> f64 {
        rate(self.ids.len(), self.gen_s)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

pub struct Session<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    cache: KvCache,
    /// The ids whose keys and values are in `cache`.
    cached: Vec<u32>,
}

impl<'a> Session<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a Tokenizer, ctx: usize) -> Session<'a> {
        Session {
            model,
            tokenizer,
            cache: model.new_cache(ctx),
            cached: Vec::new(),
        }
    }

    pub fn ctx(&self) -> usize {
        self.cache.ctx()
    }

    /// Runs `prompt` (reusing the cached prefix it shares with the last call) and returns
    /// the logits after its last token.
    fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize), EngineError> {
        let mut common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // at least the last prompt token must run to produce logits
        if common == prompt.len() {
            common -= 1;
        }
        self.model.truncate_cache(&mut self.cache, common);
        self.cached.truncate(common);
        let logits = self
            .model
            .forward(&mut self.cache, &prompt[common..], false)?;
        self.cached.extend_from_slice(&prompt[common..]);
        Ok((logits, prompt.len() - common))
    }

    /// Generates after `prompt`. `on_text` receives each complete piece of text as it is
    /// produced and returns false to stop.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenParams,
        sampler: &mut Sampler,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        let ctx = self.cache.ctx();
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() >= ctx {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx,
                train: self.model.config.ctx_train,
            });
        }
        let t0 = Instant::now();
        let (mut logits, evaluated) = self.prefill(prompt)?;
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut history = prompt.to_vec();
        let mut ids = Vec::new();
        let mut text = String::new();
        let mut dec = StreamDecoder::default();
        let mut stop = StopReason::Length;
        while ids.len() < params.max_tokens {
            let id = sampler.sample(&mut logits, &history);
            ids.push(id);
            history.push(id);
            if self.tokenizer.is_eog(id) && !params.ignore_eos {
                stop = StopReason::Eos;
                break;
            }
            let piece = dec.push(&self.tokenizer.token_bytes(id, false));
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                stop = StopReason::Cancelled;
                break;
            }
            if ids.len() == params.max_tokens {
                break;
            }
            if self.cache.len() >= ctx {
                stop = StopReason::Context;
                break;
            }
            logits = self.model.forward(&mut self.cache, &[id], false)?;
            self.cached.push(id);
        }
        let tail = dec.finish();
        if !tail.is_empty() {
            on_text(&tail);
            text.push_str(&tail);
        }
        Ok(Generation {
            ids,
            text,
            stop,
            prompt_evaluated: evaluated,
            prompt_s,
            gen_s: t1.elapsed().as_secs_f64(),
        })
    }
}
