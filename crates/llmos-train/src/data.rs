//! Token shards and their preparation from text.
//!
//! A shard is a 32-byte header — magic `LLMOSTOK`, version (u32 = 1), vocabulary size
//! (u32), token width in bytes (u32: 2 or 4), reserved u32, token count (u64) — then the
//! tokens, little-endian. A prepared data directory holds `train.bin`, `val.bin`, `val.txt`
//! (the held-out documents as text) and `meta.json` (the tokenizer, counts of tokens, bytes
//! and documents).

use crate::model::Rng;
use llmos_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LLMOSTOK";
const VERSION: u32 = 1;
const HEADER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn bad(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Bad {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |err| DataError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees
/// a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes `v` as pretty JSON, atomically.
pub fn write_json(path: &Path, v: &impl Serialize) -> Result<(), DataError> {
    write_atomic(
        path,
        serde_json::to_string_pretty(v)
            .expect("serializes")
            .as_bytes(),
    )
}

/// Serializes a shard: u16 tokens when the vocabulary fits, u32 otherwise.
pub fn shard_bytes(vocab: usize, tokens: &[u32]) -> Vec<u8> {
    let width: u32 = if vocab <= 1 << 16 { 2 } else { 4 };
    let mut out = Vec::with_capacity(HEADER + tokens.len() * width as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(vocab as u32).to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for &t in tokens {
        if width == 2 {
            out.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    out
}

/// A shard read back: its vocabulary size and tokens.
#[derive(Debug, PartialEq)]
pub struct Shard {
    pub vocab: usize,
    pub tokens: Vec<u32>,
}

/// Parses shard bytes; every field is checked, and every token must be inside the vocabulary.
pub fn parse_shard(path: &Path, b: &[u8]) -> Result<Shard, DataError> {
    if b.len() < HEADER {
        return Err(bad(
            path,
            format!("{} bytes, shorter than the 32-byte shard header", b.len()),
        ));
    }
    if &b[..8] != MAGIC {
        return Err(bad(path, "not a token shard (magic is not LLMOSTOK)"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(bad(
            path,
            format!("shard version {version}, this build reads {VERSION}"),
        ));
    }
    let vocab = u32_at(12) as usize;
    let width = u32_at(16) as usize;
    if width != 2 && width != 4 {
        return Err(bad(path, format!("token width {width} (must be 2 or 4)")));
    }
    let count = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
    let body = (b.len() - HEADER) as u64;
    if count.checked_mul(width as u64) != Some(body) {
        return Err(bad(
            path,
            format!(
                "header says {count} tokens of {width} bytes, the file holds {body} bytes after the header"
            ),
        ));
    }
    let tokens: Vec<u32> = b[HEADER..]
        .chunks_exact(width)
        .map(|c| {
            if width == 2 {
                u16::from_le_bytes([c[0], c[1]]) as u32
            } else {
                u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            }
        })
        .collect();
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= vocab)
    {
        return Err(bad(
            path,
            format!("token {i} is {t}, outside the vocabulary of {vocab}"),
        ));
    }
    Ok(Shard { vocab, tokens })
}

pub fn read_shard(path: &Path) -> Result<Shard, DataError> {
    let b = std::fs::read(path).map_err(io(path))?;
    parse_shard(path, &b)
}

/// How text becomes tokens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TokenizerSpec {
    /// One token per character seen in the data (sorted by code point).
    Char { chars: Vec<char> },
    /// One token per byte (vocabulary 256).
    Byte,
    /// A HF `tokenizer.json` kept in the data directory under `file`.
    Hf { file: String },
}

/// A loaded tokenizer for any spec.
pub enum Codec {
    Char(Vec<char>),
    Byte,
    Hf(Box<Tokenizer>),
}

impl Codec {
    pub fn vocab(&self) -> usize {
        match self {
            Codec::Char(c) => c.len(),
            Codec::Byte => 256,
            Codec::Hf(t) => t.vocab_size(),
        }
    }

    /// Tokens of `text`; characters outside a char vocabulary are an error naming them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match self {
            Codec::Char(chars) => text
                .chars()
                .map(|ch| {
                    chars
                        .binary_search(&ch)
                        .map(|i| i as u32)
                        .map_err(|_| format!("character {ch:?} is not in the vocabulary"))
                })
                .collect(),
            Codec::Byte => Ok(text.bytes().map(u32::from).collect()),
            Codec::Hf(t) => Ok(t.encode(text, false, false)),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Codec::Char(chars) => ids.iter().filter_map(|&i| chars.get(i as usize)).collect(),
            Codec::Byte => {
                String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>())
                    .into_owned()
            }
            Codec::Hf(t) => t.decode(ids),
        }
    }

    /// The token put before each document, if the vocabulary has one.
    pub fn doc_start(&self) -> Option<u32> {
        match self {
            Codec::Hf(t) => ["<|bos|>", "<|endoftext|>", "<s>", "<bos>"]
                .iter()
                .find_map(|s| t.token_id(s)),
            _ => None,
        }
    }
}

/// What `meta.json` of a data directory says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub version: u32,
    pub tokenizer: TokenizerSpec,
    pub vocab: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_bytes: usize,
    pub val_bytes: usize,
    pub train_docs: usize,
    pub val_docs: usize,
    pub val_fraction: f64,
    pub seed: u64,
    pub files: Vec<String>,
}

impl Meta {
    pub fn load(dir: &Path) -> Result<Meta, DataError> {
        Meta::load_file(&dir.join("meta.json"))
    }

    pub fn load_file(p: &Path) -> Result<Meta, DataError> {
        let s = std::fs::read_to_string(p).map_err(io(p))?;
        serde_json::from_str(&s).map_err(|e| bad(p, e.to_string()))
    }

    pub fn codec(&self, dir: &Path) -> Result<Codec, DataError> {
        Ok(match &self.tokenizer {
            TokenizerSpec::Char { chars } => Codec::Char(chars.clone()),
            TokenizerSpec::Byte => Codec::Byte,
            TokenizerSpec::Hf { file } => {
                let p = dir.join(file);
                Codec::Hf(Box::new(
                    Tokenizer::from_hf_json(&p).map_err(|e| bad(&p, e.to_string()))?,
                ))
            }
        })
    }
}

/// Documents of a text: pieces between runs of three or more newlines (two blank lines:
/// scene, chapter and article breaks in the corpora), trimmed, empty ones dropped.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            let mut j = i;
            while j < b.len() && b[j] == b'\n' {
                j += 1;
            }
            if j - i >= 3 {
                docs.push(&text[start..i]);
                start = j;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .map(|d| d.trim_matches('\n'))
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// Picks the validation documents: a seeded shuffle, then documents in that order until
/// they hold `frac` of the bytes (at least one, and never all of them). A document that
/// would overshoot the share by more than half is passed over (one huge file must not
/// become the whole validation set); if every one would, the smallest is taken.
pub fn pick_val(sizes: &[usize], frac: f64, seed: u64) -> Vec<bool> {
    let n = sizes.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng(seed ^ 0x5eed_da7a);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let total: usize = sizes.iter().sum();
    let want = (total as f64 * frac).ceil() as usize;
    let mut val = vec![false; n];
    let mut got = 0;
    let limit = want + want / 2;
    let mut picked = 0;
    for &i in &order {
        if got >= want || picked + 1 >= n || frac <= 0.0 {
            break;
        }
        if got + sizes[i] > limit.max(1) {
            continue;
        }
        val[i] = true;
        got += sizes[i];
        picked += 1;
    }
    if picked == 0 && n >= 2 {
        let smallest = (0..n).min_by_key(|&i| sizes[i]).expect("documents");
        val[smallest] = true;
    }
    val
}

/// Tokens of documents joined: char and byte vocabularies rejoin them with the blank lines
/// they were split at; subword vocabularies put their document-start token before each.
fn join_tokens(codec: &Codec, docs: &[&str]) -> Result<(Vec<u32>, usize), String> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let sep = match codec {
        Codec::Hf(_) => None,
        _ => Some(codec.encode("\n\n\n")?),
    };
    for (i, d) in docs.iter().enumerate() {
        if let Some(s) = &sep {
            if i > 0 {
                out.extend_from_slice(s);
                bytes += 3;
            }
        } else if let Some(bos) = codec.doc_start() {
            out.push(bos);
        }
        out.extend(codec.encode(d)?);
        bytes += d.len();
    }
    Ok((out, bytes))
}

/// Builds the char vocabulary of some texts.
pub fn char_vocab<'a>(texts: impl Iterator<Item = &'a str>) -> Vec<char> {
    let mut set = std::collections::BTreeSet::new();
    for t in texts {
        set.extend(t.chars());
        set.insert('\n');
    }
    set.into_iter().collect()
}

/// Tokenizes `texts` (name, contents) into `out`: train.bin, val.bin, meta.json.
pub fn prepare(
    texts: &[(String, String)],
    spec: TokenizerSpec,
    codec: &Codec,
    val_fraction: f64,
    seed: u64,
    out: &Path,
) -> Result<Meta, DataError> {
    let mut docs = Vec::new();
    for (_, t) in texts {
        docs.extend(split_documents(t));
    }
    if docs.len() < 2 {
        return Err(bad(
            out,
            format!(
                "{} document(s) in the input; need at least two to hold one out",
                docs.len()
            ),
        ));
    }
    let val = pick_val(
        &docs.iter().map(|d| d.len()).collect::<Vec<_>>(),
        val_fraction,
        seed,
    );
    let (tr, va): (Vec<_>, Vec<_>) = docs.iter().zip(&val).partition(|(_, v)| !**v);
    let tr: Vec<&str> = tr.into_iter().map(|(d, _)| *d).collect();
    let va: Vec<&str> = va.into_iter().map(|(d, _)| *d).collect();
    let (train, train_bytes) = join_tokens(codec, &tr).map_err(|e| bad(out, e))?;
    let (valt, val_bytes) = join_tokens(codec, &va).map_err(|e| bad(out, e))?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    // the held-out text itself, for evaluations outside training (e.g. `llmos eval bpb`)
    write_atomic(&out.join("val.txt"), va.join("\n\n\n").as_bytes())?;
    let vocab = codec.vocab();
    write_atomic(&out.join("train.bin"), &shard_bytes(vocab, &train))?;
    write_atomic(&out.join("val.bin"), &shard_bytes(vocab, &valt))?;
    let meta = Meta {
        version: 1,
        tokenizer: spec,
        vocab,
        train_tokens: train.len(),
        val_tokens: valt.len(),
        train_bytes,
        val_bytes,
        train_docs: tr.len(),
        val_docs: va.len(),
        val_fraction,
        seed,
        files: texts.iter().map(|(n, _)| n.clone()).collect(),
    };
    write_json(&out.join("meta.json"), &meta)?;
    Ok(meta)
}

/// b random windows of t + 1 tokens from `tokens`.
pub fn sample_batch(tokens: &[u32], b: usize, t: usize, rng: &mut Rng, out: &mut Vec<u32>) {
    assert!(
        tokens.len() > t + 1,
        "{} tokens cannot fill a window of {}",
        tokens.len(),
        t + 1
    );
    out.clear();
    for _ in 0..b {
        let s = rng.below(tokens.len() - t);
        out.extend_from_slice(&tokens[s..s + t + 1]);
    }
}

/// Consecutive non-overlapping windows of t + 1 tokens (at most `max`), for evaluation.
pub fn eval_windows(tokens: &[u32], t: usize, max: usize) -> Vec<&[u32]> {
    (0..)
        .map(|i| i * t)
        .take_while(|&s| s + t < tokens.len())
        .take(max)
        .map(|s| &tokens[s..s + t + 1])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_round_trips_in_both_widths() {
        let p = Path::new("x.bin");
        for vocab in [65usize, 70_000] {
            let toks: Vec<u32> = (0..1000).map(|i| (i * 37 % vocab) as u32).collect();
            let b = shard_bytes(vocab, &toks);
            let s = parse_shard(p, &b).unwrap();
            assert_eq!(
                s,
                Shard {
                    vocab,
                    tokens: toks
                }
            );
        }
    }

    #[test]
    fn malformed_shards_get_one_line_errors() {
        let p = Path::new("bad.bin");
        let good = shard_bytes(10, &[1, 2, 3]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..20].to_vec(), "shorter than"),
            (
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                "magic",
            ),
            (
                {
                    let mut b = good.clone();
                    b[8] = 9;
                    b
                },
                "version",
            ),
            (
                {
                    let mut b = good.clone();
                    b[16] = 3;
                    b
                },
                "width",
            ),
            (good[..good.len() - 1].to_vec(), "header says 3 tokens"),
            (
                {
                    let mut b = good.clone();
                    b[32] = 200;
                    b
                },
                "outside the vocabulary",
            ),
        ];
        for (b, want) in cases {
            let e = parse_shard(p, &b).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.starts_with("bad.bin") && !e.contains('\n'),
                "{e}"
            );
        }
        // every truncation of a good shard is refused, never a panic
        for n in 0..good.len() {
            assert!(parse_shard(p, &good[..n]).is_err());
        }
    }

    #[test]
    fn documents_split_at_two_blank_lines() {
        let t = "a\nb\n\nc\n\n\nd\n\n\n\n\ne\n\n\n";
        assert_eq!(split_documents(t), vec!["a\nb\n\nc", "d", "e"]);
    }

    #[test]
    fn validation_split_is_seeded_and_holds_documents_out() {
        let sizes = vec![100usize; 200];
        let a = pick_val(&sizes, 0.05, 1);
        assert_eq!(a, pick_val(&sizes, 0.05, 1));
        assert_ne!(a, pick_val(&sizes, 0.05, 2));
        assert_eq!(a.iter().filter(|v| **v).count(), 10);
        // never all documents, always at least one
        assert_eq!(pick_val(&[5, 5], 0.99, 1).iter().filter(|v| **v).count(), 1);
        assert_eq!(
            pick_val(&[5, 5], 0.001, 1).iter().filter(|v| **v).count(),
            1
        );
    }

    #[test]
    fn prepare_writes_shards_that_decode_to_the_text() {
        let dir = std::env::temp_dir().join(format!("llmos-prep-{}", std::process::id()));
        let text = (0..40)
            .map(|i| format!("doc {i}: to be or not"))
            .collect::<Vec<_>>()
            .join("\n\n\n");
        let texts = vec![("t.txt".to_string(), text.clone())];
        let chars = char_vocab(texts.iter().map(|(_, t)| t.as_str()));
        let codec = Codec::Char(chars.clone());
        let meta = prepare(&texts, TokenizerSpec::Char { chars }, &codec, 0.1, 3, &dir).unwrap();
        let tr = read_shard(&dir.join("train.bin")).unwrap();
        let va = read_shard(&dir.join("val.bin")).unwrap();
        assert_eq!((meta.train_docs, meta.val_docs), (36, 4));
        assert_eq!(tr.tokens.len(), meta.train_tokens);
        let (a, b) = (codec.decode(&tr.tokens), codec.decode(&va.tokens));
        assert_eq!(a.len() + b.len() + 3, text.len());
        for d in b.split("\n\n\n") {
            assert!(
                text.contains(d) && !a.contains(&format!("{d}\n")) && !a.ends_with(d),
                "{d}"
            );
        }
        assert_eq!(Meta::load(&dir).unwrap(), meta);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
