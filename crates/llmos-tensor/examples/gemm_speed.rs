//! GFLOP/s of the f32 GEMM on one shape: `cargo run --release --example gemm_speed M N K [THREADS]`
//! (B is taken transposed, as weights are stored).
use llmos_tensor::gemm::{MatRef, sgemm};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    if args.len() < 3 || args[..3].contains(&0) {
        eprintln!("usage: gemm_speed M N K [THREADS]  (positive integers)");
        std::process::exit(2);
    }
    let [m, n, k] = [args[0], args[1], args[2]];
    llmos_tensor::init_threads(args.get(3).copied().unwrap_or(1));
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0f32; m * n];
    let mut times = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        sgemm(
            m,
            n,
            k,
            MatRef::rows(&a, k),
            MatRef::rows_t(&b, k),
            &mut c,
            n,
            false,
        );
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
    println!(
        "{m}x{n}x{k}: best {:.1} median {:.1} GFLOP/s",
        gf(times[0]),
        gf(times[5])
    );
}
