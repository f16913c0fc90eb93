//! Multiply-adds per second of the quantized matmul (q8 activations) on one shape:
//! `cargo run --release --example qmatmul_speed TYPE ROWS COLS TOKENS [THREADS]`, TYPE one of
//! q8_0, q4_0, q4_1, q5_0, q4_k, q6_k; then `x8` (the X8 layout, as models load) or
//! `blocks` (X8 with Q4_1's block-order sums). Prints the best and median of 20 runs
//! (`QMATMUL_RUNS=N` for N: more for a profiler to sample). A
//! matrix within the caches measures the arithmetic; one several times L3 the streaming.
mod common;
use llmos_tensor::DType;
use llmos_tensor::quantize::quantize_rows;
use llmos_tensor::{ActCache, ActMode, Weight, matmul_cached};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: qmatmul_speed TYPE ROWS COLS TOKENS [THREADS] [x8|blocks]");
        std::process::exit(2)
    };
    if args.len() < 4 {
        usage();
    }
    let t = match args[0].as_str() {
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        "q4_1" => DType::Q4_1,
        "q5_0" => DType::Q5_0,
        "q4_k" => DType::Q4K,
        "q6_k" => DType::Q6K,
        _ => usage(),
    };
    let layout = args.get(5).map(String::as_str);
    if !matches!(layout, None | Some("x8" | "blocks")) {
        usage();
    }
    let n: Vec<usize> = args[1..args.len().min(5)]
        .iter()
        .map(|s| s.parse().unwrap_or_else(|_| usage()))
        .collect();
    let (rows, cols, toks) = (n[0], n[1], n[2]);
    llmos_tensor::init_threads(n.get(3).copied().unwrap_or(1));
    // deterministic pseudo-random values
    let mut rnd = common::values(0x9e37_79b9);
    let wf: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
    let data = quantize_rows(t, &wf, cols).expect("quantize");
    let packed = layout.map(|_| {
        llmos_tensor::x8::repack(t, &data, rows, cols).unwrap_or_else(|| {
            eprintln!("qmatmul_speed: {} has no X8 form at {rows} rows", args[0]);
            std::process::exit(2)
        })
    });
    let w = match &packed {
        Some(p) => Weight::new_x8(t, p, rows, cols).expect("weight"),
        None => Weight::new(t, &data, rows, cols).expect("weight"),
    };
    let w = if layout == Some("blocks") {
        w.with_sums(llmos_tensor::x8::Sums::Blocks)
    } else {
        w
    };
    let x: Vec<f32> = (0..toks * cols).map(|_| rnd()).collect();
    let mut y = vec![0f32; toks * rows];
    let mut times = Vec::new();
    // QMATMUL_RUNS: more runs for a profiler (`perf record`) to sample
    let runs: usize = std::env::var("QMATMUL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for _ in 0..runs.max(1) {
        let mut cache = ActCache::new();
        let t0 = Instant::now();
        matmul_cached(&w, &x, &mut y, ActMode::Q8, &mut cache);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let macs = (rows * cols * toks) as f64;
    println!(
        "{} {}x{} x {} tokens: best {:.2} GMAC/s, median {:.2} GMAC/s",
        args[0],
        rows,
        cols,
        toks,
        macs / times[0] / 1e9,
        macs / times[times.len() / 2] / 1e9
    );
}
