//! The OpenAI request shapes, their validation, and the OpenAI error object.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::bad(message)
        }
    }

    pub fn with(mut self, status: StatusCode, code: &'static str) -> ApiError {
        self.status = status;
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: a string or a list of up to four.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's content: text, or a list of parts of which only text parts are supported.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
    // accepted for compatibility; the plain-turn rendering does not use them
    #[serde(default)]
    #[allow(dead_code)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub name: Option<String>,
}

/// Sampling and length settings shared by both completion routes.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // some fields are accepted and ignored, as OpenAI's optional ones
pub struct Common {
    #[serde(default)]
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// llama.cpp server extensions.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<Value>,
    pub user: Option<String>,
    pub logit_bias: Option<Value>,
    pub response_format: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// chat: bool; completions: an integer count of alternatives.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    // chat only
    pub messages: Option<Vec<ChatMessage>>,
    // completions only
    pub prompt: Option<Value>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    // accepted and ignored
    pub metadata: Option<Value>,
    pub store: Option<bool>,
    pub service_tier: Option<String>,
    pub reasoning_effort: Option<String>,
}

/// Parses a request body, answering malformed JSON and wrong field types with a 400 that
/// says where.
pub fn parse(body: &[u8]) -> Result<Common, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("request body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
}

/// Validated sampling settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub include_usage: bool,
}

fn range(name: &str, v: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) => Err(ApiError::param(
            name,
            format!("{name} must be between {lo} and {hi}, got {x}"),
        )),
    }
}

impl Common {
    pub fn settings(&self) -> Result<Settings, ApiError> {
        let max = self.max_completion_tokens.or(self.max_tokens);
        if let Some(m) = max
            && m < 1
        {
            return Err(ApiError::param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=16).contains(&n) {
            return Err(ApiError::param("n", format!("n must be 1 to 16, got {n}")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::param("stop", "at most 4 stop sequences"));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::param("stop", "stop sequences must not be empty"));
        }
        if let Some(b) = &self.logit_bias
            && b.as_object().is_some_and(|o| !o.is_empty())
        {
            return Err(ApiError::param("logit_bias", "logit_bias is not supported"));
        }
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Settings {
            temperature: range("temperature", self.temperature, 0.0, 2.0, 1.0)?,
            top_p: range("top_p", self.top_p, 0.0, 1.0, 1.0)?.max(f32::MIN_POSITIVE),
            top_k: self.top_k.unwrap_or(0),
            min_p: range("min_p", self.min_p, 0.0, 1.0, 0.0)?,
            repeat_penalty: range("repeat_penalty", self.repeat_penalty, 0.0, 10.0, 1.0)?,
            max_tokens: max.map(|m| m as usize),
            stop,
            seed: self.seed.map(|s| s as u64),
            n: n as usize,
            presence_penalty: range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?,
            frequency_penalty: range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?,
            include_usage,
        })
    }

    /// Chat: `logprobs: true` with `top_logprobs: K` (0-20).
    pub fn chat_logprobs(&self) -> Result<Option<usize>, ApiError> {
        let on = match &self.logprobs {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::param("logprobs", "logprobs must be a boolean")),
        };
        let top = self.top_logprobs.unwrap_or(0);
        if !(0..=20).contains(&top) {
            return Err(ApiError::param(
                "top_logprobs",
                "top_logprobs must be 0 to 20",
            ));
        }
        if top > 0 && !on {
            return Err(ApiError::param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        Ok(on.then_some(top as usize))
    }

    /// Completions: `logprobs: K` (0-5).
    pub fn completion_logprobs(&self) -> Result<Option<usize>, ApiError> {
        match &self.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(k)) => match k.as_u64() {
                Some(k) if k <= 5 => Ok(Some(k as usize)),
                _ => Err(ApiError::param("logprobs", "logprobs must be 0 to 5")),
            },
            Some(_) => Err(ApiError::param("logprobs", "logprobs must be an integer")),
        }
    }
}

/// The text of a message's content (text parts joined).
pub fn content_text(c: &Option<Content>) -> Result<String, ApiError> {
    match c {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    (ty, _) => {
                        return Err(ApiError::param(
                            "messages",
                            format!(
                                "content part of type {} is not supported (text only)",
                                ty.unwrap_or("?")
                            ),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}
