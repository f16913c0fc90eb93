//! Hugging Face `tokenizer.json` (+ `tokenizer_config.json` beside it): byte-level BPE
//! models with a Split/ByteLevel pre-tokenizer sequence and an optional NFC normalizer, as
//! Llama 3, Qwen 2/3, GPT-2-style and most recent models ship.

use crate::bpe::Bpe;
use crate::pretok::PreTokenizer;
use crate::{Model, TokenType, Tokenizer, TokenizerError};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

fn err(path: &Path, what: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Metadata(format!("{}: {what}", path.display()))
}

/// Text of a special-token entry in tokenizer_config.json (a string or {"content": ...}).
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The parts of a HF byte-level BPE `tokenizer.json` (+ `tokenizer_config.json` beside it),
/// as read: what a tokenizer is built from, and what a GGUF file stores.
pub struct HfVocab {
    /// Token strings by id (bytes as GPT-2's printable characters; added tokens as written).
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    pub merges: Vec<String>,
    /// The Split regexes in order (ByteLevel's own regex included when it uses one).
    pub patterns: Vec<String>,
    pub nfc: bool,
    pub ignore_merges: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    token_to_id: HashMap<String, u32>,
    added: Vec<(u32, String, bool)>,
}

impl HfVocab {
    /// The GGUF `tokenizer.ggml.pre` name of this split, if GGUF has one.
    pub fn gguf_pre(&self) -> Option<&'static str> {
        PreTokenizer::gguf_name(&self.patterns)
    }
}

/// Reads a HF `tokenizer.json` (byte-level BPE) and the `tokenizer_config.json` beside it.
pub fn read_hf_vocab(path: &Path) -> Result<HfVocab, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e))?;
    let j: Value = serde_json::from_str(&text).map_err(|e| err(path, format!("not JSON: {e}")))?;
    let model = j.get("model").ok_or_else(|| err(path, "no \"model\""))?;
    let mtype = model.get("type").and_then(Value::as_str).unwrap_or("");
    if mtype != "BPE" {
        return Err(err(
            path,
            format!("model type {mtype:?} is not supported (BPE is)"),
        ));
    }
    let vocab_j = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| err(path, "model.vocab missing"))?;
    let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(vocab_j.len());
    for (t, id) in vocab_j {
        let id = id
            .as_u64()
            .ok_or_else(|| err(path, format!("vocab entry {t:?} has no integer id")))?;
        token_to_id.insert(t.clone(), id as u32);
    }
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| err(path, "model.merges missing"))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) if p.len() == 2 => {
                Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?))
            }
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| err(path, "a merge is neither \"a b\" nor [a, b]"))?;

    // normalizer: none or NFC
    let nfc = match j.get("normalizer") {
        None | Some(Value::Null) => false,
        Some(n) => {
            let kinds: Vec<&str> = match n.get("type").and_then(Value::as_str) {
                Some("Sequence") => n
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|x| x.get("type")?.as_str()).collect())
                    .unwrap_or_default(),
                Some(t) => vec![t],
                None => vec![],
            };
            if kinds.iter().any(|k| *k != "NFC") {
                return Err(err(
                    path,
                    format!("normalizer {kinds:?} is not supported (NFC is)"),
                ));
            }
            !kinds.is_empty()
        }
    };

    // pre-tokenizer: Split regexes (isolated) and a ByteLevel step
    let pre = j
        .get("pre_tokenizer")
        .ok_or_else(|| err(path, "no pre_tokenizer"))?;
    let steps: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![pre],
    };
    let mut patterns = Vec::new();
    let mut byte_level = false;
    for s in steps {
        match s.get("type").and_then(Value::as_str) {
            Some("Split") => {
                let pat = s
                    .get("pattern")
                    .and_then(|p| p.get("Regex"))
                    .and_then(Value::as_str);
                let behavior = s.get("behavior").and_then(Value::as_str);
                let invert = s.get("invert").and_then(Value::as_bool).unwrap_or(false);
                match (pat, behavior, invert) {
                    (Some(p), Some("Isolated"), false) => patterns.push(p.to_string()),
                    _ => {
                        return Err(err(
                            path,
                            "only Split pre-tokenizers with a regex, behavior Isolated, not inverted, are supported",
                        ));
                    }
                }
            }
            Some("ByteLevel") => {
                byte_level = true;
                if s.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                    patterns.push(PreTokenizer::gpt2_pattern().to_string());
                }
                if s.get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    return Err(err(path, "ByteLevel add_prefix_space is not supported"));
                }
            }
            other => {
                return Err(err(
                    path,
                    format!("pre-tokenizer {other:?} is not supported"),
                ));
            }
        }
    }
    if !byte_level {
        return Err(err(
            path,
            "only byte-level BPE tokenizer.json files are supported",
        ));
    }
    PreTokenizer::from_patterns(&patterns).map_err(|e| err(path, e))?;

    // added tokens: special ones are control tokens, the others user-defined
    let mut added = Vec::new();
    for a in j
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            return Err(err(path, "an added token lacks id or content"));
        };
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        added.push((id as u32, content.to_string(), special));
    }
    let n = token_to_id
        .values()
        .chain(added.iter().map(|a| &a.0))
        .max()
        .map_or(0, |&m| m as usize + 1);
    if n > 10_000_000 {
        return Err(err(
            path,
            format!("token id {} is implausibly large", n - 1),
        ));
    }
    let mut tokens = vec![String::new(); n];
    let mut types = vec![TokenType::Unused; n];
    for (t, &id) in &token_to_id {
        tokens[id as usize] = t.clone();
        types[id as usize] = TokenType::Normal;
    }
    for (id, content, special) in &added {
        tokens[*id as usize] = content.clone();
        types[*id as usize] = if *special {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        token_to_id.insert(content.clone(), *id);
    }
    let ignore_merges = model
        .get("ignore_merges")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // tokenizer_config.json beside it: chat template, BOS/EOS
    let cfg: Value = path
        .parent()
        .map(|d| d.join("tokenizer_config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let id_of = |key: &str| {
        cfg.get(key)
            .and_then(token_text)
            .and_then(|t| token_to_id.get(&t).copied())
    };
    let (bos, eos) = (id_of("bos_token"), id_of("eos_token"));
    let chat_template = cfg
        .get("chat_template")
        .and_then(Value::as_str)
        .map(str::to_string);
    let add_bos = cfg
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && bos.is_some();

    Ok(HfVocab {
        tokens,
        types,
        merges,
        patterns,
        nfc,
        ignore_merges,
        bos,
        eos,
        add_bos,
        chat_template,
        token_to_id,
        added,
    })
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`; a `tokenizer_config.json` in the same folder adds the
    /// chat template and the BOS/EOS tokens.
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let v = read_hf_vocab(path)?;
        let pre = PreTokenizer::from_patterns(&v.patterns).map_err(|e| err(path, e))?;
        let merge_refs: Vec<&str> = v.merges.iter().map(String::as_str).collect();
        let mut bpe = Bpe::with_options(&merge_refs, &v.token_to_id, pre, v.ignore_merges);
        bpe.nfc = v.nfc;
        let mut specials: Vec<u32> = v
            .added
            .iter()
            .map(|a| a.0)
            .filter(|&i| !v.tokens[i as usize].is_empty())
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(v.tokens[i as usize].len()));
        let mut eog: Vec<u32> = v.eos.into_iter().collect();
        crate::add_end_of_turn_tokens(&mut eog, &v.token_to_id, &v.types);
        Ok(Tokenizer {
            model: Model::Bpe(bpe),
            kind: format!("HF byte-level BPE{}", if v.nfc { " (NFC)" } else { "" }),
            tokens: v.tokens,
            types: v.types,
            token_to_id: v.token_to_id,
            specials,
            bos: v.bos,
            eos: v.eos,
            eot: None,
            add_bos: v.add_bos,
            add_eos: false,
            eog,
            chat_template: v.chat_template,
        })
    }
}
