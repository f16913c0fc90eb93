//! Starting points for fine-tuning: a llama-architecture GGUF (any tensor type) turned into
//! the trainer's f32 flat parameters, and the fine-tuned parameters written back as a GGUF
//! that keeps every metadata key of the base (tokenizer, chat template, context length).

use crate::model::{Layout, ModelConfig};
use crate::train::TrainError;
use llmos_formats::{Gguf, GgufWriter, Value};
use llmos_model::{Arch, Config};
use llmos_tensor::DType;
use std::path::Path;

fn bad(g: &Gguf, msg: impl Into<String>) -> TrainError {
    TrainError::Config(format!("{}: {}", g.path.display(), msg.into()))
}

/// The trainer's shape for a GGUF model (context `ctx` for training), or why it cannot be
/// trained here.
pub fn config_of(g: &Gguf, ctx: usize) -> Result<ModelConfig, TrainError> {
    let c = Config::from_gguf(g).map_err(|e| bad(g, e.to_string()))?;
    if c.arch != Arch::Llama {
        return Err(bad(
            g,
            format!(
                "architecture {} cannot be fine-tuned yet (only llama-family models: SmolLM2, Llama, Mistral, models made by `llmos train`)",
                c.arch_name
            ),
        ));
    }
    if c.head_dim * c.n_head != c.n_embd || c.head_dim_v != c.head_dim || c.rope_dim != c.head_dim {
        return Err(bad(
            g,
            "head dimensions other than embedding / heads, or partial RoPE, are not supported by the trainer",
        ));
    }
    if c.rope_scale != 1.0 {
        return Err(bad(g, "RoPE scaling is not supported by the trainer"));
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
        gemma: None,
    };
    cfg.validate().map_err(|e| bad(g, e))?;
    Ok(cfg)
}

/// Dequantizes every tensor of `g` into the flat layout of `cfg`. Every tensor of the file
/// must be one the trainer knows, with the shape it expects.
pub fn params_of(g: &Gguf, cfg: &ModelConfig) -> Result<Vec<f32>, TrainError> {
    let layout = Layout::new(cfg);
    for t in &g.tensors {
        if t.name != RM_HEAD && !layout.tensors.iter().any(|l| l.name == t.name) {
            return Err(bad(
                g,
                format!(
                    "tensor {} is not part of the llama architecture the trainer knows",
                    t.name
                ),
            ));
        }
    }
    let mut p = vec![0f32; layout.total];
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
        llmos_tensor::quant::dequantize_row(t.dtype, g.tensor_data(t), &mut p[l.range()])
            .map_err(|e| bad(g, format!("tensor {}: {e}", l.name)))?;
    }
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
