//! Dense f32 matrix multiply, C = A B (+ C), for any strides: the one GEMM that prompt
//! processing on dequantized weights and every training forward and backward pass go
//! through.
//!
//! Layout follows the usual blocked scheme: B is packed in slabs of KC x NC (panels NR wide),
//! A in blocks of MC x KC (panels MR tall), and a register-tiled micro-kernel computes
//! MR x NR of C from one A panel and one B panel. Packing makes any stride (a transposed
//! operand is just swapped strides) read contiguously in the inner loop. Work is split over
//! the pool by columns of C (or rows, when C is narrow), each task packing its own operands.

use crate::pool::{parallel_for, threads_here};
use std::cell::RefCell;

/// Micro-tile: MR rows of C by NR columns (12 AVX2 accumulators).
const MR: usize = 6;
const NR: usize = 16;
/// Depth of one packed slab: an MR x KC panel of A and a KC x NR panel of B stay in L1.
const KC: usize = 256;
/// Rows of A packed at once (MC x KC floats stay in L2).
const MC: usize = 72;
/// Columns of B packed at once (KC x NC floats: in L2/L3).
const NC: usize = 256;
/// The largest B (in floats, 8 MB) packed whole and shared by the threads; a larger one
/// (a vocabulary head: SmolLM2's is 28 M) would leave every row block streaming it from
/// memory, so it is packed block by block inside each thread's columns instead.
const WHOLE_B: usize = 1 << 20;

/// A matrix operand: element (i, j) is at `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns (no copy).
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(
            last < self.data.len(),
            "gemm: {what} of {rows} x {cols} needs index {last}, has {} values",
            self.data.len()
        );
    }
}

/// A growable buffer handing out slices that start on a 64-byte boundary, so the
/// micro-kernel's 32-byte loads never straddle cache lines.
#[derive(Default)]
struct Aligned(Vec<f32>);

impl Aligned {
    /// The first `len` floats handed out by the last `get`.
    fn slice(&self, len: usize) -> &[f32] {
        let off = (16 - (self.0.as_ptr() as usize / 4) % 16) % 16;
        &self.0[off..off + len]
    }

    fn get(&mut self, len: usize) -> &mut [f32] {
        if self.0.len() < len + 16 {
            self.0.resize(len + 16, 0.0);
        }
        let off = (16 - (self.0.as_ptr() as usize / 4) % 16) % 16;
        &mut self.0[off..off + len]
    }
}

thread_local! {
    /// Packing buffers, reused across calls on each thread.
    static PACK: RefCell<(Aligned, Aligned)> = RefCell::new(Default::default());
    /// The whole packed B of a many-row product, shared by the pool's threads (held by
    /// the calling thread).
    static PACK_B: RefCell<Aligned> = RefCell::new(Default::default());
}

/// C[m x n] (row-major, `ldc` floats per row) = A[m x k] B[k x n], plus the old C when
/// `accumulate`. Runs on the pool.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    b.check(k, n, "B");
    sgemm_with(m, n, k, a, &b, c, ldc, accumulate)
}

/// [`sgemm`] with B produced by a packer (e.g. quantized weight rows dequantized on the
/// fly); the packer must accept any block of B inside k x n.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: &(impl PackB + ?Sized),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if !checked(m, n, k, a, c, ldc, accumulate) {
        return;
    }
    let cp = SendMut(c.as_mut_ptr());
    let th = threads_here().max(1);
    if th == 1 || m * n * k < 64 * 64 * 64 {
        // SAFETY: the whole of C is this call's, checked above.
        unsafe { gemm_block(0..m, 0..n, k, a, b, cp.0, ldc, accumulate) };
        return;
    }
    if m < 8 * MR || k * n > WHOLE_B {
        // few rows (a handful of tokens), or a B too large to pack whole (a vocabulary
        // head): one task per thread, each packing B a block at a time. Splitting C by
        // columns makes every task pack all of A, by rows all of B: split the side whose
        // other operand is smaller.
        let by_cols = m < n;
        let (len, unit) = if by_cols { (n, NR) } else { (m, MR) };
        let units = len.div_ceil(unit);
        let tasks = th.min(units).max(1);
        let per = units.div_ceil(tasks) * unit;
        let tasks = len.div_ceil(per);
        parallel_for(tasks, &|i| {
            let r = i * per..((i + 1) * per).min(len);
            let p = &cp;
            // SAFETY: task i writes only C's columns (or rows) in r, disjoint from every
            // other task's, inside the C checked above; C stays borrowed until parallel_for
            // returns.
            unsafe {
                if by_cols {
                    gemm_block(0..m, r, k, a, b, p.0, ldc, accumulate)
                } else {
                    gemm_block(r, 0..n, k, a, b, p.0, ldc, accumulate)
                }
            }
        });
        return;
    }
    // B is packed once, every slab and panel, by all threads together; then blocks of rows
    // (several per thread, claimed as threads come free, so a thread slowed by anything
    // else on the machine does not hold the other back) each pack their own rows of A and
    // sweep the whole packed B. No operand is packed twice.
    let panels = n.div_ceil(NR);
    let slabs = k.div_ceil(KC);
    PACK_B.with(|pb| {
        let mut pb = pb.borrow_mut();
        let packed = pb.get(k * panels * NR);
        let pp = SendMut(packed.as_mut_ptr());
        let group = 4; // panels per packing task
        let groups = panels.div_ceil(group);
        parallel_for(slabs * groups, &|i| {
            let (s, gi) = (i / groups, i % groups);
            let (pc, kc) = (s * KC, KC.min(k - s * KC));
            let jc = gi * group * NR;
            let nc = (group * NR).min(n - jc);
            let at = pc * panels * NR + gi * group * NR * kc;
            let len = nc.div_ceil(NR) * NR * kc;
            let p = &pp;
            // SAFETY: task i writes only slab s's panels of group gi, a range disjoint from
            // every other task's inside the k * panels * NR floats just sized; the buffer
            // stays borrowed until parallel_for returns.
            let dst = unsafe { std::slice::from_raw_parts_mut(p.0.add(at), len) };
            b.pack(dst, pc, kc, jc, nc);
        });
        let packed: &[f32] = packed;
        let rows_per = m.div_ceil(4 * th).next_multiple_of(MR).min(MC);
        let tasks = m.div_ceil(rows_per);
        parallel_for(tasks, &|i| {
            let rows = i * rows_per..((i + 1) * rows_per).min(m);
            let p = &cp;
            // SAFETY: task i writes only C's rows in `rows`, disjoint from every other
            // task's, inside the C checked above; C stays borrowed until parallel_for
            // returns.
            unsafe { gemm_rows(rows, n, k, a, packed, p.0, ldc, accumulate) }
        });
    });
}

/// C[rows, 0..n] = A[rows, :] B (+ C when `accumulate`) on one thread, B already packed
/// whole (slab after slab, each `panels` panels of [kc][NR]).
///
/// # Safety
/// `c` must point at a row-major matrix (stride `ldc`) covering `rows` x n, not written by
/// anyone else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows(
    rows: std::ops::Range<usize>,
    n: usize,
    k: usize,
    a: MatRef,
    packed: &[f32],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let panels = n.div_ceil(NR);
    PACK.with(|p| {
        let (pa_buf, _) = &mut *p.borrow_mut();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let pa = pa_buf.get(rows.len().div_ceil(MR) * MR * kc);
            pack_a(pa, a, rows.start, rows.len(), pc, kc);
            let slab = &packed[pc * panels * NR..pc * panels * NR + panels * NR * kc];
            let store = pc == 0 && !accumulate;
            for jr in (0..n).step_by(NR) {
                let nr = NR.min(n - jr);
                let bp = &slab[jr * kc..(jr + NR) * kc];
                let mut ir = 0;
                if nr == NR {
                    // the full panels in one call
                    let full = rows.len() / MR;
                    // SAFETY: rows.start.. plus full * MR rows x NR columns from jr lie
                    // inside the caller's rows x n of C; pa holds full panels of kc steps.
                    ir = unsafe {
                        strip(kc, pa, full, bp, c.add(rows.start * ldc + jr), ldc, store)
                    };
                }
                while ir < rows.len() {
                    let mr = MR.min(rows.len() - ir);
                    let ap = &pa[ir * kc..(ir + MR) * kc];
                    // SAFETY: (rows.start + ir, jr) plus mr x nr lies inside the caller's
                    // rows x n of C.
                    let cij = unsafe { c.add((rows.start + ir) * ldc + jr) };
                    unsafe { micro(kc, ap, bp, cij, ldc, mr, nr, store) };
                    ir += MR;
                }
            }
        }
    });
}

/// A k x n B operand packed once for many single-threaded products that each use a band of
/// its rows and a prefix of its columns (attention: the keys of a head meet every query
/// block, each block only the keys up to its last row). Panels are NR columns by all k
/// rows, so rows r0..r1 of any panel are one contiguous run.
#[derive(Default)]
pub struct PackedB {
    buf: Aligned,
    len: usize,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs B (k x n), reusing this buffer.
    pub fn pack(&mut self, b: MatRef, k: usize, n: usize) {
        b.check(k, n, "B");
        let panels = n.div_ceil(NR);
        self.len = panels * NR * k;
        let buf = self.buf.get(self.len);
        for p in 0..panels {
            let nc = NR.min(n - p * NR);
            pack_b(&mut buf[p * NR * k..(p + 1) * NR * k], b, 0, k, p * NR, nc);
        }
        (self.k, self.n) = (k, n);
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.buf.slice(self.len)[p * NR * self.k..(p + 1) * NR * self.k]
    }
}

/// The checks every product makes of A and C; false when there is nothing to multiply
/// (an empty C, or k = 0: then C is zeroed unless accumulating).
#[allow(clippy::too_many_arguments)]
fn checked(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "gemm: C of {m} x {n} (ldc {ldc}) does not fit in {} values",
        c.len()
    );
    a.check(m, k, "A");
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return false;
    }
    true
}

/// C[m x n] = A[m x k] B[rows, 0..n] (+ C when `accumulate`) on the calling thread, where
/// B is packed and `rows` (k of them) lies inside its rows, n inside its columns.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed(
    m: usize,
    n: usize,
    a: MatRef,
    b: &PackedB,
    rows: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let k = rows.len();
    assert!(
        rows.end <= b.k && n <= b.n,
        "gemm: rows {rows:?} x {n} columns of a packed {} x {}",
        b.k,
        b.n
    );
    if !checked(m, n, k, a, c, ldc, accumulate) {
        return;
    }
    let cp = c.as_mut_ptr();
    PACK.with(|p| {
        let (pa_buf, _) = &mut *p.borrow_mut();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let pa = pa_buf.get(m.div_ceil(MR) * MR * kc);
            pack_a(pa, a, 0, m, pc, kc);
            let store = pc == 0 && !accumulate;
            for jr in (0..n).step_by(NR) {
                let nr = NR.min(n - jr);
                let at = (rows.start + pc) * NR;
                let bp = &b.panel(jr / NR)[at..at + kc * NR];
                let mut ir = 0;
                if nr == NR {
                    // SAFETY: rows 0..m / MR * MR x NR columns from jr lie inside C's m x n
                    // (checked above); pa holds m / MR full panels of kc steps.
                    ir = unsafe { strip(kc, pa, m / MR, bp, cp.add(jr), ldc, store) };
                }
                while ir < m {
                    let mr = MR.min(m - ir);
                    let ap = &pa[ir * kc..(ir + MR) * kc];
                    // SAFETY: (ir, jr) plus mr x nr lies inside C's m x n (checked above).
                    unsafe { micro(kc, ap, bp, cp.add(ir * ldc + jr), ldc, mr, nr, store) };
                    ir += MR;
                }
            }
        }
    });
}

/// The f32 GEMM rate of this machine with the pool's current threads, in GFLOP/s: the best
/// 1024 x 1024 x 1024 product over at least a second of repeats (threads woken, clocks
/// up; the denominator of model FLOPs utilisation).
pub fn peak_gflops() -> f64 {
    let n = 1024;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t0 = std::time::Instant::now();
        sgemm(
            n,
            n,
            n,
            MatRef::rows(&a, n),
            MatRef::rows_t(&b, n),
            &mut c,
            n,
            false,
        );
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

struct SendMut(*mut f32);
// SAFETY: used only to hand disjoint parts of C to pool tasks (see sgemm).
unsafe impl Sync for SendMut {}

/// C[rows, cols] = A[rows, :] B[:, cols] (+ C when `accumulate`), single-threaded.
///
/// # Safety
/// `c` must point at a row-major matrix (stride `ldc`) covering `rows` x `cols`, not
/// written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    a: MatRef,
    b: &(impl PackB + ?Sized),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    PACK.with(|p| {
        let (pa_buf, pb_buf) = &mut *p.borrow_mut();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // A is packed once per slab; B once per slab and column block
            let pa = pa_buf.get(rows.len().div_ceil(MR) * MR * kc);
            pack_a(pa, a, rows.start, rows.len(), pc, kc);
            let store = pc == 0 && !accumulate;
            for jc in cols.clone().step_by(NC) {
                let nc = NC.min(cols.end - jc);
                let pb = pb_buf.get(nc.div_ceil(NR) * NR * kc);
                b.pack(pb, pc, kc, jc, nc);
                for ic in (0..rows.len()).step_by(MC) {
                    let mc = MC.min(rows.len() - ic);
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let bp = &pb[jr * kc..(jr + NR) * kc];
                        let mut ir = ic;
                        if nr == NR {
                            let ap = &pa[ic * kc..];
                            // SAFETY: rows rows.start + ic.. (mc / MR whole panels) x NR
                            // columns from jc + jr lie inside the caller's rows x cols of C.
                            ir += unsafe {
                                let cij = c.add((rows.start + ic) * ldc + jc + jr);
                                strip(kc, ap, mc / MR, bp, cij, ldc, store)
                            };
                        }
                        while ir < ic + mc {
                            let mr = MR.min(ic + mc - ir);
                            let ap = &pa[ir * kc..(ir + MR) * kc];
                            // SAFETY: (rows.start + ir, jc + jr) plus mr x nr lies inside
                            // the caller's rows x cols of C.
                            let cij = unsafe { c.add((rows.start + ir) * ldc + jc + jr) };
                            unsafe { micro(kc, ap, bp, cij, ldc, mr, nr, store) };
                            ir += MR;
                        }
                    }
                }
            }
        }
    });
}

/// Where the B operand comes from: a float matrix, or quantized weight rows dequantized
/// while packing.
pub trait PackB: Sync {
    /// Writes B[pc..pc + kc, jc..jc + nc] into `buf` (exactly ceil(nc / 16) panels of
    /// [kc][16]) as 16-wide panels, zero-padded to whole panels.
    fn pack(&self, buf: &mut [f32], pc: usize, kc: usize, jc: usize, nc: usize);
}

impl PackB for MatRef<'_> {
    fn pack(&self, buf: &mut [f32], pc: usize, kc: usize, jc: usize, nc: usize) {
        pack_b(buf, *self, pc, kc, jc, nc)
    }
}

/// Packs A[ic.., pc..] (mc x kc) as MR-tall panels, each [kc][MR], zero-padded.
fn pack_a(buf: &mut [f32], a: MatRef, ic: usize, mc: usize, pc: usize, kc: usize) {
    let panels = mc.div_ceil(MR);
    for p in 0..panels {
        let dst = &mut buf[p * MR * kc..(p + 1) * MR * kc];
        let r0 = ic + p * MR;
        let mr = MR.min(ic + mc - r0);
        let base = r0 * a.rs + pc * a.cs;
        if a.cs == 1 && mr == MR {
            // six rows side by side: one value of each per step
            let rows: [&[f32]; MR] =
                std::array::from_fn(|i| &a.data[base + i * a.rs..base + i * a.rs + kc]);
            pack_rows(rows, dst);
        } else if a.rs == 1 && mr == MR {
            // a transposed operand: each step's six values are adjacent
            for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
                let at = base + kk * a.cs;
                let src: &[f32; MR] = a.data[at..at + MR].try_into().expect("MR values");
                d.copy_from_slice(src);
            }
        } else {
            for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = if i < mr {
                        a.data[base + i * a.rs + kk * a.cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// dst[kk * MR + i] = rows[i][kk]: six rows of a row-major A side by side.
fn pack_rows(rows: [&[f32]; MR], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, the only feature the kernel needs.
        return unsafe { crate::avx2::pack6_rows(rows, dst) };
    }
    pack_rows_ref(rows, dst)
}

/// The scalar [`pack_rows`]: the oracle and the fallback.
fn pack_rows_ref(rows: [&[f32]; MR], dst: &mut [f32]) {
    for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
        for i in 0..MR {
            d[i] = rows[i][kk];
        }
    }
}

/// Packs B[pc.., jc..] (kc x nc) as NR-wide panels, each [kc][NR], zero-padded.
fn pack_b(buf: &mut [f32], b: MatRef, pc: usize, kc: usize, jc: usize, nc: usize) {
    let panels = nc.div_ceil(NR);
    for p in 0..panels {
        let dst = &mut buf[p * NR * kc..(p + 1) * NR * kc];
        let c0 = jc + p * NR;
        let nr = NR.min(jc + nc - c0);
        let base = pc * b.rs + c0 * b.cs;
        if b.cs == 1 && nr == NR {
            for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
                let at = base + kk * b.rs;
                let src: &[f32; NR] = b.data[at..at + NR].try_into().expect("NR values");
                d.copy_from_slice(src);
            }
        } else if b.rs == 1 && nr == NR {
            // columns of B are rows in memory (a transposed weight): sixteen streams
            let cols: [&[f32]; NR] =
                std::array::from_fn(|j| &b.data[base + j * b.cs..base + j * b.cs + kc]);
            pack_cols(cols, dst);
        } else {
            for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
                for (j, v) in d.iter_mut().enumerate() {
                    *v = if j < nr {
                        b.data[base + kk * b.rs + j * b.cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// dst[kk * NR + j] = cols[j][kk]: sixteen columns of B that lie along memory, side by side.
fn pack_cols(cols: [&[f32]; NR], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU reported AVX2, the only feature the kernel needs.
        return unsafe { crate::avx2::pack16_cols(cols, dst) };
    }
    pack_cols_ref(cols, dst)
}

/// The scalar [`pack_cols`]: the oracle and the fallback.
fn pack_cols_ref(cols: [&[f32]; NR], dst: &mut [f32]) {
    for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
        for j in 0..NR {
            d[j] = cols[j][kk];
        }
    }
}

/// Full 6 x 16 tiles of `panels` A panels against one B panel, down a strip of C; returns
/// the rows done (0 where there is no SIMD kernel: the caller's tile loop does them).
///
/// # Safety
/// `c` must cover panels * MR rows (stride ldc) of NR writable floats.
unsafe fn strip(
    kc: usize,
    pa: &[f32],
    panels: usize,
    bp: &[f32],
    c: *mut f32,
    ldc: usize,
    store: bool,
) -> usize {
    assert!(pa.len() >= panels * MR * kc && bp.len() >= kc * NR);
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: A holds the panels and B the panel (asserted), C the tiles (the caller's
        // guarantee); AVX2 and FMA are present.
        unsafe {
            crate::avx2::sgemm_6x16_strip(kc, pa.as_ptr(), panels, bp.as_ptr(), c, ldc, store)
        };
        return panels * MR;
    }
    0
}

/// C[mr x nr] += A panel x B panel (or = when `store`).
///
/// # Safety
/// `c` must cover mr rows (stride ldc) of nr writable floats.
#[allow(clippy::too_many_arguments)]
unsafe fn micro(
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    store: bool,
) {
    assert!(ap.len() >= kc * MR && bp.len() >= kc * NR);
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        if mr == MR && nr == NR {
            // SAFETY: the panels hold kc steps (asserted), C covers the full 6 x 16 tile
            // (the caller's guarantee), AVX2 and FMA are present.
            unsafe { crate::avx2::sgemm_6x16(kc, ap.as_ptr(), bp.as_ptr(), c, ldc, store) };
            return;
        }
        let mut tile = [[0f32; NR]; MR];
        // SAFETY: the panels hold kc steps; the tile is a full 6 x 16 block with stride NR.
        unsafe {
            crate::avx2::sgemm_6x16(
                kc,
                ap.as_ptr(),
                bp.as_ptr(),
                tile.as_mut_ptr().cast(),
                NR,
                true,
            )
        };
        // SAFETY: the caller guarantees mr x nr writable floats at c with stride ldc.
        unsafe { put_tile(&tile, c, ldc, mr, nr, store) };
        return;
    }
    let mut tile = [[0f32; NR]; MR];
    micro_ref(kc, ap, bp, &mut tile);
    // SAFETY: as above.
    unsafe { put_tile(&tile, c, ldc, mr, nr, store) };
}

/// The scalar micro-kernel: the oracle for the SIMD one and the fallback.
fn micro_ref(kc: usize, ap: &[f32], bp: &[f32], tile: &mut [[f32; NR]; MR]) {
    for kk in 0..kc {
        let a = &ap[kk * MR..(kk + 1) * MR];
        let b = &bp[kk * NR..(kk + 1) * NR];
        for i in 0..MR {
            for j in 0..NR {
                tile[i][j] = a[i].mul_add(b[j], tile[i][j]);
            }
        }
    }
}

/// # Safety
/// `c` must cover mr rows (stride ldc) of nr writable floats.
unsafe fn put_tile(
    tile: &[[f32; NR]; MR],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    store: bool,
) {
    for (i, t) in tile.iter().enumerate().take(mr) {
        // SAFETY: row i < mr of C holds nr floats from c + i * ldc (caller's guarantee).
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
        for (o, v) in row.iter_mut().zip(t) {
            *o = if store { *v } else { *o + v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64
                    })
                    .sum();
            }
        }
        c
    }

    /// Every layout (plain and transposed operands), edge sizes that leave partial tiles
    /// and slabs, one and two threads, overwrite and accumulate.
    #[test]
    fn gemm_matches_naive_for_every_layout_and_edge() {
        let _one = crate::pool::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for th in [1usize, 2] {
            crate::pool::init(th);
            for &(m, n, k) in &[
                (1, 1, 1),
                (5, 7, 3),
                (6, 16, 256),
                (13, 35, 300),
                (70, 130, 257),
                (150, 40, 600),
                (3, 1100, 40),
                (40, 20, 300),
                // a B too large to pack whole (k x n > WHOLE_B): column blocks per thread
                (50, 2100, 1000),
            ] {
                let av = rand_vec(m * k, (m * 31 + k) as u64);
                let bv = rand_vec(k * n, (n * 17 + k) as u64);
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let a = if ta {
                        MatRef::rows_t(&av, m)
                    } else {
                        MatRef::rows(&av, k)
                    };
                    let b = if tb {
                        MatRef::rows_t(&bv, k)
                    } else {
                        MatRef::rows(&bv, n)
                    };
                    let want = naive(m, n, k, a, b);
                    let ldc = n + 3;
                    let mut c = vec![7f32; m * ldc];
                    sgemm(m, n, k, a, b, &mut c, ldc, false);
                    for i in 0..m {
                        for j in 0..n {
                            let (g, w) = (c[i * ldc + j] as f64, want[i * n + j]);
                            assert!(
                                (g - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                                "{m}x{n}x{k} ta={ta} tb={tb} t={th} ({i},{j}): {g} vs {w}"
                            );
                        }
                        // the padding between rows is never touched
                        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0));
                    }
                    let before = c.clone();
                    sgemm(m, n, k, a, b, &mut c, ldc, true);
                    for i in 0..m {
                        for j in 0..n {
                            let want2 = 2.0 * before[i * ldc + j];
                            let g = c[i * ldc + j];
                            assert!((g - want2).abs() <= 1e-5 * (1.0 + want2.abs()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_micro_kernel_equals_scalar_reference() {
        #[cfg(target_arch = "x86_64")]
        if crate::avx2::available() {
            for kc in [1usize, 2, 7, 256] {
                let ap = rand_vec(kc * MR, kc as u64);
                let bp = rand_vec(kc * NR, kc as u64 + 99);
                let mut want = [[0f32; NR]; MR];
                micro_ref(kc, &ap, &bp, &mut want);
                let mut got = [[0f32; NR]; MR];
                // SAFETY: the panels hold kc steps, the tile 6 x 16 floats; AVX2 is present.
                unsafe {
                    crate::avx2::sgemm_6x16(
                        kc,
                        ap.as_ptr(),
                        bp.as_ptr(),
                        got.as_mut_ptr().cast(),
                        NR,
                        true,
                    )
                };
                assert_eq!(want, got, "kc={kc}");
                // accumulating adds the finished tile to what C held
                let mut acc = [[1.5f32; NR]; MR];
                // SAFETY: as above.
                unsafe {
                    crate::avx2::sgemm_6x16(
                        kc,
                        ap.as_ptr(),
                        bp.as_ptr(),
                        acc.as_mut_ptr().cast(),
                        NR,
                        false,
                    )
                };
                for i in 0..MR {
                    for j in 0..NR {
                        assert_eq!(acc[i][j], 1.5 + want[i][j]);
                    }
                }
            }
        }
    }

    /// The SIMD packing of six rows equals the scalar one, for every tail length.
    #[test]
    fn simd_row_packing_equals_scalar() {
        for kc in [1usize, 5, 8, 9, 16, 31, 256] {
            let src = rand_vec(MR * (kc + 2), kc as u64);
            let rows: [&[f32]; MR] = std::array::from_fn(|i| &src[i * (kc + 2)..][..kc]);
            let mut want = vec![0f32; MR * kc];
            pack_rows_ref(rows, &mut want);
            let mut got = vec![f32::NAN; MR * kc];
            pack_rows(rows, &mut got);
            assert_eq!(want, got, "kc={kc}");
        }
    }

    /// A packed B serves any band of its rows and prefix of its columns, against plain and
    /// transposed A, overwriting and accumulating.
    #[test]
    fn packed_b_products_match_naive() {
        let (k, n) = (400, 45);
        let bv = rand_vec(k * n, 3);
        for tb in [false, true] {
            let b = if tb {
                MatRef::rows_t(&bv, k)
            } else {
                MatRef::rows(&bv, n)
            };
            let mut pb = PackedB::default();
            pb.pack(b, k, n);
            for &(m, r0, r1, nn) in &[
                (1, 0, 1, 1),
                (13, 0, 400, 45),
                (20, 37, 390, 33),
                (6, 5, 9, 16),
            ] {
                let kk = r1 - r0;
                let av = rand_vec(m * kk, (m + kk) as u64);
                for ta in [false, true] {
                    let a = if ta {
                        MatRef::rows_t(&av, m)
                    } else {
                        MatRef::rows(&av, kk)
                    };
                    let band = MatRef {
                        data: &b.data[r0 * b.rs..],
                        ..b
                    };
                    let want = naive(m, nn, kk, a, band);
                    let ldc = nn + 2;
                    let mut c = vec![7f32; m * ldc];
                    sgemm_packed(m, nn, a, &pb, r0..r1, &mut c, ldc, false);
                    for i in 0..m {
                        for j in 0..nn {
                            let (g, w) = (c[i * ldc + j] as f64, want[i * nn + j]);
                            assert!(
                                (g - w).abs() <= 1e-4 * (1.0 + w.abs()) * (kk as f64).sqrt(),
                                "{m} rows {r0}..{r1} x {nn} ta={ta} tb={tb} ({i},{j}): {g} vs {w}"
                            );
                        }
                        assert!(c[i * ldc + nn..(i + 1) * ldc].iter().all(|&v| v == 7.0));
                    }
                    let before = c.clone();
                    sgemm_packed(m, nn, a, &pb, r0..r1, &mut c, ldc, true);
                    for i in 0..m {
                        for j in 0..nn {
                            let (g, w2) = (c[i * ldc + j], 2.0 * before[i * ldc + j]);
                            assert!((g - w2).abs() <= 1e-5 * (1.0 + w2.abs()));
                        }
                    }
                }
            }
        }
    }

    /// The SIMD packing of sixteen columns equals the scalar one, for every tail length.
    #[test]
    fn simd_column_packing_equals_scalar() {
        for kc in [1usize, 7, 8, 9, 16, 23, 256] {
            let src = rand_vec(NR * (kc + 3), kc as u64 + 5);
            let cols: [&[f32]; NR] = std::array::from_fn(|j| &src[j * (kc + 3)..][..kc]);
            let mut want = vec![0f32; NR * kc];
            pack_cols_ref(cols, &mut want);
            let mut got = vec![f32::NAN; NR * kc];
            pack_cols(cols, &mut got);
            assert_eq!(want, got, "kc={kc}");
        }
    }

    #[test]
    #[should_panic(expected = "gemm: A")]
    fn short_operand_is_refused() {
        let a = vec![0f32; 7];
        let b = vec![0f32; 12];
        let mut c = vec![0f32; 6];
        sgemm(
            2,
            3,
            4,
            MatRef::rows(&a, 4),
            MatRef::rows(&b, 3),
            &mut c,
            3,
            false,
        );
    }
}
