//! Byte-level BPE training. Text is split by a pre-tokenizer pattern into pieces; identical
//! pieces are counted once with their frequency; then merges are learned incrementally: pair
//! counts live in a table, a max-heap orders pairs by count (stale entries are skipped when
//! popped), and each merge touches only the pieces that contain the merged pair.
//! The result is written as a HF `tokenizer.json`, so other tools can read it.

use crate::bpe::byte_to_char;
use crate::pretok::PreTokenizer;
use std::collections::{BinaryHeap, HashMap, HashSet};

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<crate::tiktoken::Fnv>>;

/// Split patterns offered by name: GPT-4's (cl100k), Llama 3's and GPT-2's.
pub fn pattern(name: &str) -> Option<&'static str> {
    Some(match name {
        "gpt4" | "cl100k" => {
            r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
        }
        "llama3" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "gpt2" => r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        _ => return None,
    })
}

/// A trained vocabulary: 256 byte tokens, then one token per merge, then the special tokens.
pub struct Trained {
    /// Bytes of each token, by id.
    pub tokens: Vec<Vec<u8>>,
    /// Merges in the order learned, as token id pairs.
    pub merges: Vec<(u32, u32)>,
    pub specials: Vec<String>,
    pub pattern: String,
}

/// Counts pieces of `texts` under `pattern`. The named patterns run on the linear-time
/// splitter; any other pattern goes through the backtracking engine.
pub fn count_pieces<'a>(
    texts: impl Iterator<Item = &'a str>,
    pattern: &str,
) -> Result<HashMap<Vec<u8>, u64>, String> {
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    let fast = ["gpt4", "llama3", "gpt2"]
        .into_iter()
        .find(|n| self::pattern(n) == Some(pattern));
    if let Some((fp, nl)) = fast.and_then(crate::tiktoken::fast_pattern) {
        let re = regex::Regex::new(fp).map_err(|e| e.to_string())?;
        for t in texts {
            crate::tiktoken::split_pieces(&re, nl, t, |p| {
                *counts.entry(p.as_bytes().to_vec()).or_default() += 1
            });
        }
        return Ok(counts);
    }
    let pre = PreTokenizer::from_patterns(&[pattern.to_string()])?;
    for t in texts {
        for p in pre.split(t) {
            *counts.entry(p.as_bytes().to_vec()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Learns merges until the vocabulary (bytes + merges + specials) reaches `vocab_size` or no
/// pair occurs twice. `progress` is called with the number of merges done.
pub fn train(
    counts: &HashMap<Vec<u8>, u64>,
    vocab_size: usize,
    specials: &[String],
    pattern: &str,
    mut progress: impl FnMut(usize),
) -> Trained {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let n_merges = vocab_size.saturating_sub(256 + specials.len());
    // pieces in a fixed order (sorted) so training is deterministic
    let mut pieces: Vec<(&Vec<u8>, u64)> = counts.iter().map(|(k, &v)| (k, v)).collect();
    pieces.sort();
    let mut words: Vec<Vec<u32>> = pieces
        .iter()
        .map(|(p, _)| p.iter().map(|&b| b as u32).collect())
        .collect();
    let freq: Vec<u64> = pieces.iter().map(|p| p.1).collect();

    // pair -> count over all pieces, and pair -> pieces that (may) contain it; the piece
    // lists can hold stale or repeated entries, which a merge re-checks
    let mut pair_count: FastMap<(u32, u32), i64> = FastMap::default();
    let mut where_: FastMap<(u32, u32), Vec<u32>> = FastMap::default();
    for (wi, w) in words.iter().enumerate() {
        for p in w.windows(2) {
            *pair_count.entry((p[0], p[1])).or_default() += freq[wi] as i64;
            let list = where_.entry((p[0], p[1])).or_default();
            if list.last() != Some(&(wi as u32)) {
                list.push(wi as u32);
            }
        }
    }
    // max-heap by count; ties broken by the smaller pair for determinism
    let mut heap: BinaryHeap<(i64, std::cmp::Reverse<(u32, u32)>)> = pair_count
        .iter()
        .map(|(&p, &c)| (c, std::cmp::Reverse(p)))
        .collect();
    let mut merges = Vec::with_capacity(n_merges);
    while merges.len() < n_merges {
        let Some((c, std::cmp::Reverse(pair))) = heap.pop() else {
            break;
        };
        let current = pair_count.get(&pair).copied().unwrap_or(0);
        if c != current {
            // stale entry: re-queue with the true count if the pair still occurs
            if current > 0 {
                heap.push((current, std::cmp::Reverse(pair)));
            }
            continue;
        }
        if c < 2 {
            break;
        }
        let new_id = tokens.len() as u32;
        let mut bytes = tokens[pair.0 as usize].clone();
        bytes.extend_from_slice(&tokens[pair.1 as usize]);
        tokens.push(bytes);
        merges.push(pair);
        let mut touched: Vec<u32> = where_.remove(&pair).unwrap_or_default();
        touched.sort_unstable();
        touched.dedup();
        // pairs whose count grew go on the heap; those that shrank keep their (now too high)
        // heap entries, which are corrected when popped
        let mut grown: HashSet<(u32, u32)> = HashSet::new();
        for wi in touched {
            let wi = wi as usize;
            if !words[wi].windows(2).any(|p| (p[0], p[1]) == pair) {
                continue;
            }
            let f = freq[wi] as i64;
            let w = &mut words[wi];
            // take the word's pairs out, merge, put its pairs back
            for p in w.windows(2) {
                *pair_count.get_mut(&(p[0], p[1])).expect("counted pair") -= f;
            }
            let mut merged = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && w[i] == pair.0 && w[i + 1] == pair.1 {
                    merged.push(new_id);
                    i += 2;
                } else {
                    merged.push(w[i]);
                    i += 1;
                }
            }
            *w = merged;
            for p in w.windows(2) {
                let k = (p[0], p[1]);
                *pair_count.entry(k).or_default() += f;
                if k.0 == new_id || k.1 == new_id {
                    grown.insert(k);
                    let list = where_.entry(k).or_default();
                    if list.last() != Some(&(wi as u32)) {
                        list.push(wi as u32);
                    }
                }
            }
        }
        pair_count.remove(&pair);
        for k in grown {
            if let Some(&c) = pair_count.get(&k).filter(|&&c| c > 0) {
                heap.push((c, std::cmp::Reverse(k)));
            }
        }
        progress(merges.len());
    }
    Trained {
        tokens,
        merges,
        specials: specials.to_vec(),
        pattern: pattern.to_string(),
    }
}

impl Trained {
    /// The vocabulary as a HF `tokenizer.json` (byte-level BPE).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let table = byte_to_char();
        let text = |b: &[u8]| -> String { b.iter().map(|&x| table[x as usize]).collect() };
        let mut vocab = serde_json::Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            vocab.insert(text(t), serde_json::json!(i));
        }
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|&(a, b)| {
                format!(
                    "{} {}",
                    text(&self.tokens[a as usize]),
                    text(&self.tokens[b as usize])
                )
            })
            .collect();
        let added: Vec<serde_json::Value> = self
            .specials
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({"id": self.tokens.len() + i, "content": s, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The incremental trainer learns exactly what a naive trainer (recount every pair after
    /// every merge) learns.
    #[test]
    fn incremental_training_equals_naive_recount() {
        let text = "low lower lowest newer newest wider widest the the the then there";
        let counts = count_pieces([text].into_iter(), pattern("gpt2").unwrap()).unwrap();
        let t = train(&counts, 256 + 12, &[], pattern("gpt2").unwrap(), |_| {});
        // naive reference
        let mut pieces: Vec<(&Vec<u8>, u64)> = counts.iter().map(|(k, &v)| (k, v)).collect();
        pieces.sort();
        let mut words: Vec<Vec<u32>> = pieces
            .iter()
            .map(|(p, _)| p.iter().map(|&b| b as u32).collect())
            .collect();
        let mut naive = Vec::new();
        for next in 256u32..256 + 12 {
            let mut pc: HashMap<(u32, u32), u64> = HashMap::new();
            for (w, (_, f)) in words.iter().zip(&pieces) {
                for p in w.windows(2) {
                    *pc.entry((p[0], p[1])).or_default() += f;
                }
            }
            let Some((&best, &c)) = pc.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else {
                break;
            };
            if c < 2 {
                break;
            }
            naive.push(best);
            for w in words.iter_mut() {
                let mut m = Vec::new();
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && (w[i], w[i + 1]) == best {
                        m.push(next);
                        i += 2;
                    } else {
                        m.push(w[i]);
                        i += 1;
                    }
                }
                *w = m;
            }
        }
        assert_eq!(t.merges, naive);
        assert!(t.merges.len() >= 5);
    }

    /// The linear-time splitter and the backtracking engine split text the same way for
    /// every named pattern.
    #[test]
    fn fast_and_backtracking_splits_agree() {
        let text =
            "Hello  world\n\n  x\t\ty 12345 it's I'LL   \r\n  café 日本 😀😀 ;; --> a\n \n b   ";
        for name in ["gpt4", "llama3", "gpt2"] {
            let pat = pattern(name).unwrap();
            let fast = count_pieces([text].into_iter(), pat).unwrap();
            let pre = PreTokenizer::from_patterns(&[pat.to_string()]).unwrap();
            let mut slow: HashMap<Vec<u8>, u64> = HashMap::new();
            for p in pre.split(text) {
                *slow.entry(p.as_bytes().to_vec()).or_default() += 1;
            }
            assert_eq!(fast, slow, "{name}");
        }
    }
}
