//! Weight streaming of a decode step without the rest of the forward pass: SmolLM2-135M's
//! layer matrices (30 layers of q/k/v, o, gate/up, down) in Q4_1, one token, the same
//! parallel sections as the model, then its Q8_0 head. Prints GB/s of weights read:
//! `cargo run --release -p llmos-tensor --example decode_stream [THREADS] [LAYERS] [TYPE]`,
//! TYPE the layers' type: q4_1 (default), q8_0, q4_0, q5_0 or x8 (Q4_1 and the Q8_0 head
//! repacked eight rows at a time, see `llmos_tensor::x8`).
mod common;
use llmos_tensor::quantize::quantize_rows;
use llmos_tensor::{ActCache, ActMode, DType, Weight, matmul_cached, matmul_cached_multi};
use std::time::Instant;

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<usize> = all.iter().filter_map(|s| s.parse().ok()).collect();
    let x8 = all.get(2).map(String::as_str) == Some("x8");
    let lt = match all.get(2).map(String::as_str) {
        None | Some("q4_1") | Some("x8") => DType::Q4_1,
        Some("q8_0") => DType::Q8_0,
        Some("q4_0") => DType::Q4_0,
        Some("q5_0") => DType::Q5_0,
        Some(t) => {
            eprintln!("decode_stream: unknown type {t} (q4_1, q8_0, q4_0, q5_0, x8)");
            std::process::exit(2)
        }
    };
    let threads = args.first().copied().unwrap_or(2);
    let layers = args.get(1).copied().unwrap_or(30);
    llmos_tensor::init_threads(threads);
    let (e, kv, ff, vocab) = (576usize, 192usize, 1536usize, 49152usize);
    let mut rnd = common::values(0x9e37_79b9);
    let mut make = |t: DType, rows: usize, cols: usize| {
        let wf: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        quantize_rows(t, &wf, cols).expect("quantize")
    };
    let shapes = [(e, e), (kv, e), (kv, e), (e, e), (ff, e), (ff, e), (e, ff)];
    let data: Vec<Vec<Vec<u8>>> = (0..layers)
        .map(|_| {
            shapes
                .iter()
                .map(|&(r, c)| {
                    let d = make(lt, r, c);
                    if x8 {
                        llmos_tensor::x8::repack(DType::Q4_1, &d, r, c).expect("repack")
                    } else {
                        d
                    }
                })
                .collect()
        })
        .collect();
    let mut head = make(DType::Q8_0, vocab, e);
    if x8 {
        head = llmos_tensor::x8::repack(DType::Q8_0, &head, vocab, e).expect("repack");
    }
    let ws: Vec<Vec<Weight>> = data
        .iter()
        .map(|l| {
            l.iter()
                .zip(&shapes)
                .map(|(d, &(r, c))| {
                    if x8 {
                        Weight::new_x8(DType::Q4_1, d, r, c).expect("weight")
                    } else {
                        Weight::new(lt, d, r, c).expect("weight")
                    }
                })
                .collect()
        })
        .collect();
    let wh = if x8 {
        Weight::new_x8(DType::Q8_0, &head, vocab, e).expect("weight")
    } else {
        Weight::new(DType::Q8_0, &head, vocab, e).expect("weight")
    };
    let bytes: usize = data.iter().flatten().map(|d| d.len()).sum::<usize>() + head.len();
    let x: Vec<f32> = (0..e).map(|_| rnd()).collect();
    let g: Vec<f32> = (0..ff).map(|_| rnd()).collect();
    let (mut q, mut k, mut v, mut o) =
        (vec![0f32; e], vec![0f32; kv], vec![0f32; kv], vec![0f32; e]);
    let (mut gg, mut u, mut logits) = (vec![0f32; ff], vec![0f32; ff], vec![0f32; vocab]);
    let mut times = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        for l in &ws {
            let mut c = ActCache::new();
            matmul_cached_multi(
                [&l[0], &l[1], &l[2]],
                &x,
                [&mut q, &mut k, &mut v],
                ActMode::Q8,
                &mut c,
            );
            let mut c = ActCache::new();
            matmul_cached(&l[3], &q, &mut o, ActMode::Q8, &mut c);
            let mut c = ActCache::new();
            matmul_cached_multi([&l[4], &l[5]], &o, [&mut gg, &mut u], ActMode::Q8, &mut c);
            let mut c = ActCache::new();
            matmul_cached(&l[6], &g, &mut o, ActMode::Q8, &mut c);
        }
        let mut c = ActCache::new();
        matmul_cached(&wh, &x, &mut logits, ActMode::Q8, &mut c);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let gb = bytes as f64 / 1e9;
    println!(
        "{threads} threads, {layers} layers ({lt}) + head, {:.1} MB: best {:.2} GB/s, median {:.2} GB/s ({:.1} tokens/s)",
        bytes as f64 / 1e6,
        gb / times[0],
        gb / times[15],
        1.0 / times[15]
    );
}
