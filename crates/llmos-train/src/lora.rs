//! LoRA: low-rank adapters on every attention and MLP projection of a frozen base. Each
//! adapted weight W [out, in] becomes W + (alpha / r) B A with A [r, in] and B [out, r];
//! only A and B train (B starts at zero, so training starts from the base exactly).
//! Adapters live in their own flat vector; they save as a GGUF adapter file with
//! llama.cpp's tensor names (`blk.N.attn_q.weight.lora_a` [in, r] and `.lora_b` [r, out]
//! in GGUF order) and fold into a base with [`Lora::merge_into`].

use crate::model::{Layout, ModelConfig, Rng, TensorInfo};
use llmos_tensor::gemm::{MatRef, sgemm};

/// One adapted output of a fused projection (q of q|k|v, gate of gate|up, ...).
#[derive(Clone, Debug)]
pub struct Part {
    /// GGUF name of the base tensor, e.g. `blk.0.attn_q.weight`
    pub name: String,
    /// first output column of this part in the fused projection
    pub col: usize,
    pub n_out: usize,
    /// offset of B [n_out, r] in the adapter vector
    pub b: usize,
}

/// An adapted projection: one shared input, one A per part (consecutive: [parts x r, in]).
#[derive(Clone, Debug)]
pub struct Site {
    pub n_in: usize,
    /// offset of the fused base matrix in the model's flat layout
    pub base: usize,
    /// offset of A in the adapter vector
    pub a: usize,
    pub parts: Vec<Part>,
}

/// The adapters of a model: shape, layout and scale.
#[derive(Clone, Debug)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f32,
    /// per block: q|k|v, attention output, gate|up, down
    pub blocks: Vec<[Site; 4]>,
    pub total: usize,
}

impl Lora {
    /// Adapters of rank `rank` on every projection of `cfg`'s blocks.
    pub fn new(cfg: &ModelConfig, rank: usize, alpha: f32) -> Lora {
        let layout = Layout::new(cfg);
        let (dim, f, qw) = (cfg.dim, cfg.ffn, cfg.q_width());
        let kw = cfg.kv_heads * cfg.head_dim();
        let mut at = 0;
        let mut blocks = Vec::new();
        for (i, o) in layout.blocks.iter().enumerate() {
            let mut site = |base: usize, n_in: usize, parts: &[(&str, usize)]| {
                let a = at;
                at += parts.len() * rank * n_in;
                let mut col = 0;
                let parts = parts
                    .iter()
                    .map(|&(name, n_out)| {
                        let p = Part {
                            name: format!("blk.{i}.{name}.weight"),
                            col,
                            n_out,
                            b: at,
                        };
                        at += n_out * rank;
                        col += n_out;
                        p
                    })
                    .collect();
                Site {
                    n_in,
                    base,
                    a,
                    parts,
                }
            };
            blocks.push([
                site(o.wq, dim, &[("attn_q", qw), ("attn_k", kw), ("attn_v", kw)]),
                site(o.wo, qw, &[("attn_output", dim)]),
                site(o.wg, dim, &[("ffn_gate", f), ("ffn_up", f)]),
                site(o.wd, f, &[("ffn_down", dim)]),
            ]);
        }
        Lora {
            rank,
            alpha,
            blocks,
            total: at,
        }
    }

    /// alpha / r, the factor on B A.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Widths of each site's saved x A^T per row.
    pub(crate) fn u_widths(&self) -> [usize; 4] {
        match self.blocks.first() {
            Some(b) => b.each_ref().map(|s| s.parts.len() * self.rank),
            None => [0; 4],
        }
    }

    /// Every adapter tensor: A of each part as `NAME.lora_a` [r, in] and B as `NAME.lora_b`
    /// [out, r], row-major (GGUF dims reversed).
    pub fn tensors(&self) -> Vec<TensorInfo> {
        let mut out = Vec::new();
        for s in self.blocks.iter().flatten() {
            for (i, p) in s.parts.iter().enumerate() {
                out.push(TensorInfo {
                    name: format!("{}.lora_a", p.name),
                    offset: s.a + i * self.rank * s.n_in,
                    rows: self.rank,
                    cols: s.n_in,
                    decay: true,
                });
                out.push(TensorInfo {
                    name: format!("{}.lora_b", p.name),
                    offset: p.b,
                    rows: p.n_out,
                    cols: self.rank,
                    decay: true,
                });
            }
        }
        out
    }

    /// Initial adapters: A uniform in +-1/sqrt(in), B zero.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut v = vec![0f32; self.total];
        let mut rng = Rng(seed);
        for s in self.blocks.iter().flatten() {
            let bound = 1.0 / (s.n_in as f64).sqrt();
            let len = s.parts.len() * self.rank * s.n_in;
            for x in &mut v[s.a..s.a + len] {
                *x = ((rng.uniform() * 2.0 - 1.0) * bound) as f32;
            }
        }
        v
    }

    /// Adds (alpha / r) B A of every part into the flat model parameters `p`.
    pub fn merge_into(&self, adapters: &[f32], p: &mut [f32]) {
        for s in self.blocks.iter().flatten() {
            for (i, part) in s.parts.iter().enumerate() {
                let w0 = s.base + part.col * s.n_in;
                self.merge_part(adapters, s, i, &mut p[w0..w0 + part.n_out * s.n_in]);
            }
        }
    }

    /// Adds (alpha / r) B A of the part adapting tensor `name` (a GGUF name such as
    /// `blk.0.attn_q.weight`) into that tensor's values `w` [out, in]; false when no part
    /// adapts it.
    pub fn merge_one(&self, adapters: &[f32], name: &str, w: &mut [f32]) -> bool {
        for s in self.blocks.iter().flatten() {
            if let Some(i) = s.parts.iter().position(|p| p.name == name) {
                self.merge_part(adapters, s, i, w);
                return true;
            }
        }
        false
    }

    /// Whether a part adapts tensor `name`.
    pub fn adapts(&self, name: &str) -> bool {
        self.blocks
            .iter()
            .flatten()
            .any(|s| s.parts.iter().any(|p| p.name == name))
    }

    fn merge_part(&self, adapters: &[f32], s: &Site, i: usize, w: &mut [f32]) {
        let (r, part) = (self.rank, &s.parts[i]);
        let a = &adapters[s.a + i * r * s.n_in..s.a + (i + 1) * r * s.n_in];
        let b = &adapters[part.b..part.b + part.n_out * r];
        // B scaled once, then W += (sB) A
        let sb: Vec<f32> = b.iter().map(|x| x * self.scale()).collect();
        sgemm(
            part.n_out,
            s.n_in,
            r,
            MatRef::rows(&sb, r),
            MatRef::rows(a, s.n_in),
            w,
            s.n_in,
            true,
        );
    }

    /// y += (alpha / r) (x A^T) B^T for site `site` of block `block`; `u` (rows of
    /// parts x r) receives (alpha / r) x A^T for the backward.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        adapters: &[f32],
        block: usize,
        site: usize,
        x: &[f32],
        y: &mut [f32],
        u: &mut [f32],
    ) {
        let s = &self.blocks[block][site];
        let (r, pr) = (self.rank, s.parts.len() * self.rank);
        let n = x.len() / s.n_in;
        let ldy = y.len() / n.max(1);
        let a = &adapters[s.a..s.a + pr * s.n_in];
        sgemm(
            n,
            pr,
            s.n_in,
            MatRef::rows(x, s.n_in),
            MatRef::rows_t(a, s.n_in),
            u,
            pr,
            false,
        );
        let k = self.scale();
        u.iter_mut().for_each(|v| *v *= k);
        for (i, p) in s.parts.iter().enumerate() {
            let b = &adapters[p.b..p.b + p.n_out * r];
            let um = MatRef {
                data: &u[i * r..],
                rs: pr,
                cs: 1,
            };
            sgemm(
                n,
                p.n_out,
                r,
                um,
                MatRef::rows_t(b, r),
                &mut y[p.col..],
                ldy,
                true,
            );
        }
    }

    /// The backward of [`Lora::forward`] given dy: adds dA, dB into `grads` and
    /// d(x A^T) A into dx. `du` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        adapters: &[f32],
        grads: &mut [f32],
        block: usize,
        site: usize,
        x: &[f32],
        dy: &[f32],
        u: &[f32],
        dx: &mut [f32],
        du: &mut Vec<f32>,
    ) {
        let s = &self.blocks[block][site];
        let (r, pr) = (self.rank, s.parts.len() * self.rank);
        let n = x.len() / s.n_in;
        let ldy = dy.len() / n.max(1);
        du.clear();
        du.resize(n * pr, 0.0);
        for (i, p) in s.parts.iter().enumerate() {
            let b = &adapters[p.b..p.b + p.n_out * r];
            // dB += dy_part^T u_part
            sgemm(
                p.n_out,
                r,
                n,
                MatRef {
                    data: &dy[p.col..],
                    rs: 1,
                    cs: ldy,
                },
                MatRef {
                    data: &u[i * r..],
                    rs: pr,
                    cs: 1,
                },
                &mut grads[p.b..p.b + p.n_out * r],
                r,
                true,
            );
            // d(u_part) = dy_part B
            sgemm(
                n,
                r,
                p.n_out,
                MatRef {
                    data: &dy[p.col..],
                    rs: ldy,
                    cs: 1,
                },
                MatRef::rows(b, r),
                &mut du[i * r..],
                pr,
                false,
            );
        }
        let k = self.scale();
        du.iter_mut().for_each(|v| *v *= k);
        let a = &adapters[s.a..s.a + pr * s.n_in];
        // dA += du^T x ; dx += du A
        sgemm(
            pr,
            s.n_in,
            n,
            MatRef::rows_t(du, pr),
            MatRef::rows(x, s.n_in),
            &mut grads[s.a..s.a + pr * s.n_in],
            s.n_in,
            true,
        );
        sgemm(
            n,
            s.n_in,
            pr,
            MatRef::rows(du, pr),
            MatRef::rows(a, s.n_in),
            dx,
            s.n_in,
            true,
        );
    }
}
