//! Time of one decoding row's attention task as a batch runs it (one KV head, its group of
//! query heads, keys and values f16 in the cache's layout): the scores, the softmax and the
//! weighted sum, with the keys and values hot in cache (the same run again and again) and
//! cold (a different run each time, from a pool larger than L3):
//! `cargo run --release -p llmos-tensor --example decode_attn [POSITIONS] [GROUP]`
//! (defaults 96 3: SmolLM2 at a serving benchmark's mean position).
mod common;
use llmos_tensor::q8::{
    dot_rows_lanes_multi_f16, f16_bits_from_f32, round_f16_slice, softmax_scaled_lanes,
    weighted_rows_lanes_multi_f16,
};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("usage: decode_attn [POSITIONS] [GROUP]");
                std::process::exit(2)
            })
        })
        .collect();
    let n = a.first().copied().unwrap_or(96).max(1);
    let group = a.get(1).copied().unwrap_or(3).max(1);
    let d = 64;
    let mut rnd = common::values(0x2545_f491);
    // enough runs of K and V to pass L3 (32 MiB here) several times over
    let runs = (128 << 20) / (2 * n * d * 2) + 1;
    let mut kv16 = vec![0u16; runs * 2 * n * d];
    let f: Vec<f32> = (0..kv16.len()).map(|_| rnd()).collect();
    f16_bits_from_f32(&f, &mut kv16);
    let q: Vec<f32> = (0..group * d).map(|_| rnd()).collect();
    let mut s = vec![0f32; group * n];
    let mut out = vec![0f32; group * d];
    let task = |r: usize, s: &mut [f32], out: &mut [f32]| {
        let (k, v) = kv16[r * 2 * n * d..(r + 1) * 2 * n * d].split_at(n * d);
        dot_rows_lanes_multi_f16(&q, group, k, d, n, s, n, &[]);
        for row in s.chunks_exact_mut(n) {
            softmax_scaled_lanes(row, 0.125);
            round_f16_slice(row);
        }
        weighted_rows_lanes_multi_f16(s, n, v, d, d, out);
    };
    for rep in 0..3 {
        let reps = 20_000;
        let t0 = Instant::now();
        for _ in 0..reps {
            task(0, &mut s, &mut out);
        }
        let hot = t0.elapsed().as_secs_f64() / reps as f64;
        let t0 = Instant::now();
        for i in 0..reps {
            task((i * 7919) % runs, &mut s, &mut out);
        }
        let cold = t0.elapsed().as_secs_f64() / reps as f64;
        println!(
            "rep {rep}: {n} positions x {group} heads: hot {:.2} us, cold {:.2} us a task",
            hot * 1e6,
            cold * 1e6
        );
    }
}
