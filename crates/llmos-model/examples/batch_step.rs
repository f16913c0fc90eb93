//! Time of one decode step of S sequences decoding together (continuous batching's step),
//! without sampling or the scheduler: `batch_step MODEL.gguf [S] [THREADS] [STEPS] [x8]
//! [blocks]` (x8: the Q4_1 matrices repacked, `Model::repack`, as every llmos command
//! loads them; blocks: their sums in block order, `Model::sums`).
//! Prints the median step in ms, the aggregate tokens/s, and the steps' time phase by phase
//! (`llmos_model::profile`: matrix products, attention, and the work between them).
use llmos_formats::gguf::Gguf;
use llmos_model::Model;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = a.first() else {
        eprintln!("usage: batch_step MODEL.gguf [SEQS] [THREADS] [STEPS] [x8] [blocks]");
        std::process::exit(2);
    };
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (seqs, threads, steps) = (num(1, 8), num(2, 2), num(3, 64));
    llmos_tensor::init_threads(threads);
    let g = Gguf::open(std::path::Path::new(path)).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let mut m = Model::load(Arc::new(g)).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    if a.get(4).map(String::as_str) == Some("x8") {
        m.repack().expect("repack");
    }
    if a.get(5).map(String::as_str) == Some("blocks") {
        m.sums = llmos_tensor::x8::Sums::Blocks;
    }
    let v = m.config.n_vocab as u32;
    let mut caches: Vec<_> = (0..seqs).map(|_| m.new_cache(32 + steps + 1)).collect();
    let mut toks: Vec<u32> = Vec::new();
    for (i, c) in caches.iter_mut().enumerate() {
        let prompt: Vec<u32> = (0..32)
            .map(|j| (i as u32 * 7919 + j * 104_729) % v)
            .collect();
        m.forward(c, &prompt, false).expect("prompt");
        toks.push(prompt[31]);
    }
    llmos_model::profile::enable(true);
    llmos_model::profile::reset();
    let mut times = Vec::new();
    for _ in 0..steps {
        let mut refs: Vec<&mut _> = caches.iter_mut().collect();
        let ts: Vec<[u32; 1]> = toks.iter().map(|&t| [t]).collect();
        let tr: Vec<&[u32]> = ts.iter().map(|t| &t[..]).collect();
        let t0 = Instant::now();
        let logits = m.forward_batch(&mut refs, &tr).expect("step");
        times.push(t0.elapsed().as_secs_f64());
        for (s, t) in toks.iter_mut().enumerate() {
            let row = &logits[s * v as usize..(s + 1) * v as usize];
            *t = (0..row.len())
                .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                .unwrap_or(0) as u32;
        }
    }
    let phases = llmos_model::profile::totals();
    let all: u64 = phases.iter().map(|p| p.1).sum();
    for (p, ns) in phases {
        println!(
            "  {:<11} {:>7.3} ms/step {:>5.1}%",
            p.name(),
            ns as f64 / 1e6 / steps as f64,
            100.0 * ns as f64 / all.max(1) as f64
        );
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{seqs} sequences, {threads} threads: step {:.2} ms median ({:.2} best), {:.1} tok/s aggregate",
        med * 1e3,
        times[0] * 1e3,
        seqs as f64 / med
    );
}
