//! Scalar dequantization: the reference for every block format.
//!
//! Layouts follow the GGUF/GGML block definitions (all little-endian). Each `dequant_*`
//! turns one block of bytes into `block_size` f32 values. These are the test oracles for any
//! faster kernel, so they favour plainness over speed.

// block kernels index several arrays in step; explicit indices read like the format spec
#![allow(clippy::needless_range_loop)]

use crate::{DType, TensorError};
use half::{bf16, f16};

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q8_0: d (f16), then 32 signed bytes. x = d * q.
pub fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = d * (b[2 + j] as i8) as f32;
    }
}

/// Q4_0: d (f16), 16 bytes of nibbles. Low nibbles are values 0..16, high nibbles 16..32;
/// x = d * (q - 8).
pub fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
        y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: d (f16), m (f16), 16 bytes of nibbles; x = d * q + m.
pub fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * (qs[j] & 0x0f) as f32 + m;
        y[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// Q5_0: d (f16), qh (u32: the fifth bit of each of the 32 values), 16 bytes of nibbles;
/// x = d * (q - 16).
pub fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * ((((qs[j] & 0x0f) as u32) | h0) as i32 - 16) as f32;
        y[j + 16] = d * ((((qs[j] >> 4) as u32) | h1) as i32 - 16) as f32;
    }
}

/// Q5_1: d (f16), m (f16), qh (u32), 16 bytes of nibbles; x = d * q + m.
pub fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (((qs[j] & 0x0f) as u32) | h0) as f32 + m;
        y[j + 16] = d * (((qs[j] >> 4) as u32) | h1) as f32 + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 `scales` bytes of
/// Q4_K and Q5_K: sub-blocks 0..4 sit in the low 6 bits of bytes 0..4 (scales) and 4..8
/// (mins); 4..8 are split between the nibbles of bytes 8..12 and the top 2 bits of 0..8.
#[inline]
pub fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: super-block of 256 = 8 sub-blocks of 32. d, dmin (f16), 12 bytes of packed 6-bit
/// scales/mins, 128 bytes of nibbles. x = d * sc * q - dmin * m.
pub fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        // each 32-byte chunk of qs holds two sub-blocks: low nibbles then high nibbles
        let (s0, m0) = k_scale_min(2 * c, scales);
        let (s1, m1) = k_scale_min(2 * c + 1, scales);
        let (d0, dm0) = (d * s0 as f32, dmin * m0 as f32);
        let (d1, dm1) = (d * s1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            out[l] = d0 * (q[l] & 0x0f) as f32 - dm0;
            out[l + 32] = d1 * (q[l] >> 4) as f32 - dm1;
        }
    }
}

/// Q5_K: like Q4_K plus 32 bytes `qh` holding each value's fifth bit: for value `l` of
/// sub-block `2c` (`2c+1`), bit `2c` (`2c+1`) of `qh[l]`.
pub fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (s0, m0) = k_scale_min(2 * c, scales);
        let (s1, m1) = k_scale_min(2 * c + 1, scales);
        let (d0, dm0) = (d * s0 as f32, dmin * m0 as f32);
        let (d1, dm1) = (d * s1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h0 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h1 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            out[l] = d0 * ((q[l] & 0x0f) | h0) as f32 - dm0;
            out[l + 32] = d1 * ((q[l] >> 4) | h1) as f32 - dm1;
        }
    }
}

/// Q6_K: 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits), 16 signed 8-bit scales
/// (one per 16 values), d (f16) last. x = d * sc * (q - 32).
pub fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * half + 64];
        let qh = &qh_all[32 * half..32 * half + 32];
        let sc = &sc_all[8 * half..8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Dequantizes a whole row: `src` holds `y.len()` values of type `t`.
pub fn dequantize_row(t: DType, src: &[u8], y: &mut [f32]) -> Result<(), TensorError> {
    let bs = t.block_size();
    let ts = t.type_size();
    let need = t
        .row_bytes(y.len() as u64)
        .ok_or(TensorError::BadRowLength {
            dtype: t,
            n: y.len(),
        })? as usize;
    if src.len() < need {
        return Err(TensorError::ShortData {
            dtype: t,
            need,
            have: src.len(),
        });
    }
    let f: fn(&[u8], &mut [f32]) = match t {
        DType::F32 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            return Ok(());
        }
        DType::F16 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
            return Ok(());
        }
        DType::BF16 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
            return Ok(());
        }
        DType::Q8_0 => dequant_q8_0,
        DType::Q4_0 => dequant_q4_0,
        DType::Q4_1 => dequant_q4_1,
        DType::Q5_0 => dequant_q5_0,
        DType::Q5_1 => dequant_q5_1,
        DType::Q4K => dequant_q4_k,
        DType::Q5K => dequant_q5_k,
        DType::Q6K => dequant_q6_k,
        other => return Err(TensorError::Unsupported(other)),
    };
    for (blk, out) in src.chunks_exact(ts).zip(y.chunks_exact_mut(bs)) {
        f(blk, out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Hand-computed blocks: each expected value below is worked out from the format's
    //! definition in the comment beside it, not taken from this code.
    use super::*;

    fn deq(t: DType, b: &[u8]) -> Vec<f32> {
        let mut y = vec![f32::NAN; t.block_size()];
        dequantize_row(t, b, &mut y).unwrap();
        y
    }

    const F16_HALF: [u8; 2] = 0x3800u16.to_le_bytes(); // 0.5
    const F16_ONE: [u8; 2] = 0x3C00u16.to_le_bytes(); // 1.0
    const F16_TWO: [u8; 2] = 0x4000u16.to_le_bytes(); // 2.0
    const F16_MINUS_ONE: [u8; 2] = 0xBC00u16.to_le_bytes(); // -1.0
    const F16_QUARTER: [u8; 2] = 0x3400u16.to_le_bytes(); // 0.25

    #[test]
    fn f32_f16_bf16() {
        assert_eq!(deq(DType::F32, &1.5f32.to_le_bytes()), [1.5]);
        assert_eq!(deq(DType::F16, &F16_TWO), [2.0]);
        assert_eq!(deq(DType::BF16, &0x3F80u16.to_le_bytes()), [1.0]);
        assert_eq!(deq(DType::BF16, &0xC000u16.to_le_bytes()), [-2.0]);
    }

    #[test]
    fn q8_0() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&F16_HALF);
        for (i, q) in [-128i8, -1, 0, 1, 127].iter().enumerate() {
            b[2 + i] = *q as u8;
        }
        let y = deq(DType::Q8_0, &b);
        assert_eq!(&y[..5], [-64.0, -0.5, 0.0, 0.5, 63.5]);
        assert!(y[5..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q4_0() {
        let mut b = vec![0x88u8; 18]; // nibbles of 8 decode to 0
        b[..2].copy_from_slice(&F16_TWO);
        b[2] = 0x1F; // y[0] = (15-8)*2 = 14, y[16] = (1-8)*2 = -14
        b[3] = 0x80; // y[1] = (0-8)*2 = -16, y[17] = 0
        let y = deq(DType::Q4_0, &b);
        assert_eq!(
            (y[0], y[16], y[1], y[17], y[2]),
            (14.0, -14.0, -16.0, 0.0, 0.0)
        );
    }

    #[test]
    fn q4_1() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&F16_HALF);
        b[2..4].copy_from_slice(&F16_MINUS_ONE);
        b[4] = 0x3A; // y[0] = 10*0.5 - 1 = 4, y[16] = 3*0.5 - 1 = 0.5
        let y = deq(DType::Q4_1, &b);
        assert_eq!((y[0], y[16], y[1]), (4.0, 0.5, -1.0));
    }

    #[test]
    fn q5_0() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&F16_ONE);
        b[2..6].copy_from_slice(&((1u32 << 0) | (1 << 16)).to_le_bytes());
        b[6] = 0x21; // y[0] = (1|16)-16 = 1, y[16] = (2|16)-16 = 2
        let y = deq(DType::Q5_0, &b);
        assert_eq!((y[0], y[16], y[1], y[17]), (1.0, 2.0, -16.0, -16.0));
    }

    #[test]
    fn q5_1() {
        let mut b = vec![0u8; 24];
        b[..2].copy_from_slice(&F16_ONE);
        b[2..4].copy_from_slice(&F16_HALF);
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8] = 0x0F; // y[0] = (15|16) + 0.5 = 31.5, y[16] = 0 + 0.5
        let y = deq(DType::Q5_1, &b);
        assert_eq!((y[0], y[16], y[1]), (31.5, 0.5, 0.5));
    }

    /// Scales for the K-quant tests: sub-block 0 scale 2 min 3, sub-block 1 scale 5 min 1,
    /// sub-block 4 scale 1 | (1 << 4) = 17 (top bits come from byte 0) and min 7.
    fn k_scales() -> [u8; 12] {
        let mut s = [0u8; 12];
        s[0] = 2 | (1 << 6);
        s[4] = 3;
        s[1] = 5;
        s[5] = 1;
        s[8] = 0x71;
        s
    }

    #[test]
    fn k_scale_unpacking() {
        let s = k_scales();
        assert_eq!(k_scale_min(0, &s), (2, 3));
        assert_eq!(k_scale_min(1, &s), (5, 1));
        assert_eq!(k_scale_min(4, &s), (17, 7));
    }

    #[test]
    fn q4_k() {
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&F16_ONE);
        b[2..4].copy_from_slice(&F16_HALF);
        b[4..16].copy_from_slice(&k_scales());
        b[16] = 0x94; // y[0] = 2*4 - 0.5*3 = 6.5 ; y[32] = 5*9 - 0.5*1 = 44.5
        b[16 + 64] = 0x0A; // chunk 2, low nibble -> sub-block 4: y[128] = 17*10 - 0.5*7 = 166.5
        let y = deq(DType::Q4K, &b);
        assert_eq!((y[0], y[32], y[128], y[1]), (6.5, 44.5, 166.5, -1.5));
    }

    #[test]
    fn q5_k() {
        let mut b = vec![0u8; 176];
        b[..2].copy_from_slice(&F16_ONE);
        b[2..4].copy_from_slice(&F16_HALF);
        b[4..16].copy_from_slice(&k_scales());
        b[16] = 0b1_0011; // value 0: fifth bit for sub-blocks 0, 1 and 4
        b[48] = 0x94; // y[0] = 2*(4+16) - 1.5 = 38.5 ; y[32] = 5*(9+16) - 0.5 = 124.5
        b[48 + 64] = 0x0A; // y[128] = 17*(10+16) - 3.5 = 438.5
        let y = deq(DType::Q5K, &b);
        assert_eq!((y[0], y[32], y[128], y[1]), (38.5, 124.5, 438.5, -1.5));
    }

    #[test]
    fn q6_k() {
        let mut b = vec![0u8; 210];
        b[0] = 0x21; // ql[0]: low 1 (value 0), high 2 (value 64)
        b[128] = 0b11_10_01_00; // qh[0]: 2-bit highs 0 (v0), 1 (v32), 2 (v64), 3 (v96)
        b[192] = 2;
        b[194] = (-3i8) as u8;
        b[196] = 1;
        b[198] = 4;
        b[64] = 0x05; // second half: ql[64] low 5, qh[32] = 0, scale[8] = 1
        b[200] = 1;
        b[208..210].copy_from_slice(&F16_QUARTER);
        let y = deq(DType::Q6K, &b);
        // v0: (1 | 0<<4) - 32 = -31 -> 0.25*2*-31 = -15.5
        // v32: (0 | 1<<4) - 32 = -16 -> 0.25*-3*-16 = 12
        // v64: (2 | 2<<4) - 32 = 2 -> 0.25*1*2 = 0.5
        // v96: (0 | 3<<4) - 32 = 16 -> 0.25*4*16 = 16
        // v128: 5 - 32 = -27 -> 0.25*1*-27 = -6.75
        assert_eq!(
            (y[0], y[32], y[64], y[96], y[128]),
            (-15.5, 12.0, 0.5, 16.0, -6.75)
        );
    }

    #[test]
    fn rows_are_blocks_in_order_and_bad_lengths_fail() {
        let mut two = vec![0u8; 68];
        two[..2].copy_from_slice(&F16_ONE);
        two[34..36].copy_from_slice(&F16_TWO);
        two[2] = 3;
        two[36] = 3;
        let mut y = vec![0f32; 64];
        dequantize_row(DType::Q8_0, &two, &mut y).unwrap();
        assert_eq!((y[0], y[32]), (3.0, 6.0));
        assert!(dequantize_row(DType::Q8_0, &two, &mut [0f32; 40]).is_err());
        assert!(dequantize_row(DType::Q8_0, &two[..60], &mut y).is_err());
        assert!(dequantize_row(DType::Q2K, &[0u8; 84], &mut vec![0f32; 256]).is_err());
    }
}
