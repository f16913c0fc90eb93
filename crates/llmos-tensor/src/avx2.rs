//! x86-64 kernels for AVX2 + FMA + F16C, chosen at run time by [`available`]. Each one
//! computes exactly what its scalar reference in [`crate::q8`] computes: the same integer
//! sums, the same float operations in the same order. So results are bit-identical, which the
//! tests check on random blocks, and greedy decoding keeps matching llama.cpp (whose order
//! the references follow, except Q8_0's one integer sum per block: see `q8::vec_dot_ref`).
//!
//! Every kernel takes one weight row and N activation rows (N = 1 for token generation, 4
//! when a prompt is processed), so a weight block is loaded and unpacked once per N tokens.
//!
//! The eight-token prompt kernels, and the Q4_1 / Q5_1 token-generation rows
//! ([`rows_q8_vnni`]), also come in `*_vnni` forms for CPUs with AVX-512 VNNI, VL and BW
//! ([`vnni`]): their bodies are shared `#[inline(always)]` functions generic over a `VNNI`
//! flag, compiled once under each wrapper's target features, and they make the same integer
//! sums with `vpdpbusd` / `vpdpwssd`.

//!
//! # Safety
//! Every public kernel here enables AVX2, FMA and F16C; call one only after [`available`]
//! returned true, and a `*_vnni` one only after [`vnni`] did.

#![allow(clippy::needless_range_loop)]
// the one safety contract is stated in the module docs above
#![allow(clippy::missing_safety_doc)]

use crate::q8::{BlockQ8, BlockQ8K, Q32};
use crate::quant::k_scale_min;
use std::arch::x86_64::*;

/// Whether this CPU has AVX2, FMA and F16C (checked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Whether this CPU also has AVX-512 VNNI, VL and BW (checked once): `vpdpbusd` on ymm
/// registers adds four byte products to each 32-bit lane in one instruction, where AVX2
/// needs `vpmaddubsw` + `vpmaddwd` + `vpaddd`, and BW's byte masks set Q5_0's fifth bits
/// in one masked add. Zen 4 and Intel from Ice Lake have them. The prompt kernels that
/// have a VNNI form (`*_vnni`) give bit for bit the same results as the AVX2 ones: they make
/// the same integer sums. `LLMOS_NO_VNNI=1` turns them off (to compare the two).
pub fn vnni() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        available()
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && std::env::var_os("LLMOS_NO_VNNI").is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// Weight types with 32-value blocks that meet Q8_0/Q8_1 activations.
pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q5_0: u8 = 2;
pub const Q5_1: u8 = 3;
pub const Q8_0: u8 = 4;

const fn block_bytes(t: u8) -> usize {
    match t {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8; 32]) -> __m256i {
    // SAFETY: the reference covers 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(b: &[u8; 16]) -> __m128i {
    // SAFETY: the reference covers 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8x32(q: &[i8; 32]) -> __m256i {
    // SAFETY: the reference covers 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn loadf8(a: &[f32; 8]) -> __m256 {
    // SAFETY: the reference covers 8 readable floats; the load is unaligned.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn arr<const K: usize>(b: &[u8], at: usize) -> &[u8; K] {
    b[at..at + K]
        .try_into()
        .expect("block slice of fixed length")
}

/// The f16 at bytes `at..at + 2` of `b`, converted by the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Sum of 8 lanes: halves, then (0+2, 1+3), then the last two (as [`crate::q8::hsum8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8(v: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    let r = _mm_add_epi32(r, _mm_shuffle_epi32::<0b10_11_00_01>(r));
    _mm_cvtsi128_si32(r)
}

/// The 32 4-bit values packed in the 16 bytes at `p` (the low nibbles, then the high), one
/// per byte: the bytes loaded into both register halves and the upper half shifted by 4
/// in one variable shift (a shift, an insert and the mask before: one ALU op fewer per
/// weight block). `m4` is 0x0f in every byte.
///
/// # Safety
/// `p..p + 16` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8, m4: __m256i) -> __m256i {
    // SAFETY: the caller's promise; an unaligned load
    let t = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(p.cast()) });
    _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_set_epi64x(4, 4, 0, 0)), m4)
}

/// 32 bits to 32 bytes: 0xff where bit i is set, 0 elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits32(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Unsigned bytes x signed bytes: 8 lanes of sums of 4 adjacent products, as i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_u8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// R weight rows of 32-value blocks (type `T`) dotted with N rows of Q8 activations: out[r][n].
/// With R > 1 the rows advance side by side (independent accumulator chains); each
/// activation block is loaded once for all R rows and each weight block once for all N.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q8<const T: u8, const R: usize, const N: usize>(
    w: [&[u8]; R],
    ys: [&[BlockQ8]; N],
) -> [[f32; N]; R] {
    // SAFETY: this function enables AVX2, FMA and F16C, all the body needs without VNNI.
    unsafe { dot_q8_body::<T, R, N, false>(w, ys) }
}

/// The body of [`dot_q8`] and of [`rows_q8_vnni`]: with `VNNI`, the unsigned types' (Q4_1,
/// Q5_1) lane sums come from one `vpdpbusd` per block and row (AVX2: `vpmaddubsw` +
/// `vpmaddwd`), the same integers.
///
/// # Safety
/// The caller enables AVX2, FMA and F16C, and with `VNNI` AVX-512 VNNI, VL and BW too.
#[inline(always)]
unsafe fn dot_q8_body<const T: u8, const R: usize, const N: usize, const VNNI: bool>(
    w: [&[u8]; R],
    ys: [&[BlockQ8]; N],
) -> [[f32; N]; R] {
    // four bytes' products summed into each i32 lane; the same integers either way
    let lane_sums = |x: __m256i, y: __m256i| {
        // SAFETY: the caller's features (VNNI ones only in the VNNI instance)
        unsafe {
            if VNNI {
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
            } else {
                mul_sum_u8(x, y)
            }
        }
    };
    let size = block_bytes(T);
    let nb = ys[0].len();
    for r in 0..R {
        assert!(
            w[r].len() >= nb * size,
            "weight row shorter than the activations"
        );
    }
    for n in 0..N {
        assert!(ys[n].len() >= nb, "activation rows of unequal length");
    }
    let wp: [*const u8; R] = w.map(|w| w.as_ptr());
    let yp: [*const BlockQ8; N] = ys.map(|y| y.as_ptr());
    // SAFETY: the caller's features. In the loop: i < nb, every weight row holds nb blocks
    // of `size` bytes and every activation row nb blocks (checked above); all loads are
    // unaligned loads inside those blocks. The stores go to local arrays.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut accs = [[0f32; N]; R];
        let mut summ2 = [_mm_setzero_ps(); N];
        let m4 = _mm256_set1_epi8(0x0f);
        for i in 0..nb {
            {
                let mut qx = [_mm256_setzero_si256(); R];
                let mut ax = [_mm256_setzero_si256(); R];
                let mut dw = [0f32; R];
                let mut mw = [0f32; R];
                for r in 0..R {
                    let b = wp[r].add(i * size);
                    if i % 2 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH).cast());
                        if T != Q8_0 {
                            // see PREFETCH_L2
                            _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add(PREFETCH_L2).cast());
                        }
                    }
                    let fused_scales = (T == Q4_1 || T == Q5_1) && R == 2;
                    if !fused_scales {
                        dw[r] = f16_ptr(b);
                    }
                    let nib = |at: usize| nibbles(b.add(at), m4);
                    qx[r] = match T {
                        Q4_0 => _mm256_sub_epi8(nib(2), _mm256_set1_epi8(8)),
                        Q4_1 => nib(4),
                        Q5_0 => {
                            let qh = b.add(2).cast::<u32>().read_unaligned();
                            let hi =
                                _mm256_andnot_si256(bits32(qh), _mm256_set1_epi8(0xf0u8 as i8));
                            _mm256_or_si256(nib(6), hi)
                        }
                        Q5_1 => {
                            let qh = b.add(4).cast::<u32>().read_unaligned();
                            let hi = _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10));
                            _mm256_or_si256(nib(8), hi)
                        }
                        _ => _mm256_loadu_si256(b.add(2).cast()),
                    };
                    if T == Q4_1 || T == Q5_1 {
                        if !fused_scales {
                            mw[r] = f16_ptr(b.add(2));
                        }
                    } else {
                        // signed weights: |x| once per block; the sign moves to the activations
                        ax[r] = _mm256_sign_epi8(qx[r], qx[r]);
                    }
                }
                let dwv: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(dw[r]));
                if (T == Q4_1 || T == Q5_1) && R == 2 {
                    // lanes [d0, m0, d1, m1] of the two rows, converted by one instruction; the
                    // min terms of both rows advance together in lanes 1 and 3 (lanes 0 and 2
                    // carry unused products)
                    let dm = _mm_cvtph_ps(_mm_insert_epi32::<1>(
                        _mm_cvtsi32_si128(wp[0].add(i * size).cast::<i32>().read_unaligned()),
                        wp[1].add(i * size).cast::<i32>().read_unaligned(),
                    ));
                    for n in 0..N {
                        let y = &*yp[n].add(i);
                        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
                        // [d, s, d, s] of the activation block (d and s are adjacent), so one
                        // multiply makes both rows' scale products (lanes 0 and 2, the f32
                        // products d_w * d_y) and min terms (lanes 1 and 3)
                        let ys = _mm_castpd_ps(_mm_loaddup_pd((&raw const y.d).cast::<f64>()));
                        let prod = _mm_mul_ps(dm, ys);
                        summ2[n] = _mm_add_ps(summ2[n], prod);
                        let dv = [
                            _mm256_broadcastss_ps(prod),
                            _mm256_permutevar8x32_ps(
                                _mm256_castps128_ps256(prod),
                                _mm256_set1_epi32(2),
                            ),
                        ];
                        for (r, dr) in dv.into_iter().enumerate() {
                            let p = _mm256_cvtepi32_ps(lane_sums(qx[r], qy));
                            acc[r][n] = _mm256_fmadd_ps(dr, p, acc[r][n]);
                        }
                    }
                    continue;
                }
                for n in 0..N {
                    let y = &*yp[n].add(i);
                    let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
                    let ydv = _mm256_set1_ps(y.d);
                    for r in 0..R {
                        let d = dw[r] * y.d;
                        // the same product, already in all lanes
                        let dv = _mm256_mul_ps(dwv[r], ydv);
                        match T {
                            Q4_0 | Q8_0 => {
                                let s = hsum_i32(mul_sum_u8(ax[r], _mm256_sign_epi8(qy, qx[r])));
                                accs[r][n] = (s as f32).mul_add(d, accs[r][n]);
                            }
                            Q4_1 | Q5_1 => {
                                let p = _mm256_cvtepi32_ps(lane_sums(qx[r], qy));
                                acc[r][n] = _mm256_fmadd_ps(dv, p, acc[r][n]);
                                accs[r][n] += mw[r] * y.s;
                            }
                            _ => {
                                let sy = _mm256_sign_epi8(qy, qx[r]);
                                let p = _mm256_cvtepi32_ps(mul_sum_u8(ax[r], sy));
                                acc[r][n] = _mm256_fmadd_ps(dv, p, acc[r][n]);
                            }
                        }
                    }
                }
            }
        }
        if (T == Q4_1 || T == Q5_1) && R == 2 {
            for n in 0..N {
                let mut lanes = [0f32; 4];
                _mm_storeu_ps(lanes.as_mut_ptr(), summ2[n]);
                accs[0][n] = lanes[1];
                accs[1][n] = lanes[3];
            }
        }
        let mut out = [[0f32; N]; R];
        for r in 0..R {
            for n in 0..N {
                out[r][n] = if T == Q4_0 || T == Q8_0 {
                    accs[r][n]
                } else {
                    hsum8(acc[r][n]) + accs[r][n]
                };
            }
        }
        out
    }
}

/// The f16 at `p` (unaligned), converted by the F16C instruction.
///
/// # Safety
/// `p` must point at two readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at p.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn storef8(out: &mut [f32; 8], v: __m256) {
    // SAFETY: the reference covers 8 writable floats; the store is unaligned.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
}

/// Bytes ahead of the current block that the weight kernels ask the cache to fetch
/// (measured on SmolLM2 Q8_0 decoding, one thread: none 31-34 tok/s, 512 B 48-56, 1 KiB
/// 50-58, 2 KiB 58-59, 4 KiB 55-58; then SmolLM2 Q4_1 tg128 at two threads, interleaved
/// runs: 2 KiB median 118.8 / 122.3 tok/s, 3 KiB 126.7 / 125.2 (14 of 16 pairs faster),
/// 4 KiB 122.5; SmolLM2 Q8_0 and Gemma-3 Q4_K_M the same at 2 and 3 KiB).
const PREFETCH: usize = 3072;

/// Bytes ahead that the token-generation kernels of the 4- and 5-bit block types also ask
/// the second-level cache to fetch (`_MM_HINT_T1`), so a weight stream has more misses in
/// flight than the first level's miss buffers hold. Measured on a Zen 4 with
/// `decode_stream 2` (SmolLM2's matrices, Q4_1 rows, 8 interleaved runs each, median of
/// best GB/s): L1 prefetch only 25.5-26.8; with this one at 8 KiB 31.5-31.7, 12 KiB 31.2,
/// 16 KiB 29.9; one thread 15.0 -> 16.0. Q8_0 rows stream slower with it
/// (`decode_stream N 30 q8_0`, 6 interleaved runs: one thread 15.9 -> 15.2, two 28.6 ->
/// 25.2), so they go without.
const PREFETCH_L2: usize = 8192;

/// Asks the cache to fetch the `lines` cache lines from `PREFETCH` bytes past `b`. A
/// prefetch of an address past the data is harmless (it never faults).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead(b: &[u8], lines: usize) {
    for l in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH + 64 * l).cast());
    }
}

/// Asks the cache for the first [`PREFETCH`] bytes of `w` at once: the kernels' running
/// prefetch covers only what lies that far ahead, so without this a task's first bytes
/// arrive one miss after another (a decode task is 10-70 KB of rows).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_start(w: &[u8]) {
    for at in (0..w.len().min(PREFETCH)).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(w[at..].as_ptr().cast());
    }
}

/// The 8 scales and 8 mins of a Q4_K / Q5_K super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k_scales(scales: &[u8]) -> ([i16; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i16; 8], [0i32; 8]);
    for k in 0..8 {
        let (s, m) = k_scale_min(k, scales);
        sc[k] = s as i16;
        mn[k] = m as i32;
    }
    (sc, mn)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8k_chunk(y: &BlockQ8K, at: usize) -> __m256i {
    load_i8x32(y.qs[at..at + 32].try_into().expect("32 values"))
}

/// Block bytes of the K types (`T` = 4, 5, 6: Q4_K, Q5_K, Q6_K).
const fn k_block_bytes(t: u8) -> usize {
    match t {
        4 => 144,
        5 => 176,
        _ => 210,
    }
}

/// One K-type weight block unpacked for the integer dot: eight chunks of 32 unsigned
/// values, each with its 16-bit scale(s) to `madd` the byte products by.
struct KBlock {
    q: [__m256i; 8],
    scv: [__m256i; 8],
    /// f16 super-block scale and (Q4_K, Q5_K) min scale.
    dw: f32,
    dminw: f32,
    /// Q4_K, Q5_K: the 8 sub-block mins, each twice ([m0, m0, m1, m1, ...] as i16): `madd`
    /// with an activation block's 16 bsums gives mins times sub-block sums.
    /// Q6_K: the 16 sub-block scales, for the same with the 32 offset.
    mins: __m256i,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_k<const T: u8>(b: &[u8]) -> KBlock {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut q = [_mm256_setzero_si256(); 8];
    if T == 6 {
        let m15 = _mm256_set1_epi8(15);
        let sc_bytes: &[u8; 16] = arr(b, 192);
        let sc = |j: usize| (sc_bytes[j] as i8) as i16;
        let mut scv = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let b1 = load32(arr(b, 64 * h));
            let b2 = load32(arr(b, 64 * h + 32));
            let bh = load32(arr(b, 128 + 32 * h));
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(bh, _mm256_set1_epi8(3)));
            let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(12)));
            let h2 = _mm256_and_si256(bh, _mm256_set1_epi8(48));
            let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(-64)));
            q[4 * h] = _mm256_or_si256(_mm256_and_si256(b1, m15), h0);
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(b2, m15), h1);
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b1), m15), h2);
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b2), m15), h3);
            for r in 0..4 {
                let j = 8 * h + 2 * r;
                scv[4 * h + r] = _mm256_set_m128i(_mm_set1_epi16(sc(j + 1)), _mm_set1_epi16(sc(j)));
            }
        }
        return KBlock {
            q,
            scv,
            dw: f16_at(b, 208),
            dminw: 0.0,
            mins: _mm256_cvtepi8_epi16(load16(sc_bytes)),
        };
    }
    let (sc, mn) = k_scales(&b[4..16]);
    let qs_at = if T == 4 { 16 } else { 48 };
    for c in 0..4 {
        let bits = load32(arr(b, qs_at + 32 * c));
        q[2 * c] = _mm256_and_si256(bits, m4);
        q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
    }
    if T == 5 {
        let one = _mm256_set1_epi8(1);
        let hbits = load32(arr(b, 16));
        for (k, qk) in q.iter_mut().enumerate() {
            let h = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(k as i32)), one);
            *qk = _mm256_or_si256(*qk, _mm256_slli_epi16::<4>(h));
        }
    }
    let m16: [i16; 16] = std::array::from_fn(|j| mn[j / 2] as i16);
    KBlock {
        q,
        scv: sc.map(|s| _mm256_set1_epi16(s)),
        dw: f16_at(b, 0),
        dminw: f16_at(b, 2),
        // SAFETY: m16 is 16 i16 = 32 readable bytes; the load is unaligned.
        mins: unsafe { _mm256_loadu_si256(m16.as_ptr().cast()) },
    }
}

/// The integer part of one K block against one Q8_K block, 8 lanes (their sum is the
/// block's dot product; for Q6_K the 32 offset is already taken off).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k_sumi<const T: u8>(k: &KBlock, y: &BlockQ8K) -> __m256i {
    let mut sumi = _mm256_setzero_si256();
    for c in 0..8 {
        let p = _mm256_maddubs_epi16(k.q[c], q8k_chunk(y, 32 * c));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, k.scv[c]));
    }
    if T == 6 {
        let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums(y), k.mins));
        sumi = _mm256_sub_epi32(sumi, off);
    }
    sumi
}

/// [`k_sumi`] with VNNI: each chunk's byte products (`vpmaddubsw`) are multiplied by their
/// scales and added to the lanes in one `vpdpwssd` (AVX2: `vpmaddwd` + `vpaddd`), the same
/// i32 lanes.
///
/// # Safety
/// The caller enables AVX2 and AVX-512 VNNI and VL.
#[inline(always)]
unsafe fn k_sumi_vnni<const T: u8>(k: &KBlock, y: &BlockQ8K) -> __m256i {
    // SAFETY: the caller's target features; the chunk and bsums loads read inside y
    unsafe {
        let mut sumi = _mm256_setzero_si256();
        for c in 0..8 {
            let p = _mm256_maddubs_epi16(k.q[c], q8k_chunk(y, 32 * c));
            sumi = _mm256_dpwssd_epi32(sumi, p, k.scv[c]);
        }
        if T == 6 {
            let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums(y), k.mins));
            sumi = _mm256_sub_epi32(sumi, off);
        }
        sumi
    }
}

/// The 16 bsums of a Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bsums(y: &BlockQ8K) -> __m256i {
    // SAFETY: bsums is 16 i16 = 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) }
}

/// Q4_K row with N rows of Q8_K activations (block-serial, as llama.cpp's repacked kernel).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q4k<const N: usize>(w: &[u8], ys: [&[BlockQ8K]; N]) -> [f32; N] {
    let (mut acc, mut accm) = ([0f32; N], [0f32; N]);
    for (i, b) in w.chunks_exact(144).enumerate() {
        prefetch_ahead(b, 3);
        let k = unpack_k::<4>(b);
        for n in 0..N {
            let y = &ys[n][i];
            let s = hsum_i32(k_sumi::<4>(&k, y));
            let m = hsum_i32(_mm256_madd_epi16(bsums(y), k.mins));
            acc[n] = (s as f32).mul_add(k.dw * y.d, acc[n]);
            accm[n] = (m as f32).mul_add(k.dminw * y.d, accm[n]);
        }
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = acc[n] - accm[n];
    }
    out
}

/// Q5_K row with N rows of Q8_K activations (8 lanes, as llama.cpp's vec_dot).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q5k<const N: usize>(w: &[u8], ys: [&[BlockQ8K]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut summs = [0f32; N];
    for (i, b) in w.chunks_exact(176).enumerate() {
        prefetch_ahead(b, 3);
        let k = unpack_k::<5>(b);
        for n in 0..N {
            let y = &ys[n][i];
            let sumi = k_sumi::<5>(&k, y);
            let m = hsum_i32(_mm256_madd_epi16(bsums(y), k.mins));
            let d = y.d * k.dw;
            let dmin = -y.d * k.dminw;
            acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[n]);
            summs[n] += dmin * m as f32;
        }
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = hsum8(acc[n]) + summs[n];
    }
    out
}

/// Q6_K row with N rows of Q8_K activations (8 lanes, as llama.cpp's vec_dot).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q6k<const N: usize>(w: &[u8], ys: [&[BlockQ8K]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, b) in w.chunks_exact(210).enumerate() {
        prefetch_ahead(b, 4);
        let k = unpack_k::<6>(b);
        for n in 0..N {
            let y = &ys[n][i];
            let sumi = k_sumi::<6>(&k, y);
            let d = y.d * k.dw;
            acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[n]);
        }
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = hsum8(acc[n]);
    }
    out
}

/// Dot product in llama.cpp's f16/f32 vector order (4 accumulators of 8 lanes over steps of
/// 32, fused multiply-add, reduced x0+x2, x1+x3, x0+x1, then halves and two horizontal adds).
/// Lengths that are not a multiple of 32 behave as if zero-padded.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut x = [_mm256_setzero_ps(); 4];
    let whole = n / 32 * 32;
    for (ca, cb) in a[..whole].chunks_exact(32).zip(b[..whole].chunks_exact(32)) {
        for j in 0..4 {
            let va = loadf8(ca[8 * j..8 * j + 8].try_into().expect("8 floats"));
            let vb = loadf8(cb[8 * j..8 * j + 8].try_into().expect("8 floats"));
            x[j] = _mm256_fmadd_ps(va, vb, x[j]);
        }
    }
    if whole < n {
        let (mut pa, mut pb) = ([0f32; 32], [0f32; 32]);
        pa[..n - whole].copy_from_slice(&a[whole..n]);
        pb[..n - whole].copy_from_slice(&b[whole..n]);
        for j in 0..4 {
            let va = loadf8(pa[8 * j..8 * j + 8].try_into().expect("8 floats"));
            let vb = loadf8(pb[8 * j..8 * j + 8].try_into().expect("8 floats"));
            x[j] = _mm256_fmadd_ps(va, vb, x[j]);
        }
    }
    reduce4(x)
}

/// The largest of the 8 lanes (of magnitudes, where no lane is NaN).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax8(m: __m256) -> f32 {
    let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)))
}

/// Q8_0/Q8_1 quantization of one row (the AVX2 quantizer's arithmetic: scale 127/amax,
/// round half to even), bit-identical to [`crate::q8::quantize_q8`].
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_q8_into(x: &[f32], out: &mut [BlockQ8]) {
    let sign = _mm256_set1_ps(-0.0);
    for (c, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        let v: [__m256; 4] =
            std::array::from_fn(|j| loadf8(c[8 * j..8 * j + 8].try_into().expect("8 floats")));
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vj in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vj));
        }
        let amax = hmax8(m);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm256_set1_ps(id);
        let mut sum = _mm256_setzero_si256();
        let mut qi = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v[j], mul),
            );
            qi[j] = _mm256_cvtps_epi32(r);
            sum = _mm256_add_epi32(sum, qi[j]);
        }
        let p0 = _mm256_packs_epi32(qi[0], qi[1]);
        let p1 = _mm256_packs_epi32(qi[2], qi[3]);
        let p = _mm256_packs_epi16(p0, p1);
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: qs is 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(o.qs.as_mut_ptr().cast(), p) };
        let dh = round_f16(d);
        o.d = dh;
        o.s = round_f16(d * hsum_i32(sum) as f32);
    }
}

/// Q8_K quantization of one row, bit-identical to [`crate::q8::quantize_q8k_ref`]: the
/// scale from the first value of largest magnitude (NaN never is one), values rounded half
/// to even (as its `nearest_int`, exact below 2^22 and here at most 127), a NaN product
/// giving 0 as the scalar rounding does, and the sums of each 16 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_q8k_into(x: &[f32], out: &mut [BlockQ8K]) {
    let sign = _mm256_set1_ps(-0.0);
    for (c, b) in x.chunks_exact(256).zip(out.iter_mut()) {
        let v: [__m256; 32] =
            std::array::from_fn(|j| loadf8(c[8 * j..8 * j + 8].try_into().expect("8 floats")));
        // max(|v|, m) keeps m where |v| is NaN, as the scalar `>` does
        let mut m = _mm256_setzero_ps();
        for vj in &v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, *vj), m);
        }
        let amax = hmax8(m);
        *b = BlockQ8K::ZERO;
        if amax == 0.0 {
            continue;
        }
        let am = _mm256_set1_ps(amax);
        let mut max = 0f32;
        for (j, vj) in v.iter().enumerate() {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, *vj), am);
            let bits = _mm256_movemask_ps(eq);
            if bits != 0 {
                max = c[8 * j + bits.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let mul = _mm256_set1_ps(iscale);
        let top = _mm256_set1_epi32(127);
        let mut qi = [_mm256_setzero_si256(); 32];
        for (q, vj) in qi.iter_mut().zip(&v) {
            let p = _mm256_mul_ps(*vj, mul);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
            let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
            *q = _mm256_min_epi32(_mm256_and_si256(_mm256_cvtps_epi32(r), ord), top);
        }
        for j in 0..8 {
            let p0 = _mm256_packs_epi32(qi[4 * j], qi[4 * j + 1]);
            let p1 = _mm256_packs_epi32(qi[4 * j + 2], qi[4 * j + 3]);
            let p = _mm256_packs_epi16(p0, p1);
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: qs holds 256 bytes, 32 j .. 32 j + 32 of them written; unaligned store.
            unsafe { _mm256_storeu_si256(b.qs.as_mut_ptr().add(32 * j).cast(), p) };
        }
        for (k, s) in b.bsums.iter_mut().enumerate() {
            *s = hsum_i32(_mm256_add_epi32(qi[2 * k], qi[2 * k + 1])) as i16;
        }
        b.d = 1.0 / iscale;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_f16(x: f32) -> f32 {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    _mm_cvtss_f32(_mm_cvtph_ps(h))
}

/// A row of f16 weights dotted with f16-valued activations, in [`dot_lanes`] order.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f16_row(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let whole = n / 32 * 32;
    for i in (0..whole).step_by(32) {
        for j in 0..4 {
            let va = _mm256_cvtph_ps(load16(arr(w, 2 * (i + 8 * j))));
            let vb = loadf8(x[i + 8 * j..i + 8 * j + 8].try_into().expect("8 floats"));
            acc[j] = _mm256_fmadd_ps(va, vb, acc[j]);
        }
    }
    if whole < n {
        let (mut pa, mut pb) = ([0f32; 32], [0f32; 32]);
        for k in 0..n - whole {
            pa[k] = f16_at(w, 2 * (whole + k));
            pb[k] = x[whole + k];
        }
        for j in 0..4 {
            let va = loadf8(pa[8 * j..8 * j + 8].try_into().expect("8 floats"));
            let vb = loadf8(pb[8 * j..8 * j + 8].try_into().expect("8 floats"));
            acc[j] = _mm256_fmadd_ps(va, vb, acc[j]);
        }
    }
    reduce4(acc)
}

/// The first step of [`reduce4`]: (x0 + x2) + (x1 + x3).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fold4(x: [__m256; 4]) -> __m256 {
    _mm256_add_ps(_mm256_add_ps(x[0], x[2]), _mm256_add_ps(x[1], x[3]))
}

/// The rest of [`reduce4`]: the register halves added, then two horizontal adds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish_fold(x: __m256) -> f32 {
    let t = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    let t = _mm_hadd_ps(t, t);
    _mm_cvtss_f32(_mm_hadd_ps(t, t))
}

/// [`finish_fold`] of eight registers at once, bit for bit: result lane i is
/// `finish_fold(s[i])`. The halves are added with a lane shuffle per pair of keys, and the
/// two horizontal adds run on four keys' values each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce8(s: [__m256; 8]) -> __m256 {
    // t(i) = high half + low half of s(i) (4 lanes); keys i and i + 1 in one register
    let t: [__m256; 4] = std::array::from_fn(|j| add_halves(s[2 * j], s[2 * j + 1]));
    // pairs, then pairs of pairs: lanes hold keys 0, 2, 4, 6, 1, 3, 5, 7
    let h0 = _mm256_hadd_ps(t[0], t[1]);
    let h1 = _mm256_hadd_ps(t[2], t[3]);
    let r = _mm256_hadd_ps(h0, h1);
    _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// High plus low half of `a` (lanes 0-3) and of `b` (lanes 4-7): [`reduce8`]'s first step.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_halves(a: __m256, b: __m256) -> __m256 {
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x31>(a, b),
        _mm256_permute2f128_ps::<0x20>(a, b),
    )
}

/// Horizontal sum of four accumulators in llama.cpp's f16/f32 dot order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce4(x: [__m256; 4]) -> f32 {
    finish_fold(fold4(x))
}

/// What a KV run holds: f32 values, or f16 values as their bits (`u16`, the q8 mode's
/// cache). The 64-wide attention kernels read either; f16 is widened by F16C as it loads.
pub trait KvElem: Copy + Send + Sync + 'static {
    const F16: bool;
}

impl KvElem for f32 {
    const F16: bool = false;
}

impl KvElem for u16 {
    const F16: bool = true;
}

/// Eight values of a KV run from `p` as f32 (exact for f16).
///
/// # Safety
/// `p` must point at eight readable elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_kv<E: KvElem>(p: *const E) -> __m256 {
    // SAFETY: the caller's promise; unaligned loads of 8 elements (16 or 32 bytes)
    unsafe {
        if E::F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// [`dot_rows_lanes`] for 64-wide keys stored as f16 bits: the same products and sums as
/// the f32 kernel on the widened values.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_rows_64_f16(q: &[f32], k: &[u16], stride: usize, out: &mut [f32]) {
    assert_eq!(q.len(), 64, "dot_rows_64_f16: a 64-wide query");
    dot_rows_64(q, k, stride, out)
}

/// [`weighted_rows_lanes`] for 64 columns of values stored as f16 bits.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn weighted_rows_64_f16(w: &[f32], v: &[u16], stride: usize, out: &mut [f32; 64]) {
    weighted_rows_64(w, v, stride, out)
}

/// See [`crate::q8::weighted_rows_lanes`]: 32 partial sums per output (one per lane slot of
/// the f16 dot), accumulated row by row, then reduced in the dot's order. `out.len()` is a
/// multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn weighted_rows_lanes(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // 64 columns at a time: a slot's 8 accumulators stay in registers (with a run-time
    // number of groups they lived on the stack, each FMA a load and a store that the next
    // row's FMA waited on: perf put most of a decoding step's attention there); the last
    // columns (fewer than 64) by the general kernel. Each column's sum is its own, so the
    // split changes no arithmetic.
    let whole = out.len() / 64 * 64;
    for c in (0..whole).step_by(64) {
        let cols: &mut [f32; 64] = (&mut out[c..c + 64]).try_into().expect("64 floats");
        weighted_rows_64(w, &v[c..], stride, cols);
    }
    if whole < out.len() {
        weighted_rows_g(w, &v[whole..], stride, &mut out[whole..]);
    }
}

/// The weighted sums of 64 columns, slot by slot (see [`weighted_rows_lanes`]), the group
/// loop a constant so it unrolls into registers.
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_rows_64<E: KvElem>(w: &[f32], v: &[E], stride: usize, out: &mut [f32; 64]) {
    let n = w.len();
    assert!(
        n == 0 || v.len() >= (n - 1) * stride + 64,
        "weighted_rows_64: values too short"
    );
    let vp = v.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 8]; 32];
    for (slot, acc_slot) in acc.iter_mut().enumerate() {
        let mut a = [_mm256_setzero_ps(); 8];
        let mut p = slot;
        while p < n {
            // SAFETY: p < n, so row p's 64 floats at p * stride are inside `v` (checked
            // above); the loads are unaligned.
            unsafe {
                let row = vp.add(p * stride);
                let b = _mm256_set1_ps(w[p]);
                for (g, ag) in a.iter_mut().enumerate() {
                    *ag = _mm256_fmadd_ps(b, load8_kv(row.add(8 * g)), *ag);
                }
            }
            p += 32;
        }
        *acc_slot = a;
    }
    for g in 0..8 {
        let r = reduce_slots(std::array::from_fn(|slot| acc[slot][g]));
        storef8(
            (&mut out[8 * g..8 * g + 8]).try_into().expect("8 floats"),
            r,
        );
    }
}

/// The weighted sums of fewer than 64 columns (a multiple of 8), in [`weighted_rows_64`]'s
/// order.
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_rows_g(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    const G: usize = 8;
    let dv = out.len();
    let groups = dv / 8;
    assert!(groups < G, "weighted_rows_g: 64 columns or more");
    // acc[slot][g]: slot = p % 32 (the lane slot of the f16 dot), g = output group of 8.
    // Slot by slot, so the G accumulators of a slot stay in registers while its rows
    // p = slot, slot + 32, ... stream by (the same order of additions per slot).
    let mut acc = [[_mm256_setzero_ps(); G]; 32];
    let n = w.len();
    for (slot, acc_slot) in acc.iter_mut().enumerate() {
        let mut a = [_mm256_setzero_ps(); G];
        let mut p = slot;
        while p < n {
            let row = &v[p * stride..p * stride + dv];
            let b = _mm256_set1_ps(w[p]);
            for g in 0..groups {
                let x = loadf8(row[8 * g..8 * g + 8].try_into().expect("8 floats"));
                a[g] = _mm256_fmadd_ps(b, x, a[g]);
            }
            p += 32;
        }
        *acc_slot = a;
    }
    // each group of 8 outputs: its 32 slots reduced in the dot's order
    for g in 0..groups {
        let r = reduce_slots(std::array::from_fn(|slot| acc[slot][g]));
        storef8(
            (&mut out[8 * g..8 * g + 8]).try_into().expect("8 floats"),
            r,
        );
    }
}

/// The 32 lane-slot partial sums of 8 outputs (`x[slot]`) reduced in the f16 dot's order:
/// slot = 8j + l is lane l of accumulator j; x0 += x2, x1 += x3, x0 += x1, then halves,
/// then pairs (as `reduce4`), done 8 outputs at a time, lane-wise.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce_slots(x: [__m256; 32]) -> __m256 {
    let t: [__m256; 8] = std::array::from_fn(|l| {
        let x0 = _mm256_add_ps(x[l], x[16 + l]);
        let x1 = _mm256_add_ps(x[8 + l], x[24 + l]);
        _mm256_add_ps(x0, x1)
    });
    let h = [
        _mm256_add_ps(t[0], t[4]),
        _mm256_add_ps(t[1], t[5]),
        _mm256_add_ps(t[2], t[6]),
        _mm256_add_ps(t[3], t[7]),
    ];
    _mm256_add_ps(_mm256_add_ps(h[0], h[1]), _mm256_add_ps(h[2], h[3]))
}

/// See [`crate::q8::weighted_rows_lanes_multi`]; `dv` is a multiple of 32. Weight vectors go
/// three at a time and columns 32 at a time, so a slot's 3 x 4 accumulators stay in
/// registers while one load of each V row chunk feeds all three.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn weighted_rows_lanes_multi(
    ws: &[f32],
    n: usize,
    v: &[f32],
    stride: usize,
    dv: usize,
    outs: &mut [f32],
) {
    weighted_groups(ws, n, v, [32, stride, 32 * stride], dv, outs)
}

/// See [`crate::q8::lane_dots`]: the dots of `na` rows of A with `nb` rows of B, each in
/// [`dot_lanes`] order, as a register tile of up to 4 A rows by 2-8 B rows (so each loaded
/// chunk feeds several FMAs, where the one-query kernels make two loads per FMA).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn lane_dots(
    a: &[f32],
    na: usize,
    a_stride: usize,
    b: &[f32],
    nb: usize,
    b_stride: usize,
    l: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        l.is_multiple_of(32),
        "lane_dots: length not a multiple of 32"
    );
    if na == 0 || nb == 0 {
        return;
    }
    assert!(
        a.len() >= (na - 1) * a_stride + l && b.len() >= (nb - 1) * b_stride + l,
        "lane_dots: rows too short"
    );
    assert!(
        out.len() >= (na - 1) * out_stride + nb,
        "lane_dots: output too short"
    );
    let mut i = 0;
    while i < na {
        let q = (na - i).min(4);
        let (ai, oi) = (&a[i * a_stride..], &mut out[i * out_stride..]);
        let g = (ai, a_stride, b, nb, b_stride, l);
        match q {
            1 => lane_rows::<1, 8>(g, oi, out_stride),
            2 => lane_rows::<2, 4>(g, oi, out_stride),
            3 => lane_rows::<3, 3>(g, oi, out_stride),
            _ => lane_rows::<4, 3>(g, oi, out_stride),
        }
        i += q;
    }
}

/// [`lane_dots`] for QA rows of A (the geometry checked by the caller): B rows eight at a
/// time, KB per tile, the eight folded sums of each A row finished together by [`reduce8`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_rows<const QA: usize, const KB: usize>(
    (a, a_stride, b, nb, b_stride, l): (&[f32], usize, &[f32], usize, usize, usize),
    out: &mut [f32],
    out_stride: usize,
) {
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut k0 = 0;
    while k0 + 8 <= nb {
        let mut f = [[_mm256_setzero_ps(); 8]; QA];
        let mut kt = 0;
        while kt + KB <= 8 {
            // SAFETY: rows k0 + kt .. k0 + kt + KB <= nb of B and the QA rows of A hold l
            // floats each (checked by lane_dots).
            let r = unsafe {
                lane_tile::<QA, KB>(ap, a_stride, bp.add((k0 + kt) * b_stride), b_stride, l)
            };
            for qa in 0..QA {
                f[qa][kt..kt + KB].copy_from_slice(&r[qa]);
            }
            kt += KB;
        }
        if kt < 8 {
            // KB = 3: the last two of the eight
            // SAFETY: as above, rows k0 + 6, k0 + 7 < nb.
            let r = unsafe {
                lane_tile::<QA, 2>(ap, a_stride, bp.add((k0 + 6) * b_stride), b_stride, l)
            };
            for qa in 0..QA {
                f[qa][6..8].copy_from_slice(&r[qa]);
            }
        }
        for (qa, fq) in f.iter().enumerate() {
            let at = qa * out_stride + k0;
            storef8(
                (&mut out[at..at + 8]).try_into().expect("8 floats"),
                reduce8(*fq),
            );
        }
        k0 += 8;
    }
    // the last keys two at a time (one tile of two keeps twice the FMA chains of one key)
    let mut k = k0;
    while k + 2 <= nb {
        // SAFETY: rows k, k + 1 < nb of B and the QA rows of A hold l floats each (checked
        // by lane_dots).
        let r = unsafe { lane_tile::<QA, 2>(ap, a_stride, bp.add(k * b_stride), b_stride, l) };
        for (qa, rq) in r.iter().enumerate() {
            out[qa * out_stride + k] = finish_fold(rq[0]);
            out[qa * out_stride + k + 1] = finish_fold(rq[1]);
        }
        k += 2;
    }
    if k < nb {
        // SAFETY: row k < nb of B, as above.
        let r = unsafe { lane_tile::<QA, 1>(ap, a_stride, bp.add(k * b_stride), b_stride, l) };
        for (qa, rq) in r.iter().enumerate() {
            out[qa * out_stride + k] = finish_fold(rq[0]);
        }
    }
}

/// The folded lane sums ([`fold4`] of the four accumulators of [`dot_lanes`]) of QA rows
/// of A (at `a`, `a_stride` apart) with KB rows of B, over `l` floats (a multiple of 32):
/// accumulator by accumulator ([`lane_pass`]), then folded.
///
/// # Safety
/// Every row read (`a + i * a_stride` for i < QA, `b + k * b_stride` for k < KB) holds `l`
/// floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_tile<const QA: usize, const KB: usize>(
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    b_stride: usize,
    l: usize,
) -> [[__m256; KB]; QA] {
    // SAFETY: the caller's promise, passed on
    let s: [[[__m256; KB]; QA]; 4] =
        std::array::from_fn(|j| unsafe { lane_pass::<QA, KB>(a, a_stride, b, b_stride, l, j) });
    let mut r = [[_mm256_setzero_ps(); KB]; QA];
    for (i, ri) in r.iter_mut().enumerate() {
        for (k, x) in ri.iter_mut().enumerate() {
            *x = fold4([s[0][i][k], s[1][i][k], s[2][i][k], s[3][i][k]]);
        }
    }
    r
}

/// Accumulator `j` of [`dot_lanes`] for every pair of QA rows of A and KB rows of B: the
/// chunks 32 c + 8 j in order of c, so the pairs are independent FMA chains and each loaded
/// chunk of A or B meets KB or QA of them. One pass per call, not inlined: with the four
/// passes in one body the compiler kept the finished passes' sums in registers and spilled
/// the running pass's accumulators instead (a store and a load per FMA, seen in perf).
///
/// # Safety
/// As [`lane_tile`].
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_pass<const QA: usize, const KB: usize>(
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    b_stride: usize,
    l: usize,
    j: usize,
) -> [[__m256; KB]; QA] {
    let mut acc = [[_mm256_setzero_ps(); KB]; QA];
    let mut off = 8 * j;
    while off < l {
        let mut bv = [_mm256_setzero_ps(); KB];
        for (k, bk) in bv.iter_mut().enumerate() {
            // SAFETY: off + 8 <= l, inside row k of B (the caller's promise)
            *bk = unsafe { _mm256_loadu_ps(b.add(k * b_stride + off)) };
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            // SAFETY: off + 8 <= l, inside row i of A (the caller's promise)
            let av = unsafe { _mm256_loadu_ps(a.add(i * a_stride + off)) };
            for (k, x) in acc_i.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(av, bv[k], *x);
            }
        }
        off += 32;
    }
    acc
}

/// The weight vectors in groups of up to three for [`weighted_rows_q`] (3, and 2 + 2 rather
/// than 3 + 1).
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_groups(
    ws: &[f32],
    n: usize,
    v: &[f32],
    strides: [usize; 3],
    dv: usize,
    outs: &mut [f32],
) {
    let nq = outs.len() / dv;
    let mut j = 0;
    while j < nq {
        let q = match nq - j {
            4 => 2,
            r => r.min(3),
        };
        let w = &ws[j * n..(j + q) * n];
        let o = &mut outs[j * dv..(j + q) * dv];
        match q {
            1 => weighted_rows_q::<1>(w, n, v, strides, o),
            2 => weighted_rows_q::<2>(w, n, v, strides, o),
            _ => weighted_rows_q::<3>(w, n, v, strides, o),
        }
        j += q;
    }
}

/// The weighted sums of Q weight vectors over V, where the 32 values of row p at columns
/// c0..c0 + 32 (c0 a multiple of 32) start at `(c0 / 32) * strides[0] + (p % 32) *
/// strides[1] + (p / 32) * strides[2]` in `v` (row-major V: [32, stride, 32 * stride]).
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_rows_q<const Q: usize>(
    ws: &[f32],
    n: usize,
    v: &[f32],
    strides: [usize; 3],
    outs: &mut [f32],
) {
    let dv = outs.len() / Q;
    let [cs, ss, bs] = strides;
    for c0 in (0..dv).step_by(32) {
        // acc[slot][query][column group of 8] (made slot by slot: no zeroing of 12 KiB)
        let acc: [[[__m256; 4]; Q]; 32] = std::array::from_fn(|slot| {
            let mut a = [[_mm256_setzero_ps(); 4]; Q];
            let mut p = slot;
            let mut at = (c0 / 32) * cs + slot * ss;
            while p < n {
                let row = &v[at..at + 32];
                at += bs;
                // the Q weights first, then one column group of the row at a time: Q + 4 Q
                // + 1 registers (16 at Q = 3), so nothing spills
                let b: [__m256; Q] = std::array::from_fn(|q| _mm256_set1_ps(ws[q * n + p]));
                for c in 0..4 {
                    let x = loadf8(row[8 * c..8 * c + 8].try_into().expect("8 floats"));
                    for (q, aq) in a.iter_mut().enumerate() {
                        aq[c] = _mm256_fmadd_ps(b[q], x, aq[c]);
                    }
                }
                p += 32;
            }
            a
        });
        // per query and column group, the slots reduced in the dot's order
        for q in 0..Q {
            for c in 0..4 {
                let r = reduce_slots(std::array::from_fn(|slot| acc[slot][q][c]));
                let at = q * dv + c0 + 8 * c;
                storef8((&mut outs[at..at + 8]).try_into().expect("8 floats"), r);
            }
        }
    }
}

/// See [`crate::q8::dot_rows_lanes_multi`]: blocks of 32 key rows (8 KiB at head size 64,
/// in L1 after the first query), each block against every query with [`dot_rows_lanes`]
/// (which keeps a 64-wide query in registers).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_rows_lanes_multi(
    qs: &[f32],
    nq: usize,
    k: &[f32],
    stride: usize,
    m: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    const BLOCK: usize = 32;
    let d = qs.len() / nq;
    for p0 in (0..m).step_by(BLOCK) {
        let p1 = (p0 + BLOCK).min(m);
        for (j, q) in qs.chunks_exact(d).enumerate() {
            let o = j * out_stride;
            dot_rows_lanes(q, &k[p0 * stride..], stride, &mut out[o + p0..o + p1]);
        }
    }
}

/// Rounds every value to the nearest f16 (round half to even), 8 at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn round_f16_slice(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(8);
    for c in chunks.by_ref() {
        let c: &mut [f32; 8] = c.try_into().expect("8 floats");
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(loadf8(c));
        storef8(c, _mm256_cvtph_ps(h));
    }
    for x in chunks.into_remainder() {
        *x = round_f16(*x);
    }
}

/// See [`crate::q8::dot_rows_lanes`]: one query against many keys, each in [`dot_lanes`]
/// order.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_rows_lanes(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    let d = q.len();
    if !d.is_multiple_of(32) {
        for (p, o) in out.iter_mut().enumerate() {
            *o = dot_lanes(q, &k[p * stride..p * stride + d]);
        }
        return;
    }
    if d == 64 {
        dot_rows_64(q, k, stride, out)
    } else {
        dot_rows_d::<0>(q, k, stride, out)
    }
}

/// [`dot_rows_d`] for head size 64 with the query loaded into 8 registers once (written
/// out so the compiler keeps it there instead of reloading it for every key): each key
/// is 8 FMAs with the key row as memory operands, in the same order as [`dot_rows_d`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_rows_64<E: KvElem>(q: &[f32], k: &[E], stride: usize, out: &mut [f32]) {
    let mut qv = [_mm256_setzero_ps(); 8];
    for c in 0..8 {
        qv[c] = loadf8(q[8 * c..8 * c + 8].try_into().expect("8 floats"));
    }
    let n = out.len();
    assert!(
        n == 0 || k.len() >= (n - 1) * stride + 64,
        "dot_rows_64: keys too short"
    );
    let kp = k.as_ptr();
    // one key: 8 FMAs, folded to one register (no closures here: they are not always
    // inlined into this function's target features)
    macro_rules! key {
        ($p:expr) => {{
            // SAFETY: $p < n, so the key row's 64 floats at $p * stride are inside `k`
            // (checked above); the loads are unaligned.
            unsafe {
                let r = kp.add($p * stride);
                let mut x = [_mm256_setzero_ps(); 4];
                for j in 0..4 {
                    let lo = load8_kv(r.add(8 * j));
                    let hi = load8_kv(r.add(32 + 8 * j));
                    x[j] = _mm256_fmadd_ps(
                        qv[4 + j],
                        hi,
                        _mm256_fmadd_ps(qv[j], lo, _mm256_setzero_ps()),
                    );
                }
                fold4(x)
            }
        }};
    }
    // eight keys at a time, reduced as they come ([`reduce8`]'s steps: pairs of keys, then
    // pairs of pairs): at most 15 registers live and no stores in the loop (the folded
    // keys kept in memory ran 2-3x slower: perf put the time on those stores, likely loads
    // of the next key rows held behind them by false store-to-load aliasing)
    let mut p0 = 0;
    while p0 + 8 <= n {
        let t0 = add_halves(key!(p0), key!(p0 + 1));
        let t1 = add_halves(key!(p0 + 2), key!(p0 + 3));
        let h0 = _mm256_hadd_ps(t0, t1);
        let t2 = add_halves(key!(p0 + 4), key!(p0 + 5));
        let t3 = add_halves(key!(p0 + 6), key!(p0 + 7));
        let h1 = _mm256_hadd_ps(t2, t3);
        let r = _mm256_hadd_ps(h0, h1);
        let r = _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        storef8((&mut out[p0..p0 + 8]).try_into().expect("8 floats"), r);
        p0 += 8;
    }
    for p in p0..n {
        out[p] = finish_fold(key!(p));
    }
}

/// The body of [`dot_rows_lanes`] for a head size that is a multiple of 32: `D` when it is
/// not 0 (a constant, so the loops unroll), else `q.len()`. Keys go eight at a time, each
/// folded to one register and the eight reduced together ([`reduce8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_rows_d<const D: usize>(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    let d = if D == 0 { q.len() } else { D };
    let n = out.len();
    let mut s = [_mm256_setzero_ps(); 8];
    let mut p0 = 0;
    while p0 < n {
        let nk = (n - p0).min(8);
        for (i, si) in s.iter_mut().enumerate().take(nk) {
            let row = &k[(p0 + i) * stride..(p0 + i) * stride + d];
            let mut x = [_mm256_setzero_ps(); 4];
            for c in (0..d).step_by(32) {
                for (j, xj) in x.iter_mut().enumerate() {
                    let at = c + 8 * j;
                    let va = loadf8(q[at..at + 8].try_into().expect("8 floats"));
                    let vb = loadf8(row[at..at + 8].try_into().expect("8 floats"));
                    *xj = _mm256_fmadd_ps(va, vb, *xj);
                }
            }
            *si = fold4(x);
        }
        if nk == 8 {
            storef8(
                (&mut out[p0..p0 + 8]).try_into().expect("8 floats"),
                reduce8(s),
            );
        } else {
            for (o, &si) in out[p0..p0 + nk].iter_mut().zip(&s) {
                *o = finish_fold(si);
            }
        }
        p0 += nk;
    }
}

/// 8 lanes of [`crate::q8::exp_poly`], the same operations in the same order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    use crate::q8::{EXP_C, EXP_LN2_HI, EXP_LN2_LO, EXP_LOG2E};
    let zero_mask = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(EXP_LOG2E),
    ));
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_C[0]);
    for &c in &EXP_C[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
    let v = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    _mm256_andnot_ps(zero_mask, v)
}

/// See [`crate::q8::exp_scaled_into`]: the same operations per value, lane sums in one
/// register, reduced as [`crate::q8::hsum8`] reduces them.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn exp_scaled_into(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len(), "exp_scaled_into: lengths differ");
    let (vs, vk) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
    let mut acc = _mm256_setzero_ps();
    let whole = x.len() / 8 * 8;
    for (c, o) in x[..whole].chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        let c: &[f32; 8] = c.try_into().expect("8 floats");
        let o: &mut [f32; 8] = o.try_into().expect("8 floats");
        let e = exp8(_mm256_mul_ps(_mm256_sub_ps(loadf8(c), vs), vk));
        storef8(o, e);
        acc = _mm256_add_ps(acc, e);
    }
    let mut lanes = [0f32; 8];
    storef8(&mut lanes, acc);
    let mut sum = crate::q8::hsum8(&lanes);
    for (&v, o) in x[whole..].iter().zip(&mut out[whole..]) {
        *o = crate::q8::exp_poly((v - shift) * scale);
        sum += *o;
    }
    sum
}

/// See [`crate::q8::softmax_scaled_lanes`].
#[target_feature(enable = "avx2,fma,f16c")]
pub fn softmax_scaled_lanes(x: &mut [f32], scale: f32) {
    for v in x.iter_mut() {
        *v *= scale;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let vmax = _mm256_set1_ps(max);
    let mut sum = 0f64;
    let mut chunks = x.chunks_exact_mut(8);
    for c in chunks.by_ref() {
        let c: &mut [f32; 8] = c.try_into().expect("8 floats");
        let e = exp8(_mm256_sub_ps(loadf8(c), vmax));
        storef8(c, e);
        sum += hsum8(e) as f64;
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut lanes = [0f32; 8];
        for (l, v) in rest.iter_mut().enumerate() {
            *v = crate::q8::exp_poly(*v - max);
            lanes[l] = *v;
        }
        sum += crate::q8::hsum8(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`crate::ops::rope_cs`] for the interleaved pairing, 4 pairs at a time: x0 c - x1 s and
/// x0 s + x1 c as two products and a sum, rounded as the scalar code rounds them.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn rope_interleaved(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    assert!(
        head_dim.is_multiple_of(8) && head_dim <= 256 && cs.len() == head_dim / 2,
        "rope_interleaved: bad table"
    );
    let even_neg = _mm256_setr_ps(-0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0);
    // the table as floats, c0 s0 c1 s1 ..., shared by every head of x
    let mut buf = [0f32; 256];
    for (t, &(c, s)) in buf.chunks_exact_mut(2).zip(cs) {
        (t[0], t[1]) = (c, s);
    }
    let t = &buf[..head_dim];
    for head in x.chunks_exact_mut(head_dim) {
        for (xc, tc) in head.chunks_exact_mut(8).zip(t.chunks_exact(8)) {
            let xc: &mut [f32; 8] = xc.try_into().expect("8 floats");
            let v = loadf8(tc.try_into().expect("8 floats"));
            let c = _mm256_moveldup_ps(v);
            let s = _mm256_xor_ps(_mm256_movehdup_ps(v), even_neg);
            let xv = loadf8(xc);
            let sw = _mm256_permute_ps::<0xB1>(xv);
            storef8(
                xc,
                _mm256_add_ps(_mm256_mul_ps(xv, c), _mm256_mul_ps(sw, s)),
            );
        }
    }
}

/// See [`crate::q8::softmax_xent_row`]; the same bits as its scalar reference.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn softmax_xent_row(row: &mut [f32], target: usize, grad: Option<f32>) -> f32 {
    let x_tgt = row[target];
    let mut chunks = row.chunks_exact(8);
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in chunks.by_ref() {
        vmax = _mm256_max_ps(vmax, loadf8(c.try_into().expect("8 floats")));
    }
    let max = chunks
        .remainder()
        .iter()
        .fold(hmax8(vmax), |m, &v| if v > m { v } else { m });
    let vm = _mm256_set1_ps(max);
    let mut lanes = _mm256_setzero_ps();
    let mut chunks = row.chunks_exact_mut(8);
    for c in chunks.by_ref() {
        let c: &mut [f32; 8] = c.try_into().expect("8 floats");
        let e = exp8(_mm256_sub_ps(loadf8(c), vm));
        if grad.is_some() {
            storef8(c, e);
        }
        lanes = _mm256_add_ps(lanes, e);
    }
    let mut l = [0f32; 8];
    storef8(&mut l, lanes);
    for (i, v) in chunks.into_remainder().iter_mut().enumerate() {
        let e = crate::q8::exp_poly(*v - max);
        if grad.is_some() {
            *v = e;
        }
        l[i] += e;
    }
    let sum: f64 = l.iter().map(|&v| v as f64).sum();
    if let Some(k) = grad {
        let f = _mm256_set1_ps((k as f64 / sum) as f32);
        let mut chunks = row.chunks_exact_mut(8);
        for c in chunks.by_ref() {
            let c: &mut [f32; 8] = c.try_into().expect("8 floats");
            storef8(c, _mm256_mul_ps(loadf8(c), f));
        }
        let f = (k as f64 / sum) as f32;
        chunks.into_remainder().iter_mut().for_each(|v| *v *= f);
        row[target] -= k;
    }
    ((max as f64 + sum.ln()) - x_tgt as f64) as f32
}

/// Token generation: consecutive weight rows (`row_bytes` each, `out.len()` of them, from
/// `w`) against one activation row, the rows in pairs if `pairs` (two independent chains
/// hide the longer per-block work of the 4- and 5-bit types). One call per chunk of rows:
/// the per-row dispatch and set-up of a call per row (pair) was 4% of a decode step.
/// Each output is bit for bit what [`dot_q8`] gives.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn rows_q8<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    y: &[BlockQ8],
    out: &mut [f32],
    pairs: bool,
) {
    // SAFETY: this function enables AVX2, FMA and F16C, all the body needs without VNNI.
    unsafe { rows_q8_body::<T, false>(w, row_bytes, y, out, pairs) }
}

/// [`rows_q8`] for Q4_1 and Q5_1 with VNNI (see [`vnni`]): each block's lane sums in one
/// `vpdpbusd` per row (`dot_q8_body`), the same integers, so bit for bit [`rows_q8`]. On a
/// Zen 4, Q4_1 rows in L2 31.8 -> 34.5 GMAC/s, and streamed (`decode_stream N 30 q4_1`, 8
/// interleaved runs, medians) one thread 16.1 -> 17.2 GB/s, two 27.4 -> 28.8.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 VNNI, VL and BW ([`vnni`]).
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
pub fn rows_q8_vnni<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    y: &[BlockQ8],
    out: &mut [f32],
    pairs: bool,
) {
    assert!(
        T == Q4_1 || T == Q5_1,
        "rows_q8_vnni: only the unsigned types (Q4_1, Q5_1)"
    );
    // SAFETY: this function enables every feature the VNNI body needs.
    unsafe { rows_q8_body::<T, true>(w, row_bytes, y, out, pairs) }
}

/// The body of [`rows_q8`] and [`rows_q8_vnni`].
///
/// # Safety
/// As [`dot_q8_body`]: the caller's target features.
#[inline(always)]
unsafe fn rows_q8_body<const T: u8, const VNNI: bool>(
    w: &[u8],
    row_bytes: usize,
    y: &[BlockQ8],
    out: &mut [f32],
    pairs: bool,
) {
    let n = out.len();
    // SAFETY: the caller's features; the kernels check their rows' lengths
    unsafe {
        prefetch_start(&w[..n * row_bytes]);
        let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
        let mut r = 0;
        if pairs {
            while r + 2 <= n {
                let o = dot_q8_body::<T, 2, 1, VNNI>([row(r), row(r + 1)], [y]);
                (out[r], out[r + 1]) = (o[0][0], o[1][0]);
                r += 2;
            }
        }
        while r < n {
            out[r] = if T == Q8_0 {
                dot_q8_0_row(row(r), y)
            } else {
                dot_q8_body::<T, 1, 1, VNNI>([row(r)], [y])[0][0]
            };
            r += 1;
        }
    }
}

/// One Q8_0 weight row with one activation row (token generation): what
/// `dot_q8::<Q8_0, 1, 1>` computes, with the integer sums of four blocks reduced together
/// (three `vphaddd` and one add, where a block alone takes a seven-instruction horizontal
/// sum), then the four blocks' fused multiply-adds in block order as before. The sums are
/// exact integers, so the result is bit for bit the same.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0_row(w: &[u8], y: &[BlockQ8]) -> f32 {
    let nb = y.len();
    assert!(
        w.len() >= nb * 34,
        "weight row shorter than the activations"
    );
    let (wp, yp) = (w.as_ptr(), y.as_ptr());
    // block i's 32 products, summed in pairs of pairs: 8 i32 lanes
    // SAFETY (here and below): i < nb, the row holds nb blocks of 34 bytes and y nb blocks
    // (asserted above); the loads are unaligned loads inside those blocks.
    let lanes = |i: usize| unsafe {
        let b = wp.add(i * 34);
        if i.is_multiple_of(2) {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH).cast());
        }
        let qx = _mm256_loadu_si256(b.add(2).cast());
        let qy = _mm256_loadu_si256((*yp.add(i)).qs.as_ptr().cast());
        mul_sum_u8(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))
    };
    let scale = |i: usize| unsafe { f16_ptr(wp.add(i * 34)) * (*yp.add(i)).d };
    let mut acc = 0f32;
    let mut i = 0;
    while i + 4 <= nb {
        let h01 = _mm256_hadd_epi32(lanes(i), lanes(i + 1));
        let h23 = _mm256_hadd_epi32(lanes(i + 2), lanes(i + 3));
        // lanes 0-3: the four blocks' first halves, 4-7 their second halves
        let h = _mm256_hadd_epi32(h01, h23);
        let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
        let mut f = [0f32; 4];
        // SAFETY: the array holds 4 writable floats; the store is unaligned.
        unsafe { _mm_storeu_ps(f.as_mut_ptr(), _mm_cvtepi32_ps(s)) };
        for (k, fk) in f.into_iter().enumerate() {
            acc = fk.mul_add(scale(i + k), acc);
        }
        i += 4;
    }
    while i < nb {
        acc = (hsum_i32(lanes(i)) as f32).mul_add(scale(i), acc);
        i += 1;
    }
    acc
}

/// [`rows_q8`] for the K types (`T` = 4, 5, 6), one row at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn rows_k<const T: u8>(w: &[u8], row_bytes: usize, y: &[BlockQ8K], out: &mut [f32]) {
    prefetch_start(&w[..out.len() * row_bytes]);
    for (r, o) in out.iter_mut().enumerate() {
        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
        *o = match T {
            4 => dot_q4k::<1>(wr, [y])[0],
            5 => dot_q5k::<1>(wr, [y])[0],
            _ => dot_q6k::<1>(wr, [y])[0],
        };
    }
}

/// Consecutive weight rows (`row_bytes` each, `out.len()` of them, starting at `w`) against N
/// activation rows: out[r][n]. One call per block of rows keeps the dispatch out of the
/// inner loop; each row is computed exactly as [`dot_q8`] / [`dot_q4k`] / ... compute it.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn tile_q8<const T: u8, const N: usize>(
    w: &[u8],
    row_bytes: usize,
    ys: [&[BlockQ8]; N],
    out: &mut [[f32; N]],
) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_q8::<T, 1, N>([&w[r * row_bytes..(r + 1) * row_bytes]], ys)[0];
    }
}

/// Entries per block in the activation scale table of [`tile_q8x8`].
pub const SCALE_ROWS: usize = 9;

/// [`tile_q8`] for eight activation rows and Q5_0, Q4_1 or Q5_1 weights: `rows` (at
/// most 16) consecutive weight rows, written token-major: out[n * out_stride + r] for
/// r < rows. `yd` holds, per block i, [`SCALE_ROWS`] registers made once per matmul (see
/// `matmul::QuantActs`): yd[9 i + n] is row n's block scale in every lane, yd[9 i + 8] the
/// eight rows' `s` (block sum times scale). So the inner loop makes each block's scale
/// product (the same f32 product [`dot_q8`] makes) with one load and one multiply (a
/// broadcast from memory costs this CPU more than both, measured), and the min terms of
/// Q4_1 / Q5_1 advance for all eight rows in one multiply and add. The activations' values
/// come interleaved by block, `qt[8 i + n]` = row n's block i (`q8::tile_qs`): aligned
/// loads, none across a cache line. Each output is bit for bit what [`dot_q8`] gives.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn tile_q8x8<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    qt: &[Q32],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    tile_q8x8_body::<T, false>(w, row_bytes, rows, qt, &[], yd, out, out_stride)
}

/// [`tile_q8x8`] with VNNI (see [`vnni`]): each token's lane sums in one `vpdpbusd` (AVX2:
/// `vpmaddubsw` + `vpmaddwd`). Q5_0's signed values go in as unsigned ones (x + 16), and
/// its sums start from `q5c[8 i + n]`, -16 times the four-byte sums of token n's block i
/// ([`crate::q8::tile_q5_corrections`]; unused and may be empty for Q4_1 and Q5_1), which
/// leaves the same lane sums. Bit for bit [`tile_q8x8`].
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 VNNI, VL and BW ([`vnni`]).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
pub fn tile_q8x8_vnni<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    qt: &[Q32],
    q5c: &[[i32; 8]],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    if T == Q5_0 {
        assert!(
            q5c.len() == qt.len(),
            "tile_q8x8_vnni: one correction per block"
        );
    }
    tile_q8x8_body::<T, true>(w, row_bytes, rows, qt, q5c, yd, out, out_stride)
}

/// The body of [`tile_q8x8`] and [`tile_q8x8_vnni`], inlined into each.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_q8x8_body<const T: u8, const VNNI: bool>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    qt: &[Q32],
    q5c: &[[i32; 8]],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        matches!(T, Q5_0 | Q4_1 | Q5_1),
        "tile_q8x8: unsupported weight type (Q8_0: tiles_q8_0_lanes)"
    );
    let size = block_bytes(T);
    let nb = qt.len() / 8;
    let lens = [nb; 8];
    check_tile8(
        nb * size,
        rows,
        row_bytes,
        w.len(),
        nb,
        &lens,
        yd.len(),
        out.len(),
        out_stride,
    );
    let qp = qt.as_ptr();
    let cp = q5c.as_ptr();
    let ydp = yd.as_ptr();
    // SAFETY: the callers enable AVX2, FMA and F16C (and, for VNNI, AVX-512 VNNI, VL and BW,
    // the only instance that reaches a VNNI intrinsic). i < nb below; the weight rows hold
    // nb blocks of `size` bytes, the activations 8 nb registers, the table SCALE_ROWS nb
    // entries (checked above) and, for VNNI Q5_0, q5c 8 nb entries (checked by the caller).
    unsafe {
        // sums[r] = the eight tokens' dot products with row r; with VNNI, Q5_0 takes two
        // rows at a time, sharing each activation and start-value load (qmatmul_speed
        // q5_0 2048 640 512 1: 47 -> 52-54 GMAC/s; Q4_1, with no start values, 59 -> 55;
        // AVX2 has too few registers for two rows)
        let mut sums = [_mm256_setzero_ps(); 16];
        let row = |r: usize| w[r * row_bytes..r * row_bytes + nb * size].as_ptr();
        let mut r = 0;
        if VNNI && T == Q5_0 {
            while r + 2 <= rows {
                let s = rows_q8x8::<T, VNNI, 2>([row(r), row(r + 1)], nb, qp, cp, ydp);
                sums[r..r + 2].copy_from_slice(&s);
                r += 2;
            }
        }
        while r < rows {
            sums[r] = rows_q8x8::<T, VNNI, 1>([row(r)], nb, qp, cp, ydp)[0];
            r += 1;
        }
        store_token_major(&sums, rows, out, out_stride);
    }
}

/// R weight rows of [`tile_q8x8_body`] (pointers to nb blocks each) against its eight
/// tokens: result j lane n = token n's dot product with row j.
///
/// # Safety
/// As in [`tile_q8x8_body`]: each row holds nb blocks, `qp` 8 nb registers, `cp` (VNNI
/// Q5_0) 8 nb entries and `ydp` SCALE_ROWS nb entries; the caller's target features.
#[inline(always)]
unsafe fn rows_q8x8<const T: u8, const VNNI: bool, const R: usize>(
    wp: [*const u8; R],
    nb: usize,
    qp: *const Q32,
    cp: *const [i32; 8],
    ydp: *const [f32; 8],
) -> [__m256; R] {
    let size = block_bytes(T);
    let unsigned = T == Q4_1 || T == Q5_1;
    // SAFETY: the caller's promises (see above)
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); 8]; R];
        // the min terms (Q4_1, Q5_1), lane n for token n
        let mut mins = [_mm256_setzero_ps(); R];
        for i in 0..nb {
            let tab = ydp.add(SCALE_ROWS * i);
            let mut dw = [_mm256_setzero_ps(); R];
            let mut qx = [_mm256_setzero_si256(); R];
            let mut ax = [_mm256_setzero_si256(); R];
            for j in 0..R {
                let b = wp[j].add(i * size);
                if i % 2 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH).cast());
                }
                dw[j] = _mm256_set1_ps(f16_ptr(b));
                let nib = |at: usize| nibbles(b.add(at), m4);
                qx[j] = match T {
                    Q5_0 if VNNI => {
                        // x + 16: 16 added where the fifth bit is set (x >= 0), the bits
                        // taken as a byte mask (AVX-512 BW)
                        let qh = b.add(2).cast::<u32>().read_unaligned();
                        let n6 = nib(6);
                        _mm256_mask_add_epi8(n6, qh, n6, _mm256_set1_epi8(16))
                    }
                    Q5_0 => {
                        let qh = b.add(2).cast::<u32>().read_unaligned();
                        let hi = _mm256_andnot_si256(bits32(qh), _mm256_set1_epi8(0xf0u8 as i8));
                        _mm256_or_si256(nib(6), hi)
                    }
                    Q4_1 => nib(4),
                    Q5_1 => {
                        let qh = b.add(4).cast::<u32>().read_unaligned();
                        let hi = _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10));
                        _mm256_or_si256(nib(8), hi)
                    }
                    _ => unreachable!("checked above"),
                };
                if unsigned {
                    let mw = _mm256_set1_ps(f16_ptr(b.add(2)));
                    let s8 = _mm256_loadu_ps((*tab.add(8)).as_ptr());
                    mins[j] = _mm256_add_ps(mins[j], _mm256_mul_ps(mw, s8));
                }
                // signed weights (AVX2): |x| once per block; the sign moves to the
                // activations
                ax[j] = _mm256_sign_epi8(qx[j], qx[j]);
            }
            for n in 0..8 {
                let qy = _mm256_load_si256(qp.add(8 * i + n).cast());
                let ydn = _mm256_loadu_ps((*tab.add(n)).as_ptr());
                let start = if VNNI && !unsigned {
                    _mm256_loadu_si256(cp.add(8 * i + n).cast())
                } else {
                    _mm256_setzero_si256()
                };
                for j in 0..R {
                    let p = if VNNI {
                        _mm256_dpbusd_epi32(start, qx[j], qy)
                    } else if unsigned {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(qx[j], qy), ones)
                    } else {
                        let sy = _mm256_sign_epi8(qy, qx[j]);
                        _mm256_madd_epi16(_mm256_maddubs_epi16(ax[j], sy), ones)
                    };
                    let dv = _mm256_mul_ps(dw[j], ydn);
                    acc[j][n] = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(p), acc[j][n]);
                }
            }
        }
        // dot_q8 adds its scalar part: the min terms, or 0.0 for the signed types
        std::array::from_fn(|j| _mm256_add_ps(hsum8x8(acc[j]), mins[j]))
    }
}

/// [`tile_q8x8`] for `groups` consecutive groups of eight tokens (`qt` and `yd` hold the
/// groups one after another, `nb` blocks each; group g's outputs start at token row 8 g of
/// `out`): one call per block of rows instead of one per group (the calls and their
/// dispatch were 3% of Gemma-3's prompt time).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn tiles_q8x8<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    groups: usize,
    qt: &[Q32],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    tile_groups(groups, qt, &[], yd, out, out_stride, |qt, _, yd, out| {
        tile_q8x8::<T>(w, row_bytes, rows, qt, yd, out, out_stride)
    });
}

/// The group loop of [`tiles_q8x8`] and [`tiles_q8x8_vnni`]: checks that `qt` and `yd`
/// hold `groups` groups (and `q5c`, unless empty, one entry per `qt` entry) and calls `f`
/// with group g's activations, start values (empty when `q5c` is), scale table and output
/// from token row 8 g.
#[inline(always)]
fn tile_groups(
    groups: usize,
    qt: &[Q32],
    q5c: &[[i32; 8]],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
    mut f: impl FnMut(&[Q32], &[[i32; 8]], &[[f32; 8]], &mut [f32]),
) {
    if groups == 0 {
        return;
    }
    let nb = qt.len() / (8 * groups);
    assert!(
        qt.len() == groups * nb * 8 && yd.len() >= groups * nb * SCALE_ROWS,
        "tiles_q8x8: activations do not match the groups"
    );
    assert!(
        q5c.is_empty() || q5c.len() == qt.len(),
        "tiles_q8x8: one start value per activation block"
    );
    for g in 0..groups {
        let c = if q5c.is_empty() {
            q5c
        } else {
            &q5c[g * nb * 8..(g + 1) * nb * 8]
        };
        f(
            &qt[g * nb * 8..(g + 1) * nb * 8],
            c,
            &yd[g * nb * SCALE_ROWS..(g + 1) * nb * SCALE_ROWS],
            &mut out[g * 8 * out_stride..],
        );
    }
}

/// [`tiles_q8x8`] with VNNI: [`tile_q8x8_vnni`] per group (`q5c` as `qt`, by group).
///
/// # Safety
/// As [`tile_q8x8_vnni`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
pub fn tiles_q8x8_vnni<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    groups: usize,
    qt: &[Q32],
    q5c: &[[i32; 8]],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        T != Q5_0 || q5c.len() == qt.len(),
        "tiles_q8x8_vnni: one correction per block"
    );
    let c = if T == Q5_0 { q5c } else { &[] };
    tile_groups(groups, qt, c, yd, out, out_stride, |qt, q5c, yd, out| {
        tile_q8x8_vnni::<T>(w, row_bytes, rows, qt, q5c, yd, out, out_stride)
    });
}

/// Q8_0 weights against groups of eight activation rows with the tokens in the lanes:
/// `rows` (at most 16) consecutive weight rows, `groups` groups, written token-major:
/// group g's token n at out[(8 g + n) * out_stride + r] for r < rows. The activations come
/// as [`crate::q8::tile_ql`] lays them out, `ql[(g nb + i) 8 + j]` = bytes 4j..4j+4 of
/// block i of the group's eight rows side by side, and `dq[g nb + i]` their eight scales.
/// A weight's four bytes are broadcast to all lanes, so one multiply-add sequence advances
/// all eight tokens' exact block sums; the float work (one scale product, conversion and
/// fused multiply-add) is then done once per block for eight tokens, where lane sums need
/// it per token. Four rows at a time share each activation load. Each output is bit for
/// bit what [`dot_q8`] gives for Q8_0 (one integer sum and one multiply-add per block).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn tiles_q8_0_lanes(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    groups: usize,
    ql: &[Q32],
    dq: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    q8_0_lanes_groups::<false>(w, row_bytes, rows, groups, ql, dq, &[], out, out_stride)
}

/// [`tiles_q8_0_lanes`] with VNNI (see [`vnni`]): the broadcast weight bytes, made
/// unsigned by flipping their top bit (w + 128), meet the activations in one `vpdpbusd`
/// per four bytes, and each block's sums start from `qc[g nb + i]`, -128 times each token's
/// sum of the block's values ([`crate::q8::lane_corrections`]), so they end as the same
/// exact integer sums. Bit for bit [`tiles_q8_0_lanes`].
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 VNNI, VL and BW ([`vnni`]).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
pub fn tiles_q8_0_lanes_vnni(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    groups: usize,
    ql: &[Q32],
    dq: &[[f32; 8]],
    qc: &[[i32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        qc.len() == dq.len(),
        "tiles_q8_0_lanes_vnni: one correction per block"
    );
    q8_0_lanes_groups::<true>(w, row_bytes, rows, groups, ql, dq, qc, out, out_stride)
}

/// The body of [`tiles_q8_0_lanes`] and [`tiles_q8_0_lanes_vnni`], inlined into each (so
/// it is compiled with the caller's target features).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn q8_0_lanes_groups<const VNNI: bool>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    groups: usize,
    ql: &[Q32],
    dq: &[[f32; 8]],
    qc: &[[i32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    if groups == 0 || rows == 0 {
        return;
    }
    let nb = ql.len() / (8 * groups);
    assert!(
        ql.len() == groups * nb * 8 && dq.len() >= groups * nb,
        "tiles_q8_0_lanes: activations do not match the groups"
    );
    assert!(rows <= 16, "tile kernel: at most 16 rows");
    assert!(
        rows <= out_stride && out.len() >= (8 * groups - 1) * out_stride + rows,
        "tile kernel: output too short"
    );
    assert!(
        row_bytes >= nb * 34,
        "weight row shorter than the activations"
    );
    assert!(
        w.len() >= rows * row_bytes,
        "weight block shorter than its rows"
    );
    for g in 0..groups {
        let ql = &ql[g * nb * 8..(g + 1) * nb * 8];
        let dq = &dq[g * nb..(g + 1) * nb];
        let qc = if VNNI { &qc[g * nb..(g + 1) * nb] } else { qc };
        // SAFETY: the callers enable AVX (a plain zeroing)
        let mut sums = [unsafe { _mm256_setzero_ps() }; 16];
        let mut r = 0;
        while r + 4 <= rows {
            let s = lanes_q8_0::<4, VNNI>(w, row_bytes, r, nb, ql, dq, qc);
            sums[r..r + 4].copy_from_slice(&s);
            r += 4;
        }
        while r < rows {
            sums[r] = lanes_q8_0::<1, VNNI>(w, row_bytes, r, nb, ql, dq, qc)[0];
            r += 1;
        }
        // SAFETY: the callers enable AVX2, FMA and F16C (the kernel's contract).
        unsafe { store_token_major(&sums, rows, &mut out[g * 8 * out_stride..], out_stride) };
    }
}

/// Rows r0..r0 + R of [`tiles_q8_0_lanes`] for one group: lane n of result j is token n's
/// dot product with row r0 + j. The caller checked that the rows hold nb blocks, `ql` 8 nb
/// registers, `dq` nb and, with VNNI, `qc` nb.
#[inline(always)]
fn lanes_q8_0<const R: usize, const VNNI: bool>(
    w: &[u8],
    row_bytes: usize,
    r0: usize,
    nb: usize,
    ql: &[Q32],
    dq: &[[f32; 8]],
    qc: &[[i32; 8]],
) -> [__m256; R] {
    // SAFETY: every pointer below stays inside row r0 + j's first nb blocks of 34 bytes
    // (w holds the rows, checked by the caller), ql's 8 nb registers, dq's nb entries and
    // (VNNI) qc's nb; the weight and correction loads are unaligned, the activation loads
    // aligned (Q32 is 32-byte aligned). The intrinsics need the features the callers
    // enable (VNNI ones only in the VNNI instance).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let wp: [*const u8; R] = std::array::from_fn(|j| w.as_ptr().add((r0 + j) * row_bytes));
        let qp = ql.as_ptr();
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..nb {
            if i % 2 == 0 {
                for p in wp {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i * 34 + PREFETCH).cast());
                }
            }
            let mut s = if VNNI {
                [_mm256_loadu_si256(qc.as_ptr().add(i).cast()); R]
            } else {
                [_mm256_setzero_si256(); R]
            };
            for k in 0..8 {
                let a = _mm256_load_si256(qp.add(8 * i + k).cast());
                for j in 0..R {
                    let x = wp[j].add(i * 34 + 2 + 4 * k).cast::<i32>().read_unaligned();
                    let wb = _mm256_set1_epi32(x);
                    if VNNI {
                        // (w + 128) a, summed in fours onto the lanes
                        s[j] = _mm256_dpbusd_epi32(s[j], _mm256_xor_si256(wb, flip), a);
                    } else {
                        // |w| times the activations carrying w's sign: products of at most
                        // 127 x 127, pairs that fit i16
                        let p =
                            _mm256_maddubs_epi16(_mm256_sign_epi8(wb, wb), _mm256_sign_epi8(a, wb));
                        s[j] = _mm256_add_epi32(s[j], _mm256_madd_epi16(p, ones));
                    }
                }
            }
            let dy = _mm256_loadu_ps((*dq.as_ptr().add(i)).as_ptr());
            for j in 0..R {
                let d = _mm256_mul_ps(_mm256_set1_ps(f16_ptr(wp[j].add(i * 34))), dy);
                acc[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s[j]), acc[j]);
            }
        }
        acc
    }
}

/// The geometry the 8-token tile kernels need: `rows` (at most 16) weight rows of
/// `row_bytes` (at least `need` bytes of blocks) in `w_len` bytes, eight activation rows of at
/// least `nb` blocks, a scale table of [`SCALE_ROWS`] entries per block, and an output that
/// holds eight token rows of `out_stride`.
#[allow(clippy::too_many_arguments)]
fn check_tile8(
    need: usize,
    rows: usize,
    row_bytes: usize,
    w_len: usize,
    nb: usize,
    act_lens: &[usize; 8],
    yd_len: usize,
    out_len: usize,
    out_stride: usize,
) {
    assert!(rows <= 16, "tile kernel: at most 16 rows");
    assert!(
        rows <= out_stride && out_len >= 7 * out_stride + rows,
        "tile kernel: output too short"
    );
    assert!(row_bytes >= need, "weight row shorter than the activations");
    assert!(
        w_len >= rows * row_bytes,
        "weight block shorter than its rows"
    );
    assert!(
        yd_len >= SCALE_ROWS * nb,
        "scale table shorter than the activations"
    );
    assert!(
        act_lens.iter().all(|&l| l >= nb),
        "activation rows of unequal length"
    );
}

/// The tile kernels' results: `sums[r]` holds row r's eight token results (lane n = token
/// n); written token-major, out[n * out_stride + r] for r < rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_token_major(sums: &[__m256; 16], rows: usize, out: &mut [f32], out_stride: usize) {
    let lo = transpose8(sums[..8].try_into().expect("8 registers"));
    let hi = transpose8(sums[8..].try_into().expect("8 registers"));
    for n in 0..8 {
        let o = &mut out[n * out_stride..n * out_stride + rows];
        if rows == 16 {
            storef8((&mut o[..8]).try_into().expect("8 floats"), lo[n]);
            storef8((&mut o[8..]).try_into().expect("8 floats"), hi[n]);
        } else {
            let mut t = [0f32; 16];
            storef8((&mut t[..8]).try_into().expect("8 floats"), lo[n]);
            storef8((&mut t[8..]).try_into().expect("8 floats"), hi[n]);
            o.copy_from_slice(&t[..rows]);
        }
    }
}

/// Eight [`hsum8`]s at once, bit for bit: lane n is `hsum8(v[n])`. The same adds in the same
/// order: halves, then (0 + 2, 1 + 3), then the last two, four registers' values at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8x8(v: [__m256; 8]) -> __m256 {
    // t[j]: high + low half of v[2j] (lanes 0-3) and of v[2j + 1] (lanes 4-7)
    let t: [__m256; 4] = std::array::from_fn(|j| {
        let (a, b) = (v[2 * j], v[2 * j + 1]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x31>(a, b),
            _mm256_permute2f128_ps::<0x20>(a, b),
        )
    });
    // u[k]: (h0 + h2, h1 + h3) of registers 4k, 4k + 2 (low 128 bits) and 4k + 1, 4k + 3
    let u: [__m256; 2] = std::array::from_fn(|k| {
        let (a, b) = (t[2 * k], t[2 * k + 1]);
        _mm256_add_ps(
            _mm256_shuffle_ps::<0x44>(a, b),
            _mm256_shuffle_ps::<0xEE>(a, b),
        )
    });
    // lanes: registers 0, 2, 4, 6 | 1, 3, 5, 7
    let r = _mm256_hadd_ps(u[0], u[1]);
    _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The 8 x 8 transpose: out[j] lane i = r[i] lane j.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|k| {
        let (a, b) = (r[2 * (k / 2)], r[2 * (k / 2) + 1]);
        if k % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // s[0..4] from rows 0-3, s[4..8] from rows 4-7: columns (0, 4), (1, 5), (2, 6), (3, 7)
    let s: [__m256; 8] = std::array::from_fn(|k| {
        let base = 4 * (k / 4);
        let (a, b) = match k % 4 {
            0 | 1 => (t[base], t[base + 2]),
            _ => (t[base + 1], t[base + 3]),
        };
        if k % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    std::array::from_fn(|j| {
        if j < 4 {
            _mm256_permute2f128_ps::<0x20>(s[j], s[j + 4])
        } else {
            _mm256_permute2f128_ps::<0x31>(s[j - 4], s[j])
        }
    })
}

/// The K types' version of [`tile_q8`]; `t` is 4, 5 or 6 (Q4_K, Q5_K, Q6_K).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn tile_k<const N: usize>(
    t: u8,
    w: &[u8],
    row_bytes: usize,
    ys: [&[BlockQ8K]; N],
    out: &mut [[f32; N]],
) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        *o = match t {
            4 => dot_q4k::<N>(row, ys),
            5 => dot_q5k::<N>(row, ys),
            _ => dot_q6k::<N>(row, ys),
        };
    }
}

/// Sums of the lanes of eight i32 registers: lane n is the sum of v[n]'s lanes (exact, so
/// any order will do).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32x8(v: [__m256i; 8]) -> __m256i {
    let t0 = _mm256_hadd_epi32(v[0], v[1]);
    let t1 = _mm256_hadd_epi32(v[2], v[3]);
    let t2 = _mm256_hadd_epi32(v[4], v[5]);
    let t3 = _mm256_hadd_epi32(v[6], v[7]);
    // lanes: registers 0-3 (low halves' sums) | 0-3 (high halves'), then 4-7
    let u0 = _mm256_hadd_epi32(t0, t1);
    let u1 = _mm256_hadd_epi32(t2, t3);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(u0, u1),
        _mm256_permute2x128_si256::<0x31>(u0, u1),
    )
}

/// [`tile_k`] for eight activation rows (`T` = 4, 5, 6): `rows` (at most 16) consecutive
/// weight rows, written token-major: out[n * out_stride + r] for r < rows. `yd` holds per
/// block i [`SCALE_ROWS`] registers made once per matmul: yd[9 i + n] is row n's block
/// scale in every lane and yd[9 i + 8] the eight rows' scales, so the per-token float
/// work of a block (scale products, the Q4_K / Q5_K min terms, Q4_K's horizontal integer
/// sums) is done for the eight tokens at once. Bit for bit what [`dot_q4k`], [`dot_q5k`]
/// and [`dot_q6k`] give.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn tile_k8<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    ys: [&[BlockQ8K]; 8],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    tile_k8_body::<T, false>(w, row_bytes, rows, ys, yd, out, out_stride)
}

/// [`tile_k8`] with VNNI (`k_sumi_vnni`); bit for bit the same.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 VNNI, VL and BW ([`vnni`]).
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
pub fn tile_k8_vnni<const T: u8>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    ys: [&[BlockQ8K]; 8],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    tile_k8_body::<T, true>(w, row_bytes, rows, ys, yd, out, out_stride)
}

/// The body of [`tile_k8`] and [`tile_k8_vnni`], inlined into each.
#[inline(always)]
fn tile_k8_body<const T: u8, const VNNI: bool>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    ys: [&[BlockQ8K]; 8],
    yd: &[[f32; 8]],
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(matches!(T, 4..=6), "tile_k8: unsupported weight type");
    let size = k_block_bytes(T);
    let nb = ys[0].len();
    let lens = ys.map(|y| y.len());
    check_tile8(
        nb * size,
        rows,
        row_bytes,
        w.len(),
        nb,
        &lens,
        yd.len(),
        out.len(),
        out_stride,
    );
    // SAFETY: the callers enable AVX2, FMA and F16C (and AVX-512 VNNI and VL in the only
    // instance that reaches k_sumi_vnni); the blocks and table entries read are inside the
    // slices checked above.
    unsafe {
        let mut sums = [_mm256_setzero_ps(); 16];
        for (r, sum) in sums.iter_mut().enumerate().take(rows) {
            let wr = &w[r * row_bytes..r * row_bytes + nb * size];
            // Q4_K: acc and accm, lane n for token n; Q5_K and Q6_K: 8 lanes per token in
            // lanes, plus (Q5_K) the min terms of all tokens in `mins`
            let mut acc8 = [_mm256_setzero_ps(); 8];
            let (mut acc, mut accm, mut mins) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            for (i, b) in wr.chunks_exact(size).enumerate() {
                prefetch_ahead(b, 3);
                let k = unpack_k::<T>(b);
                let tab = &yd[SCALE_ROWS * i..SCALE_ROWS * (i + 1)];
                let d8 = loadf8(&tab[8]);
                let dw = _mm256_set1_ps(k.dw);
                // Q4_K: each token's integer sums, reduced for all eight below; Q4_K and Q5_K:
                // each token's mins times sub-block sums
                let mut si = [_mm256_setzero_si256(); 8];
                let mut mi = [_mm256_setzero_si256(); 8];
                for n in 0..8 {
                    let y = &ys[n][i];
                    let sumi = if VNNI {
                        k_sumi_vnni::<T>(&k, y)
                    } else {
                        k_sumi::<T>(&k, y)
                    };
                    if T != 6 {
                        mi[n] = _mm256_madd_epi16(bsums(y), k.mins);
                    }
                    if T == 4 {
                        si[n] = sumi;
                    } else {
                        let d = _mm256_mul_ps(loadf8(&tab[n]), dw);
                        acc8[n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc8[n]);
                    }
                }
                if T == 4 {
                    let s8 = _mm256_cvtepi32_ps(hsum_i32x8(si));
                    let m8 = _mm256_cvtepi32_ps(hsum_i32x8(mi));
                    acc = _mm256_fmadd_ps(s8, _mm256_mul_ps(dw, d8), acc);
                    let dm = _mm256_mul_ps(_mm256_set1_ps(k.dminw), d8);
                    accm = _mm256_fmadd_ps(m8, dm, accm);
                } else if T == 5 {
                    // dmin = -y.d * dminw, then dmin * m added
                    let m8 = _mm256_cvtepi32_ps(hsum_i32x8(mi));
                    let neg = _mm256_xor_ps(d8, _mm256_set1_ps(-0.0));
                    let dmin = _mm256_mul_ps(neg, _mm256_set1_ps(k.dminw));
                    mins = _mm256_add_ps(mins, _mm256_mul_ps(dmin, m8));
                }
            }
            *sum = match T {
                4 => _mm256_sub_ps(acc, accm),
                5 => _mm256_add_ps(hsum8x8(acc8), mins),
                _ => hsum8x8(acc8),
            };
        }
        store_token_major(&sums, rows, out, out_stride);
    }
}

/// The f32 GEMM micro-kernel: C[6 x 16] (stride `ldc`) = A panel [kc][6] x B panel
/// [kc][16], or C += that product unless `store`. 12 accumulators; each element is summed
/// in k order with one FMA per step (as `gemm::micro_ref` does), then added to C once.
///
/// # Safety
/// `a` must point at 6 * kc readable floats, `b` at 16 * kc, and `c` at 6 rows (stride
/// `ldc`) of 16 writable floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn sgemm_6x16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for kk in 0..kc {
        // SAFETY: kk < kc, so the 16 floats at b + 16 kk and 6 at a + 6 kk are readable
        // (the caller's guarantee).
        unsafe {
            let bp = b.add(kk * 16);
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(128).cast());
            let ap = a.add(kk * 6);
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row i < 6 of C holds 16 writable floats at c + i * ldc.
        unsafe {
            let p = c.add(i * ldc);
            let (v0, v1) = if store {
                (acc[0], acc[1])
            } else {
                (
                    _mm256_add_ps(_mm256_loadu_ps(p), acc[0]),
                    _mm256_add_ps(_mm256_loadu_ps(p.add(8)), acc[1]),
                )
            };
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
        }
    }
}

/// [`sgemm_6x16`] down a strip: `panels` packed A panels (each [kc][6], one after another)
/// against one B panel, into `panels` 6 x 16 tiles of C one under the other. One call per
/// strip keeps the call and stack set-up out of every tile.
///
/// # Safety
/// `a` must point at panels * 6 * kc readable floats, `b` at 16 * kc, and `c` at 6 * panels
/// rows (stride `ldc`) of 16 writable floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn sgemm_6x16_strip(
    kc: usize,
    a: *const f32,
    panels: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: bool,
) {
    for p in 0..panels {
        // SAFETY: panel p < panels lies inside A, its tile's 6 rows inside C (the
        // caller's guarantee).
        unsafe { sgemm_6x16(kc, a.add(p * 6 * kc), b, c.add(p * 6 * ldc), ldc, store) };
    }
}

/// Six rows side by side: dst[kk * 6 + i] = rows[i][kk] for kk < dst.len() / 6 (the GEMM's
/// A panel). Eight steps at a time through 4 x 4 transposes of the first four rows and
/// pairs of the last two, then the rest one by one.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn pack6_rows(rows: [&[f32]; 6], dst: &mut [f32]) {
    let kc = dst.len() / 6;
    for r in &rows {
        assert!(r.len() >= kc, "pack6_rows: a row shorter than the panel");
    }
    let mut kk = 0;
    while kk + 8 <= kc {
        let r: [__m256; 6] =
            std::array::from_fn(|i| loadf8(rows[i][kk..kk + 8].try_into().expect("8 floats")));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        // c[j] = rows 0-3 of step j (low half) and of step j + 4 (high half)
        let c = [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ];
        // rows 4-5: steps 0, 1, 4, 5 in p[0], steps 2, 3, 6, 7 in p[1]
        let p = [
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
        ];
        let out = &mut dst[kk * 6..kk * 6 + 48];
        for j in 0..4 {
            let lo = _mm256_castps256_ps128(c[j]);
            let hi = _mm256_extractf128_ps::<1>(c[j]);
            let pair = p[j / 2];
            let (plo, phi) = (
                _mm256_castps256_ps128(pair),
                _mm256_extractf128_ps::<1>(pair),
            );
            // the pair of step j sits in the low (even j) or high (odd j) 64 bits
            let (pj, pj4) = if j % 2 == 0 {
                (plo, phi)
            } else {
                (_mm_movehl_ps(plo, plo), _mm_movehl_ps(phi, phi))
            };
            let s = &mut out[6 * j..6 * j + 6];
            // SAFETY: s and s4 are 6 floats each inside `out`; the unaligned 16-byte store
            // writes the first 4, the 8-byte store the last 2.
            unsafe {
                _mm_storeu_ps(s.as_mut_ptr(), lo);
                _mm_storel_pd(s.as_mut_ptr().add(4).cast(), _mm_castps_pd(pj));
            }
            let s4 = &mut out[6 * (j + 4)..6 * (j + 4) + 6];
            // SAFETY: as above.
            unsafe {
                _mm_storeu_ps(s4.as_mut_ptr(), hi);
                _mm_storel_pd(s4.as_mut_ptr().add(4).cast(), _mm_castps_pd(pj4));
            }
        }
        kk += 8;
    }
    for k in kk..kc {
        for i in 0..6 {
            dst[k * 6 + i] = rows[i][k];
        }
    }
}

/// Sixteen columns side by side: dst[kk * 16 + j] = cols[j][kk] for kk < dst.len() / 16
/// (the GEMM's B panel when B's columns lie along memory, as a weight read transposed or
/// the keys of attention do). Eight steps at a time through two 8 x 8 transposes, then
/// the rest one by one.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn pack16_cols(cols: [&[f32]; 16], dst: &mut [f32]) {
    let kc = dst.len() / 16;
    for c in &cols {
        assert!(
            c.len() >= kc,
            "pack16_cols: a column shorter than the panel"
        );
    }
    let mut kk = 0;
    while kk + 8 <= kc {
        for half in 0..2 {
            let r: [__m256; 8] = std::array::from_fn(|i| {
                loadf8(cols[half * 8 + i][kk..kk + 8].try_into().expect("8 floats"))
            });
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (
                    r[i / 4 * 4 + (i % 4) / 2 * 2],
                    r[i / 4 * 4 + (i % 4) / 2 * 2 + 1],
                );
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            // t[2p] = unpacklo(r[2p], r[2p + 1]), t[2p + 1] = unpackhi(...); then u[4q..4q + 4]
            // hold rows 4q..4q + 4 of steps (0, 4), (2, 6), (1, 5), (3, 7) in their low and
            // high halves
            let u: [__m256; 8] = std::array::from_fn(|i| {
                let (q, j) = (i / 4, i % 4);
                let (a, b) = (t[4 * q + j % 2], t[4 * q + 2 + j % 2]);
                if j / 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm256_shuffle_ps::<0xEE>(a, b)
                }
            });
            // step j (< 4) of all 8 rows: the low halves of u[o] and u[4 + o], step j + 4
            // their high halves, o = where step j landed
            let order = [0usize, 2, 1, 3];
            for (j, &o) in order.iter().enumerate() {
                let lo = _mm256_permute2f128_ps::<0x20>(u[o], u[4 + o]);
                let hi = _mm256_permute2f128_ps::<0x31>(u[o], u[4 + o]);
                let at = (kk + j) * 16 + half * 8;
                let at4 = (kk + j + 4) * 16 + half * 8;
                storef8((&mut dst[at..at + 8]).try_into().expect("8 floats"), lo);
                storef8((&mut dst[at4..at4 + 8]).try_into().expect("8 floats"), hi);
            }
        }
        kk += 8;
    }
    for k in kk..kc {
        for j in 0..16 {
            dst[k * 16 + j] = cols[j][k];
        }
    }
}

/// See [`crate::q8::geglu_f16_into`]; `table` is the GELU of every f16 value by its bits.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn geglu_table_lanes(g: &mut [f32], u: &[f32], table: &[f32]) {
    assert!(
        table.len() > u16::MAX as usize,
        "geglu_table_lanes: table too short"
    );
    let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
    let n = g.len().min(u.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = loadf8(g[i..i + 8].try_into().expect("8 floats"));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        let mut bits = [0u16; 8];
        // SAFETY: `bits` holds 16 writable bytes; the store is unaligned.
        unsafe { _mm_storeu_si128(bits.as_mut_ptr().cast(), h) };
        let looked: [f32; 8] = std::array::from_fn(|j| table[bits[j] as usize]);
        let r = loadf8(&looked);
        // x >= 10: x itself; x <= -10: 0
        let r = _mm256_blendv_ps(r, v, _mm256_cmp_ps::<_CMP_GE_OQ>(v, hi));
        let r = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, lo), r);
        let b = loadf8(u[i..i + 8].try_into().expect("8 floats"));
        storef8(
            (&mut g[i..i + 8]).try_into().expect("8 floats"),
            _mm256_mul_ps(r, b),
        );
        i += 8;
    }
    for j in i..n {
        g[j] = crate::q8::gelu_f16_table(g[j]) * u[j];
    }
}

/// See [`crate::q8::swiglu_into`].
#[target_feature(enable = "avx2,fma,f16c")]
pub fn swiglu_lanes(g: &mut [f32], u: &[f32]) {
    let one = _mm256_set1_ps(1.0);
    let neg = _mm256_set1_ps(-0.0);
    let n = g.len().min(u.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = loadf8(g[i..i + 8].try_into().expect("8 floats"));
        let e = exp8(_mm256_xor_ps(v, neg));
        let s = _mm256_div_ps(v, _mm256_add_ps(one, e));
        let b = loadf8(u[i..i + 8].try_into().expect("8 floats"));
        storef8(
            (&mut g[i..i + 8]).try_into().expect("8 floats"),
            _mm256_mul_ps(s, b),
        );
        i += 8;
    }
    for j in i..n {
        g[j] = g[j] / (1.0 + crate::q8::exp_poly(-g[j])) * u[j];
    }
}

/// See [`crate::q8::sigmoid_into`].
#[target_feature(enable = "avx2,fma,f16c")]
pub fn sigmoid_lanes(x: &[f32], out: &mut [f32]) {
    let one = _mm256_set1_ps(1.0);
    let neg = _mm256_set1_ps(-0.0);
    let n = x.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = loadf8(x[i..i + 8].try_into().expect("8 floats"));
        let e = exp8(_mm256_xor_ps(v, neg));
        let s = _mm256_div_ps(one, _mm256_add_ps(one, e));
        storef8((&mut out[i..i + 8]).try_into().expect("8 floats"), s);
        i += 8;
    }
    for j in i..n {
        out[j] = 1.0 / (1.0 + crate::q8::exp_poly(-x[j]));
    }
}
