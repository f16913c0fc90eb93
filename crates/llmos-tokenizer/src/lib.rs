//! llmos-tokenizer: text <-> token ids for the vocabularies models carry in their GGUF
//! (byte-level BPE with a named pre-tokenizer; SentencePiece-style BPE), special tokens,
//! BOS/EOS rules, and chat templates (Jinja, rendered as Hugging Face renders them).
//! It knows nothing about weights.

mod bpe;
pub use bpe::byte_to_char;
pub mod chat;
mod hf;
mod mbpe;
mod pretok;
mod spm;
pub mod tiktoken;
pub mod train;
mod wpm;

pub use chat::{CHATML_TEMPLATE, ChatTemplate, GEMMA_TEMPLATE, Message, template_source};
pub use hf::{HfVocab, read_hf_vocab};

use llmos_formats::{Gguf, Value};
use std::collections::HashMap;

/// Errors loading a vocabulary or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error(
        "unsupported tokenizer model {0:?} (supported: gpt2 (byte-level BPE), llama (SentencePiece BPE), bert (WordPiece), gemma4 (merge-ranked SentencePiece BPE))"
    )]
    UnsupportedModel(String),
    #[error("chat template: {0}")]
    Template(String),
}

/// GGUF `tokenizer.ggml.token_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// The GGUF `tokenizer.ggml.token_type` code.
    pub fn gguf_code(self) -> i32 {
        match self {
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }

    fn from_i64(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

pub(crate) enum Model {
    Bpe(bpe::Bpe),
    Spm(spm::Spm),
    Wpm(wpm::Wpm),
    MergeBpe(mbpe::MergeBpe),
    /// tiktoken encodings keep raw token bytes (they need not be UTF-8)
    Tiktoken(tiktoken::Tiktoken, Vec<Vec<u8>>),
}

/// A loaded vocabulary with its encoding rules.
pub struct Tokenizer {
    pub(crate) model: Model,
    pub(crate) tokens: Vec<String>,
    pub(crate) types: Vec<TokenType>,
    pub(crate) token_to_id: HashMap<String, u32>,
    /// Control and user-defined tokens, longest first, for splitting text on them.
    pub(crate) specials: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Tokens that end a generation (EOS, EOT and the end-of-turn tokens chat formats use).
    pub(crate) eog: Vec<u32>,
    pub chat_template: Option<String>,
    /// Name of the model type (`gpt2`, `llama`) and the pre-tokenizer, for display.
    pub kind: String,
}

fn meta_err(s: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata(s.into())
}

impl Tokenizer {
    /// Loads the vocabulary stored in a GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| meta_err("missing tokenizer.ggml.model"))?
            .to_string();
        let tokens: Vec<String> = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| meta_err("missing tokenizer.ggml.tokens"))?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| meta_err("tokenizer.ggml.tokens holds a non-string"))?;
        let n = tokens.len();
        let types: Vec<TokenType> =
            match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
                Some(a) if a.len() == n => a
                    .iter()
                    .map(|v| TokenType::from_i64(v.as_i64().unwrap_or(1)))
                    .collect(),
                Some(a) => {
                    return Err(meta_err(format!(
                        "token_type has {} entries for {n} tokens",
                        a.len()
                    )));
                }
                None => vec![TokenType::Normal; n],
            };
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                    // some converters write -1 / u32::MAX for "none"
                    Some(i) if i == u32::MAX as u64 => Ok(None),
                    _ if v.as_i64() == Some(-1) => Ok(None),
                    _ => Err(meta_err(format!("{key} = {v} is not a token id below {n}"))),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let flag = |key: &str| g.get(key).and_then(Value::as_bool);
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // on duplicates, the first id wins (as llama.cpp does)
            token_to_id.entry(t.clone()).or_insert(i as u32);
        }
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let (m, add_bos_default, kind) = match model.as_str() {
            "gpt2" => {
                let merges = g
                    .get("tokenizer.ggml.merges")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        meta_err("byte-level BPE vocabulary without tokenizer.ggml.merges")
                    })?;
                let merges: Vec<&str> = merges.iter().filter_map(Value::as_str).collect();
                let ignore_merges = matches!(pre.as_str(), "llama3" | "llama-v3" | "llama-bpe");
                let b = bpe::Bpe::with_options(
                    &merges,
                    &token_to_id,
                    pretok::PreTokenizer::for_name(&pre),
                    ignore_merges,
                );
                (
                    Model::Bpe(b),
                    false,
                    format!("byte-level BPE (pre-tokenizer {pre})"),
                )
            }
            "llama" => {
                let scores: Vec<f32> =
                    match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                        Some(a) if a.len() == n => {
                            a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
                        }
                        Some(_) => {
                            return Err(meta_err(
                                "tokenizer.ggml.scores length differs from the token count",
                            ));
                        }
                        None => vec![0.0; n],
                    };
                let add_space_prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let unk = id("tokenizer.ggml.unknown_token_id")?;
                let s = spm::Spm::new(scores, &tokens, &types, add_space_prefix, unk);
                (Model::Spm(s), true, "SentencePiece BPE".to_string())
            }
            "gemma4" => {
                let merges = g
                    .get("tokenizer.ggml.merges")
                    .and_then(Value::as_array)
                    .ok_or_else(|| meta_err("gemma4 vocabulary without tokenizer.ggml.merges"))?;
                let merges: Vec<&str> = merges.iter().filter_map(Value::as_str).collect();
                let unk = id("tokenizer.ggml.unknown_token_id")?;
                let m = mbpe::MergeBpe::new(&merges, &tokens, &types, &token_to_id, unk);
                (
                    Model::MergeBpe(m),
                    true,
                    "merge-ranked SentencePiece BPE".to_string(),
                )
            }
            "bert" => {
                let unk = id("tokenizer.ggml.unknown_token_id")?;
                (
                    Model::Wpm(wpm::Wpm::new(&tokens, unk)),
                    true,
                    "WordPiece".to_string(),
                )
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined
                )
            })
            .filter(|&i| !tokens[i as usize].is_empty())
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let mut eog: Vec<u32> = [eos, eot].into_iter().flatten().collect();
        // end-of-turn markers of common chat formats count as end of generation, as in
        // llama.cpp, even when the metadata names only EOS
        add_end_of_turn_tokens(&mut eog, &token_to_id, &types);
        Ok(Tokenizer {
            model: m,
            add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default)
                && bos.is_some(),
            add_eos: flag("tokenizer.ggml.add_eos_token").unwrap_or(false) && eos.is_some(),
            tokens,
            types,
            token_to_id,
            specials,
            bos,
            eos,
            eot,
            eog,
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
            kind,
        })
    }

    /// Loads a tiktoken rank file (`cl100k_base.tiktoken`, ...); the encoding's split pattern
    /// and special tokens are chosen by the file name.
    pub fn from_tiktoken_file(path: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let (pattern, specials) = tiktoken::encoding(name).ok_or_else(|| {
            meta_err(format!(
                "{}: unknown tiktoken encoding {name:?} (known: r50k_base, p50k_base, cl100k_base, o200k_base)",
                path.display()
            ))
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| meta_err(format!("{}: {e}", path.display())))?;
        let ranks = tiktoken::parse_ranks(&text)
            .map_err(|e| meta_err(format!("{}: {e}", path.display())))?;
        let n = ranks
            .iter()
            .map(|r| r.1)
            .chain(specials.iter().map(|s| s.1))
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut bytes = vec![Vec::new(); n];
        let mut types = vec![TokenType::Unused; n];
        for (b, r) in &ranks {
            bytes[*r as usize] = b.clone();
            types[*r as usize] = TokenType::Normal;
        }
        for (t, r) in &specials {
            bytes[*r as usize] = t.as_bytes().to_vec();
            types[*r as usize] = TokenType::Control;
        }
        let tokens: Vec<String> = bytes
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let token_to_id: HashMap<String, u32> =
            specials.iter().map(|(t, r)| (t.to_string(), *r)).collect();
        let specials_ids: Vec<u32> = {
            let mut v: Vec<u32> = specials.iter().map(|s| s.1).collect();
            v.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
            v
        };
        let eos = specials
            .iter()
            .find(|s| s.0 == "<|endoftext|>")
            .map(|s| s.1);
        let model = tiktoken::Tiktoken::new(ranks.into_iter().collect(), pattern)?;
        Ok(Tokenizer {
            model: Model::Tiktoken(model, bytes),
            tokens,
            types,
            token_to_id,
            specials: specials_ids,
            bos: None,
            eos,
            eot: None,
            add_bos: false,
            add_eos: false,
            eog: eos.into_iter().collect(),
            chat_template: None,
            kind: format!("tiktoken {name}"),
        })
    }

    /// For byte-level vocabularies, how many of the 256 bytes have a token of their own (a
    /// text can be encoded without loss only if all do); `None` for other kinds.
    pub fn byte_coverage(&self) -> Option<usize> {
        match &self.model {
            Model::Bpe(b) => Some(b.byte_coverage()),
            Model::Tiktoken(..) => Some(256),
            _ => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of token `id`.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Whether `id` ends a generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Text to ids. `add_special` adds BOS/EOS as the metadata asks; `parse_special` turns
    /// control-token text (e.g. `<|im_start|>`) into those tokens. User-defined tokens are
    /// always matched, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for frag in self.split_specials(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                // an empty fragment yields no tokens (and no space prefix)
                Fragment::Text("") => {}
                Fragment::Text(t) => {
                    match &self.model {
                        Model::Bpe(b) => b.encode(t, &mut out),
                        Model::Spm(s) => s.encode(t, prev_special, &self.token_to_id, &mut out),
                        Model::Wpm(w) => w.encode(t, &self.token_to_id, &mut out),
                        Model::MergeBpe(m) => m.encode(t, &self.token_to_id, &mut out),
                        Model::Tiktoken(t2, _) => t2.encode(t, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn split_specials<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty == TokenType::Control {
                continue;
            }
            let pat = self.tokens[id as usize].as_str();
            // most specials are absent (Gemma has thousands): leave the fragments as they are
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(pat)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(t) if t.contains(pat) => {
                        let mut rest = t;
                        while let Some(p) = rest.find(pat) {
                            if p > 0 {
                                next.push(Fragment::Text(&rest[..p]));
                            }
                            next.push(Fragment::Token(id));
                            rest = &rest[p + pat.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes token `id` stands for in output text. Control tokens give nothing unless
    /// `special` is set (then their text).
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TokenType::Control | TokenType::Unknown | TokenType::Unused if !special => {
                return Vec::new();
            }
            TokenType::Control | TokenType::UserDefined => return text.as_bytes().to_vec(),
            _ => {}
        }
        match &self.model {
            Model::Tiktoken(_, bytes) => bytes[id as usize].clone(),
            Model::Bpe(_) => bpe::decode_bytelevel(text),
            Model::Spm(_) | Model::Wpm(_) | Model::MergeBpe(_) => {
                spm::decode_piece(text, self.types[id as usize])
            }
        }
    }

    /// Ids to text (invalid UTF-8 is replaced). Control tokens are left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i, false))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// End-of-turn markers of common chat formats: they end a generation, as in llama.cpp, even
/// when the metadata names only EOS.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|end|>",
    "</s>",
    "<|eom_id|>",
];

/// Adds the control tokens among [`END_OF_TURN`] to `eog`.
pub(crate) fn add_end_of_turn_tokens(
    eog: &mut Vec<u32>,
    token_to_id: &HashMap<String, u32>,
    types: &[TokenType],
) {
    for name in END_OF_TURN {
        if let Some(&i) = token_to_id.get(*name)
            && types[i as usize] == TokenType::Control
            && !eog.contains(&i)
        {
            eog.push(i);
        }
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Turns a stream of token bytes into text without ever splitting a UTF-8 character:
/// bytes of an incomplete character are held back until the rest arrives.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap());
                    match e.error_len() {
                        // incomplete character at the end: wait for more bytes
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // invalid bytes: emit the replacement character and go on
                        Some(bad) => {
                            out.push('\u{fffd}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_decoder_never_splits_a_character() {
        let text = "añ€😀z";
        let bytes = text.as_bytes();
        let mut d = StreamDecoder::default();
        let mut out = String::new();
        for b in bytes {
            let s = d.push(&[*b]);
            out.push_str(&s);
            assert!(text.starts_with(&out));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn stream_decoder_replaces_invalid_bytes() {
        let mut d = StreamDecoder::default();
        assert_eq!(d.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
    }
}
