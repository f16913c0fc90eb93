//! OpenAI's tiktoken encodings (r50k, p50k, cl100k, o200k): a rank file of base64 byte
//! strings, a split pattern and special tokens per encoding. A piece is one token if its bytes
//! have a rank; otherwise its bytes are merged pairwise, lowest-ranked merge first.

use crate::TokenizerError;
use fancy_regex::Regex;
use std::collections::HashMap;

const R50K: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const CL100K: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const O200K: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// The encodings llmos knows by name: (name, pattern, special tokens).
pub fn encoding(name: &str) -> Option<(&'static str, Vec<(&'static str, u32)>)> {
    Some(match name {
        "r50k_base" => (R50K, vec![("<|endoftext|>", 50256)]),
        "p50k_base" => (R50K, vec![("<|endoftext|>", 50256)]),
        "cl100k_base" => (
            CL100K,
            vec![
                ("<|endoftext|>", 100257),
                ("<|fim_prefix|>", 100258),
                ("<|fim_middle|>", 100259),
                ("<|fim_suffix|>", 100260),
                ("<|endofprompt|>", 100276),
            ],
        ),
        "o200k_base" => (
            O200K,
            vec![("<|endoftext|>", 199999), ("<|endofprompt|>", 200018)],
        ),
        _ => return None,
    })
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

/// Parses a rank file: one `base64 rank` pair per line.
pub fn parse_ranks(text: &str) -> Result<Vec<(Vec<u8>, u32)>, TokenizerError> {
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            TokenizerError::Metadata(format!(
                "rank file line {}: expected \"BASE64 RANK\"",
                i + 1
            ))
        };
        let (b, r) = line.split_once(' ').ok_or_else(bad)?;
        v.push((
            b64_decode(b).ok_or_else(bad)?,
            r.trim().parse().map_err(|_| bad())?,
        ));
    }
    Ok(v)
}

pub struct Tiktoken {
    ranks: HashMap<Vec<u8>, u32>,
    pattern: Regex,
}

impl Tiktoken {
    pub fn new(ranks: HashMap<Vec<u8>, u32>, pattern: &str) -> Result<Tiktoken, TokenizerError> {
        let pattern = Regex::new(pattern)
            .map_err(|e| TokenizerError::Metadata(format!("split pattern: {e}")))?;
        Ok(Tiktoken { ranks, pattern })
    }

    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut last = 0;
        for m in self.pattern.find_iter(text) {
            let Ok(m) = m else { break };
            // text the pattern skips (never with these patterns) is still encoded
            if m.start() > last {
                self.encode_piece(&text.as_bytes()[last..m.start()], out);
            }
            self.encode_piece(m.as_str().as_bytes(), out);
            last = m.end();
        }
        if last < text.len() {
            self.encode_piece(&text.as_bytes()[last..], out);
        }
    }

    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
            return;
        }
        // boundaries of the current parts; merge the adjacent pair whose joined bytes have
        // the lowest rank until no joined pair has one
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..bounds.len().saturating_sub(2) {
                if let Some(&r) = self.ranks.get(&piece[bounds[i]..bounds[i + 2]])
                    && best.is_none_or(|(b, _)| r < b)
                {
                    best = Some((r, i));
                }
            }
            let Some((_, i)) = best else { break };
            bounds.remove(i + 1);
        }
        for w in bounds.windows(2) {
            // every single byte has a rank in these encodings
            if let Some(&r) = self.ranks.get(&piece[w[0]..w[1]]) {
                out.push(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_all_padding_cases() {
        assert_eq!(b64_decode("IQ==").unwrap(), b"!");
        assert_eq!(b64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(b64_decode("aGV5").unwrap(), b"hey");
        assert!(b64_decode("a$==").is_none());
        assert!(parse_ranks("IQ== 0\nnot-a-line").is_err());
    }

    #[test]
    fn lowest_rank_merges_first() {
        let mut ranks: HashMap<Vec<u8>, u32> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        ranks.insert(b"bc".to_vec(), 256);
        ranks.insert(b"ab".to_vec(), 257);
        let t = Tiktoken::new(ranks, R50K).unwrap();
        let mut out = vec![];
        t.encode("abc", &mut out);
        assert_eq!(out, vec![b'a' as u32, 256]);
    }

    #[test]
    fn all_patterns_compile() {
        for n in ["r50k_base", "p50k_base", "cl100k_base", "o200k_base"] {
            Tiktoken::new(HashMap::new(), encoding(n).unwrap().0).unwrap();
        }
    }
}
