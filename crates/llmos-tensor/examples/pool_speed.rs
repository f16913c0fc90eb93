//! What one parallel section of the thread pool costs, with tasks that do almost nothing:
//! `cargo run --release -p llmos-tensor --example pool_speed [THREADS]`. A decode step runs
//! about five sections per layer, so this is the floor of its synchronisation.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    llmos_tensor::init_threads(threads);
    // one counter per task, each on its own cache line, so tasks do not contend
    #[repr(align(128))]
    struct Slot(AtomicUsize);
    let slots: Vec<Slot> = (0..16).map(|_| Slot(AtomicUsize::new(0))).collect();
    for tasks in [2usize, 16] {
        let n = 200_000;
        let t0 = Instant::now();
        for _ in 0..n {
            llmos_tensor::pool::parallel_for(tasks, &|i| {
                slots[i].0.fetch_add(1, Ordering::Relaxed);
            });
        }
        let us = t0.elapsed().as_secs_f64() / n as f64 * 1e6;
        println!("{threads} threads, {tasks} tasks: {us:.2} us per section");
    }
}
