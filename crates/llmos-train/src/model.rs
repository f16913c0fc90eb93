//! The training model: the llama architecture (RMSNorm, RoPE, SwiGLU, grouped-query
//! attention, tied or untied embeddings) in f32, all parameters in one flat vector (so the
//! optimizer, clipping and checkpoints see one slice), tensors named as GGUF names them.

use crate::layers::*;
use serde::{Deserialize, Serialize};

/// Shape of a model. Any depth and width; `ffn` is the SwiGLU hidden width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub ctx: usize,
    pub tied: bool,
    pub rope_theta: f32,
    pub norm_eps: f32,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Says what is wrong with a shape, if anything.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        if c.vocab == 0 || c.dim == 0 || c.layers == 0 || c.heads == 0 || c.ffn == 0 || c.ctx == 0 {
            return Err("vocab, dim, layers, heads, ffn and ctx must all be positive".into());
        }
        if !c.dim.is_multiple_of(c.heads) {
            return Err(format!(
                "dim {} is not a multiple of heads {}",
                c.dim, c.heads
            ));
        }
        if !c.head_dim().is_multiple_of(2) {
            return Err(format!("head dim {} must be even for RoPE", c.head_dim()));
        }
        if c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) {
            return Err(format!(
                "heads {} is not a multiple of kv_heads {}",
                c.heads, c.kv_heads
            ));
        }
        if c.vocab > u32::MAX as usize {
            return Err("vocab too large".into());
        }
        Ok(())
    }

    /// Parameters that are multiplied per token (all but the embedding table when the
    /// head is untied): the N in the 6 N FLOPs per token of a training step.
    pub fn matmul_params(&self) -> usize {
        let l = Layout::new(self);
        l.total - self.vocab * self.dim * usize::from(!self.tied)
    }
}

/// Where one tensor lives in the flat parameter vector; [rows, cols] row-major.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    /// Weight decay applies (matrices other than the embedding).
    pub decay: bool,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Offsets of one block's tensors.
#[derive(Clone, Copy, Debug)]
struct BlockOff {
    attn_norm: usize,
    /// q, k and v weights, consecutive: one [dim + 2 kv, dim] matrix
    wq: usize,
    wo: usize,
    ffn_norm: usize,
    /// gate and up weights, consecutive: one [2 ffn, dim] matrix
    wg: usize,
    wd: usize,
}

/// The flat parameter layout of a config.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tensors: Vec<TensorInfo>,
    pub total: usize,
    emb: usize,
    blocks: Vec<BlockOff>,
    out_norm: usize,
    head: usize,
}

impl Layout {
    /// The parameter ranges weight decay applies to.
    pub fn decay_ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.tensors
            .iter()
            .filter(|t| t.decay)
            .map(|t| t.range())
            .collect()
    }

    pub fn new(c: &ModelConfig) -> Layout {
        let mut tensors = Vec::new();
        let mut at = 0;
        let mut add = |name: String, rows: usize, cols: usize, decay: bool| {
            tensors.push(TensorInfo {
                name,
                offset: at,
                rows,
                cols,
                decay,
            });
            at += rows * cols;
            at - rows * cols
        };
        let kvd = c.kv_heads * c.head_dim();
        let emb = add("token_embd.weight".into(), c.vocab, c.dim, false);
        let mut blocks = Vec::new();
        for i in 0..c.layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let attn_norm = add(p("attn_norm"), 1, c.dim, false);
            // added in this order so q|k|v and gate|up are each one contiguous matrix
            let wq = add(p("attn_q"), c.dim, c.dim, true);
            add(p("attn_k"), kvd, c.dim, true);
            add(p("attn_v"), kvd, c.dim, true);
            let wo = add(p("attn_output"), c.dim, c.dim, true);
            let ffn_norm = add(p("ffn_norm"), 1, c.dim, false);
            let wg = add(p("ffn_gate"), c.ffn, c.dim, true);
            add(p("ffn_up"), c.ffn, c.dim, true);
            let wd = add(p("ffn_down"), c.dim, c.ffn, true);
            blocks.push(BlockOff {
                attn_norm,
                wq,
                wo,
                ffn_norm,
                wg,
                wd,
            });
        }
        let out_norm = add("output_norm.weight".into(), 1, c.dim, false);
        let head = if c.tied {
            emb
        } else {
            add("output.weight".into(), c.vocab, c.dim, true)
        };
        Layout {
            tensors,
            total: at,
            emb,
            blocks,
            out_norm,
            head,
        }
    }
}

/// splitmix64: the deterministic generator behind initialisation and data order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Indices drawn pass after pass over `n` items, each pass in a fresh order
/// (Fisher-Yates from the run's generator): the data order of fine-tuning runs.
#[derive(Clone, Debug, Default)]
pub struct Passes {
    left: Vec<usize>,
}

impl Passes {
    pub fn next(&mut self, n: usize, rng: &mut Rng) -> usize {
        if self.left.is_empty() {
            self.left = (0..n).collect();
            for i in (1..n).rev() {
                self.left.swap(i, rng.below(i + 1));
            }
        }
        self.left.pop().expect("n > 0")
    }
}

/// Initial parameters: N(0, 0.02) matrices, residual outputs scaled by 1/sqrt(2 layers)
/// (GPT-2's scheme), norms at one.
pub fn init_params(c: &ModelConfig, seed: u64) -> Vec<f32> {
    let l = Layout::new(c);
    let mut p = vec![0f32; l.total];
    let mut rng = Rng(seed);
    for t in &l.tensors {
        let v = &mut p[t.range()];
        if t.name.ends_with("norm.weight") {
            v.fill(1.0);
            continue;
        }
        let mut std = 0.02;
        if t.name.ends_with("attn_output.weight") || t.name.ends_with("ffn_down.weight") {
            std /= (2.0 * c.layers as f64).sqrt();
        }
        v.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
    }
    p
}

/// Saved activations of one block.
#[derive(Default)]
struct BlockActs {
    r1: Vec<f32>,
    h1: Vec<f32>,
    /// q | k | v per row (one fused projection; q and k rotated)
    qkv: Vec<f32>,
    state: Vec<f32>,
    att: Vec<f32>,
    x2: Vec<f32>,
    r2: Vec<f32>,
    h2: Vec<f32>,
    /// gate | up per row (one fused projection)
    gu: Vec<f32>,
    a: Vec<f32>,
}

/// Buffers for one batch shape, reused from step to step.
#[derive(Default)]
pub struct Workspace {
    shape: (usize, usize),
    xs: Vec<Vec<f32>>,
    blocks: Vec<BlockActs>,
    rf: Vec<f32>,
    hf: Vec<f32>,
    grad: [Vec<f32>; 7],
    inputs: Vec<u32>,
    targets: Vec<u32>,
    dhead: Vec<f32>,
}

/// The model for a config: its layout and RoPE table.
pub struct Model {
    pub cfg: ModelConfig,
    pub layout: Layout,
    rope: Vec<(f32, f32)>,
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Model {
        let layout = Layout::new(&cfg);
        let rope = rope_table(cfg.ctx, cfg.head_dim(), cfg.rope_theta);
        Model { cfg, layout, rope }
    }

    fn prepare(&self, ws: &mut Workspace, b: usize, t: usize) {
        if ws.shape == (b, t) && !ws.xs.is_empty() {
            return;
        }
        let c = &self.cfg;
        let n = b * t;
        let qw = c.dim;
        let s = self.attn_shape(b, t);
        let w = s.qkv_width();
        ws.shape = (b, t);
        ws.xs = (0..=c.layers).map(|_| vec![0f32; n * c.dim]).collect();
        ws.blocks = (0..c.layers)
            .map(|_| BlockActs {
                r1: vec![0.0; n],
                h1: vec![0.0; n * c.dim],
                qkv: vec![0.0; n * w],
                state: vec![0.0; s.state_len()],
                att: vec![0.0; n * qw],
                x2: vec![0.0; n * c.dim],
                r2: vec![0.0; n],
                h2: vec![0.0; n * c.dim],
                gu: vec![0.0; n * 2 * c.ffn],
                a: vec![0.0; n * c.ffn],
            })
            .collect();
        ws.rf = vec![0.0; n];
        ws.hf = vec![0.0; n * c.dim];
        // dx, dx2, dh, da, dgu, datt, dqkv
        let widths = [c.dim, c.dim, c.dim, c.ffn, 2 * c.ffn, qw, w];
        ws.grad = widths.map(|w| vec![0f32; n * w]);
    }

    fn attn_shape(&self, b: usize, t: usize) -> AttnShape {
        AttnShape {
            batch: b,
            t,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim(),
        }
    }

    /// Splits `tokens` (b rows of t + 1) into inputs and next-token targets.
    fn split(&self, ws: &mut Workspace, tokens: &[u32], b: usize, t: usize) {
        assert_eq!(
            tokens.len(),
            b * (t + 1),
            "batch must hold b x (t + 1) tokens"
        );
        assert!(
            t <= self.cfg.ctx,
            "sequence of {t} tokens exceeds the context {}",
            self.cfg.ctx
        );
        ws.inputs.clear();
        ws.targets.clear();
        for row in tokens.chunks_exact(t + 1) {
            ws.inputs.extend_from_slice(&row[..t]);
            ws.targets.extend_from_slice(&row[1..]);
        }
        let v = self.cfg.vocab as u32;
        if let Some(bad) = ws.inputs.iter().chain(&ws.targets).find(|&&x| x >= v) {
            panic!("token id {bad} outside the vocabulary of {v}");
        }
    }

    fn forward(&self, p: &[f32], ws: &mut Workspace, b: usize, t: usize) {
        let c = &self.cfg;
        let (dim, hd) = (c.dim, c.head_dim());
        let kw = c.kv_heads * hd;
        let l = &self.layout;
        let s = self.attn_shape(b, t);
        for (row, &tok) in ws.xs[0].chunks_exact_mut(dim).zip(&ws.inputs) {
            let at = l.emb + tok as usize * dim;
            row.copy_from_slice(&p[at..at + dim]);
        }
        for (li, o) in l.blocks.iter().enumerate() {
            let (done, rest) = ws.xs.split_at_mut(li + 1);
            let (x, xo) = (&done[li], &mut rest[0]);
            let a = &mut ws.blocks[li];
            rmsnorm_fwd(
                x,
                &p[o.attn_norm..o.attn_norm + dim],
                c.norm_eps,
                &mut a.h1,
                &mut a.r1,
            );
            // q, k and v weights lie one after another: one [dim + 2 kv, dim] matrix
            let w = s.qkv_width();
            linear(&a.h1, &p[o.wq..o.wq + w * dim], dim, w, &mut a.qkv);
            rope_rows(&mut a.qkv, w, dim + kw, hd, t, &self.rope, false);
            attention_fwd(s, &a.qkv, &mut a.att, &mut a.state);
            linear(&a.att, &p[o.wo..o.wo + dim * dim], dim, dim, &mut a.x2);
            add_into(&mut a.x2, x);
            rmsnorm_fwd(
                &a.x2,
                &p[o.ffn_norm..o.ffn_norm + dim],
                c.norm_eps,
                &mut a.h2,
                &mut a.r2,
            );
            let f = c.ffn;
            // gate and up weights lie one after another too
            linear(&a.h2, &p[o.wg..o.wg + 2 * f * dim], dim, 2 * f, &mut a.gu);
            swiglu_fwd(&a.gu, f, &mut a.a);
            linear(&a.a, &p[o.wd..o.wd + dim * f], f, dim, xo);
            add_into(xo, &a.x2);
        }
        let last = &ws.xs[c.layers];
        rmsnorm_fwd(
            last,
            &p[l.out_norm..l.out_norm + dim],
            c.norm_eps,
            &mut ws.hf,
            &mut ws.rf,
        );
    }

    /// Mean next-token loss of `tokens` (b rows of t + 1 tokens), in nats.
    pub fn loss(&self, p: &[f32], tokens: &[u32], b: usize, t: usize, ws: &mut Workspace) -> f64 {
        self.loss_weighted(p, tokens, None, b, t, ws)
    }

    /// With `weights` (one per predicted token, b x t), the loss is sum_r w_r (-log p_r);
    /// without, the mean.
    pub fn loss_weighted(
        &self,
        p: &[f32],
        tokens: &[u32],
        weights: Option<&[f32]>,
        b: usize,
        t: usize,
        ws: &mut Workspace,
    ) -> f64 {
        self.prepare(ws, b, t);
        self.split(ws, tokens, b, t);
        self.forward(p, ws, b, t);
        let c = &self.cfg;
        let head = &p[self.layout.head..self.layout.head + c.vocab * c.dim];
        head_ce(&ws.hf, head, c.dim, c.vocab, &ws.targets, weights, None)
    }

    /// -log p of every predicted token (b x t values, row-major) into `out`.
    pub fn token_nll(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &mut Workspace,
        out: &mut [f32],
    ) {
        self.prepare(ws, b, t);
        self.split(ws, tokens, b, t);
        self.forward(p, ws, b, t);
        let c = &self.cfg;
        let head = &p[self.layout.head..self.layout.head + c.vocab * c.dim];
        head_nll_rows(&ws.hf, head, c.dim, c.vocab, &ws.targets, out);
    }

    /// The loss, and `scale` x its gradient added into `g` (same layout as `p`).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad(
        &self,
        p: &[f32],
        g: &mut [f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        scale: f32,
        ws: &mut Workspace,
    ) -> f64 {
        self.loss_and_grad_weighted(p, g, tokens, None, b, t, scale, ws)
    }

    /// `loss_weighted` and `scale` x its gradient added into `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad_weighted(
        &self,
        p: &[f32],
        g: &mut [f32],
        tokens: &[u32],
        weights: Option<&[f32]>,
        b: usize,
        t: usize,
        scale: f32,
        ws: &mut Workspace,
    ) -> f64 {
        if let Some(w) = weights {
            assert_eq!(w.len(), b * t, "one weight per predicted token");
        }
        assert_eq!(g.len(), p.len());
        self.prepare(ws, b, t);
        self.split(ws, tokens, b, t);
        self.forward(p, ws, b, t);
        let c = &self.cfg;
        let l = &self.layout;
        let dim = c.dim;
        let dh = &mut ws.grad[2];
        let head = l.head..l.head + c.vocab * dim;
        let loss = {
            let dhead = &mut ws.dhead;
            dhead.clear();
            dhead.resize(c.vocab * dim, 0.0);
            let loss = head_ce(
                &ws.hf,
                &p[head.clone()],
                dim,
                c.vocab,
                &ws.targets,
                weights,
                Some((dh, dhead, scale)),
            );
            add_into(&mut g[head], dhead);
            loss
        };
        self.backward_trunk(p, g, ws, b, t);
        loss
    }

    /// Runs the model on `tokens` (b rows of t + 1; the last token of a row is only a
    /// target) and returns the final normed hidden states, b x t rows of `dim`: the input
    /// of any head (the LM head, a reward model's scalar head).
    pub fn hidden<'w>(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &'w mut Workspace,
    ) -> &'w [f32] {
        self.prepare(ws, b, t);
        self.split(ws, tokens, b, t);
        self.forward(p, ws, b, t);
        &ws.hf
    }

    /// After `hidden` on the same tokens: adds into `g` the gradient of a loss whose
    /// gradient with respect to the hidden states is `dh`.
    pub fn backward_hidden(
        &self,
        p: &[f32],
        g: &mut [f32],
        dh: &[f32],
        b: usize,
        t: usize,
        ws: &mut Workspace,
    ) {
        assert_eq!(
            ws.shape,
            (b, t),
            "backward_hidden follows hidden on the same shape"
        );
        ws.grad[2].copy_from_slice(dh);
        self.backward_trunk(p, g, ws, b, t);
    }

    /// Backward from dL/d(final normed hidden), held in the workspace's dh.
    fn backward_trunk(&self, p: &[f32], g: &mut [f32], ws: &mut Workspace, b: usize, t: usize) {
        let c = &self.cfg;
        let l = &self.layout;
        let (dim, hd, f) = (c.dim, c.head_dim(), c.ffn);
        let kw = c.kv_heads * hd;
        let s = self.attn_shape(b, t);
        let [dx, dx2, dh, da, dgu, datt, dqkv] = &mut ws.grad;
        let w = s.qkv_width();
        dx.fill(0.0);
        let on = l.out_norm..l.out_norm + dim;
        rmsnorm_back(&ws.xs[c.layers], &p[on.clone()], &ws.rf, dh, dx, &mut g[on]);
        for (li, o) in l.blocks.iter().enumerate().rev() {
            let a = &ws.blocks[li];
            let x = &ws.xs[li];
            // x_out = x2 + W_down(silu(gate) * up)
            linear_back(
                &a.a,
                &p[o.wd..o.wd + dim * f],
                dx,
                f,
                dim,
                da,
                &mut g[o.wd..o.wd + dim * f],
                false,
            );
            swiglu_back(&a.gu, f, da, dgu);
            let gu = o.wg..o.wg + 2 * f * dim;
            linear_back(
                &a.h2,
                &p[gu.clone()],
                dgu,
                dim,
                2 * f,
                dh,
                &mut g[gu],
                false,
            );
            dx2.copy_from_slice(dx);
            let fnr = o.ffn_norm..o.ffn_norm + dim;
            rmsnorm_back(&a.x2, &p[fnr.clone()], &a.r2, dh, dx2, &mut g[fnr]);
            // x2 = x + W_o(attention(rope(W_q h1), rope(W_k h1), W_v h1))
            linear_back(
                &a.att,
                &p[o.wo..o.wo + dim * dim],
                dx2,
                dim,
                dim,
                datt,
                &mut g[o.wo..o.wo + dim * dim],
                false,
            );
            attention_back(s, &a.qkv, &a.state, datt, dqkv);
            rope_rows(dqkv, w, dim + kw, hd, t, &self.rope, true);
            let qkv = o.wq..o.wq + w * dim;
            linear_back(&a.h1, &p[qkv.clone()], dqkv, dim, w, dh, &mut g[qkv], false);
            dx.copy_from_slice(dx2);
            let anr = o.attn_norm..o.attn_norm + dim;
            rmsnorm_back(x, &p[anr.clone()], &a.r1, dh, dx, &mut g[anr]);
        }
        for (row, &tok) in dx.chunks_exact(dim).zip(&ws.inputs) {
            let at = l.emb + tok as usize * dim;
            g[at..at + dim]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tests::check_grad;

    fn tiny(tied: bool, kv_heads: usize) -> ModelConfig {
        ModelConfig {
            vocab: 13,
            dim: 8,
            layers: 2,
            heads: 2,
            kv_heads,
            ffn: 12,
            ctx: 6,
            tied,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }

    /// The whole model's gradient (every tensor, tied and untied heads, grouped-query and
    /// plain attention) against finite differences of its loss.
    #[test]
    fn model_gradient_matches_finite_differences() {
        crate::tests::init_pool();
        for (tied, kv) in [(false, 1), (true, 2)] {
            let cfg = tiny(tied, kv);
            let m = Model::new(cfg.clone());
            // larger weights than the real init so every path carries signal
            let mut p: Vec<f32> = init_params(&cfg, 7).iter().map(|x| x * 8.0).collect();
            for t in &m.layout.tensors {
                if t.name.ends_with("norm.weight") {
                    p[t.range()]
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x = 0.8 + 0.05 * i as f32);
                }
            }
            let (b, t) = (2, 5);
            let tokens: Vec<u32> = (0..b * (t + 1)).map(|i| (i * 5 % 13) as u32).collect();
            let mut ws = Workspace::default();
            let mut g = vec![0f32; p.len()];
            let loss = m.loss_and_grad(&p, &mut g, &tokens, b, t, 1.0, &mut ws);
            let plain = m.loss(&p, &tokens, b, t, &mut ws);
            assert!((loss - plain).abs() < 1e-9, "{loss} vs {plain}");
            for ti in &m.layout.tensors {
                let r = ti.range();
                let mut sub = p[r.clone()].to_vec();
                let an = g[r.clone()].to_vec();
                let mut ws2 = Workspace::default();
                let mut full = p.clone();
                check_grad(&ti.name, &mut sub, &an, 12, &mut |v| {
                    full[r.clone()].copy_from_slice(v);
                    m.loss(&full, &tokens, b, t, &mut ws2)
                });
            }
        }
    }

    /// The weighted (masked) loss of fine-tuning: its gradient against finite differences,
    /// and a target with weight 0 has no say at all.
    #[test]
    fn weighted_loss_gradient_and_mask() {
        crate::tests::init_pool();
        let cfg = tiny(false, 1);
        let m = Model::new(cfg.clone());
        let p: Vec<f32> = init_params(&cfg, 3).iter().map(|x| x * 3.0).collect();
        let (b, t) = (2, 5);
        let mut tokens: Vec<u32> = (0..b * (t + 1)).map(|i| (i * 3 % 13) as u32).collect();
        let w: Vec<f32> = (0..b * t)
            .map(|i| if i % 3 == 0 { 0.0 } else { 0.1 * i as f32 })
            .collect();
        let mut ws = Workspace::default();
        let mut g = vec![0f32; p.len()];
        let loss = m.loss_and_grad_weighted(&p, &mut g, &tokens, Some(&w), b, t, 1.0, &mut ws);
        let mut nll = vec![0f32; b * t];
        m.token_nll(&p, &tokens, b, t, &mut ws, &mut nll);
        let want: f64 = nll.iter().zip(&w).map(|(&l, &w)| l as f64 * w as f64).sum();
        assert!((loss - want).abs() < 1e-4 * want.abs(), "{loss} vs {want}");
        for name in [
            "blk.0.attn_q.weight",
            "blk.1.ffn_down.weight",
            "output.weight",
        ] {
            let ti = m.layout.tensors.iter().find(|x| x.name == name).unwrap();
            let r = ti.range();
            let mut sub = p[r.clone()].to_vec();
            let an = g[r.clone()].to_vec();
            let mut full = p.clone();
            let mut ws2 = Workspace::default();
            check_grad(name, &mut sub, &an, 12, &mut |v| {
                full[r.clone()].copy_from_slice(v);
                m.loss_weighted(&full, &tokens, Some(&w), b, t, &mut ws2)
            });
        }
        // the last target of row 1 (token 11, weight index 9) has weight 0: changing it
        // changes nothing
        assert_eq!(w[9], 0.0);
        tokens[11] = (tokens[11] + 1) % 13;
        let again = m.loss_weighted(&p, &tokens, Some(&w), b, t, &mut ws);
        assert_eq!(again.to_bits(), loss.to_bits());
    }

    #[test]
    fn bad_shapes_are_described() {
        let mut c = tiny(true, 2);
        assert!(c.validate().is_ok());
        c.kv_heads = 3;
        assert!(c.validate().unwrap_err().contains("kv_heads"));
        c = tiny(true, 2);
        c.dim = 9;
        assert!(c.validate().unwrap_err().contains("multiple of heads"));
    }
}
