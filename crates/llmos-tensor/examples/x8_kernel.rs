//! Cycles per token and block of the X8 group kernels on one core, weights in L1/L2 (no
//! threads, no activation quantization): `x8_kernel [q4_1|q8_0] [lanes|blocks] [ROWS] [COLS]`.
//! Measures the arithmetic of one kernel call of eight tokens, repeated over the same groups.
mod common;
use llmos_tensor::DType;
use llmos_tensor::q8::quantize_q8;
use llmos_tensor::quantize::quantize_rows;
use llmos_tensor::x8::{Sums, corrections, repack, tile};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dt = match args.first().map(String::as_str) {
        None | Some("q4_1") => DType::Q4_1,
        Some("q8_0") => DType::Q8_0,
        _ => {
            eprintln!("usage: x8_kernel [q4_1|q8_0] [lanes|blocks] [ROWS] [COLS]");
            std::process::exit(2)
        }
    };
    let sums = match args.get(1).map(String::as_str) {
        Some("blocks") => Sums::Blocks,
        _ => Sums::Lanes,
    };
    let rows: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let cols: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(576);
    if rows == 0 || !rows.is_multiple_of(8) || cols == 0 || !cols.is_multiple_of(32) {
        eprintln!("x8_kernel: ROWS must be a multiple of 8 and COLS of 32 (got {rows} x {cols})");
        std::process::exit(2)
    }
    let mut rnd = common::values(0x5eed);
    let wf: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
    let data = quantize_rows(dt, &wf, cols).expect("quantize");
    let w = repack(dt, &data, rows, cols).expect("repack");
    let acts: Vec<_> = (0..8)
        .map(|_| quantize_q8(&(0..cols).map(|_| rnd()).collect::<Vec<f32>>()))
        .collect();
    let corr: Vec<Vec<i32>> = acts
        .iter()
        .map(|a| {
            let mut c = Vec::new();
            corrections(dt, a, &mut c);
            c
        })
        .collect();
    let mut out = vec![0f32; 8 * rows];
    let nb = cols / 32;
    let reps = (200_000_000 / (rows * cols * 8)).max(1);
    let mut best = f64::MAX;
    for _ in 0..15 {
        let t0 = Instant::now();
        for _ in 0..reps {
            tile::<8>(
                dt,
                sums,
                std::hint::black_box(&w),
                nb,
                std::array::from_fn(|n| acts[n].as_slice()),
                std::array::from_fn(|n| corr[n].as_slice()),
                &mut out,
                rows,
            );
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let macs = (rows * cols * 8 * reps) as f64;
    let token_blocks = (rows / 8 * nb * 8 * reps) as f64;
    let ghz = common::clock_ghz(200_000_000);
    println!(
        "{dt} {sums:?} {rows}x{cols} x 8 tokens: {:.2} GMAC/s, {:.1} cycles per token-block at {ghz:.2} GHz",
        macs / best / 1e9,
        best * ghz * 1e9 / token_blocks
    );
}
