//! AdamW with decoupled weight decay, the learning-rate schedule (linear warm-up, then
//! cosine or linear decay to a floor) and global-norm gradient clipping.

use llmos_tensor::pool::{for_each_chunk_mut, for_each_chunks_mut};
use serde::{Deserialize, Serialize};

/// AdamW state: first and second moments of every parameter and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

impl AdamW {
    pub fn new(n: usize, weight_decay: f32) -> AdamW {
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One update of `p` from gradient `g` at learning rate `lr`. `decay` lists the ranges
    /// of `p` that weight decay applies to (decoupled: p -= lr * wd * p).
    pub fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32, decay: &[std::ops::Range<usize>]) {
        self.step_scaled(p, g, 1.0, lr, decay)
    }

    /// [`AdamW::step`] from the gradient `k g` (the clipping factor of [`clip_factor`]
    /// applied as each value is read: the same products as scaling `g` first, one pass
    /// over it fewer).
    pub fn step_scaled(
        &mut self,
        p: &mut [f32],
        g: &[f32],
        k: f32,
        lr: f32,
        decay: &[std::ops::Range<usize>],
    ) {
        assert!(p.len() == g.len() && p.len() == self.m.len());
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - (b1 as f64).powi(self.t as i32);
        let c2 = 1.0 - (b2 as f64).powi(self.t as i32);
        let step = (lr as f64 / c1) as f32;
        let c2s = (1.0 / c2.sqrt()) as f32;
        let eps = self.eps;
        let upd = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], wd: f32| {
            const CH: usize = 1 << 14;
            for_each_chunks_mut([p, m, v], [CH; 3], |ci, [p, m, v]| {
                let g = &g[ci * CH..ci * CH + p.len()];
                for i in 0..p.len() {
                    let gi = g[i] * k;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let denom = v[i].sqrt() * c2s + eps;
                    p[i] -= step * m[i] / denom + lr * wd * p[i];
                }
            });
        };
        let mut at = 0;
        let mut ranges: Vec<_> = decay.to_vec();
        ranges.sort_by_key(|r| r.start);
        for r in ranges.iter().chain(std::iter::once(&(p.len()..p.len()))) {
            // the gap before this decayed range, then the range itself
            let gap = at..r.start;
            upd(
                &mut p[gap.clone()],
                &g[gap.clone()],
                &mut self.m[gap.clone()],
                &mut self.v[gap.clone()],
                0.0,
            );
            let wd = self.weight_decay;
            upd(
                &mut p[r.clone()],
                &g[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r.clone()],
                wd,
            );
            at = r.end;
        }
    }
}

/// How the learning rate falls after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

/// Learning rate at `step` (0-based) of `steps`: linear warm-up over `warmup` steps to
/// `lr`, then decay to `min_lr` at the last step.
pub fn lr_at(step: usize, steps: usize, warmup: usize, lr: f32, min_lr: f32, decay: Decay) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    let span = steps.saturating_sub(warmup).max(1);
    let frac = ((step - warmup) as f32 / span as f32).min(1.0);
    let k = match decay {
        Decay::Cosine => 0.5 * (1.0 + (std::f32::consts::PI * frac).cos()),
        Decay::Linear => 1.0 - frac,
        Decay::Constant => 1.0,
    };
    min_lr + (lr - min_lr) * k
}

/// Scales `g` so its L2 norm is at most `max_norm` (when positive); returns the norm it had.
pub fn clip_grad(g: &mut [f32], max_norm: f32) -> f32 {
    let (norm, k) = clip_factor(g, max_norm);
    if k != 1.0 {
        const CH: usize = 1 << 14;
        for_each_chunk_mut(g, CH, |_, gc| gc.iter_mut().for_each(|x| *x *= k));
    }
    norm
}

/// The L2 norm of `g` and the factor that clips it to `max_norm` (1 when it is within, or
/// when `max_norm` is not positive).
pub fn clip_factor(g: &[f32], max_norm: f32) -> (f32, f32) {
    const CH: usize = 1 << 14;
    let mut part = vec![0f64; g.len().div_ceil(CH)];
    for_each_chunk_mut(&mut part, 1, |ci, s| {
        let gc = &g[ci * CH..(ci * CH + CH).min(g.len())];
        s[0] = gc.iter().map(|&x| x as f64 * x as f64).sum();
    });
    let norm = part.iter().sum::<f64>().sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        (norm, max_norm / norm)
    } else {
        (norm, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let f = |s| lr_at(s, 100, 10, 1.0, 0.1, Decay::Cosine);
        assert!((f(0) - 0.1).abs() < 1e-6);
        assert!((f(9) - 1.0).abs() < 1e-6);
        assert!((f(10) - 1.0).abs() < 1e-6);
        assert!(f(50) < f(20) && f(50) > 0.1);
        assert!((f(100) - 0.1).abs() < 1e-6);
        assert!((lr_at(55, 100, 10, 1.0, 0.0, Decay::Linear) - 0.5).abs() < 1e-6);
        assert_eq!(lr_at(70, 100, 10, 0.3, 0.0, Decay::Constant), 0.3);
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut g = vec![3.0, 4.0];
        assert_eq!(clip_grad(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut h = vec![0.3, 0.4];
        clip_grad(&mut h, 1.0);
        assert_eq!(h, vec![0.3, 0.4]);
    }

    /// First step of Adam moves each parameter by lr against the gradient's sign (the bias
    /// corrections cancel); decay shrinks only the listed range, by lr * wd * p.
    #[test]
    fn adamw_first_step_and_decoupled_decay() {
        let mut p = vec![1.0f32, 1.0, 1.0, 1.0];
        let g = vec![0.5f32, -2.0, 0.5, -2.0];
        let mut opt = AdamW::new(4, 0.1);
        let decayed = vec![std::ops::Range { start: 2, end: 4 }];
        opt.step(&mut p, &g, 0.01, &decayed);
        let want = [0.99f32, 1.01, 0.99 - 0.001, 1.01 - 0.001];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{p:?}");
        }
    }

    /// AdamW minimises a quadratic.
    #[test]
    fn adamw_converges_on_a_quadratic() {
        let target = [3.0f32, -1.0, 0.5];
        let mut p = vec![0f32; 3];
        let mut opt = AdamW::new(3, 0.0);
        for s in 0..2000 {
            let g: Vec<f32> = p.iter().zip(&target).map(|(a, b)| 2.0 * (a - b)).collect();
            opt.step(
                &mut p,
                &g,
                lr_at(s, 2000, 50, 0.05, 0.0, Decay::Cosine),
                &[],
            );
        }
        for (a, b) in p.iter().zip(target) {
            assert!((a - b).abs() < 1e-2, "{p:?}");
        }
    }
}
