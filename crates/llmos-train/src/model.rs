//! The training model: the llama architecture (RMSNorm, RoPE, SwiGLU, grouped-query
//! attention, tied or untied embeddings) in f32, all parameters in one flat vector (so the
//! optimizer, clipping and checkpoints see one slice), tensors named as GGUF names them.
//! Gemma 3's variations (GeGLU, q/k norms, post-norms, scaled embeddings, NeoX RoPE with a
//! local base) are switched on by [`ModelConfig::gemma`]. The weights a pass reads come
//! through [`Weights`], so a frozen base can stay quantized (LoRA).

use crate::layers::*;
use crate::lora::Lora;
use llmos_tensor::ops::RopeStyle;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Gemma 3's departures from the llama block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gemma {
    /// Width of a head (not dim / heads).
    pub head_dim: usize,
    /// RoPE base of the sliding-window layers.
    pub rope_theta_local: f32,
    /// Layer l is a sliding-window (local) layer when l % swa_pattern < swa_pattern - 1.
    pub swa_pattern: usize,
    /// The window; training contexts must fit in it (then the window changes nothing).
    pub sliding_window: usize,
    /// Multiplies q.k before the softmax.
    pub attn_scale: f32,
}

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
    /// Gemma 3 architecture (None: llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemma: Option<Gemma>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        match &self.gemma {
            Some(g) => g.head_dim,
            None => self.dim / self.heads,
        }
    }

    /// Width of the attention's query (and output) rows: heads x head dim.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim()
    }

    /// Says what is wrong with a shape, if anything.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        if c.vocab == 0 || c.dim == 0 || c.layers == 0 || c.heads == 0 || c.ffn == 0 || c.ctx == 0 {
            return Err("vocab, dim, layers, heads, ffn and ctx must all be positive".into());
        }
        if c.gemma.is_none() && !c.dim.is_multiple_of(c.heads) {
            return Err(format!(
                "dim {} is not a multiple of heads {}",
                c.dim, c.heads
            ));
        }
        if let Some(g) = &c.gemma {
            if g.head_dim == 0 || g.swa_pattern == 0 {
                return Err("gemma head_dim and swa_pattern must be positive".into());
            }
            if c.ctx > g.sliding_window && g.swa_pattern > 1 {
                return Err(format!(
                    "training context {} is longer than the sliding window {} (windowed attention is not trained yet)",
                    c.ctx, g.sliding_window
                ));
            }
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
pub(crate) struct BlockOff {
    pub attn_norm: usize,
    /// q, k and v weights, consecutive: one [q + 2 kv, dim] matrix
    pub wq: usize,
    pub wo: usize,
    pub ffn_norm: usize,
    /// gate and up weights, consecutive: one [2 ffn, dim] matrix
    pub wg: usize,
    pub wd: usize,
    /// Gemma: q norm, k norm (head_dim each), post-attention and post-FFN norms (dim)
    pub gemma: Option<[usize; 4]>,
}

/// The flat parameter layout of a config.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tensors: Vec<TensorInfo>,
    pub total: usize,
    pub(crate) emb: usize,
    pub(crate) blocks: Vec<BlockOff>,
    pub(crate) out_norm: usize,
    pub(crate) head: usize,
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
            let qw = c.q_width();
            let wq = add(p("attn_q"), qw, c.dim, true);
            add(p("attn_k"), kvd, c.dim, true);
            add(p("attn_v"), kvd, c.dim, true);
            let gq = c.gemma.as_ref().map(|g| {
                let q = add(p("attn_q_norm"), 1, g.head_dim, false);
                (q, add(p("attn_k_norm"), 1, g.head_dim, false))
            });
            let wo = add(p("attn_output"), c.dim, qw, true);
            let post_attn = gq.map(|_| add(p("post_attention_norm"), 1, c.dim, false));
            let ffn_norm = add(p("ffn_norm"), 1, c.dim, false);
            let wg = add(p("ffn_gate"), c.ffn, c.dim, true);
            add(p("ffn_up"), c.ffn, c.dim, true);
            let wd = add(p("ffn_down"), c.dim, c.ffn, true);
            let post_ffn = gq.map(|_| add(p("post_ffw_norm"), 1, c.dim, false));
            blocks.push(BlockOff {
                attn_norm,
                wq,
                wo,
                ffn_norm,
                wg,
                wd,
                gemma: gq
                    .zip(post_attn.zip(post_ffn))
                    .map(|((q, k), (pa, pf))| [q, k, pa, pf]),
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

/// Where a pass reads the model's weights: a flat f32 vector, or a frozen base that stays
/// quantized and is dequantized tensor by tensor as it is used.
pub trait Weights: Sync {
    /// The floats of the flat layout's range `r` (whole rows of one tensor, or of tensors
    /// that lie one after another), dequantized into `scratch` if need be.
    fn read<'a>(&'a self, r: Range<usize>, scratch: &'a mut Vec<f32>) -> &'a [f32];
}

impl Weights for [f32] {
    fn read<'a>(&'a self, r: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self[r]
    }
}

impl Weights for Vec<f32> {
    fn read<'a>(&'a self, r: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self[r]
    }
}

/// The sub-slice `r` of an optional gradient.
fn sub<'a>(g: &'a mut Option<&mut [f32]>, r: Range<usize>) -> Option<&'a mut [f32]> {
    g.as_deref_mut().map(|g| &mut g[r])
}

/// Saved activations of one block.
#[derive(Default)]
struct BlockActs {
    r1: Vec<f32>,
    h1: Vec<f32>,
    /// q | k | v per row (one fused projection; q and k normed (Gemma) and rotated)
    qkv: Vec<f32>,
    state: Vec<f32>,
    att: Vec<f32>,
    x2: Vec<f32>,
    r2: Vec<f32>,
    h2: Vec<f32>,
    /// gate | up per row (one fused projection)
    gu: Vec<f32>,
    a: Vec<f32>,
    /// Gemma: q and k before their norms ([N x heads, hd], [N x kv, hd]) and the norms'
    /// 1 / rms
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    rq: Vec<f32>,
    rk: Vec<f32>,
    /// Gemma: attention and FFN outputs before their post-norms, and the norms' 1 / rms
    o_raw: Vec<f32>,
    ro: Vec<f32>,
    d_raw: Vec<f32>,
    rd: Vec<f32>,
    /// LoRA: each adapted projection's scaled x A^T (qkv, o, gate|up, down)
    lora_u: [Vec<f32>; 4],
}

/// Buffers for one batch shape, reused from step to step.
#[derive(Default)]
pub struct Workspace {
    shape: (usize, usize),
    xs: Vec<Vec<f32>>,
    blocks: Vec<BlockActs>,
    rf: Vec<f32>,
    hf: Vec<f32>,
    grad: [Vec<f32>; 10],
    inputs: Vec<u32>,
    targets: Vec<u32>,
    /// dequantized weights of a quantized base
    scratch: Vec<f32>,
    /// LoRA's d(x A^T)
    lora_du: Vec<f32>,
}

/// The model for a config: its layout and RoPE tables.
pub struct Model {
    pub cfg: ModelConfig,
    pub layout: Layout,
    rope: Vec<(f32, f32)>,
    /// Gemma's sliding-window layers' table (RoPE base 10k)
    rope_local: Vec<(f32, f32)>,
    style: RopeStyle,
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Model {
        let layout = Layout::new(&cfg);
        let rope = rope_table(cfg.ctx, cfg.head_dim(), cfg.rope_theta);
        let (rope_local, style) = match &cfg.gemma {
            Some(g) => (
                rope_table(cfg.ctx, cfg.head_dim(), g.rope_theta_local),
                RopeStyle::Neox,
            ),
            None => (Vec::new(), RopeStyle::Interleaved),
        };
        Model {
            cfg,
            layout,
            rope,
            rope_local,
            style,
        }
    }

    /// The RoPE table of layer `l`.
    fn rope_of(&self, l: usize) -> &[(f32, f32)] {
        match &self.cfg.gemma {
            Some(g) if l % g.swa_pattern < g.swa_pattern - 1 => &self.rope_local,
            _ => &self.rope,
        }
    }

    fn prepare(&self, ws: &mut Workspace, b: usize, t: usize, lora: Option<&Lora>) {
        let lora_widths = lora.map(|l| l.u_widths());
        let have = ws
            .blocks
            .first()
            .map(|a| a.lora_u.each_ref().map(|u| u.len()));
        let want = lora_widths.map(|w| w.map(|w| w * b * t));
        if ws.shape == (b, t) && !ws.xs.is_empty() && have == Some(want.unwrap_or([0; 4])) {
            return;
        }
        let c = &self.cfg;
        let n = b * t;
        let qw = c.q_width();
        let s = self.attn_shape(b, t);
        let w = s.qkv_width();
        let gem = c.gemma.is_some();
        let g = |len: usize| if gem { vec![0f32; len] } else { Vec::new() };
        let hd = c.head_dim();
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
                q_raw: g(n * qw),
                k_raw: g(n * c.kv_heads * hd),
                rq: g(n * c.heads),
                rk: g(n * c.kv_heads),
                o_raw: g(n * c.dim),
                ro: g(n),
                d_raw: g(n * c.dim),
                rd: g(n),
                lora_u: want.unwrap_or([0; 4]).map(|len| vec![0f32; len]),
            })
            .collect();
        ws.rf = vec![0.0; n];
        ws.hf = vec![0.0; n * c.dim];
        // dx, dx2, dh, da, dgu, datt, dqkv, and Gemma's: d(pre-post-norm), two q/k buffers
        let widths = [
            c.dim,
            c.dim,
            c.dim,
            c.ffn,
            2 * c.ffn,
            qw,
            w,
            if gem { c.dim } else { 0 },
            if gem { qw } else { 0 },
            if gem { qw } else { 0 },
        ];
        ws.grad = widths.map(|w| vec![0f32; n * w]);
    }

    fn attn_shape(&self, b: usize, t: usize) -> AttnShape {
        let hd = self.cfg.head_dim();
        AttnShape {
            batch: b,
            t,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            head_dim: hd,
            scale: match &self.cfg.gemma {
                Some(g) => g.attn_scale,
                None => 1.0 / (hd as f32).sqrt(),
            },
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

    /// Prepares the workspace and runs the trunk: the final normed hidden states land in
    /// `ws.hf`.
    #[allow(clippy::too_many_arguments)]
    fn run<P: Weights + ?Sized>(
        &self,
        p: &P,
        lora: Option<(&Lora, &[f32])>,
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &mut Workspace,
    ) {
        self.prepare(ws, b, t, lora.map(|l| l.0));
        self.split(ws, tokens, b, t);
        self.forward(p, lora, ws, b, t);
    }

    fn forward<P: Weights + ?Sized>(
        &self,
        p: &P,
        lora: Option<(&Lora, &[f32])>,
        ws: &mut Workspace,
        b: usize,
        t: usize,
    ) {
        let c = &self.cfg;
        let (dim, hd, f) = (c.dim, c.head_dim(), c.ffn);
        let (qw, kw) = (c.q_width(), c.kv_heads * hd);
        let l = &self.layout;
        let s = self.attn_shape(b, t);
        let w = s.qkv_width();
        let eps = c.norm_eps;
        let sc = &mut ws.scratch;
        let emb_scale = c.gemma.as_ref().map(|_| (dim as f32).sqrt());
        for (row, &tok) in ws.xs[0].chunks_exact_mut(dim).zip(&ws.inputs) {
            let at = l.emb + tok as usize * dim;
            row.copy_from_slice(p.read(at..at + dim, sc));
            if let Some(k) = emb_scale {
                row.iter_mut().for_each(|x| *x *= k);
            }
        }
        for (li, o) in l.blocks.iter().enumerate() {
            let (done, rest) = ws.xs.split_at_mut(li + 1);
            let (x, xo) = (&done[li], &mut rest[0]);
            let a = &mut ws.blocks[li];
            let ad = lora.map(|(l, v)| (l, v, li));
            rmsnorm_fwd(
                x,
                p.read(o.attn_norm..o.attn_norm + dim, sc),
                eps,
                &mut a.h1,
                &mut a.r1,
            );
            // q, k and v weights lie one after another: one [q + 2 kv, dim] matrix
            let wm = p.read(o.wq..o.wq + w * dim, sc);
            proj(&a.h1, wm, dim, w, &mut a.qkv, ad, 0, &mut a.lora_u[0]);
            if let Some([qn, kn, ..]) = o.gemma {
                // per-head RMSNorm of q and k (before RoPE)
                for (raw, r, norm, col, width) in [
                    (&mut a.q_raw, &mut a.rq, qn, 0, qw),
                    (&mut a.k_raw, &mut a.rk, kn, qw, kw),
                ] {
                    gather_cols(&a.qkv, w, col, width, raw);
                    let normed = &mut ws.grad[8][..raw.len()];
                    rmsnorm_fwd(raw, p.read(norm..norm + hd, sc), eps, normed, r);
                    scatter_cols(normed, &mut a.qkv, w, col, width);
                }
            }
            rope_rows(
                &mut a.qkv,
                w,
                qw + kw,
                hd,
                t,
                self.rope_of(li),
                self.style,
                false,
            );
            attention_fwd(s, &a.qkv, &mut a.att, &mut a.state);
            let wm = p.read(o.wo..o.wo + dim * qw, sc);
            match o.gemma {
                Some([_, _, pa, _]) => {
                    proj(&a.att, wm, qw, dim, &mut a.o_raw, ad, 1, &mut a.lora_u[1]);
                    let g = p.read(pa..pa + dim, sc);
                    rmsnorm_fwd(&a.o_raw, g, eps, &mut a.x2, &mut a.ro);
                }
                None => proj(&a.att, wm, qw, dim, &mut a.x2, ad, 1, &mut a.lora_u[1]),
            }
            add_into(&mut a.x2, x);
            rmsnorm_fwd(
                &a.x2,
                p.read(o.ffn_norm..o.ffn_norm + dim, sc),
                eps,
                &mut a.h2,
                &mut a.r2,
            );
            // gate and up weights lie one after another too
            let wm = p.read(o.wg..o.wg + 2 * f * dim, sc);
            proj(&a.h2, wm, dim, 2 * f, &mut a.gu, ad, 2, &mut a.lora_u[2]);
            let wm = p.read(o.wd..o.wd + dim * f, sc);
            match o.gemma {
                Some([_, _, _, pf]) => {
                    geglu_fwd(&a.gu, f, &mut a.a);
                    proj(&a.a, wm, f, dim, &mut a.d_raw, ad, 3, &mut a.lora_u[3]);
                    let g = p.read(pf..pf + dim, sc);
                    rmsnorm_fwd(&a.d_raw, g, eps, xo, &mut a.rd);
                }
                None => {
                    swiglu_fwd(&a.gu, f, &mut a.a);
                    proj(&a.a, wm, f, dim, xo, ad, 3, &mut a.lora_u[3]);
                }
            }
            add_into(xo, &a.x2);
        }
        let last = &ws.xs[c.layers];
        rmsnorm_fwd(
            last,
            p.read(l.out_norm..l.out_norm + dim, sc),
            eps,
            &mut ws.hf,
            &mut ws.rf,
        );
    }

    fn head_range(&self) -> Range<usize> {
        self.layout.head..self.layout.head + self.cfg.vocab * self.cfg.dim
    }

    /// Mean next-token loss of `tokens` (b rows of t + 1 tokens), in nats.
    pub fn loss<P: Weights + ?Sized>(
        &self,
        p: &P,
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &mut Workspace,
    ) -> f64 {
        self.loss_weighted(p, tokens, None, b, t, ws)
    }

    /// With `weights` (one per predicted token, b x t), the loss is sum_r w_r (-log p_r);
    /// without, the mean.
    pub fn loss_weighted<P: Weights + ?Sized>(
        &self,
        p: &P,
        tokens: &[u32],
        weights: Option<&[f32]>,
        b: usize,
        t: usize,
        ws: &mut Workspace,
    ) -> f64 {
        self.loss_lora(p, None, tokens, weights, b, t, ws)
    }

    /// [`Model::loss_weighted`] of the base with adapters.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_lora<P: Weights + ?Sized>(
        &self,
        p: &P,
        lora: Option<(&Lora, &[f32])>,
        tokens: &[u32],
        weights: Option<&[f32]>,
        b: usize,
        t: usize,
        ws: &mut Workspace,
    ) -> f64 {
        self.run(p, lora, tokens, b, t, ws);
        let c = &self.cfg;
        let head = p.read(self.head_range(), &mut ws.scratch);
        head_ce(&ws.hf, head, c.dim, c.vocab, &ws.targets, weights, None)
    }

    /// -log p of every predicted token (b x t values, row-major) into `out`.
    pub fn token_nll<P: Weights + ?Sized>(
        &self,
        p: &P,
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &mut Workspace,
        out: &mut [f32],
    ) {
        self.token_nll_lora(p, None, tokens, b, t, ws, out)
    }

    /// [`Model::token_nll`] of the base with adapters.
    #[allow(clippy::too_many_arguments)]
    pub fn token_nll_lora<P: Weights + ?Sized>(
        &self,
        p: &P,
        lora: Option<(&Lora, &[f32])>,
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &mut Workspace,
        out: &mut [f32],
    ) {
        self.run(p, lora, tokens, b, t, ws);
        let c = &self.cfg;
        let head = p.read(self.head_range(), &mut ws.scratch);
        head_nll_rows(&ws.hf, head, c.dim, c.vocab, &ws.targets, out);
    }

    /// The loss, and `scale` x its gradient added into `g` (same layout as `p`).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad<P: Weights + ?Sized>(
        &self,
        p: &P,
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
    pub fn loss_and_grad_weighted<P: Weights + ?Sized>(
        &self,
        p: &P,
        g: &mut [f32],
        tokens: &[u32],
        weights: Option<&[f32]>,
        b: usize,
        t: usize,
        scale: f32,
        ws: &mut Workspace,
    ) -> f64 {
        self.grad_impl(p, Some(g), None, tokens, weights, b, t, scale, ws)
    }

    /// LoRA: the weighted loss of the frozen base `p` with adapters `a`, and `scale` x its
    /// gradient with respect to the adapters added into `ga`.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_loss_and_grad<P: Weights + ?Sized>(
        &self,
        p: &P,
        lora: &Lora,
        a: &[f32],
        ga: &mut [f32],
        tokens: &[u32],
        weights: Option<&[f32]>,
        b: usize,
        t: usize,
        scale: f32,
        ws: &mut Workspace,
    ) -> f64 {
        assert_eq!(ga.len(), a.len());
        self.grad_impl(
            p,
            None,
            Some((lora, a, ga)),
            tokens,
            weights,
            b,
            t,
            scale,
            ws,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn grad_impl<P: Weights + ?Sized>(
        &self,
        p: &P,
        mut g: Option<&mut [f32]>,
        lora: Option<(&Lora, &[f32], &mut [f32])>,
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
        let (lora_ro, lora_g) = match lora {
            Some((l, a, ga)) => (Some((l, a)), Some((l, a, ga))),
            None => (None, None),
        };
        self.run(p, lora_ro, tokens, b, t, ws);
        let c = &self.cfg;
        let dh = &mut ws.grad[2];
        let head = self.head_range();
        // the head's gradient is added straight into g (head_ce adds, never sets)
        let loss = head_ce(
            &ws.hf,
            p.read(head.clone(), &mut ws.scratch),
            c.dim,
            c.vocab,
            &ws.targets,
            weights,
            Some((dh, sub(&mut g, head), scale)),
        );
        self.backward_trunk(p, g, lora_g, ws, b, t);
        loss
    }

    /// Runs the model on `tokens` (b rows of t + 1; the last token of a row is only a
    /// target) and returns the final normed hidden states, b x t rows of `dim`: the input
    /// of any head (the LM head, a reward model's scalar head).
    pub fn hidden<'w, P: Weights + ?Sized>(
        &self,
        p: &P,
        tokens: &[u32],
        b: usize,
        t: usize,
        ws: &'w mut Workspace,
    ) -> &'w [f32] {
        self.run(p, None, tokens, b, t, ws);
        &ws.hf
    }

    /// After `hidden` on the same tokens: adds into `g` the gradient of a loss whose
    /// gradient with respect to the hidden states is `dh`.
    pub fn backward_hidden<P: Weights + ?Sized>(
        &self,
        p: &P,
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
        self.backward_trunk(p, Some(g), None, ws, b, t);
    }

    /// Backward from dL/d(final normed hidden), held in the workspace's dh. Base gradients
    /// go to `g` (None: the base is frozen), adapter gradients to the LoRA's.
    fn backward_trunk<P: Weights + ?Sized>(
        &self,
        p: &P,
        mut g: Option<&mut [f32]>,
        mut lora: Option<(&Lora, &[f32], &mut [f32])>,
        ws: &mut Workspace,
        b: usize,
        t: usize,
    ) {
        let c = &self.cfg;
        let l = &self.layout;
        let (dim, hd, f) = (c.dim, c.head_dim(), c.ffn);
        let (qw, kw) = (c.q_width(), c.kv_heads * hd);
        let s = self.attn_shape(b, t);
        let sc = &mut ws.scratch;
        let du = &mut ws.lora_du;
        let [dx, dx2, dh, da, dgu, datt, dqkv, dpre, dq1, dq2] = &mut ws.grad;
        let w = s.qkv_width();
        dx.fill(0.0);
        let on = l.out_norm..l.out_norm + dim;
        rmsnorm_back(
            &ws.xs[c.layers],
            p.read(on.clone(), sc),
            &ws.rf,
            dh,
            dx,
            sub(&mut g, on),
        );
        for (li, o) in l.blocks.iter().enumerate().rev() {
            let a = &ws.blocks[li];
            let x = &ws.xs[li];
            let mut ad = lora.as_mut().map(|(l, v, gv)| (*l, *v, &mut **gv, li));
            // x_out = x2 + [post-norm] W_down(act(gate) * up)
            let pf = o.gemma.map(|n| n[3]);
            let dy_down = post_norm_back(p, sc, &mut g, pf, dim, &a.d_raw, &a.rd, dx, dpre);
            let dn = o.wd..o.wd + dim * f;
            let wm = p.read(dn.clone(), sc);
            proj_back(
                &a.a,
                wm,
                dy_down,
                f,
                dim,
                da,
                sub(&mut g, dn),
                &mut ad,
                3,
                &a.lora_u[3],
                du,
            );
            if o.gemma.is_some() {
                geglu_back(&a.gu, f, da, dgu);
            } else {
                swiglu_back(&a.gu, f, da, dgu);
            }
            let gu = o.wg..o.wg + 2 * f * dim;
            let wm = p.read(gu.clone(), sc);
            proj_back(
                &a.h2,
                wm,
                dgu,
                dim,
                2 * f,
                dh,
                sub(&mut g, gu),
                &mut ad,
                2,
                &a.lora_u[2],
                du,
            );
            dx2.copy_from_slice(dx);
            let fnr = o.ffn_norm..o.ffn_norm + dim;
            let gw = p.read(fnr.clone(), sc);
            rmsnorm_back(&a.x2, gw, &a.r2, dh, dx2, sub(&mut g, fnr));
            // x2 = x + [post-norm] W_o(attention(rope(q), rope(k), v))
            let pa = o.gemma.map(|n| n[2]);
            let dy_o = post_norm_back(p, sc, &mut g, pa, dim, &a.o_raw, &a.ro, dx2, dpre);
            let wor = o.wo..o.wo + dim * qw;
            let wm = p.read(wor.clone(), sc);
            proj_back(
                &a.att,
                wm,
                dy_o,
                qw,
                dim,
                datt,
                sub(&mut g, wor),
                &mut ad,
                1,
                &a.lora_u[1],
                du,
            );
            attention_back(s, &a.qkv, &a.state, datt, dqkv);
            rope_rows(dqkv, w, qw + kw, hd, t, self.rope_of(li), self.style, true);
            if let Some([qn, kn, ..]) = o.gemma {
                for (raw, r, norm, col, width) in
                    [(&a.q_raw, &a.rq, qn, 0, qw), (&a.k_raw, &a.rk, kn, qw, kw)]
                {
                    let (dn, dr) = (&mut dq1[..raw.len()], &mut dq2[..raw.len()]);
                    gather_cols(dqkv, w, col, width, dn);
                    dr.fill(0.0);
                    let gw = p.read(norm..norm + hd, sc);
                    rmsnorm_back(raw, gw, r, dn, dr, sub(&mut g, norm..norm + hd));
                    scatter_cols(dr, dqkv, w, col, width);
                }
            }
            let qkv = o.wq..o.wq + w * dim;
            let wm = p.read(qkv.clone(), sc);
            proj_back(
                &a.h1,
                wm,
                dqkv,
                dim,
                w,
                dh,
                sub(&mut g, qkv),
                &mut ad,
                0,
                &a.lora_u[0],
                du,
            );
            dx.copy_from_slice(dx2);
            let anr = o.attn_norm..o.attn_norm + dim;
            let gw = p.read(anr.clone(), sc);
            rmsnorm_back(x, gw, &a.r1, dh, dx, sub(&mut g, anr));
        }
        if let Some(g) = g {
            let k = c.gemma.as_ref().map_or(1.0, |_| (dim as f32).sqrt());
            for (row, &tok) in dx.chunks_exact(dim).zip(&ws.inputs) {
                let at = l.emb + tok as usize * dim;
                g[at..at + dim]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, b)| *a += b * k);
            }
        }
    }
}

/// Backward through a Gemma post-norm at offset `at` (when the block has one): returns the
/// gradient at the norm's input (in `dpre`), its weight's gradient going into `g`; without
/// a post-norm, `dy` itself.
#[allow(clippy::too_many_arguments)]
fn post_norm_back<'a, P: Weights + ?Sized>(
    p: &P,
    scratch: &mut Vec<f32>,
    g: &mut Option<&mut [f32]>,
    at: Option<usize>,
    dim: usize,
    raw: &[f32],
    rstd: &[f32],
    dy: &'a [f32],
    dpre: &'a mut [f32],
) -> &'a [f32] {
    let Some(at) = at else {
        return dy;
    };
    dpre.fill(0.0);
    let gw = p.read(at..at + dim, scratch);
    rmsnorm_back(raw, gw, rstd, dy, dpre, sub(g, at..at + dim));
    dpre
}

/// Columns col..col + width of every row (rows `stride` apart) into `out`, contiguous.
fn gather_cols(src: &[f32], stride: usize, col: usize, width: usize, out: &mut [f32]) {
    for (o, row) in out.chunks_exact_mut(width).zip(src.chunks_exact(stride)) {
        o.copy_from_slice(&row[col..col + width]);
    }
}

/// The inverse of [`gather_cols`].
fn scatter_cols(src: &[f32], dst: &mut [f32], stride: usize, col: usize, width: usize) {
    for (s, row) in src.chunks_exact(width).zip(dst.chunks_exact_mut(stride)) {
        row[col..col + width].copy_from_slice(s);
    }
}

/// y = x W^T, plus the LoRA term of site `site` of the adapter's block when adapters are
/// given (its scaled x A^T kept in `u` for the backward).
#[allow(clippy::too_many_arguments)]
fn proj(
    x: &[f32],
    w: &[f32],
    n_in: usize,
    n_out: usize,
    y: &mut [f32],
    lora: Option<(&Lora, &[f32], usize)>,
    site: usize,
    u: &mut [f32],
) {
    linear(x, w, n_in, n_out, y);
    if let Some((l, a, block)) = lora {
        l.forward(a, block, site, x, y, u);
    }
}

/// The backward of [`proj`]: dx = dy W (set), dW += dy^T x when the base is trained, and
/// the adapter's gradients.
#[allow(clippy::too_many_arguments)]
fn proj_back(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n_in: usize,
    n_out: usize,
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    lora: &mut Option<(&Lora, &[f32], &mut [f32], usize)>,
    site: usize,
    u: &[f32],
    du: &mut Vec<f32>,
) {
    linear_back(x, w, dy, n_in, n_out, dx, dw, false);
    if let Some((l, a, ga, block)) = lora {
        l.backward(a, ga, *block, site, x, dy, u, dx, du);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::tests::{check_grad, check_grad_eps};

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
            gemma: None,
        }
    }

    /// A tiny Gemma 3: head width unrelated to dim / heads, a local and a global layer.
    pub(crate) fn tiny_gemma() -> ModelConfig {
        ModelConfig {
            gemma: Some(Gemma {
                head_dim: 6,
                rope_theta_local: 100.0,
                swa_pattern: 2,
                sliding_window: 8,
                attn_scale: 0.3,
            }),
            ..tiny(true, 1)
        }
    }

    /// Random parameters with norms near one (every path carries signal).
    pub(crate) fn rand_params(m: &Model, seed: u64, amp: f32) -> Vec<f32> {
        let mut p: Vec<f32> = init_params(&m.cfg, seed).iter().map(|x| x * amp).collect();
        for t in &m.layout.tensors {
            if t.name.ends_with("norm.weight") {
                p[t.range()]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = 0.8 + 0.05 * i as f32);
            }
        }
        p
    }

    /// The whole model's gradient (every tensor, tied and untied heads, grouped-query and
    /// plain attention, llama and Gemma 3 blocks) against finite differences of its loss.
    #[test]
    fn model_gradient_matches_finite_differences() {
        crate::tests::init_pool();
        for cfg in [tiny(false, 1), tiny(true, 2), tiny_gemma()] {
            let m = Model::new(cfg.clone());
            let p = rand_params(&m, 7, 8.0);
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
                // steps of 1e-3: the Gemma blocks' extra norms curve the loss more
                check_grad_eps(&ti.name, &mut sub, &an, 12, 1e-3, &mut |v| {
                    full[r.clone()].copy_from_slice(v);
                    m.loss(&full, &tokens, b, t, &mut ws2)
                });
            }
        }
    }

    /// LoRA: the adapters' gradient against finite differences (llama and Gemma blocks,
    /// weighted loss), fresh adapters change nothing, and merging them into the base gives
    /// the same loss as running base + adapters.
    #[test]
    fn lora_gradient_start_and_merge() {
        crate::tests::init_pool();
        for cfg in [tiny(false, 1), tiny_gemma()] {
            let m = Model::new(cfg.clone());
            // milder weights than above: attention far from one-hot, so k's adapters matter too
            let p = rand_params(&m, 9, 3.0);
            let lora = Lora::new(&cfg, 2, 4.0);
            let (b, t) = (2, 5);
            let tokens: Vec<u32> = (0..b * (t + 1)).map(|i| (i * 7 % 13) as u32).collect();
            let w: Vec<f32> = (0..b * t).map(|i| (i % 3) as f32 * 0.5).collect();
            let mut ws = Workspace::default();
            let base = m.loss_weighted(&p, &tokens, Some(&w), b, t, &mut ws);
            let fresh = lora.init(1);
            let start = m.loss_lora(&p, Some((&lora, &fresh)), &tokens, Some(&w), b, t, &mut ws);
            assert!((start - base).abs() < 1e-6, "{start} vs {base}");
            // adapters with B non-zero so every path carries signal
            let a: Vec<f32> = crate::layers::tests::rand_vec(lora.total, 5, 0.2);
            let mut ga = vec![0f32; a.len()];
            let loss = m.lora_loss_and_grad(
                &p,
                &lora,
                &a,
                &mut ga,
                &tokens,
                Some(&w),
                b,
                t,
                1.0,
                &mut ws,
            );
            let plain = m.loss_lora(&p, Some((&lora, &a)), &tokens, Some(&w), b, t, &mut ws);
            assert!((loss - plain).abs() < 1e-9, "{loss} vs {plain}");
            assert!((loss - base).abs() > 1e-3, "the adapters change the loss");
            for ti in lora.tensors() {
                let r = ti.range();
                let mut sub = a[r.clone()].to_vec();
                let an = ga[r.clone()].to_vec();
                let mut full = a.clone();
                let mut ws2 = Workspace::default();
                // steps of 2.5e-3: the Gemma blocks' extra norms curve the loss more
                check_grad_eps(&ti.name, &mut sub, &an, 6, 2.5e-3, &mut |v| {
                    full[r.clone()].copy_from_slice(v);
                    m.loss_lora(&p, Some((&lora, &full)), &tokens, Some(&w), b, t, &mut ws2)
                });
            }
            let mut merged = p.clone();
            lora.merge_into(&a, &mut merged);
            let after = m.loss_weighted(&merged, &tokens, Some(&w), b, t, &mut ws);
            assert!(
                (after - loss).abs() < 1e-4 * loss.abs(),
                "{after} vs {loss}"
            );
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
