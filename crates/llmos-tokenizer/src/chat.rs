//! Chat templates: the Jinja template a model ships in `tokenizer.chat_template`, rendered
//! the way Hugging Face `transformers` renders it (trim_blocks, lstrip_blocks, Python string
//! methods, `raise_exception`), so prompts are byte-identical to the reference.

use crate::{Tokenizer, TokenizerError};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// One chat message in the OpenAI shape.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Gemma's turn format (`<start_of_turn>user` ... `<end_of_turn>`, the assistant's turns as
/// `model`, a system message folded into the first user turn), for Gemma base models,
/// whose files carry no template.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] | trim + '\\n\\n' %}{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}{% for m in rest %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + (first if loop.first else '') + (m['content'] | trim) + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// ChatML (`<|im_start|>role` ... `<|im_end|>`), as SmolLM2 and Qwen use it.
pub const CHATML_TEMPLATE: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A template source for `name`: a built-in (`gemma`, `chatml`) or the text of a file.
pub fn template_source(name: &str) -> std::io::Result<String> {
    match name {
        "gemma" => Ok(GEMMA_TEMPLATE.to_string()),
        "chatml" => Ok(CHATML_TEMPLATE.to_string()),
        path => std::fs::read_to_string(path),
    }
}

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> Result<Value, Error> {
    // templates use this for "today's date" in system prompts; a fixed UTC clock keeps
    // renders reproducible within a day
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let out = fmt
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3]);
    Ok(Value::from(out))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the texts of the model's BOS and EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| {
                TokenizerError::Template(format!("cannot compile: {e:#}").replace('\n', " "))
            })?;
        Ok(ChatTemplate {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Renders `messages`; `add_generation_prompt` appends the header of the assistant's turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            TokenizerError::Template(format!("cannot render: {}", msg.replace('\n', " ")))
        })
    }

    /// The prompt ids of a conversation. The template's own text is tokenized with its special
    /// tokens, but what the messages say is always plain text: a user who types
    /// `<|im_start|>system` gets those characters, not the control token that would open a new
    /// turn (prompt injection). Conversations without such text tokenize exactly as the
    /// rendered prompt does; the others are rendered with placeholders for the messages and
    /// tokenized piece by piece.
    pub fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>, TokenizerError> {
        let changed =
            || TokenizerError::Template("the template changed a message beyond recognition".into());
        // the texts that parse as control or user-defined tokens (the tokenizer's own list)
        let risky = messages.iter().any(|m| {
            tok.specials
                .iter()
                .filter_map(|&id| tok.token_text(id))
                .any(|s| m.content.contains(s))
        });
        if !risky {
            let text = self.render(messages, true)?;
            return Ok(tok.encode(&text, false, true));
        }
        // private-use characters mark where each message's text goes
        let hole = |i: usize| format!("\u{E000}{i}\u{E001}");
        let masked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, &hole(i)))
            .collect();
        let text = self.render(&masked, true)?;
        let mut ids = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find('\u{E000}') {
            ids.extend(tok.encode(&rest[..at], false, true));
            let after = &rest[at + '\u{E000}'.len_utf8()..];
            let end = after.find('\u{E001}').ok_or_else(changed)?;
            let i: usize = after[..end].parse().map_err(|_| changed())?;
            let m = messages.get(i).ok_or_else(changed)?;
            ids.extend(tok.encode(&m.content, false, false));
            rest = &after[end + '\u{E001}'.len_utf8()..];
        }
        ids.extend(tok.encode(rest, false, true));
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_templates_render_their_formats() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", " Hi "),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            t.render(&msgs[1..2], false).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n"
        );
        let c = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        assert_eq!(
            c.render(&msgs[1..3], false).unwrap(),
            "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        assert_eq!(template_source("gemma").unwrap(), GEMMA_TEMPLATE);
        assert!(template_source("/no/such/template.jinja").is_err());
    }

    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let s = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}", "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  ok ")], false).unwrap(),
            "OK"
        );
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }

    #[test]
    fn broken_template_is_a_one_line_error() {
        let e = ChatTemplate::new("{% for x in %}", "", "")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("chat template: cannot compile") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
    }
}
