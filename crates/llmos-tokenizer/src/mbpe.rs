//! Merge-ranked BPE over SentencePiece-style text (GGUF model type `gemma4`): spaces become
//! U+2581, every digit stands alone, and the rest is merged pairwise by merge rank, starting
//! from single characters; characters without a token fall back to `<0xXX>` byte tokens.

use crate::TokenType;
use std::collections::HashMap;

const SPACE: char = '\u{2581}';

pub struct MergeBpe {
    /// (left id, right id) -> (rank, merged id)
    ranks: HashMap<(u32, u32), (u32, u32)>,
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
}

impl MergeBpe {
    pub fn new(
        merges: &[&str],
        tokens: &[String],
        types: &[TokenType],
        vocab: &HashMap<String, u32>,
        unk: Option<u32>,
    ) -> MergeBpe {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // the separator is the one space; pieces themselves use U+2581 for spaces
            let Some((a, b)) = m.split_once(' ') else {
                continue;
            };
            if let (Some(&ia), Some(&ib), Some(&im)) =
                (vocab.get(a), vocab.get(b), vocab.get(&format!("{a}{b}")))
            {
                ranks.entry((ia, ib)).or_insert((rank as u32, im));
            }
        }
        let mut byte_ids = [None; 256];
        for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
            if *ty == TokenType::Byte
                && let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|r| r.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                byte_ids[b as usize] = Some(i as u32);
            }
        }
        MergeBpe {
            ranks,
            byte_ids,
            unk,
        }
    }

    pub fn encode(&self, text: &str, vocab: &HashMap<String, u32>, out: &mut Vec<u32>) {
        let s: String = text
            .chars()
            .map(|c| if c == ' ' { SPACE } else { c })
            .collect();
        // pieces: each ASCII digit alone, everything between digits together
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if c.is_ascii_digit() {
                if i > start {
                    self.encode_piece(&s[start..i], vocab, out);
                }
                self.encode_piece(&s[i..i + 1], vocab, out);
                start = i + 1;
            }
        }
        if start < s.len() {
            self.encode_piece(&s[start..], vocab, out);
        }
    }

    fn encode_piece(&self, piece: &str, vocab: &HashMap<String, u32>, out: &mut Vec<u32>) {
        // symbols: Some(id) for characters with a token, None for those that need bytes
        let mut syms: Vec<Result<u32, char>> = piece
            .chars()
            .map(|c| {
                let mut b = [0u8; 4];
                vocab.get(&*c.encode_utf8(&mut b)).copied().ok_or(c)
            })
            .collect();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let (Ok(a), Ok(b)) = (syms[i], syms[i + 1])
                    && let Some(&(rank, merged)) = self.ranks.get(&(a, b))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, i, merged));
                }
            }
            let Some((_, i, merged)) = best else { break };
            syms[i] = Ok(merged);
            let _right = syms.remove(i + 1);
        }
        for s in syms {
            match s {
                Ok(id) => out.push(id),
                Err(c) => {
                    let mut b = [0u8; 4];
                    for &byte in c.encode_utf8(&mut b).as_bytes() {
                        if let Some(id) = self.byte_ids[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_stand_alone_spaces_merge_by_rank_and_bytes_fill_gaps() {
        let mut toks: Vec<String> = vec!["<unk>".into()];
        let mut types = vec![TokenType::Unknown];
        for b in 0..=255u8 {
            toks.push(format!("<0x{b:02X}>"));
            types.push(TokenType::Byte);
        }
        for t in ["▁", "a", "b", "1", "2", "▁a", "ab", "▁ab", "12"] {
            toks.push(t.into());
            types.push(TokenType::Normal);
        }
        let vocab: HashMap<String, u32> = toks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let m = MergeBpe::new(
            &["a b", "▁ ab", "▁ a", "1 2"],
            &toks,
            &types,
            &vocab,
            Some(0),
        );
        let mut out = vec![];
        m.encode(" ab12é", &vocab, &mut out);
        // "a b" ranks first, then "▁ ab"; the digits never merge ("1 2" would); é is 2 bytes
        assert_eq!(
            out,
            vec![vocab["▁ab"], vocab["1"], vocab["2"], 1 + 0xC3, 1 + 0xA9]
        );
    }
}
