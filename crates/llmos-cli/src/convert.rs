//! Hugging Face Llama checkpoints (a folder with config.json, model.safetensors and
//! tokenizer.json) as a source for `llmos quantize`: GGUF metadata from the config and the
//! tokenizer, tensors renamed to GGUF's llama names, and the rows of Q and K reordered from
//! HF's half-split rotary layout to the adjacent pairs GGUF llama files use.

use anyhow::{Context, Result, bail};
use llmos_formats::Value;
use llmos_formats::safetensors::SafeTensors;
use llmos_tensor::DType;
use llmos_train::ModelConfig;
use llmos_train::export::{Vocab, from_half_split, gguf_metadata, gguf_name};
use serde_json::Value as J;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// One tensor to write: GGUF name, GGUF dimensions (innermost first), type and bytes.
pub struct SrcTensor<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: DType,
    pub data: Cow<'a, [u8]>,
}

/// An opened HF checkpoint.
pub struct HfModel {
    st: SafeTensors,
    file: PathBuf,
    pub metadata: Vec<(String, Value)>,
    heads: usize,
    kv_heads: usize,
    tied: bool,
    layers: usize,
}

/// The folder of a checkpoint given as the folder or as its model.safetensors.
fn folder_of(input: &Path) -> PathBuf {
    if input.is_dir() {
        input.to_path_buf()
    } else {
        input
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// Opens `input` (a folder, or the model.safetensors in one) and reads its config and
/// tokenizer into GGUF metadata. Anything this converter cannot represent faithfully is a
/// one-line error naming the file and the field.
pub fn open_hf(input: &Path) -> Result<HfModel> {
    let dir = folder_of(input);
    let file = if input.is_dir() {
        input.join("model.safetensors")
    } else {
        input.to_path_buf()
    };
    if !file.is_file() {
        bail!(
            "{}: no model.safetensors (sharded checkpoints are not supported)",
            file.display()
        );
    }
    let cfg_path = dir.join("config.json");
    let cfg: J = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{}: cannot read", cfg_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", cfg_path.display()))?;
    let c = |what: &str| format!("{}: {what}", cfg_path.display());
    let arch = cfg["architectures"][0].as_str().unwrap_or("");
    if arch != "LlamaForCausalLM" {
        bail!(
            "{}",
            c(&format!(
                "architecture {arch:?} is not supported (LlamaForCausalLM is)"
            ))
        );
    }
    let int = |k: &str| -> Result<usize> {
        cfg[k]
            .as_u64()
            .map(|v| v as usize)
            .filter(|&v| v > 0)
            .with_context(|| c(&format!("{k} is missing or not a positive integer")))
    };
    let dim = int("hidden_size")?;
    let layers = int("num_hidden_layers")?;
    let heads = int("num_attention_heads")?;
    let kv_heads = if cfg["num_key_value_heads"].is_null() {
        heads
    } else {
        int("num_key_value_heads")?
    };
    let ffn = int("intermediate_size")?;
    let vocab = int("vocab_size")?;
    let ctx = if cfg["max_position_embeddings"].is_null() {
        2048
    } else {
        int("max_position_embeddings")?
    };
    let head_dim = if cfg["head_dim"].is_null() {
        dim / heads
    } else {
        int("head_dim")?
    };
    if head_dim * heads != dim || head_dim % 2 != 0 || heads % kv_heads != 0 {
        bail!(
            "{}",
            c(&format!(
                "{heads} heads of {head_dim} over {dim} wide, {kv_heads} kv heads: not a llama shape"
            ))
        );
    }
    for k in ["rope_scaling"] {
        if !cfg[k].is_null() {
            bail!("{}", c(&format!("{k} is not supported")));
        }
    }
    for k in ["attention_bias", "mlp_bias"] {
        if cfg[k].as_bool() == Some(true) {
            bail!("{}", c(&format!("{k} is not supported")));
        }
    }
    let eps = cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32;
    let theta = cfg["rope_theta"].as_f64().unwrap_or(10000.0) as f32;
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);

    let tok_path = dir.join("tokenizer.json");
    let v = llmos_tokenizer::read_hf_vocab(&tok_path)?;
    let Some(pre) = v.gguf_pre() else {
        bail!(
            "{}: its split pattern has no GGUF pre-tokenizer name (known: default, gpt2, llama-bpe, qwen2, smollm)",
            tok_path.display()
        );
    };
    if v.nfc {
        eprintln!(
            "warning: {}: GGUF has no NFC normalizer flag; the converted model will not normalize its input",
            tok_path.display()
        );
    }
    if v.tokens.len() > vocab {
        bail!(
            "{}: {} tokens, but config.json says vocab_size {vocab}",
            tok_path.display(),
            v.tokens.len()
        );
    }
    // the embedding may have more rows than the tokenizer has tokens: unused padding
    let mut tokens = v.tokens.clone();
    let mut types: Vec<i32> = v.types.iter().map(|t| t.gguf_code()).collect();
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
        }
    }
    for i in tokens.len()..vocab {
        tokens.push(format!("[PAD{i}]"));
        types.push(5);
    }

    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let cfg = ModelConfig {
        vocab,
        dim,
        layers,
        heads,
        kv_heads,
        ffn,
        ctx,
        tied,
        rope_theta: theta,
        norm_eps: eps,
        gemma: None,
    };
    let vocab = Vocab {
        tokens,
        types,
        merges: v.merges.clone(),
        pre: pre.to_string(),
        hf_json: J::Null,
        bos: v.bos,
        eos: v.eos,
        chat_template: v.chat_template.clone(),
    };
    let metadata = gguf_metadata(&cfg, &name, &vocab, v.add_bos);
    let st = SafeTensors::open(&file)?;
    Ok(HfModel {
        st,
        file,
        metadata,
        heads,
        kv_heads,
        tied,
        layers,
    })
}

impl HfModel {
    /// Every tensor, renamed and (for Q and K) reordered, in the file's order.
    pub fn tensors(&self) -> Result<Vec<SrcTensor<'_>>> {
        let f = self.file.display();
        let mut out = Vec::new();
        for e in &self.st.entries {
            if e.name.ends_with("rotary_emb.inv_freq") {
                continue; // recomputed from rope_theta
            }
            if e.name == "lm_head.weight" && self.tied {
                continue; // the same values as the embedding
            }
            let name = gguf_name(&e.name)
                .with_context(|| format!("{f}: tensor {} is not part of a Llama model", e.name))?;
            let dtype = match e.dtype.as_str() {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                other => bail!("{f}: tensor {}: dtype {other} is not supported", e.name),
            };
            let data = self.st.data(e);
            let data = match name.rsplit('.').nth(1) {
                Some(q @ ("attn_q" | "attn_k")) => {
                    let heads = if q == "attn_q" {
                        self.heads
                    } else {
                        self.kv_heads
                    };
                    let rows = e.shape.first().copied().unwrap_or(0);
                    if e.shape.len() != 2 || rows % heads != 0 || (rows / heads) % 2 != 0 {
                        bail!(
                            "{f}: tensor {}: shape {:?} does not split into {heads} heads",
                            e.name,
                            e.shape
                        );
                    }
                    Cow::Owned(from_half_split(data, heads, rows, data.len() / rows))
                }
                _ => Cow::Borrowed(data),
            };
            out.push(SrcTensor {
                name,
                dims: e.shape.iter().rev().map(|&d| d as u64).collect(),
                dtype,
                data,
            });
        }
        let have: std::collections::HashSet<&str> = out.iter().map(|t| t.name.as_str()).collect();
        let mut need = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
        if !self.tied {
            need.push("output.weight".into());
        }
        for i in 0..self.layers {
            for t in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                need.push(format!("blk.{i}.{t}.weight"));
            }
        }
        if let Some(missing) = need.iter().find(|n| !have.contains(n.as_str())) {
            bail!("{f}: tensor {missing} (GGUF name) is missing");
        }
        Ok(out)
    }
}
