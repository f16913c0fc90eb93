//! Quantizers: f32 rows to the GGML block formats (the inverse of `quant`). The 32-value
//! formats round as GGML's reference quantizers do; the K formats choose per-sub-block scales
//! and mins from each sub-block's range (no iterative search), then pack them in 6 bits.

#![allow(clippy::needless_range_loop)]

use crate::{DType, TensorError};
use half::{bf16, f16};

fn put_f16(out: &mut Vec<u8>, x: f32) {
    out.extend_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
}

/// Quantizes `x` (rows of `cols` values) to type `t`; returns the packed bytes.
pub fn quantize_rows(t: DType, x: &[f32], cols: usize) -> Result<Vec<u8>, TensorError> {
    let bs = t.block_size();
    if cols == 0 || !cols.is_multiple_of(bs) || !x.len().is_multiple_of(cols) {
        return Err(TensorError::BadRowLength { dtype: t, n: cols });
    }
    let mut out = Vec::with_capacity(x.len() / bs * t.type_size());
    match t {
        DType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => x.iter().for_each(|&v| put_f16(&mut out, v)),
        DType::BF16 => x
            .iter()
            .for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes())),
        DType::Q8_0 => x.chunks_exact(32).for_each(|b| q8_0(b, &mut out)),
        DType::Q4_0 => x.chunks_exact(32).for_each(|b| q_sym(b, 4, &mut out)),
        DType::Q5_0 => x.chunks_exact(32).for_each(|b| q_sym(b, 5, &mut out)),
        DType::Q4_1 => x.chunks_exact(32).for_each(|b| q_asym(b, 4, &mut out)),
        DType::Q5_1 => x.chunks_exact(32).for_each(|b| q_asym(b, 5, &mut out)),
        DType::Q4K => x.chunks_exact(256).for_each(|b| q_k(b, 4, &mut out)),
        DType::Q5K => x.chunks_exact(256).for_each(|b| q_k(b, 5, &mut out)),
        DType::Q6K => x.chunks_exact(256).for_each(|b| q6_k(b, &mut out)),
        _ => return Err(TensorError::Unsupported(t)),
    }
    Ok(out)
}

/// Types `quantize_rows` can write.
pub const QUANTIZE_TYPES: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

fn q8_0(b: &[f32], out: &mut Vec<u8>) {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Q4_0 / Q5_0: scale from the value of largest magnitude (sign kept), offset 8 / 16.
fn q_sym(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let half = (1 << (bits - 1)) as f32; // 8 or 16
    let top = (1u32 << bits) - 1;
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in b {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -half;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: Vec<u32> = b
        .iter()
        .map(|&v| ((v * id + half + 0.5) as i32).clamp(0, top as i32) as u32)
        .collect();
    put_f16(out, d);
    pack_nibbles(&q, bits, out);
}

/// Q4_1 / Q5_1: scale and minimum from the block's range.
fn q_asym(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let top = (1u32 << bits) - 1;
    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / top as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: Vec<u32> = b
        .iter()
        .map(|&v| (((v - min) * id + 0.5) as i32).clamp(0, top as i32) as u32)
        .collect();
    put_f16(out, d);
    put_f16(out, min);
    pack_nibbles(&q, bits, out);
}

/// Low nibbles of values j and j + 16 share byte j; 5-bit types put the fifth bits in a
/// 32-bit mask first.
fn pack_nibbles(q: &[u32], bits: u32, out: &mut Vec<u8>) {
    if bits == 5 {
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            qh |= ((v >> 4) & 1) << j;
        }
        out.extend_from_slice(&qh.to_le_bytes());
    }
    for j in 0..16 {
        out.push(((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8);
    }
}

/// Q4_K / Q5_K: 8 sub-blocks of 32, each x ~ d * sc * q - dmin * m with 6-bit sc and m.
fn q_k(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let top = ((1u32 << bits) - 1) as f32;
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let s = &b[32 * j..32 * j + 32];
        let lo = s.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
        let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scales[j] = (hi - lo) / top;
        mins[j] = -lo;
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let d = max_scale / 63.0;
    let dmin = max_min / 63.0;
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = if d > 0.0 {
            (scales[j] / d).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        lm[j] = if dmin > 0.0 {
            (mins[j] / dmin).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    // the f16-rounded values are what a reader multiplies by
    let dr = f16::from_f32(d).to_f32();
    let dminr = f16::from_f32(dmin).to_f32();
    let mut q = [0u8; 256];
    for j in 0..8 {
        let sc = dr * ls[j] as f32;
        let m = dminr * lm[j] as f32;
        for i in 0..32 {
            let v = if sc > 0.0 {
                ((b[32 * j + i] + m) / sc).round().clamp(0.0, top)
            } else {
                0.0
            };
            q[32 * j + i] = v as u8;
        }
    }
    put_f16(out, d);
    put_f16(out, dmin);
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    out.extend_from_slice(&packed);
    if bits == 5 {
        let mut qh = [0u8; 32];
        for j in 0..8 {
            for i in 0..32 {
                qh[i] |= ((q[32 * j + i] >> 4) & 1) << j;
            }
        }
        out.extend_from_slice(&qh);
    }
    // sub-blocks 2c and 2c + 1 share 32 bytes: low and high nibbles
    for c in 0..4 {
        for i in 0..32 {
            out.push((q[64 * c + i] & 15) | ((q[64 * c + 32 + i] & 15) << 4));
        }
    }
}

/// Q6_K: 16 groups of 16 values with signed 8-bit scales under one f16 super-scale.
fn q6_k(b: &[f32], out: &mut Vec<u8>) {
    let mut scales = [0f32; 16];
    for g in 0..16 {
        let s = &b[16 * g..16 * g + 16];
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in s {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        scales[g] = max / -32.0;
    }
    let (mut amax, mut max) = (0f32, 0f32);
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max = s;
        }
    }
    let d = max / -128.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let dr = f16::from_f32(d).to_f32();
    let mut sc = [0i8; 16];
    let mut q = [0u8; 256];
    for g in 0..16 {
        sc[g] = (scales[g] * id).round().clamp(-128.0, 127.0) as i8;
        let s = dr * sc[g] as f32;
        for i in 0..16 {
            let v = if s != 0.0 {
                (b[16 * g + i] / s).round().clamp(-32.0, 31.0)
            } else {
                0.0
            };
            q[16 * g + i] = (v as i32 + 32) as u8;
        }
    }
    // layout: ql[128] (low nibbles), qh[64] (2 high bits), scales[16], d
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for half in 0..2 {
        for l in 0..32 {
            let base = 128 * half;
            let v = [
                q[base + l],
                q[base + l + 32],
                q[base + l + 64],
                q[base + l + 96],
            ];
            ql[64 * half + l] = (v[0] & 15) | ((v[2] & 15) << 4);
            ql[64 * half + l + 32] = (v[1] & 15) | ((v[3] & 15) << 4);
            qh[32 * half + l] =
                (v[0] >> 4) | ((v[1] >> 4) << 2) | ((v[2] >> 4) << 4) | ((v[3] >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    put_f16(out, d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    /// Quantize then dequantize: every value comes back within the format's step.
    #[test]
    fn round_trip_error_is_within_one_step() {
        let mut s = 99u64;
        let x: Vec<f32> = (0..1024)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 20001) as f32 / 10000.0 - 1.0) * 2.0
            })
            .collect();
        for (t, tol) in [
            (DType::F32, 0.0),
            (DType::F16, 1e-3),
            (DType::BF16, 1e-2),
            (DType::Q8_0, 0.01),
            (DType::Q4_0, 0.26),
            (DType::Q4_1, 0.16),
            (DType::Q5_0, 0.13),
            (DType::Q5_1, 0.08),
            (DType::Q4K, 0.2),
            (DType::Q5K, 0.1),
            (DType::Q6K, 0.07),
        ] {
            let q = quantize_rows(t, &x, 256).unwrap();
            assert_eq!(q.len() as u64, 4 * t.row_bytes(256).unwrap(), "{t}");
            let mut y = vec![0f32; 1024];
            for r in 0..4 {
                let rb = t.row_bytes(256).unwrap() as usize;
                dequantize_row(t, &q[r * rb..(r + 1) * rb], &mut y[r * 256..(r + 1) * 256])
                    .unwrap();
            }
            let worst = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= tol, "{t}: worst error {worst} > {tol}");
        }
        // all-zero input stays zero and never divides by zero
        for t in QUANTIZE_TYPES {
            let z = quantize_rows(t, &[0f32; 256], 256).unwrap();
            let mut y = vec![1f32; 256];
            dequantize_row(t, &z, &mut y).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{t}");
        }
        assert!(quantize_rows(DType::Q4_0, &[0f32; 40], 40).is_err());
    }
}
