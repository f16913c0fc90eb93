//! Hyper-parameters, read once from `{arch}.*` GGUF metadata into a typed struct.

use crate::ModelError;
use llmos_formats::{Gguf, Value};
use llmos_tensor::ops::RopeStyle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM: RMSNorm, SwiGLU, RoPE on permuted (interleaved) Q/K.
    Llama,
    /// Qwen2: llama plus biases on q/k/v and NeoX-style RoPE.
    Qwen2,
    /// Gemma 3: GeGLU, q/k norms, pre- and post-norms, scaled embeddings, sliding-window
    /// layers with their own RoPE base.
    Gemma3,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub arch_name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Dims per head of Q and K (`attention.key_length`), and of V.
    pub head_dim: usize,
    pub head_dim_v: usize,
    pub n_ff: usize,
    pub ctx_train: usize,
    pub norm_eps: f32,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (gemma3's local layers).
    pub rope_base_swa: f32,
    /// Frequency scale of global layers (1 / linear scaling factor).
    pub rope_scale: f32,
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    /// Sliding-window length and the layer pattern: layer `l` is windowed when
    /// `l % swa_pattern < swa_pattern - 1`.
    pub sliding_window: Option<usize>,
    pub swa_pattern: usize,
    pub attn_scale: f32,
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Config, ModelError> {
        let arch_name = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::MissingKey("general.architecture".into()))?
            .to_string();
        let arch = match arch_name.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => return Err(ModelError::UnsupportedArch(other.into())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let opt_u = |k: &str| -> Result<Option<usize>, ModelError> {
            match g.get(&key(k)) {
                None => Ok(None),
                Some(Value::Array(a)) => {
                    // per-layer arrays (e.g. head_count_kv): all equal is all we support
                    let v: Vec<u64> = a.iter().filter_map(Value::as_u64).collect();
                    match v.first() {
                        Some(&f) if v.iter().all(|&x| x == f) && v.len() == a.len() => {
                            Ok(Some(f as usize))
                        }
                        _ => Err(ModelError::BadMetadata(format!(
                            "{}: per-layer values differ",
                            key(k)
                        ))),
                    }
                }
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    ModelError::BadMetadata(format!(
                        "{} = {v} is not a non-negative integer",
                        key(k)
                    ))
                }),
            }
        };
        let req_u = |k: &str| opt_u(k)?.ok_or_else(|| ModelError::MissingKey(key(k)));
        let opt_f = |k: &str| g.get(&key(k)).and_then(Value::as_f64).map(|v| v as f32);

        let n_embd = req_u("embedding_length")?;
        let n_layer = req_u("block_count")?;
        let n_head = req_u("attention.head_count")?;
        let n_head_kv = opt_u("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ff = req_u("feed_forward_length")?;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd == 0 || n_layer == 0 {
            return Err(ModelError::BadMetadata(format!(
                "{n_head} heads / {n_head_kv} kv heads / {n_embd} dims / {n_layer} layers is not a valid shape"
            )));
        }
        let head_dim = opt_u("attention.key_length")?.unwrap_or(n_embd / n_head);
        let head_dim_v = opt_u("attention.value_length")?.unwrap_or(head_dim);
        let rope_dim = opt_u("rope.dimension_count")?.unwrap_or(head_dim);
        if head_dim == 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::BadMetadata(format!(
                "rope dims {rope_dim} do not fit head dims {head_dim}"
            )));
        }
        let n_vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.dims.get(1).copied().unwrap_or(0) as usize)
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let norm_eps = opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
        let rope_base = opt_f("rope.freq_base").unwrap_or(10_000.0);
        let rope_scale = match g.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            Some("linear") => 1.0 / opt_f("rope.scaling.factor").unwrap_or(1.0),
            _ => opt_f("rope.scale_linear").map_or(1.0, |f| 1.0 / f),
        };
        let (rope_style, sliding_window, swa_pattern, rope_base_swa) = match arch {
            Arch::Llama => (RopeStyle::Interleaved, None, 1, rope_base),
            Arch::Qwen2 => (RopeStyle::Neox, None, 1, rope_base),
            // Gemma 3 interleaves 5 local (sliding-window, RoPE base 10k) layers with 1 global
            // layer; neither number is in the GGUF metadata (llama.cpp fixes them too)
            Arch::Gemma3 => (
                RopeStyle::Neox,
                opt_u("attention.sliding_window")?,
                6,
                10_000.0,
            ),
        };
        Ok(Config {
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_ff,
            ctx_train: opt_u("context_length")?.unwrap_or(2048),
            norm_eps,
            rope_base,
            rope_base_swa,
            rope_scale,
            rope_dim,
            rope_style,
            sliding_window,
            swa_pattern,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: opt_f("attn_logit_softcapping"),
            final_softcap: opt_f("final_logit_softcapping"),
            arch_name,
        })
    }

    /// Whether layer `l` attends only within the sliding window.
    pub fn is_swa_layer(&self, l: usize) -> bool {
        self.sliding_window.is_some() && l % self.swa_pattern < self.swa_pattern - 1
    }
}
