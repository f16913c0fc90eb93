//! Byte-level BPE (GPT-2 style): bytes are mapped to printable characters, pre-tokenized
//! pieces are merged pairwise by rank.

use crate::pretok::PreTokenizer;
use std::collections::HashMap;

/// GPT-2's byte -> char table: printable Latin-1 bytes map to themselves, the rest to
/// U+0100 onwards, so every byte has a visible, non-whitespace stand-in.
pub fn byte_to_char() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        t[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    t
}

/// The inverse of [`byte_to_char`] for one token's text; characters outside the table
/// (added tokens written in plain text) pass through as UTF-8.
pub fn decode_bytelevel(text: &str) -> Vec<u8> {
    static INVERSE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    let inv = INVERSE.get_or_init(|| {
        byte_to_char()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    });
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match inv.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

pub struct Bpe {
    /// Unicode NFC before splitting (HF normalizer "NFC", as Qwen uses).
    pub nfc: bool,
    /// Take a whole pre-tokenized piece as one token when the vocabulary has it, before
    /// any merging (Llama 3's `ignore_merges`).
    ignore_merges: Option<HashMap<String, u32>>,
    /// (left id, right id) -> (rank, merged id)
    ranks: HashMap<(u32, u32), (u32, u32)>,
    /// byte -> id of its single-character token (None if the vocab lacks it)
    byte_ids: [Option<u32>; 256],
    pre: PreTokenizer,
}

impl Bpe {
    #[cfg(test)]
    pub fn new(merges: &[&str], vocab: &HashMap<String, u32>, pre: PreTokenizer) -> Bpe {
        Self::with_options(merges, vocab, pre, false)
    }

    pub fn with_options(
        merges: &[&str],
        vocab: &HashMap<String, u32>,
        pre: PreTokenizer,
        ignore_merges: bool,
    ) -> Bpe {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                continue;
            };
            let (Some(&ia), Some(&ib), Some(&im)) =
                (vocab.get(a), vocab.get(b), vocab.get(&format!("{a}{b}")))
            else {
                continue;
            };
            ranks.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let table = byte_to_char();
        let mut byte_ids = [None; 256];
        for (b, c) in table.iter().enumerate() {
            byte_ids[b] = vocab.get(&c.to_string()).copied();
        }
        let ignore_merges = ignore_merges.then(|| vocab.clone());
        Bpe {
            nfc: false,
            ignore_merges,
            ranks,
            byte_ids,
            pre,
        }
    }

    /// How many of the 256 bytes have a token (all, for a vocabulary that can encode any
    /// text; some, like Falcon's, lack a few and drop those bytes, as llama.cpp and HF do).
    pub fn byte_coverage(&self) -> usize {
        self.byte_ids.iter().filter(|b| b.is_some()).count()
    }

    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        if self.nfc {
            use unicode_normalization::UnicodeNormalization;
            let t: String = text.nfc().collect();
            for piece in self.pre.split(&t) {
                self.encode_piece(piece.as_bytes(), out);
            }
            return;
        }
        for piece in self.pre.split(text) {
            self.encode_piece(piece.as_bytes(), out);
        }
    }

    fn encode_piece(&self, bytes: &[u8], out: &mut Vec<u32>) {
        if let Some(vocab) = &self.ignore_merges {
            let table = byte_to_char();
            let text: String = bytes.iter().map(|&b| table[b as usize]).collect();
            if let Some(&id) = vocab.get(&text) {
                out.push(id);
                return;
            }
        }
        // one symbol per byte; bytes without a token are dropped (byte-level vocabularies
        // always have all 256)
        let mut syms: Vec<u32> = bytes
            .iter()
            .filter_map(|&b| self.byte_ids[b as usize])
            .collect();
        // merge the lowest-ranked adjacent pair until none is mergeable; pieces are short
        // (words), so the quadratic scan is cheaper than a heap here
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.ranks.get(&(syms[i], syms[i + 1]))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, i, merged));
                }
            }
            let Some((rank, _, merged)) = best else { break };
            // merge every occurrence of this pair left to right, like the reference BPE
            let mut i = 0;
            let mut next = Vec::with_capacity(syms.len());
            while i < syms.len() {
                if i + 1 < syms.len()
                    && self
                        .ranks
                        .get(&(syms[i], syms[i + 1]))
                        .is_some_and(|&(r, _)| r == rank)
                {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(syms[i]);
                    i += 1;
                }
            }
            syms = next;
        }
        out.extend_from_slice(&syms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_and_roundtrips() {
        let t = byte_to_char();
        let mut seen = std::collections::HashSet::new();
        for c in t {
            assert!(seen.insert(c));
        }
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        let s: String = "héllo\n".bytes().map(|b| t[b as usize]).collect();
        assert_eq!(decode_bytelevel(&s), "héllo\n".as_bytes());
    }

    #[test]
    fn merges_apply_by_rank() {
        let t = byte_to_char();
        let mut vocab = HashMap::new();
        for (i, c) in t.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
        }
        vocab.insert("ab".into(), 256);
        vocab.insert("bc".into(), 257);
        vocab.insert("abc".into(), 258);
        // "b c" ranks before "a b": "abc" -> a + bc (no "a bc" merge) -> [a, bc]
        let bpe = Bpe::new(
            &["b c", "a b", "ab c"],
            &vocab,
            PreTokenizer::for_name("gpt2"),
        );
        let mut out = vec![];
        bpe.encode("abc", &mut out);
        assert_eq!(out, vec![b'a' as u32, 257]);
        let bpe = Bpe::new(
            &["a b", "ab c", "b c"],
            &vocab,
            PreTokenizer::for_name("gpt2"),
        );
        let mut out = vec![];
        bpe.encode("abc", &mut out);
        assert_eq!(out, vec![258]);
    }
}
