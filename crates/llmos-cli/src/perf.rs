//! Speed and quality tools: `llmos bench` (llama-bench style pp/tg throughput and effective
//! memory bandwidth), `llmos perplexity` (llama.cpp's chunked method) and `llmos quantize`.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use llmos_formats::gguf::{Gguf, GgufWriter, Value};
use llmos_model::Model;
use llmos_tensor::DType;
use std::path::Path;
use std::time::Instant;

/// llama.cpp's names for `general.file_type`.
pub fn file_type_name(ft: Option<u64>) -> String {
    let s = match ft {
        Some(0) => "F32",
        Some(1) => "F16",
        Some(2) => "Q4_0",
        Some(3) => "Q4_1",
        Some(7) => "Q8_0",
        Some(8) => "Q5_0",
        Some(9) => "Q5_1",
        Some(10) => "Q2_K",
        Some(12) => "Q3_K_M",
        Some(14) => "Q4_K_S",
        Some(15) => "Q4_K_M",
        Some(16) => "Q5_K_S",
        Some(17) => "Q5_K_M",
        Some(18) => "Q6_K",
        Some(32) => "BF16",
        Some(n) => return format!("file_type {n}"),
        None => "unknown",
    };
    s.to_string()
}

/// `general.file_type` for a file whose weights are mostly `t`.
fn file_type_code(t: DType) -> u64 {
    match t {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::Q4K => 15,
        DType::Q5K => 17,
        DType::Q6K => 18,
        DType::BF16 => 32,
        _ => 0,
    }
}

/// Read bandwidth of this machine in GB/s: the best of 3 read-only sweeps over a buffer far
/// larger than any cache, split across `threads` threads. The buffer asks for transparent
/// huge pages, as the model's map does (see `llmos_formats::gguf`): with 4 KiB pages the
/// sweep would pay a TLB miss per page that the weights, on 2 MiB pages, do not.
pub fn measure_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let mut map = match memmap2::MmapMut::map_anon(BYTES) {
        Ok(m) => m,
        Err(_) => return 0.0,
    };
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    for (i, c) in map.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(i as u64).to_ne_bytes());
    }
    let buf: &[u8] = &map;
    llmos_tensor::pool::init(threads);
    let chunk = (BYTES / (threads * 16)).next_multiple_of(64);
    let mut best = 0f64;
    for _ in 0..3 {
        let sums: Vec<std::sync::atomic::AtomicU64> = (0..BYTES.div_ceil(chunk))
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        let t0 = Instant::now();
        llmos_tensor::pool::parallel_for(sums.len(), &|i| {
            let part = &buf[i * chunk..((i + 1) * chunk).min(BYTES)];
            let mut acc = [0u64; 8];
            for c in part.chunks_exact(64) {
                for k in 0..8 {
                    let v = u64::from_ne_bytes(c[8 * k..8 * k + 8].try_into().unwrap_or_default());
                    acc[k] = acc[k].wrapping_add(v);
                }
            }
            let s = acc.iter().fold(0u64, |a, b| a.wrapping_add(*b));
            sums[i].store(s, std::sync::atomic::Ordering::Relaxed);
        });
        let dt = t0.elapsed().as_secs_f64();
        std::hint::black_box(&sums);
        best = best.max(BYTES as f64 / dt / 1e9);
    }
    best
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

pub struct BenchArgs<'a> {
    pub model: &'a Model,
    pub path: &'a Path,
    pub pp: usize,
    pub tg: usize,
    pub threads: &'a [usize],
    pub reps: usize,
    pub json: bool,
    pub bandwidth: bool,
}

/// Prompt processing of `pp` random tokens and generation of `tg` tokens, `reps` times per
/// thread count, like llama-bench (pp from an empty cache, tg from an empty cache).
pub fn bench(a: BenchArgs) -> Result<()> {
    let m = a.model;
    let g = &m.gguf;
    let ty = file_type_name(g.get("general.file_type").and_then(|v| v.as_u64()));
    let size = g.file_len();
    let wbytes = m.weight_bytes() as f64;
    let max_t = a.threads.iter().copied().max().unwrap_or(1);
    let bw = if a.bandwidth {
        measure_bandwidth(max_t)
    } else {
        0.0
    };
    let name = a
        .path
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().to_string());
    let ctx = (a.pp + a.tg + 1).min(m.config.ctx_train);
    if a.pp + 1 > ctx || a.tg + 1 > ctx {
        bail!(
            "-p {} / -n {} exceed the model's context of {}",
            a.pp,
            a.tg,
            m.config.ctx_train
        );
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut results = Vec::new();
    if !a.json {
        println!(
            "| model | size | type | threads | test | t/s | tg GB/s |\n|---|---:|---|---:|---|---:|---:|"
        );
    }
    for &t in a.threads {
        llmos_tensor::pool::init(t);
        // one untimed warm-up of each test (page in the weights, wake the workers)
        let (mut pp_s, mut tg_s) = (Vec::new(), Vec::new());
        for rep in 0..=a.reps {
            if a.pp > 0 {
                let toks: Vec<u32> = (0..a.pp)
                    .map(|_| (next() % m.config.n_vocab as u64) as u32)
                    .collect();
                let mut cache = m.new_cache(ctx);
                let t0 = Instant::now();
                m.forward(&mut cache, &toks, false)?;
                if rep > 0 {
                    pp_s.push(a.pp as f64 / t0.elapsed().as_secs_f64());
                }
            }
            if a.tg > 0 {
                let mut cache = m.new_cache(ctx);
                let mut tok = (next() % m.config.n_vocab as u64) as u32;
                let t0 = Instant::now();
                for _ in 0..a.tg {
                    let logits = m.forward(&mut cache, &[tok], false)?;
                    tok = argmax(&logits);
                }
                if rep > 0 {
                    tg_s.push(a.tg as f64 / t0.elapsed().as_secs_f64());
                }
            }
        }
        let (pp, pp_sd) = if pp_s.is_empty() {
            (0.0, 0.0)
        } else {
            mean_std(&pp_s)
        };
        let (tg, tg_sd) = if tg_s.is_empty() {
            (0.0, 0.0)
        } else {
            mean_std(&tg_s)
        };
        let tg_bw = wbytes * tg / 1e9;
        if !a.json {
            let mib = size as f64 / (1 << 20) as f64;
            if a.pp > 0 {
                println!(
                    "| {name} | {mib:.1} MiB | {ty} | {t} | pp{} | {pp:.2} ± {pp_sd:.2} | |",
                    a.pp
                );
            }
            if a.tg > 0 {
                let share = if bw > 0.0 {
                    format!(" ({:.0}% of {bw:.1})", 100.0 * tg_bw / bw)
                } else {
                    String::new()
                };
                println!(
                    "| {name} | {mib:.1} MiB | {ty} | {t} | tg{} | {tg:.2} ± {tg_sd:.2} | {tg_bw:.2}{share} |",
                    a.tg
                );
            }
        }
        results.push(serde_json::json!({
            "threads": t, "pp_tok_s": pp, "pp_std": pp_sd, "tg_tok_s": tg, "tg_std": tg_sd,
            "tg_bandwidth_gb_s": tg_bw,
        }));
    }
    if a.json {
        let out = serde_json::json!({
            "model": name, "type": ty, "size_bytes": size, "bandwidth_gb_s": bw,
            "weight_bytes_per_token": wbytes as u64, "pp": a.pp, "tg": a.tg, "reps": a.reps,
            "results": results,
        });
        println!("{out}");
    } else if a.bandwidth {
        println!(
            "\nmachine read bandwidth: {bw:.1} GB/s ({max_t} threads); weights read per token: {:.1} MB",
            wbytes / 1e6
        );
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Perplexity the way llama.cpp's `llama-perplexity` computes it: the text is tokenized once
/// (with BOS if the model adds one), cut into chunks of `ctx` tokens (the first token of each
/// chunk replaced by BOS when the model uses one), and each chunk scores its second half.
pub fn perplexity(
    m: &Model,
    tok: &llmos_tokenizer::Tokenizer,
    text: &str,
    ctx: usize,
    json: bool,
) -> Result<()> {
    if ctx < 4 {
        bail!("-c must be at least 4");
    }
    if ctx > m.config.ctx_train {
        bail!(
            "-c {ctx} exceeds the model's training context of {}",
            m.config.ctx_train
        );
    }
    let toks = tok.encode(text, true, false);
    let n_chunk = toks.len() / ctx;
    if n_chunk == 0 {
        bail!(
            "the text has {} tokens, fewer than one chunk of -c {ctx}",
            toks.len()
        );
    }
    let bos = if tok.add_bos { tok.bos } else { None };
    let first = ctx / 2;
    let v = m.config.n_vocab;
    let bar = ProgressBar::new(n_chunk as u64).with_style(
        ProgressStyle::with_template(
            "perplexity {bar:30} {pos}/{len} chunks, ppl {msg} [{elapsed}]",
        )
        .expect("static template"),
    );
    let t0 = Instant::now();
    let (mut nll, mut count) = (0f64, 0usize);
    let mut per_chunk = Vec::new();
    for c in 0..n_chunk {
        let mut chunk = toks[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut cache = m.new_cache(ctx);
        // the first half only feeds the cache; logits are kept for the scored half
        m.forward(&mut cache, &chunk[..first], false)?;
        let logits = m.forward(&mut cache, &chunk[first..], true)?;
        for j in first..ctx - 1 {
            let row = &logits[(j - first) * v..(j - first + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let target = chunk[j + 1] as usize;
            nll += sum.ln() - (row[target] - max) as f64;
            count += 1;
        }
        let ppl = (nll / count as f64).exp();
        per_chunk.push(ppl);
        bar.set_message(format!("{ppl:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ppl = (nll / count as f64).exp();
    let secs = t0.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"ppl": ppl, "chunks": n_chunk, "ctx": ctx, "tokens": toks.len(),
                "scored": count, "seconds": secs, "per_chunk": per_chunk})
        );
    } else {
        println!(
            "perplexity: {ppl:.4} over {n_chunk} chunks of {ctx} ({count} scored tokens of {}), {secs:.1} s",
            toks.len()
        );
    }
    Ok(())
}

pub fn parse_type(s: &str) -> Result<DType> {
    let up = s.to_ascii_uppercase();
    llmos_tensor::quantize::QUANTIZE_TYPES
        .iter()
        .copied()
        .find(|t| {
            t.to_string().eq_ignore_ascii_case(&up)
                || t.to_string().replace('_', "") == up.replace('_', "")
        })
        .with_context(|| {
            let names: Vec<String> = llmos_tensor::quantize::QUANTIZE_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect();
            format!("unknown --type {s:?} (one of {})", names.join(", "))
        })
}

/// Writes `out`: every 2-D weight of `input` quantized to `target` (norms, biases and rows
/// that are not a whole number of blocks stay as they are). `input` is a GGUF file or a
/// Hugging Face Llama checkpoint (its folder, or the model.safetensors in it).
pub fn quantize(input: &Path, out: &Path, target: DType) -> Result<()> {
    if input.is_dir() || input.extension().is_some_and(|e| e == "safetensors") {
        let hf = crate::convert::open_hf(input)?;
        let tensors = hf.tensors()?;
        return write_quantized(input, out, target, &hf.metadata, tensors);
    }
    let g = Gguf::open(input)?;
    let meta: Vec<(String, Value)> = g
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors = g
        .tensors
        .iter()
        .map(|t| crate::convert::SrcTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            dtype: t.dtype,
            data: std::borrow::Cow::Borrowed(g.tensor_data(t)),
        })
        .collect();
    write_quantized(input, out, target, &meta, tensors)
}

fn write_quantized(
    input: &Path,
    out: &Path,
    target: DType,
    meta: &[(String, Value)],
    tensors: Vec<crate::convert::SrcTensor>,
) -> Result<()> {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        if k == "general.file_type" {
            continue;
        }
        w.set(k, v.clone());
    }
    w.set(
        "general.file_type",
        Value::U32(file_type_code(target) as u32),
    );
    let mut warned = false;
    let bar = ProgressBar::new(tensors.len() as u64).with_style(
        ProgressStyle::with_template("quantize {bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let (mut before, mut after) = (0u64, 0u64);
    for t in &tensors {
        bar.set_message(t.name.clone());
        let data: &[u8] = &t.data;
        before += data.len() as u64;
        let cols = t.dims.first().copied().unwrap_or(0) as usize;
        let quantizable = t.dims.len() >= 2
            && t.name.ends_with(".weight")
            && !t.name.contains("norm")
            && cols.is_multiple_of(target.block_size());
        if !quantizable || t.dtype == target {
            after += data.len() as u64;
            w.add_tensor(&t.name, &t.dims, t.dtype, data.to_vec());
            bar.inc(1);
            continue;
        }
        if !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) && !warned {
            bar.suspend(|| {
                eprintln!(
                    "warning: {}: requantizing {} weights to {target}: quality is lower than quantizing from F32/F16/BF16",
                    input.display(),
                    t.dtype
                )
            });
            warned = true;
        }
        let n: u64 = t.dims.iter().product();
        let mut f = vec![0f32; n as usize];
        let rb = t
            .dtype
            .row_bytes(cols as u64)
            .with_context(|| format!("tensor {}: bad row length", t.name))?
            as usize;
        for (r, row) in f.chunks_exact_mut(cols).enumerate() {
            llmos_tensor::quant::dequantize_row(t.dtype, &data[r * rb..(r + 1) * rb], row)
                .with_context(|| format!("tensor {}", t.name))?;
        }
        let q = llmos_tensor::quantize::quantize_rows(target, &f, cols)
            .with_context(|| format!("tensor {}", t.name))?;
        after += q.len() as u64;
        w.add_tensor(&t.name, &t.dims, target, q);
        bar.inc(1);
    }
    bar.finish_and_clear();
    w.write(out)
        .with_context(|| format!("writing {}", out.display()))?;
    // the file must read back
    Gguf::open(out)?;
    eprintln!(
        "{} -> {} ({target}): tensor data {:.1} MB -> {:.1} MB",
        input.display(),
        out.display(),
        before as f64 / 1e6,
        after as f64 / 1e6
    );
    Ok(())
}

/// Continuous-batched generation: for each batch size B, B sequences (distinct prompts of
/// 32 tokens) generate `tg` tokens each through the engine's batcher; prints the median
/// aggregate tokens/s over `reps` and its ratio to B = 1 (or the first size).
pub fn bench_batch(
    model: std::sync::Arc<Model>,
    tok: std::sync::Arc<llmos_tokenizer::Tokenizer>,
    sizes: &[usize],
    tg: usize,
    reps: usize,
    json: bool,
) -> Result<()> {
    use llmos_engine::{Batcher, Event, Request, SamplerConfig};
    let max = sizes.iter().copied().max().unwrap_or(1);
    let batcher = Batcher::start(model.clone(), tok, max, 32 + tg + 8, max);
    let v = model.config.n_vocab as u64;
    let mut rows = Vec::new();
    let mut base = None;
    for &b in sizes {
        let mut rates = Vec::new();
        // one untimed warm-up, then the reps
        for rep in 0..=reps {
            let (tx, rx) = std::sync::mpsc::channel();
            let t0 = Instant::now();
            for i in 0..b {
                let mut rng = llmos_engine::Rng::new((rep * 1000 + i) as u64 + 1);
                let prompt: Vec<u32> = (0..32).map(|_| (rng.next_u64() % v) as u32).collect();
                let cfg = SamplerConfig {
                    temperature: 0.8,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    seed: i as u64,
                    ..Default::default()
                };
                let mut r = Request::new(prompt, tg, cfg);
                r.ignore_eos = true;
                let tx = tx.clone();
                batcher
                    .submit(r, Box::new(move |e| tx.send(e).is_ok()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            drop(tx);
            let mut tokens = 0;
            for e in rx {
                match e {
                    Event::Token { .. } => tokens += 1,
                    Event::Error(e) => bail!("generation failed: {e}"),
                    Event::Done { .. } => {}
                }
            }
            if rep > 0 {
                rates.push(tokens as f64 / t0.elapsed().as_secs_f64());
            }
        }
        rates.sort_by(f64::total_cmp);
        let med = rates[rates.len() / 2];
        let one = *base.get_or_insert(med / b as f64);
        let row = serde_json::json!({"batch": b, "tok_s": med, "per_seq_tok_s": med / b as f64,
            "x_one": med / one, "reps": rates});
        if !json {
            println!(
                "batch {b:>2}: {med:7.1} tok/s aggregate, {:6.1} per sequence, {:.2}x one sequence",
                med / b as f64,
                med / one
            );
        }
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::json!({"tg": tg, "results": rows}));
    }
    Ok(())
}
