//! Forward and backward passes of each layer of the training model, on [N, C] row-major
//! activations (N = batch x tokens). Forwards use layer 1's kernels (GEMM, RMSNorm, RoPE
//! rotation, SiLU); each backward is written out by hand and checked against finite
//! differences in the tests below. Backward functions *add* into parameter gradients (so
//! micro-batches accumulate) and either set or add input gradients as documented.

use llmos_tensor::gemm::{MatRef, PackedB, sgemm, sgemm_packed};
use llmos_tensor::ops::{RopeStyle, dot_f32, rmsnorm, rope_cs};
use llmos_tensor::pool::{for_each_chunk_mut, for_each_chunks_mut};
use llmos_tensor::q8::{sigmoid_into, softmax_scaled_lanes, softmax_xent_row};
use std::cell::RefCell;

/// Query rows per attention block: each block meets only the keys up to its last row.
const QB: usize = 24;

/// Rows per parallel task in the row-wise layers.
const ROWS: usize = 32;

/// y[N, out] = x[N, in] W^T, W stored [out, in] as inference weights are.
pub fn linear(x: &[f32], w: &[f32], n_in: usize, n_out: usize, y: &mut [f32]) {
    let n = x.len() / n_in;
    sgemm(
        n,
        n_out,
        n_in,
        MatRef::rows(x, n_in),
        MatRef::rows_t(w, n_in),
        y,
        n_out,
        false,
    );
}

/// dx (= or += when `add_dx`) dy W, and dW += dy^T x when `dw` is given (a frozen
/// weight has none).
#[allow(clippy::too_many_arguments)]
pub fn linear_back(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n_in: usize,
    n_out: usize,
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    add_dx: bool,
) {
    let n = x.len() / n_in;
    sgemm(
        n,
        n_in,
        n_out,
        MatRef::rows(dy, n_out),
        MatRef::rows(w, n_in),
        dx,
        n_in,
        add_dx,
    );
    if let Some(dw) = dw {
        sgemm(
            n_out,
            n_in,
            n,
            MatRef::rows_t(dy, n_out),
            MatRef::rows(x, n_in),
            dw,
            n_in,
            true,
        );
    }
}

/// RMSNorm per row: y = x / rms(x) * g; `rstd` receives 1 / rms(x) of each row.
pub fn rmsnorm_fwd(x: &[f32], g: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let c = g.len();
    for_each_chunks_mut([y, rstd], [ROWS * c, ROWS], |ci, [yc, rc]| {
        let xc = &x[ci * ROWS * c..ci * ROWS * c + yc.len()];
        rmsnorm(yc, xc, g, eps);
        for (r, xr) in rc.iter_mut().zip(xc.chunks_exact(c)) {
            let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
            *r = (1.0 / (ss / c as f64 + eps as f64).sqrt()) as f32;
        }
    });
}

/// dx += RMSNorm'(dy), and dg += sum over rows of dy * x * rstd when `dg` is given.
pub fn rmsnorm_back(
    x: &[f32],
    g: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dg: Option<&mut [f32]>,
) {
    let c = g.len();
    let tasks = rstd.len().div_ceil(ROWS);
    // each task's share of dg, summed afterwards in task order (deterministic)
    let mut part = vec![0f32; tasks * c];
    for_each_chunks_mut([dx, &mut part], [ROWS * c, c], |ci, [dxc, pg]| {
        let r0 = ci * ROWS;
        for (j, dxr) in dxc.chunks_exact_mut(c).enumerate() {
            let (xr, dyr, r) = (
                &x[(r0 + j) * c..(r0 + j + 1) * c],
                &dy[(r0 + j) * c..(r0 + j + 1) * c],
                rstd[r0 + j],
            );
            let mut dot = 0f64;
            for i in 0..c {
                pg[i] += dyr[i] * xr[i] * r;
                dot += (dyr[i] * g[i] * xr[i]) as f64;
            }
            let k = (dot as f32) * r * r * r / c as f32;
            for i in 0..c {
                dxr[i] += r * dyr[i] * g[i] - xr[i] * k;
            }
        }
    });
    if let Some(dg) = dg {
        for pg in part.chunks_exact(c) {
            dg.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
        }
    }
}

/// (cos, sin) of every position 0..ctx and rotated pair of a head of `head_dim`.
pub fn rope_table(ctx: usize, head_dim: usize, theta: f32) -> Vec<(f32, f32)> {
    let half = head_dim / 2;
    let mut t = Vec::with_capacity(ctx * half);
    for pos in 0..ctx {
        for i in 0..half {
            let f = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let (s, c) = (pos as f64 * f).sin_cos();
            t.push((c as f32, s as f32));
        }
    }
    t
}

/// Rotates the heads in the first `rot` values of every row (rows `stride` apart) in
/// place, pairing dimensions as `style` says; row r is at position r % t. With `inverse` the rotation goes backwards, which is
/// the gradient of the forward rotation.
#[allow(clippy::too_many_arguments)]
pub fn rope_rows(
    x: &mut [f32],
    stride: usize,
    rot: usize,
    head_dim: usize,
    t: usize,
    table: &[(f32, f32)],
    style: RopeStyle,
    inverse: bool,
) {
    let half = head_dim / 2;
    for_each_chunk_mut(x, ROWS * stride, |ci, xc| {
        let mut cs = vec![(0f32, 0f32); half];
        for (j, row) in xc.chunks_exact_mut(stride).enumerate() {
            let pos = (ci * ROWS + j) % t;
            for (o, &(c, s)) in cs.iter_mut().zip(&table[pos * half..(pos + 1) * half]) {
                *o = if inverse { (c, -s) } else { (c, s) };
            }
            rope_cs(&mut row[..rot], head_dim, &cs, style);
        }
    });
}

/// y += x, in parallel.
pub fn add_into(y: &mut [f32], x: &[f32]) {
    for_each_chunk_mut(y, 1 << 14, |ci, yc| {
        let xc = &x[ci << 14..(ci << 14) + yc.len()];
        yc.iter_mut().zip(xc).for_each(|(a, b)| *a += b);
    });
}

/// Shapes of one causal attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q.k before the softmax (1 / sqrt(head_dim) unless a model says otherwise).
    pub scale: f32,
}

impl AttnShape {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Floats of the saved state per batch row and kv head: the probabilities of its query
    /// heads [G, T, T] followed by their outputs [G, T, D].
    fn task_len(&self) -> usize {
        self.group() * self.t * (self.t + self.head_dim)
    }
    /// Width of a fused q|k|v row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
    /// Size of the saved state `p` that [`attention_fwd`] fills.
    pub fn state_len(&self) -> usize {
        self.batch * self.kv_heads * self.task_len()
    }
}

/// Per-thread buffers of the attention passes: the packed operands of one (batch row, kv
/// head) task and the backward's [T, T] dS.
#[derive(Default)]
struct AttnScratch {
    k: PackedB,
    v: PackedB,
    q: PackedB,
    dout: PackedB,
    dp: Vec<f32>,
}

thread_local! {
    static ATTN: RefCell<AttnScratch> = RefCell::default();
    /// The attention backward's per-task dQ, dK, dV.
    static ATTN_GRADS: RefCell<Vec<f32>> = RefCell::default();
    /// The fused head's chunk of logits.
    static HEAD_LOGITS: RefCell<Vec<f32>> = RefCell::default();
}

/// Columns `col..col + d` of the `t` rows from `row0` of a matrix `width` floats wide, as
/// a t x d operand (`transposed`: d x t), read in place.
fn head_rows(src: &[f32], width: usize, row0: usize, col: usize, transposed: bool) -> MatRef<'_> {
    let data = &src[row0 * width + col..];
    if transposed {
        MatRef {
            data,
            rs: 1,
            cs: width,
        }
    } else {
        MatRef {
            data,
            rs: width,
            cs: 1,
        }
    }
}

/// Causal softmax attention. `qkv` rows (N = B*T of them) hold q (H*D), then k (KV*D),
/// then v (KV*D), as one fused projection writes them; out [N, H*D]; `state` (len
/// [`AttnShape::state_len`]) keeps the probabilities for the backward.
///
/// One task per batch row and kv head: its keys and values are packed once, then each
/// block of QB queries meets only the keys up to its last row.
pub fn attention_fwd(s: AttnShape, qkv: &[f32], out: &mut [f32], state: &mut [f32]) {
    let (t, d, g) = (s.t, s.head_dim, s.group());
    let (qw, kw) = (s.heads * d, s.kv_heads * d);
    let w = s.qkv_width();
    let scale = s.scale;
    for_each_chunk_mut(state, s.task_len(), |task, st| {
        let (b, kvh) = (task / s.kv_heads, task % s.kv_heads);
        ATTN.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            sc.k.pack(head_rows(qkv, w, b * t, qw + kvh * d, true), d, t);
            sc.v.pack(head_rows(qkv, w, b * t, qw + kw + kvh * d, false), t, d);
            let (probs, outs) = st.split_at_mut(g * t * t);
            for gi in 0..g {
                let h = kvh * g + gi;
                let p = &mut probs[gi * t * t..(gi + 1) * t * t];
                let o = &mut outs[gi * t * d..(gi + 1) * t * d];
                for i0 in (0..t).step_by(QB) {
                    let (i1, m) = ((i0 + QB).min(t), (i0 + QB).min(t) - i0);
                    let q = head_rows(qkv, w, b * t + i0, h * d, false);
                    let pb = &mut p[i0 * t..];
                    sgemm_packed(m, i1, q, &sc.k, 0..d, pb, t, false);
                    for (ii, row) in pb.chunks_exact_mut(t).take(m).enumerate() {
                        let i = i0 + ii;
                        // scale, max, exp, normalise: layer 1's 8-lane softmax; zeros up to
                        // the block's end (the backward's key blocks read that far)
                        softmax_scaled_lanes(&mut row[..=i], scale);
                        row[i + 1..i1].fill(0.0);
                    }
                    let pm = MatRef::rows(&p[i0 * t..], t);
                    sgemm_packed(m, d, pm, &sc.v, 0..i1, &mut o[i0 * d..], d, false);
                }
            }
        });
    });
    // the per-head outputs [G, T, D] of each task into rows [N, H*D], rows in parallel
    let state: &[f32] = state;
    for_each_chunk_mut(out, ROWS * qw, |ci, oc| {
        for (j, row) in oc.chunks_exact_mut(qw).enumerate() {
            let (b, r) = ((ci * ROWS + j) / t, (ci * ROWS + j) % t);
            for (h, dst) in row.chunks_exact_mut(d).enumerate() {
                let (kvh, gi) = (h / g, h % g);
                let st = &state[(b * s.kv_heads + kvh) * s.task_len()..];
                let at = g * t * t + (gi * t + r) * d;
                dst.copy_from_slice(&st[at..at + d]);
            }
        }
    });
}

/// Gradients of [`attention_fwd`] with respect to `qkv`, set (not added) in `dqkv`.
///
/// Per task and query head: dP = dO V^T and dS by blocks of queries, then dQ = dS K;
/// dK = dS^T Q and dV = P^T dO by blocks of keys (each key meets the queries from its own
/// block on), summed over the kv head's query heads.
pub fn attention_back(s: AttnShape, qkv: &[f32], state: &[f32], dout: &[f32], dqkv: &mut [f32]) {
    let (t, d, g) = (s.t, s.head_dim, s.group());
    let (qw, kw) = (s.heads * d, s.kv_heads * d);
    let w = s.qkv_width();
    let scale = s.scale;
    // per task: dQ of its heads [G, T, D], then dK [T, D], dV [T, D]
    let per = (g + 2) * t * d;
    // every value is written below (the first query head's key blocks overwrite); the
    // buffer is kept between calls like the head's logits
    let mut grads = ATTN_GRADS.with(|l| std::mem::take(&mut *l.borrow_mut()));
    grads.resize(s.batch * s.kv_heads * per, 0.0);
    for_each_chunk_mut(&mut grads, per, |task, gr| {
        let (b, kvh) = (task / s.kv_heads, task % s.kv_heads);
        let st = &state[task * s.task_len()..(task + 1) * s.task_len()];
        ATTN.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            // k: K [T, D] for dQ = dS K; v: V^T [D, T] for dP = dO V^T
            sc.k.pack(head_rows(qkv, w, b * t, qw + kvh * d, false), t, d);
            sc.v.pack(head_rows(qkv, w, b * t, qw + kw + kvh * d, true), d, t);
            sc.dp.resize(t * t, 0.0);
            let dp = &mut sc.dp;
            let (dqs, dkv) = gr.split_at_mut(g * t * d);
            let (dkb, dvb) = dkv.split_at_mut(t * d);
            for gi in 0..g {
                let h = kvh * g + gi;
                let p = &st[gi * t * t..(gi + 1) * t * t];
                let dqh = &mut dqs[gi * t * d..(gi + 1) * t * d];
                for i0 in (0..t).step_by(QB) {
                    let (i1, m) = ((i0 + QB).min(t), (i0 + QB).min(t) - i0);
                    let dob = head_rows(dout, qw, b * t + i0, h * d, false);
                    sgemm_packed(m, i1, dob, &sc.v, 0..d, &mut dp[i0 * t..], t, false);
                    // dS = P (dP - sum_j P dP) * scale, zero above the diagonal (the key
                    // blocks below read it up to their block's end)
                    for ii in 0..m {
                        let i = i0 + ii;
                        let (dr, pr) = (&mut dp[i * t..i * t + i1], &p[i * t..i * t + i1]);
                        let dot = dot_f32(&dr[..=i], &pr[..=i]);
                        for (x, &pv) in dr[..=i].iter_mut().zip(&pr[..=i]) {
                            *x = pv * (*x - dot) * scale;
                        }
                        dr[i + 1..].fill(0.0);
                    }
                    let ds = MatRef::rows(&dp[i0 * t..], t);
                    sgemm_packed(m, d, ds, &sc.k, 0..i1, &mut dqh[i0 * d..], d, false);
                }
                sc.q.pack(head_rows(qkv, w, b * t, h * d, false), t, d);
                sc.dout.pack(head_rows(dout, qw, b * t, h * d, false), t, d);
                for j0 in (0..t).step_by(QB) {
                    let m = (j0 + QB).min(t) - j0;
                    // rows j0..j0 + m of dS^T and P^T, queries j0..t
                    let dst = MatRef::rows_t(&dp[j0 * t + j0..], t);
                    let dk = &mut dkb[j0 * d..];
                    sgemm_packed(m, d, dst, &sc.q, j0..t, dk, d, gi > 0);
                    let pt = MatRef::rows_t(&p[j0 * t + j0..], t);
                    let dv = &mut dvb[j0 * d..];
                    sgemm_packed(m, d, pt, &sc.dout, j0..t, dv, d, gi > 0);
                }
            }
        });
    });
    // the tasks' dQ, dK and dV into rows of dqkv, rows in parallel
    let gref = &grads;
    for_each_chunk_mut(dqkv, ROWS * w, |ci, dc| {
        for (j, row) in dc.chunks_exact_mut(w).enumerate() {
            let (b, r) = ((ci * ROWS + j) / t, (ci * ROWS + j) % t);
            for (hc, dst) in row.chunks_exact_mut(d).enumerate() {
                // q heads, then k heads, then v heads
                let (kvh, slot) = if hc < s.heads {
                    (hc / g, hc % g)
                } else if hc < s.heads + s.kv_heads {
                    (hc - s.heads, g)
                } else {
                    (hc - s.heads - s.kv_heads, g + 1)
                };
                let at = (b * s.kv_heads + kvh) * per + (slot * t + r) * d;
                dst.copy_from_slice(&gref[at..at + d]);
            }
        }
    });
    ATTN_GRADS.with(|l| *l.borrow_mut() = grads);
}

/// a = silu(gate) * up, where each row of `gu` holds gate (f values) then up (f values),
/// as one fused projection writes them.
pub fn swiglu_fwd(gu: &[f32], f: usize, a: &mut [f32]) {
    for_each_chunk_mut(a, ROWS * f, |ci, ac| {
        let mut sig = vec![0f32; f];
        for (j, ar) in ac.chunks_exact_mut(f).enumerate() {
            let r = ci * ROWS + j;
            let (gate, up) = gu[r * 2 * f..(r + 1) * 2 * f].split_at(f);
            sigmoid_into(gate, &mut sig);
            for i in 0..f {
                ar[i] = gate[i] * sig[i] * up[i];
            }
        }
    });
}

/// The gradient of [`swiglu_fwd`] with respect to `gu`, set in `dgu` (same layout).
pub fn swiglu_back(gu: &[f32], f: usize, da: &[f32], dgu: &mut [f32]) {
    for_each_chunk_mut(dgu, ROWS * 2 * f, |ci, dc| {
        let mut sigs = vec![0f32; f];
        for (j, dr) in dc.chunks_exact_mut(2 * f).enumerate() {
            let r = ci * ROWS + j;
            let (gate, up) = gu[r * 2 * f..(r + 1) * 2 * f].split_at(f);
            let dar = &da[r * f..(r + 1) * f];
            let (dg, du) = dr.split_at_mut(f);
            sigmoid_into(gate, &mut sigs);
            for i in 0..f {
                let (g, sig) = (gate[i], sigs[i]);
                du[i] = dar[i] * g * sig;
                dg[i] = dar[i] * up[i] * sig * (1.0 + g * (1.0 - sig));
            }
        }
    });
}

/// sqrt(2 / pi) and the cubic coefficient of the tanh form of GELU.
const GELU_K: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// s[i] = sigmoid(2 u(x[i])), u(x) = sqrt(2/pi) (x + 0.044715 x^3): gelu_tanh(x) = x s,
/// since 0.5 (1 + tanh(u)) = sigmoid(2u). The sigmoid runs 8 lanes at a time (libm's tanh
/// one value at a time cost Gemma's fine-tuning 7% of each step).
fn gelu_sigmoid(x: &[f32], z: &mut [f32], s: &mut [f32]) {
    for (zi, &v) in z.iter_mut().zip(x) {
        *zi = 2.0 * GELU_K * (v + GELU_C * v * v * v);
    }
    sigmoid_into(z, s);
}

/// a = gelu_tanh(gate) * up (Gemma's GeGLU), rows laid out as for [`swiglu_fwd`].
pub fn geglu_fwd(gu: &[f32], f: usize, a: &mut [f32]) {
    for_each_chunk_mut(a, ROWS * f, |ci, ac| {
        let (mut z, mut sig) = (vec![0f32; f], vec![0f32; f]);
        for (j, ar) in ac.chunks_exact_mut(f).enumerate() {
            let r = ci * ROWS + j;
            let (gate, up) = gu[r * 2 * f..(r + 1) * 2 * f].split_at(f);
            gelu_sigmoid(gate, &mut z, &mut sig);
            for i in 0..f {
                ar[i] = gate[i] * sig[i] * up[i];
            }
        }
    });
}

/// The gradient of [`geglu_fwd`] with respect to `gu`, set in `dgu`: with s = sigmoid(2u),
/// d gelu / dx = s + x s (1 - s) 2u'(x).
pub fn geglu_back(gu: &[f32], f: usize, da: &[f32], dgu: &mut [f32]) {
    for_each_chunk_mut(dgu, ROWS * 2 * f, |ci, dc| {
        let (mut z, mut sig) = (vec![0f32; f], vec![0f32; f]);
        for (j, dr) in dc.chunks_exact_mut(2 * f).enumerate() {
            let r = ci * ROWS + j;
            let (gate, up) = gu[r * 2 * f..(r + 1) * 2 * f].split_at(f);
            let dar = &da[r * f..(r + 1) * f];
            let (dg, du) = dr.split_at_mut(f);
            gelu_sigmoid(gate, &mut z, &mut sig);
            for i in 0..f {
                let (x, s) = (gate[i], sig[i]);
                let dz = 2.0 * GELU_K * (1.0 + 3.0 * GELU_C * x * x);
                du[i] = dar[i] * x * s;
                dg[i] = dar[i] * up[i] * (s + x * s * (1.0 - s) * dz);
            }
        }
    });
}

/// What the fused head + cross-entropy adds gradients to: dh (set), dW (added; None when
/// the head is frozen), and the factor on the loss.
pub type HeadGrads<'a, 'b> = (&'a mut [f32], Option<&'b mut [f32]>, f32);

/// Rows of logits computed at once by the fused head + cross-entropy: as many as fit in
/// about 32 MB of logits (fewer repacks of the head weight), at least 256.
fn ce_chunk(vocab: usize) -> usize {
    ((8usize << 20) / vocab.max(1)).max(256)
}

/// Mean cross-entropy of `targets` under logits h W^T, without keeping the [N, V] logits:
/// rows go through in chunks. When `grads` is given, adds the gradients of `scale` x the
/// loss to dh (set) and dW (added, unless the head is frozen: None). `weights` makes the loss the weighted sum
/// sum_r w_r (-log p(target_r)) instead of the mean (a weight of 0 leaves a row out: the
/// prompt tokens of a conversation).
pub fn head_ce(
    h: &[f32],
    w: &[f32],
    c: usize,
    vocab: usize,
    targets: &[u32],
    weights: Option<&[f32]>,
    grads: Option<HeadGrads>,
) -> f64 {
    head_ce_rows(h, w, c, vocab, targets, weights, grads, None)
}

/// Each row's -log p(target) under logits h W^T, into `out` (the per-token log-likelihoods
/// that preference and policy objectives combine).
pub fn head_nll_rows(
    h: &[f32],
    w: &[f32],
    c: usize,
    vocab: usize,
    targets: &[u32],
    out: &mut [f32],
) {
    head_ce_rows(h, w, c, vocab, targets, None, None, Some(out));
}

#[allow(clippy::too_many_arguments)]
fn head_ce_rows(
    h: &[f32],
    w: &[f32],
    c: usize,
    vocab: usize,
    targets: &[u32],
    weights: Option<&[f32]>,
    grads: Option<HeadGrads>,
    mut rows_out: Option<&mut [f32]>,
) -> f64 {
    let n = targets.len();
    // rows of weight 0 (prompt tokens, padding) add nothing to the loss or the gradients:
    // only the others meet the head (in fine-tuning, most of a vocabulary head's work)
    if let (Some(wts), None) = (weights, rows_out.as_ref()) {
        let keep: Vec<usize> = (0..n).filter(|&r| wts[r] != 0.0).collect();
        if keep.len() < n {
            let hk: Vec<f32> = keep
                .iter()
                .flat_map(|&r| h[r * c..(r + 1) * c].iter().copied())
                .collect();
            let tk: Vec<u32> = keep.iter().map(|&r| targets[r]).collect();
            let wk: Vec<f32> = keep.iter().map(|&r| wts[r]).collect();
            return match grads {
                Some((dh, dw, scale)) => {
                    let mut dhk = vec![0f32; keep.len() * c];
                    let loss = head_ce_rows(
                        &hk,
                        w,
                        c,
                        vocab,
                        &tk,
                        Some(&wk),
                        Some((&mut dhk, dw, scale)),
                        None,
                    );
                    dh.fill(0.0);
                    for (j, &r) in keep.iter().enumerate() {
                        dh[r * c..(r + 1) * c].copy_from_slice(&dhk[j * c..(j + 1) * c]);
                    }
                    loss
                }
                None => head_ce_rows(&hk, w, c, vocab, &tk, Some(&wk), None, None),
            };
        }
    }
    // without weights: the mean (divided once at the end, as the pretraining loss always was)
    let weight = |r: usize| weights.map_or(1.0, |w| w[r]);
    let chunk = ce_chunk(vocab);
    // the logits buffer (tens of MB) is kept from call to call: a fresh one each step
    // cost page faults and the kernel's zeroing of every page
    let mut logits = HEAD_LOGITS.with(|l| std::mem::take(&mut *l.borrow_mut()));
    logits.resize(chunk.min(n) * vocab, 0.0);
    let mut total = 0f64;
    let mut grads = grads;
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        let hc = &h[r0 * c..(r0 + rows) * c];
        let lg = &mut logits[..rows * vocab];
        linear(hc, w, c, vocab, lg);
        // softmax rows in place, each row's loss kept for a sum in row order
        let tg = &targets[r0..r0 + rows];
        let mut row_loss = vec![0f32; rows];
        // with gradients, each row becomes d loss / d logits in the same pass, while it is
        // still in cache: k (p - onehot(target)), k = scale x the row's weight (or 1 / n)
        let grad_k = grads.as_ref().map(|(_, _, scale)| *scale);
        for_each_chunks_mut(
            [&mut *lg, &mut row_loss[..]],
            [16 * vocab, 16],
            |ci, [lc, lo]| {
                for (j, row) in lc.chunks_exact_mut(vocab).enumerate() {
                    let r = r0 + ci * 16 + j;
                    let k = grad_k.map(|scale| match weights {
                        Some(w) => scale * w[r],
                        None => scale / n as f32,
                    });
                    lo[j] = softmax_xent_row(row, tg[ci * 16 + j] as usize, k);
                }
            },
        );
        total += row_loss
            .iter()
            .enumerate()
            .map(|(j, &l)| l as f64 * weight(r0 + j) as f64)
            .sum::<f64>();
        if let Some(out) = rows_out.as_mut() {
            out[r0..r0 + rows].copy_from_slice(&row_loss);
        }
        if let Some((dh, dw, _)) = grads.as_mut() {
            linear_back(
                hc,
                w,
                lg,
                c,
                vocab,
                &mut dh[r0 * c..(r0 + rows) * c],
                dw.as_deref_mut(),
                false,
            );
        }
    }
    HEAD_LOGITS.with(|l| *l.borrow_mut() = logits);
    if weights.is_some() {
        total
    } else {
        total / n as f64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn rand_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 20001) as f32 / 10000.0 - 1.0) * amp
            })
            .collect()
    }

    /// Checks an analytic gradient against central differences of `f` at `x`, on up to
    /// `probes` coordinates.
    pub fn check_grad(
        name: &str,
        x: &mut [f32],
        analytic: &[f32],
        probes: usize,
        f: &mut dyn FnMut(&[f32]) -> f64,
    ) {
        check_grad_eps(name, x, analytic, probes, 1e-2, f)
    }

    /// `check_grad` with central differences of step `eps`.
    pub fn check_grad_eps(
        name: &str,
        x: &mut [f32],
        analytic: &[f32],
        probes: usize,
        eps: f32,
        f: &mut dyn FnMut(&[f32]) -> f64,
    ) {
        let step = (x.len() / probes).max(1);
        let mut worst = 0f64;
        for i in (0..x.len()).step_by(step) {
            let old = x[i];
            x[i] = old + eps;
            let up = f(x);
            x[i] = old - eps;
            let down = f(x);
            x[i] = old;
            let num = (up - down) / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            let err = (num - a).abs() / (1e-2 + num.abs().max(a.abs()));
            worst = worst.max(err);
            assert!(err < 2e-2, "{name}[{i}]: analytic {a} vs numeric {num}");
        }
        assert!(worst.is_finite(), "{name}");
    }

    /// Loss = sum(dy * y) makes dy the upstream gradient of any layer output y.
    fn weighted(y: &[f32], dy: &[f32]) -> f64 {
        y.iter().zip(dy).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let (n, i, o) = (5, 7, 3);
        let mut x = rand_vec(n * i, 1, 1.0);
        let mut w = rand_vec(o * i, 2, 1.0);
        let dy = rand_vec(n * o, 3, 1.0);
        let (mut dx, mut dw) = (vec![0f32; n * i], vec![0f32; o * i]);
        linear_back(&x, &w, &dy, i, o, &mut dx, Some(&mut dw), false);
        let wc = w.clone();
        check_grad("dx", &mut x, &dx, 35, &mut |x| {
            let mut y = vec![0f32; n * o];
            linear(x, &wc, i, o, &mut y);
            weighted(&y, &dy)
        });
        let xc = x.clone();
        check_grad("dw", &mut w, &dw, 21, &mut |w| {
            let mut y = vec![0f32; n * o];
            linear(&xc, w, i, o, &mut y);
            weighted(&y, &dy)
        });
    }

    #[test]
    fn rmsnorm_gradients_match_finite_differences() {
        let (n, c) = (4, 10);
        let mut x = rand_vec(n * c, 4, 2.0);
        let mut g = rand_vec(c, 5, 1.0);
        let dy = rand_vec(n * c, 6, 1.0);
        let mut y = vec![0f32; n * c];
        let mut r = vec![0f32; n];
        rmsnorm_fwd(&x, &g, 1e-5, &mut y, &mut r);
        let (mut dx, mut dg) = (vec![0f32; n * c], vec![0f32; c]);
        rmsnorm_back(&x, &g, &r, &dy, &mut dx, Some(&mut dg));
        let gc = g.clone();
        let f = |x: &[f32], g: &[f32]| {
            let mut y = vec![0f32; n * c];
            let mut r = vec![0f32; n];
            rmsnorm_fwd(x, g, 1e-5, &mut y, &mut r);
            weighted(&y, &dy)
        };
        check_grad("dx", &mut x, &dx, 40, &mut |x| f(x, &gc));
        let xc = x.clone();
        check_grad("dg", &mut g, &dg, 10, &mut |g| f(&xc, g));
    }

    #[test]
    fn rope_backward_is_the_transpose_of_the_forward() {
        // rows of 24 values of which the first 16 (two heads of 8) rotate
        let (t, hd, w, rot) = (5, 8, 24, 16);
        let table = rope_table(t, hd, 10000.0);
        let mut x = rand_vec(2 * t * w, 7, 1.0);
        let dy = rand_vec(2 * t * w, 8, 1.0);
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let mut dx = dy.clone();
            rope_rows(&mut dx, w, rot, hd, t, &table, style, true);
            check_grad("rope", &mut x, &dx, 120, &mut |x| {
                let mut y = x.to_vec();
                rope_rows(&mut y, w, rot, hd, t, &table, style, false);
                weighted(&y, &dy)
            });
            // values past `rot` are untouched
            let mut y = x.clone();
            rope_rows(&mut y, w, rot, hd, t, &table, style, false);
            for r in 0..2 * t {
                assert_eq!(y[r * w + rot..(r + 1) * w], x[r * w + rot..(r + 1) * w]);
            }
        }
    }

    /// The attention's output for `qkv` and its gradient for the upstream gradient `dy`
    /// (dqkv starts as NaN, so a value never written shows).
    fn attention_out_and_grad(s: AttnShape, qkv: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let n = s.batch * s.t;
        let mut out = vec![0f32; n * s.heads * s.head_dim];
        let mut st = vec![0f32; s.state_len()];
        attention_fwd(s, qkv, &mut out, &mut st);
        let mut dqkv = vec![f32::NAN; n * s.qkv_width()];
        attention_back(s, qkv, &st, dy, &mut dqkv);
        (out, dqkv)
    }

    /// Every gradient of the attention against the formulas evaluated in f64 (finite
    /// differences above sample 200 of them): grouped queries, several batch rows,
    /// sequences shorter than, equal to and longer than one query block.
    #[test]
    fn attention_backward_matches_f64_formulas_everywhere() {
        crate::tests::init_pool();
        for (heads, kv, t, d) in [
            (4usize, 2usize, 37usize, 16usize),
            (2, 1, QB, 8),
            (3, 3, 5, 8),
            (2, 2, 3 * QB + 1, 8),
        ] {
            let s = AttnShape {
                batch: 3,
                t,
                heads,
                kv_heads: kv,
                head_dim: d,
                scale: 0.3,
            };
            let (n, g) = (s.batch * t, heads / kv);
            let (qw, w) = (heads * d, s.qkv_width());
            let qkv = rand_vec(n * w, 21, 1.0);
            let dy = rand_vec(n * qw, 22, 1.0);
            let (_, dqkv) = attention_out_and_grad(s, &qkv, &dy);
            let mut want = vec![0f64; n * w];
            let at = |r: usize, c: usize| qkv[r * w + c] as f64;
            for b in 0..s.batch {
                for h in 0..heads {
                    let kvh = h / g;
                    let (qc, kc, vc) = (h * d, qw + kvh * d, qw + kv * d + kvh * d);
                    for i in 0..t {
                        let ri = b * t + i;
                        let sc: Vec<f64> = (0..=i)
                            .map(|j| {
                                (0..d)
                                    .map(|x| at(ri, qc + x) * at(b * t + j, kc + x))
                                    .sum::<f64>()
                                    * 0.3
                            })
                            .collect();
                        let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                        let z: f64 = sc.iter().map(|v| (v - mx).exp()).sum();
                        let pr: Vec<f64> = sc.iter().map(|v| (v - mx).exp() / z).collect();
                        let dp: Vec<f64> = (0..=i)
                            .map(|j| {
                                (0..d)
                                    .map(|x| dy[ri * qw + h * d + x] as f64 * at(b * t + j, vc + x))
                                    .sum()
                            })
                            .collect();
                        let dot: f64 = pr.iter().zip(&dp).map(|(a, b)| a * b).sum();
                        for j in 0..=i {
                            let rj = b * t + j;
                            let ds = pr[j] * (dp[j] - dot) * 0.3;
                            for x in 0..d {
                                want[ri * w + qc + x] += ds * at(rj, kc + x);
                                want[rj * w + kc + x] += ds * at(ri, qc + x);
                                want[rj * w + vc + x] += pr[j] * dy[ri * qw + h * d + x] as f64;
                            }
                        }
                    }
                }
            }
            for (i, (&got, &w64)) in dqkv.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - w64).abs() <= 1e-4 * (1.0 + w64.abs()),
                    "heads {heads} kv {kv} t {t}: value {i} (row {}, column {}): {got} vs {w64}",
                    i / w,
                    i % w
                );
            }
        }
    }

    #[test]
    fn attention_gradients_match_finite_differences() {
        crate::tests::init_pool();
        // grouped-query and plain; a sequence longer than one query block too
        for (heads, kv, t) in [(4usize, 2usize, 5usize), (2, 2, 5), (2, 1, QB + 7)] {
            let s = AttnShape {
                batch: 2,
                t,
                heads,
                kv_heads: kv,
                head_dim: 4,
                scale: 0.5,
            };
            let n = s.batch * s.t;
            let (qw, w) = (heads * 4, s.qkv_width());
            let mut qkv = rand_vec(n * w, 9, 1.0);
            let dy = rand_vec(n * qw, 12, 1.0);
            let (out, dqkv) = attention_out_and_grad(s, &qkv, &dy);
            assert!(
                dqkv.iter().all(|x| x.is_finite()),
                "every gradient is written"
            );
            check_grad("dqkv", &mut qkv, &dqkv, 200, &mut |qkv| {
                let mut out = vec![0f32; n * qw];
                let mut st = vec![0f32; s.state_len()];
                attention_fwd(s, qkv, &mut out, &mut st);
                weighted(&out, &dy)
            });
            // causality: the first token's output depends on no later key or value
            let mut later = qkv.clone();
            for r in 1..t {
                later[r * w + qw..(r + 1) * w]
                    .iter_mut()
                    .for_each(|x| *x += 1.0);
            }
            let (out2, _) = attention_out_and_grad(s, &later, &dy);
            assert_eq!(out[..qw], out2[..qw]);
            assert_ne!(out[qw..2 * qw], out2[qw..2 * qw]);
        }
    }

    #[test]
    fn swiglu_gradients_match_finite_differences() {
        crate::tests::init_pool();
        let (n, f) = (40, 7);
        let mut gu = rand_vec(n * 2 * f, 13, 3.0);
        let da = rand_vec(n * f, 15, 1.0);
        let mut dgu = vec![0f32; n * 2 * f];
        swiglu_back(&gu, f, &da, &mut dgu);
        check_grad("dgu", &mut gu, &dgu, 120, &mut |gu| {
            let mut a = vec![0f32; n * f];
            swiglu_fwd(gu, f, &mut a);
            weighted(&a, &da)
        });
    }

    #[test]
    fn geglu_gradients_match_finite_differences() {
        crate::tests::init_pool();
        let (n, f) = (40, 7);
        let mut gu = rand_vec(n * 2 * f, 14, 3.0);
        let da = rand_vec(n * f, 18, 1.0);
        let mut dgu = vec![0f32; n * 2 * f];
        geglu_back(&gu, f, &da, &mut dgu);
        check_grad("dgu", &mut gu, &dgu, 120, &mut |gu| {
            let mut a = vec![0f32; n * f];
            geglu_fwd(gu, f, &mut a);
            weighted(&a, &da)
        });
        // the 8-lane sigmoid form against the scalar tanh reference, over a wide range
        // (past where the sigmoid saturates either way)
        let f = 96;
        let gate: Vec<f32> = (0..f).map(|i| (i as f32 - 48.0) * 0.25).collect();
        let gu: Vec<f32> = gate
            .iter()
            .copied()
            .chain(std::iter::repeat_n(1.0, f))
            .collect();
        let mut a = vec![0f32; f];
        geglu_fwd(&gu, f, &mut a);
        for (i, (&x, &y)) in gate.iter().zip(&a).enumerate() {
            let want = llmos_tensor::ops::gelu_tanh(x);
            assert!(
                (y - want).abs() <= 2e-6 * (1.0 + want.abs()),
                "gelu({x}) = {y}, want {want} (at {i})"
            );
        }
    }

    #[test]
    fn fused_head_cross_entropy_matches_finite_differences() {
        crate::tests::init_pool();
        // more rows than one chunk, so the chunked path is covered
        // a target 200 nats below the best logit: its probability underflows in f32, the
        // loss must not
        let far = head_ce(&[1.0], &[100.0, -100.0], 1, 2, &[1], None, None);
        assert!((far - 200.0).abs() < 1e-3, "{far}");
        let v = 20_000;
        let (n, c) = (ce_chunk(v) + 9, 6);
        let mut h = rand_vec(n * c, 16, 1.0);
        let mut w = rand_vec(v * c, 17, 1.0);
        let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
        let (mut dh, mut dw) = (vec![0f32; n * c], vec![0f32; v * c]);
        let loss = head_ce(
            &h,
            &w,
            c,
            v,
            &targets,
            None,
            Some((&mut dh, Some(&mut dw), 1.0)),
        );
        // the loss itself equals a plain log-softmax
        let mut want = 0f64;
        for i in 0..n {
            let lg: Vec<f64> = (0..v)
                .map(|j| {
                    (0..c)
                        .map(|k| h[i * c + k] as f64 * w[j * c + k] as f64)
                        .sum()
                })
                .collect();
            let m = lg.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + lg.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            want += lse - lg[targets[i] as usize];
        }
        assert!((loss - want / n as f64).abs() < 1e-4);
        let wc = w.clone();
        check_grad("dh", &mut h, &dh, 50, &mut |h| {
            head_ce(h, &wc, c, v, &targets, None, None)
        });
        let hc = h.clone();
        check_grad("dw", &mut w, &dw, 40, &mut |w| {
            head_ce(&hc, w, c, v, &targets, None, None)
        });
    }
}
