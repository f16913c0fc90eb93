//! Q4_1, Q5_0 and Q8_0 weights repacked eight rows at a time ("X8"), for kernels that make eight
//! rows' dot products with one instruction per four values.
//!
//! Here the 32-bit lanes of a register are eight *rows*: one `vpdpbusd` adds four products
//! of each of eight rows to its lane, where a row-major kernel makes one row's lanes at a
//! time and needs its scale broadcast, its nibbles unpacked and its row reduced on its own.
//! The arithmetic is the row-major kernels' ([`crate::q8::vec_dot`]), bit for bit:
//! - Q4_1 in llama.cpp's lane order: per block, lane m of a row is the integer sum of its
//!   products 4m..4m+3 (one `vpdpbusd` from zero gives lane m of eight rows), and
//!   `acc[m] = (d_w * d_a) * lane + acc[m]`; the min terms `m_w * s_a` add up apart; the
//!   lanes reduce as llama.cpp's `hsum_float_8` (here across eight registers, lane-wise), and
//!   the min sum comes last. Eight rows' block costs eight conversions and eight fused
//!   multiply-adds, the same as row-major, but no broadcasts, one scale multiply and one
//!   unpack for all eight.
//! - Q5_0 in llama.cpp's lane order too (no min terms).
//! - Q8_0 as the row-major Q8_0 kernels: one exact integer sum per block (eight `vpdpbusd`),
//!   `acc = isum * (d_w * d_a) + acc` in block order.
//!
//! So results do not depend on the layout (the tests compare with the row-major kernels),
//! and greedy decoding keeps following llama.cpp.
//!
//! Layout: rows in groups of eight; per block i of 32 columns a group holds
//! [`group_block`] bytes:
//! - Q4_1 (160): the eight rows' scales `d` (f16, row r at byte 2r), their minimums `m`
//!   (f16, at 16 + 2r), then four chunks of 32 bytes where chunk k holds, at bytes
//!   4r..4r+4, row r's quant bytes 4k..4k+4 (low nibbles: values 4k..4k+4, high nibbles:
//!   values 16+4k..16+4k+4).
//! - Q5_0 (176): the scales (16 bytes); eight 32-bit masks of the fifth bits, mask k (lanes
//!   0-3: low nibbles of chunk k, 4-7: high nibbles of chunk k - 4) holding at bits
//!   4r..4r+4 row r's fifth bits of the values lane k covers; then the four nibble chunks as
//!   Q4_1's. The kernel adds 16 to the bytes a mask selects (AVX-512 BW), takes the values
//!   unsigned (0..31) and starts each lane's sum from -16 times its four activations' sum
//!   ([`corrections`]); only the VNNI form exists (elsewhere Q5_0 stays row-major: see
//!   [`worth`]).
//! - Q8_0 (272): the scales (16 bytes), then eight chunks of 32 bytes, chunk k holding row
//!   r's values 4k..4k+4 at bytes 4r..4r+4, each plus 128 (top bit flipped) so `vpdpbusd`
//!   can take them as its unsigned operand; the sums start from -128 times the activation
//!   block's sum ([`corrections`]), which leaves the signed products' sum.
//!
//! A repacked matrix has the original's size.

#![allow(clippy::needless_range_loop)]

use crate::DType;
use crate::q8::BlockQ8;

use half::f16;

/// Rows per group.
pub const GROUP: usize = 8;
const Q4_1_BLOCK: usize = 20;
const Q5_0_BLOCK: usize = 22;
const Q8_0_BLOCK: usize = 34;

/// How a Q4_1 kernel adds up a row's products (the other types have one order each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sums {
    /// llama.cpp's lane order (the module docs): results equal llama.cpp's bit for bit.
    #[default]
    Lanes,
    /// One exact integer sum of a block's 32 products per row, then
    /// `acc = (d_w * d_a) * isum + acc; acc = m_w * s_a + acc` in block order: two fused
    /// multiply-adds per block for eight rows instead of eight, so a batch of tokens makes
    /// about half the floating-point work. As accurate, rounded differently: logits move in
    /// their last bits, and a near-tie can go the other way.
    Blocks,
}

/// The first of the four values (of a block's 32) that lane m (0..8) of a row covers in
/// llama.cpp's lane order: lanes 0-3 the low nibbles' values 0-15, lanes 4-7 the high
/// nibbles' 16-31.
const fn lane_first(m: usize) -> usize {
    if m < 4 { 4 * m } else { 16 + 4 * (m - 4) }
}

/// Whether weights of type `dt` have an X8 form.
pub fn supports(dt: DType) -> bool {
    matches!(dt, DType::Q4_1 | DType::Q5_0 | DType::Q8_0)
}

/// Whether repacking weights of type `dt` pays on this CPU: Q4_1 and Q8_0 always, Q5_0
/// where its VNNI kernel runs (elsewhere only the scalar reference reads its X8 form).
pub fn worth(dt: DType) -> bool {
    match dt {
        DType::Q4_1 | DType::Q8_0 => true,
        #[cfg(target_arch = "x86_64")]
        DType::Q5_0 => crate::avx2::vnni(),
        _ => false,
    }
}

/// Bytes per group and block of 32 columns.
pub const fn group_block(dt: DType) -> usize {
    match dt {
        DType::Q8_0 => 8 * Q8_0_BLOCK,
        DType::Q5_0 => 8 * Q5_0_BLOCK,
        _ => 8 * Q4_1_BLOCK,
    }
}

/// Repacks a row-major Q4_1 or Q8_0 matrix (`rows` x `cols`, `src` its bytes) into the X8
/// layout, or None when the type has no X8 form, the rows are not a whole number of groups
/// or the columns of blocks.
pub fn repack(dt: DType, src: &[u8], rows: usize, cols: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; src.len()];
    repack_into(dt, src, rows, cols, &mut out).then_some(out)
}

/// [`repack`] into `out` (the matrix's size); false where it does not apply (`out` is then
/// left as it was).
pub fn repack_into(dt: DType, src: &[u8], rows: usize, cols: usize, out: &mut [u8]) -> bool {
    if !supports(dt) || !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(32) || rows == 0 {
        return false;
    }
    let nb = cols / 32;
    let bb = group_block(dt) / GROUP;
    let rb = nb * bb;
    if src.len() != rows * rb || out.len() != src.len() {
        return false;
    }
    for (g, dst) in out.chunks_exact_mut(GROUP * rb).enumerate() {
        let rows_of = &src[g * GROUP * rb..(g + 1) * GROUP * rb];
        for i in 0..nb {
            let o = &mut dst[i * GROUP * bb..(i + 1) * GROUP * bb];
            let mut masks = [0u32; 8];
            for r in 0..GROUP {
                let b = &rows_of[r * rb + i * bb..r * rb + (i + 1) * bb];
                o[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                if dt == DType::Q4_1 {
                    o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[2..4]);
                    for k in 0..4 {
                        let at = 32 + 32 * k + 4 * r;
                        o[at..at + 4].copy_from_slice(&word(4 + 4 * k).to_le_bytes());
                    }
                } else if dt == DType::Q5_0 {
                    let qh = word(2);
                    for (m, mask) in masks.iter_mut().enumerate() {
                        let from = lane_first(m);
                        *mask |= ((qh >> from) & 0xf) << (4 * r);
                    }
                    for k in 0..4 {
                        let at = 48 + 32 * k + 4 * r;
                        o[at..at + 4].copy_from_slice(&word(6 + 4 * k).to_le_bytes());
                    }
                } else {
                    for k in 0..8 {
                        let at = 16 + 32 * k + 4 * r;
                        let v = word(2 + 4 * k) ^ 0x8080_8080;
                        o[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            if dt == DType::Q5_0 {
                for (m, mask) in masks.iter().enumerate() {
                    o[16 + 4 * m..20 + 4 * m].copy_from_slice(&mask.to_le_bytes());
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

/// Q4_1: quant byte j (0..16) of row `lane` in a group's block `blk`.
#[inline(always)]
fn q4_byte(blk: &[u8], lane: usize, j: usize) -> u8 {
    blk[32 + 32 * (j / 4) + 4 * lane + j % 4]
}

/// Q5_0: value j (0..32) of row `lane` in a group's block `blk` (-16..16).
#[inline(always)]
fn q5_value(blk: &[u8], lane: usize, j: usize) -> i32 {
    let (k, hi) = (j % 16 / 4, j >= 16);
    let byte = blk[48 + 32 * k + 4 * lane + j % 4];
    let nib = if hi { byte >> 4 } else { byte & 0x0f };
    let m = if hi { 4 + k } else { k };
    let mask = u32::from_le_bytes([
        blk[16 + 4 * m],
        blk[17 + 4 * m],
        blk[18 + 4 * m],
        blk[19 + 4 * m],
    ]);
    (nib as i32 | (((mask >> (4 * lane + j % 4)) & 1) << 4) as i32) - 16
}

/// Q8_0: value j (0..32) of row `lane` in a group's block `blk`.
#[inline(always)]
fn q8_value(blk: &[u8], lane: usize, j: usize) -> i8 {
    (blk[16 + 32 * (j / 4) + 4 * lane + j % 4] ^ 0x80) as i8
}

/// Row `r` of an X8 matrix of type `dt` with `cols` columns, as f32 (the values the
/// row-major row dequantizes to).
pub fn dequantize_row(dt: DType, data: &[u8], cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / 32;
    let gbk = group_block(dt);
    let (g, lane) = (r / GROUP, r % GROUP);
    let grp = &data[g * nb * gbk..(g + 1) * nb * gbk];
    for (i, o) in out[..cols].chunks_exact_mut(32).enumerate() {
        let blk = &grp[i * gbk..(i + 1) * gbk];
        let d = f16_le(blk, 2 * lane);
        if dt == DType::Q4_1 {
            let m = f16_le(blk, 16 + 2 * lane);
            for j in 0..16 {
                let q = q4_byte(blk, lane, j);
                o[j] = (q & 0x0f) as f32 * d + m;
                o[j + 16] = (q >> 4) as f32 * d + m;
            }
        } else if dt == DType::Q5_0 {
            for j in 0..32 {
                o[j] = q5_value(blk, lane, j) as f32 * d;
            }
        } else {
            for j in 0..32 {
                o[j] = q8_value(blk, lane, j) as f32 * d;
            }
        }
    }
}

/// The reference: the eight rows of `group` (nb blocks of [`group_block`] bytes) against N
/// activation rows (nb Q8 blocks each): out[n][r], computed as the row-major reference
/// computes each row (see the module docs), or for Q4_1 with [`Sums::Blocks`] in block
/// order.
pub fn dot_ref<const N: usize>(
    dt: DType,
    sums: Sums,
    group: &[u8],
    ys: [&[BlockQ8]; N],
) -> [[f32; GROUP]; N] {
    let gbk = group_block(dt);
    let nb = group.len() / gbk;
    let mut out = [[0f32; GROUP]; N];
    for (n, y) in ys.iter().enumerate() {
        for r in 0..GROUP {
            let (mut acc, mut lanes, mut summs) = (0f32, [0f32; 8], 0f32);
            for (i, a) in y[..nb].iter().enumerate() {
                let blk = &group[i * gbk..(i + 1) * gbk];
                let d = f16_le(blk, 2 * r) * a.d;
                if dt == DType::Q5_0 {
                    for (m, lane) in lanes.iter_mut().enumerate() {
                        let j0 = lane_first(m);
                        let s: i32 = (j0..j0 + 4)
                            .map(|j| q5_value(blk, r, j) * a.qs[j] as i32)
                            .sum();
                        *lane = d.mul_add(s as f32, *lane);
                    }
                } else if dt == DType::Q4_1 && sums == Sums::Blocks {
                    let isum: i32 = (0..32)
                        .map(|j| {
                            let q = q4_byte(blk, r, j % 16);
                            let q = if j < 16 { q & 0x0f } else { q >> 4 };
                            q as i32 * a.qs[j] as i32
                        })
                        .sum();
                    acc = d.mul_add(isum as f32, acc);
                    acc = f16_le(blk, 16 + 2 * r).mul_add(a.s, acc);
                } else if dt == DType::Q4_1 {
                    for (m, lane) in lanes.iter_mut().enumerate() {
                        let mut s = 0i32;
                        for j in 0..4 {
                            let q = q4_byte(blk, r, 4 * (m % 4) + j);
                            let (q, at) = if m < 4 {
                                (q & 0x0f, 4 * m + j)
                            } else {
                                (q >> 4, 16 + 4 * (m - 4) + j)
                            };
                            s += q as i32 * a.qs[at] as i32;
                        }
                        *lane = d.mul_add(s as f32, *lane);
                    }
                    summs += f16_le(blk, 16 + 2 * r) * a.s;
                } else {
                    let isum: i32 = (0..32)
                        .map(|j| q8_value(blk, r, j) as i32 * a.qs[j] as i32)
                        .sum();
                    acc = (isum as f32).mul_add(d, acc);
                }
            }
            out[n][r] = if (dt == DType::Q4_1 && sums == Sums::Lanes) || dt == DType::Q5_0 {
                crate::q8::hsum8(&lanes) + summs
            } else {
                acc
            };
        }
    }
    out
}

/// The start values of the kernels of type `dt` for one activation row: for Q8_0, -128
/// times each block's sum of values (the flipped weights' extra 128 times each value,
/// taken back), one per block; for Q5_0, -16 times each four values' sum, eight per block
/// (lane m of block i at 8 i + m); nothing for Q4_1.
pub fn corrections(dt: DType, y: &[BlockQ8], out: &mut Vec<i32>) {
    out.clear();
    let sum = |v: &[i8]| v.iter().map(|&v| v as i32).sum::<i32>();
    match dt {
        DType::Q8_0 => out.extend(y.iter().map(|b| -128 * sum(&b.qs))),
        DType::Q5_0 => {
            for b in y {
                out.extend(b.qs.chunks_exact(4).map(|q| -16 * sum(q)));
            }
        }
        _ => {}
    }
}

/// Start values per block that type `dt`'s kernels read ([`corrections`]).
pub fn corrections_per_block(dt: DType) -> usize {
    match dt {
        DType::Q8_0 => 1,
        DType::Q5_0 => 8,
        _ => 0,
    }
}

/// Consecutive groups of an X8 matrix of type `dt` (`w`: whole groups of `nb` blocks each)
/// against N activation rows: out[n * stride + r] for every row r of those groups. For
/// Q8_0 and Q5_0, `corr[n]` holds row n's [`corrections`] (unused for Q4_1: may be empty). N = 1 is
/// token generation, more a batch of sequences or a prompt. `sums` picks Q4_1's order.
#[allow(clippy::too_many_arguments)]
pub fn tile<const N: usize>(
    dt: DType,
    sums: Sums,
    w: &[u8],
    nb: usize,
    ys: [&[BlockQ8]; N],
    corr: [&[i32]; N],
    out: &mut [f32],
    stride: usize,
) {
    let gb = nb * group_block(dt);
    let rows = w.len() / gb.max(1) * GROUP;
    assert!(
        supports(dt)
            && nb > 0
            && w.len().is_multiple_of(gb)
            && ys.iter().all(|y| y.len() >= nb)
            && corr
                .iter()
                .all(|c| c.len() >= corrections_per_block(dt) * nb)
            && stride >= rows
            && out.len() >= (N - 1) * stride + rows,
        "x8::tile: {dt}, {} bytes of {nb} blocks per row, {} outputs, stride {stride}",
        w.len(),
        out.len(),
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        let yp: [*const BlockQ8; N] = std::array::from_fn(|n| ys[n].as_ptr());
        let cp: [*const i32; N] = std::array::from_fn(|n| corr[n].as_ptr());
        let vnni = crate::avx2::vnni();
        let blocks = sums == Sums::Blocks;
        for g in 0..rows / GROUP {
            // SAFETY: the CPU has the features each kernel enables (available(), vnni());
            // group g holds nb blocks, each activation row (and for Q8_0 each correction
            // row) nb entries (checked above).
            let s = unsafe {
                let gp = w.as_ptr().add(g * gb);
                match (dt, vnni) {
                    (DType::Q8_0, true) => simd::q8_0_vnni::<N>(gp, nb, yp, cp),
                    (DType::Q8_0, false) => simd::q8_0_avx2::<N>(gp, nb, yp),
                    (DType::Q5_0, true) => simd::q5_0_vnni::<N>(gp, nb, yp, cp),
                    // no AVX2 form: the reference (`worth` keeps Q5_0 row-major here)
                    (DType::Q5_0, false) => dot_ref(dt, sums, &w[g * gb..(g + 1) * gb], ys),
                    (_, true) if blocks => simd::q4_1_blocks_vnni::<N>(gp, nb, yp),
                    (_, false) if blocks => simd::q4_1_blocks_avx2::<N>(gp, nb, yp),
                    (_, true) => simd::q4_1_vnni::<N>(gp, nb, yp),
                    (_, false) => simd::q4_1_avx2::<N>(gp, nb, yp),
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
        let s = dot_ref(dt, sums, &w[g * gb..(g + 1) * gb], ys);
        for n in 0..N {
            let at = n * stride + g * GROUP;
            out[at..at + GROUP].copy_from_slice(&s[n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use super::group_block;
    use crate::DType;
    use crate::q8::BlockQ8;
    use std::arch::x86_64::*;

    /// Bytes ahead of the block in use that the kernels ask L1 for, and L2 (the groups of a
    /// task are one stream).
    const PREFETCH: usize = 3072;
    const PREFETCH_L2: usize = 8192;

    /// Asks for the cache lines of a block of `bytes` bytes at `b`, PREFETCH and
    /// PREFETCH_L2 ahead (a line every 64 bytes; the next block's first covers the rest).
    #[inline(always)]
    fn prefetch(b: *const u8, bytes: usize) {
        for l in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint and never faults, wherever it points
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH + l).cast());
                _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add(PREFETCH_L2 + l).cast());
            }
        }
    }

    /// The eight value registers of a block's four nibble chunks at `p`: register k < 4
    /// the low nibbles of chunk k, register 4 + k its high nibbles, one per byte.
    ///
    /// # Safety
    /// AVX2; `p` points at 128 readable bytes.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> [__m256i; 8] {
        // SAFETY: the four loads are within the caller's 128 bytes, unaligned
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let mut w = [_mm256_setzero_si256(); 8];
            for k in 0..4 {
                let q = _mm256_loadu_si256(p.add(32 * k).cast());
                w[k] = _mm256_and_si256(q, m4);
                w[4 + k] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            }
            w
        }
    }

    /// [`lanes_body`]'s arithmetic for Q4_1 with AVX2 (`vpmaddubsw` + `vpmaddwd` for the
    /// integer sums): one token by [`lanes_body`], more by [`lanes_unpacked_avx2`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `g` points at nb blocks of a group, each `ys` at nb blocks.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_avx2<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        if N == 1 {
            // one token (decoding, bound by memory): no copy of the group
            // SAFETY: the caller's promise
            return unsafe { lanes_body::<false, N, false>(g, nb, ys, [std::ptr::null(); N]) };
        }
        UNPACKED.with(|u| {
            let mut u = u.borrow_mut();
            u.resize(nb * UNPACKED_BLOCK, _mm256_setzero_si256());
            // SAFETY: the caller's promise; u holds nb unpacked blocks
            unsafe { lanes_unpacked_avx2::<N>(g, nb, ys, u.as_mut_ptr()) }
        })
    }

    /// 256-bit words per block of [`unpack_q4_1`]: the scales and minimums as f32, then the
    /// eight chunks' nibbles one per byte.
    const UNPACKED_BLOCK: usize = 10;

    thread_local! {
        /// Each thread's copy of the group it is working on, unpacked ([`unpack_q4_1`]).
        static UNPACKED: std::cell::RefCell<Vec<__m256i>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Unpacks a Q4_1 group's nb blocks into `u` (nb x [`UNPACKED_BLOCK`] words): the
    /// scales and minimums widened to f32, the nibbles to bytes.
    ///
    /// # Safety
    /// AVX2 and F16C; `g` holds nb blocks of a group, `u` room for nb unpacked ones.
    #[inline(always)]
    unsafe fn unpack_q4_1(g: *const u8, nb: usize, u: *mut __m256i) {
        let size = group_block(DType::Q4_1);
        // SAFETY: within the group's nb blocks and u's nb unpacked blocks (the caller's
        // promise)
        unsafe {
            for i in 0..nb {
                let b = g.add(i * size);
                prefetch(b, size);
                let o = u.add(i * UNPACKED_BLOCK);
                o.write(_mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128(
                    b.cast(),
                ))));
                o.add(1)
                    .write(_mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128(
                        b.add(16).cast(),
                    ))));
                for (k, w) in nibbles(b.add(32)).into_iter().enumerate() {
                    o.add(2 + k).write(w);
                }
            }
        }
    }

    /// [`lanes_body`]'s arithmetic for AVX2 with the group unpacked once
    /// ([`unpack_q4_1`]) and then each token on its own through all blocks: its nine
    /// accumulators stay in registers and each chunk's nibbles are loaded from the copy
    /// (eight chunks and two tokens' accumulators do not fit AVX2's 16 registers: they
    /// spilled). About 12% faster for eight tokens on Zen 1 (BENCHMARKS.md, stop 31).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `g` holds nb blocks of a group, each `ys[n]` nb blocks, `u` room
    /// for nb unpacked blocks.
    #[inline(always)]
    unsafe fn lanes_unpacked_avx2<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
        u: *mut __m256i,
    ) -> [[f32; 8]; N] {
        // SAFETY: within the group's nb blocks, u's nb unpacked blocks and the activations'
        // nb blocks (the caller's promise)
        unsafe {
            unpack_q4_1(g, nb, u);
            let ones = _mm256_set1_epi16(1);
            let mut out = [_mm256_setzero_ps(); N];
            for n in 0..N {
                let mut acc = [_mm256_setzero_ps(); 9];
                for i in 0..nb {
                    let o = u.add(i * UNPACKED_BLOCK);
                    let y = &*ys[n].add(i);
                    let a = y.qs.as_ptr();
                    let bc = |o: usize| _mm256_set1_epi32(a.add(o).cast::<i32>().read_unaligned());
                    let d = _mm256_mul_ps(_mm256_castsi256_ps(o.read()), _mm256_set1_ps(y.d));
                    for m in 0..8 {
                        let off = super::lane_first(m);
                        let p = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(o.add(2 + m).read(), bc(off)),
                            ones,
                        );
                        acc[m] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[m]);
                    }
                    let mw = _mm256_castsi256_ps(o.add(1).read());
                    acc[8] = _mm256_add_ps(acc[8], _mm256_mul_ps(mw, _mm256_set1_ps(y.s)));
                }
                out[n] = lane_sums(&acc[..8], acc[8]);
            }
            store(out)
        }
    }

    /// [`lanes_body`] for Q4_1 with `vpdpbusd`.
    ///
    /// # Safety
    /// As [`q4_1_avx2`], and AVX-512 VNNI, VL and BW.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
    pub unsafe fn q4_1_vnni<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: the caller's promise
        unsafe { lanes_body::<false, N, true>(g, nb, ys, [std::ptr::null(); N]) }
    }

    /// One Q4_1 (`Q5` false) or Q5_0 (`Q5` true) group's eight rows against N tokens: lane
    /// r of result n = row r . token n, as [`super::dot_ref`] computes it. Tokens two at a
    /// time (each block unpacked once for both; their eight lane accumulators and min sum
    /// each fit AVX-512's 32 registers). Q5_0's values get their fifth bits from the
    /// block's masks (a masked byte add, VNNI form only) and each lane's sum starts from the
    /// lane's correction; Q4_1's min sums add up apart.
    ///
    /// # Safety
    /// The enclosing function's target features (AVX-512 VNNI, VL and BW for Q5_0); `g`
    /// holds nb blocks, each `ys[n]` nb and, for Q5_0, each `cs[n]` 8 nb corrections.
    #[inline(always)]
    unsafe fn lanes_body<const Q5: bool, const N: usize, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
        cs: [*const i32; N],
    ) -> [[f32; 8]; N] {
        let size = group_block(if Q5 { DType::Q5_0 } else { DType::Q4_1 });
        // the nibble chunks follow the scales and the minimums (Q4_1) or the masks (Q5_0)
        let chunks = if Q5 { 48 } else { 32 };
        // SAFETY: every load is within the group's nb blocks, the activations' nb blocks or
        // (Q5_0) the corrections' 8 nb entries (the caller's promise)
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let sixteen = _mm256_set1_epi8(16);
            let mut out = [_mm256_setzero_ps(); N];
            let mut n0 = 0;
            while n0 < N {
                let two = n0 + 1 < N;
                let mut acc = [[_mm256_setzero_ps(); 9]; 2];
                for i in 0..nb {
                    let b = g.add(i * size);
                    if n0 == 0 {
                        prefetch(b, size);
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(b.cast()));
                    // Q4_1's minimums (unused for Q5_0)
                    let mw = if Q5 {
                        _mm256_setzero_ps()
                    } else {
                        _mm256_cvtph_ps(_mm_loadu_si128(b.add(16).cast()))
                    };
                    let mut w = nibbles(b.add(chunks));
                    if Q5 {
                        for (m, wm) in w.iter_mut().enumerate() {
                            let mask = b.add(16 + 4 * m).cast::<u32>().read_unaligned();
                            *wm = _mm256_mask_add_epi8(*wm, mask, *wm, sixteen);
                        }
                    }
                    for t in 0..2 {
                        if t == 1 && !two {
                            break;
                        }
                        let y = &*ys[n0 + t].add(i);
                        let a = y.qs.as_ptr();
                        let bc =
                            |o: usize| _mm256_set1_epi32(a.add(o).cast::<i32>().read_unaligned());
                        let d = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                        for m in 0..8 {
                            let o = super::lane_first(m);
                            let p = if VNNI {
                                let start = if Q5 {
                                    _mm256_set1_epi32(*cs[n0 + t].add(8 * i + m))
                                } else {
                                    _mm256_setzero_si256()
                                };
                                _mm256_dpbusd_epi32(start, w[m], bc(o))
                            } else {
                                _mm256_madd_epi16(_mm256_maddubs_epi16(w[m], bc(o)), ones)
                            };
                            acc[t][m] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[t][m]);
                        }
                        if !Q5 {
                            let ms = _mm256_mul_ps(mw, _mm256_set1_ps(y.s));
                            acc[t][8] = _mm256_add_ps(acc[t][8], ms);
                        }
                    }
                }
                for t in 0..if two { 2 } else { 1 } {
                    let a = &acc[t];
                    out[n0 + t] = lane_sums(&a[..8], a[8]);
                }
                n0 += 2;
            }
            store(out)
        }
    }

    /// Q4_1 in block order: per block and token, one exact integer sum of the 32 products
    /// per row, then `acc = (d_w d_a) isum + acc; acc = m_w s_a + acc` (two fused
    /// multiply-adds for eight rows, against llama.cpp's order's eight). All N tokens per
    /// block (each block unpacked once).
    ///
    /// # Safety
    /// AVX2, FMA and F16C (and AVX-512 VNNI, VL, BW when `VNNI`); `g` points at nb blocks of
    /// a group, each `ys` at nb blocks.
    #[inline(always)]
    unsafe fn blocks_body<const N: usize, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        let size = group_block(DType::Q4_1);
        // SAFETY: every load is within the group's nb blocks or the activations' nb blocks
        // (the caller's promise)
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                let b = g.add(i * size);
                prefetch(b, size);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(b.cast()));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(b.add(16).cast()));
                let w = nibbles(b.add(32));
                for n in 0..N {
                    let y = &*ys[n].add(i);
                    let a = y.qs.as_ptr();
                    let bc = |o: usize| _mm256_set1_epi32(a.add(o).cast::<i32>().read_unaligned());
                    let off = super::lane_first;
                    let isum = if VNNI {
                        let mut s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w[0], bc(off(0)));
                        let mut s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w[1], bc(off(1)));
                        for k in 1..4 {
                            s0 = _mm256_dpbusd_epi32(s0, w[2 * k], bc(off(2 * k)));
                            s1 = _mm256_dpbusd_epi32(s1, w[2 * k + 1], bc(off(2 * k + 1)));
                        }
                        _mm256_add_epi32(s0, s1)
                    } else {
                        // the eight chunks' pair sums add up in 16 bits and widen once: a
                        // pair is at most 2 * 15 * 128 = 3840 in size, eight of them
                        // 30720 < 2^15, so the sum stays exact (one `vpmaddwd` per block
                        // instead of eight: the multiply unit is what bounds this loop,
                        // on Zen 1 a single port for both)
                        let p = |m: usize| _mm256_maddubs_epi16(w[m], bc(off(m)));
                        let s0 = _mm256_add_epi16(
                            _mm256_add_epi16(p(0), p(1)),
                            _mm256_add_epi16(p(2), p(3)),
                        );
                        let s1 = _mm256_add_epi16(
                            _mm256_add_epi16(p(4), p(5)),
                            _mm256_add_epi16(p(6), p(7)),
                        );
                        _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones)
                    };
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                    acc[n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[n]);
                    acc[n] = _mm256_fmadd_ps(mw, _mm256_set1_ps(y.s), acc[n]);
                }
            }
            store(acc)
        }
    }

    /// [`blocks_body`] with AVX2.
    ///
    /// # Safety
    /// As [`q4_1_avx2`].
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_blocks_avx2<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: the caller's promise
        unsafe { blocks_body::<N, false>(g, nb, ys) }
    }

    /// [`blocks_body`] with `vpdpbusd`.
    ///
    /// # Safety
    /// As [`q4_1_vnni`].
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
    pub unsafe fn q4_1_blocks_vnni<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: the caller's promise
        unsafe { blocks_body::<N, true>(g, nb, ys) }
    }

    /// [`lanes_body`] for Q5_0 (VNNI only).
    ///
    /// # Safety
    /// AVX2, FMA, F16C and AVX-512 VNNI, VL and BW; `g` points at nb blocks of a group, each
    /// `ys[n]` at nb blocks and each `cs[n]` at 8 nb corrections.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
    pub unsafe fn q5_0_vnni<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
        cs: [*const i32; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: the caller's promise
        unsafe { lanes_body::<true, N, true>(g, nb, ys, cs) }
    }

    /// The Q8_0 group kernel with AVX2: the flipped values flipped back, `vpmaddubsw` of
    /// their sizes with the activations carrying their signs (each pair sum at most 2 * 128
    /// * 127 in size: no saturation), `vpmaddwd` to 32 bits.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `g` points at nb blocks of a group, each `ys` at nb blocks.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_avx2<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
    ) -> [[f32; 8]; N] {
        let size = group_block(DType::Q8_0);
        // SAFETY: every load is within the group's nb blocks or the activations' nb blocks
        // (the caller's promise)
        unsafe {
            let flip = _mm256_set1_epi8(0x80u8 as i8);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                let b = g.add(i * size);
                prefetch(b, size);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(b.cast()));
                let mut ws = [_mm256_setzero_si256(); 8];
                let mut wa = [_mm256_setzero_si256(); 8];
                for k in 0..8 {
                    ws[k] = _mm256_xor_si256(_mm256_loadu_si256(b.add(16 + 32 * k).cast()), flip);
                    wa[k] = _mm256_sign_epi8(ws[k], ws[k]);
                }
                for n in 0..N {
                    let y = &*ys[n].add(i);
                    let a = y.qs.as_ptr();
                    let bc = |o: usize| _mm256_set1_epi32(a.add(o).cast::<i32>().read_unaligned());
                    let mut isum = _mm256_setzero_si256();
                    for k in 0..8 {
                        let p = _mm256_maddubs_epi16(wa[k], _mm256_sign_epi8(bc(4 * k), ws[k]));
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
                    }
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                    acc[n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[n]);
                }
            }
            store(acc)
        }
    }

    /// The Q8_0 group kernel with `vpdpbusd`: the flipped (unsigned) values against the
    /// activations, two chains started from the correction and zero.
    ///
    /// # Safety
    /// As [`q8_0_avx2`], AVX-512 VNNI, VL and BW, and each `cs[n]` holds nb entries.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
    pub unsafe fn q8_0_vnni<const N: usize>(
        g: *const u8,
        nb: usize,
        ys: [*const BlockQ8; N],
        cs: [*const i32; N],
    ) -> [[f32; 8]; N] {
        let size = group_block(DType::Q8_0);
        // SAFETY: every load is within the group's nb blocks, the activations' nb blocks or
        // the corrections' nb entries (the caller's promise)
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                let b = g.add(i * size);
                prefetch(b, size);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(b.cast()));
                let mut wq = [_mm256_setzero_si256(); 8];
                for k in 0..8 {
                    wq[k] = _mm256_loadu_si256(b.add(16 + 32 * k).cast());
                }
                for n in 0..N {
                    let y = &*ys[n].add(i);
                    let a = y.qs.as_ptr();
                    let bc = |o: usize| _mm256_set1_epi32(a.add(o).cast::<i32>().read_unaligned());
                    let mut s0 = _mm256_set1_epi32(*cs[n].add(i));
                    let mut s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq[1], bc(4));
                    s0 = _mm256_dpbusd_epi32(s0, wq[0], bc(0));
                    for k in 1..4 {
                        s0 = _mm256_dpbusd_epi32(s0, wq[2 * k], bc(8 * k));
                        s1 = _mm256_dpbusd_epi32(s1, wq[2 * k + 1], bc(8 * k + 4));
                    }
                    let isum = _mm256_add_epi32(s0, s1);
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
                    acc[n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[n]);
                }
            }
            store(acc)
        }
    }

    /// Eight rows' lane accumulators (register m: lane m of each row) reduced as llama.cpp's
    /// `hsum_float_8` reduces one row's lanes, lane-wise, then `mins` added (Q4_1's min sums;
    /// zero for Q5_0, as the row-major kernels add it).
    #[inline(always)]
    fn lane_sums(a: &[__m256], mins: __m256) -> __m256 {
        // SAFETY: the enclosing kernels' target features include AVX
        unsafe {
            let h0 = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
            let h1 = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
            _mm256_add_ps(_mm256_add_ps(h0, h1), mins)
        }
    }

    #[inline(always)]
    fn store<const N: usize>(acc: [__m256; N]) -> [[f32; 8]; N] {
        let mut out = [[0f32; 8]; N];
        for n in 0..N {
            // SAFETY: out[n] holds 8 floats; the store is unaligned
            unsafe { _mm256_storeu_ps(out[n].as_mut_ptr(), acc[n]) };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8::{ActRow, quantize_q8, vec_dot_n};

    fn rng(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// A random Q4_1, Q5_0 or Q8_0 matrix (row-major bytes), every byte value possible.
    fn matrix(dt: DType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 32 {
            let d = f16::from_f32(rng(seed).abs() * 0.1 + 1e-3);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
            let n = match dt {
                DType::Q4_1 => {
                    let m = f16::from_f32(rng(seed) * 0.5);
                    out.extend_from_slice(&m.to_bits().to_le_bytes());
                    16
                }
                DType::Q5_0 => 20,
                _ => 32,
            };
            for _ in 0..n {
                out.push(((rng(seed) + 1.0) * 127.9) as u8);
            }
        }
        out
    }

    const TYPES: [DType; 3] = [DType::Q4_1, DType::Q5_0, DType::Q8_0];

    #[test]
    fn repacked_rows_dequantize_to_the_original_rows() {
        let (rows, cols) = (24, 96);
        let mut seed = 7;
        for dt in TYPES {
            let w = matrix(dt, rows, cols, &mut seed);
            let x = repack(dt, &w, rows, cols).unwrap();
            assert_eq!(x.len(), w.len());
            let rb = w.len() / rows;
            for r in 0..rows {
                let mut a = vec![0f32; cols];
                let mut b = vec![0f32; cols];
                crate::quant::dequantize_row(dt, &w[r * rb..(r + 1) * rb], &mut a).unwrap();
                dequantize_row(dt, &x, cols, r, &mut b);
                assert_eq!(a, b, "{dt} row {r}");
            }
            assert!(repack(dt, &w, rows - 1, cols).is_none());
            assert!(repack(dt, &w[..w.len() - 1], rows, cols).is_none());
        }
        assert!(repack(DType::Q4_0, &[0; 18 * 8], 8, 32).is_none());
    }

    /// The layout changes no arithmetic: each row's result is the row-major kernel's, bit
    /// for bit (llama.cpp's order for Q4_1, one sum per block for Q8_0).
    #[test]
    fn the_reference_equals_the_row_major_dot() {
        let (rows, cols) = (16, 256);
        let mut seed = 11;
        for dt in TYPES {
            let w = matrix(dt, rows, cols, &mut seed);
            let x = repack(dt, &w, rows, cols).unwrap();
            let rb = w.len() / rows;
            let gb = cols / 32 * group_block(dt);
            for _ in 0..4 {
                let act: Vec<f32> = (0..cols).map(|_| rng(&mut seed) * 4.0).collect();
                let y = quantize_q8(&act);
                for g in 0..rows / GROUP {
                    let got = dot_ref(dt, Sums::Lanes, &x[g * gb..(g + 1) * gb], [&y[..]]);
                    for j in 0..GROUP {
                        let r = g * GROUP + j;
                        let want = vec_dot_n(dt, &w[r * rb..(r + 1) * rb], [ActRow::Q8(&y)])[0];
                        assert_eq!(got[0][j].to_bits(), want.to_bits(), "{dt} row {r}");
                    }
                }
            }
        }
    }

    /// Q4_1's block order is the same dot product rounded otherwise: both orders stay
    /// within a few units in the last place of the sum taken in f64 (the products and
    /// their block scales exact there), and they do not agree on every row.
    #[test]
    fn block_sums_round_the_same_dot_product_otherwise() {
        let (rows, cols) = (64, 1024);
        let dt = DType::Q4_1;
        let mut seed = 5;
        let w = matrix(dt, rows, cols, &mut seed);
        let x = repack(dt, &w, rows, cols).unwrap();
        let gb = cols / 32 * group_block(dt);
        let (mut differ, mut worst) = (0, 0f64);
        for _ in 0..4 {
            let act: Vec<f32> = (0..cols).map(|_| rng(&mut seed) * 4.0).collect();
            let y = quantize_q8(&act);
            for g in 0..rows / GROUP {
                let grp = &x[g * gb..(g + 1) * gb];
                let lanes = dot_ref(dt, Sums::Lanes, grp, [&y[..]])[0];
                let blocks = dot_ref(dt, Sums::Blocks, grp, [&y[..]])[0];
                for r in 0..GROUP {
                    let (mut exact, mut size) = (0f64, 0f64);
                    for (i, a) in y.iter().enumerate() {
                        let blk = &grp[i * group_block(dt)..(i + 1) * group_block(dt)];
                        let isum: i64 = (0..32)
                            .map(|j| {
                                let q = q4_byte(blk, r, j % 16);
                                let q = if j < 16 { q & 0x0f } else { q >> 4 };
                                q as i64 * a.qs[j] as i64
                            })
                            .sum();
                        let d = (f16_le(blk, 2 * r) * a.d) as f64;
                        let m = f16_le(blk, 16 + 2 * r) as f64 * a.s as f64;
                        exact += d * isum as f64 + m;
                        size += (d * isum as f64).abs() + m.abs();
                    }
                    for v in [lanes[r], blocks[r]] {
                        worst = worst.max((v as f64 - exact).abs() / size);
                    }
                    differ += (lanes[r].to_bits() != blocks[r].to_bits()) as usize;
                }
            }
        }
        assert!(worst < 1e-5, "relative error {worst}");
        assert!(differ > 0, "the two orders agreed on every row");
    }

    fn check_tile<const N: usize>(dt: DType, sums: Sums, groups: usize, nb: usize, seed: &mut u64) {
        let (rows, cols) = (groups * GROUP, nb * 32);
        let w = matrix(dt, rows, cols, seed);
        let x = repack(dt, &w, rows, cols).unwrap();
        let ys: Vec<Vec<BlockQ8>> = (0..N)
            .map(|_| quantize_q8(&(0..cols).map(|_| rng(seed) * 3.0).collect::<Vec<_>>()))
            .collect();
        let cs: Vec<Vec<i32>> = ys
            .iter()
            .map(|y| {
                let mut c = Vec::new();
                corrections(dt, y, &mut c);
                c
            })
            .collect();
        let yr: [&[BlockQ8]; N] = std::array::from_fn(|n| &ys[n][..]);
        let cr: [&[i32]; N] = std::array::from_fn(|n| &cs[n][..]);
        let stride = rows + 3;
        let mut out = vec![f32::NAN; N * stride];
        tile(dt, sums, &x, nb, yr, cr, &mut out, stride);
        let gb = nb * group_block(dt);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for g in 0..groups {
            let grp = &x[g * gb..(g + 1) * gb];
            let want = dot_ref(dt, sums, grp, yr);
            for n in 0..N {
                let got = &out[n * stride + g * GROUP..n * stride + (g + 1) * GROUP];
                assert_eq!(
                    bits(got),
                    bits(&want[n]),
                    "{dt} {sums:?} N {N}, group {g}, token {n}"
                );
            }
            // both SIMD forms, whichever `tile` chose
            #[cfg(target_arch = "x86_64")]
            if crate::avx2::available() {
                let yp: [*const BlockQ8; N] = std::array::from_fn(|n| ys[n].as_ptr());
                let cp: [*const i32; N] = std::array::from_fn(|n| cs[n].as_ptr());
                // SAFETY: the features were checked; the group holds nb blocks, every
                // activation and correction row nb entries
                let (avx2, vnni) = unsafe {
                    let gp = grp.as_ptr();
                    let blocks = sums == Sums::Blocks;
                    let avx2 = match dt {
                        DType::Q8_0 => Some(simd::q8_0_avx2::<N>(gp, nb, yp)),
                        DType::Q4_1 if blocks => Some(simd::q4_1_blocks_avx2::<N>(gp, nb, yp)),
                        DType::Q4_1 => Some(simd::q4_1_avx2::<N>(gp, nb, yp)),
                        _ => None,
                    };
                    let vnni = crate::avx2::vnni().then(|| match dt {
                        DType::Q8_0 => simd::q8_0_vnni::<N>(gp, nb, yp, cp),
                        DType::Q5_0 => simd::q5_0_vnni::<N>(gp, nb, yp, cp),
                        _ if blocks => simd::q4_1_blocks_vnni::<N>(gp, nb, yp),
                        _ => simd::q4_1_vnni::<N>(gp, nb, yp),
                    });
                    (avx2, vnni)
                };
                for n in 0..N {
                    if let Some(a) = avx2 {
                        assert_eq!(bits(&a[n]), bits(&want[n]), "{dt} AVX2 N {N} token {n}");
                    }
                    if let Some(v) = vnni {
                        assert_eq!(bits(&v[n]), bits(&want[n]), "{dt} VNNI N {N} token {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_kernels_equal_the_reference_bit_for_bit() {
        let mut seed = 3;
        for (dt, sums) in TYPES
            .map(|t| (t, Sums::Lanes))
            .into_iter()
            .chain([(DType::Q4_1, Sums::Blocks)])
        {
            for (groups, nb) in [(1, 1), (3, 18), (2, 48), (1, 5)] {
                check_tile::<1>(dt, sums, groups, nb, &mut seed);
                check_tile::<2>(dt, sums, groups, nb, &mut seed);
                check_tile::<3>(dt, sums, groups, nb, &mut seed);
                check_tile::<5>(dt, sums, groups, nb, &mut seed);
                check_tile::<8>(dt, sums, groups, nb, &mut seed);
            }
        }
    }

    /// Activations at the ends of their range (-127, 127 and the rest) with weights at
    /// theirs (Q8_0's -128): the integer sums stay exact in every form.
    #[test]
    fn extreme_values_keep_exact_sums() {
        let (rows, cols) = (8, 64);
        for dt in TYPES {
            let mut w = Vec::new();
            for b in 0..rows * cols / 32 {
                w.extend_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
                if dt == DType::Q4_1 {
                    w.extend_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
                    w.extend(std::iter::repeat_n(
                        if b % 2 == 0 { 0xff } else { 0x0f },
                        16,
                    ));
                } else if dt == DType::Q5_0 {
                    // 15 or -16 everywhere: fifth bits all set or all clear
                    let (qh, q) = if b % 2 == 0 { (0xffu8, 0xffu8) } else { (0, 0) };
                    w.extend(std::iter::repeat_n(qh, 4));
                    w.extend(std::iter::repeat_n(q, 16));
                } else {
                    w.extend(std::iter::repeat_n(
                        if b % 2 == 0 { 0x80 } else { 0x7f },
                        32,
                    ));
                }
            }
            let x = repack(dt, &w, rows, cols).unwrap();
            for v in [127.0f32, -127.0] {
                let y = quantize_q8(&vec![v; cols]);
                let mut c = Vec::new();
                corrections(dt, &y, &mut c);
                let mut out = vec![0f32; rows];
                for sums in [Sums::Lanes, Sums::Blocks] {
                    tile(dt, sums, &x, cols / 32, [&y[..]], [&c[..]], &mut out, rows);
                    assert_eq!(
                        out.to_vec(),
                        dot_ref(dt, sums, &x, [&y[..]])[0].to_vec(),
                        "{dt} {sums:?} {v}"
                    );
                }
            }
        }
    }
}
