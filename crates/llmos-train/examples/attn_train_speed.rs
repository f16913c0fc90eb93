//! Milliseconds of the training attention's forward and backward for one layer of issue 5's
//! shape B (batch 8, 256 tokens, 4 heads of 64): `cargo run --release --example
//! attn_train_speed [THREADS]`. Best of 20 calls each.
use llmos_train::layers::{AttnShape, attention_back, attention_fwd};
use std::time::Instant;

mod common;

fn main() {
    common::init_threads_from_args();
    let s = AttnShape {
        batch: 8,
        t: 256,
        heads: 4,
        kv_heads: 4,
        head_dim: 64,
        scale: 0.125,
    };
    let n = s.batch * s.t;
    let w = s.qkv_width();
    let qkv = common::values(n * w, 7919);
    let mut out = vec![0f32; n * s.heads * s.head_dim];
    let mut state = vec![0f32; s.state_len()];
    let dout = out.clone();
    let mut dqkv = vec![0f32; n * w];
    let (mut fwd, mut back) = (f64::MAX, f64::MAX);
    for _ in 0..20 {
        let t0 = Instant::now();
        attention_fwd(s, &qkv, &mut out, &mut state);
        let t1 = Instant::now();
        attention_back(s, &qkv, &state, &dout, &mut dqkv);
        fwd = fwd.min((t1 - t0).as_secs_f64() * 1e3);
        back = back.min(t1.elapsed().as_secs_f64() * 1e3);
    }
    println!("attention, one layer: best fwd {fwd:.2} ms, back {back:.2} ms");
}
