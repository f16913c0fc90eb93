//! The fused vocabulary head + cross-entropy with gradients at issue 5's shape B (2,048 rows
//! of 256 against 8,192 tokens): `cargo run --release --example head_ce_speed [THREADS]`.
//! Best of 12 calls; GFLOP/s counts the three products.
use llmos_train::layers::head_ce;
use std::time::Instant;

mod common;

fn main() {
    common::init_threads_from_args();
    let (n, c, v) = (2048, 256, 8192);
    let h = common::values(n * c, 7919);
    let w: Vec<f32> = (0..v * c)
        .map(|i| ((i * 104_729) % 1000) as f32 / 10_000.0 - 0.05)
        .collect();
    let targets: Vec<u32> = (0..n).map(|i| ((i * 31) % v) as u32).collect();
    let mut dh = vec![0f32; n * c];
    let mut dw = vec![0f32; v * c];
    let mut best = f64::MAX;
    for _ in 0..12 {
        let t0 = Instant::now();
        let loss = head_ce(
            &h,
            &w,
            c,
            v,
            &targets,
            None,
            Some((&mut dh, Some(&mut dw), 1.0)),
        );
        best = best.min(t0.elapsed().as_secs_f64());
        std::hint::black_box(loss);
    }
    let flops = 3.0 * 2.0 * (n * c * v) as f64;
    println!(
        "head + cross-entropy: best {:.1} ms, {:.1} GFLOP/s",
        best * 1e3,
        flops / best / 1e9
    );
}
