//! Quantized activations: each activation row is quantized once per matmul to the 8-bit
//! block format that pairs with the weight type (Q8_0, Q8_1 or Q8_K, as GGML pairs them), and
//! weight blocks are dotted with it in integer arithmetic with one float scale per block.
//! This reproduces what llama.cpp computes on x86 (its AVX2 quantizer: scale 127/amax,
//! round half to even), so greedy decoding can match it token for token. These are the scalar
//! references; SIMD versions must agree with them.

// block kernels index several arrays in step; explicit indices read like the format spec
#![allow(clippy::needless_range_loop)]

use crate::DType;
use crate::quant::k_scale_min;
use half::{bf16, f16};

/// How activations meet quantized weights in a matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ActMode {
    /// Dequantize weights, keep activations f32 (matches a float reference).
    F32,
    /// Quantize activations to 8 bits per block like llama.cpp; f16 attention operands.
    /// The default: fast, and the same tokens as llama.cpp.
    #[default]
    Q8,
}

/// Rounds to the nearest f16 value (llama.cpp's f16 KV cache and attention operands).
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Rounds every value to the nearest f16 (F16C instructions where the CPU has them).
pub fn round_f16_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::round_f16_slice(v) };
    }
    v.iter_mut().for_each(|x| *x = round_f16(*x));
}

/// `dst[i]` = the f16 bits of `src[i]` rounded to nearest, ties to even (F16C where the CPU
/// has it): the f16 KV cache of [`ActMode::Q8`].
pub fn f16_bits_from_f32(src: &[f32], dst: &mut [u16]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    assert_eq!(src.len(), dst.len(), "f16_bits_from_f32: lengths differ");
    dst.reinterpret_cast_mut::<f16>()
        .convert_from_f32_slice(src);
}

/// `dst[i]` = the f16 whose bits are `src[i]`, as f32 (exact).
pub fn f32_from_f16_bits(src: &[u16], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    assert_eq!(src.len(), dst.len(), "f32_from_f16_bits: lengths differ");
    src.reinterpret_cast::<f16>().convert_to_f32_slice(dst);
}

/// GELU as llama.cpp's CPU backend computes it: looked up by the f16 value of the input in
/// a table of f16 results (inputs beyond +-10 short-cut).
#[inline]
pub fn gelu_f16_table(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize]
    }
}

/// GeGLU's product in q8 mode: g[i] = [`gelu_f16_table`](g[i]) * u[i], 8 lanes at a time
/// where AVX2 is there (the f16 conversion by F16C, the same rounding).
pub fn geglu_f16_into(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "geglu_f16_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::geglu_table_lanes(g, u, gelu_table()) };
    }
    geglu_f16_ref(g, u)
}

/// Scalar reference of [`geglu_f16_into`].
pub fn geglu_f16_ref(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = gelu_f16_table(*a) * b;
    }
}

/// GELU of every f16 value, rounded to f16, indexed by the f16's bits (built once).
fn gelu_table() -> &'static [f32] {
    use std::sync::OnceLock;
    static T: OnceLock<Vec<f32>> = OnceLock::new();
    T.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| round_f16(crate::ops::gelu_tanh(f16::from_bits(b).to_f32())))
            .collect()
    })
}

/// Rounds to the nearest integer, ties to even, for |x| < 2^22 (every quantizer input here
/// is within +-128): adding 1.5 * 2^23 makes the float unit round away the fraction.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// A Q8_0 / Q8_1 block of 32: scale `d` (already rounded to f16), `s = d * sum(qs)` (f16,
/// Q8_1 only), values.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// The 32 values of one Q8 block, 32-byte aligned: the prompt tiles' copy of the
/// activations (see [`tile_qs`]).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Q32(pub [i8; 32]);

impl Q32 {
    pub const ZERO: Q32 = Q32([0; 32]);
}

/// Eight rows of Q8 blocks interleaved by block for the 8-token tile kernels (the values
/// only; their scales are in the tile's scale table): `out[i * 8 + n] = ys[n][i].qs` for
/// i < out.len() / 8. A block's eight loads are then 256 aligned, contiguous bytes; read
/// from the 40-byte blocks themselves, 3 of every 8 crossed a cache line.
pub fn tile_qs(ys: [&[BlockQ8]; 8], out: &mut [Q32]) {
    for (i, blk) in out.chunks_exact_mut(8).enumerate() {
        for (n, o) in blk.iter_mut().enumerate() {
            *o = Q32(ys[n][i].qs);
        }
    }
}

/// Eight rows of Q8 blocks with the rows side by side for the Q8_0 lane kernel
/// (`avx2::tiles_q8_0_lanes`; the values only, the kernel takes the scales in a table of
/// its own): for block i, `out[8 i + j]` holds bytes 4j..4j+4 of each row's block i, row n
/// at bytes 4n..4n+4; for i < out.len() / 8.
pub fn tile_ql(ys: [&[BlockQ8]; 8], out: &mut [Q32]) {
    for (i, blk) in out.chunks_exact_mut(8).enumerate() {
        for (j, o) in blk.iter_mut().enumerate() {
            for (n, y) in ys.iter().enumerate() {
                o.0[4 * n..4 * n + 4].copy_from_slice(&y[i].qs[4 * j..4 * j + 4]);
            }
        }
    }
}

/// The VNNI lane kernel's start values (`avx2::tiles_q8_0_lanes_vnni`) for eight rows of
/// Q8 blocks: `out[i][n]` = -128 times the sum of row n's block i values, for
/// i < out.len(). The kernel adds (w + 128) a for each weight byte w; starting from these
/// leaves exactly the sum of w a.
pub fn lane_corrections(ys: [&[BlockQ8]; 8], out: &mut [[i32; 8]]) {
    for (i, o) in out.iter_mut().enumerate() {
        for (n, y) in ys.iter().enumerate() {
            o[n] = -128 * y[i].qs.iter().map(|&q| q as i32).sum::<i32>();
        }
    }
}

/// Q5_0's start values for the VNNI tile kernel (`avx2::tile_q8x8_vnni`), laid out as
/// [`tile_qs`] lays out the values: `out[8 i + n][l]` = -16 times the sum of bytes
/// 4l..4l+4 of row n's block i. The kernel adds (x + 16) a for each weight value x;
/// starting from these leaves exactly the lane sums of x a.
pub fn tile_q5_corrections(ys: [&[BlockQ8]; 8], out: &mut [[i32; 8]]) {
    for (i, blk) in out.chunks_exact_mut(8).enumerate() {
        for (n, o) in blk.iter_mut().enumerate() {
            for (l, c) in o.iter_mut().enumerate() {
                *c = -16
                    * ys[n][i].qs[4 * l..4 * l + 4]
                        .iter()
                        .map(|&q| q as i32)
                        .sum::<i32>();
            }
        }
    }
}

impl BlockQ8 {
    pub const ZERO: BlockQ8 = BlockQ8 {
        d: 0.0,
        s: 0.0,
        qs: [0; 32],
    };
}

/// A Q8_K block of 256: f32 scale, values, and the sums of each group of 16 values.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl BlockQ8K {
    pub const ZERO: BlockQ8K = BlockQ8K {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
    };
}

/// One activation row in the format its weight type needs.
pub enum QuantRow {
    Q8(Vec<BlockQ8>),
    Q8K(Vec<BlockQ8K>),
    /// Values rounded to f16 (F16 weights) or bf16 (BF16 weights), or plain f32.
    Float(Vec<f32>),
}

/// A borrowed activation row in the format its weight type pairs with.
#[derive(Clone, Copy)]
pub enum ActRow<'a> {
    Q8(&'a [BlockQ8]),
    Q8K(&'a [BlockQ8K]),
    Float(&'a [f32]),
}

impl QuantRow {
    pub fn as_row(&self) -> ActRow<'_> {
        match self {
            QuantRow::Q8(v) => ActRow::Q8(v),
            QuantRow::Q8K(v) => ActRow::Q8K(v),
            QuantRow::Float(v) => ActRow::Float(v),
        }
    }
}

/// Q8_0/Q8_1 quantization of one row (length a multiple of 32).
pub fn quantize_q8(x: &[f32]) -> Vec<BlockQ8> {
    let mut out = vec![BlockQ8::ZERO; x.len() / 32];
    quantize_q8_into(x, &mut out);
    out
}

/// [`quantize_q8`] into a buffer of `x.len() / 32` blocks, on the fastest kernel.
pub fn quantize_q8_into(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::quantize_q8_into(x, out) };
    }
    quantize_q8_ref(x, out)
}

/// The scalar Q8 quantizer, reference for the fast one.
pub fn quantize_q8_ref(x: &[f32], out: &mut [BlockQ8]) {
    for (o, b) in out.iter_mut().zip(quantize_q8_blocks(x)) {
        *o = b;
    }
}

fn quantize_q8_blocks(x: &[f32]) -> impl Iterator<Item = BlockQ8> + '_ {
    x.chunks_exact(32).map(|c| {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(c) {
            *q = nearest_int(v * id) as i8;
            sum += *q as i32;
        }
        BlockQ8 {
            d: round_f16(d),
            s: round_f16(d * sum as f32),
            qs,
        }
    })
}

/// Q8_K quantization of one row (length a multiple of 256): the scale comes from the value
/// of largest magnitude, keeping its sign, as GGML's reference does.
pub fn quantize_q8k(x: &[f32]) -> Vec<BlockQ8K> {
    let mut out = vec![BlockQ8K::ZERO; x.len() / 256];
    quantize_q8k_into(x, &mut out);
    out
}

/// [`quantize_q8k`] into a buffer of `x.len() / 256` blocks, on the fastest kernel.
pub fn quantize_q8k_into(x: &[f32], out: &mut [BlockQ8K]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::quantize_q8k_into(x, out) };
    }
    quantize_q8k_ref(x, out)
}

/// The scalar Q8_K quantizer, reference for the fast one.
pub fn quantize_q8k_ref(x: &[f32], out: &mut [BlockQ8K]) {
    for (c, b) in x.chunks_exact(256).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in c {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        *b = BlockQ8K::ZERO;
        if amax == 0.0 {
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(c) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// Quantizes an activation row for weights of type `t`.
pub fn quantize_for(t: DType, x: &[f32]) -> QuantRow {
    match t {
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => {
            QuantRow::Q8(quantize_q8(x))
        }
        DType::Q4K | DType::Q5K | DType::Q6K => QuantRow::Q8K(quantize_q8k(x)),
        DType::F16 => QuantRow::Float(x.iter().map(|&v| round_f16(v)).collect()),
        DType::BF16 => QuantRow::Float(x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()),
        _ => QuantRow::Float(x.to_vec()),
    }
}

/// Dot product of one weight row (`w`, type `t`) with a quantized activation row: the
/// scalar reference every fast kernel is tested against.
pub fn vec_dot(t: DType, w: &[u8], a: &QuantRow) -> f32 {
    vec_dot_ref(t, w, a.as_row())
}

/// Dots of one weight row with N activation rows, on the fastest kernels this CPU has
/// (bit-identical to [`vec_dot`] for each row).
pub fn vec_dot_n<const N: usize>(t: DType, w: &[u8], a: [ActRow; N]) -> [f32; N] {
    vec_dot_rn::<1, N>(t, [w], a)[0]
}

/// Dots of R weight rows with N activation rows: out[r][n]. R > 1 only speeds up the
/// 32-value block types; others loop over the rows.
pub fn vec_dot_rn<const R: usize, const N: usize>(
    t: DType,
    w: [&[u8]; R],
    a: [ActRow; N],
) -> [[f32; N]; R] {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        use crate::avx2 as k;
        let q8 = || q8_rows(t, &a);
        let q8k = || q8k_rows(t, &a);
        // SAFETY (each call below): the CPU reported AVX2, FMA and F16C, all these kernels
        // enable; row geometry was checked when the weight was made.
        match t {
            DType::Q4_0 => return unsafe { k::dot_q8::<{ k::Q4_0 }, R, N>(w, q8()) },
            DType::Q4_1 => return unsafe { k::dot_q8::<{ k::Q4_1 }, R, N>(w, q8()) },
            DType::Q5_0 => return unsafe { k::dot_q8::<{ k::Q5_0 }, R, N>(w, q8()) },
            DType::Q5_1 => return unsafe { k::dot_q8::<{ k::Q5_1 }, R, N>(w, q8()) },
            DType::Q8_0 => return unsafe { k::dot_q8::<{ k::Q8_0 }, R, N>(w, q8()) },
            DType::Q4K => return w.map(|w| unsafe { k::dot_q4k::<N>(w, q8k()) }),
            DType::Q5K => return w.map(|w| unsafe { k::dot_q5k::<N>(w, q8k()) }),
            DType::Q6K => return w.map(|w| unsafe { k::dot_q6k::<N>(w, q8k()) }),
            DType::F16 => {
                return w.map(|w| {
                    std::array::from_fn(|n| match a[n] {
                        ActRow::Float(x) => unsafe { k::dot_f16_row(w, x) },
                        _ => panic!("activation format does not pair with weight type {t}"),
                    })
                });
            }
            _ => {}
        }
    }
    w.map(|w| std::array::from_fn(|n| vec_dot_ref(t, w, a[n])))
}

/// Dots of `out.len()` consecutive weight rows (`row_bytes` each, from `w`) with one
/// activation row, in pairs of rows where `pairs` (see `avx2::rows_q8`); each exactly as
/// [`vec_dot`] computes it.
pub fn vec_dot_rows(t: DType, w: &[u8], row_bytes: usize, a: ActRow, out: &mut [f32], pairs: bool) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        use crate::avx2 as k;
        let (rb, p) = (row_bytes, pairs);
        // SAFETY (each call below): the CPU reported AVX2, FMA and F16C, all these kernels
        // enable, and the `_vnni` ones only where vnni() reported AVX-512 VNNI, VL and BW
        // too; row geometry was checked when the weight was made.
        unsafe {
            match (t, a) {
                (DType::Q4_0, ActRow::Q8(y)) => return k::rows_q8::<{ k::Q4_0 }>(w, rb, y, out, p),
                (DType::Q4_1, ActRow::Q8(y)) if k::vnni() => {
                    return k::rows_q8_vnni::<{ k::Q4_1 }>(w, rb, y, out, p);
                }
                (DType::Q5_1, ActRow::Q8(y)) if k::vnni() => {
                    return k::rows_q8_vnni::<{ k::Q5_1 }>(w, rb, y, out, p);
                }
                (DType::Q4_1, ActRow::Q8(y)) => return k::rows_q8::<{ k::Q4_1 }>(w, rb, y, out, p),
                (DType::Q5_0, ActRow::Q8(y)) => return k::rows_q8::<{ k::Q5_0 }>(w, rb, y, out, p),
                (DType::Q5_1, ActRow::Q8(y)) => return k::rows_q8::<{ k::Q5_1 }>(w, rb, y, out, p),
                (DType::Q8_0, ActRow::Q8(y)) => return k::rows_q8::<{ k::Q8_0 }>(w, rb, y, out, p),
                (DType::Q4K, ActRow::Q8K(y)) => return k::rows_k::<4>(w, rb, y, out),
                (DType::Q5K, ActRow::Q8K(y)) => return k::rows_k::<5>(w, rb, y, out),
                (DType::Q6K, ActRow::Q8K(y)) => return k::rows_k::<6>(w, rb, y, out),
                _ => {}
            }
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = vec_dot_n(t, &w[r * row_bytes..(r + 1) * row_bytes], [a])[0];
    }
}

/// Dots of `out.len()` consecutive weight rows (`row_bytes` each, from `w`) with N
/// activation rows: out[r][n], each exactly as [`vec_dot`] computes it.
pub fn vec_dot_tile<const N: usize>(
    t: DType,
    w: &[u8],
    row_bytes: usize,
    a: [ActRow; N],
    out: &mut [[f32; N]],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        use crate::avx2 as k;
        let q8 = || q8_rows(t, &a);
        let q8k = || q8k_rows(t, &a);
        // SAFETY (each call below): the CPU reported AVX2, FMA and F16C, all these kernels
        // enable; row geometry was checked when the weight was made.
        unsafe {
            match t {
                DType::Q4_0 => return k::tile_q8::<{ k::Q4_0 }, N>(w, row_bytes, q8(), out),
                DType::Q4_1 => return k::tile_q8::<{ k::Q4_1 }, N>(w, row_bytes, q8(), out),
                DType::Q5_0 => return k::tile_q8::<{ k::Q5_0 }, N>(w, row_bytes, q8(), out),
                DType::Q5_1 => return k::tile_q8::<{ k::Q5_1 }, N>(w, row_bytes, q8(), out),
                DType::Q8_0 => return k::tile_q8::<{ k::Q8_0 }, N>(w, row_bytes, q8(), out),
                DType::Q4K => return k::tile_k::<N>(4, w, row_bytes, q8k(), out),
                DType::Q5K => return k::tile_k::<N>(5, w, row_bytes, q8k(), out),
                DType::Q6K => return k::tile_k::<N>(6, w, row_bytes, q8k(), out),
                _ => {}
            }
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = vec_dot_n(t, &w[r * row_bytes..(r + 1) * row_bytes], a);
    }
}

/// The Q8 blocks of each activation row (they must be Q8: the weight type decides).
fn q8_rows<'a, const N: usize>(t: DType, a: &[ActRow<'a>; N]) -> [&'a [BlockQ8]; N] {
    std::array::from_fn(|n| match a[n] {
        ActRow::Q8(y) => y,
        _ => panic!("activation format does not pair with weight type {t}"),
    })
}

/// The Q8_K blocks of each activation row.
fn q8k_rows<'a, const N: usize>(t: DType, a: &[ActRow<'a>; N]) -> [&'a [BlockQ8K]; N] {
    std::array::from_fn(|n| match a[n] {
        ActRow::Q8K(y) => y,
        _ => panic!("activation format does not pair with weight type {t}"),
    })
}

fn vec_dot_ref(t: DType, w: &[u8], a: ActRow) -> f32 {
    match (t, a) {
        // llama.cpp repacks Q4_0 on AVX2 machines: one integer sum per block, one fused
        // multiply-add per block into a single accumulator
        (DType::Q4_0, ActRow::Q8(y)) => dot_q8_blocks(w, 18, y, |b, j| {
            let q = b[2 + j % 16];
            (if j < 16 { q & 0x0f } else { q >> 4 }) as i32 - 8
        }),
        // Q8_0 the same way (llama.cpp sums lanes of 4 products): a block's integer sum is
        // exact, so the prompt kernel can put eight tokens in one register's lanes
        // (`avx2::tiles_q8_0_lanes`), a quarter of the float work of eight lane sums
        (DType::Q8_0, ActRow::Q8(y)) => dot_q8_blocks(w, 34, y, |b, j| (b[2 + j] as i8) as i32),
        (DType::Q4_1, ActRow::Q8(y)) => dot_q8_lanes(w, 20, y, |b, q| {
            for j in 0..16 {
                q[j] = (b[4 + j] & 0x0f) as i32;
                q[j + 16] = (b[4 + j] >> 4) as i32;
            }
            (f16_at(b, 0), Some(f16_at(b, 2)))
        }),
        (DType::Q5_0, ActRow::Q8(y)) => dot_q8_lanes(w, 22, y, |b, q| {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                q[j] = ((b[6 + j] & 0x0f) as u32 | (((qh >> j) & 1) << 4)) as i32 - 16;
                q[j + 16] = ((b[6 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32 - 16;
            }
            (f16_at(b, 0), None)
        }),
        (DType::Q5_1, ActRow::Q8(y)) => dot_q8_lanes(w, 24, y, |b, q| {
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..16 {
                q[j] = ((b[8 + j] & 0x0f) as u32 | (((qh >> j) & 1) << 4)) as i32;
                q[j + 16] = ((b[8 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32;
            }
            (f16_at(b, 0), Some(f16_at(b, 2)))
        }),
        (DType::Q4K, ActRow::Q8K(y)) => dot_q4k_serial(w, y),
        (DType::Q5K, ActRow::Q8K(y)) => dot_q5k_lanes(w, y),
        (DType::Q6K, ActRow::Q8K(y)) => dot_q6k_lanes(w, y),
        (DType::F16, ActRow::Float(x)) => {
            let mut row = vec![0f32; x.len()];
            crate::quant::dequantize_row(t, w, &mut row).expect("row geometry checked by Weight");
            dot_f16_lanes(&row, x)
        }
        (_, ActRow::Float(x)) => {
            let mut row = vec![0f32; x.len()];
            crate::quant::dequantize_row(t, w, &mut row).expect("row geometry checked by Weight");
            crate::ops::dot_f32(&row, x)
        }
        _ => panic!("activation format does not pair with weight type {t}"),
    }
}

/// Q4_K with Q8_K activations as llama.cpp computes it on AVX2 machines, where it repacks
/// Q4_K rows in groups of 8: per super-block one integer sum of scale * dot over the 8
/// sub-blocks and one of min * activation sums, each added to its own accumulator with a
/// fused multiply-add (scale d_w * d_x, dmin_w * d_x); the result is their difference.
fn dot_q4k_serial(w: &[u8], y: &[BlockQ8K]) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (b, y) in w.chunks_exact(144).zip(y) {
        let (dw, dminw, scales, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
        let (mut sumi, mut msum) = (0i32, 0i32);
        for k in 0..8 {
            let (sc, m) = k_scale_min(k, scales);
            let (chunk, shift) = (&qs[32 * (k / 2)..32 * (k / 2) + 32], 4 * (k % 2));
            let mut s = 0i32;
            for i in 0..32 {
                s += ((chunk[i] >> shift) & 0x0f) as i32 * y.qs[32 * k + i] as i32;
            }
            sumi += sc as i32 * s;
            msum += m as i32 * (y.bsums[2 * k] as i32 + y.bsums[2 * k + 1] as i32);
        }
        acc = (sumi as f32).mul_add(dw * y.d, acc);
        accm = (msum as f32).mul_add(dminw * y.d, accm);
    }
    acc - accm
}

/// Q5_K with Q8_K activations in llama.cpp's AVX2 lane order: per super-block, lane m holds
/// sum over the 8 sub-blocks of scale * (integer dot of values 4m..4m+3 of that
/// sub-block), scaled by d_x * d_w with a fused multiply-add; the min terms are summed into
/// one scalar, added after the lanes are reduced.
fn dot_q5k_lanes(w: &[u8], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (b, y) in w.chunks_exact(176).zip(y) {
        let (dw, dminw, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        let d = y.d * dw;
        let dmin = -y.d * dminw;
        let mut lanes = [0i32; 8];
        let mut mtotal = 0i32;
        for k in 0..8 {
            let (sc, m) = k_scale_min(k, scales);
            mtotal += m as i32 * (y.bsums[2 * k] as i32 + y.bsums[2 * k + 1] as i32);
            let (chunk, shift) = (&qs[32 * (k / 2)..32 * (k / 2) + 32], 4 * (k % 2));
            for (m, lane) in lanes.iter_mut().enumerate() {
                let mut s = 0i32;
                for i in 4 * m..4 * m + 4 {
                    let q = ((chunk[i] >> shift) & 0x0f) | (((qh[i] >> k) & 1) << 4);
                    s += q as i32 * y.qs[32 * k + i] as i32;
                }
                *lane += sc as i32 * s;
            }
        }
        for m in 0..8 {
            acc[m] = d.mul_add(lanes[m] as f32, acc[m]);
        }
        summs += dmin * mtotal as f32;
    }
    hsum8(&acc) + summs
}

/// Q6_K with Q8_K activations in llama.cpp's AVX2 lane order: values are taken unsigned
/// (0..63); lane m holds sum over the 8 chunks of 32 of scale * (dot of values 4m..4m+3 of
/// the chunk), minus 32 * (bsum[2m] * sc[2m] + bsum[2m+1] * sc[2m+1]) for the offset.
fn dot_q6k_lanes(w: &[u8], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (b, y) in w.chunks_exact(210).zip(y) {
        let (ql, qh, sc, dw) = (&b[0..128], &b[128..192], &b[192..208], f16_at(b, 208));
        let d = y.d * dw;
        let sc = |i: usize| (sc[i] as i8) as i32;
        let mut lanes = [0i32; 8];
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            for r in 0..4 {
                for (m, lane) in lanes.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for l in 4 * m..4 * m + 4 {
                        let lo = if r % 2 == 0 { ql[l] } else { ql[l + 32] };
                        let lo = if r < 2 { lo & 0x0f } else { lo >> 4 };
                        let q = lo | (((qh[l] >> (2 * r)) & 3) << 4);
                        s += q as i32 * y.qs[128 * half + 32 * r + l] as i32;
                    }
                    // bytes 0..15 of a chunk use one scale, 16..31 the next
                    *lane += sc(8 * half + 2 * r + m / 4) * s;
                }
            }
        }
        for (m, lane) in lanes.iter().enumerate() {
            let off = y.bsums[2 * m] as i32 * sc(2 * m) + y.bsums[2 * m + 1] as i32 * sc(2 * m + 1);
            acc[m] = d.mul_add((lane - 32 * off) as f32, acc[m]);
        }
    }
    hsum8(&acc)
}

/// Sum of 8 float lanes in the order x86 code reduces a 256-bit register: halves first
/// (i + i+4), then (0+2, 1+3), then the last two.
#[inline]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Dot of a row of 32-value weight blocks with Q8_0/Q8_1 activations, summed in the order
/// llama.cpp's AVX2 kernels use: per block, lane m holds the integer sum of products
/// 4m..4m+3, scaled by d_w * d_x and accumulated with a fused multiply-add; the lanes are
/// reduced with [`hsum8`]; the min terms (Q4_1, Q5_1: m_w * s_x) are summed apart and added
/// last. `unpack` writes a block's 32 integer values and returns (d_w, m_w).
#[inline(always)]
fn dot_q8_lanes_body(
    w: &[u8],
    size: usize,
    y: &[BlockQ8],
    unpack: impl Fn(&[u8], &mut [i32; 32]) -> (f32, Option<f32>),
) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    let mut q = [0i32; 32];
    for (b, y) in w.chunks_exact(size).zip(y) {
        let (dw, mw) = unpack(b, &mut q);
        let d = dw * y.d;
        let mut prod = [0i32; 32];
        for k in 0..32 {
            prod[k] = q[k] * y.qs[k] as i32;
        }
        for (m, a) in acc.iter_mut().enumerate() {
            let s = (prod[4 * m] + prod[4 * m + 1]) + (prod[4 * m + 2] + prod[4 * m + 3]);
            *a = d.mul_add(s as f32, *a);
        }
        if let Some(mw) = mw {
            summs += mw * y.s;
        }
    }
    hsum8(&acc) + summs
}

/// Whether the CPU has fused multiply-add (checked once). Without it `mul_add` is a
/// correctly rounded software routine: same results, much slower.
#[inline]
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static FMA: OnceLock<bool> = OnceLock::new();
        *FMA.get_or_init(|| std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn dot_q8_lanes_fma(
    w: &[u8],
    size: usize,
    y: &[BlockQ8],
    unpack: impl Fn(&[u8], &mut [i32; 32]) -> (f32, Option<f32>),
) -> f32 {
    dot_q8_lanes_body(w, size, y, unpack)
}

/// The signed 32-value block types (Q4_0, Q8_0) against Q8 activations: per block the
/// exact integer sum of the 32 products (`q(b, j)` is the block's value j), then one fused
/// multiply-add of it and the f32 scale product into a single accumulator, block after
/// block.
fn dot_q8_blocks(w: &[u8], size: usize, y: &[BlockQ8], q: impl Fn(&[u8], usize) -> i32) -> f32 {
    let mut acc = 0f32;
    for (b, y) in w.chunks_exact(size).zip(y) {
        let s: i32 = (0..32).map(|j| q(b, j) * y.qs[j] as i32).sum();
        acc = (s as f32).mul_add(f16_at(b, 0) * y.d, acc);
    }
    acc
}

#[inline]
fn dot_q8_lanes(
    w: &[u8],
    size: usize,
    y: &[BlockQ8],
    unpack: impl Fn(&[u8], &mut [i32; 32]) -> (f32, Option<f32>),
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU reported FMA support, the only feature this function enables.
        return unsafe { dot_q8_lanes_fma(w, size, y, unpack) };
    }
    dot_q8_lanes_body(w, size, y, unpack)
}

/// Dot product of two f16-valued vectors as llama.cpp's AVX2 f16 kernel takes it: four
/// accumulators of 8 lanes over steps of 32 (fused multiply-add), reduced x0+x2, x1+x3,
/// x0+x1, then the register halves and two horizontal adds. Lengths that are not a multiple
/// of 32 behave as if zero-padded (llama.cpp pads its KV cache to 32 cells).
pub fn dot_f16_lanes(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::dot_lanes(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU reported FMA support, the only feature this function enables.
        return unsafe { dot_f16_lanes_fma(a, b) };
    }
    dot_f16_lanes_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn dot_f16_lanes_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_f16_lanes_body(a, b)
}

#[inline(always)]
fn dot_f16_lanes_body(a: &[f32], b: &[f32]) -> f32 {
    let mut x = [[0f32; 8]; 4];
    for (i, (&u, &v)) in a.iter().zip(b).enumerate() {
        let (j, l) = ((i % 32) / 8, i % 8);
        x[j][l] = u.mul_add(v, x[j][l]);
    }
    for l in 0..8 {
        x[0][l] += x[2][l];
        x[1][l] += x[3][l];
        x[0][l] += x[1][l];
    }
    let t0: Vec<f32> = (0..4).map(|i| x[0][i] + x[0][i + 4]).collect();
    (t0[0] + t0[1]) + (t0[2] + t0[3])
}

/// out[p] = dot_f16_lanes(q, row p of K) for every p < out.len(), where row p of K is
/// `k[p * stride..][..q.len()]` (attention scores of one query against many keys).
pub fn dot_rows_lanes(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::dot_rows_lanes(q, k, stride, out) };
    }
    for (p, o) in out.iter_mut().enumerate() {
        *o = dot_f16_lanes_body(q, &k[p * stride..p * stride + q.len()]);
    }
}

/// [`dot_rows_lanes`] with the keys stored as f16 bits (the q8 mode's KV cache): the
/// scores are bit for bit those of the f32 kernel on the widened keys. 64-wide queries
/// read the f16 keys directly; other widths widen them first.
pub fn dot_rows_lanes_f16(q: &[f32], k: &[u16], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() && q.len() == 64 {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::dot_rows_64_f16(q, k, stride, out) };
    }
    let used = ((out.len().max(1) - 1) * stride + q.len()).min(k.len());
    let mut kf = vec![0f32; used];
    f32_from_f16_bits(&k[..used], &mut kf);
    dot_rows_lanes(q, &kf, stride, out)
}

/// Asks L1 for the lines of the next `n` elements appended to `run` (a KV run: its end
/// was last touched a whole step ago, so each append's first write would wait for memory;
/// a batch of eight sequences appends 48 runs per layer, one after another). Issued before
/// a matrix product, the lines are there when the append comes. A hint: nothing is read or
/// written, and a run that must grow first just wastes it.
pub fn prefetch_append<T>(run: &[T], n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = run.as_ptr().wrapping_add(run.len()).cast::<i8>();
        let bytes = n * std::mem::size_of::<T>();
        // the line of the first byte, and every line after it up to the last byte
        let first = p as usize & !63;
        for line in (first..p as usize + bytes).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults, whatever the address
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (run, n);
}

/// Asks the L2 cache for every line of `data` (a KV run that a task reads next: the
/// weighted sums visit V's rows 32 apart, a pattern the hardware prefetcher does not follow).
pub fn prefetch_l2<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let p = data.as_ptr().cast::<i8>();
        for at in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults; the address is inside `data`
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(at)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// [`weighted_rows_lanes`] with the values stored as f16 bits: bit for bit the f32
/// kernel's sums on the widened values.
pub fn weighted_rows_lanes_f16(w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() && out.len() == 64 {
        let out: &mut [f32; 64] = out.try_into().expect("64 outputs");
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::weighted_rows_64_f16(w, v, stride, out) };
    }
    let used = ((w.len().max(1) - 1) * stride + out.len()).min(v.len());
    let mut vf = vec![0f32; used];
    f32_from_f16_bits(&v[..used], &mut vf);
    weighted_rows_lanes(w, &vf, stride, out)
}

/// The head size of `nq` queries' scores against `m` keys (see [`dot_rows_lanes_multi`]),
/// after checking the queries split evenly and the output holds every row; None when there
/// is nothing to compute.
fn group_shape(qs: &[f32], nq: usize, m: usize, out: &[f32], out_stride: usize) -> Option<usize> {
    if nq == 0 || m == 0 {
        return None;
    }
    assert!(
        qs.len().is_multiple_of(nq),
        "dot_rows_lanes_multi: ragged queries"
    );
    assert!(
        out.len() >= (nq - 1) * out_stride + m,
        "dot_rows_lanes_multi: output too short"
    );
    Some(qs.len() / nq)
}

/// Asks L2 for share `part` of `parts` of `data` (the shares split it evenly, in order).
fn prefetch_share<T>(data: &[T], part: usize, parts: usize) {
    let n = data.len();
    prefetch_l2(&data[part * n / parts..(part + 1) * n / parts]);
}

/// [`dot_rows_lanes_multi`] with the keys stored as f16 bits: blocks of 32 keys (in L1
/// after the first query) against each query by [`dot_rows_lanes_f16`]; bit for bit the
/// f32 kernel's scores on the widened keys. With each block, an even share of every slice
/// in `fetch` is asked into L2, and the keys two blocks ahead: a decoding row's values and
/// the next task's keys and values arrive while this arithmetic runs (asked for in one
/// burst, the prefetches waited on memory before any arithmetic began).
#[allow(clippy::too_many_arguments)]
pub fn dot_rows_lanes_multi_f16(
    qs: &[f32],
    nq: usize,
    k: &[u16],
    stride: usize,
    m: usize,
    out: &mut [f32],
    out_stride: usize,
    fetch: &[&[u16]],
) {
    let Some(d) = group_shape(qs, nq, m, out, out_stride) else {
        return;
    };
    let blocks = m.div_ceil(32);
    for p0 in (0..m).step_by(32) {
        let p1 = (p0 + 32).min(m);
        if !fetch.is_empty() {
            for f in fetch {
                prefetch_share(f, p0 / 32, blocks);
            }
            let ahead = ((p0 + 64) * stride).min(k.len());
            let till = ((p1 + 64) * stride).min(k.len());
            prefetch_l2(&k[ahead..till]);
        }
        for (j, q) in qs.chunks_exact(d).enumerate() {
            let o = j * out_stride;
            dot_rows_lanes_f16(q, &k[p0 * stride..], stride, &mut out[o + p0..o + p1]);
        }
    }
}

/// [`weighted_rows_lanes_multi`] with the values stored as f16 bits: each weight vector by
/// [`weighted_rows_lanes_f16`] (the V rows come from cache for the later ones).
pub fn weighted_rows_lanes_multi_f16(
    ws: &[f32],
    n: usize,
    v: &[u16],
    stride: usize,
    dv: usize,
    outs: &mut [f32],
) {
    if dv == 0 || outs.is_empty() {
        return;
    }
    assert_eq!(
        ws.len(),
        outs.len() / dv * n,
        "weighted_rows_lanes_multi_f16: weights do not match outputs"
    );
    for (w, out) in ws.chunks_exact(n.max(1)).zip(outs.chunks_exact_mut(dv)) {
        weighted_rows_lanes_f16(&w[..n], v, stride, out);
    }
}

/// out[i] = dot_f16_lanes(w, column i of V) for every i < out.len(), where row p of V is
/// `v[p * stride..][..out.len()]`: the attention-weighted sum of values, with each output
/// summed in exactly the lane order [`dot_f16_lanes`] uses, but reading V row by row.
pub fn weighted_rows_lanes(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() && out.len().is_multiple_of(8) && out.len() <= 256 {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::weighted_rows_lanes(w, v, stride, out) };
    }
    weighted_rows_lanes_ref(w, v, stride, out)
}

/// [`dot_rows_lanes`] for `nq` queries (`qs` holds them one after another) against the same
/// `m` keys: `out[j * out_stride + p] = dot_f16_lanes(query j, row p of K)`. Every score is
/// bit-identical to the one-query kernel's; each key row is read once for all the queries
/// (the heads that share a KV head), not once per query.
pub fn dot_rows_lanes_multi(
    qs: &[f32],
    nq: usize,
    k: &[f32],
    stride: usize,
    m: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let Some(d) = group_shape(qs, nq, m, out, out_stride) else {
        return;
    };
    if d > 64 && d.is_multiple_of(32) {
        // wide heads: the register tile of the group's queries by a few keys (at head size
        // 64 the one-query kernel keeps the whole query in registers instead)
        return lane_dots(qs, nq, d, k, m, stride, d, out, out_stride);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::dot_rows_lanes_multi(qs, nq, k, stride, m, out, out_stride) };
    }
    for p in 0..m {
        let row = &k[p * stride..p * stride + d];
        for (j, q) in qs.chunks_exact(d).enumerate() {
            out[j * out_stride + p] = dot_f16_lanes_body(q, row);
        }
    }
}

/// [`weighted_rows_lanes`] for several weight vectors over the same V rows: `ws` holds
/// `outs.len() / dv` weight vectors of `n` each, and output j (`outs[j * dv..][..dv]`) is
/// `weighted_rows_lanes(ws[j * n..][..n], v, stride)`, bit for bit; each V row is read once
/// per three weight vectors instead of once per vector.
pub fn weighted_rows_lanes_multi(
    ws: &[f32],
    n: usize,
    v: &[f32],
    stride: usize,
    dv: usize,
    outs: &mut [f32],
) {
    if dv == 0 || outs.is_empty() {
        return;
    }
    let nq = outs.len() / dv;
    assert_eq!(
        outs.len(),
        nq * dv,
        "weighted_rows_lanes_multi: ragged outputs"
    );
    assert_eq!(
        ws.len(),
        nq * n,
        "weighted_rows_lanes_multi: weights do not match outputs"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() && dv.is_multiple_of(32) && !dv.is_multiple_of(64) {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::weighted_rows_lanes_multi(ws, n, v, stride, dv, outs) };
    }
    // one query at a time (value sizes that are multiples of 64 take the kernel that keeps
    // a slot's accumulators in registers; the V rows come from cache for the later ones)
    for (w, out) in ws.chunks_exact(n.max(1)).zip(outs.chunks_exact_mut(dv)) {
        weighted_rows_lanes(&w[..n], v, stride, out);
    }
}

/// Packs V (`n` rows of `dv` values at `v[p * stride..]`) transposed, for the weighted
/// sums by [`lane_dots`]: column i is `out[i * n32..][..n32]`, n32 = n rounded up to a
/// multiple of 32, zeros past row n. Returns n32. With weights zero past n (see
/// [`lane_dots`]'s padding note), `lane_dots(w, nq, n32, out, dv, n32, n32, ..)` is
/// [`weighted_rows_lanes_multi`] bit for bit.
pub fn pack_v_cols(v: &[f32], stride: usize, n: usize, dv: usize, out: &mut Vec<f32>) -> usize {
    let n32 = n.next_multiple_of(32);
    out.clear();
    out.resize(dv * n32, 0.0);
    // 8 rows at a time, so each column's 8 writes are one contiguous run
    for p0 in (0..n).step_by(8) {
        let rows = (n - p0).min(8);
        for (i, col) in out.chunks_exact_mut(n32).enumerate() {
            for (r, o) in col[p0..p0 + rows].iter_mut().enumerate() {
                *o = v[(p0 + r) * stride + i];
            }
        }
    }
    n32
}

/// `out[i * out_stride + k] = dot_f16_lanes(row i of A, row k of B)` for i < `na`, k <
/// `nb`, rows of `l` floats (a multiple of 32): row i of A at `a[i * a_stride..]`, row k of
/// B at `b[k * b_stride..]`. Attention's scores (queries against keys) and its weighted
/// sums (weights against the columns of V, packed by [`pack_v_cols`]) are both such dots;
/// the rows of a group of queries share each loaded key, and each loaded key chunk serves
/// the group. Padding: a dot over zeros past the true length is the same value (the terms
/// 0 * x add +-0 to sums that are never -0).
#[allow(clippy::too_many_arguments)]
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
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe {
            crate::avx2::lane_dots(a, na, a_stride, b, nb, b_stride, l, out, out_stride)
        };
    }
    lane_dots_ref(a, na, a_stride, b, nb, b_stride, l, out, out_stride)
}

/// Scalar reference of [`lane_dots`].
#[allow(clippy::too_many_arguments)]
pub fn lane_dots_ref(
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
    for i in 0..na {
        for k in 0..nb {
            let (x, y) = (&a[i * a_stride..][..l], &b[k * b_stride..][..l]);
            out[i * out_stride + k] = dot_f16_lanes_body(x, y);
        }
    }
}

/// Scalar reference of [`weighted_rows_lanes`].
pub fn weighted_rows_lanes_ref(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let mut col = vec![0f32; w.len()];
    for (i, o) in out.iter_mut().enumerate() {
        for (p, c) in col.iter_mut().enumerate() {
            *c = v[p * stride + i];
        }
        *o = dot_f16_lanes_body(w, &col);
    }
}

/// Softmax of `x * scale` the way llama.cpp's CPU backend computes it: exponentials summed
/// per 8-lane chunk (reduced like [`hsum8`]) into a double, then multiplied by the f32
/// reciprocal of the sum.
pub fn softmax_scaled_lanes(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::softmax_scaled_lanes(x, scale) };
    }
    softmax_scaled_lanes_ref(x, scale)
}

/// Cross-entropy of one row of logits against `target`: returns -log softmax(row)[target]
/// (log-sum-exp from the row's max and the sum of e^(x - max), summed in 8 lanes). With
/// `grad` = Some(k) the row becomes k (softmax(row) - onehot(target)), the gradient of k
/// times the loss; without, the row is left as it was. Three passes over the row: max,
/// exponentials, scaling (a training head's rows are a vocabulary wide).
pub fn softmax_xent_row(row: &mut [f32], target: usize, grad: Option<f32>) -> f32 {
    assert!(
        target < row.len(),
        "softmax_xent_row: target {target} outside the row"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::softmax_xent_row(row, target, grad) };
    }
    softmax_xent_row_ref(row, target, grad)
}

/// Scalar reference of [`softmax_xent_row`]: element i's exponential goes to lane i % 8.
pub fn softmax_xent_row_ref(row: &mut [f32], target: usize, grad: Option<f32>) -> f32 {
    let x_tgt = row[target];
    let mut m8 = [f32::NEG_INFINITY; 8];
    let whole = row.len() / 8 * 8;
    for (i, &v) in row[..whole].iter().enumerate() {
        m8[i % 8] = if v > m8[i % 8] { v } else { m8[i % 8] };
    }
    // the lanes' max, then the tail in order
    let mut max = m8.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in &row[whole..] {
        max = if v > max { v } else { max };
    }
    let mut lanes = [0f32; 8];
    for (i, v) in row.iter_mut().enumerate() {
        let e = exp_poly(*v - max);
        if grad.is_some() {
            *v = e;
        }
        lanes[i % 8] += e;
    }
    let sum: f64 = lanes.iter().map(|&v| v as f64).sum();
    if let Some(k) = grad {
        let f = (k as f64 / sum) as f32;
        row.iter_mut().for_each(|v| *v *= f);
        row[target] -= k;
    }
    ((max as f64 + sum.ln()) - x_tgt as f64) as f32
}

/// out[i] = 1 / (1 + e^-x[i]), the exponential being [`exp_poly`] (8 lanes at a time where
/// the CPU has AVX2; the same bits either way).
pub fn sigmoid_into(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "sigmoid_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::sigmoid_lanes(x, out) };
    }
    sigmoid_ref(x, out)
}

/// SwiGLU's product in q8 mode: g[i] = silu(g[i]) * u[i] with silu(x) = x / (1 +
/// exp(-x)) and exp as [`exp_poly`] (llama.cpp's CPU SiLU is a vectorized polynomial exp
/// too, not libm's), 8 lanes at a time where AVX2 is there.
pub fn swiglu_into(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "swiglu_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::swiglu_lanes(g, u) };
    }
    swiglu_ref(g, u)
}

/// Scalar reference of [`swiglu_into`].
pub fn swiglu_ref(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + exp_poly(-*a)) * b;
    }
}

/// Scalar reference of [`sigmoid_into`].
pub fn sigmoid_ref(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 1.0 / (1.0 + exp_poly(-v));
    }
}

/// Scalar reference of [`softmax_scaled_lanes`].
pub fn softmax_scaled_lanes_ref(x: &mut [f32], scale: f32) {
    for v in x.iter_mut() {
        *v *= scale;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for chunk in x.chunks_mut(8) {
        let mut lanes = [0f32; 8];
        for (l, v) in chunk.iter_mut().enumerate() {
            *v = exp_poly(*v - max);
            lanes[l] = *v;
        }
        sum += hsum8(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// out[i] = e^((x[i] - shift) * scale) by [`exp_poly`] (so every (x[i] - shift) * scale
/// must be <= 0: `shift` the maximum, `scale` > 0), and returns their sum: eight lane sums
/// (lane i % 8) added as [`hsum8`] does, then the last `len % 8` values in order. The
/// sampler's unnormalised probabilities over a whole vocabulary; the SIMD kernel gives
/// the same bits as [`exp_scaled_into_ref`].
pub fn exp_scaled_into(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len(), "exp_scaled_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::exp_scaled_into(x, shift, scale, out) };
    }
    exp_scaled_into_ref(x, shift, scale, out)
}

/// Scalar reference of [`exp_scaled_into`].
pub fn exp_scaled_into_ref(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len(), "exp_scaled_into: lengths differ");
    let whole = x.len() / 8 * 8;
    let mut lanes = [0f32; 8];
    for (c, o) in x[..whole].chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        for j in 0..8 {
            o[j] = exp_poly((c[j] - shift) * scale);
            lanes[j] += o[j];
        }
    }
    let mut sum = hsum8(&lanes);
    for (&v, o) in x[whole..].iter().zip(&mut out[whole..]) {
        *o = exp_poly((v - shift) * scale);
        sum += *o;
    }
    sum
}

/// Constants of [`exp_poly`]: ln 2 split in a high part exact in f32 and the rest, then the
/// Taylor coefficients 1/k! for k = 2..6.
pub(crate) const EXP_LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const EXP_LN2_HI: f32 = 0.693_145_75;
pub(crate) const EXP_LN2_LO: f32 = 1.428_606_8e-6;
pub(crate) const EXP_C: [f32; 5] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];

/// e^x for x <= 0 (softmax inputs, after the max is subtracted), to about 2 ulp: x is split
/// as n ln 2 + r with |r| <= ln 2 / 2, e^r comes from its degree-6 Taylor polynomial
/// (Horner, fused multiply-adds) and is scaled by 2^n through the exponent bits. Below -87
/// it returns 0.
/// Written so the 8-lane version in `avx2` computes the same bits.
#[inline]
pub fn exp_poly(x: f32) -> f32 {
    if x < -87.0 || x.is_nan() {
        return if x.is_nan() { x } else { 0.0 };
    }
    let x = x.min(88.0);
    let n = (x * EXP_LOG2E).round_ties_even();
    let r = n.mul_add(-EXP_LN2_HI, x);
    let r = n.mul_add(-EXP_LN2_LO, r);
    let mut p = EXP_C[0];
    for &c in &EXP_C[1..] {
        p = p.mul_add(r, c);
    }
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    f32::from_bits(p.to_bits().wrapping_add(((n as i32) << 23) as u32))
}

/// RMSNorm as llama.cpp computes it: squares in f32 summed in a double, mean and scale in
/// f32, then x * scale, then times the weight.
///
/// The double sum is one chain of dependent adds per row (its order is the arithmetic), so
/// rows go eight at a time with their chains interleaved: a row alone waits on each add.
pub fn rmsnorm_lanes(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    if c == 0 {
        return;
    }
    // the in-place norm on a copy: the same sums and scaling, one row loop for both
    let n = (x.len() / c).min(y.len() / c) * c;
    y[..n].copy_from_slice(&x[..n]);
    rmsnorm_lanes_inplace(&mut y[..n], w, eps);
}

/// [`rmsnorm_lanes`] in place: each row's sum is taken before the row is scaled, so no
/// copy of the input is needed (the copy of a prompt's q was a fresh 2 MB allocation per
/// layer for Gemma-3's q norm: page faults and zeroing).
pub fn rmsnorm_lanes_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let c = w.len();
    if c == 0 {
        return;
    }
    let rows = x.len() / c;
    let finish = |x: &mut [f32], sum: f64| {
        let mean = (sum / c as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for i in 0..c {
            x[i] = (x[i] * scale) * w[i];
        }
    };
    let mut r = 0;
    while r + 8 <= rows {
        let sums = square_sums::<8>(&x[r * c..(r + 8) * c], c);
        for (k, &sum) in sums.iter().enumerate() {
            finish(&mut x[(r + k) * c..(r + k + 1) * c], sum);
        }
        r += 8;
    }
    for r in r..rows {
        let sum = square_sums::<1>(&x[r * c..(r + 1) * c], c)[0];
        finish(&mut x[r * c..(r + 1) * c], sum);
    }
}

/// Sum of squares (each square in f32, added in a double, in order) of R rows of `c`.
#[inline]
fn square_sums<const R: usize>(x: &[f32], c: usize) -> [f64; R] {
    let rows: [&[f32]; R] = std::array::from_fn(|k| &x[k * c..(k + 1) * c]);
    let mut s = [0f64; R];
    for i in 0..c {
        for k in 0..R {
            let v = rows[k][i];
            s[k] += (v * v) as f64;
        }
    }
    s
}

/// RoPE (cos, sin) per rotated pair for position `pos`, with the angle advanced by repeated
/// f32 multiplication as llama.cpp does (theta_i = pos * base^(-2i/d), computed as a running
/// product).
pub fn rope_cos_sin_lanes(
    pos: usize,
    rot_dim: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let theta_scale = base.powf(-2.0 / rot_dim as f32);
    let mut theta = pos as f32;
    (0..rot_dim / 2)
        .map(|i| {
            let ff = factors.map_or(1.0, |f| f[i]);
            let t = freq_scale * (theta / ff);
            theta *= theta_scale;
            (t.cos(), t.sin())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    /// The bit patterns of `x`, for bit-for-bit comparisons.
    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|f| f.to_bits()).collect()
    }

    /// `n` values in [-1, 1] in steps of 0.001.
    fn unit_values(r: &mut impl FnMut() -> u64, n: usize) -> Vec<f32> {
        (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// Every block-quantized weight type the integer kernels handle.
    const BLOCK_TYPES: [DType; 8] = [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// Random weight blocks with sane scales (random f16 bits could be inf/NaN).
    fn random_row(t: DType, n: usize, seed: u64) -> Vec<u8> {
        let mut r = rng(seed);
        let mut b: Vec<u8> = (0..t.row_bytes(n as u64).unwrap())
            .map(|_| r() as u8)
            .collect();
        let scale = |b: &mut [u8], at: usize, r: &mut dyn FnMut() -> u64| {
            let v = f16::from_f32((r() % 1000) as f32 / 20000.0 + 0.001);
            b[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        };
        for blk in b.chunks_exact_mut(t.type_size()) {
            match t {
                DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => scale(blk, 0, &mut r),
                DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => {
                    scale(blk, 0, &mut r);
                    scale(blk, 2, &mut r);
                }
                DType::Q6K => scale(blk, 208, &mut r),
                _ => {}
            }
        }
        b
    }

    /// Each integer dot equals the float dot of the dequantized weights with the
    /// dequantized activations (the same math, done in another order).
    #[test]
    fn integer_dots_match_dequantized_float_dots() {
        for t in BLOCK_TYPES {
            for seed in 1..6u64 {
                let n = 512;
                let w = random_row(t, n, seed * 7919);
                let mut r = rng(seed);
                let x: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
                let a = quantize_for(t, &x);
                let xq: Vec<f32> = match &a {
                    QuantRow::Q8(b) => b
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
                        .collect(),
                    QuantRow::Q8K(b) => b
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
                        .collect(),
                    QuantRow::Float(v) => v.clone(),
                };
                let mut wf = vec![0f32; n];
                dequantize_row(t, &w, &mut wf).unwrap();
                let want: f64 = wf.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = vec_dot(t, &w, &a) as f64;
                let mag: f64 = wf
                    .iter()
                    .zip(&xq)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                // Q8_1's `s` term is rounded to f16, which the float dot does not see
                let tol = if matches!(t, DType::Q4_1 | DType::Q5_1) {
                    2e-3
                } else {
                    1e-5
                } * mag.max(1.0);
                assert!(
                    (got - want).abs() <= tol,
                    "{t} seed {seed}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn q8_quantizer_rounds_like_llama_cpp() {
        let mut x = vec![0f32; 32];
        x[0] = 1.27; // amax -> d = 0.01, id = 100
        x[1] = 0.005; // 0.5 -> ties to even: 0
        x[2] = 0.015; // 1.5 -> 2
        x[3] = -0.025; // -2.5 -> -2
        let b = &quantize_q8(&x)[0];
        assert_eq!(&b.qs[..4], &[127, 0, 2, -2]);
        assert_eq!(b.d, round_f16(0.01));
        assert_eq!(b.s, round_f16(0.01 * 127.0));
        let z = &quantize_q8(&[0f32; 32])[0];
        assert_eq!((z.d, z.qs), (0.0, [0; 32]));
    }

    #[test]
    fn q8k_keeps_the_sign_of_the_largest_value() {
        let mut x = vec![0.1f32; 256];
        x[5] = -2.0;
        let b = &quantize_q8k(&x)[0];
        // iscale = -127 / -2 = 63.5: -2 -> -127, 0.1 -> 6.35 -> 6
        assert_eq!((b.qs[5], b.qs[0]), (-127, 6));
        assert_eq!(b.bsums[0], 15 * 6 - 127);
        assert!((b.d - 2.0 / 127.0).abs() < 1e-9);
    }

    #[test]
    fn hsum8_uses_the_register_reduction_order() {
        // 1e8 + 1 - 1e8 depends on order: pairing (0,4) first keeps the 1 only when the
        // big values cancel before it is added
        let a = [1e8f32, 1.0, 0.0, 0.0, -1e8, 0.0, 0.0, 0.0];
        assert_eq!(hsum8(&a), 1.0);
        let seq: f32 = a.iter().sum();
        assert_eq!(seq, 0.0, "a left-to-right sum loses the 1");
    }

    #[test]
    fn lane_ordered_kernels_match_their_plain_versions() {
        let mut r = rng(11);
        let mut f = || (r() % 20001) as f32 / 10000.0 - 1.0;
        for n in [1usize, 7, 31, 32, 33, 64, 100] {
            let a: Vec<f32> = (0..n).map(|_| round_f16(f())).collect();
            let b: Vec<f32> = (0..n).map(|_| round_f16(f())).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!(
                (dot_f16_lanes(&a, &b) as f64 - plain).abs() < 1e-5,
                "dot n={n}"
            );

            let mut s1 = a.clone();
            let mut s2: Vec<f32> = a.iter().map(|v| v * 0.125).collect();
            softmax_scaled_lanes(&mut s1, 0.125);
            crate::ops::softmax(&mut s2);
            for (x, y) in s1.iter().zip(&s2) {
                assert!((x - y).abs() < 1e-6, "softmax n={n}");
            }
        }
        // masked (-inf) entries weigh exactly 0
        let mut s = vec![1.0, f32::NEG_INFINITY, 2.0];
        softmax_scaled_lanes(&mut s, 1.0);
        assert_eq!(s[1], 0.0);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);

        let x: Vec<f32> = (0..64).map(|_| f()).collect();
        let w: Vec<f32> = (0..64).map(|_| f()).collect();
        let (mut y1, mut y2) = (vec![0f32; 64], vec![0f32; 64]);
        rmsnorm_lanes(&mut y1, &x, &w, 1e-5);
        crate::ops::rmsnorm(&mut y2, &x, &w, 1e-5);
        for (p, q) in y1.iter().zip(&y2) {
            assert!((p - q).abs() < 1e-5);
        }

        let cs = rope_cos_sin_lanes(17, 64, 10_000.0, 1.0, None);
        let inv = crate::ops::rope_inv_freqs(64, 10_000.0, 1.0, None);
        for ((c, s), f) in cs.iter().zip(&inv) {
            let t = 17.0 * f;
            assert!((c - t.cos()).abs() < 1e-4 && (s - t.sin()).abs() < 1e-4);
        }
    }

    /// Many rows at once (eight interleaved sums, then the rest) give each row exactly
    /// what the one-row formula gives: squares summed in order in a double.
    #[test]
    fn rmsnorm_rows_equal_the_one_row_formula() {
        let mut r = rng(31);
        let c = 40;
        let w = unit_values(&mut r, c);
        for rows in [1usize, 7, 8, 19] {
            let x: Vec<f32> = (0..rows * c)
                .map(|_| ((r() % 20001) as f32 / 1000.0 - 10.0) * 1.7)
                .collect();
            let mut y = vec![0f32; rows * c];
            rmsnorm_lanes(&mut y, &x, &w, 1e-6);
            let mut z = x.clone();
            rmsnorm_lanes_inplace(&mut z, &w, 1e-6);
            assert_eq!(bits(&z), bits(&y), "in place, rows {rows}");
            for (k, (yr, xr)) in y.chunks_exact(c).zip(x.chunks_exact(c)).enumerate() {
                let mut sum = 0f64;
                for &v in xr {
                    sum += (v * v) as f64;
                }
                let scale = 1.0f32 / ((sum / c as f64) as f32 + 1e-6).sqrt();
                for i in 0..c {
                    let want = (xr[i] * scale) * w[i];
                    assert_eq!(
                        yr[i].to_bits(),
                        want.to_bits(),
                        "rows {rows} row {k} col {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn gelu_table_rounds_through_f16() {
        assert_eq!(gelu_f16_table(-11.0), 0.0);
        assert_eq!(gelu_f16_table(12.5), 12.5);
        let x = 0.3337f32;
        assert_eq!(
            gelu_f16_table(x),
            round_f16(crate::ops::gelu_tanh(round_f16(x)))
        );
        assert!((gelu_f16_table(x) - crate::ops::gelu_tanh(x)).abs() < 1e-3);
    }

    /// The FMA-instruction path and the portable path give bit-identical results (both
    /// round each fused multiply-add once).
    #[test]
    fn fma_dispatch_and_portable_body_agree_bit_for_bit() {
        let w = random_row(DType::Q4_1, 256, 5);
        let mut r = rng(9);
        let x: Vec<f32> = (0..256)
            .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let y = quantize_q8(&x);
        let unpack = |b: &[u8], q: &mut [i32; 32]| {
            for j in 0..16 {
                q[j] = (b[4 + j] & 0x0f) as i32;
                q[j + 16] = (b[4 + j] >> 4) as i32;
            }
            (f16_at(b, 0), Some(f16_at(b, 2)))
        };
        let fast = dot_q8_lanes(&w, 20, &y, unpack);
        let portable = dot_q8_lanes_body(&w, 20, &y, unpack);
        assert_eq!(fast.to_bits(), portable.to_bits());
        let a: Vec<f32> = x.iter().map(|&v| round_f16(v)).collect();
        assert_eq!(
            dot_f16_lanes(&a, &a).to_bits(),
            dot_f16_lanes_body(&a, &a).to_bits()
        );
    }

    /// Every fast kernel against its scalar reference, bit for bit, on random blocks, for
    /// one activation row and for four at once.
    #[test]
    fn fast_kernels_equal_scalar_references_bit_for_bit() {
        for t in BLOCK_TYPES.into_iter().chain([DType::F16]) {
            for seed in 1..20u64 {
                let n = 256 * (1 + seed as usize % 3);
                let w = random_row(t, n, seed * 31 + 7);
                let mut r = rng(seed + 100);
                let acts: Vec<QuantRow> = (0..4)
                    .map(|_| {
                        let x: Vec<f32> = (0..n)
                            .map(|_| ((r() % 20001) as f32 / 10000.0 - 1.0) * 3.0)
                            .collect();
                        quantize_for(t, &x)
                    })
                    .collect();
                let want: Vec<f32> = acts.iter().map(|a| vec_dot(t, &w, a)).collect();
                let one = vec_dot_n(t, &w, [acts[0].as_row()]);
                assert_eq!(one[0].to_bits(), want[0].to_bits(), "{t} seed {seed} N=1");
                let four = vec_dot_n(t, &w, std::array::from_fn::<_, 4, _>(|i| acts[i].as_row()));
                for i in 0..4 {
                    assert_eq!(four[i].to_bits(), want[i].to_bits(), "{t} seed {seed} N=4");
                }
                // four rows at once (the second to fourth rows are other random rows)
                let rows: Vec<Vec<u8>> = (0..4)
                    .map(|k| {
                        if k == 0 {
                            w.clone()
                        } else {
                            random_row(t, n, seed * 97 + k)
                        }
                    })
                    .collect();
                let tile = vec_dot_rn::<4, 2>(
                    t,
                    std::array::from_fn(|k| &rows[k][..]),
                    [acts[0].as_row(), acts[1].as_row()],
                );
                for k in 0..4 {
                    for j in 0..2 {
                        let want = vec_dot(t, &rows[k], &acts[j]);
                        assert_eq!(tile[k][j].to_bits(), want.to_bits(), "{t} seed {seed} tile");
                    }
                }
                // pairs of rows (the token-generation path), one and three tokens
                let pair1 = vec_dot_rn::<2, 1>(t, [&rows[1][..], &rows[2][..]], [acts[3].as_row()]);
                let pair3 = vec_dot_rn::<2, 3>(
                    t,
                    [&rows[2][..], &rows[3][..]],
                    [acts[0].as_row(), acts[1].as_row(), acts[2].as_row()],
                );
                for k in 0..2 {
                    let want = vec_dot(t, &rows[1 + k], &acts[3]);
                    assert_eq!(
                        pair1[k][0].to_bits(),
                        want.to_bits(),
                        "{t} seed {seed} pair"
                    );
                    for j in 0..3 {
                        let want = vec_dot(t, &rows[2 + k], &acts[j]);
                        assert_eq!(
                            pair3[k][j].to_bits(),
                            want.to_bits(),
                            "{t} seed {seed} pair3"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fast_q8_quantizer_equals_reference() {
        let mut r = rng(77);
        for len in [64usize, 576, 2048] {
            let mut x: Vec<f32> = (0..len)
                .map(|_| ((r() % 20001) as f32 / 10000.0 - 1.0) * 5.0)
                .collect();
            x[..32].fill(0.0); // an all-zero block
            x[33] = 1.27; // exact ties after scaling
            x[34] = 0.005;
            let mut fast = vec![BlockQ8::ZERO; len / 32];
            let mut slow = vec![BlockQ8::ZERO; len / 32];
            quantize_q8_into(&x, &mut fast);
            quantize_q8_ref(&x, &mut slow);
            for (a, b) in fast.iter().zip(&slow) {
                assert_eq!(
                    (a.d.to_bits(), a.s.to_bits(), a.qs),
                    (b.d.to_bits(), b.s.to_bits(), b.qs)
                );
            }
        }
    }

    #[test]
    fn fast_q8k_quantizer_equals_reference() {
        let mut r = rng(78);
        for len in [256usize, 1024, 2048] {
            let mut x: Vec<f32> = (0..len)
                .map(|_| ((r() % 20001) as f32 / 10000.0 - 1.0) * 3.0)
                .collect();
            x[..256].fill(0.0); // an all-zero block
            if len > 256 {
                // the largest magnitude twice with both signs: the first one sets the sign
                x[300] = -4.0;
                x[301] = 4.0;
                x[302] = 2.0; // a tie after scaling (-127 / -4 * 2 = -63.5)
                x[303] = 0.031496063;
            }
            if len > 1024 {
                x[1100] = f32::INFINITY; // inf and NaN: the scalar loop's results exactly
                x[1400] = f32::NAN;
                x[1500] = -f32::INFINITY;
            }
            let mut fast = vec![BlockQ8K::ZERO; len / 256];
            let mut slow = vec![BlockQ8K::ZERO; len / 256];
            quantize_q8k_into(&x, &mut fast);
            quantize_q8k_ref(&x, &mut slow);
            for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert_eq!(
                    (a.d.to_bits(), a.qs, a.bsums),
                    (b.d.to_bits(), b.qs, b.bsums),
                    "len {len} block {i}"
                );
            }
        }
    }

    #[test]
    fn fast_lane_dot_equals_scalar_body() {
        let mut r = rng(5);
        for n in [1usize, 8, 31, 32, 33, 64, 100, 577] {
            let a: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            let b: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            assert_eq!(
                dot_f16_lanes(&a, &b).to_bits(),
                dot_f16_lanes_body(&a, &b).to_bits(),
                "n={n}"
            );
        }
    }

    #[test]
    fn weighted_rows_equal_column_dots() {
        let mut r = rng(21);
        for (n, dv) in [
            (1usize, 64usize),
            (7, 64),
            (33, 64),
            (100, 256),
            (64, 8),
            (70, 128),
            (40, 32),
            (9, 16),
        ] {
            let stride = dv * 3;
            let w: Vec<f32> = (0..n).map(|_| (r() % 1001) as f32 / 1000.0).collect();
            let v: Vec<f32> = (0..n * stride)
                .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let (mut fast, mut slow) = (vec![0f32; dv], vec![0f32; dv]);
            weighted_rows_lanes(&w, &v[dv..], stride, &mut fast);
            weighted_rows_lanes_ref(&w, &v[dv..], stride, &mut slow);
            for i in 0..dv {
                assert_eq!(fast[i].to_bits(), slow[i].to_bits(), "n={n} dv={dv} i={i}");
            }
        }
    }

    #[test]
    fn multi_query_attention_kernels_equal_the_scalar_references() {
        let mut r = rng(22);
        let mut val = |scale: f32| (r() % 2001) as f32 / 1000.0 * scale - scale / 2.0;
        for (nq, n, d, dv) in [
            (1usize, 1usize, 64usize, 64usize),
            (3, 7, 64, 64),
            (3, 100, 64, 64),
            (4, 33, 256, 256),
            (5, 64, 40, 32),
            (2, 65, 32, 96),
            (9, 31, 64, 24),
            (6, 20, 128, 64),
        ] {
            let (ks, vs) = (d * 3 + 5, dv * 2 + 3);
            let qs: Vec<f32> = (0..nq * d).map(|_| val(2.0)).collect();
            let k: Vec<f32> = (0..n * ks).map(|_| val(2.0)).collect();
            let v: Vec<f32> = (0..n * vs).map(|_| val(2.0)).collect();
            // scores into rows of a wider buffer, with a gap that must stay untouched
            let os = n + 3;
            let mut scores = vec![7.0f32; nq * os];
            dot_rows_lanes_multi(&qs, nq, &k[d..], ks, n, &mut scores, os);
            for j in 0..nq {
                for p in 0..n {
                    let want = dot_f16_lanes_body(&qs[j * d..(j + 1) * d], &k[d + p * ks..][..d]);
                    assert_eq!(
                        scores[j * os + p].to_bits(),
                        want.to_bits(),
                        "dot nq={nq} n={n} j={j} p={p}"
                    );
                }
                assert!(scores[j * os + n..j * os + os].iter().all(|&x| x == 7.0));
            }
            // weights with zeros (masked cells) among them
            let ws: Vec<f32> = (0..nq * n)
                .map(|i| if i % 5 == 3 { 0.0 } else { val(1.0).abs() })
                .collect();
            let mut outs = vec![0f32; nq * dv];
            weighted_rows_lanes_multi(&ws, n, &v[dv..], vs, dv, &mut outs);
            for j in 0..nq {
                let mut want = vec![0f32; dv];
                weighted_rows_lanes_ref(&ws[j * n..(j + 1) * n], &v[dv..], vs, &mut want);
                for i in 0..dv {
                    assert_eq!(
                        outs[j * dv + i].to_bits(),
                        want[i].to_bits(),
                        "weighted nq={nq} n={n} dv={dv} j={j} i={i}"
                    );
                }
            }
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for x in [
            -128.0f32, -2.5, -1.5, -0.5, 0.0, 0.49999997, 0.5, 1.5, 2.5, 126.5, 127.0,
        ] {
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
        let mut r = rng(3);
        for _ in 0..10000 {
            let x = (r() % 2_000_001) as f32 / 7777.0 - 128.0;
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }

    #[test]
    fn fast_f16_rounding_equals_half_crate() {
        let mut r = rng(8);
        let mut v: Vec<f32> = (0..1003)
            .map(|_| {
                f32::from_bits(r() as u32 & 0x7fff_ffff)
                    * if r().is_multiple_of(2) { 1.0 } else { -1.0 }
            })
            .filter(|x| !x.is_nan())
            .collect();
        v.extend([0.0, -0.0, 65504.0, 65520.0, 1e-8, 6.1e-5, f32::INFINITY]);
        let want: Vec<u32> = v.iter().map(|&x| round_f16(x).to_bits()).collect();
        round_f16_slice(&mut v);
        let got: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn dot_rows_equal_single_dots() {
        let mut r = rng(31);
        for (n, d) in [(1usize, 64usize), (9, 64), (37, 64), (40, 256), (5, 40)] {
            let stride = d * 2 + 3;
            let q: Vec<f32> = (0..d).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            let k: Vec<f32> = (0..n * stride)
                .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut out = vec![0f32; n];
            dot_rows_lanes(&q, &k, stride, &mut out);
            for p in 0..n {
                let want = dot_f16_lanes_body(&q, &k[p * stride..p * stride + d]);
                assert_eq!(out[p].to_bits(), want.to_bits(), "n={n} d={d} p={p}");
            }
        }
    }

    #[test]
    fn exp_poly_is_accurate_and_the_fast_softmax_is_bit_identical() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let rel = ((exp_poly(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_poly(-100.0), 0.0);
        let mut r = rng(17);
        for n in [1usize, 5, 8, 9, 33, 300] {
            let mut a: Vec<f32> = (0..n).map(|_| (r() % 4001) as f32 / 100.0 - 20.0).collect();
            if n > 3 {
                a[2] = f32::NEG_INFINITY; // a masked cell
            }
            let mut b = a.clone();
            softmax_scaled_lanes(&mut a, 0.125);
            softmax_scaled_lanes_ref(&mut b, 0.125);
            let (ab, bb): (Vec<u32>, Vec<u32>) = (
                a.iter().map(|v| v.to_bits()).collect(),
                b.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(ab, bb, "n={n}");
        }
    }

    /// The f16 KV cache's conversions: values rounded as [`round_f16`] rounds them (ties,
    /// subnormals, overflow to infinity), and back exactly.
    #[test]
    fn f16_bits_round_trip_like_round_f16() {
        let mut r = rng(31);
        let mut x: Vec<f32> = (0..1003)
            .map(|_| ((r() % 2_000_001) as f32 / 1000.0 - 1000.0) * 1.37)
            .collect();
        x.extend([
            0.0,
            -0.0,
            1e-7,
            -3e-6,
            65504.0,
            70000.0,
            f32::NEG_INFINITY,
            0.1,
        ]);
        let mut bits = vec![0u16; x.len()];
        f16_bits_from_f32(&x, &mut bits);
        let mut back = vec![0f32; x.len()];
        f32_from_f16_bits(&bits, &mut back);
        for (i, (&a, &b)) in x.iter().zip(&back).enumerate() {
            assert_eq!(round_f16(a).to_bits(), b.to_bits(), "value {i}: {a}");
        }
    }

    /// The attention kernels on an f16 KV run give the f32 kernels' bits on the widened
    /// values: 64-wide (read as f16) and other widths (widened first), with strides.
    #[test]
    fn f16_kv_kernels_equal_the_f32_kernels() {
        let mut r = rng(37);
        let mut val = || round_f16((r() % 20_001) as f32 / 10_000.0 - 1.0);
        for (d, stride) in [(64usize, 64usize), (64, 192), (32, 32), (96, 96)] {
            for n in [0usize, 1, 7, 8, 9, 33, 70] {
                let kf: Vec<f32> = (0..n * stride + d).map(|_| val()).collect();
                let mut kh = vec![0u16; kf.len()];
                f16_bits_from_f32(&kf, &mut kh);
                let q: Vec<f32> = (0..d).map(|_| val()).collect();
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                dot_rows_lanes(&q, &kf, stride, &mut a);
                dot_rows_lanes_f16(&q, &kh, stride, &mut b);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "scores d={d} stride={stride} n={n}");
                let w: Vec<f32> = (0..n).map(|_| val().abs()).collect();
                let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
                weighted_rows_lanes(&w, &kf, stride, &mut a);
                weighted_rows_lanes_f16(&w, &kh, stride, &mut b);
                assert_eq!(bits(&a), bits(&b), "sums d={d} stride={stride} n={n}");
                // three queries (a group of heads), 40 columns apart in the output
                let qs: Vec<f32> = (0..3 * d).map(|_| val()).collect();
                let (mut a, mut b) = (vec![0f32; 80 + n], vec![0f32; 80 + n]);
                dot_rows_lanes_multi(&qs, 3, &kf, stride, n, &mut a, 40);
                dot_rows_lanes_multi_f16(&qs, 3, &kh, stride, n, &mut b, 40, &[]);
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "group scores d={d} stride={stride} n={n}"
                );
                // asking for other data along the way (slices of every length, empty ones
                // included) changes no score
                let mut c = vec![0f32; 80 + n];
                let fetch: [&[u16]; 3] = [&kh, &kh[..n.min(3)], &[]];
                dot_rows_lanes_multi_f16(&qs, 3, &kh, stride, n, &mut c, 40, &fetch);
                assert_eq!(bits(&a), bits(&c), "fetching d={d} stride={stride} n={n}");
                let ws: Vec<f32> = (0..3 * n).map(|_| val().abs()).collect();
                let (mut a, mut b) = (vec![0f32; 3 * d], vec![0f32; 3 * d]);
                weighted_rows_lanes_multi(&ws, n, &kf, stride, d, &mut a);
                weighted_rows_lanes_multi_f16(&ws, n, &kh, stride, d, &mut b);
                assert_eq!(bits(&a), bits(&b), "group sums d={d} stride={stride} n={n}");
            }
        }
    }

    /// The sampler's exponentials: SIMD bits equal the scalar reference's, values and sum
    /// within float rounding of f64, masked (-inf) logits give 0.
    #[test]
    fn exp_scaled_into_equals_its_reference_and_f64() {
        let mut r = rng(29);
        for n in [0usize, 1, 7, 8, 9, 64, 1001] {
            let mut x: Vec<f32> = (0..n).map(|_| (r() % 6001) as f32 / 100.0 - 40.0).collect();
            if n > 4 {
                x[3] = f32::NEG_INFINITY;
            }
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for scale in [1.0f32, 1.25, 0.5] {
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                let sa = exp_scaled_into(&x, max, scale, &mut a);
                let sb = exp_scaled_into_ref(&x, max, scale, &mut b);
                assert_eq!(sa.to_bits(), sb.to_bits(), "sum, n={n}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "values, n={n}");
                let mut want_sum = 0f64;
                for (i, &v) in x.iter().enumerate() {
                    let want = (((v - max) * scale) as f64).exp();
                    want_sum += want;
                    assert!(
                        (a[i] as f64 - want).abs() <= 1e-6 * want + 1e-30,
                        "n={n} i={i}"
                    );
                }
                assert!((sa as f64 - want_sum).abs() <= 1e-5 * want_sum, "n={n}");
                if n > 4 {
                    assert_eq!(a[3], 0.0);
                }
            }
        }
    }

    /// One 8-token tile kernel against the scalar reference on random blocks: `cases` are
    /// (seed, rows, columns); `quant` quantizes an activation row to blocks of `block`
    /// values, `scales` gives a block's (scale, table entry 8), `row` wraps activation
    /// blocks for [`vec_dot_ref`], `run(w, row_bytes, rows, ys, yd, out)` calls the kernel
    /// (output stride 16). Rows past `rows` must be left alone.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::type_complexity)]
    fn check_tile<B>(
        t: DType,
        cases: &[(u64, usize, usize)],
        block: usize,
        quant: fn(&[f32]) -> Vec<B>,
        scales: fn(&B) -> (f32, f32),
        row: for<'a> fn(&'a [B]) -> ActRow<'a>,
        run: &dyn Fn(&[u8], usize, usize, [&[B]; 8], &[[f32; 8]], &mut [f32]),
    ) {
        use crate::avx2::SCALE_ROWS;
        for &(seed, rows, n) in cases {
            let rb = t.row_bytes(n as u64).unwrap() as usize;
            let mut w: Vec<u8> = (0..rows as u64)
                .flat_map(|j| random_row(t, n, seed * 1000 + j))
                .collect();
            if t == DType::Q8_0 {
                // a block of +-127 weights in the first row
                for (j, q) in w[2..34].iter_mut().enumerate() {
                    *q = if j % 2 == 0 { 127 } else { (-127i8) as u8 };
                }
            }
            let mut r = rng(seed + 50);
            let acts: Vec<Vec<B>> = (0..8)
                .map(|j| {
                    let mut x: Vec<f32> = (0..n)
                        .map(|_| ((r() % 20001) as f32 / 10000.0 - 1.0) * 3.0)
                        .collect();
                    if j == 0 {
                        // one large value per block: it quantizes to the extreme
                        for b in x.chunks_mut(block) {
                            b[3] = -50.0;
                        }
                    }
                    quant(&x)
                })
                .collect();
            let yd: Vec<[f32; 8]> = (0..n / block)
                .flat_map(|i| {
                    let a = &acts;
                    (0..SCALE_ROWS).map(move |j| {
                        if j < 8 {
                            [scales(&a[j][i]).0; 8]
                        } else {
                            std::array::from_fn(|m| scales(&a[m][i]).1)
                        }
                    })
                })
                .collect();
            let mut out = [f32::NAN; 8 * 16];
            run(
                &w,
                rb,
                rows,
                std::array::from_fn(|j| &acts[j][..]),
                &yd,
                &mut out,
            );
            for m in 0..8 {
                for j in 0..rows {
                    let want = vec_dot_ref(t, &w[j * rb..(j + 1) * rb], row(&acts[m]));
                    let got = out[m * 16 + j];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{t} seed {seed} token {m} row {j}: {got} vs {want}"
                    );
                }
                for j in rows..16 {
                    assert!(
                        out[m * 16 + j].is_nan(),
                        "{t} seed {seed} token {m} row {j} written"
                    );
                }
            }
        }
    }

    /// The prompt kernel of the 32-value block types (16 rows x 8 tokens, scales from a
    /// table, results transposed to token-major) equals the scalar reference bit for bit,
    /// for full and partial row blocks, including weights and activations at the extremes.
    #[cfg(target_arch = "x86_64")]
    /// The fused cross-entropy row: SIMD equals the scalar reference bit for bit, and both
    /// equal the loss and gradient computed in f64.
    #[test]
    fn softmax_xent_row_matches_reference_and_f64() {
        for n in [1usize, 7, 8, 9, 100, 8192] {
            let base: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 + n) % 1013) as f32 / 97.0 - 5.0)
                .collect();
            let tgt = (n * 5) / 7;
            let m = base.iter().map(|&v| v as f64).fold(f64::MIN, f64::max);
            let z: f64 = base.iter().map(|&v| (v as f64 - m).exp()).sum();
            let want_loss = m + z.ln() - base[tgt] as f64;
            for grad in [None, Some(0.25f32)] {
                let (mut a, mut b) = (base.clone(), base.clone());
                let la = softmax_xent_row(&mut a, tgt, grad);
                let lb = softmax_xent_row_ref(&mut b, tgt, grad);
                assert_eq!(la.to_bits(), lb.to_bits(), "n={n} grad={grad:?}");
                assert_eq!(a, b, "n={n} grad={grad:?}");
                assert!(
                    (la as f64 - want_loss).abs() < 1e-5 * (1.0 + want_loss.abs()),
                    "n={n}"
                );
                match grad {
                    None => assert_eq!(a, base, "loss only leaves the row"),
                    Some(k) => {
                        for (i, (&g, &x)) in a.iter().zip(&base).enumerate() {
                            let p = (x as f64 - m).exp() / z;
                            let want = k as f64 * (p - if i == tgt { 1.0 } else { 0.0 });
                            assert!((g as f64 - want).abs() < 1e-6, "n={n} i={i}: {g} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prompt_tiles_equal_scalar_reference() {
        use crate::avx2 as k;
        if !k::available() {
            return;
        }
        let cases = [
            (1u64, 16usize, 576usize),
            (2, 5, 96),
            (3, 1, 32),
            (4, 16, 1536),
            (5, 7, 64),
        ];
        for t in [DType::Q8_0, DType::Q5_0, DType::Q4_1, DType::Q5_1] {
            if t == DType::Q8_0 {
                // the lane kernel: its own activation copy (tile_ql), one group per call
                let run =
                    |w: &[u8], rb, rows, ys: [&[BlockQ8]; 8], _yd: &[[f32; 8]], out: &mut [f32]| {
                        let nb = ys[0].len();
                        let mut ql = vec![Q32::ZERO; nb * 8];
                        tile_ql(ys, &mut ql);
                        let dq: Vec<[f32; 8]> = (0..nb)
                            .map(|i| std::array::from_fn(|n| ys[n][i].d))
                            .collect();
                        // SAFETY: AVX2, FMA and F16C were reported above.
                        unsafe { k::tiles_q8_0_lanes(w, rb, rows, 1, &ql, &dq, out, 16) };
                        if k::vnni() {
                            // the VNNI form, bit for bit the same
                            let mut qc = vec![[0i32; 8]; nb];
                            lane_corrections(ys, &mut qc);
                            let mut o2 = vec![f32::NAN; out.len()];
                            // SAFETY: vnni() reported AVX-512 VNNI, VL and BW besides AVX2.
                            unsafe {
                                k::tiles_q8_0_lanes_vnni(w, rb, rows, 1, &ql, &dq, &qc, &mut o2, 16)
                            };
                            for n in 0..8 {
                                for r in 0..rows {
                                    let (a, b) = (out[n * 16 + r], o2[n * 16 + r]);
                                    assert_eq!(a.to_bits(), b.to_bits(), "vnni row {r} token {n}");
                                }
                            }
                        }
                    };
                check_tile(
                    t,
                    &cases,
                    32,
                    quantize_q8,
                    |b| (b.d, b.s),
                    |y| ActRow::Q8(y),
                    &run,
                );
                continue;
            }
            let run = |w: &[u8],
                       rb,
                       rows,
                       ys: [&[BlockQ8]; 8],
                       yd: &[[f32; 8]],
                       out: &mut [f32]| {
                let mut qt = vec![Q32::ZERO; ys[0].len() * 8];
                tile_qs(ys, &mut qt);
                // SAFETY: AVX2, FMA and F16C were reported above.
                unsafe {
                    match t {
                        DType::Q5_0 => k::tile_q8x8::<{ k::Q5_0 }>(w, rb, rows, &qt, yd, out, 16),
                        DType::Q4_1 => k::tile_q8x8::<{ k::Q4_1 }>(w, rb, rows, &qt, yd, out, 16),
                        _ => k::tile_q8x8::<{ k::Q5_1 }>(w, rb, rows, &qt, yd, out, 16),
                    }
                }
                if k::vnni() {
                    // the VNNI form, bit for bit the same
                    let mut q5c = vec![[0i32; 8]; qt.len()];
                    tile_q5_corrections(ys, &mut q5c);
                    let mut o2 = vec![f32::NAN; out.len()];
                    // SAFETY: vnni() reported AVX-512 VNNI, VL and BW besides AVX2.
                    unsafe {
                        match t {
                            DType::Q5_0 => k::tile_q8x8_vnni::<{ k::Q5_0 }>(
                                w, rb, rows, &qt, &q5c, yd, &mut o2, 16,
                            ),
                            DType::Q4_1 => k::tile_q8x8_vnni::<{ k::Q4_1 }>(
                                w, rb, rows, &qt, &q5c, yd, &mut o2, 16,
                            ),
                            _ => k::tile_q8x8_vnni::<{ k::Q5_1 }>(
                                w, rb, rows, &qt, &q5c, yd, &mut o2, 16,
                            ),
                        }
                    }
                    for n in 0..8 {
                        for r in 0..rows {
                            let (a, b) = (out[n * 16 + r], o2[n * 16 + r]);
                            assert_eq!(a.to_bits(), b.to_bits(), "{t:?} vnni row {r} token {n}");
                        }
                    }
                }
            };
            check_tile(
                t,
                &cases,
                32,
                quantize_q8,
                |b| (b.d, b.s),
                |y| ActRow::Q8(y),
                &run,
            );
        }
    }

    /// The K types' prompt kernel (16 rows x 8 tokens, per-token float work done for
    /// eight tokens at once) equals the scalar reference bit for bit, full and partial row
    /// blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn k_prompt_tiles_equal_scalar_reference() {
        use crate::avx2 as k;
        if !k::available() {
            return;
        }
        let cases = [(1u64, 16usize, 512usize), (2, 7, 256), (3, 16, 2048)];
        for t in [DType::Q4K, DType::Q5K, DType::Q6K] {
            let run = |w: &[u8],
                       rb,
                       rows,
                       ys: [&[BlockQ8K]; 8],
                       yd: &[[f32; 8]],
                       out: &mut [f32]| {
                // SAFETY: AVX2, FMA and F16C were reported above.
                unsafe {
                    match t {
                        DType::Q4K => k::tile_k8::<4>(w, rb, rows, ys, yd, out, 16),
                        DType::Q5K => k::tile_k8::<5>(w, rb, rows, ys, yd, out, 16),
                        _ => k::tile_k8::<6>(w, rb, rows, ys, yd, out, 16),
                    }
                }
                if k::vnni() {
                    // the VNNI form, bit for bit the same
                    let mut o2 = vec![f32::NAN; out.len()];
                    // SAFETY: vnni() reported AVX-512 VNNI, VL and BW besides AVX2.
                    unsafe {
                        match t {
                            DType::Q4K => k::tile_k8_vnni::<4>(w, rb, rows, ys, yd, &mut o2, 16),
                            DType::Q5K => k::tile_k8_vnni::<5>(w, rb, rows, ys, yd, &mut o2, 16),
                            _ => k::tile_k8_vnni::<6>(w, rb, rows, ys, yd, &mut o2, 16),
                        }
                    }
                    for n in 0..8 {
                        for r in 0..rows {
                            let (a, b) = (out[n * 16 + r], o2[n * 16 + r]);
                            assert_eq!(a.to_bits(), b.to_bits(), "{t:?} vnni row {r} token {n}");
                        }
                    }
                }
            };
            check_tile(
                t,
                &cases,
                256,
                quantize_q8k,
                |b| (b.d, b.d),
                |y| ActRow::Q8K(y),
                &run,
            );
        }
    }

    /// The weighted sums over column-packed V (the tile kernel) equal those over row-major
    /// V, bit for bit, zero padding included.
    #[test]
    fn packed_weighted_rows_equal_row_major() {
        let mut r = rng(12);
        for (n, dv, nq, stride) in [
            (1usize, 64usize, 3usize, 192usize),
            (37, 64, 3, 64),
            (64, 256, 4, 256),
            (100, 32, 1, 40),
            (300, 256, 4, 256),
            (45, 64, 2, 64),
            (70, 96, 5, 100),
            (33, 16, 3, 16),
        ] {
            let v: Vec<f32> = (0..n * stride)
                .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let ws: Vec<f32> = (0..nq * n).map(|_| (r() % 1001) as f32 / 1000.0).collect();
            let mut want = vec![0f32; nq * dv];
            weighted_rows_lanes_multi(&ws, n, &v, stride, dv, &mut want);
            // weights padded with zeros to the packed length
            let mut vp = Vec::new();
            let n32 = pack_v_cols(&v, stride, n, dv, &mut vp);
            let mut wp = vec![0f32; nq * n32];
            for (j, w) in ws.chunks_exact(n).enumerate() {
                wp[j * n32..j * n32 + n].copy_from_slice(w);
            }
            let mut got = vec![f32::NAN; nq * dv];
            lane_dots(&wp, nq, n32, &vp, dv, n32, n32, &mut got, dv);
            assert_eq!(bits(&got), bits(&want), "n={n} dv={dv} nq={nq}");
        }
    }

    /// The tile kernel of attention's dots equals the scalar reference bit for bit on every
    /// tile shape (1-4 rows of A, whole and partial blocks of 8 rows of B, strides wider
    /// than the rows).
    #[test]
    fn lane_dots_equal_scalar_reference() {
        let mut r = rng(13);
        for (na, nb, l) in [
            (1, 1, 32),
            (4, 8, 256),
            (3, 19, 64),
            (2, 9, 128),
            (6, 17, 96),
            (5, 3, 32),
        ] {
            let (a_stride, b_stride, out_stride) = (l + 5, l + 3, nb + 2);
            let a = unit_values(&mut r, na * a_stride);
            let b = unit_values(&mut r, nb * b_stride);
            let (mut got, mut want) = (vec![0f32; na * out_stride], vec![0f32; na * out_stride]);
            lane_dots(&a, na, a_stride, &b, nb, b_stride, l, &mut got, out_stride);
            lane_dots_ref(&a, na, a_stride, &b, nb, b_stride, l, &mut want, out_stride);
            assert_eq!(bits(&got), bits(&want), "na={na} nb={nb} l={l}");
        }
    }

    /// The 8-lane GeGLU (f16 table) equals the scalar reference bit for bit, with every
    /// tail length and the +-10 short-cuts.
    #[test]
    fn fast_geglu_is_bit_identical() {
        let mut r = rng(8);
        for n in [1usize, 7, 8, 9, 31, 300] {
            let mut x: Vec<f32> = (0..n)
                .map(|_| (r() % 30001) as f32 / 1000.0 - 15.0)
                .collect();
            let u: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            if n > 6 {
                (x[0], x[1], x[2], x[3], x[4]) = (-10.0, 10.0, 9.999, -9.999, 0.0);
            }
            let (mut a, mut b) = (x.clone(), x.clone());
            geglu_f16_into(&mut a, &u);
            geglu_f16_ref(&mut b, &u);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "n={n}");
        }
    }

    /// The token-generation row loop (pairs or single rows, odd counts) equals the scalar
    /// reference for every block type.
    #[test]
    fn row_loops_equal_scalar_reference() {
        // 608 columns: 19 blocks, a row that is not a whole number of four-block groups
        for (t, n) in BLOCK_TYPES
            .into_iter()
            .flat_map(|t| [(t, 512usize), (t, 608)])
            .filter(|&(t, n)| n % t.block_size() == 0)
        {
            let rb = t.row_bytes(n as u64).unwrap() as usize;
            let rows = 7;
            let w: Vec<u8> = (0..rows as u64)
                .flat_map(|j| random_row(t, n, 300 + j))
                .collect();
            let mut r = rng(77);
            let x: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            let a = quantize_for(t, &x);
            for pairs in [false, true] {
                let mut out = vec![f32::NAN; rows];
                vec_dot_rows(t, &w, rb, a.as_row(), &mut out, pairs);
                for j in 0..rows {
                    let want = vec_dot_ref(t, &w[j * rb..(j + 1) * rb], a.as_row());
                    assert_eq!(
                        out[j].to_bits(),
                        want.to_bits(),
                        "{t} n={n} pairs={pairs} row {j}"
                    );
                }
                // on a VNNI machine vec_dot_rows took the VNNI rows for Q4_1 / Q5_1: the
                // AVX2 ones must give the same
                #[cfg(target_arch = "x86_64")]
                if crate::avx2::available() && matches!(t, DType::Q4_1 | DType::Q5_1) {
                    use crate::avx2 as k;
                    let y = match a.as_row() {
                        ActRow::Q8(y) => y,
                        _ => unreachable!("Q4_1 / Q5_1 take Q8 activations"),
                    };
                    let mut o2 = vec![f32::NAN; rows];
                    // SAFETY: available() reported AVX2, FMA and F16C.
                    unsafe {
                        if t == DType::Q4_1 {
                            k::rows_q8::<{ k::Q4_1 }>(&w, rb, y, &mut o2, pairs)
                        } else {
                            k::rows_q8::<{ k::Q5_1 }>(&w, rb, y, &mut o2, pairs)
                        }
                    }
                    for j in 0..rows {
                        assert_eq!(o2[j].to_bits(), out[j].to_bits(), "{t} avx2 row {j}");
                    }
                }
            }
        }
    }

    /// The 8-lane SwiGLU equals the scalar reference bit for bit, with every tail length,
    /// and stays within a few ulps of x u / (1 + e^-x), saturating cleanly.
    #[test]
    fn fast_swiglu_is_bit_identical_and_accurate() {
        let mut r = rng(6);
        for n in [1usize, 7, 8, 9, 31, 300] {
            let mut x: Vec<f32> = (0..n)
                .map(|_| (r() % 40001) as f32 / 1000.0 - 20.0)
                .collect();
            let u: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            if n > 4 {
                (x[0], x[1], x[2]) = (-200.0, 200.0, 0.0);
            }
            let (mut a, mut b) = (x.clone(), x.clone());
            swiglu_into(&mut a, &u);
            swiglu_ref(&mut b, &u);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "n={n}");
            for ((&v, &w), &s) in x.iter().zip(&u).zip(&a) {
                let want = v as f64 * w as f64 / (1.0 + (-(v as f64)).exp());
                assert!(
                    (s as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                    "{v} * {w}: {s} vs {want}"
                );
            }
        }
    }

    /// The 8-lane sigmoid equals the scalar reference bit for bit, with every tail length,
    /// and both stay within a few ulps of the exact function, saturating cleanly.
    #[test]
    fn fast_sigmoid_is_bit_identical_and_accurate() {
        let mut r = rng(5);
        for n in [1usize, 7, 8, 9, 31, 300] {
            let mut x: Vec<f32> = (0..n)
                .map(|_| (r() % 40001) as f32 / 1000.0 - 20.0)
                .collect();
            if n > 4 {
                (x[0], x[1], x[2]) = (-200.0, 200.0, 0.0);
            }
            let (mut a, mut b) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            sigmoid_into(&x, &mut a);
            sigmoid_ref(&x, &mut b);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "n={n}");
            for (&v, &s) in x.iter().zip(&a) {
                let want = 1.0 / (1.0 + (-(v as f64)).exp());
                assert!(
                    (s as f64 - want).abs() <= 1e-6 * want.max(1e-30),
                    "{v}: {s} vs {want}"
                );
            }
        }
    }
}
