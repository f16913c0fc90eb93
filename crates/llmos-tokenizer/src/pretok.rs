//! Pre-tokenizers for byte-level BPE: the regex splits named by GGUF `tokenizer.ggml.pre`.
//!
//! A pre-tokenizer is a list of regexes applied in turn; each splits every current piece
//! into its matches and the text between matches (both kept), like the "Isolated" split
//! behaviour of HF `tokenizers` and llama.cpp's `unicode_regex_split`.

use fancy_regex::Regex;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const FALCON_PUNCT: &str = r"[\p{P}\$\+<=>\^~\|`]+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` name. Unknown names fall back to GPT-2's
    /// split (llama.cpp does the same for "default").
    pub fn for_name(name: &str) -> PreTokenizer {
        let pats: &[&str] = match name {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => &[LLAMA3],
            "qwen2" | "qwen35" | "deepseek-r1-qwen" | "megrez" => &[QWEN2],
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => &[r"\p{N}", GPT2],
            // falcon: punctuation runs first, then GPT-2's split, then groups of 3 digits
            "falcon" => &[FALCON_PUNCT, GPT2, r"[0-9][0-9][0-9]"],
            // DeepSeek Coder's Split sequence (its tokenizer.json): newlines, letter runs,
            // punctuation runs, CJK runs, single digits
            "deepseek-coder" => &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[\u{4e00}-\u{9fa5}\u{0800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
                r"\p{N}",
            ],
            // DeepSeek LLM's Split sequence: its letter class lists the cased letters (\p{LC}),
            // then ASCII/full-width punctuation, trailing whitespace, CJK runs, digit runs
            "deepseek-llm" => &[
                r"[\r\n]",
                r"\s?\p{LC}+",
                "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
                r"\s+$",
                "[\u{4e00}-\u{9fa5}\u{0800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
                r"\p{N}+",
            ],
            _ => &[GPT2],
        };
        PreTokenizer {
            regexes: pats
                .iter()
                .map(|p| Regex::new(p).expect("built-in pattern compiles"))
                .collect(),
        }
    }

    /// A pre-tokenizer from explicit patterns (a HF `tokenizer.json` Split sequence).
    pub fn from_patterns(patterns: &[String]) -> Result<PreTokenizer, String> {
        let regexes = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("split pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// The GGUF `tokenizer.ggml.pre` name whose split is exactly `patterns` (a HF
    /// tokenizer.json's Split sequence, ByteLevel's own regex included), if there is one.
    pub fn gguf_name(patterns: &[String]) -> Option<&'static str> {
        let p: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let llama3_hf = crate::train::pattern("llama3");
        Some(match p.as_slice() {
            [] => "default",
            [x] if *x == GPT2 => "gpt2",
            [x] if *x == LLAMA3 || Some(*x) == llama3_hf => "llama-bpe",
            [x] if *x == QWEN2 => "qwen2",
            [d, x] if *d == r"\p{N}" && *x == GPT2 => "smollm",
            _ => return None,
        })
    }

    /// GPT-2's split, which HF's ByteLevel pre-tokenizer applies when `use_regex` is set.
    pub fn gpt2_pattern() -> &'static str {
        GPT2
    }

    /// Splits `text` into pieces whose concatenation is `text`.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    // the built-in patterns cannot hit the backtrack limit on real text; if one
                    // ever does, the rest of the piece stays whole rather than being dropped
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_split_keeps_leading_space_with_words() {
        let p = PreTokenizer::for_name("gpt2");
        assert_eq!(
            p.split("Hello world  it's 42!"),
            vec!["Hello", " world", " ", " it", "'s", " 42", "!"]
        );
    }

    #[test]
    fn smollm_splits_digits_individually() {
        let p = PreTokenizer::for_name("smollm");
        assert_eq!(p.split("a 123"), vec!["a", " ", "1", "2", "3"]);
    }

    #[test]
    fn llama3_groups_three_digits() {
        let p = PreTokenizer::for_name("llama-bpe");
        assert_eq!(p.split("12345 ok"), vec!["123", "45", " ok"]);
    }

    #[test]
    fn pieces_always_concatenate_to_the_input() {
        for name in ["gpt2", "smollm", "llama3", "qwen2"] {
            let p = PreTokenizer::for_name(name);
            for s in [
                "",
                " ",
                "\n\n  x\t\ty",
                "日本語 テキスト 😀😀",
                "a'S'll  \r\n 1.5e10",
            ] {
                assert_eq!(p.split(s).concat(), s, "{name} {s:?}");
            }
        }
    }
}
