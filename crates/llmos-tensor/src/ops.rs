//! Element-wise and row kernels shared by inference and training: norms, softmax,
//! activations, rotary embeddings. Plain scalar code written so the compiler vectorizes it.

/// Dot product of two f32 slices of equal length, with 8 independent partial sums so the
/// loop vectorizes and does not serialize on one accumulator.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        let (pa, pb) = (&a[8 * i..8 * i + 8], &b[8 * i..8 * i + 8]);
        for k in 0..8 {
            acc[k] += pa[k] * pb[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in 8 * chunks..n {
        s += a[i] * b[i];
    }
    s
}

/// y = x / rms(x) * w, per row of `w.len()` values. `x` and `y` are [rows, C].
pub fn rmsnorm(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / ((ss / c as f64) + eps as f64).sqrt()) as f32;
        for i in 0..c {
            yr[i] = xr[i] * scale * w[i];
        }
    }
}

/// In-place RMSNorm of each row of `x` ([rows, C] with C = w.len()).
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let c = w.len();
    for xr in x.chunks_exact_mut(c) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / ((ss / c as f64) + eps as f64).sqrt()) as f32;
        for i in 0..c {
            xr[i] = xr[i] * scale * w[i];
        }
    }
}

/// Numerically stable in-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU: x * sigmoid(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (what Gemma's `gelu_pytorch_tanh` computes).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF `llama` files (their Q/K rows are permuted to match).
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX style, used by qwen2, gemma and HF checkpoints.
    Neox,
}

/// Inverse frequencies theta_i = base^(-2i/d) / factor_i for one head of `rot_dim` rotated
/// dims; `freq_factors` (Llama 3.1 `rope_freqs`) divide each frequency when given.
pub fn rope_inv_freqs(
    rot_dim: usize,
    base: f32,
    scale: f32,
    freq_factors: Option<&[f32]>,
) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| {
            let f = (base as f64).powf(-2.0 * i as f64 / rot_dim as f64) as f32;
            let ff = freq_factors.map_or(1.0, |v| v[i]);
            f / ff * scale
        })
        .collect()
}

/// Rotates each head of `x` ([n_head, head_dim]) in place for position `pos`, using the
/// first `inv_freq.len() * 2` dims of each head.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], style: RopeStyle) {
    let cs: Vec<(f32, f32)> = inv_freq
        .iter()
        .map(|&f| {
            let (s, c) = (pos as f32 * f).sin_cos();
            (c, s)
        })
        .collect();
    rope_cs(x, head_dim, &cs, style);
}

/// Rotates each head of `x` in place by the given (cos, sin) per rotated pair.
pub fn rope_cs(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)], style: RopeStyle) {
    #[cfg(target_arch = "x86_64")]
    if style == RopeStyle::Interleaved
        && head_dim.is_multiple_of(8)
        && head_dim <= 256
        && cs.len() == head_dim / 2
        && crate::avx2::available()
    {
        // SAFETY: the CPU reported AVX2, FMA and F16C, the features this kernel enables.
        return unsafe { crate::avx2::rope_interleaved(x, head_dim, cs) };
    }
    rope_cs_ref(x, head_dim, cs, style)
}

/// The scalar [`rope_cs`]: the oracle and the fallback.
pub fn rope_cs_ref(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)], style: RopeStyle) {
    let half = cs.len();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 interleaved rotation equals the scalar one bit for bit.
    #[test]
    fn rope_simd_equals_scalar() {
        for hd in [8usize, 16, 64, 256] {
            let cs: Vec<(f32, f32)> = (0..hd / 2)
                .map(|i| ((i as f32 * 0.37).cos(), (i as f32 * 0.37).sin()))
                .collect();
            let x: Vec<f32> = (0..3 * hd).map(|i| (i as f32 * 0.61).sin() * 3.0).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            rope_cs(&mut a, hd, &cs, RopeStyle::Interleaved);
            rope_cs_ref(&mut b, hd, &cs, RopeStyle::Interleaved);
            assert_eq!(a, b, "head_dim {hd}");
            assert_ne!(a, x);
        }
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        for n in [0usize, 1, 7, 8, 9, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot_f32(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, -2.0, 10.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > x[1] && x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn rmsnorm_unit_weight_gives_unit_rms() {
        let x = vec![3.0f32, -4.0, 0.0, 12.0];
        let mut y = vec![0.0; 4];
        rmsnorm(&mut y, &x, &[1.0; 4], 0.0);
        let rms = (y.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_styles_rotate_the_documented_pairs() {
        // one head of 4 dims, one frequency of 1 rad per position at i = 0
        let inv = [1.0f32, 0.0];
        let mut a = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut a, 4, 1, &inv, RopeStyle::Interleaved);
        assert!((a[0] - 1f32.cos()).abs() < 1e-6 && (a[1] - 1f32.sin()).abs() < 1e-6);
        let mut b = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut b, 4, 1, &inv, RopeStyle::Neox);
        assert!((b[0] - 1f32.cos()).abs() < 1e-6 && (b[2] - 1f32.sin()).abs() < 1e-6);
        // rotation keeps the norm
        let n: f32 = b.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-6);
    }

    #[test]
    fn activations_at_known_points() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!(gelu_tanh(-10.0).abs() < 1e-6);
    }
}

/// Attention of one query over keys/values `first..=last` of a cache, flash-style: keys are
/// scored in blocks of 64 with a running maximum and normaliser (online softmax), so memory
/// stays one block whatever the context length. Row p of K is `k[p * k_stride..][..q.len()]`,
/// row p of V is `v[p * v_stride..][..out.len()]`; scores are `q.k * scale`, optionally
/// soft-capped as `cap * tanh(x / cap)`.
#[allow(clippy::too_many_arguments)]
pub fn attend_online(
    q: &[f32],
    k: &[f32],
    k_stride: usize,
    v: &[f32],
    v_stride: usize,
    keys: std::ops::RangeInclusive<usize>,
    scale: f32,
    softcap: Option<f32>,
    out: &mut [f32],
) {
    const BLOCK: usize = 64;
    let d = q.len();
    out.fill(0.0);
    let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
    let mut s = [0f32; BLOCK];
    let (first, last) = (*keys.start(), *keys.end());
    let mut b0 = first;
    while b0 <= last {
        let b1 = (b0 + BLOCK - 1).min(last);
        let mut bm = f32::NEG_INFINITY;
        for (i, p) in (b0..=b1).enumerate() {
            let mut x = dot_f32(q, &k[p * k_stride..p * k_stride + d]) * scale;
            if let Some(cap) = softcap {
                x = cap * (x / cap).tanh();
            }
            s[i] = x;
            bm = bm.max(x);
        }
        let m_new = m.max(bm);
        let correction = (m - m_new).exp();
        l *= correction;
        out.iter_mut().for_each(|o| *o *= correction);
        for (i, p) in (b0..=b1).enumerate() {
            let w = (s[i] - m_new).exp();
            l += w;
            let vv = &v[p * v_stride..p * v_stride + out.len()];
            out.iter_mut().zip(vv).for_each(|(a, b)| *a += w * b);
        }
        m = m_new;
        b0 = b1 + 1;
    }
    let inv = 1.0 / l;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod attention_tests {
    use super::*;

    /// The blocked online softmax equals scoring every key, softmax, then the weighted sum.
    #[test]
    fn online_attention_equals_full_softmax() {
        let mut st = 7u64;
        let mut f = || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st % 20001) as f32 / 10000.0 - 1.0
        };
        let (d, dv, n, ks, vs) = (16usize, 8usize, 300usize, 40usize, 24usize);
        let q: Vec<f32> = (0..d).map(|_| f() * 3.0).collect();
        let k: Vec<f32> = (0..n * ks).map(|_| f()).collect();
        let v: Vec<f32> = (0..n * vs).map(|_| f()).collect();
        for (first, last, cap) in [
            (0usize, 0usize, None),
            (0, 299, None),
            (37, 250, Some(5.0f32)),
        ] {
            let mut want_s: Vec<f32> = (first..=last)
                .map(|p| {
                    let mut x = dot_f32(&q, &k[p * ks..p * ks + d]) * 0.25;
                    if let Some(c) = cap {
                        x = c * (x / c).tanh();
                    }
                    x
                })
                .collect();
            softmax(&mut want_s);
            let mut want = vec![0f32; dv];
            for (p, &w) in (first..=last).zip(&want_s) {
                for i in 0..dv {
                    want[i] += w * v[p * vs + i];
                }
            }
            let mut got = vec![0f32; dv];
            attend_online(&q, &k, ks, &v, vs, first..=last, 0.25, cap, &mut got);
            for i in 0..dv {
                assert!(
                    (got[i] - want[i]).abs() < 1e-5,
                    "{first}..={last} {i}: {} vs {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}
