//! OpenAI's tiktoken encodings (r50k, p50k, cl100k, o200k): a rank file of base64 byte
//! strings, a split pattern and special tokens per encoding. A piece is one token if its bytes
//! have a rank; otherwise its bytes are merged pairwise, lowest-ranked merge first.

use crate::TokenizerError;
use regex::Regex;
use std::collections::HashMap;

// The split patterns of the encodings, minus their `\s+(?!\S)` alternative (whitespace
// not followed by a non-space): look-ahead would need a backtracking engine, so the linear
// `regex` crate runs these and `encode` gives the last whitespace character of a longer
// run back to the next piece, which is what that alternative does. Possessive quantifiers of
// the originals are plain here; with these character classes they match the same text.
const R50K: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
const CL100K: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+";
const O200K: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+",
);

/// Splits `text` with a look-ahead-free pattern (see the note on the patterns above) and
/// calls `f` with each piece; the pieces concatenate to `text`. `newline_alternative` says the
/// pattern has `\s*[\r\n]` alternatives before its final `\s+`.
pub fn split_pieces<'t>(
    pattern: &Regex,
    newline_alternative: bool,
    text: &'t str,
    mut f: impl FnMut(&'t str),
) {
    let mut pos = 0;
    while let Some(m) = pattern.find_at(text, pos) {
        let (start, mut end) = (m.start(), m.end());
        if start > pos {
            // text the pattern skips (never with these patterns) is still passed on
            f(&text[pos..start]);
        }
        // a whitespace-only match from the `\s+` alternative (those from the newline
        // alternatives end in \r or \n) that stops before a non-space leaves its last
        // character to the next piece, as `\s+(?!\S)` would
        let piece = &text[start..end];
        let from_newline_alt = newline_alternative && piece.ends_with(['\r', '\n']);
        if end < text.len()
            && !from_newline_alt
            && piece.chars().all(char::is_whitespace)
            && let Some((last, _)) = piece.char_indices().last().filter(|&(i, _)| i > 0)
        {
            end = start + last;
        }
        if end > start {
            f(&text[start..end]);
        }
        pos = end;
    }
    if pos < text.len() {
        f(&text[pos..]);
    }
}

/// Look-ahead-free split patterns by name, for the fast splitter: (pattern, has newline
/// alternatives).
pub fn fast_pattern(name: &str) -> Option<(&'static str, bool)> {
    Some(match name {
        "gpt2" | "r50k_base" | "p50k_base" => (R50K, false),
        "gpt4" | "cl100k_base" => (CL100K, true),
        "o200k_base" => (O200K, true),
        "llama3" => (LLAMA3, true),
        _ => return None,
    })
}

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

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

/// FNV-1a: rank lookups hash short byte strings millions of times per second, where the
/// default DoS-resistant SipHash was a fifth of the encode time. Keys are vocabulary entries,
/// not attacker-chosen table contents, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

pub struct Tiktoken {
    ranks: FastMap<Vec<u8>, u32>,
    pattern: Regex,
    /// The pattern has newline alternatives before `\s+` (cl100k, o200k), so whitespace
    /// matches ending in a newline come from those and keep their length.
    newline_alternative: bool,
}

impl Tiktoken {
    pub fn new(ranks: HashMap<Vec<u8>, u32>, pattern: &str) -> Result<Tiktoken, TokenizerError> {
        let pattern = Regex::new(pattern)
            .map_err(|e| TokenizerError::Metadata(format!("split pattern: {e}")))?;
        let newline_alternative = pattern.as_str().contains(r"\s*[\r\n]");
        Ok(Tiktoken {
            ranks: ranks.into_iter().collect(),
            pattern,
            newline_alternative,
        })
    }

    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        split_pieces(&self.pattern, self.newline_alternative, text, |piece| {
            self.encode_piece(piece.as_bytes(), out)
        });
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
