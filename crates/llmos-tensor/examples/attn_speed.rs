//! Speed of the q8-mode prompt attention kernels for one KV head, as the prompt path calls
//! them: `cargo run --release --example attn_speed [ROWS] [HEAD] [GROUP] [STRIDE]`
//! (defaults 512 64 3 192: SmolLM2). For every row t < ROWS, GROUP queries against keys
//! 0..=t (scores), then the weighted sum of values 0..=t, over row-major V and over V packed
//! by columns (the prompt path's); prints ns per key and query.
mod common;
use llmos_tensor::q8::{dot_rows_lanes_multi, lane_dots, pack_v_cols, weighted_rows_lanes_multi};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("usage: attn_speed [ROWS] [HEAD] [GROUP] [STRIDE]");
                std::process::exit(2)
            })
        })
        .collect();
    let rows = a.first().copied().unwrap_or(512);
    let d = a.get(1).copied().unwrap_or(64);
    let group = a.get(2).copied().unwrap_or(3);
    let stride = a.get(3).copied().unwrap_or(192).max(d);
    let mut rnd = common::values(0x2545_f491);
    let k: Vec<f32> = (0..rows * stride).map(|_| rnd()).collect();
    let v: Vec<f32> = (0..rows * stride).map(|_| rnd()).collect();
    let q: Vec<f32> = (0..group * d).map(|_| rnd()).collect();
    let mut scores = vec![0f32; group * rows];
    let mut out = vec![0f32; group * d];
    let pairs: usize = (1..=rows).sum::<usize>() * group;
    // the kernels alone on 64 keys that stay in L1
    {
        let n = 64.min(rows);
        let reps = 200_000;
        let t0 = Instant::now();
        for _ in 0..reps {
            dot_rows_lanes_multi(&q, group, &k, stride, n, &mut scores, n);
        }
        let t1 = Instant::now();
        for _ in 0..reps {
            weighted_rows_lanes_multi(&scores[..group * n], n, &v, stride, d, &mut out);
        }
        let t2 = Instant::now();
        let per = (reps * n * group) as f64;
        println!(
            "{n} keys in L1: scores {:.2} ns per key and query, weighted sum {:.2} ns per value and query",
            (t1 - t0).as_secs_f64() * 1e9 / per,
            (t2 - t1).as_secs_f64() * 1e9 / per
        );
    }
    let mut vt = Vec::new();
    let n32 = pack_v_cols(&v, stride, rows, d, &mut vt);
    let mut wpad = vec![0f32; group * n32];
    for rep in 0..3 {
        let (mut ts, mut tw, mut tp) = (0f64, 0f64, 0f64);
        for t in 0..rows {
            let n = t + 1;
            let t0 = Instant::now();
            dot_rows_lanes_multi(&q, group, &k, stride, n, &mut scores, n);
            let t1 = Instant::now();
            // weights: any values of the right length
            weighted_rows_lanes_multi(&scores[..group * n], n, &v, stride, d, &mut out);
            let t2 = Instant::now();
            // the same over packed V, weights padded to a multiple of 32
            let l = n.next_multiple_of(32);
            for j in 0..group {
                wpad[j * l..j * l + n].copy_from_slice(&scores[j * n..j * n + n]);
                wpad[j * l + n..j * l + l].fill(0.0);
            }
            let t3 = Instant::now();
            lane_dots(&wpad, group, l, &vt, d, n32, l, &mut out, d);
            let t4 = Instant::now();
            ts += (t1 - t0).as_secs_f64();
            tw += (t2 - t1).as_secs_f64();
            tp += (t4 - t3).as_secs_f64();
        }
        println!(
            "rep {rep}: scores {:.2} ns per key and query, weighted sum {:.2} (packed V {:.2}) ns per value and query",
            ts * 1e9 / pairs as f64,
            tw * 1e9 / pairs as f64,
            tp * 1e9 / pairs as f64
        );
    }
}
