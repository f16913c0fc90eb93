//! Starting points for fine-tuning: a llama-architecture GGUF (any tensor type) turned into
//! the trainer's f32 flat parameters, and the fine-tuned parameters written back as a GGUF
//! that keeps every metadata key of the base (tokenizer, chat template, context length).

use crate::lora::Lora;
use crate::model::{Gemma, Layout, ModelConfig, Weights};
use crate::train::TrainError;
use llmos_formats::{Gguf, GgufWriter, Value};
use llmos_model::{Arch, Config};
use llmos_tensor::DType;
use llmos_tensor::pool::for_each_chunk_mut;
use llmos_tensor::quant::dequantize_row;
use std::path::Path;

fn bad(g: &Gguf, msg: impl Into<String>) -> TrainError {
    TrainError::Config(format!("{}: {}", g.path.display(), msg.into()))
}

/// The trainer's shape for a GGUF model (context `ctx` for training), or why it cannot be
/// trained here.
pub fn config_of(g: &Gguf, ctx: usize) -> Result<ModelConfig, TrainError> {
    let c = Config::from_gguf(g).map_err(|e| bad(g, e.to_string()))?;
    let gemma = match c.arch {
        Arch::Llama => None,
        Arch::Gemma3 => Some(Gemma {
            head_dim: c.head_dim,
            rope_theta_local: c.rope_base_swa,
            swa_pattern: if c.sliding_window.is_some() {
                c.swa_pattern
            } else {
                1
            },
            sliding_window: c.sliding_window.unwrap_or(usize::MAX),
            attn_scale: c.attn_scale,
        }),
        _ => {
            return Err(bad(
                g,
                format!(
                    "architecture {} cannot be fine-tuned yet (llama-family models: SmolLM2, Llama, Mistral, models made by `llmos train`; and gemma3)",
                    c.arch_name
                ),
            ));
        }
    };
    let head_ok = gemma.is_some() || c.head_dim * c.n_head == c.n_embd;
    if !head_ok || c.head_dim_v != c.head_dim || c.rope_dim != c.head_dim {
        return Err(bad(
            g,
            "head dimensions other than embedding / heads (llama), or partial RoPE, are not supported by the trainer",
        ));
    }
    if c.rope_scale != 1.0 {
        return Err(bad(g, "RoPE scaling is not supported by the trainer"));
    }
    if c.attn_softcap.is_some() || c.final_softcap.is_some() {
        return Err(bad(g, "logit soft-capping is not supported by the trainer"));
    }
    let cfg = ModelConfig {
        vocab: c.n_vocab,
        dim: c.n_embd,
        layers: c.n_layer,
        heads: c.n_head,
        kv_heads: c.n_head_kv,
        ffn: c.n_ff,
        ctx,
        tied: g.tensor("output.weight").is_none(),
        rope_theta: c.rope_base,
        norm_eps: c.norm_eps,
        gemma,
    };
    cfg.validate().map_err(|e| bad(g, e))?;
    Ok(cfg)
}

/// Checks that `g` holds exactly the tensors of `cfg`'s layout, with the shapes it expects
/// (a reward head aside).
fn check_tensors(g: &Gguf, layout: &Layout) -> Result<(), TrainError> {
    for t in &g.tensors {
        if t.name != RM_HEAD && !layout.tensors.iter().any(|l| l.name == t.name) {
            return Err(bad(
                g,
                format!(
                    "tensor {} is not part of the architecture the trainer knows",
                    t.name
                ),
            ));
        }
    }
    for l in &layout.tensors {
        let t = g
            .tensor(&l.name)
            .ok_or_else(|| bad(g, format!("tensor {} missing", l.name)))?;
        let want: Vec<u64> = if l.rows == 1 {
            vec![l.cols as u64]
        } else {
            vec![l.cols as u64, l.rows as u64]
        };
        if t.dims != want {
            return Err(bad(
                g,
                format!(
                    "tensor {} has dims {:?}, expected {:?}",
                    l.name, t.dims, want
                ),
            ));
        }
        if !t.dtype.is_supported() {
            return Err(bad(
                g,
                format!(
                    "tensor {} has type {}, which cannot be read",
                    l.name,
                    t.dtype.name()
                ),
            ));
        }
    }
    Ok(())
}

/// A frozen base that stays in its file's types (quantized or not, mapped, not copied):
/// each read dequantizes the rows it asks for. What LoRA trains over.
pub struct GgufWeights<'g> {
    g: &'g Gguf,
    /// (flat range, tensor of the file, row length) of every layout tensor, in order
    parts: Vec<(std::ops::Range<usize>, &'g llmos_formats::TensorInfo, usize)>,
}

impl<'g> GgufWeights<'g> {
    pub fn new(g: &'g Gguf, cfg: &ModelConfig) -> Result<Self, TrainError> {
        let layout = Layout::new(cfg);
        check_tensors(g, &layout)?;
        let parts = layout
            .tensors
            .iter()
            .map(|l| {
                let t = g.tensor(&l.name).expect("checked above");
                (l.range(), t, l.cols)
            })
            .collect();
        Ok(GgufWeights { g, parts })
    }
}

impl Weights for GgufWeights<'_> {
    fn read<'a>(&'a self, r: std::ops::Range<usize>, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        scratch.clear();
        scratch.resize(r.len(), 0.0);
        let first = self.parts.partition_point(|p| p.0.end <= r.start);
        let mut at = 0;
        for (range, t, cols) in &self.parts[first..] {
            if range.start >= r.end {
                break;
            }
            let (s, e) = (r.start.max(range.start), r.end.min(range.end));
            let (r0, r1) = ((s - range.start) / cols, (e - range.start) / cols);
            assert!(
                (s - range.start) % cols == 0 && (e - range.start) % cols == 0,
                "weight reads cover whole rows"
            );
            let row_bytes = t.dtype.row_bytes(*cols as u64).expect("checked type") as usize;
            let data = &self.g.tensor_data(t)[r0 * row_bytes..r1 * row_bytes];
            let out = &mut scratch[at..at + (r1 - r0) * cols];
            // rows in parallel: a vocabulary's worth is read every step
            const ROWS: usize = 64;
            for_each_chunk_mut(out, ROWS * cols, |ci, o| {
                let src = &data[ci * ROWS * row_bytes..];
                for (j, row) in o.chunks_exact_mut(*cols).enumerate() {
                    dequantize_row(t.dtype, &src[j * row_bytes..(j + 1) * row_bytes], row)
                        .expect("checked type");
                }
            });
            at += (r1 - r0) * cols;
        }
        assert_eq!(at, r.len(), "weight read outside the layout");
        scratch
    }
}

/// Dequantizes every tensor of `g` into the flat layout of `cfg`. Every tensor of the file
/// must be one the trainer knows, with the shape it expects.
pub fn params_of(g: &Gguf, cfg: &ModelConfig) -> Result<Vec<f32>, TrainError> {
    let base = GgufWeights::new(g, cfg)?;
    let mut p = Vec::new();
    let total = Layout::new(cfg).total;
    base.read(0..total, &mut p);
    Ok(p)
}

/// The scalar head of a reward model, [w (dim), bias], stored beside the trunk.
pub const RM_HEAD: &str = "llmos.reward_head.weight";

/// A reward model's head, when the file has one.
pub fn reward_head(g: &Gguf, cfg: &ModelConfig) -> Result<Option<Vec<f32>>, TrainError> {
    let Some(t) = g.tensor(RM_HEAD) else {
        return Ok(None);
    };
    if t.dims != [cfg.dim as u64 + 1] {
        return Err(bad(
            g,
            format!(
                "{RM_HEAD} has dims {:?}, expected [{}]",
                t.dims,
                cfg.dim + 1
            ),
        ));
    }
    let mut h = vec![0f32; cfg.dim + 1];
    llmos_tensor::quant::dequantize_row(t.dtype, g.tensor_data(t), &mut h)
        .map_err(|e| bad(g, format!("{RM_HEAD}: {e}")))?;
    Ok(Some(h))
}

/// Writes `params` (shape `cfg`) as an all-F32 GGUF carrying `base`'s metadata, atomically;
/// with `head`, as a reward model.
pub fn write_like(
    base: &Gguf,
    cfg: &ModelConfig,
    params: &[f32],
    head: Option<&[f32]>,
    path: &Path,
    name: &str,
) -> Result<(), TrainError> {
    gguf_like(base, cfg, params, head, DType::F32, name)
        .write(path)
        .map_err(|err| TrainError::Io {
            path: path.to_path_buf(),
            err,
        })
}

/// The GGUF `write_like` writes, in memory (the policy that GRPO samples from is rebuilt
/// from the parameters this way after every update).
pub fn gguf_like(
    base: &Gguf,
    cfg: &ModelConfig,
    params: &[f32],
    head: Option<&[f32]>,
    matrices: DType,
    name: &str,
) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        if k != "general.alignment" {
            w.set(k, v.clone());
        }
    }
    w.set("general.name", Value::String(name.to_string()));
    // positions up to the fine-tuning context have now been trained
    if let Some(arch) = base.get("general.architecture").and_then(Value::as_str) {
        let key = format!("{arch}.context_length");
        let base_ctx = base.get(&key).and_then(Value::as_u64).unwrap_or(0);
        if (cfg.ctx as u64) > base_ctx {
            w.set(&key, Value::U32(cfg.ctx as u32));
        }
    }
    // all tensors F32 (file type 0), or mostly Q8_0 (7)
    w.set(
        "general.file_type",
        Value::U32(if matrices == DType::Q8_0 { 7 } else { 0 }),
    );
    for t in &Layout::new(cfg).tensors {
        let dims: Vec<u64> = if t.rows == 1 {
            vec![t.cols as u64]
        } else {
            vec![t.cols as u64, t.rows as u64]
        };
        let v = &params[t.range()];
        // matrices in the requested type where its blocks fit the rows
        let quantized = (t.rows > 1 && matrices != DType::F32)
            .then(|| llmos_tensor::quantize::quantize_rows(matrices, v, t.cols).ok())
            .flatten();
        match quantized {
            Some(q) => w.add_tensor(&t.name, &dims, matrices, q),
            None => w.add_tensor(
                &t.name,
                &dims,
                DType::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        };
    }
    if let Some(h) = head {
        let bytes = h.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(RM_HEAD, &[h.len() as u64], DType::F32, bytes);
    }
    w
}

/// The LoRA adapter file of `lora` for `base`: llama.cpp's adapter GGUF (general.type
/// "adapter", adapter.type "lora", adapter.lora.alpha, F32 tensors NAME.lora_a / .lora_b),
/// plus `llmos.lora.base`, the base it was trained on (a hint for `export --merge`), and
/// the base's chat template.
pub fn adapter_gguf(
    base: &Gguf,
    base_spec: &str,
    lora: &Lora,
    adapters: &[f32],
    name: &str,
) -> GgufWriter {
    let mut w = GgufWriter::new();
    if let Some(v) = base.get("general.architecture") {
        w.set("general.architecture", v.clone());
    }
    w.set("general.type", Value::String("adapter".into()));
    w.set("general.name", Value::String(name.into()));
    w.set("adapter.type", Value::String("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(lora.alpha));
    w.set("llmos.lora.base", Value::String(base_spec.into()));
    // the template the adapters were trained with (a base model may have had none)
    if let Some(t) = base.get("tokenizer.chat_template") {
        w.set("tokenizer.chat_template", t.clone());
    }
    for t in lora.tensors() {
        let bytes = adapters[t.range()]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        w.add_tensor(&t.name, &[t.cols as u64, t.rows as u64], DType::F32, bytes);
    }
    w
}

/// Reads an adapter file written by [`adapter_gguf`] (or any llama.cpp LoRA adapter that
/// covers every projection with one rank) for a model of shape `cfg`.
pub fn read_adapter(g: &Gguf, cfg: &ModelConfig) -> Result<(Lora, Vec<f32>), TrainError> {
    let s = |k: &str| g.get(k).and_then(Value::as_str);
    if s("general.type") != Some("adapter") || s("adapter.type") != Some("lora") {
        return Err(bad(g, "not a LoRA adapter file"));
    }
    let rank = g
        .tensor("blk.0.attn_q.weight.lora_a")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| bad(g, "no blk.0.attn_q.weight.lora_a tensor"))? as usize;
    if rank == 0 {
        return Err(bad(g, "rank 0"));
    }
    let alpha = g
        .get("adapter.lora.alpha")
        .and_then(Value::as_f64)
        .map_or(rank as f32, |a| a as f32);
    let lora = Lora::new(cfg, rank, alpha);
    let tensors = lora.tensors();
    if g.tensors.len() != tensors.len() {
        return Err(bad(
            g,
            format!(
                "{} tensors, expected {} (adapters of rank {rank} on every projection)",
                g.tensors.len(),
                tensors.len()
            ),
        ));
    }
    let mut v = vec![0f32; lora.total];
    for t in &tensors {
        let f = g
            .tensor(&t.name)
            .ok_or_else(|| bad(g, format!("tensor {} missing", t.name)))?;
        if f.dims != [t.cols as u64, t.rows as u64] {
            return Err(bad(
                g,
                format!(
                    "tensor {} has dims {:?}, expected {:?}",
                    t.name,
                    f.dims,
                    [t.cols, t.rows]
                ),
            ));
        }
        dequantize_row(f.dtype, g.tensor_data(f), &mut v[t.range()])
            .map_err(|e| bad(g, format!("tensor {}: {e}", t.name)))?;
    }
    Ok((lora, v))
}

/// `base` with the adapters folded in: every adapted matrix becomes dequant(W) + (alpha /
/// r) B A, stored as `matrices` (F32 keeps it exact); every other tensor and all metadata
/// are copied as they are.
pub fn merged_gguf(
    base: &Gguf,
    cfg: &ModelConfig,
    lora: &Lora,
    adapters: &[f32],
    matrices: DType,
    name: &str,
) -> Result<GgufWriter, TrainError> {
    let layout = Layout::new(cfg);
    let weights = GgufWeights::new(base, cfg)?;
    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        if k != "general.alignment" {
            w.set(k, v.clone());
        }
    }
    w.set("general.name", Value::String(name.to_string()));
    let mut scratch = Vec::new();
    for t in &base.tensors {
        let l = layout.tensors.iter().find(|l| l.name == t.name);
        let Some(l) = l.filter(|_| lora.adapts(&t.name)) else {
            // not adapted (or not modelled by the trainer: a reward head): as it is
            w.add_tensor(&t.name, &t.dims, t.dtype, base.tensor_data(t).to_vec());
            continue;
        };
        // the matrix of the base, plus its adapter's product
        let mut v = weights.read(l.range(), &mut scratch).to_vec();
        lora.merge_one(adapters, &t.name, &mut v);
        let bytes = llmos_tensor::quantize::quantize_rows(matrices, &v, l.cols).map_err(|e| {
            bad(
                base,
                format!("tensor {} as {}: {e}", t.name, matrices.name()),
            )
        })?;
        w.add_tensor(&t.name, &t.dims, matrices, bytes);
    }
    Ok(w)
}
