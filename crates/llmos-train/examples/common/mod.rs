//! What the training timers share.

/// Starts the pool with the thread count of the first argument (default 2).
pub fn init_threads_from_args() {
    let th = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    llmos_tensor::init_threads(th);
}

/// n deterministic values in [-0.5, 0.5): ((i * mul) mod 1000) / 1000 - 0.5, neither
/// constant nor zero, the same from run to run.
pub fn values(n: usize, mul: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * mul) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}
