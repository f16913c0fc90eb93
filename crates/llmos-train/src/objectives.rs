//! Post-training objectives on top of the model's trunk: a reward model (scalar head,
//! Bradley-Terry loss on comparisons), direct preference optimisation against a frozen
//! reference, and the group-relative policy objective (clipped ratio plus a KL penalty).
//! DPO and GRPO only re-weight per-token log-likelihoods, so their gradients go through
//! the weighted LM loss: each computes dL/d(-log p) per token, then one weighted backward.

use crate::model::{Model, Workspace};

/// Rows of equal width for a batch: `tokens` b x (t + 1), `mask` b x t (1 where the
/// predicted token is the response's), `last[r]`: the input position of row r's final
/// real token (where a reward model reads its score).
#[derive(Clone, Debug, Default)]
pub struct Rows {
    pub tokens: Vec<u32>,
    pub mask: Vec<f32>,
    pub last: Vec<usize>,
    pub b: usize,
    pub t: usize,
}

impl Rows {
    /// Packs sequences (ids, and per id whether it belongs to the response) padded with
    /// `pad` to the longest.
    pub fn pack(seqs: &[(&[u32], &[bool])], pad: u32) -> Rows {
        let t = seqs
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(1)
            .max(2);
        // t inputs per row: the longest sequence's last token must be an input too
        let mut r = Rows {
            b: seqs.len(),
            t,
            ..Rows::default()
        };
        for (ids, learn) in seqs {
            r.tokens.extend_from_slice(ids);
            r.tokens.extend(std::iter::repeat_n(pad, t + 1 - ids.len()));
            r.mask
                .extend(learn.iter().skip(1).map(|&l| f32::from(u8::from(l))));
            r.mask.extend(std::iter::repeat_n(0.0, t - (ids.len() - 1)));
            r.last.push(ids.len() - 1);
        }
        r
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// -log sigmoid(x), stable for large |x|.
fn softplus_neg(x: f64) -> f64 {
    if x > 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    }
}

/// Reward of every row: w . h[last] + bias, `head` = [w (dim), bias].
pub fn rewards(
    model: &Model,
    p: &[f32],
    head: &[f32],
    rows: &Rows,
    ws: &mut Workspace,
) -> Vec<f64> {
    let h = model.hidden(p, &rows.tokens, rows.b, rows.t, ws);
    rewards_of(h, model.cfg.dim, head, rows)
}

/// Rewards from hidden states already computed for `rows`.
fn rewards_of(h: &[f32], dim: usize, head: &[f32], rows: &Rows) -> Vec<f64> {
    (0..rows.b)
        .map(|r| {
            let hr = &h[(r * rows.t + rows.last[r]) * dim..][..dim];
            hr.iter()
                .zip(&head[..dim])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
                + head[dim] as f64
        })
        .collect()
}

/// Bradley-Terry loss of a reward model on comparisons: rows 0..k are the chosen answers,
/// k..2k the rejected ones, pair i = (i, k + i). Loss = mean_i -log sigmoid(r_c - r_r).
/// Adds the gradients into `g` (trunk) and `ghead`; returns (loss, pairwise accuracy).
pub fn rm_loss_and_grad(
    model: &Model,
    p: &[f32],
    head: &[f32],
    g: &mut [f32],
    ghead: &mut [f32],
    rows: &Rows,
    ws: &mut Workspace,
) -> (f64, f64) {
    assert!(
        rows.b.is_multiple_of(2),
        "chosen and rejected rows in pairs"
    );
    let (k, dim, t) = (rows.b / 2, model.cfg.dim, rows.t);
    let h = model.hidden(p, &rows.tokens, rows.b, t, ws).to_vec();
    let r = rewards_of(&h, dim, head, rows);
    let mut dr = vec![0f64; rows.b];
    let (mut loss, mut right) = (0.0, 0usize);
    for i in 0..k {
        let d = r[i] - r[k + i];
        loss += softplus_neg(d) / k as f64;
        right += usize::from(d > 0.0);
        // d/dd -log sigmoid(d) = -sigmoid(-d)
        let gd = -sigmoid(-d) / k as f64;
        dr[i] = gd;
        dr[k + i] = -gd;
    }
    let mut dh = vec![0f32; h.len()];
    for (row, &d) in dr.iter().enumerate() {
        let at = (row * t + rows.last[row]) * dim;
        for j in 0..dim {
            dh[at + j] = (d * head[j] as f64) as f32;
            ghead[j] += (d * h[at + j] as f64) as f32;
        }
        ghead[dim] += d as f32;
    }
    model.backward_hidden(p, g, &dh, rows.b, t, ws);
    (loss, right as f64 / k.max(1) as f64)
}

/// Sum of log p over each row's response tokens.
pub fn seq_logps(model: &Model, p: &[f32], rows: &Rows, ws: &mut Workspace) -> Vec<f64> {
    let mut nll = vec![0f32; rows.b * rows.t];
    model.token_nll(p, &rows.tokens, rows.b, rows.t, ws, &mut nll);
    nll.chunks_exact(rows.t)
        .zip(rows.mask.chunks_exact(rows.t))
        .map(|(n, m)| {
            -n.iter()
                .zip(m)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        })
        .collect()
}

/// DPO on pairs laid out as in `rm_loss_and_grad`, against the reference's sequence
/// log-probabilities `ref_logps` (one per row): loss = mean_i -log sigmoid(beta
/// ((pi_c - ref_c) - (pi_r - ref_r))). Adds the gradient into `g`; returns (loss, the share
/// of pairs whose implicit reward ranks the chosen answer first).
pub fn dpo_loss_and_grad(
    model: &Model,
    p: &[f32],
    g: &mut [f32],
    rows: &Rows,
    ref_logps: &[f64],
    beta: f64,
    ws: &mut Workspace,
) -> (f64, f64) {
    assert!(
        rows.b.is_multiple_of(2),
        "chosen and rejected rows in pairs"
    );
    let k = rows.b / 2;
    let pi = seq_logps(model, p, rows, ws);
    let mut w = vec![0f32; rows.b * rows.t];
    let (mut loss, mut right) = (0.0, 0usize);
    for i in 0..k {
        let z = beta * ((pi[i] - ref_logps[i]) - (pi[k + i] - ref_logps[k + i]));
        loss += softplus_neg(z) / k as f64;
        right += usize::from(z > 0.0);
        // dL/dpi_c = -beta sigmoid(-z) / k; pi = -sum nll, so dL/dnll_c = +beta sigmoid(-z) / k
        let c = beta * sigmoid(-z) / k as f64;
        for (row, sign) in [(i, 1.0), (k + i, -1.0)] {
            let m = &rows.mask[row * rows.t..(row + 1) * rows.t];
            for (wj, &mj) in w[row * rows.t..(row + 1) * rows.t].iter_mut().zip(m) {
                *wj = (sign * c) as f32 * mj;
            }
        }
    }
    model.loss_and_grad_weighted(p, g, &rows.tokens, Some(&w), rows.b, rows.t, 1.0, ws);
    (loss, right as f64 / k.max(1) as f64)
}

/// Settings of the GRPO loss.
#[derive(Clone, Copy, Debug)]
pub struct GrpoLoss {
    /// Ratio clip: the ratio is kept within [1 - eps, 1 + eps] where that helps the loss.
    pub clip_eps: f64,
    /// Weight of the KL(policy || reference) penalty (k3 estimator per token).
    pub beta: f64,
}

/// Group-relative advantages: (r - mean) / (std + 1e-4) within each group of `group` rows.
pub fn group_advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    rewards
        .chunks(group.max(1))
        .flat_map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let std = (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
            g.iter().map(move |r| (r - mean) / (std + 1e-4))
        })
        .collect()
}

/// The GRPO loss over completions (rows; mask = completion tokens), each with its
/// advantage, the per-token -log p under the sampling policy (`old_nll`; None when it is
/// the current policy, so the ratio is 1) and the reference (`ref_nll`), both b x t:
/// L = -(1 / completion tokens) sum_tokens [min(rho A, clip(rho) A) - beta k3], with
/// rho = p / p_old and k3 = p_ref / p - log(p_ref / p) - 1. Adds the gradient into `g`;
/// returns (loss, mean k3 per token).
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss_and_grad(
    model: &Model,
    p: &[f32],
    g: &mut [f32],
    rows: &Rows,
    adv: &[f64],
    old_nll: Option<&[f32]>,
    ref_nll: &[f32],
    cfg: GrpoLoss,
    ws: &mut Workspace,
) -> (f64, f64) {
    let (b, t) = (rows.b, rows.t);
    let mut nll = vec![0f32; b * t];
    model.token_nll(p, &rows.tokens, b, t, ws, &mut nll);
    let n = rows.mask.iter().filter(|&&m| m > 0.0).count().max(1) as f64;
    let mut w = vec![0f32; b * t];
    let (mut loss, mut kl) = (0.0, 0.0);
    for (r, &a) in adv.iter().enumerate().take(b) {
        for j in r * t..(r + 1) * t {
            if rows.mask[j] == 0.0 {
                continue;
            }
            let logp = -(nll[j] as f64);
            let rho = old_nll.map_or(1.0, |o| (logp + o[j] as f64).exp());
            let clipped = rho.clamp(1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps);
            let (surr, d_surr) = if rho * a <= clipped * a {
                (rho * a, rho * a)
            } else {
                // the clipped term is the minimum: constant in the parameters
                (clipped * a, 0.0)
            };
            let x = -(ref_nll[j] as f64) - logp; // log(p_ref / p)
            let k3 = x.exp() - x - 1.0;
            loss += (-surr + cfg.beta * k3) / n;
            kl += k3 / n;
            // dL/dlogp = (-d_surr + beta (1 - exp(x))) / n;  nll = -logp
            let dlogp = (-d_surr + cfg.beta * (1.0 - x.exp())) / n;
            w[j] = -dlogp as f32;
        }
    }
    model.loss_and_grad_weighted(p, g, &rows.tokens, Some(&w), b, t, 1.0, ws);
    (loss, kl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tests::{check_grad, check_grad_eps, rand_vec};
    use crate::model::{ModelConfig, init_params};

    fn tiny() -> (Model, Vec<f32>) {
        let cfg = ModelConfig {
            vocab: 11,
            dim: 8,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            ffn: 12,
            ctx: 8,
            tied: false,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            gemma: None,
        };
        let p: Vec<f32> = init_params(&cfg, 5).iter().map(|x| x * 3.0).collect();
        (Model::new(cfg), p)
    }

    /// Two pairs of different lengths; response = tokens after the first two.
    fn pairs() -> Rows {
        let seqs: Vec<Vec<u32>> = vec![
            vec![1, 2, 3, 4, 5],
            vec![1, 2, 6, 7, 8, 9],
            vec![1, 2, 9, 9],
            vec![1, 2, 3, 3, 3, 2],
        ];
        let learn: Vec<Vec<bool>> = seqs
            .iter()
            .map(|s| (0..s.len()).map(|i| i >= 2).collect())
            .collect();
        let v: Vec<(&[u32], &[bool])> = seqs
            .iter()
            .zip(&learn)
            .map(|(s, l)| (s.as_slice(), l.as_slice()))
            .collect();
        Rows::pack(&v, 0)
    }

    /// Checks the trunk gradient on a few tensors against finite differences of `f`.
    fn check_trunk(m: &Model, p: &[f32], g: &[f32], f: &mut dyn FnMut(&[f32]) -> f64) {
        for name in [
            "blk.0.attn_q.weight",
            "blk.1.ffn_gate.weight",
            "token_embd.weight",
            "output.weight",
        ] {
            let ti = m.layout.tensors.iter().find(|x| x.name == name).unwrap();
            let r = ti.range();
            let mut sub = p[r.clone()].to_vec();
            let mut full = p.to_vec();
            // embeddings feed an RMSNorm directly: curved enough that central differences
            // need a small step
            check_grad_eps(name, &mut sub, &g[r.clone()], 10, 2e-3, &mut |v| {
                full[r.clone()].copy_from_slice(v);
                f(&full)
            });
        }
    }

    #[test]
    fn packing_places_the_last_token_and_mask() {
        let r = pairs();
        assert_eq!((r.b, r.t), (4, 6));
        assert_eq!(r.last, vec![4, 5, 3, 5]);
        // row 2 = [1 2 9 9] + 3 pads; targets 2 9 9 pad pad pad; response targets: 9 9
        assert_eq!(&r.mask[12..18], &[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(&r.tokens[14..21], &[1, 2, 9, 9, 0, 0, 0]);
    }

    #[test]
    fn reward_model_gradient_matches_finite_differences() {
        crate::tests::init_pool();
        let (m, p) = tiny();
        let rows = pairs();
        let mut head = rand_vec(9, 3, 1.0);
        let mut ws = Workspace::default();
        let (mut g, mut gh) = (vec![0f32; p.len()], vec![0f32; 9]);
        let (loss, _) = rm_loss_and_grad(&m, &p, &head, &mut g, &mut gh, &rows, &mut ws);
        let bt = |m: &Model, p: &[f32], head: &[f32], ws: &mut Workspace| {
            let r = rewards(m, p, head, &rows, ws);
            (0..2)
                .map(|i| softplus_neg(r[i] - r[2 + i]) / 2.0)
                .sum::<f64>()
        };
        assert!((loss - bt(&m, &p, &head, &mut ws)).abs() < 1e-9);
        let mut ws2 = Workspace::default();
        let hc = head.clone();
        check_trunk(&m, &p, &g, &mut |q| bt(&m, q, &hc, &mut ws2));
        check_grad("rm head", &mut head, &gh, 9, &mut |h| {
            bt(&m, &p, h, &mut ws2)
        });
    }

    #[test]
    fn dpo_gradient_matches_finite_differences() {
        crate::tests::init_pool();
        let (m, p) = tiny();
        let rows = pairs();
        let mut ws = Workspace::default();
        // a reference a little away from the policy
        let refp: Vec<f32> = p
            .iter()
            .enumerate()
            .map(|(i, x)| x + 0.01 * ((i % 7) as f32 - 3.0))
            .collect();
        let ref_logps = seq_logps(&m, &refp, &rows, &mut ws);
        let beta = 0.7;
        let mut g = vec![0f32; p.len()];
        let (loss, _) = dpo_loss_and_grad(&m, &p, &mut g, &rows, &ref_logps, beta, &mut ws);
        let mut ws2 = Workspace::default();
        let mut f = |q: &[f32]| {
            let pi = seq_logps(&m, q, &rows, &mut ws2);
            (0..2)
                .map(|i| {
                    softplus_neg(beta * ((pi[i] - ref_logps[i]) - (pi[2 + i] - ref_logps[2 + i])))
                        / 2.0
                })
                .sum::<f64>()
        };
        assert!((loss - f(&p)).abs() < 1e-6);
        check_trunk(&m, &p, &g, &mut f);
    }

    #[test]
    fn grpo_gradient_matches_finite_differences() {
        crate::tests::init_pool();
        let (m, p) = tiny();
        let rows = pairs();
        let mut ws = Workspace::default();
        let nll_of = |q: &[f32], ws: &mut Workspace| {
            let mut v = vec![0f32; rows.b * rows.t];
            m.token_nll(q, &rows.tokens, rows.b, rows.t, ws, &mut v);
            v
        };
        let shift = |d: f32| -> Vec<f32> {
            p.iter()
                .enumerate()
                .map(|(i, x)| x + d * ((i % 5) as f32 - 2.0))
                .collect()
        };
        let old = nll_of(&shift(0.003), &mut ws);
        let refn = nll_of(&shift(-0.01), &mut ws);
        let adv = group_advantages(&[1.0, 0.0, 0.5, 0.0], 2);
        assert!((adv[0] - 1.0).abs() < 1e-3 && (adv[1] + 1.0).abs() < 1e-3);
        // a wide clip so the check sees the smooth part; the clipped part has zero slope
        let cfg = GrpoLoss {
            clip_eps: 10.0,
            beta: 0.3,
        };
        let mut g = vec![0f32; p.len()];
        let (loss, kl) =
            grpo_loss_and_grad(&m, &p, &mut g, &rows, &adv, Some(&old), &refn, cfg, &mut ws);
        assert!(kl > 0.0);
        let mut ws2 = Workspace::default();
        let mut f = |q: &[f32]| {
            let mut g2 = vec![0f32; q.len()];
            grpo_loss_and_grad(
                &m,
                q,
                &mut g2,
                &rows,
                &adv,
                Some(&old),
                &refn,
                cfg,
                &mut ws2,
            )
            .0
        };
        assert!((loss - f(&p)).abs() < 1e-9);
        check_trunk(&m, &p, &g, &mut f);
        // ratios far below 1 - eps with negative advantages: the clipped term is the
        // minimum, so without the KL term nothing moves; with positive advantages it does
        let now = nll_of(&p, &mut ws);
        let old_far: Vec<f32> = now.iter().map(|x| x - 1.0).collect();
        let cfg = GrpoLoss {
            clip_eps: 0.2,
            beta: 0.0,
        };
        for (a, moves) in [(-1.0, false), (1.0, true)] {
            let mut g = vec![0f32; p.len()];
            grpo_loss_and_grad(
                &m,
                &p,
                &mut g,
                &rows,
                &[a; 4],
                Some(&old_far),
                &refn,
                cfg,
                &mut ws,
            );
            assert_eq!(g.iter().any(|&x| x != 0.0), moves, "advantage {a}");
        }
    }
}
