//! The one matmul entry point: y = x W^T for a weight in any supported storage type.
//!
//! Weights are stored [out, in] (a row per output), activations [T, in], results [T, out].
//! This is the float path: each weight row is dequantized to f32 and dotted with f32
//! activations, so results match a float reference up to summation order. Rows are split
//! across the rayon pool.

use crate::ops::dot_f32;
use crate::pool::{for_each_chunk_mut, for_each_chunk_mut_multi, for_each_col_chunk_mut, threads};
use crate::q8::{
    ActMode, ActRow, BlockQ8, BlockQ8K, Q32, lane_corrections, quantize_q8_into, quantize_q8k_into,
    tile_q5_corrections, tile_ql, tile_qs, vec_dot_n, vec_dot_rows, vec_dot_tile,
};
use crate::quant::dequantize_row;
use crate::{DType, TensorError};

/// A borrowed 2-D weight: `rows` rows of `cols` values of type `dtype`, row after row, or
/// (`x8`, Q4_1 and Q8_0) repacked eight rows at a time (see [`crate::x8`]).
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub x8: bool,
    /// The order of a Q4_1 X8 matrix's sums ([`crate::x8::Sums`]; other matrices have one).
    pub sums: crate::x8::Sums,
}

impl<'a> Weight<'a> {
    /// Checks the geometry once so the kernels can index without failing.
    pub fn new(
        dtype: DType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, TensorError> {
        if !dtype.is_supported() {
            return Err(TensorError::Unsupported(dtype));
        }
        let rb = dtype
            .row_bytes(cols as u64)
            .ok_or(TensorError::BadRowLength { dtype, n: cols })? as usize;
        let need = rb * rows;
        if data.len() < need {
            return Err(TensorError::ShortData {
                dtype,
                need,
                have: data.len(),
            });
        }
        Ok(Weight {
            dtype,
            data: &data[..need],
            rows,
            cols,
            x8: false,
            sums: crate::x8::Sums::Lanes,
        })
    }

    /// A matrix in the X8 layout ([`crate::x8::repack`]'s output): a type with an X8 form,
    /// rows a whole number of groups of eight, `data` exactly the matrix.
    pub fn new_x8(
        dtype: DType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, TensorError> {
        if !crate::x8::supports(dtype) {
            return Err(TensorError::Unsupported(dtype));
        }
        let w = Weight::new(dtype, data, rows, cols)?;
        if !rows.is_multiple_of(crate::x8::GROUP) || data.len() != w.data.len() {
            return Err(TensorError::BadGroups { rows });
        }
        Ok(Weight { x8: true, ..w })
    }

    /// The same matrix with its Q4_1 X8 sums in order `sums` (no effect elsewhere).
    pub fn with_sums(self, sums: crate::x8::Sums) -> Self {
        Weight { sums, ..self }
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Bytes of row `r` (row-major layouts only).
    pub fn row(&self, r: usize) -> &'a [u8] {
        assert!(!self.x8, "Weight::row of a repacked matrix");
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.x8 {
            return crate::x8::dequantize_row(self.dtype, self.data, self.cols, r, out);
        }
        dequantize_row(self.dtype, self.row(r), &mut out[..self.cols])
            .expect("geometry checked in Weight::new");
    }
}

/// Rows per parallel task: enough tasks to balance two or more threads, not so many that
/// scheduling dominates.
fn chunk_rows(rows: usize) -> usize {
    let threads = threads().max(1);
    (rows / (threads * 8)).next_multiple_of(4).clamp(4, 4096)
}

/// Checks x [T, cols] and y [T, rows] against the weight and returns T.
fn token_count(w: &Weight, x: &[f32], y: &[f32]) -> usize {
    let t = x.len() / w.cols;
    assert_eq!(
        x.len(),
        t * w.cols,
        "activation length is not a multiple of the weight's columns"
    );
    assert_eq!(y.len(), t * w.rows, "output length must be T x rows");
    t
}

/// Runs `row(scratch, r, out)` for every weight row r in parallel, `out` being that row's
/// results for all T tokens, then writes them to y in token-major order. `init` makes one
/// scratch value per task.
fn by_rows<S>(
    w: &Weight,
    t: usize,
    y: &mut [f32],
    init: impl Fn() -> S + Sync + Send,
    row: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    if t == 0 {
        return;
    }
    let chunk = chunk_rows(w.rows);
    let mut yt = vec![0f32; w.rows * t];
    for_each_chunk_mut(&mut yt, chunk * t, |ci, ys| {
        let mut scratch = init();
        for (j, out) in ys.chunks_exact_mut(t).enumerate() {
            row(&mut scratch, ci * chunk + j, out);
        }
    });
    transpose_into(y, &yt, w.rows, t);
}

/// y[t, r] = yt[r, t]: per-row results back to token-major order, one token row per task
/// (serial, it was 3% of a step of eight decoding sequences, the other thread waiting).
fn transpose_into(y: &mut [f32], yt: &[f32], rows: usize, t: usize) {
    for_each_chunk_mut(&mut y[..rows * t], rows.max(1), |ti, yr| {
        for (r, o) in yr.iter_mut().enumerate() {
            *o = yt[r * t + ti];
        }
    });
}

/// y[t, r] = sum_i x[t, i] * W[r, i] for `t` in 0..T, where T = x.len() / W.cols.
pub fn matmul(w: &Weight, x: &[f32], y: &mut [f32]) {
    let k = w.cols;
    let t = token_count(w, x, y);
    if t == 0 {
        return;
    }
    if t == 1 {
        // one token: rows write straight into y, no transpose
        let chunk = chunk_rows(w.rows);
        for_each_chunk_mut(y, chunk, |ci, ys| {
            let mut buf = vec![0f32; k];
            for (j, out) in ys.iter_mut().enumerate() {
                w.dequantize_row(ci * chunk + j, &mut buf);
                *out = dot_f32(&buf, x);
            }
        });
        return;
    }
    // several tokens: dequantize each row once and reuse it for every token
    by_rows(
        w,
        t,
        y,
        || vec![0f32; k],
        |buf, r, out| {
            w.dequantize_row(r, buf);
            for (ti, o) in out.iter_mut().enumerate() {
                *o = dot_f32(buf, &x[ti * k..(ti + 1) * k]);
            }
        },
    );
}

/// The 8-bit (or float) format activations take to meet a weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActFmt {
    Q8,
    Q8K,
    F16,
    BF16,
    F32,
}

fn act_fmt(t: DType) -> ActFmt {
    match t {
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => ActFmt::Q8,
        DType::Q4K | DType::Q5K | DType::Q6K => ActFmt::Q8K,
        DType::F16 => ActFmt::F16,
        DType::BF16 => ActFmt::BF16,
        _ => ActFmt::F32,
    }
}

/// Activation rows [T, cols] quantized once for one format, in buffers reused across calls.
struct QuantActs {
    fmt: ActFmt,
    cols: usize,
    rows: usize,
    q8: Vec<BlockQ8>,
    /// For 8 rows or more of Q8 or Q8_K blocks, by groups of 8 rows, nine
    /// registers per block i: yd[(g * per + i) * 9 + n] is the scale of row 8 g + n spread
    /// over all lanes, yd[(g * per + i) * 9 + 8] the eight rows' `s` (Q8) or scales (Q8_K)
    /// (see `avx2::tile_q8x8`, `avx2::tile_k8`). Empty otherwise.
    yd: Vec<[f32; 8]>,
    /// For 8 rows or more of Q8 blocks, their values interleaved by group of 8 rows and
    /// block (`q8::tile_qs`): the 32-value tile kernels' copy, made on the first call for
    /// a weight type that reads it (all but Q8_0). Empty otherwise.
    qt: Vec<Q32>,
    /// Likewise, the Q8_0 lane kernel's copy (`q8::tile_ql`): values of each group's eight
    /// rows side by side, and `dq` their scales, per group and block.
    ql: Vec<Q32>,
    dq: Vec<[f32; 8]>,
    /// With VNNI, the lane kernel's start values per group and block
    /// (`q8::lane_corrections`). Empty otherwise.
    qc: Vec<[i32; 8]>,
    /// With VNNI and Q5_0 weights, their kernel's start values, laid out as `qt`
    /// (`q8::tile_q5_corrections`). Empty otherwise.
    q5c: Vec<[i32; 8]>,
    q8k: Vec<BlockQ8K>,
    f: Vec<f32>,
    /// For Q8_0 and Q5_0 weights in the X8 layout, each row's start values
    /// ([`crate::x8::corrections`]), made on the first call that needs them. Empty
    /// otherwise.
    xc8: Vec<i32>,
    xc5: Vec<i32>,
}

impl QuantActs {
    fn new(fmt: ActFmt) -> Self {
        QuantActs {
            fmt,
            cols: 0,
            rows: 0,
            q8: Vec::new(),
            yd: Vec::new(),
            qt: Vec::new(),
            ql: Vec::new(),
            dq: Vec::new(),
            qc: Vec::new(),
            q5c: Vec::new(),
            q8k: Vec::new(),
            f: Vec::new(),
            xc8: Vec::new(),
            xc5: Vec::new(),
        }
    }

    fn fill(&mut self, x: &[f32], cols: usize) {
        let rows = x.len() / cols;
        (self.rows, self.cols) = (rows, cols);
        match self.fmt {
            ActFmt::Q8 => {
                self.q8.resize(x.len() / 32, BlockQ8::ZERO);
                let per = cols / 32;
                // rows in parallel for prompts; a batch of decoding sequences' few rows take
                // less than a parallel section costs
                if rows >= 16 {
                    for_each_chunk_mut(&mut self.q8, per, |i, o| {
                        quantize_q8_into(&x[i * cols..(i + 1) * cols], o)
                    });
                } else {
                    for (o, r) in self.q8.chunks_mut(per).zip(x.chunks_exact(cols)) {
                        quantize_q8_into(r, o);
                    }
                }
                let q8 = &self.q8;
                scale_table(&mut self.yd, rows, per, |r, i| {
                    (q8[r * per + i].d, q8[r * per + i].s)
                });
                self.qt.clear();
                self.xc8.clear();
                self.xc5.clear();
                self.ql.clear();
                self.dq.clear();
                self.qc.clear();
                self.q5c.clear();
            }
            ActFmt::Q8K => {
                let per = cols / 256;
                self.q8k.resize(x.len() / 256, crate::q8::BlockQ8K::ZERO);
                let fill = |i: usize, o: &mut [BlockQ8K]| {
                    quantize_q8k_into(&x[i * cols..(i + 1) * cols], o)
                };
                if rows >= 8 {
                    for_each_chunk_mut(&mut self.q8k, per, fill);
                } else {
                    for (i, o) in self.q8k.chunks_mut(per).enumerate() {
                        fill(i, o);
                    }
                }
                let q8k = &self.q8k;
                scale_table(&mut self.yd, rows, per, |r, i| {
                    (q8k[r * per + i].d, q8k[r * per + i].d)
                });
            }
            ActFmt::F16 => {
                self.f.clear();
                self.f.extend_from_slice(x);
                crate::q8::round_f16_slice(&mut self.f);
            }
            ActFmt::BF16 => {
                self.f.clear();
                self.f
                    .extend(x.iter().map(|&v| half::bf16::from_f32(v).to_f32()));
            }
            ActFmt::F32 => {
                self.f.clear();
                self.f.extend_from_slice(x);
            }
        }
    }

    /// Makes the tile copy weight type `t` reads (Q8 activations of 8 rows or more), if
    /// this fill has not made it yet.
    fn tiles_for(&mut self, t: DType) {
        if self.fmt != ActFmt::Q8 || self.rows < 8 {
            return;
        }
        let (per, groups, q8) = (self.cols / 32, self.rows / 8, &self.q8);
        let rows8 = |g: usize| -> [&[BlockQ8]; 8] {
            std::array::from_fn(|n| &q8[(8 * g + n) * per..(8 * g + n + 1) * per])
        };
        if t == DType::Q8_0 {
            if self.ql.is_empty() {
                self.ql.resize(groups * per * 8, Q32::ZERO);
                for_each_chunk_mut(&mut self.ql, per * 8, |g, o| tile_ql(rows8(g), o));
                self.dq.extend((0..groups * per).map(|gi| {
                    let (g, i) = (gi / per, gi % per);
                    std::array::from_fn(|n| q8[(8 * g + n) * per + i].d)
                }));
                #[cfg(target_arch = "x86_64")]
                if crate::avx2::vnni() {
                    self.qc.resize(groups * per, [0; 8]);
                    for_each_chunk_mut(&mut self.qc, per, |g, o| lane_corrections(rows8(g), o));
                }
            }
        } else {
            if self.qt.is_empty() {
                self.qt.resize(groups * per * 8, Q32::ZERO);
                for_each_chunk_mut(&mut self.qt, per * 8, |g, o| tile_qs(rows8(g), o));
            }
            #[cfg(target_arch = "x86_64")]
            if t == DType::Q5_0 && self.q5c.is_empty() && crate::avx2::vnni() {
                self.q5c.resize(groups * per * 8, [0; 8]);
                for_each_chunk_mut(&mut self.q5c, per * 8, |g, o| {
                    tile_q5_corrections(rows8(g), o)
                });
            }
        }
    }

    /// Row r's Q8 blocks (Q8 format only).
    #[inline]
    fn q8_row(&self, r: usize) -> &[BlockQ8] {
        let per = self.cols / 32;
        &self.q8[r * per..(r + 1) * per]
    }

    /// Row r's X8 start values for weights of type `t` (empty unless
    /// [`QuantActs::x8_for`] made them).
    #[inline]
    fn xc_row(&self, t: DType, r: usize) -> &[i32] {
        let per = self.cols / 32 * crate::x8::corrections_per_block(t);
        let xc = if t == DType::Q5_0 {
            &self.xc5
        } else {
            &self.xc8
        };
        xc.get(r * per..(r + 1) * per).unwrap_or(&[])
    }

    /// Makes what X8 weights of type `t` read besides the blocks: Q8_0's and Q5_0's start
    /// values.
    fn x8_for(&mut self, t: DType) {
        if crate::x8::corrections_per_block(t) == 0 || self.fmt != ActFmt::Q8 {
            return;
        }
        let mut xc = std::mem::take(if t == DType::Q5_0 {
            &mut self.xc5
        } else {
            &mut self.xc8
        });
        if xc.is_empty() {
            let mut row = Vec::new();
            for r in 0..self.rows {
                crate::x8::corrections(t, self.q8_row(r), &mut row);
                xc.extend_from_slice(&row);
            }
        }
        *(if t == DType::Q5_0 {
            &mut self.xc5
        } else {
            &mut self.xc8
        }) = xc;
    }

    #[inline]
    fn row(&self, r: usize) -> ActRow<'_> {
        match self.fmt {
            ActFmt::Q8 => {
                let per = self.cols / 32;
                ActRow::Q8(&self.q8[r * per..(r + 1) * per])
            }
            ActFmt::Q8K => {
                let per = self.cols / 256;
                ActRow::Q8K(&self.q8k[r * per..(r + 1) * per])
            }
            _ => ActRow::Float(&self.f[r * self.cols..(r + 1) * self.cols]),
        }
    }
}

/// The tile kernels' scale table (see `QuantActs::yd`) for `rows` activation rows of `per`
/// blocks, from 8 rows up (empty below): `block(r, i)` gives block i of row r's scale and
/// the value of table entry 8 (`s` for Q8, the scale again for Q8_K).
fn scale_table(
    yd: &mut Vec<[f32; 8]>,
    rows: usize,
    per: usize,
    block: impl Fn(usize, usize) -> (f32, f32),
) {
    yd.clear();
    for g in 0..rows / 8 {
        for i in 0..per {
            for n in 0..8 {
                yd.push([block(8 * g + n, i).0; 8]);
            }
            yd.push(std::array::from_fn(|n| block(8 * g + n, i).1));
        }
    }
}

/// One input's activations, quantized lazily once per format and reused by every weight
/// that reads the same input (q, k and v; gate and up). Call [`ActCache::set`] whenever the
/// input changes; buffers are kept between calls, so a decode step allocates nothing.
pub struct ActCache {
    sets: Vec<QuantActs>,
    fresh: Vec<bool>,
}

impl Default for ActCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ActCache {
    pub fn new() -> Self {
        ActCache {
            sets: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Marks every quantized copy stale (the input changed).
    pub fn set(&mut self) {
        self.fresh.iter_mut().for_each(|f| *f = false);
    }

    /// The quantized copy for weight type `t`, made by an earlier [`ActCache::get`].
    fn peek(&self, t: DType) -> &QuantActs {
        let fmt = act_fmt(t);
        self.sets
            .iter()
            .find(|s| s.fmt == fmt)
            .expect("ActCache::peek before get")
    }

    /// [`ActCache::get`] without the prompt kernels' tile copies: the blocks as they are,
    /// which the one-token kernels read, and for an X8 weight what its kernels read besides.
    fn get_plain(&mut self, w: &Weight, x: &[f32]) -> &QuantActs {
        let i = self.fill_for(w.dtype, x, w.cols);
        if w.x8 {
            self.sets[i].x8_for(w.dtype);
        }
        &self.sets[i]
    }

    fn fill_for(&mut self, t: DType, x: &[f32], cols: usize) -> usize {
        let fmt = act_fmt(t);
        let i = match self.sets.iter().position(|s| s.fmt == fmt) {
            Some(i) => i,
            None => {
                self.sets.push(QuantActs::new(fmt));
                self.fresh.push(false);
                self.sets.len() - 1
            }
        };
        if !self.fresh[i] || self.sets[i].rows * self.sets[i].cols != x.len() {
            self.sets[i].fill(x, cols);
            self.fresh[i] = true;
        }
        i
    }

    fn get(&mut self, t: DType, x: &[f32], cols: usize) -> &QuantActs {
        let i = self.fill_for(t, x, cols);
        self.sets[i].tiles_for(t);
        &self.sets[i]
    }
}

/// Prompt tiles: tokens per kernel call (one row at a time, 16 rows per call).
const TILE_N: usize = 8;

/// One task of the prompt path: tokens t0.. (as many as `ys` holds) against every weight
/// row, in blocks of 16 rows (they stay in L1), each row dotted with N tokens at a time.
fn group_tiles<const N: usize>(dt: DType, w: &Weight, acts: &QuantActs, t0: usize, ys: &mut [f32]) {
    let rows = w.rows;
    let n = ys.len() / rows;
    for r0 in (0..rows).step_by(16) {
        let r1 = (r0 + 16).min(rows);
        let mut ti = 0;
        if N == 8 {
            ti = tile8(dt, w, r0..r1, acts, t0, n / 8, &mut ys[r0..], rows);
        }
        while ti + N <= n {
            let a: [ActRow; N] = std::array::from_fn(|k| acts.row(t0 + ti + k));
            let mut out = [[0f32; N]; 16];
            let out = &mut out[..r1 - r0];
            let rb = w.row_bytes();
            vec_dot_tile(dt, &w.data[r0 * rb..r1 * rb], rb, a, out);
            for (j, o) in out.iter().enumerate() {
                for k in 0..N {
                    ys[(ti + k) * rows + r0 + j] = o[k];
                }
            }
            ti += N;
        }
        for tj in ti..n {
            let a = acts.row(t0 + tj);
            for r in r0..r1 {
                ys[tj * rows + r] = vec_dot_n(dt, w.row(r), [a])[0];
            }
        }
    }
}

/// Weight rows `rows` (at most 16) against `groups` groups of eight activation rows from
/// `t0` (a multiple of 8, with the scale table made: 8 rows or more) by the 8-token
/// kernels, written token-major: out[n * out_stride + r - rows.start]. Returns the number
/// of tokens done: 8 x groups, or 0 where no such kernel runs (weight type, CPU).
#[allow(clippy::too_many_arguments)]
fn tile8(
    dt: DType,
    w: &Weight,
    rows: std::ops::Range<usize>,
    acts: &QuantActs,
    t0: usize,
    groups: usize,
    out: &mut [f32],
    out_stride: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() && !acts.yd.is_empty() {
        use crate::avx2::{self as k, SCALE_ROWS};
        let (g, rb, nr) = (t0 / 8, w.row_bytes(), rows.len());
        let wb = &w.data[rows.start * rb..rows.end * rb];
        match dt {
            DType::Q8_0 => {
                let per = w.cols / 32;
                let ql = &acts.ql[g * per * 8..(g + groups) * per * 8];
                let dq = &acts.dq[g * per..(g + groups) * per];
                if k::vnni() {
                    let qc = &acts.qc[g * per..(g + groups) * per];
                    // SAFETY: the CPU reported AVX2, FMA, F16C and AVX-512 VNNI, VL and BW.
                    unsafe {
                        k::tiles_q8_0_lanes_vnni(wb, rb, nr, groups, ql, dq, qc, out, out_stride)
                    };
                    return 8 * groups;
                }
                // SAFETY: the CPU reported AVX2, FMA and F16C, which the kernel enables.
                unsafe { k::tiles_q8_0_lanes(wb, rb, nr, groups, ql, dq, out, out_stride) };
                return 8 * groups;
            }
            DType::Q5_0 | DType::Q4_1 | DType::Q5_1 => {
                let per = w.cols / 32;
                let (g1, o) = (g + groups, out_stride);
                let qt = &acts.qt[g * per * 8..g1 * per * 8];
                let yd = &acts.yd[g * per * SCALE_ROWS..g1 * per * SCALE_ROWS];
                if k::vnni() {
                    let q5c: &[[i32; 8]] = if dt == DType::Q5_0 {
                        &acts.q5c[g * per * 8..g1 * per * 8]
                    } else {
                        &[]
                    };
                    // SAFETY: the CPU reported AVX2, FMA, F16C and AVX-512 VNNI, VL and BW.
                    unsafe {
                        match dt {
                            DType::Q5_0 => k::tiles_q8x8_vnni::<{ k::Q5_0 }>(
                                wb, rb, nr, groups, qt, q5c, yd, out, o,
                            ),
                            DType::Q4_1 => k::tiles_q8x8_vnni::<{ k::Q4_1 }>(
                                wb, rb, nr, groups, qt, q5c, yd, out, o,
                            ),
                            _ => k::tiles_q8x8_vnni::<{ k::Q5_1 }>(
                                wb, rb, nr, groups, qt, q5c, yd, out, o,
                            ),
                        }
                    }
                    return 8 * groups;
                }
                // SAFETY: the CPU reported AVX2, FMA and F16C, which the kernels enable.
                unsafe {
                    match dt {
                        DType::Q5_0 => {
                            k::tiles_q8x8::<{ k::Q5_0 }>(wb, rb, nr, groups, qt, yd, out, o)
                        }
                        DType::Q4_1 => {
                            k::tiles_q8x8::<{ k::Q4_1 }>(wb, rb, nr, groups, qt, yd, out, o)
                        }
                        _ => k::tiles_q8x8::<{ k::Q5_1 }>(wb, rb, nr, groups, qt, yd, out, o),
                    }
                }
                return 8 * groups;
            }
            DType::Q4K | DType::Q5K | DType::Q6K => {
                let per = w.cols / 256;
                for j in 0..groups {
                    let t = t0 + 8 * j;
                    let ys: [&[BlockQ8K]; 8] = std::array::from_fn(|m| match acts.row(t + m) {
                        ActRow::Q8K(y) => y,
                        _ => unreachable!("K-type weights meet Q8_K activations"),
                    });
                    let gj = g + j;
                    let yd = &acts.yd[gj * per * SCALE_ROWS..(gj + 1) * per * SCALE_ROWS];
                    let out = &mut out[8 * j * out_stride..];
                    let o = out_stride;
                    // SAFETY: as above; the VNNI kernels only where vnni() reported it.
                    unsafe {
                        match (dt, k::vnni()) {
                            (DType::Q4K, true) => k::tile_k8_vnni::<4>(wb, rb, nr, ys, yd, out, o),
                            (DType::Q5K, true) => k::tile_k8_vnni::<5>(wb, rb, nr, ys, yd, out, o),
                            (_, true) => k::tile_k8_vnni::<6>(wb, rb, nr, ys, yd, out, o),
                            (DType::Q4K, false) => k::tile_k8::<4>(wb, rb, nr, ys, yd, out, o),
                            (DType::Q5K, false) => k::tile_k8::<5>(wb, rb, nr, ys, yd, out, o),
                            _ => k::tile_k8::<6>(wb, rb, nr, ys, yd, out, o),
                        }
                    }
                }
                return 8 * groups;
            }
            _ => {}
        }
    }
    let _ = (dt, w, rows, acts, t0, groups, out, out_stride);
    0
}

/// [`matmul_cached`] of K weights that read the same input (q, k and v; gate and up). For
/// one token in [`ActMode::Q8`] the rows of all K go to the threads in one parallel section
/// (a decode step runs hundreds of them); otherwise one weight after another. The results
/// are bit for bit [`matmul_cached`]'s.
pub fn matmul_cached_multi<const K: usize>(
    ws: [&Weight; K],
    x: &[f32],
    ys: [&mut [f32]; K],
    mode: ActMode,
    cache: &mut ActCache,
) {
    let one = ws
        .iter()
        .zip(&ys)
        .all(|(w, y)| w.cols == x.len() && y.len() == w.rows && !matches!(w.dtype, DType::F32));
    let t = x.len() / ws.first().map_or(1, |w| w.cols.max(1));
    let few_x8 = (2..16).contains(&t)
        && ws
            .iter()
            .zip(&ys)
            .all(|(w, y)| w.x8 && w.cols * t == x.len() && y.len() == t * w.rows);
    if mode == ActMode::Q8 && few_x8 {
        // a batch of sequences: every weight's row pieces in one section
        for w in &ws {
            cache.get_plain(w, x);
        }
        let acts: [&QuantActs; K] = std::array::from_fn(|k| cache.peek(ws[k].dtype));
        let rows: usize = ws.iter().map(|w| w.rows).sum();
        let chunk = chunk_rows(rows).next_multiple_of(crate::x8::GROUP);
        let strides = ws.map(|w| w.rows);
        crate::pool::for_each_col_chunk_mut_multi(ys, strides, [chunk; K], |k, _, cols| {
            x8_cols(ws[k], acts[k], t, cols)
        });
        return;
    }
    if mode == ActMode::F32 || !one {
        for (w, y) in ws.into_iter().zip(ys) {
            matmul_cached(w, x, y, mode, cache);
        }
        return;
    }
    for w in &ws {
        cache.get_plain(w, x);
    }
    let acts: [&QuantActs; K] = std::array::from_fn(|k| cache.peek(ws[k].dtype));
    let rows: usize = ws.iter().map(|w| w.rows).sum();
    let mut chunk = chunk_rows(rows);
    if ws.iter().any(|w| w.x8) {
        chunk = chunk.next_multiple_of(crate::x8::GROUP);
    }
    for_each_chunk_mut_multi(ys, [chunk; K], |k, ci, out| {
        let w = ws[k];
        let dt = w.dtype;
        if w.x8 {
            let gb = w.cols / 32 * crate::x8::group_block(dt);
            let g0 = ci * chunk / crate::x8::GROUP;
            let wb = &w.data[g0 * gb..(g0 + out.len() / crate::x8::GROUP) * gb];
            let (a, c) = (acts[k].q8_row(0), acts[k].xc_row(dt, 0));
            let n = out.len();
            return crate::x8::tile::<1>(dt, w.sums, wb, w.cols / 32, [a], [c], out, n);
        }
        let pairs = matches!(dt, DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1);
        let (rb, r0) = (w.row_bytes(), ci * chunk);
        let a = acts[k].row(0);
        vec_dot_rows(
            dt,
            &w.data[r0 * rb..(r0 + out.len()) * rb],
            rb,
            a,
            out,
            pairs,
        );
    });
}

/// Like [`matmul`], with activations meeting the weights as `mode` says. In
/// [`ActMode::Q8`] each activation row is quantized once, then every weight row is dotted
/// with it in integer arithmetic.
pub fn matmul_with(w: &Weight, x: &[f32], y: &mut [f32], mode: ActMode) {
    let mut cache = ActCache::new();
    matmul_cached(w, x, y, mode, &mut cache);
}

/// [`matmul_with`] reusing the quantized activations in `cache` (see [`ActCache`]).
pub fn matmul_cached(w: &Weight, x: &[f32], y: &mut [f32], mode: ActMode, cache: &mut ActCache) {
    if mode == ActMode::F32 || matches!(w.dtype, DType::F32) {
        return matmul(w, x, y);
    }
    let t = token_count(w, x, y);
    if t == 0 {
        return;
    }
    if w.x8 {
        return matmul_x8(w, x, y, t, cache);
    }
    let acts = cache.get(w.dtype, x, w.cols);
    let dt = w.dtype;
    if t == 1 {
        let a = acts.row(0);
        let chunk = chunk_rows(w.rows);
        // Rows in pairs for the 4- and 5-bit block types: two independent accumulator chains
        // hide the latency of their longer per-block work. Q8_0 and the K types stream
        // fastest one row at a time. (Measured on SmolLM2, one thread, 64 tokens: Q4_1 file
        // 40 tok/s single rows, 55-59 pairs, 51-56 fours; Q8_0 file 52-57 single, 46-47 pairs.)
        let pairs = matches!(dt, DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1);
        let rb = w.row_bytes();
        for_each_chunk_mut(y, chunk, |ci, ys| {
            // one row (or pair) at a time: one sequential weight stream per thread streams
            // fastest (measured: 4 rows side by side were 20-30% slower)
            let r0 = ci * chunk;
            vec_dot_rows(dt, &w.data[r0 * rb..(r0 + ys.len()) * rb], rb, a, ys, pairs);
        });
        return;
    }
    if t >= 16 {
        // many tokens: each task takes a group of tokens and walks the weight in blocks of
        // rows small enough to stay in L1, dotting each row with TILE_N tokens at a time
        let threads = threads().max(1);
        // about 32 tokens per task (each task streams the whole weight once, from L2/L3),
        // and a task count that is a multiple of the thread count. A thread that finishes
        // its run waits at most one task for the other (see `pool`): with 64-token tasks the
        // two threads of a Gemma-3 pp512 waited 7.3% of their samples, with 32 5.3%
        // (pp512 at two threads, interleaved: Gemma-3 Q8_0 351 -> 378 t/s median, SmolLM2
        // Q4_1 349 -> 352, Q8_0 368 -> 405)
        let tasks = threads * t.div_ceil(threads * 32).max(1);
        let group = t.div_ceil(tasks).next_multiple_of(TILE_N);
        let rows = w.rows;
        // 1 row x 8 tokens per call (8 accumulators; measured by CPU time on SmolLM2 pp480,
        // one thread: Q8_0 6.2-6.9 s against 7.1-8.2 s for 2 rows x 4 tokens, 8.5-9.3 s for
        // 2 x 3 and 7.9-8.9 s for 3 x 2; Gemma-3's K types 2-5% faster with 8 than with 4)
        for_each_chunk_mut(y, group * rows, |gi, ys| {
            group_tiles::<TILE_N>(dt, w, acts, gi * group, ys);
        });
        return;
    }
    // a few tokens (a batch of decoding sequences): rows split across threads in blocks of
    // 16, each block dotted with up to 8 tokens per kernel call, so every weight block is
    // loaded and unpacked once for all the tokens; each task writes its rows' results
    // straight into y's token rows (a row-major buffer and a transpose section after it
    // were 4% of a step of eight sequences)
    let chunk = chunk_rows(w.rows).next_multiple_of(16);
    few_tokens(dt, w, acts, t, chunk, y);
}

/// [`matmul_cached`] of an X8 matrix ([`crate::x8`]): T tokens in [`ActMode::Q8`], every
/// path reading the repacked groups with up to eight tokens per kernel call.
fn matmul_x8(w: &Weight, x: &[f32], y: &mut [f32], t: usize, cache: &mut ActCache) {
    use crate::x8::GROUP;
    let dt = w.dtype;
    let acts = cache.get_plain(w, x);
    let nb = w.cols / 32;
    let gb = nb * crate::x8::group_block(dt);
    let rows = w.rows;
    if t < 16 {
        // one token or a batch of sequences: rows split across threads (one stream each)
        let chunk = chunk_rows(rows).next_multiple_of(GROUP);
        if t == 1 {
            let (a, c) = (acts.q8_row(0), acts.xc_row(dt, 0));
            for_each_chunk_mut(y, chunk, |ci, ys| {
                let g0 = ci * chunk / GROUP;
                let wb = &w.data[g0 * gb..(g0 + ys.len() / GROUP) * gb];
                let n = ys.len();
                crate::x8::tile::<1>(dt, w.sums, wb, nb, [a], [c], ys, n);
            });
            return;
        }
        for_each_col_chunk_mut(&mut y[..rows * t], rows, chunk, |_, cols| {
            x8_cols(w, acts, t, cols)
        });
        return;
    }
    // prompts: each task a group of about 32 tokens against the whole weight, 32 rows at a
    // time (they stay in L1) with 8 tokens per call
    let threads = threads().max(1);
    let tasks = threads * t.div_ceil(threads * 32).max(1);
    let group = t.div_ceil(tasks).next_multiple_of(8);
    for_each_chunk_mut(y, group * rows, |gi, ys| {
        let (t0, n) = (gi * group, ys.len() / rows);
        for g0 in (0..rows / GROUP).step_by(4) {
            let g1 = (g0 + 4).min(rows / GROUP);
            let wb = &w.data[g0 * gb..g1 * gb];
            let mut ti = 0;
            while ti < n {
                let m = (n - ti).min(8);
                let out = &mut ys[ti * rows + g0 * GROUP..];
                x8_call(dt, w.sums, m, wb, nb, acts, t0 + ti, out, rows);
                ti += m;
            }
        }
    });
}

/// One task of an X8 matmul of a few tokens: the view's columns (a whole number of groups
/// of rows) for all `t` tokens, 32 rows at a time (in L1 while every token passes), up to
/// 8 tokens per kernel call.
fn x8_cols(w: &Weight, acts: &QuantActs, t: usize, mut cols: crate::pool::ColsMut<'_, f32>) {
    use crate::x8::GROUP;
    let nb = w.cols / 32;
    let gb = nb * crate::x8::group_block(w.dtype);
    let (r0, n) = (cols.first_col(), cols.width());
    let mut buf = [0f32; 8 * 32];
    for b0 in (0..n).step_by(32) {
        let b1 = (b0 + 32).min(n);
        let wb = &w.data[(r0 + b0) / GROUP * gb..(r0 + b1) / GROUP * gb];
        let stride = b1 - b0;
        let mut ti = 0;
        while ti < t {
            let m = (t - ti).min(8);
            x8_call(w.dtype, w.sums, m, wb, nb, acts, ti, &mut buf, stride);
            for k in 0..m {
                cols.row(ti + k)[b0..b1].copy_from_slice(&buf[k * stride..(k + 1) * stride]);
            }
            ti += m;
        }
    }
}

/// [`crate::x8::tile`] for `m` (1..=8) activation rows from `t0`.
#[allow(clippy::too_many_arguments)]
fn x8_call(
    dt: DType,
    sums: crate::x8::Sums,
    m: usize,
    wb: &[u8],
    nb: usize,
    acts: &QuantActs,
    t0: usize,
    out: &mut [f32],
    stride: usize,
) {
    use crate::x8::tile;
    macro_rules! call {
        ($n:literal) => {
            tile::<$n>(
                dt,
                sums,
                wb,
                nb,
                std::array::from_fn(|k| acts.q8_row(t0 + k)),
                std::array::from_fn(|k| acts.xc_row(dt, t0 + k)),
                out,
                stride,
            )
        };
    }
    match m {
        8 => call!(8),
        7 => call!(7),
        6 => call!(6),
        5 => call!(5),
        4 => call!(4),
        3 => call!(3),
        2 => call!(2),
        _ => call!(1),
    }
}

/// The few-token path: y ([T, rows], every element written) in blocks of 16 weight rows,
/// `chunk` rows per task, each block dotted with up to 8 tokens per kernel call.
fn few_tokens(dt: DType, w: &Weight, acts: &QuantActs, t: usize, chunk: usize, y: &mut [f32]) {
    for_each_col_chunk_mut(&mut y[..w.rows * t], w.rows, chunk, |_, mut cols| {
        let (r0, n) = (cols.first_col(), cols.width());
        let mut block = [0f32; 16 * 16];
        for b0 in (0..n).step_by(16) {
            let b1 = (b0 + 16).min(n);
            let rows = r0 + b0..r0 + b1;
            // [rows, T] row-major for this block
            let block = &mut block[..rows.len() * t];
            let ti = tiles::<8>(dt, w, acts, rows.clone(), 0, block);
            // the rest in one call: seven tokens as 4 + 2 + 1 unpacked every weight block
            // three times (a step of seven sequences ran fewer tokens/s than one of four)
            let r = rows.clone();
            match t - ti {
                7 => tiles::<7>(dt, w, acts, r, ti, block),
                6 => tiles::<6>(dt, w, acts, r, ti, block),
                5 => tiles::<5>(dt, w, acts, r, ti, block),
                4 => tiles::<4>(dt, w, acts, r, ti, block),
                3 => tiles::<3>(dt, w, acts, r, ti, block),
                2 => tiles::<2>(dt, w, acts, r, ti, block),
                _ => tiles::<1>(dt, w, acts, r, ti, block),
            };
            for tok in 0..t {
                let out = &mut cols.row(tok)[b0..b1];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = block[j * t + tok];
                }
            }
        }
    });
}

/// Weight rows `rows` (at most 16) against tokens ti.. in groups of N while N remain;
/// `ys` is [rows, T] row-major. Returns the first token not done.
fn tiles<const N: usize>(
    dt: DType,
    w: &Weight,
    acts: &QuantActs,
    rows: std::ops::Range<usize>,
    mut ti: usize,
    ys: &mut [f32],
) -> usize {
    let t = ys.len() / rows.len();
    let rb = w.row_bytes();
    if N == 8 {
        let mut tmp = [0f32; 8 * 16];
        while ti + 8 <= t && tile8(dt, w, rows.clone(), acts, ti, 1, &mut tmp, 16) == 8 {
            for j in 0..rows.len() {
                for k in 0..8 {
                    ys[j * t + ti + k] = tmp[k * 16 + j];
                }
            }
            ti += 8;
        }
    }
    while ti + N <= t {
        let a: [ActRow; N] = std::array::from_fn(|k| acts.row(ti + k));
        let mut out = [[0f32; N]; 16];
        let out = &mut out[..rows.len()];
        vec_dot_tile(dt, &w.data[rows.start * rb..rows.end * rb], rb, a, out);
        for (j, o) in out.iter().enumerate() {
            ys[j * t + ti..j * t + ti + N].copy_from_slice(o);
        }
        ti += N;
    }
    ti
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_f32_matches_naive_for_one_and_many_tokens() {
        let (rows, cols) = (37, 64);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let bytes: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w = Weight::new(DType::F32, &bytes, rows, cols).unwrap();
        for t in [1usize, 3] {
            let x: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut y = vec![0f32; t * rows];
            matmul(&w, &x, &mut y);
            for ti in 0..t {
                for r in 0..rows {
                    let naive: f32 = (0..cols).map(|i| wf[r * cols + i] * x[ti * cols + i]).sum();
                    assert!((y[ti * rows + r] - naive).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn weight_rejects_short_data_and_ragged_rows() {
        assert!(Weight::new(DType::Q8_0, &[0u8; 33], 1, 32).is_err());
        assert!(Weight::new(DType::Q8_0, &[0u8; 34], 1, 31).is_err());
        assert!(Weight::new(DType::Q8_1, &[0u8; 36], 1, 32).is_err());
    }

    /// Weights multiplied together in one section give what each gives alone, for one token
    /// (the fused path, mixed types) and for several (one after another).
    #[test]
    fn multi_matmul_equals_each_alone() {
        crate::pool::init(2);
        let cols = 256;
        let make = |dt: DType, rows: usize, seed: usize| {
            let wf: Vec<f32> = (0..rows * cols)
                .map(|i| (((i + seed) * 7919 % 2001) as f32) / 1000.0 - 1.0)
                .collect();
            crate::quantize::quantize_rows(dt, &wf, cols).unwrap()
        };
        let specs = [(DType::Q4_1, 70), (DType::Q8_0, 33), (DType::Q4K, 18)];
        let bytes: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(dt, r))| make(dt, r, i))
            .collect();
        let ws: Vec<Weight> = specs
            .iter()
            .zip(&bytes)
            .map(|(&(dt, r), b)| Weight::new(dt, b, r, cols).unwrap())
            .collect();
        for t in [1usize, 3] {
            let x: Vec<f32> = (0..t * cols)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; t * w.rows]).collect();
            let [a, b, c] = &mut ys[..] else {
                unreachable!()
            };
            let mut cache = ActCache::new();
            matmul_cached_multi(
                [&ws[0], &ws[1], &ws[2]],
                &x,
                [a, b, c],
                ActMode::Q8,
                &mut cache,
            );
            for (w, y) in ws.iter().zip(&ys) {
                let mut want = vec![0f32; t * w.rows];
                matmul_with(w, &x, &mut want, ActMode::Q8);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(y), bits(&want), "{} T={t}", w.dtype);
            }
        }
    }

    /// Every batching path (one token, a few, a tiled group) gives each output exactly what
    /// one token alone gives: a prompt processed at once equals it processed token by token.
    #[test]
    fn q8_matmul_paths_agree_bit_for_bit() {
        crate::pool::init(2);
        let (rows, cols) = (70, 256);
        for dt in [DType::Q4_1, DType::Q8_0, DType::Q4K, DType::Q6K, DType::F16] {
            let mut state = 12345u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let wf: Vec<f32> = (0..rows * cols)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let bytes = crate::quantize::quantize_rows(dt, &wf, cols).unwrap();
            let w = Weight::new(dt, &bytes, rows, cols).unwrap();
            for t in [1usize, 2, 3, 5, 6, 7, 8, 13, 15, 16, 37] {
                let x: Vec<f32> = (0..t * cols)
                    .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                    .collect();
                let mut batch = vec![0f32; t * rows];
                matmul_with(&w, &x, &mut batch, ActMode::Q8);
                for ti in 0..t {
                    let mut one = vec![0f32; rows];
                    matmul_with(&w, &x[ti * cols..(ti + 1) * cols], &mut one, ActMode::Q8);
                    for r in 0..rows {
                        assert_eq!(
                            one[r].to_bits(),
                            batch[ti * rows + r].to_bits(),
                            "{dt} T={t} token {ti} row {r}"
                        );
                    }
                }
            }
        }
    }

    /// Repacked matrices (X8, Q4_1 and Q8_0): every path (one token, a few, a prompt's
    /// groups, the fused multi-weight sections) gives each output bit for bit the X8
    /// reference of that token alone and the row-major kernels' result; the f32 mode reads
    /// the same values.
    #[test]
    fn x8_matmul_paths_equal_the_reference() {
        crate::pool::init(2);
        let (rows, cols) = (72, 256);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 2001) as f32) / 1000.0 - 1.0)
            .collect();
        for dt in [DType::Q4_1, DType::Q5_0, DType::Q8_0] {
            let bytes = crate::quantize::quantize_rows(dt, &wf, cols).unwrap();
            let packed = crate::x8::repack(dt, &bytes, rows, cols).unwrap();
            let w = Weight::new(dt, &bytes, rows, cols).unwrap();
            let wx = Weight::new_x8(dt, &packed, rows, cols).unwrap();
            let short = &packed[..packed.len() - crate::x8::group_block(dt)];
            assert!(Weight::new_x8(dt, short, rows - 1, cols).is_err());
            assert!(Weight::new_x8(DType::Q4_0, &packed, rows, cols).is_err());
            let gb = cols / 32 * crate::x8::group_block(dt);
            for t in [1usize, 2, 3, 5, 7, 8, 9, 13, 15, 16, 17, 37, 64] {
                let x: Vec<f32> = (0..t * cols)
                    .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                    .collect();
                let mut got = vec![f32::NAN; t * rows];
                matmul_with(&wx, &x, &mut got, ActMode::Q8);
                let mut rowmajor = vec![0f32; t * rows];
                matmul_with(&w, &x, &mut rowmajor, ActMode::Q8);
                for ti in 0..t {
                    let a = crate::q8::quantize_q8(&x[ti * cols..(ti + 1) * cols]);
                    for g in 0..rows / 8 {
                        let grp = &packed[g * gb..(g + 1) * gb];
                        let want = crate::x8::dot_ref(dt, crate::x8::Sums::Lanes, grp, [&a[..]])[0];
                        for (j, wv) in want.iter().enumerate() {
                            let r = g * 8 + j;
                            let v = got[ti * rows + r];
                            assert_eq!(v.to_bits(), wv.to_bits(), "{dt} T={t} token {ti} row {r}");
                            let rm = rowmajor[ti * rows + r];
                            assert_eq!(v.to_bits(), rm.to_bits(), "{dt} T={t} row {r} row-major");
                        }
                    }
                }
                let (mut f1, mut f2) = (vec![0f32; t * rows], vec![0f32; t * rows]);
                matmul_with(&wx, &x, &mut f1, ActMode::F32);
                matmul_with(&w, &x, &mut f2, ActMode::F32);
                assert_eq!(f1, f2, "{dt} f32 mode T={t}");
            }
        }
        // the fused sections: one token with an X8 weight beside a row-major one, then a
        // batch of 5 tokens with two X8 weights of both types
        let b41 = crate::quantize::quantize_rows(DType::Q4_1, &wf, cols).unwrap();
        let p41 = crate::x8::repack(DType::Q4_1, &b41, rows, cols).unwrap();
        let w41 = Weight::new_x8(DType::Q4_1, &p41, rows, cols).unwrap();
        let b80 = crate::quantize::quantize_rows(DType::Q8_0, &wf[..16 * cols], cols).unwrap();
        let p80 = crate::x8::repack(DType::Q8_0, &b80, 16, cols).unwrap();
        let w80 = Weight::new_x8(DType::Q8_0, &p80, 16, cols).unwrap();
        let wq = Weight::new(DType::Q8_0, &b80, 16, cols).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (vec![f32::NAN; rows], vec![f32::NAN; 16]);
        let mut cache = ActCache::new();
        matmul_cached_multi([&w41, &wq], &x, [&mut a, &mut b], ActMode::Q8, &mut cache);
        let (mut a1, mut b1) = (vec![0f32; rows], vec![0f32; 16]);
        matmul_with(&w41, &x, &mut a1, ActMode::Q8);
        matmul_with(&wq, &x, &mut b1, ActMode::Q8);
        assert_eq!((a, b), (a1, b1));
        for t in [1usize, 5] {
            let x: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.11).cos()).collect();
            let (mut a, mut b) = (vec![f32::NAN; t * rows], vec![f32::NAN; t * 16]);
            cache.set();
            matmul_cached_multi([&w41, &w80], &x, [&mut a, &mut b], ActMode::Q8, &mut cache);
            let (mut a1, mut b1) = (vec![0f32; t * rows], vec![0f32; t * 16]);
            matmul_with(&w41, &x, &mut a1, ActMode::Q8);
            matmul_with(&w80, &x, &mut b1, ActMode::Q8);
            assert_eq!((a, b), (a1, b1), "T={t}");
        }
    }
}
