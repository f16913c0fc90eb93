//! The eval harness: tasks whose answers are checked by program (exact final number,
//! well-formed chat turns), run with the inference engine, greedy, one shared session so a
//! repeated few-shot prefix is computed once.
//!
//! Prompt formats (documented in the README; the same for every model):
//! - chat (models with a chat template, the default): one user message holding the
//!   question; the reply ends at the model's end-of-turn token.
//! - few-shot (`shots` > 0, for base models): `Question: {q}\nAnswer: {a}\n\n` per example
//!   from the training side, then `Question: {q}\nAnswer:`; the reply ends at a blank line
//!   or the next `Question:`.
//!   In both, the answer is the last integer of the reply.

use crate::tasks::{Problem, last_number};
use llmos_engine::{GenParams, Sampler, SamplerConfig, Session, StopReason};
use llmos_model::Model;
use llmos_tokenizer::{ChatTemplate, Message, Tokenizer};
use serde::Serialize;

/// How prompts are put to the model.
pub enum Format<'a> {
    Chat(&'a ChatTemplate),
    FewShot(Vec<(String, String)>),
}

/// One item's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub prompt: String,
    pub reply: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub got: Option<i64>,
}

/// One generated reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The text, cut at the first stop string.
    pub text: String,
    /// Every generated token's text, special tokens spelled out.
    pub raw: String,
    pub stop: StopReason,
    /// The generated ids (the end-of-turn token included when produced).
    pub ids: Vec<u32>,
}

/// The model, its tokenizer and the context the tasks run in.
pub struct Runner<'a> {
    pub session: Session<'a>,
    pub max_tokens: usize,
}

impl<'a> Runner<'a> {
    pub fn new(model: &'a Model, tok: &'a Tokenizer, ctx: usize, max_tokens: usize) -> Runner<'a> {
        Runner {
            session: Session::new(model, tok, ctx),
            max_tokens,
        }
    }

    /// Greedy reply to `prompt_ids`, cut at any of `stops`. Returns the reply text, the
    /// reply with special tokens spelled out, and how it stopped.
    fn reply(
        &mut self,
        prompt_ids: &[u32],
        stops: &[&str],
    ) -> Result<Reply, llmos_engine::EngineError> {
        let mut sampler = Sampler::new(SamplerConfig::greedy());
        self.sample(prompt_ids, stops, &mut sampler)
    }

    /// A reply drawn with `sampler`, as `reply`.
    pub fn sample(
        &mut self,
        prompt_ids: &[u32],
        stops: &[&str],
        sampler: &mut Sampler,
    ) -> Result<Reply, llmos_engine::EngineError> {
        let params = GenParams {
            max_tokens: self.max_tokens,
            ignore_eos: false,
        };
        let mut text = String::new();
        let g = self
            .session
            .generate(prompt_ids, &params, sampler, |piece| {
                text.push_str(piece);
                !stops.iter().any(|s| text.contains(s))
            })?;
        let mut text = g.text.clone();
        if let Some(at) = stops.iter().filter_map(|s| text.find(s)).min() {
            text.truncate(at);
        }
        let tok = self.session.tokenizer;
        let raw: Vec<u8> = g
            .ids
            .iter()
            .flat_map(|&i| tok.token_bytes(i, true))
            .collect();
        Ok(Reply {
            text,
            raw: String::from_utf8_lossy(&raw).into_owned(),
            stop: g.stop,
            ids: g.ids,
        })
    }

    pub fn prompt_ids(&self, format: &Format, question: &str) -> Result<Vec<u32>, String> {
        let tok = self.session.tokenizer;
        Ok(match format {
            Format::Chat(t) => t
                .encode(tok, &[Message::new("user", question)])
                .map_err(|e| e.to_string())?,
            Format::FewShot(shots) => {
                let mut text = String::new();
                for (q, a) in shots {
                    text.push_str(&format!("Question: {q}\nAnswer: {a}\n\n"));
                }
                text.push_str(&format!("Question: {question}\nAnswer:"));
                tok.encode(&text, true, false)
            }
        })
    }

    /// Exact final-number match on each problem.
    pub fn problems(
        &mut self,
        format: &Format,
        problems: &[Problem],
        on_item: &mut dyn FnMut(&Item),
    ) -> Result<Vec<Item>, String> {
        let stops: &[&str] = match format {
            Format::Chat(_) => &[],
            Format::FewShot(_) => &["\n\n", "Question:"],
        };
        let mut out = Vec::new();
        for p in problems {
            let ids = self.prompt_ids(format, &p.prompt)?;
            let reply = self.reply(&ids, stops).map_err(|e| e.to_string())?.text;
            let got = last_number(&reply);
            let item = Item {
                prompt: p.prompt.clone(),
                ok: got == Some(p.answer),
                reply,
                answer: Some(p.answer),
                got,
            };
            on_item(&item);
            out.push(item);
        }
        Ok(out)
    }

    /// [`Runner::problems`] with `parallel` problems decoded together through the engine's
    /// continuous batcher (greedy: each reply is the one [`Runner::problems`] gives);
    /// `on_item` hears each item once all are done, in order.
    #[allow(clippy::too_many_arguments)]
    pub fn problems_batched(
        &self,
        model: std::sync::Arc<Model>,
        tok: std::sync::Arc<Tokenizer>,
        parallel: usize,
        format: &Format,
        problems: &[Problem],
        on_done: &mut dyn FnMut(usize),
        on_item: &mut dyn FnMut(&Item),
    ) -> Result<Vec<Item>, String> {
        let stops: Vec<String> = match format {
            Format::Chat(_) => vec![],
            Format::FewShot(_) => vec!["\n\n".into(), "Question:".into()],
        };
        let jobs = problems
            .iter()
            .map(|p| Ok((self.prompt_ids(format, &p.prompt)?, SamplerConfig::greedy())))
            .collect::<Result<Vec<_>, String>>()?;
        let replies = sample_batch_stops(
            model,
            tok,
            self.session.ctx(),
            self.max_tokens,
            parallel,
            jobs,
            &stops,
            on_done,
        )?;
        let mut out = Vec::with_capacity(problems.len());
        for (p, r) in problems.iter().zip(replies) {
            let got = last_number(&r.text);
            let item = Item {
                prompt: p.prompt.clone(),
                ok: got == Some(p.answer),
                reply: r.text,
                answer: Some(p.answer),
                got,
            };
            on_item(&item);
            out.push(item);
        }
        Ok(out)
    }

    /// Chat format: the reply ends with the end-of-turn token within the token limit and
    /// never writes the user's turn (the template's user-turn marker).
    pub fn chatformat(
        &mut self,
        template: &ChatTemplate,
        prompts: &[String],
        on_item: &mut dyn FnMut(&Item),
    ) -> Result<Vec<Item>, String> {
        let marker = user_marker(template)?;
        let mut out = Vec::new();
        for q in prompts {
            let ids = self.prompt_ids(&Format::Chat(template), q)?;
            let r = self.reply(&ids, &[]).map_err(|e| e.to_string())?;
            let item = Item {
                prompt: q.clone(),
                ok: r.stop == StopReason::Eos && !r.raw.contains(&marker),
                reply: r.text,
                answer: None,
                got: None,
            };
            on_item(&item);
            out.push(item);
        }
        Ok(out)
    }
}

/// The verifiable checker of generated answers: well-formed (ended with the end-of-turn
/// token, never wrote the user's turn) and, for a problem, the right final number.
pub fn check_answer(
    raw: &str,
    stop: StopReason,
    user_marker: &str,
    answer: Option<i64>,
    reply: &str,
) -> (bool, bool) {
    let well_formed = stop == StopReason::Eos && !raw.contains(user_marker);
    let correct = answer.is_none_or(|a| last_number(reply) == Some(a));
    (well_formed, correct)
}

/// The text a template puts before a user's words in a later turn (for ChatML,
/// `<|im_start|>user`): what an assistant writing the user's turn would produce.
pub fn user_marker(t: &ChatTemplate) -> Result<String, String> {
    let (a, u) = ("\u{1}ASSISTANT\u{1}", "\u{1}USER\u{1}");
    let text = t
        .render(
            &[
                Message::new("user", "hello"),
                Message::new("assistant", a),
                Message::new("user", u),
            ],
            false,
        )
        .map_err(|e| e.to_string())?;
    let (s, e) = match (text.find(a), text.find(u)) {
        (Some(s), Some(e)) if s < e => (s + a.len(), e),
        _ => return Err("the chat template does not show both turns' text".into()),
    };
    // the assistant's end-of-turn text, then the user's header: keep the part after the
    // end marker (everything from the last special-looking start)
    let between = &text[s..e];
    let m = between
        .rfind("<|")
        .or_else(|| between.rfind('<'))
        .map_or(between, |i| &between[i..]);
    let m = m.trim();
    if m.is_empty() {
        return Err("the chat template has no user-turn marker".into());
    }
    Ok(m.to_string())
}

/// Draws a reply for each (prompt ids, sampler settings) job through the engine's continuous
/// batcher, `parallel` sequences per step (a sample costs a fraction of what it costs alone);
/// replies come back in job order, each exactly what [`Runner::sample`] would give with the
/// same settings. `on_done` hears how many replies are complete so far.
pub fn sample_batch(
    model: std::sync::Arc<Model>,
    tok: std::sync::Arc<Tokenizer>,
    ctx: usize,
    max_tokens: usize,
    parallel: usize,
    jobs: Vec<(Vec<u32>, SamplerConfig)>,
    on_done: &mut dyn FnMut(usize),
) -> Result<Vec<Reply>, String> {
    sample_batch_stops(model, tok, ctx, max_tokens, parallel, jobs, &[], on_done)
}

/// [`sample_batch`] with every reply ending at the first of `stops` (not included in its
/// text), as [`Runner::sample`] cuts them.
#[allow(clippy::too_many_arguments)]
pub fn sample_batch_stops(
    model: std::sync::Arc<Model>,
    tok: std::sync::Arc<Tokenizer>,
    ctx: usize,
    max_tokens: usize,
    parallel: usize,
    jobs: Vec<(Vec<u32>, SamplerConfig)>,
    stops: &[String],
    on_done: &mut dyn FnMut(usize),
) -> Result<Vec<Reply>, String> {
    use llmos_engine::{Batcher, Event, Finish, Request};
    let n = jobs.len();
    let batcher = Batcher::start(model, tok.clone(), parallel, ctx, n.max(1));
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, (prompt, cfg)) in jobs.into_iter().enumerate() {
        let tx = tx.clone();
        let max = max_tokens.min(ctx.saturating_sub(prompt.len()));
        let mut req = Request::new(prompt, max.max(1), cfg);
        req.stop = stops.to_vec();
        batcher
            .submit(req, Box::new(move |e| tx.send((i, e)).is_ok()))
            .map_err(|e| format!("job {i}: {e}"))?;
    }
    drop(tx);
    let mut out: Vec<Reply> = (0..n)
        .map(|_| Reply {
            text: String::new(),
            raw: String::new(),
            stop: StopReason::Length,
            ids: Vec::new(),
        })
        .collect();
    let mut done = 0;
    for (i, e) in rx {
        let r = &mut out[i];
        match e {
            Event::Token { id, text, .. } => {
                r.ids.push(id);
                r.text.push_str(&text);
                r.raw
                    .push_str(&String::from_utf8_lossy(&tok.token_bytes(id, true)));
            }
            Event::Done { finish, .. } => {
                r.stop = match finish {
                    Finish::Stop => StopReason::Eos,
                    Finish::Length => StopReason::Length,
                };
                done += 1;
                on_done(done);
            }
            Event::Error(e) => return Err(format!("job {i}: {e}")),
        }
    }
    if done < n {
        return Err(format!("only {done} of {n} samples finished"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_markers_of_common_templates() {
        let chatml = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        let t = ChatTemplate::new(chatml, "", "").unwrap();
        assert_eq!(user_marker(&t).unwrap(), "<|im_start|>user");
        let t = ChatTemplate::new(crate::export::CHAT_TEMPLATE, "<|bos|>", "").unwrap();
        assert_eq!(user_marker(&t).unwrap(), "<|user_start|>");
        let gemma = "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}";
        let t = ChatTemplate::new(gemma, "", "").unwrap();
        assert_eq!(user_marker(&t).unwrap(), "<start_of_turn>user");
    }
}
