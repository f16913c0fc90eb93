//! BIG-bench multiple-choice tasks (the JSON `task.json` format of the `bigbench` package),
//! scored by log-likelihood as BIG-bench's `multiple_choice_grade` does: each choice's
//! log-probability given the prompt is summed over its tokens, the highest wins, and the
//! item scores that choice's `target_scores` value (1 for the right answer of an ordinary
//! task). Zero-shot.
//!
//! The prompt follows BIG-bench's JSON task defaults: `task_prefix` + `example_input_prefix`
//! ("\nQ: ") + input (+ when `append_choices_to_input`, the default, `choice_prefix`
//! ("\n  choice: ") before each choice, in sorted order where BIG-bench shuffles them with
//! its seed) + `example_output_prefix` ("\nA: "). Prompt and choice are tokenized
//! separately (the prompt with the model's BOS), as BIG-bench's reference models do.

use llmos_model::{KvCache, Model, ModelError};
use llmos_tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::Value;

/// One multiple-choice example: the input and each choice with its score.
#[derive(Clone, Debug)]
pub struct Example {
    pub input: String,
    pub choices: Vec<(String, f64)>,
}

/// A multiple-choice task read from a `task.json`.
#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    task_prefix: String,
    input_prefix: String,
    output_prefix: String,
    choice_prefix: String,
    append_choices: bool,
    pub examples: Vec<Example>,
}

fn text_field(j: &Value, key: &str, default: &str) -> Result<String, String> {
    match j.get(key) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("\"{key}\" is not a string")),
    }
}

impl Task {
    /// Parses a task.json; `what` names it in errors. Examples without `target_scores`
    /// (generative ones) make it an error: only multiple-choice tasks are scored here.
    pub fn parse(text: &str, what: &str) -> Result<Task, String> {
        let err = |m: String| format!("{what}: {m}");
        let j: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let examples_j = j
            .get("examples")
            .and_then(Value::as_array)
            .ok_or_else(|| err("no \"examples\" list (a programmatic task?)".into()))?;
        let mut examples = Vec::with_capacity(examples_j.len());
        for (i, e) in examples_j.iter().enumerate() {
            let input = e
                .get("input")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("example {i}: no \"input\" string")))?;
            let scores = e
                .get("target_scores")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    err(format!(
                        "example {i}: no \"target_scores\" (not a multiple-choice task)"
                    ))
                })?;
            let mut choices = Vec::with_capacity(scores.len());
            for (c, s) in scores {
                let s = s
                    .as_f64()
                    .ok_or_else(|| err(format!("example {i}: score of {c:?} is not a number")))?;
                choices.push((c.clone(), s));
            }
            if choices.len() < 2 {
                return Err(err(format!("example {i}: fewer than two choices")));
            }
            if choices.iter().any(|(c, _)| c.is_empty()) {
                return Err(err(format!("example {i}: an empty choice")));
            }
            // sorted, as BIG-bench sorts before its seeded shuffle
            choices.sort_by(|a, b| a.0.cmp(&b.0));
            examples.push(Example {
                input: input.to_string(),
                choices,
            });
        }
        if examples.is_empty() {
            return Err(err("no examples".into()));
        }
        let append_choices = match j.get("append_choices_to_input") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("\"append_choices_to_input\" is not a boolean".into())),
        };
        Ok(Task {
            name: text_field(&j, "name", what).map_err(err)?,
            task_prefix: text_field(&j, "task_prefix", "").map_err(err)?,
            input_prefix: text_field(&j, "example_input_prefix", "\nQ: ").map_err(err)?,
            output_prefix: text_field(&j, "example_output_prefix", "\nA: ").map_err(err)?,
            choice_prefix: text_field(&j, "choice_prefix", "\n  choice: ").map_err(err)?,
            append_choices,
            examples,
        })
    }

    /// The prompt of one example (see the module documentation).
    pub fn prompt(&self, e: &Example) -> String {
        let mut input = e.input.clone();
        if self.append_choices {
            for (c, _) in &e.choices {
                input.push_str(&self.choice_prefix);
                input.push_str(c);
            }
        }
        format!(
            "{}{}{}{}",
            self.task_prefix, self.input_prefix, input, self.output_prefix
        )
    }
}

/// log softmax(logits)[id], in f64.
fn log_prob(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

/// Sum of log p(choice token | prompt, earlier choice tokens) for each choice. The prompt is
/// run once; each choice continues from its cached keys and values.
pub fn choice_log_probs(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    choices: &[Vec<u32>],
) -> Result<Vec<f64>, ModelError> {
    model.truncate_cache(cache, 0);
    let last = model.forward(cache, prompt, false)?;
    let mut out = Vec::with_capacity(choices.len());
    for c in choices {
        let Some(&first) = c.first() else {
            out.push(0.0);
            continue;
        };
        let mut lp = log_prob(&last, first);
        if c.len() > 1 {
            model.truncate_cache(cache, prompt.len());
            let logits = model.forward(cache, &c[..c.len() - 1], true)?;
            let v = logits.len() / (c.len() - 1);
            for (row, &next) in logits.chunks_exact(v).zip(&c[1..]) {
                lp += log_prob(row, next);
            }
        }
        out.push(lp);
    }
    Ok(out)
}

/// One scored example.
#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    pub prompt: String,
    /// Each choice with its log-probability.
    pub choices: Vec<(String, f64)>,
    pub chosen: String,
    /// The chosen choice's target score.
    pub grade: f64,
    /// The best score any choice has (the grade of a perfect answer).
    pub best: f64,
    /// Prompt tokens dropped from the front to fit the context (0 normally).
    pub truncated: usize,
}

/// Scores `task`'s examples (at most `limit`), calling `each` after every one.
pub fn run(
    model: &Model,
    tok: &Tokenizer,
    ctx: usize,
    task: &Task,
    limit: usize,
    each: &mut dyn FnMut(&Scored),
) -> Result<Vec<Scored>, String> {
    let mut cache = model.new_cache(ctx);
    let mut out = Vec::new();
    for e in task.examples.iter().take(limit) {
        let prompt = task.prompt(e);
        let mut ids = tok.encode(&prompt, true, false);
        let choices: Vec<Vec<u32>> = e
            .choices
            .iter()
            .map(|(c, _)| tok.encode(c, false, false))
            .collect();
        let longest = choices.iter().map(Vec::len).max().unwrap_or(0);
        if longest + 1 > ctx {
            return Err(format!(
                "a choice of {longest} tokens does not fit the context of {ctx}"
            ));
        }
        let room = ctx - longest;
        let truncated = ids.len().saturating_sub(room);
        ids.drain(..truncated);
        let lps = choice_log_probs(model, &mut cache, &ids, &choices).map_err(|e| e.to_string())?;
        let (bi, _) = lps
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            });
        let s = Scored {
            prompt,
            choices: e
                .choices
                .iter()
                .zip(&lps)
                .map(|((c, _), &lp)| (c.clone(), lp))
                .collect(),
            chosen: e.choices[bi].0.clone(),
            grade: e.choices[bi].1,
            best: e
                .choices
                .iter()
                .map(|c| c.1)
                .fold(f64::NEG_INFINITY, f64::max),
            truncated,
        };
        each(&s);
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"{"name": "toy", "task_prefix": "Answer.\n", "examples": [
        {"input": "2 + 2 =", "target_scores": {"4": 1, "5": 0}},
        {"input": "Sky?", "target_scores": {"blue": 1, "green": 0, "red": 0}}]}"#;

    #[test]
    fn prompts_follow_bigbench_defaults() {
        let t = Task::parse(TASK, "toy.json").unwrap();
        assert_eq!(t.examples.len(), 2);
        assert_eq!(
            t.prompt(&t.examples[1]),
            "Answer.\n\nQ: Sky?\n  choice: blue\n  choice: green\n  choice: red\nA: "
        );
        let no_append = TASK.replace(
            "\"name\": \"toy\",",
            "\"name\": \"toy\", \"append_choices_to_input\": false, \"example_output_prefix\": \" \",",
        );
        let t = Task::parse(&no_append, "toy.json").unwrap();
        assert_eq!(t.prompt(&t.examples[0]), "Answer.\n\nQ: 2 + 2 = ");
    }

    #[test]
    fn malformed_tasks_are_described() {
        for (text, want) in [
            ("{", "not JSON"),
            ("{}", "no \"examples\""),
            (r#"{"examples": []}"#, "no examples"),
            (
                r#"{"examples": [{"input": "x", "target": "y"}]}"#,
                "not a multiple-choice",
            ),
            (
                r#"{"examples": [{"target_scores": {"a": 1, "b": 0}}]}"#,
                "no \"input\"",
            ),
            (
                r#"{"examples": [{"input": "x", "target_scores": {"a": 1}}]}"#,
                "fewer than two",
            ),
            (
                r#"{"examples": [{"input": "x", "target_scores": {"a": "1", "b": 0}}]}"#,
                "not a number",
            ),
            (
                r#"{"examples": [{"input": "x", "target_scores": {"a": 1, "b": 0}}], "task_prefix": 3}"#,
                "task_prefix",
            ),
        ] {
            let e = Task::parse(text, "t.json").unwrap_err();
            assert!(e.starts_with("t.json: ") && e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn log_prob_is_a_normalised_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_prob(&l, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(log_prob(&l, 2) > log_prob(&l, 0));
    }
}
