//! Weight binding: every tensor the forward pass reads, found by its GGUF name and checked
//! against the config's shapes. Matrices stay in the file's storage type (memory-mapped);
//! the small vectors (norms, biases) are dequantized to f32 once.

use crate::{Arch, Config, ModelError};
use llmos_formats::Gguf;
use llmos_tensor::{ActMode, DType, Weight};
use std::sync::Arc;

/// A matrix inside the mapped file: `rows` rows of `cols` values (PyTorch [out, in]), and
/// the copy the model reads instead once [`Model::repack`] made one.
#[derive(Clone, Debug)]
pub(crate) struct Mat {
    pub dtype: DType,
    pub start: usize,
    pub len: usize,
    pub rows: usize,
    pub cols: usize,
    pub copy: Option<Packed>,
}

/// A repacked matrix ([`llmos_tensor::x8`]): its bytes in an anonymous map that holds every
/// repacked matrix of the model (one map, so the OS can back it with huge pages where it
/// gives them on request: decode streams it once per token, a TLB miss per 4 KiB page
/// otherwise).
/// `x8`: repacked, or else the file's bytes as they are.
#[derive(Clone)]
pub(crate) struct Packed {
    map: Arc<memmap2::MmapMut>,
    span: std::ops::Range<usize>,
    x8: bool,
}

impl Packed {
    fn bytes(&self) -> &[u8] {
        &self.map[self.span.clone()]
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes, x8 {})", self.span.len(), self.x8)
    }
}

pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Mat,
    pub wk: Mat,
    pub wv: Mat,
    pub wo: Mat,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// A model ready to run: config, the open file, and the bound weights.
pub struct Model {
    pub config: Config,
    pub gguf: Arc<Gguf>,
    pub(crate) tok_embd: Mat,
    pub(crate) output: Mat,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    /// Llama 3.1 style per-frequency RoPE divisors (`rope_freqs.weight`).
    pub(crate) rope_freqs: Option<Vec<f32>>,
    /// How activations meet quantized weights (f32, or 8-bit blocks like llama.cpp).
    pub act: ActMode,
    /// The order of the repacked Q4_1 matrices' sums: llama.cpp's lanes (the default) or
    /// one integer sum per block ([`llmos_tensor::x8::Sums`]), faster for batches of
    /// sequences and prompts. Every path (one token, a batch, a prompt) uses the same
    /// order, so a sequence's logits never depend on what runs beside it.
    pub sums: llmos_tensor::x8::Sums,
    /// LoRA adapters added to the projections at run time ([`Model::add_lora`]).
    pub(crate) lora: Option<crate::lora::Adapters>,
}

struct Binder<'a> {
    g: &'a Gguf,
}

impl Binder<'_> {
    fn mat(&self, name: &str, cols: usize, rows: usize) -> Result<Mat, ModelError> {
        let t = self
            .g
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let expected = vec![cols as u64, rows as u64];
        if t.dims != expected {
            return Err(ModelError::Shape {
                name: name.into(),
                got: t.dims.clone(),
                expected,
            });
        }
        if !t.dtype.is_supported() {
            return Err(ModelError::Tensor {
                name: name.into(),
                source: llmos_tensor::TensorError::Unsupported(t.dtype),
            });
        }
        Ok(Mat {
            dtype: t.dtype,
            start: t.offset as usize,
            len: t.size as usize,
            rows,
            cols,
            copy: None,
        })
    }

    fn opt_mat(&self, name: &str, cols: usize, rows: usize) -> Result<Option<Mat>, ModelError> {
        if self.g.tensor(name).is_none() {
            return Ok(None);
        }
        self.mat(name, cols, rows).map(Some)
    }

    fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        self.opt_vec(name, n)?
            .ok_or_else(|| ModelError::MissingTensor(name.into()))
    }

    fn opt_vec(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(t) = self.g.tensor(name) else {
            return Ok(None);
        };
        if t.n_elements() != n as u64 {
            return Err(ModelError::Shape {
                name: name.into(),
                got: t.dims.clone(),
                expected: vec![n as u64],
            });
        }
        let mut v = vec![0f32; n];
        llmos_tensor::quant::dequantize_row(t.dtype, self.g.tensor_data(t), &mut v).map_err(
            |source| ModelError::Tensor {
                name: name.into(),
                source,
            },
        )?;
        Ok(Some(v))
    }
}

impl Model {
    /// Binds every tensor of `g` that the architecture needs.
    pub fn load(g: Arc<Gguf>) -> Result<Model, ModelError> {
        let c = Config::from_gguf(&g)?;
        let b = Binder { g: &g };
        let (e, q, kv, kvv, ff) = (
            c.n_embd,
            c.n_head * c.head_dim,
            c.n_head_kv * c.head_dim,
            c.n_head_kv * c.head_dim_v,
            c.n_ff,
        );
        let tok_embd = b.mat("token_embd.weight", e, c.n_vocab)?;
        let output = b
            .opt_mat("output.weight", e, c.n_vocab)?
            .unwrap_or_else(|| tok_embd.clone());
        let output_norm = b.vec("output_norm.weight", e)?;
        let gemma = c.arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}");
            layers.push(Layer {
                attn_norm: b.vec(&n("attn_norm.weight"), e)?,
                wq: b.mat(&n("attn_q.weight"), e, q)?,
                wk: b.mat(&n("attn_k.weight"), e, kv)?,
                wv: b.mat(&n("attn_v.weight"), e, kvv)?,
                wo: b.mat(&n("attn_output.weight"), c.n_head * c.head_dim_v, e)?,
                bq: b.opt_vec(&n("attn_q.bias"), q)?,
                bk: b.opt_vec(&n("attn_k.bias"), kv)?,
                bv: b.opt_vec(&n("attn_v.bias"), kvv)?,
                q_norm: b.opt_vec(&n("attn_q_norm.weight"), c.head_dim)?,
                k_norm: b.opt_vec(&n("attn_k_norm.weight"), c.head_dim)?,
                post_attn_norm: if gemma {
                    Some(b.vec(&n("post_attention_norm.weight"), e)?)
                } else {
                    None
                },
                ffn_norm: b.vec(&n("ffn_norm.weight"), e)?,
                gate: b.mat(&n("ffn_gate.weight"), e, ff)?,
                up: b.mat(&n("ffn_up.weight"), e, ff)?,
                down: b.mat(&n("ffn_down.weight"), ff, e)?,
                post_ffn_norm: if gemma {
                    Some(b.vec(&n("post_ffw_norm.weight"), e)?)
                } else {
                    None
                },
            });
        }
        let rope_freqs = b.opt_vec("rope_freqs.weight", c.rope_dim / 2)?;
        let mut m = Model {
            config: c,
            gguf: g,
            tok_embd,
            output,
            output_norm,
            layers,
            rope_freqs,
            act: ActMode::Q8,
            sums: llmos_tensor::x8::Sums::Lanes,
            lora: None,
        };
        // Q4_1 matrices run repacked unless LLMOS_NO_X8 is set (to compare with llama.cpp's
        // own summation order, bit for bit)
        if std::env::var_os("LLMOS_NO_X8").is_none_or(|v| v.is_empty() || v == "0") {
            m.repack()?;
        }
        Ok(m)
    }

    /// A kernel view of a bound matrix.
    pub(crate) fn w<'a>(&'a self, m: &'a Mat) -> Weight<'a> {
        if let Some(p) = &m.copy {
            let w = if p.x8 {
                Weight::new_x8(m.dtype, p.bytes(), m.rows, m.cols).map(|w| w.with_sums(self.sums))
            } else {
                Weight::new(m.dtype, p.bytes(), m.rows, m.cols)
            };
            return w.expect("geometry checked at load and repack");
        }
        let data = &self.gguf.data_section()[m.start..m.start + m.len];
        Weight::new(m.dtype, data, m.rows, m.cols).expect("geometry checked at load")
    }

    /// Whether [`Model::sums`] changes anything: some layer matrix is Q4_1, the only type
    /// whose summation order can be chosen.
    pub fn has_q4_1(&self) -> bool {
        self.layers.iter().any(|l| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .any(|m| m.dtype == DType::Q4_1)
        })
    }

    /// Repacks the Q4_1, Q8_0 and (with VNNI) Q5_0 layer matrices and the output (with the
    /// embeddings, when tied) eight rows at a time ([`llmos_tensor::x8`]): token generation,
    /// batches and prompts then make eight rows' lane sums per instruction, with the same
    /// results bit for bit. When any matrix is repacked, the model's other matrices are
    /// copied beside them, and the file's pages of every copied matrix leave the resident
    /// set, so memory stays about the file's size. Returns the bytes repacked; matrices
    /// whose rows are not a multiple of eight stay row-major.
    pub fn repack(&mut self) -> Result<u64, ModelError> {
        let g = self.gguf.clone();
        let mut done = 0u64;
        let tied = self.output.start == self.tok_embd.start;
        let mut mats: Vec<&mut Mat> = Vec::new();
        for l in &mut self.layers {
            mats.extend([
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        // the output matrix; when tied, the embeddings (their rows are read through the X8
        // layout too) and the output takes the same copy below
        mats.push(if tied {
            &mut self.tok_embd
        } else {
            &mut self.output
        });
        let eligible = |m: &Mat| {
            llmos_tensor::x8::worth(m.dtype)
                && m.rows.is_multiple_of(llmos_tensor::x8::GROUP)
                && m.cols.is_multiple_of(32)
        };
        mats.retain(|m| m.copy.is_none());
        if !mats.iter().any(|m| eligible(m)) {
            return Ok(0);
        }
        // one map for every matrix, each at a 64-byte boundary: the repacked ones and the
        // others copied as they are, so no file page stays mapped (the file's pages of a
        // matrix left in the file would map whole 2 MiB folios again, neighbours included)
        let at = |len: usize| len.next_multiple_of(64);
        let total: usize = mats.iter().map(|m| at(m.len)).sum();
        let mut buf = memmap2::MmapMut::map_anon(total).map_err(ModelError::Repack)?;
        #[cfg(target_os = "linux")]
        let _ = buf.advise(memmap2::Advice::HugePage);
        let mut spans = Vec::new();
        let mut off = 0;
        for m in &mats {
            let src = &g.data_section()[m.start..m.start + m.len];
            let dst = &mut buf[off..off + m.len];
            let x8 = eligible(m);
            // whole groups of rows are independent: pieces of about 2 MiB on the threads,
            // each piece's file pages released as soon as it is copied (the peak stays
            // about one copy of the weights, even for a large embedding matrix)
            let unit = m.len / m.rows * if x8 { llmos_tensor::x8::GROUP } else { 1 };
            let piece = ((2 << 20) / unit.max(1) * unit.max(1)).max(unit);
            let failed = std::sync::atomic::AtomicBool::new(false);
            llmos_tensor::pool::for_each_chunk_mut(dst, piece, |i, part| {
                let from = i * piece;
                let s = &src[from..from + part.len()];
                let rows = part.len() / unit * if x8 { llmos_tensor::x8::GROUP } else { 1 };
                let ok = if x8 {
                    llmos_tensor::x8::repack_into(m.dtype, s, rows, m.cols, part)
                } else {
                    part.copy_from_slice(s);
                    true
                };
                if ok {
                    g.release(m.start + from..m.start + from + part.len());
                } else {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
            // geometry was checked above, so a piece cannot fail; if one did, the matrix
            // stays in the file (its pages are read again where released)
            let ok = !failed.into_inner();
            spans.push(ok.then_some((off..off + m.len, x8)));
            off += at(m.len);
        }
        let map = Arc::new(buf);
        for (m, span) in mats.into_iter().zip(spans) {
            if let Some((span, x8)) = span {
                if x8 {
                    done += m.len as u64;
                }
                m.copy = Some(Packed {
                    map: map.clone(),
                    span,
                    x8,
                });
            }
        }
        if tied {
            self.output.copy = self.tok_embd.copy.clone();
        }
        Ok(done)
    }

    /// Bytes of weights read per generated token (all matrices once, embeddings one row).
    pub fn weight_bytes(&self) -> u64 {
        let mut n = self.output.len as u64;
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                n += m.len as u64;
            }
        }
        n
    }
}
