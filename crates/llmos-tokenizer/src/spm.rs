//! SentencePiece-style BPE (GGUF model type `llama`: Llama 2, Gemma): spaces become U+2581,
//! the highest-scoring adjacent pair whose concatenation is a token is merged until none is,
//! and characters without a token fall back to `<0xXX>` byte tokens.

use crate::TokenType;
use std::collections::HashMap;

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
        // symbols are byte ranges of `s`, one per character to start with
        let mut syms: Vec<(usize, usize)> = s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let merged = &s[syms[i].0..syms[i + 1].1];
                if let Some(&id) = vocab.get(merged) {
                    let sc = self.scores[id as usize];
                    // highest score wins; ties go to the leftmost pair
                    if best.is_none_or(|(b, _, _)| sc > b) {
                        best = Some((sc, i, id));
                    }
                }
            }
            let Some((_, i, _)) = best else { break };
            syms[i].1 = syms[i + 1].1;
            syms.remove(i + 1);
        }
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
}

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
    fn pieces_decode_to_bytes() {
        assert_eq!(decode_piece("▁hi", TokenType::Normal), b" hi");
        assert_eq!(decode_piece("<0x0A>", TokenType::Byte), b"\n");
    }
}
