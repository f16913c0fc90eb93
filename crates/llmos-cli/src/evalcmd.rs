//! `llmos eval -m MODEL --task T`: the task harness of llmos-train with a progress bar, a
//! table and `--json`.

use crate::{ModelArgs, ctx_of, load};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llmos_train::evals::{Format, Item, Runner};
use llmos_train::tasks::{Problem, Split, arith_set};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// chatformat (replies end with the end-of-turn token, never write the user's turn),
    /// arith (generated word problems, held-out split), gsm8k (grade-school math test set),
    /// bigbench:NAME (a BIG-bench multiple-choice task, e.g. bigbench:navigate, scored by
    /// log-likelihood; `scripts/fetch-eval-data bigbench` fetches them).
    #[arg(long)]
    pub task: Option<String>,
    /// Evaluate at most this many items (default: arith 200, others all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Difficulty of arith, 1 (sums of numbers up to 30) to 5 (three-step word problems).
    #[arg(long, default_value_t = 2)]
    pub level: u32,
    /// Few-shot examples for base models (0: chat with the model's template).
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Items file: conversations JSONL for chatformat (the first user message of each is the
    /// prompt), the test JSONL for gsm8k (default: $LLMOS_HOME/data/gsm8k/test.jsonl from
    /// scripts/fetch-eval-data), a task.json for bigbench (default:
    /// $LLMOS_HOME/data/bigbench/NAME/task.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Longest reply, in tokens (default: chatformat 128, arith 64, gsm8k 256).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Problems (arith, gsm8k) decoded together through the continuous batcher; 1 runs them
    /// one after another. Greedy either way: the replies are the same.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Write every item (prompt, reply, verdict) to this JSONL file.
    #[arg(long)]
    pub details: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// GSM8K lines `{"question", "answer": "... #### N"}`: the problems, and each worked
/// solution as a few-shot answer (calculator annotations `<<...>>` removed, `#### N` spelled
/// "The answer is N.").
fn gsm8k(path: &std::path::Path) -> Result<Vec<(Problem, String)>> {
    let mut out = Vec::new();
    for (at, v) in crate::tune::jsonl(path)? {
        let q = v["question"]
            .as_str()
            .with_context(|| format!("{at}: no \"question\" string"))?;
        let a = v["answer"]
            .as_str()
            .with_context(|| format!("{at}: no \"answer\" string"))?;
        let n = a
            .rsplit_once("####")
            .and_then(|(_, n)| n.trim().replace(',', "").parse::<i64>().ok())
            .with_context(|| format!("{at}: answer has no \"#### N\" integer"))?;
        let (work, _) = a.rsplit_once("####").expect("checked above");
        let mut shown = String::new();
        let mut rest = work;
        while let Some(i) = rest.find("<<") {
            shown.push_str(&rest[..i]);
            rest = rest[i..].find(">>").map_or("", |j| &rest[i + j + 2..]);
        }
        shown.push_str(rest);
        let shown = format!("{} The answer is {n}.", shown.trim().replace("\n\n", "\n"));
        out.push((
            Problem {
                prompt: q.to_string(),
                answer: n,
            },
            shown,
        ));
    }
    Ok(out)
}

/// First user message of each conversation in a JSONL file.
fn chat_prompts(path: &std::path::Path) -> Result<Vec<String>> {
    let convs = llmos_train::sft::parse_conversations(path, &crate::read_utf8(path)?)?;
    Ok(convs
        .into_iter()
        .filter_map(|c| c.messages.into_iter().find(|m| m.role == "user"))
        .map(|m| m.content)
        .collect())
}

/// Worked few-shot examples for arith (from the training side of the split).
fn arith_shots(level: u32, k: usize) -> Vec<(String, String)> {
    arith_set(level, Split::Train, k, 777)
        .into_iter()
        .map(|p| (p.prompt, p.answer.to_string()))
        .collect()
}

/// The progress bar of an evaluation over `n` items.
fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// The `--details` JSONL file, when asked for.
fn details_file(p: Option<&std::path::Path>) -> Result<Option<std::io::BufWriter<std::fs::File>>> {
    p.map(|p| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("{}", p.display()))
    })
    .transpose()
}

/// `--task bigbench:NAME`: a multiple-choice task scored by log-likelihood.
fn cmd_bigbench(a: &TaskArgs, name: &str) -> Result<()> {
    let home = crate::pull::llmos_home();
    let path = a
        .data
        .clone()
        .unwrap_or_else(|| home.join("data/bigbench").join(name).join("task.json"));
    if !path.exists() {
        bail!(
            "{}: not found; run scripts/fetch-eval-data bigbench first (or give --data task.json)",
            path.display()
        );
    }
    let text = crate::read_utf8(&path)?;
    let task = llmos_train::bigbench::Task::parse(&text, &path.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let limit = a.limit.unwrap_or(usize::MAX);
    let n = task.examples.len().min(limit);
    if n == 0 {
        bail!("no items to evaluate");
    }
    let l = load(&a.model)?;
    let ctx = ctx_of(&a.model, &l.model)?;
    let bar = progress(n);
    let mut details = details_file(a.details.as_deref())?;
    let (mut done, mut sum) = (0usize, 0f64);
    let t0 = Instant::now();
    let scored = llmos_train::bigbench::run(&l.model, &l.tok, ctx, &task, limit, &mut |s| {
        done += 1;
        sum += s.grade;
        bar.inc(1);
        bar.set_message(format!("grade {:.1}%", 100.0 * sum / done as f64));
        if let Some(w) = details.as_mut() {
            let _ = writeln!(w, "{}", serde_json::to_string(s).expect("item serializes"));
        }
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    if let Some(mut w) = details {
        w.flush()?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let n = scored.len();
    let grade = scored.iter().map(|s| s.grade).sum::<f64>() / n as f64;
    let correct = scored.iter().filter(|s| s.grade >= s.best).count();
    let truncated = scored.iter().filter(|s| s.truncated > 0).count();
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} prompts were cut from the front to fit the context of {ctx}"
        );
    }
    let label = format!("bigbench:{name}");
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "task": label, "n": n, "correct": correct, "accuracy": grade, "wall_s": wall,
                "model": a.model.model, "format": "zero-shot log-likelihood",
                "truncated": truncated,
            })
        );
    } else {
        println!("| task | model | format | n | correct | grade | wall |");
        println!("|---|---|---|---:|---:|---:|---:|");
        println!(
            "| {label} | {} | zero-shot log-likelihood | {n} | {correct} | {:.1}% | {wall:.1} s |",
            a.model.model,
            grade * 100.0
        );
    }
    Ok(())
}

pub fn cmd_eval_task(a: TaskArgs) -> Result<()> {
    let task = a.task.clone().context(
        "give --task chatformat|arith|gsm8k|bigbench:NAME, or a subcommand (bpb, logits)",
    )?;
    if let Some(name) = task.strip_prefix("bigbench:") {
        if name.is_empty() || name.split('/').any(|p| p.is_empty() || p == "..") {
            bail!("--task bigbench:NAME needs a task name such as bigbench:navigate");
        }
        return cmd_bigbench(&a, name);
    }
    if !(1..=5).contains(&a.level) {
        bail!("--level {} must be between 1 and 5", a.level);
    }
    // items first: a bad file fails before the model loads
    enum Items {
        Chat(Vec<String>),
        Problems(Vec<Problem>, Vec<(String, String)>),
    }
    let home = crate::pull::llmos_home();
    let (items, max_tokens) = match task.as_str() {
        "chatformat" => {
            let p = a
                .data
                .clone()
                .context("chatformat needs --data FILE.jsonl (held-out conversations)")?;
            (Items::Chat(chat_prompts(&p)?), 128)
        }
        "arith" => (
            Items::Problems(
                arith_set(a.level, Split::Test, a.limit.unwrap_or(200), 2026),
                arith_shots(a.level, a.shots),
            ),
            64,
        ),
        "gsm8k" => {
            let p = a
                .data
                .clone()
                .unwrap_or_else(|| home.join("data/gsm8k/test.jsonl"));
            if !p.exists() {
                bail!(
                    "{}: not found; run scripts/fetch-eval-data first (or give --data)",
                    p.display()
                );
            }
            let all = gsm8k(&p)?;
            // few-shot examples come from the end of the file and are not evaluated
            let k = a.shots.min(all.len().saturating_sub(1));
            let (test, shots) = all.split_at(all.len() - k);
            let shots = shots
                .iter()
                .map(|(p, worked)| (p.prompt.clone(), worked.clone()))
                .collect();
            let test = test.iter().map(|(p, _)| p.clone()).collect();
            (Items::Problems(test, shots), 256)
        }
        other => bail!("unknown task {other:?} (chatformat, arith, gsm8k, bigbench:NAME)"),
    };
    let items = match items {
        Items::Chat(mut v) => {
            v.truncate(a.limit.unwrap_or(usize::MAX));
            Items::Chat(v)
        }
        Items::Problems(mut v, s) => {
            v.truncate(a.limit.unwrap_or(usize::MAX));
            Items::Problems(v, s)
        }
    };
    let n = match &items {
        Items::Chat(v) => v.len(),
        Items::Problems(v, _) => v.len(),
    };
    if n == 0 {
        bail!("no items to evaluate");
    }
    let l = load(&a.model)?;
    let ctx = ctx_of(&a.model, &l.model)?;
    if a.shots == 0 && l.tok.chat_template.is_none() && matches!(items, Items::Problems(..)) {
        bail!("this model has no chat template: give --shots K for a few-shot prompt");
    }
    let tpl = match (a.shots, &items) {
        (0, _) | (_, Items::Chat(_)) => Some(crate::tune::template_of(&l.tok)?),
        _ => None,
    };
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let model = std::sync::Arc::new(l.model);
    let tok = std::sync::Arc::new(l.tok);
    let mut runner = Runner::new(&model, &tok, ctx, a.max_tokens.unwrap_or(max_tokens));
    let bar = progress(n);
    let mut details = details_file(a.details.as_deref())?;
    let (mut done, mut ok) = (0usize, 0usize);
    let mut on_item = |it: &Item| {
        done += 1;
        ok += usize::from(it.ok);
        bar.set_position(done as u64);
        bar.set_message(format!("accuracy {:.1}%", 100.0 * ok as f64 / done as f64));
        if let Some(w) = details.as_mut() {
            let _ = writeln!(w, "{}", serde_json::to_string(it).expect("item serializes"));
        }
    };
    let t0 = Instant::now();
    let (format_name, res) = match &items {
        Items::Chat(prompts) => (
            "chat",
            runner.chatformat(tpl.as_ref().expect("chat template"), prompts, &mut on_item),
        ),
        Items::Problems(problems, shots) => {
            let (name, format) = match &tpl {
                Some(t) => ("chat", Format::Chat(t)),
                None => ("fewshot", Format::FewShot(shots.clone())),
            };
            let res = if a.parallel > 1 {
                let bar2 = bar.clone();
                runner.problems_batched(
                    model.clone(),
                    tok.clone(),
                    a.parallel,
                    &format,
                    problems,
                    &mut |d| bar2.set_position(d as u64),
                    &mut on_item,
                )
            } else {
                runner.problems(&format, problems, &mut on_item)
            };
            (name, res)
        }
    };
    let results = res.map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    if let Some(mut w) = details {
        w.flush()?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let correct = results.iter().filter(|i| i.ok).count();
    let acc = correct as f64 / results.len() as f64;
    if a.json {
        let mut v = serde_json::json!({
            "task": task, "n": results.len(), "correct": correct, "accuracy": acc,
            "wall_s": wall, "model": a.model.model, "format": format_name, "shots": a.shots,
        });
        if task == "arith" {
            v["level"] = a.level.into();
        }
        println!("{v}");
    } else {
        println!("| task | model | format | n | correct | accuracy | wall |");
        println!("|---|---|---|---:|---:|---:|---:|");
        let name = if task == "arith" {
            format!("arith (level {})", a.level)
        } else {
            task.clone()
        };
        let fmt = if format_name == "fewshot" {
            format!("{}-shot", a.shots)
        } else {
            "chat".into()
        };
        println!(
            "| {name} | {} | {fmt} | {} | {correct} | {:.1}% | {wall:.1} s |",
            a.model.model,
            results.len(),
            acc * 100.0
        );
    }
    Ok(())
}
