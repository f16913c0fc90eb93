//! WordPiece (GGUF model type `bert`): text is NFD-normalized, accents dropped, lowercased and split into
//! words at whitespace, and around punctuation, ASCII symbols and CJK ideographs (each of those
//! is a word of its own); each word, prefixed with U+2581 (how GGUF stores word-initial
//! pieces; continuations are stored without BERT's "##"), is cut greedily into the longest
//! pieces the vocabulary has. A word that cannot be cut completely becomes the unknown token.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

pub struct Wpm {
    unk: Option<u32>,
    max_len: usize,
}

struct Classes {
    punct: Regex,
    symbol: Regex,
    control: Regex,
    mark: Regex,
}

fn classes() -> &'static Classes {
    static C: OnceLock<Classes> = OnceLock::new();
    C.get_or_init(|| Classes {
        punct: Regex::new(r"^\p{P}$").unwrap(),
        symbol: Regex::new(r"^\p{S}$").unwrap(),
        control: Regex::new(r"^\p{C}$").unwrap(),
        mark: Regex::new(r"^\p{Mn}$").unwrap(),
    })
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// Lowercases a character to one character (a multi-character lowercasing keeps its first).
fn lower(c: char) -> char {
    let mut l = c.to_lowercase();
    l.next().unwrap_or(c)
}

/// Splits text into the words WordPiece then cuts.
pub fn words(text: &str) -> Vec<String> {
    let cls = classes();
    let mut words = vec![String::new()];
    let mut buf = [0u8; 4];
    for c in text.nfd() {
        if c.is_whitespace() {
            if !words.last().unwrap().is_empty() {
                words.push(String::new());
            }
            continue;
        }
        let s: &str = c.encode_utf8(&mut buf);
        // accents are stripped: after NFD they are separate non-spacing marks
        if c == '\0' || c == '\u{fffd}' || cls.control.is_match(s) || cls.mark.is_match(s) {
            continue;
        }
        let l = lower(c);
        if cls.punct.is_match(s) || ((c as u32) < 0x7f && cls.symbol.is_match(s)) || is_cjk(c) {
            if !words.last().unwrap().is_empty() {
                words.push(String::new());
            }
            words.last_mut().unwrap().push(l);
            words.push(String::new());
        } else {
            words.last_mut().unwrap().push(l);
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

impl Wpm {
    pub fn new(tokens: &[String], unk: Option<u32>) -> Wpm {
        Wpm {
            unk,
            max_len: tokens.iter().map(String::len).max().unwrap_or(1),
        }
    }

    pub fn encode(&self, text: &str, vocab: &HashMap<String, u32>, out: &mut Vec<u32>) {
        for word in words(text) {
            let w = format!("\u{2581}{word}");
            let start = out.len();
            let mut i = 0;
            let mut complete = true;
            while i < w.len() {
                // longest piece starting at byte i (`get` is None off character boundaries)
                let mut j = (i + self.max_len).min(w.len());
                let mut found = None;
                while j > i {
                    if let Some(&id) = w.get(i..j).and_then(|p| vocab.get(p)) {
                        found = Some((id, j));
                        break;
                    }
                    j -= 1;
                }
                match found {
                    Some((id, end)) => {
                        out.push(id);
                        i = end;
                    }
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                out.truncate(start);
            }
            if out.len() == start {
                out.extend(self.unk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_space_punctuation_and_cjk() {
        assert_eq!(
            words("Hello, World!  日本"),
            vec!["hello", ",", "world", "!", "日", "本"]
        );
        assert_eq!(words(" \t\n"), Vec::<String>::new());
        // accents go: NFD splits them off as non-spacing marks, which are dropped
        assert_eq!(words("Äpfel café"), vec!["apfel", "cafe"]);
    }

    #[test]
    fn greedy_longest_match_with_unknown_fallback() {
        let toks: Vec<String> = [
            "[UNK]",
            "\u{2581}un",
            "\u{2581}unaff",
            "able",
            "aff",
            "\u{2581}x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let vocab: HashMap<String, u32> = toks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let w = Wpm::new(&toks, Some(0));
        let mut out = vec![];
        w.encode("unaffable x yz", &vocab, &mut out);
        assert_eq!(out, vec![2, 3, 5, 0]);
    }
}
