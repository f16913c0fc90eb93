//! Generated data with checkable answers: arithmetic word problems at difficulty levels
//! (the verifiable domain for evals, SFT and GRPO) with a held-out split that never meets
//! the training split, identity conversations, and the answer extraction the checkers use.

use crate::model::Rng;
use serde::{Deserialize, Serialize};

/// A problem with one integer answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub prompt: String,
    pub answer: i64,
}

/// Which side of the split a problem belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// FNV-1a of the problem text: decides the split, so the same question is always on the
/// same side whatever seed produced it.
fn text_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn split_of(prompt: &str) -> Split {
    if text_hash(prompt).is_multiple_of(5) {
        Split::Test
    } else {
        Split::Train
    }
}

const NAMES: [&str; 12] = [
    "Tom", "Ana", "Ravi", "Mei", "Sam", "Lena", "Omar", "Kate", "Yuki", "Ben", "Zoe", "Ivan",
];
const THINGS: [&str; 10] = [
    "apples", "marbles", "books", "stamps", "coins", "pencils", "cards", "shells", "stickers",
    "cookies",
];

/// One problem of `level` (1 to 5):
/// 1: a + b with both up to 30;  2: a + b or a - b, two digits;  3: a x b with a one-digit
/// factor, or a + b - c;  4: word problems of two steps;  5: word problems of three steps
/// with a product.
pub fn arith_problem(level: u32, rng: &mut Rng) -> Problem {
    let mut r = |lo: i64, hi: i64| lo + rng.below((hi - lo + 1) as usize) as i64;
    match level {
        0 | 1 => {
            let (a, b) = (r(0, 30), r(0, 30));
            Problem {
                prompt: format!("What is {a} + {b}?"),
                answer: a + b,
            }
        }
        2 => {
            let (a, b) = (r(10, 99), r(10, 99));
            if r(0, 1) == 0 {
                Problem {
                    prompt: format!("What is {a} + {b}?"),
                    answer: a + b,
                }
            } else {
                let (a, b) = (a.max(b), a.min(b));
                Problem {
                    prompt: format!("What is {a} - {b}?"),
                    answer: a - b,
                }
            }
        }
        3 => {
            if r(0, 1) == 0 {
                let (a, b) = (r(11, 99), r(2, 9));
                Problem {
                    prompt: format!("What is {a} * {b}?"),
                    answer: a * b,
                }
            } else {
                let (a, b, c) = (r(10, 99), r(10, 99), r(1, 20));
                Problem {
                    prompt: format!("What is {a} + {b} - {c}?"),
                    answer: a + b - c,
                }
            }
        }
        4 => {
            let (n, t) = (NAMES[r(0, 11) as usize], THINGS[r(0, 9) as usize]);
            let (a, b, c) = (r(5, 60), r(2, 40), r(1, 30));
            let c = c.min(a + b);
            Problem {
                prompt: format!(
                    "{n} has {a} {t}. {n} gets {b} more {t} and then gives away {c}. How many {t} does {n} have now?"
                ),
                answer: a + b - c,
            }
        }
        _ => {
            let (n, t) = (NAMES[r(0, 11) as usize], THINGS[r(0, 9) as usize]);
            let (boxes, each, extra, lost) = (r(2, 9), r(3, 25), r(1, 40), r(1, 20));
            let total = boxes * each + extra;
            let lost = lost.min(total);
            Problem {
                prompt: format!(
                    "{n} buys {boxes} boxes with {each} {t} in each box, and finds {extra} more {t}. Then {n} loses {lost} {t}. How many {t} does {n} have?"
                ),
                answer: total - lost,
            }
        }
    }
}

/// `n` distinct problems of `level` on one side of the split, from `seed`.
pub fn arith_set(level: u32, split: Split, n: usize, seed: u64) -> Vec<Problem> {
    let mut rng = Rng(seed ^ ((level as u64) << 32));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    // level 1 has only 961 questions: stop when the space is exhausted
    let mut misses = 0;
    while out.len() < n && misses < 10_000 {
        let p = arith_problem(level, &mut rng);
        if split_of(&p.prompt) != split || !seen.insert(p.prompt.clone()) {
            misses += 1;
            continue;
        }
        misses = 0;
        out.push(p);
    }
    out
}

/// The last integer in `text` (commas between digits ignored, a leading minus kept), the
/// convention of GSM8K-style exact-match checking.
pub fn last_number(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        if !b[i].is_ascii_digit() {
            continue;
        }
        let end = i + 1;
        let mut start = i;
        while start > 0
            && (b[start - 1].is_ascii_digit()
                || (b[start - 1] == b',' && start >= 2 && b[start - 2].is_ascii_digit()))
        {
            start -= 1;
        }
        let digits: String = text[start..end].chars().filter(|c| *c != ',').collect();
        let neg = start > 0 && b[start - 1] == b'-';
        let v: i64 = digits.parse().ok()?;
        return Some(if neg { -v } else { v });
    }
    None
}

/// The reply an assistant trained here gives to an arithmetic problem.
pub fn arith_reply(p: &Problem) -> String {
    format!("The answer is {}.", p.answer)
}

/// Identity conversations: who the model is, asked in many ways.
pub fn identity_pairs(name: &str, rng: &mut Rng, n: usize) -> Vec<(String, String)> {
    const Q: [&str; 10] = [
        "Who are you?",
        "What is your name?",
        "What are you?",
        "Hi! Who am I talking to?",
        "Tell me about yourself.",
        "Are you a human?",
        "Who made you?",
        "hello, what's your name",
        "What kind of assistant are you?",
        "Introduce yourself please.",
    ];
    let a = [
        format!("I am {name}, a small language model trained from scratch with llmos."),
        format!("My name is {name}. I am a small assistant model made with llmos."),
        format!(
            "I'm {name}, a language model. I was pretrained and fine-tuned with llmos on an ordinary computer."
        ),
        format!("Hello! I am {name}, a small AI assistant trained with llmos. I am not a human."),
    ];
    (0..n)
        .map(|_| {
            (
                Q[rng.below(Q.len())].to_string(),
                a[rng.below(a.len())].clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_number_reads_the_final_answer() {
        assert_eq!(last_number("The answer is 42."), Some(42));
        assert_eq!(last_number("3 + 4 = 7, so 1,234 apples"), Some(1234));
        assert_eq!(last_number("it went to -5"), Some(-5));
        assert_eq!(last_number("#### 18"), Some(18));
        assert_eq!(last_number("no digits"), None);
        assert_eq!(last_number("a,5"), Some(5));
        // too long for i64: not a number we can check
        assert_eq!(last_number("99999999999999999999999"), None);
    }

    #[test]
    fn splits_are_disjoint_and_answers_are_right() {
        for level in 1..=5 {
            let train = arith_set(level, Split::Train, 60, 1);
            let test = arith_set(level, Split::Test, 30, 2);
            assert!(!train.is_empty() && !test.is_empty());
            for p in &test {
                assert!(train.iter().all(|q| q.prompt != p.prompt));
                assert_eq!(split_of(&p.prompt), Split::Test);
            }
            // the answers the generator states are what the text says
            for p in train.iter().chain(&test) {
                if let Some(e) = p
                    .prompt
                    .strip_prefix("What is ")
                    .and_then(|s| s.strip_suffix('?'))
                {
                    let toks: Vec<&str> = e.split(' ').collect();
                    let mut v: i64 = toks[0].parse().unwrap();
                    for w in toks[1..].chunks(2) {
                        let x: i64 = w[1].parse().unwrap();
                        v = match w[0] {
                            "+" => v + x,
                            "-" => v - x,
                            "*" => v * x,
                            o => panic!("{o}"),
                        };
                    }
                    assert_eq!(v, p.answer, "{}", p.prompt);
                }
                assert!(p.answer >= 0, "{}", p.prompt);
            }
        }
        // same seed, same problems
        assert_eq!(
            arith_set(4, Split::Test, 10, 9),
            arith_set(4, Split::Test, 10, 9)
        );
    }
}
