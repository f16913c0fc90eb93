//! SentencePiece-style BPE (GGUF model type `llama`: Llama 2, Gemma): spaces become U+2581,
//! the highest-scoring adjacent pair whose concatenation is a token is merged until none is,
//! and characters without a token fall back to `<0xXX>` byte tokens.

use crate::TokenType;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

const SPACE: char = '\u{2581}';

pub struct Spm {
    scores: Vec<f32>,
    byte_ids: [Option<u32>; 256],
    add_space_prefix: bool,
    unk: Option<u32>,
}

impl Spm {
    pub fn new(
        scores: Vec<f32>,
        tokens: &[String],
        types: &[TokenType],
        add_space_prefix: bool,
        unk: Option<u32>,
    ) -> Spm {
        let mut byte_ids = [None; 256];
        for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
            if *ty == TokenType::Byte
                && let Some(h) = t.strip_prefix("<0x").and_then(|r| r.strip_suffix('>'))
                && let Ok(b) = u8::from_str_radix(h, 16)
            {
                byte_ids[b as usize] = Some(i as u32);
            }
        }
        Spm {
            scores,
            byte_ids,
            add_space_prefix,
            unk,
        }
    }

    /// Encodes one text fragment. `first` says the fragment starts the text or follows a
    /// special token, which is where a space prefix goes when the vocabulary wants one.
    pub fn encode(
        &self,
        text: &str,
        first: bool,
        vocab: &HashMap<String, u32>,
        out: &mut Vec<u32>,
    ) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            s.push(SPACE);
        }
        for c in text.chars() {
            s.push(if c == ' ' { SPACE } else { c });
        }
        let syms = self.merge(&s, vocab);
        for (a, b) in syms {
            match vocab.get(&s[a..b]) {
                Some(&id) => out.push(id),
                None => {
                    for &byte in &s.as_bytes()[a..b] {
                        if let Some(id) = self.byte_ids[byte as usize].or(self.unk) {
                            out.push(id)
                        }
                    }
                }
            }
        }
    }

    /// The pieces of `s` (byte ranges) after merging, highest-scoring pair first, ties to
    /// the leftmost: candidate pairs wait in a heap and symbols form a linked list, so a
    /// text of n characters costs O(n log n) lookups (rescanning every pair after each merge,
    /// as [`Spm::merge_ref`] does, took minutes over a fine-tuning set's 500 k tokens).
    fn merge(&self, s: &str, vocab: &HashMap<String, u32>) -> Vec<(usize, usize)> {
        // symbol i: byte range, neighbours (NONE at the ends); a merged-away symbol is empty
        const NONE: usize = usize::MAX;
        let mut span: Vec<(usize, usize)> = s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        let n = span.len();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut heap = BinaryHeap::new();
        let pair = |heap: &mut BinaryHeap<Cand>, span: &[(usize, usize)], l: usize, r: usize| {
            let (start, end) = (span[l].0, span[r].1);
            if let Some(&id) = vocab.get(&s[start..end]) {
                heap.push(Cand {
                    score: self.scores[id as usize],
                    start,
                    end,
                    left: l,
                    right: r,
                });
            }
        };
        for i in 1..n {
            pair(&mut heap, &span, i - 1, i);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (c.left, c.right);
            // stale when either side has merged since the pair was queued
            if next[l] != r || span[l].0 != c.start || span[r].1 != c.end || span[r].0 == span[r].1
            {
                continue;
            }
            span[l].1 = span[r].1;
            span[r] = (span[r].1, span[r].1);
            next[l] = next[r];
            if next[l] != NONE {
                prev[next[l]] = l;
            }
            if prev[l] != NONE {
                pair(&mut heap, &span, prev[l], l);
            }
            if next[l] != NONE {
                pair(&mut heap, &span, l, next[l]);
            }
        }
        span.into_iter().filter(|(a, b)| a < b).collect()
    }

    /// Reference of [`Spm::merge`]: every adjacent pair rescanned after each merge.
    #[cfg(test)]
    fn merge_ref(&self, s: &str, vocab: &HashMap<String, u32>) -> Vec<(usize, usize)> {
        let mut syms: Vec<(usize, usize)> = s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&id) = vocab.get(&s[syms[i].0..syms[i + 1].1]) {
                    let sc = self.scores[id as usize];
                    // highest score wins; ties go to the leftmost pair
                    if best.is_none_or(|(b, _)| sc > b) {
                        best = Some((sc, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            syms[i].1 = syms[i + 1].1;
            syms.remove(i + 1);
        }
        syms
    }
}

/// A pair of adjacent symbols whose concatenation (bytes start..end) is a token.
struct Cand {
    score: f32,
    start: usize,
    end: usize,
    left: usize,
    right: usize,
}

impl Ord for Cand {
    /// Higher score first; among equal scores the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.start.cmp(&self.start))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Cand {}

/// The bytes of a piece: U+2581 back to space, `<0xXX>` byte tokens to their byte.
pub fn decode_piece(text: &str, ty: TokenType) -> Vec<u8> {
    if ty == TokenType::Byte
        && let Some(b) = text
            .strip_prefix("<0x")
            .and_then(|r| r.strip_suffix('>'))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
    {
        return vec![b];
    }
    text.replace(SPACE, " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Spm, HashMap<String, u32>) {
        let mut tokens: Vec<String> = vec!["<unk>".into()];
        let mut types = vec![TokenType::Unknown];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TokenType::Byte);
        }
        for t in ["▁", "h", "i", "▁h", "hi", "▁hi"] {
            tokens.push(t.into());
            types.push(TokenType::Normal);
        }
        let mut scores = vec![0.0; tokens.len()];
        let n = tokens.len();
        scores[n - 3] = -5.0; // ▁h
        scores[n - 2] = -1.0; // hi
        scores[n - 1] = -2.0; // ▁hi
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        (Spm::new(scores, &tokens, &types, true, Some(0)), vocab)
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let (spm, vocab) = toy();
        let mut out = vec![];
        spm.encode("hi", true, &vocab, &mut out);
        // "▁" "h" "i": "hi" (-1) beats "▁h" (-5); then "▁" + "hi" = "▁hi"
        assert_eq!(out, vec![vocab["▁hi"]]);
        out.clear();
        spm.encode("hé", false, &vocab, &mut out);
        // no space prefix mid-text; é is not a token, so its two UTF-8 bytes are used
        assert_eq!(out, vec![vocab["h"], 1 + 0xC3, 1 + 0xA9]);
    }

    #[test]
    fn heap_merge_equals_the_rescanning_reference() {
        // a vocabulary of many overlapping pieces with tied scores, over a small alphabet,
        // so merge order and tie-breaking matter
        let alphabet = ['a', 'b', 'c', '▁', 'é'];
        let mut tokens: Vec<String> = vec!["<unk>".into()];
        let mut types = vec![TokenType::Unknown];
        let mut seed = 0x2545_f491_u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for c in alphabet {
            tokens.push(c.to_string());
            types.push(TokenType::Normal);
        }
        while tokens.len() < 120 {
            let len = 2 + rnd(4) as usize;
            let t: String = (0..len).map(|_| alphabet[rnd(5) as usize]).collect();
            if !tokens.contains(&t) {
                tokens.push(t);
                types.push(TokenType::Normal);
            }
        }
        let scores: Vec<f32> = (0..tokens.len()).map(|_| -(rnd(6) as f32)).collect();
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let spm = Spm::new(scores, &tokens, &types, false, Some(0));
        for _ in 0..500 {
            let len = rnd(60) as usize;
            let s: String = (0..len).map(|_| alphabet[rnd(5) as usize]).collect();
            assert_eq!(spm.merge(&s, &vocab), spm.merge_ref(&s, &vocab), "{s:?}");
        }
        assert!(spm.merge("", &vocab).is_empty());
    }

    #[test]
    fn pieces_decode_to_bytes() {
        assert_eq!(decode_piece("▁hi", TokenType::Normal), b" hi");
        assert_eq!(decode_piece("<0x0A>", TokenType::Byte), b"\n");
    }
}
