//! `/v1/chat/completions` and `/v1/completions`: a request becomes prompts for the batcher,
//! whose events become one JSON answer or a stream of server-sent events.

use crate::api::{self, ApiError, Settings};
use crate::tools::{self, Choice, Tool};
use crate::{App, check_model, now_s};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use llmos_engine::{Constraint, Event, Finish, Request, SamplerConfig, SubmitError, TokenLogprob};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

enum Grammar {
    Schema(Value),
    Lark(String),
}

/// A request made ready for the batcher.
struct Job {
    kind: Kind,
    prompts: Vec<Vec<u32>>,
    s: Settings,
    logprobs: Option<usize>,
    grammar: Option<Grammar>,
    /// Tools the reply may call (their calls are parsed out of the text).
    tools: Vec<Tool>,
    stream: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh pseudo-random value (time and a counter through SplitMix64).
fn fresh() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    llmos_engine::Rng::new(t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", fresh())
}

pub async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match prepare(&app, &body, Kind::Chat) {
        Ok(job) => run(app, job).await,
        Err(e) => e.into_response(),
    }
}

pub async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match prepare(&app, &body, Kind::Completion) {
        Ok(job) => run(app, job).await,
        Err(e) => e.into_response(),
    }
}

fn prepare(app: &App, body: &[u8], kind: Kind) -> Result<Job, ApiError> {
    let req = api::parse(body)?;
    check_model(app, req.model.as_deref())?;
    let s = req.settings()?;
    let mut grammar = match &req.response_format {
        None => None,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(Grammar::Schema(json!({"type": "object"}))),
            Some("json_schema") => {
                let schema = rf.pointer("/json_schema/schema").cloned().ok_or_else(|| {
                    ApiError::param("response_format", "json_schema needs json_schema.schema")
                })?;
                if !schema.is_object() {
                    return Err(ApiError::param(
                        "response_format",
                        "json_schema.schema must be a JSON object",
                    ));
                }
                Some(Grammar::Schema(schema))
            }
            _ => {
                return Err(ApiError::param(
                    "response_format",
                    "response_format.type must be text, json_object or json_schema",
                ));
            }
        },
    };
    let mut tools_list = Vec::new();
    let prompts = match kind {
        Kind::Chat => {
            let msgs = req
                .messages
                .as_ref()
                .ok_or_else(|| ApiError::param("messages", "'messages' is required"))?;
            if msgs.is_empty() {
                return Err(ApiError::param("messages", "'messages' must not be empty"));
            }
            if req.prompt.is_some() {
                return Err(ApiError::param(
                    "prompt",
                    "chat takes 'messages', not 'prompt'",
                ));
            }
            let tools = tools::parse_tools(req.tools.as_deref().unwrap_or(&[]))?;
            let choice = tools::parse_choice(req.tool_choice.as_ref(), &tools)?;
            let text = match choice {
                Choice::None => None,
                _ if tools.is_empty() => None,
                _ => Some(tools::describe(&tools)),
            };
            match &choice {
                Choice::Required => {
                    grammar = Some(Grammar::Lark(tools::call_grammar(&tools, None)))
                }
                Choice::Named(n) => {
                    grammar = Some(Grammar::Lark(tools::call_grammar(&tools, Some(n))))
                }
                _ => {}
            }
            let messages = tools::plain_messages(msgs, text)?;
            let tmpl = app.template.as_ref().ok_or_else(|| {
                ApiError::bad("this model has no chat template: use /v1/completions")
            })?;
            let ids = tmpl
                .encode(&app.tok, &messages)
                .map_err(|e| ApiError::param("messages", e.to_string()))?;
            if !matches!(choice, Choice::None) {
                tools_list = tools;
            }
            vec![ids]
        }
        Kind::Completion => {
            if req.messages.is_some() {
                return Err(ApiError::param(
                    "messages",
                    "completions take 'prompt'; use /v1/chat/completions for messages",
                ));
            }
            if req.echo == Some(true) || req.suffix.is_some() || req.best_of.is_some_and(|b| b > 1)
            {
                return Err(ApiError::bad("echo, suffix and best_of are not supported"));
            }
            if req.tools.is_some() {
                return Err(ApiError::param("tools", "tools need /v1/chat/completions"));
            }
            let enc = |t: &str| app.tok.encode(t, true, true);
            let bad = || {
                ApiError::param(
                    "prompt",
                    "prompt must be a string, a list of strings, or a list of token ids",
                )
            };
            match &req.prompt {
                None => return Err(ApiError::param("prompt", "'prompt' is required")),
                Some(Value::String(t)) => vec![enc(t)],
                Some(Value::Array(items))
                    if items.iter().all(Value::is_string) && !items.is_empty() =>
                {
                    items
                        .iter()
                        .map(|t| enc(t.as_str().unwrap_or("")))
                        .collect()
                }
                Some(Value::Array(items))
                    if !items.is_empty() && items.iter().all(Value::is_u64) =>
                {
                    let ids: Vec<u32> = items
                        .iter()
                        .map(|v| v.as_u64().unwrap_or(0) as u32)
                        .collect();
                    let v = app.tok.vocab_size() as u32;
                    if let Some(bad) = ids.iter().find(|&&i| i >= v) {
                        return Err(ApiError::param(
                            "prompt",
                            format!("token id {bad} is outside the vocabulary of {v}"),
                        ));
                    }
                    vec![ids]
                }
                _ => return Err(bad()),
            }
        }
    };
    let logprobs = match kind {
        Kind::Chat => req.chat_logprobs()?,
        Kind::Completion => req.completion_logprobs()?,
    };
    let ctx = app.batcher.ctx();
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::param("prompt", "the prompt is empty"));
        }
        if p.len() >= ctx {
            return Err(ApiError::param(
                "messages",
                format!(
                    "this prompt is {} tokens; the context is {ctx} tokens (start the server with a larger --ctx, or shorten the prompt)",
                    p.len()
                ),
            )
            .with(StatusCode::BAD_REQUEST, "context_length_exceeded"));
        }
    }
    if prompts.len() * s.n > 16 {
        return Err(ApiError::param(
            "n",
            "at most 16 choices per request in all",
        ));
    }
    if grammar.is_some() && app.grammars.is_none() {
        return Err(ApiError::bad(
            "structured output is not available for this model",
        ));
    }
    Ok(Job {
        kind,
        prompts,
        s,
        logprobs,
        grammar,
        tools: tools_list,
        stream: req.stream,
    })
}

/// Submits every choice; events arrive tagged with the choice index.
fn launch(app: &App, job: &Job) -> Result<UnboundedReceiver<(usize, Event)>, ApiError> {
    let (tx, rx) = unbounded_channel();
    let ctx = app.batcher.ctx();
    let base_seed = job.s.seed.unwrap_or_else(fresh);
    for (pi, prompt) in job.prompts.iter().enumerate() {
        for j in 0..job.s.n {
            let index = pi * job.s.n + j;
            let room = ctx - prompt.len();
            let max = job.s.max_tokens.unwrap_or(room).min(room);
            let sampler = SamplerConfig {
                temperature: job.s.temperature,
                top_k: job.s.top_k,
                top_p: job.s.top_p,
                min_p: job.s.min_p,
                repeat_penalty: job.s.repeat_penalty,
                repeat_last_n: 64,
                seed: base_seed.wrapping_add(index as u64),
            };
            let mut r = Request::new(prompt.clone(), max, sampler);
            r.presence_penalty = job.s.presence_penalty;
            r.frequency_penalty = job.s.frequency_penalty;
            r.stop = job.s.stop.clone();
            r.logprobs = job.logprobs;
            if let (Some(g), Some(gs)) = (&job.grammar, &app.grammars) {
                let c = match g {
                    Grammar::Schema(schema) => {
                        let mut schema = schema.clone();
                        if schema.get("x-guidance").is_none() {
                            schema["x-guidance"] = tools::compact();
                        }
                        gs.json_schema(schema)
                    }
                    Grammar::Lark(l) => gs.lark(l),
                }
                .map_err(|e| ApiError::param("response_format", e))?;
                r.constraint = Some(Box::new(c) as Box<dyn Constraint>);
            }
            let tx = tx.clone();
            app.batcher
                .submit(r, Box::new(move |e| tx.send((index, e)).is_ok()))
                .map_err(|e| match e {
                    SubmitError::QueueFull(_) => ApiError::bad(e.to_string())
                        .with(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
                    SubmitError::Stopped => ApiError::bad(e.to_string())
                        .with(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    _ => ApiError::param("messages", e.to_string()),
                })?;
        }
    }
    Ok(rx)
}

/// One choice as it accumulates.
#[derive(Default)]
struct Acc {
    text: String,
    ids: usize,
    logprobs: Vec<TokenLogprob>,
    finish: Option<Finish>,
    completion_tokens: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    error: Option<String>,
    /// Text already streamed.
    streamed: usize,
    /// Holding text back because it may be a tool call.
    holding: bool,
    started: bool,
}

async fn run(app: Arc<App>, job: Job) -> Response {
    let rx = match launch(&app, &job) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    if job.stream {
        stream(app, job, rx).into_response()
    } else {
        whole(app, job, rx).await
    }
}

fn token_str(app: &App, id: u32) -> String {
    String::from_utf8_lossy(&app.tok.token_bytes(id, true)).into_owned()
}

fn chat_logprobs(app: &App, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let b = app.tok.token_bytes(id, true);
        json!({"token": String::from_utf8_lossy(&b), "logprob": lp, "bytes": b})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(i, l)| entry(i, l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

fn completion_logprobs(app: &App, lps: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::new();
    let mut tokens = Vec::new();
    for t in lps {
        let s = token_str(app, t.id);
        offsets.push(offset);
        offset += s.len();
        tokens.push(s);
    }
    let top: Vec<Value> = lps
        .iter()
        .map(|t| {
            let m: serde_json::Map<String, Value> = t
                .top
                .iter()
                .map(|&(i, l)| (token_str(app, i), json!(l)))
                .collect();
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

fn finish_str(f: Option<Finish>, calls: bool) -> &'static str {
    match (calls, f) {
        (true, _) => "tool_calls",
        (_, Some(Finish::Length)) => "length",
        _ => "stop",
    }
}

fn usage(accs: &[Acc], per_prompt: usize) -> Value {
    // each prompt counts once, however many choices share it
    let prompt: usize = accs
        .iter()
        .step_by(per_prompt.max(1))
        .map(|a| a.prompt_tokens)
        .sum();
    let cached: usize = accs
        .iter()
        .step_by(per_prompt.max(1))
        .map(|a| a.cached_tokens)
        .sum();
    let completion: usize = accs.iter().map(|a| a.completion_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn absorb(acc: &mut Acc, e: Event) {
    match e {
        Event::Token { text, logprob, .. } => {
            acc.text.push_str(&text);
            acc.ids += 1;
            if let Some(l) = logprob {
                acc.logprobs.push(l);
            }
        }
        Event::Done {
            finish,
            prompt_tokens,
            cached_tokens,
            completion_tokens,
        } => {
            acc.finish = Some(finish);
            acc.prompt_tokens = prompt_tokens;
            acc.cached_tokens = cached_tokens;
            acc.completion_tokens = completion_tokens;
        }
        Event::Error(e) => acc.error = Some(e),
    }
}

fn server_error(msg: &str) -> ApiError {
    let mut e = ApiError::bad(format!("generation failed: {msg}"))
        .with(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    e.kind = "server_error";
    e
}

async fn whole(app: Arc<App>, job: Job, mut rx: UnboundedReceiver<(usize, Event)>) -> Response {
    let total = job.prompts.len() * job.s.n;
    let mut accs: Vec<Acc> = (0..total).map(|_| Acc::default()).collect();
    let mut left = total;
    while left > 0 {
        let Some((i, e)) = rx.recv().await else {
            return server_error("the generation thread stopped").into_response();
        };
        let end = matches!(e, Event::Done { .. } | Event::Error(_));
        absorb(&mut accs[i], e);
        if end {
            left -= 1;
        }
    }
    if let Some(e) = accs.iter().find_map(|a| a.error.as_deref()) {
        return server_error(e).into_response();
    }
    let mut call_id = || new_id("call_");
    let choices: Vec<Value> = accs
        .iter()
        .enumerate()
        .map(|(i, a)| match job.kind {
            Kind::Chat => {
                let (content, calls) = if job.tools.is_empty() {
                    (a.text.clone(), Vec::new())
                } else {
                    tools::parse_calls(&a.text, &job.tools, &mut call_id)
                };
                let mut msg = json!({"role": "assistant", "content": content, "refusal": null});
                if !calls.is_empty() {
                    msg["content"] = if content.is_empty() {
                        Value::Null
                    } else {
                        json!(content)
                    };
                    msg["tool_calls"] = json!(calls);
                }
                json!({
                    "index": i,
                    "message": msg,
                    "logprobs": job.logprobs.map(|_| chat_logprobs(&app, &a.logprobs)),
                    "finish_reason": finish_str(a.finish, !calls.is_empty()),
                })
            }
            Kind::Completion => json!({
                "index": i,
                "text": a.text,
                "logprobs": job.logprobs.map(|_| completion_logprobs(&app, &a.logprobs)),
                "finish_reason": finish_str(a.finish, false),
            }),
        })
        .collect();
    let (id, object) = match job.kind {
        Kind::Chat => (new_id("chatcmpl-"), "chat.completion"),
        Kind::Completion => (new_id("cmpl-"), "text_completion"),
    };
    axum::Json(json!({
        "id": id,
        "object": object,
        "created": now_s(),
        "model": app.cfg.model_id,
        "system_fingerprint": "llmos",
        "choices": choices,
        "usage": usage(&accs, job.s.n),
    }))
    .into_response()
}

/// The state of a streamed answer.
struct Streamer {
    app: Arc<App>,
    job: Job,
    rx: UnboundedReceiver<(usize, Event)>,
    accs: Vec<Acc>,
    left: usize,
    out: VecDeque<Sse>,
    id: String,
    created: u64,
    finished: bool,
}

impl Streamer {
    fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Sse {
        let object = match self.job.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.app.cfg.model_id,
            "system_fingerprint": "llmos",
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        } else if self.job.s.include_usage {
            v["usage"] = Value::Null;
        }
        Sse::default().data(v.to_string())
    }

    fn delta(&self, i: usize, delta: Value, lps: Option<Value>, finish: Option<&str>) -> Value {
        match self.job.kind {
            Kind::Chat => {
                json!({"index": i, "delta": delta, "logprobs": lps, "finish_reason": finish})
            }
            Kind::Completion => json!({
                "index": i,
                "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                "logprobs": lps,
                "finish_reason": finish,
            }),
        }
    }

    fn handle(&mut self, i: usize, e: Event) {
        let chat = self.job.kind == Kind::Chat;
        if chat && !self.accs[i].started {
            self.accs[i].started = true;
            let d = self.delta(i, json!({"role": "assistant", "content": ""}), None, None);
            let c = self.chunk(vec![d], None);
            self.out.push_back(c);
        }
        let lp = match &e {
            Event::Token {
                logprob: Some(l), ..
            } => Some(l.clone()),
            _ => None,
        };
        let end = matches!(e, Event::Done { .. } | Event::Error(_));
        absorb(&mut self.accs[i], e);
        if let Some(err) = self.accs[i].error.clone() {
            let e = server_error(&err);
            self.out
                .push_back(Sse::default().data(e.body().to_string()));
            self.left = 0;
            self.finished = true;
            return;
        }
        // text that may start a tool call is held until the end
        let tool_mode = !self.job.tools.is_empty();
        let a = &mut self.accs[i];
        if tool_mode && a.streamed == 0 {
            let t = a.text.trim_start();
            a.holding = t.starts_with(tools::OPEN) || tools::OPEN.starts_with(t);
        }
        let lps = lp.map(|l| match self.job.kind {
            Kind::Chat => chat_logprobs(&self.app, &[l]),
            Kind::Completion => completion_logprobs(&self.app, &[l]),
        });
        if !self.accs[i].holding
            && (self.accs[i].text.len() > self.accs[i].streamed || lps.is_some())
        {
            let a = &self.accs[i];
            let piece = a.text[a.streamed..].to_string();
            self.accs[i].streamed = self.accs[i].text.len();
            let d = self.delta(i, json!({"content": piece}), lps, None);
            let c = self.chunk(vec![d], None);
            self.out.push_back(c);
        }
        if !end {
            return;
        }
        self.left -= 1;
        let a = &self.accs[i];
        let mut calls = Vec::new();
        if a.holding {
            let (content, c) =
                tools::parse_calls(&a.text, &self.job.tools, &mut || new_id("call_"));
            calls = c;
            let delta = if calls.is_empty() {
                json!({"content": a.text})
            } else {
                let indexed: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let mut c = c.clone();
                        c["index"] = json!(k);
                        c
                    })
                    .collect();
                json!({"content": if content.is_empty() { Value::Null } else { json!(content) }, "tool_calls": indexed})
            };
            let d = self.delta(i, delta, None, None);
            let c = self.chunk(vec![d], None);
            self.out.push_back(c);
        }
        let fin = finish_str(self.accs[i].finish, !calls.is_empty());
        let d = self.delta(i, json!({}), None, Some(fin));
        let c = self.chunk(vec![d], None);
        self.out.push_back(c);
        if self.left == 0 {
            if self.job.s.include_usage {
                let u = usage(&self.accs, self.job.s.n);
                let c = self.chunk(Vec::new(), Some(u));
                self.out.push_back(c);
            }
            self.finished = true;
        }
    }
}

fn stream(
    app: Arc<App>,
    job: Job,
    rx: UnboundedReceiver<(usize, Event)>,
) -> axum::response::Sse<impl futures_util::Stream<Item = Result<Sse, Infallible>>> {
    let total = job.prompts.len() * job.s.n;
    let id = match job.kind {
        Kind::Chat => new_id("chatcmpl-"),
        Kind::Completion => new_id("cmpl-"),
    };
    let st = Streamer {
        app,
        job,
        rx,
        accs: (0..total).map(|_| Acc::default()).collect(),
        left: total,
        out: VecDeque::new(),
        id,
        created: now_s(),
        finished: false,
    };
    let s = futures_util::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        loop {
            if let Some(ev) = st.out.pop_front() {
                return Some((Ok(ev), Some(st)));
            }
            if st.finished {
                // the OpenAI stream's last line; then the stream ends
                return Some((Ok(Sse::default().data("[DONE]")), None));
            }
            match st.rx.recv().await {
                Some((i, e)) => st.handle(i, e),
                None => {
                    let e = server_error("the generation thread stopped");
                    st.out.push_back(Sse::default().data(e.body().to_string()));
                    st.finished = true;
                }
            }
        }
    });
    axum::response::Sse::new(s).keep_alive(KeepAlive::default())
}
