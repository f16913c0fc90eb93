//! GFLOP/s of the f32 GEMM on the products of one training step of issue 5's shape B (8 x
//! 256 tokens, 256 wide, SwiGLU 704, vocabulary 8,192), with the operand layouts training
//! uses (forward x W^T, dX = dY W, dW = dY^T X), and 1024^3 (the MFU denominator) last:
//! `cargo run --release --example train_gemms [THREADS] [FILTER]`. Best of 15 each; the
//! machine is shared, so compare runs interleaved.
use llmos_tensor::gemm::{MatRef, sgemm};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let th: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let filter = args.next().unwrap_or_default();
    llmos_tensor::init_threads(th);
    let n = 2048;
    // (name, m, n, k, layout) layout 0: x W^T; 1: dY W; 2: dY^T X (accumulating)
    let shapes: [(&str, usize, usize, usize, u8); 16] = [
        ("qkv fwd", n, 768, 256, 0),
        ("o fwd", n, 256, 256, 0),
        ("gu fwd", n, 1408, 256, 0),
        ("down fwd", n, 256, 704, 0),
        ("head fwd", 1024, 8192, 256, 0),
        ("qkv dx", n, 256, 768, 1),
        ("o dx", n, 256, 256, 1),
        ("gu dx", n, 256, 1408, 1),
        ("down dx", n, 704, 256, 1),
        ("head dx", 1024, 256, 8192, 1),
        ("qkv dw", 768, 256, n, 2),
        ("o dw", 256, 256, n, 2),
        ("gu dw", 1408, 256, n, 2),
        ("down dw", 256, 704, n, 2),
        ("head dw", 8192, 256, 1024, 2),
        ("1024^3", 1024, 1024, 1024, 0),
    ];
    let (mut flops, mut secs) = (0.0, 0.0);
    for (name, m, nn, k, layout) in shapes {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; nn * k];
        let mut c = vec![0f32; m * nn];
        let (am, bm) = match layout {
            0 => (MatRef::rows(&a, k), MatRef::rows_t(&b, k)),
            1 => (MatRef::rows(&a, k), MatRef::rows(&b, nn)),
            _ => (MatRef::rows_t(&a, m), MatRef::rows(&b, nn)),
        };
        let mut best = f64::MAX;
        for _ in 0..15 {
            let t0 = Instant::now();
            sgemm(m, nn, k, am, bm, &mut c, nn, layout == 2);
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let f = 2.0 * (m * nn * k) as f64;
        if name != "1024^3" {
            (flops, secs) = (flops + f, secs + best);
        }
        println!(
            "{name:9} {m:5} x {nn:5} x {k:5}: {:6.1} GFLOP/s",
            f / best / 1e9
        );
    }
    if secs > 0.0 {
        println!(
            "training products together: {:.1} GFLOP/s",
            flops / secs / 1e9
        );
    }
}
