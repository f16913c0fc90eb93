//! Tool calling. The small chat models llmos runs ship templates without a tool syntax, so
//! llmos uses one of its own, rendered through the model's chat template: the tools are
//! described in the system turn, a call is written
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, and a tool's answer goes back
//! in a user turn as `<tool_response>...</tool_response>`. With `tool_choice` "required" or
//! a named function, the call is enforced by constrained decoding.

use crate::api::{ApiError, ChatMessage, content_text};
use llmos_tokenizer::Message;
use serde_json::{Value, json};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// A validated function tool.
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

pub fn parse_tools(tools: &[Value]) -> Result<Vec<Tool>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let bad = |m: &str| ApiError::param(&format!("tools[{i}]"), m.to_string());
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("only tools of type 'function' are supported"));
        }
        let f = t.get("function").ok_or_else(|| bad("missing 'function'"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
            .ok_or_else(|| bad("function.name must be letters, digits, _ or -"))?;
        let parameters = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if !parameters.is_object() {
            return Err(bad("function.parameters must be a JSON schema object"));
        }
        out.push(Tool {
            name: name.to_string(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            parameters,
        });
    }
    Ok(out)
}

/// What `tool_choice` asks for.
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

pub fn parse_choice(v: Option<&Value>, tools: &[Tool]) -> Result<Choice, ApiError> {
    let bad = |m: String| ApiError::param("tool_choice", m);
    let c = match v {
        None => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => return Err(bad(format!("unknown tool_choice '{other}'"))),
        },
        Some(o) => {
            let name = o
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice object needs function.name".into()))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(format!(
                    "tool_choice names '{name}', which is not in tools"
                )));
            }
            Choice::Named(name.to_string())
        }
    };
    if tools.is_empty() && matches!(c, Choice::Required | Choice::Named(_)) {
        return Err(bad("tool_choice needs tools".into()));
    }
    Ok(c)
}

/// The system-turn text that describes the tools.
pub fn describe(tools: &[Tool]) -> String {
    let mut s = String::from(
        "You can call these functions. To call one, reply with only\n<tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call>\nFunctions:\n",
    );
    for t in tools {
        s.push_str(
            &json!({"name": t.name, "description": t.description, "parameters": t.parameters})
                .to_string(),
        );
        s.push('\n');
    }
    s
}

/// A Lark grammar that allows exactly one call to one of `names` with valid arguments.
pub fn call_grammar(tools: &[Tool], only: Option<&str>) -> String {
    let alts: Vec<Value> = tools
        .iter()
        .filter(|t| only.is_none_or(|n| n == t.name))
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = if alts.len() == 1 {
        alts[0].clone()
    } else {
        json!({"anyOf": alts})
    };
    schema["x-guidance"] = compact();
    format!("start: \"{OPEN}\" call \"{CLOSE}\"\ncall: %json {schema}\n")
}

/// JSON written compactly with single spaces, so a small model cannot wander in whitespace.
pub fn compact() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The conversation as plain (role, text) turns for the chat template: assistant tool calls
/// become their `<tool_call>` text, tool results user turns; neighbouring turns of one role
/// are joined (templates that demand alternation accept the result).
pub fn plain_messages(
    msgs: &[ChatMessage],
    tools_text: Option<String>,
) -> Result<Vec<Message>, ApiError> {
    let mut out: Vec<Message> = Vec::new();
    if let Some(t) = tools_text {
        out.push(Message::new("system", &t));
    }
    for (i, m) in msgs.iter().enumerate() {
        let mut text = content_text(&m.content)?;
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => {
                for c in m.tool_calls.iter().flatten() {
                    let name = c.pointer("/function/name").and_then(Value::as_str);
                    let args = c.pointer("/function/arguments");
                    let (Some(name), Some(args)) = (name, args) else {
                        return Err(ApiError::param(
                            &format!("messages[{i}].tool_calls"),
                            "each tool call needs function.name and function.arguments",
                        ));
                    };
                    let args: Value = match args {
                        Value::String(s) => {
                            serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                        }
                        v => v.clone(),
                    };
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!(
                        "{OPEN}{}{CLOSE}",
                        json!({"name": name, "arguments": args})
                    ));
                }
                "assistant"
            }
            "tool" => {
                text = format!("<tool_response>\n{text}\n</tool_response>");
                "user"
            }
            other => {
                return Err(ApiError::param(
                    &format!("messages[{i}].role"),
                    format!("unknown role '{other}' (system, developer, user, assistant, tool)"),
                ));
            }
        };
        match out.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&text);
            }
            _ => out.push(Message::new(role, &text)),
        }
    }
    Ok(out)
}

/// Splits a reply into its text and the tool calls it makes (OpenAI `tool_calls` objects).
pub fn parse_calls(
    text: &str,
    tools: &[Tool],
    call_id: &mut dyn FnMut() -> String,
) -> (String, Vec<Value>) {
    let mut calls = Vec::new();
    let mut rest = text;
    let mut plain = String::new();
    while let Some(at) = rest.find(OPEN) {
        plain.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let (body, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        let parsed: Option<Value> = serde_json::from_str(body.trim()).ok();
        match parsed.as_ref().and_then(|v| {
            let name = v.get("name")?.as_str()?;
            tools.iter().any(|t| t.name == name).then_some(())?;
            Some((
                name.to_string(),
                v.get("arguments").cloned().unwrap_or(json!({})),
            ))
        }) {
            Some((name, args)) => calls.push(json!({
                "id": call_id(),
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            })),
            // not a call to a known tool: keep it as text
            None => plain.push_str(&rest[at..at + OPEN.len() + body.len()]),
        }
        rest = next;
    }
    plain.push_str(rest);
    (plain.trim().to_string(), calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Tool> {
        parse_tools(&[
            json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
        ])
        .unwrap()
    }

    #[test]
    fn calls_are_parsed_and_unknown_ones_stay_text() {
        let mut n = 0;
        let mut id = || {
            n += 1;
            format!("call_{n}")
        };
        let (text, calls) = parse_calls(
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>",
            &tools(),
            &mut id,
        );
        assert_eq!(text, "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["city"], "Paris");
        let (text, calls) = parse_calls(
            "hi <tool_call>{\"name\": \"nope\"}</tool_call>",
            &tools(),
            &mut id,
        );
        assert!(calls.is_empty());
        assert!(text.contains("nope"));
        let (text, calls) = parse_calls("no calls here", &tools(), &mut id);
        assert_eq!((text.as_str(), calls.len()), ("no calls here", 0));
    }

    #[test]
    fn history_turns_tool_traffic_into_plain_turns() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ]))
        .unwrap();
        let m = plain_messages(&msgs, Some(describe(&tools()))).unwrap();
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(m[2].content.starts_with(OPEN) && m[2].content.contains("Paris"));
        assert!(
            m[3].content.contains("<tool_response>\nsunny") && m[3].content.ends_with("thanks")
        );
        let bad: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "robot", "content": "x"}])).unwrap();
        assert!(plain_messages(&bad, None).is_err());
    }
}
