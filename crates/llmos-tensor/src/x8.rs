//! Q4_1 weights repacked eight rows at a time ("X8"), for kernels that make eight rows'
//! dot products with one instruction per four values.
//!
//! The row-major Q4_1 kernels ([`crate::q8::vec_dot`] and its SIMD forms) follow llama.cpp's
//! lane order: per block, eight partial integer sums are converted and multiplied into eight
//! float lanes. That pins three vector operations (integer products, conversion, fused
//! multiply-add) to every 32 values of every row and token. Here the 32-bit lanes of a
//! register are eight *rows*: `vpdpbusd` adds four products of one row to its lane, eight of
//! them make each row's whole integer sum of a block, and one conversion and two fused
//! multiply-adds finish the block for all eight rows. The float arithmetic per row and token
//! is (in block order) `acc = (d_w * d_a) * isum + acc; acc = m_w * s_a + acc`, each step
//! rounded once, so every kernel below and the scalar reference [`dot_ref`] agree bit for
//! bit for any number of tokens. The sums are as exact as llama.cpp's, in another order:
//! results differ from the row-major kernels in the last bits.
//!
//! Layout: rows in groups of eight; a group holds, per block i of 32 columns, 160 bytes:
//! the eight rows' scales `d` (f16, row r at byte 2r), their minimums `m` (f16, at 16 + 2r),
//! then four chunks of 32 bytes where chunk k holds, at bytes 4r..4r+4, row r's quant bytes
//! 4k..4k+4 (low nibbles: values 4k..4k+4, high nibbles: values 16+4k..16+4k+4). The bytes
//! are the Q4_1 file's, moved: a repacked matrix has the original's size.

#![allow(clippy::needless_range_loop)]

use crate::q8::BlockQ8;

use half::f16;

/// Rows per group.
pub const GROUP: usize = 8;
/// Bytes per group and block of 32 columns.
pub const GROUP_BLOCK: usize = 160;
const Q4_1_BLOCK: usize = 20;

/// Repacks a row-major Q4_1 matrix (`rows` x `cols`, `src` its bytes) into the X8 layout,
/// or None when the rows are not a whole number of groups or the columns of blocks.
pub fn repack_q4_1(src: &[u8], rows: usize, cols: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; src.len()];
    repack_q4_1_into(src, rows, cols, &mut out).then_some(out)
}

/// [`repack_q4_1`] into `out` (the matrix's size); false (and `out` untouched) where it
/// does not apply.
pub fn repack_q4_1_into(src: &[u8], rows: usize, cols: usize, out: &mut [u8]) -> bool {
    if !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(32) || rows == 0 {
        return false;
    }
    let nb = cols / 32;
    let rb = nb * Q4_1_BLOCK;
    if src.len() != rows * rb || out.len() != src.len() {
        return false;
    }
    for (g, dst) in out.chunks_exact_mut(GROUP * rb).enumerate() {
        let rows_of = &src[g * GROUP * rb..(g + 1) * GROUP * rb];
        for i in 0..nb {
            let o = &mut dst[i * GROUP_BLOCK..(i + 1) * GROUP_BLOCK];
            for r in 0..GROUP {
                let b = &rows_of[r * rb + i * Q4_1_BLOCK..r * rb + (i + 1) * Q4_1_BLOCK];
                o[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[2..4]);
                for k in 0..4 {
                    let at = 32 + 32 * k + 4 * r;
                    o[at..at + 4].copy_from_slice(&b[4 + 4 * k..4 + 4 * k + 4]);
                }
            }
        }
    }
    true
}

#[inline(always)]
fn f16_le(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Quant byte j (0..16) of row `lane` in a group's block `blk` (160 bytes).
#[inline(always)]
fn quant_byte(blk: &[u8], lane: usize, j: usize) -> u8 {
    blk[32 + 32 * (j / 4) + 4 * lane + j % 4]
}

/// Row `r` of an X8 matrix with `cols` columns, as f32 (the values the row-major Q4_1 row
/// dequantizes to).
pub fn dequantize_row(data: &[u8], cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / 32;
    let (g, lane) = (r / GROUP, r % GROUP);
    let grp = &data[g * nb * GROUP_BLOCK..(g + 1) * nb * GROUP_BLOCK];
    for (i, o) in out[..cols].chunks_exact_mut(32).enumerate() {
        let blk = &grp[i * GROUP_BLOCK..(i + 1) * GROUP_BLOCK];
        let (d, m) = (f16_le(blk, 2 * lane), f16_le(blk, 16 + 2 * lane));
        for j in 0..16 {
            let q = quant_byte(blk, lane, j);
            o[j] = (q & 0x0f) as f32 * d + m;
            o[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

/// The reference: the eight rows of `group` (nb blocks of [`GROUP_BLOCK`] bytes) against N
/// activation rows (nb Q8_1 blocks each): out[n][r].
pub fn dot_ref<const N: usize>(group: &[u8], ys: [&[BlockQ8]; N]) -> [[f32; GROUP]; N] {
    let nb = group.len() / GROUP_BLOCK;
    let mut out = [[0f32; GROUP]; N];
    for (n, y) in ys.iter().enumerate() {
        for r in 0..GROUP {
            let mut acc = 0f32;
            for (i, a) in y[..nb].iter().enumerate() {
                let blk = &group[i * GROUP_BLOCK..(i + 1) * GROUP_BLOCK];
                let mut isum = 0i32;
                for j in 0..16 {
                    let q = quant_byte(blk, r, j);
                    isum += (q & 0x0f) as i32 * a.qs[j] as i32;
                    isum += (q >> 4) as i32 * a.qs[j + 16] as i32;
                }
                let (d, m) = (f16_le(blk, 2 * r), f16_le(blk, 16 + 2 * r));
                acc = (d * a.d).mul_add(isum as f32, acc);
                acc = m.mul_add(a.s, acc);
            }
            out[n][r] = acc;
        }
    }
    out
}

/// Consecutive groups of an X8 matrix (`w`: whole groups of `nb` blocks each) against N
/// activation rows: out[n * stride + r] for every row r of those groups. N = 1 is token
/// generation (with prefetch ahead of the stream), more a batch of sequences or a prompt.
pub fn tile<const N: usize>(
    w: &[u8],
    nb: usize,
    ys: [&[BlockQ8]; N],
    out: &mut [f32],
    stride: usize,
) {
    let gb = nb * GROUP_BLOCK;
    let rows = w.len() / gb.max(1) * GROUP;
    assert!(
        nb > 0
            && w.len().is_multiple_of(gb)
            && ys.iter().all(|y| y.len() >= nb)
            && stride >= rows
            && out.len() >= (N - 1) * stride + rows,
        "x8::tile: {} bytes of {nb} blocks per row, {} outputs, stride {stride}",
        w.len(),
        out.len(),
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        let yp: [*const BlockQ8; N] = std::array::from_fn(|n| ys[n].as_ptr());
        for g in 0..rows / GROUP {
            // SAFETY: the CPU has the features each kernel enables (available(), vnni());
            // group g holds nb blocks and each activation row nb blocks (checked above).
            let s = unsafe {
                let gp = w.as_ptr().add(g * gb);
                if crate::avx2::vnni() {
                    simd::group_vnni::<N>(gp, nb, yp)
                } else {
                    simd::group_avx2::<N>(gp, nb, yp)
                }
            };
            for n in 0..N {
                let at = n * stride + g * GROUP;
                out[at..at + GROUP].copy_from_slice(&s[n]);
            }
        }
        return;
    }
    for g in 0..rows / GROUP {
        let s = dot_ref(&w[g * gb..(g + 1) * gb], ys);
        for n in 0..N {
            let at = n * stride + g * GROUP;
            out[at..at + GROUP].copy_from_slice(&s[n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::GROUP_BLOCK;
    use crate::q8::BlockQ8;
    use std::arch::x86_64::*;

    /// Bytes ahead of the block in use that token generation asks L1 for, and L2.
    const PREFETCH: usize = 3072;
    const PREFETCH_L2: usize = 8192;

    /// [`group_body`] with AVX2 (`vpmaddubsw` + `vpmaddwd` for the integer sums).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `g` points at nb blocks of a group, each `ys` at nb blocks.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn group_avx2<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: the caller's promise
        unsafe { group_body::<N, false>(g, nb, ys) }
    }

    /// [`group_body`] with `vpdpbusd`.
    ///
    /// # Safety
    /// As [`group_avx2`], and AVX-512 VNNI, VL and BW.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
    pub unsafe fn group_vnni<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: the caller's promise
        unsafe { group_body::<N, true>(g, nb, ys) }
    }

    /// One group's eight rows against N tokens: lane r of result n = row r . token n, as
    /// [`super::dot_ref`] computes it. With N = 1 it prefetches ahead of the group (the
    /// groups of a task are one stream).
    ///
    /// # Safety
    /// The enclosing function's target features; `g` holds nb blocks, each `ys[n]` nb.
    #[inline(always)]
    unsafe fn group_body<const N: usize, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: every load is within the group's nb blocks or the activations' nb blocks
        // (the caller's promise); prefetches may point anywhere.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                let b = g.add(i * GROUP_BLOCK);
                for l in [0, 64, 128] {
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH + l).cast());
                    _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add(PREFETCH_L2 + l).cast());
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(b.cast()));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(b.add(16).cast()));
                let mut lo = [_mm256_setzero_si256(); 4];
                let mut hi = [_mm256_setzero_si256(); 4];
                for k in 0..4 {
                    let q = _mm256_loadu_si256(b.add(32 + 32 * k).cast());
                    lo[k] = _mm256_and_si256(q, m4);
                    hi[k] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                }
                for n in 0..N {
                    let y = &*ys[n].add(i);
                    let a = y.qs.as_ptr();
                    let bc = |o: usize| _mm256_set1_epi32(a.add(o).cast::<i32>().read_unaligned());
                    let isum = if VNNI {
                        let z = _mm256_setzero_si256();
                        let mut s0 = _mm256_dpbusd_epi32(z, lo[0], bc(0));
                        let mut s1 = _mm256_dpbusd_epi32(z, hi[0], bc(16));
                        for k in 1..4 {
                            s0 = _mm256_dpbusd_epi32(s0, lo[k], bc(4 * k));
                            s1 = _mm256_dpbusd_epi32(s1, hi[k], bc(16 + 4 * k));
                        }
                        _mm256_add_epi32(s0, s1)
                    } else {
                        // each 16-bit pair sum is at most 2 * 15 * 128 in size, eight of them
                        // 30720: no saturation
                        let p = |w: __m256i, o: usize| _mm256_maddubs_epi16(w, bc(o));
                        let mut s = _mm256_add_epi16(p(lo[0], 0), p(hi[0], 16));
                        for k in 1..4 {
                            s = _mm256_add_epi16(s, p(lo[k], 4 * k));
                            s = _mm256_add_epi16(s, p(hi[k], 16 + 4 * k));
                        }
                        _mm256_madd_epi16(s, ones)
                    };
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                    acc[n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[n]);
                    acc[n] = _mm256_fmadd_ps(mw, _mm256_set1_ps(y.s), acc[n]);
                }
            }
            let mut out = [[0f32; 8]; N];
            for n in 0..N {
                _mm256_storeu_ps(out[n].as_mut_ptr(), acc[n]);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::q8::{quantize_q8, vec_dot_n};

    fn rng(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// A random Q4_1 matrix (row-major bytes).
    fn q4_1_matrix(rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 32 {
            let d = f16::from_f32(rng(seed).abs() * 0.1 + 1e-3);
            let m = f16::from_f32(rng(seed) * 0.5);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
            out.extend_from_slice(&m.to_bits().to_le_bytes());
            for _ in 0..16 {
                out.push(((rng(seed) + 1.0) * 127.9) as u8);
            }
        }
        out
    }

    #[test]
    fn repacked_rows_dequantize_to_the_original_rows() {
        let (rows, cols) = (24, 96);
        let mut seed = 7;
        let w = q4_1_matrix(rows, cols, &mut seed);
        let x = repack_q4_1(&w, rows, cols).unwrap();
        assert_eq!(x.len(), w.len());
        let rb = w.len() / rows;
        for r in 0..rows {
            let mut a = vec![0f32; cols];
            let mut b = vec![0f32; cols];
            crate::quant::dequantize_row(DType::Q4_1, &w[r * rb..(r + 1) * rb], &mut a).unwrap();
            dequantize_row(&x, cols, r, &mut b);
            assert_eq!(a, b, "row {r}");
        }
        assert!(repack_q4_1(&w, rows - 1, cols).is_none());
        assert!(repack_q4_1(&w[..w.len() - 1], rows, cols).is_none());
    }

    #[test]
    fn the_reference_is_close_to_the_row_major_dot() {
        let (rows, cols) = (8, 256);
        let mut seed = 11;
        let w = q4_1_matrix(rows, cols, &mut seed);
        let x = repack_q4_1(&w, rows, cols).unwrap();
        let act: Vec<f32> = (0..cols).map(|_| rng(&mut seed)).collect();
        let y = quantize_q8(&act);
        let got = dot_ref(&x, [&y[..]]);
        let rb = w.len() / rows;
        for r in 0..rows {
            let want = vec_dot_n(
                DType::Q4_1,
                &w[r * rb..(r + 1) * rb],
                [crate::q8::ActRow::Q8(&y)],
            )[0];
            let tol = 1e-5 * want.abs().max(1.0);
            assert!(
                (got[0][r] - want).abs() <= tol,
                "row {r}: {} vs {want}",
                got[0][r]
            );
        }
    }

    fn check_tile<const N: usize>(groups: usize, nb: usize, seed: &mut u64) {
        let (rows, cols) = (groups * GROUP, nb * 32);
        let w = q4_1_matrix(rows, cols, seed);
        let x = repack_q4_1(&w, rows, cols).unwrap();
        let ys: Vec<Vec<BlockQ8>> = (0..N)
            .map(|_| quantize_q8(&(0..cols).map(|_| rng(seed) * 3.0).collect::<Vec<_>>()))
            .collect();
        let yr: [&[BlockQ8]; N] = std::array::from_fn(|n| &ys[n][..]);
        let stride = rows + 3;
        let mut out = vec![f32::NAN; N * stride];
        tile(&x, nb, yr, &mut out, stride);
        let gb = nb * GROUP_BLOCK;
        for g in 0..groups {
            let want = dot_ref(&x[g * gb..(g + 1) * gb], yr);
            for n in 0..N {
                let got = &out[n * stride + g * GROUP..n * stride + (g + 1) * GROUP];
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want[n]), "N {N}, group {g}, token {n}");
            }
        }
    }

    #[test]
    fn the_kernels_equal_the_reference_bit_for_bit() {
        let mut seed = 3;
        for (groups, nb) in [(1, 1), (3, 18), (2, 48), (1, 5)] {
            check_tile::<1>(groups, nb, &mut seed);
            check_tile::<2>(groups, nb, &mut seed);
            check_tile::<3>(groups, nb, &mut seed);
            check_tile::<5>(groups, nb, &mut seed);
            check_tile::<8>(groups, nb, &mut seed);
        }
    }
}
