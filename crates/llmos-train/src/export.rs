//! Export of a trained run: a GGUF file (architecture "llama", F32 tensors, the vocabulary
//! as a byte-level BPE `gpt2` tokenizer, a chat template when the vocabulary has the chat
//! tokens) that `llmos run` and llama.cpp load, and a Hugging Face directory
//! (config.json, model.safetensors, tokenizer.json) that `transformers` loads.

use crate::data::{Meta, TokenizerSpec, write_atomic, write_json};
use crate::model::{Layout, ModelConfig};
use crate::train::{Checkpoint, TrainError, checkpoint_path};
use llmos_formats::{GgufWriter, Value};
use llmos_tensor::DType;
use serde_json::{Value as J, json};
use std::path::{Path, PathBuf};

/// The chat format of models pretrained here (tokens reserved by `llmos tokenizer train`).
pub const CHAT_TEMPLATE: &str = "<|bos|>{% for m in messages %}{% if m['role'] == 'user' %}<|user_start|>{{ m['content'] }}<|user_end|>{% elif m['role'] == 'assistant' %}<|assistant_start|>{{ m['content'] }}<|assistant_end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant_start|>{% endif %}";

/// A plain-text chat format for vocabularies without chat tokens (character and byte
/// models): speaker names in capitals, as plays are written.
pub const PLAIN_TEMPLATE: &str = "{% for m in messages %}{{ m['role'] | upper }}:\n{{ m['content'] }}\n\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:\n{% endif %}";

/// A vocabulary in the byte-level BPE form both GGUF (`gpt2`) and HF use.
pub struct Vocab {
    /// Token strings, bytes mapped to printable characters as GPT-2 does.
    pub tokens: Vec<String>,
    /// GGUF token types: 1 normal, 3 control.
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    /// GGUF `tokenizer.ggml.pre` (llama.cpp's name for the split pattern).
    pub pre: String,
    /// The HF tokenizer.json (copied for subword vocabularies, generated otherwise).
    pub hf_json: J,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub chat_template: Option<String>,
}

fn bad(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The vocabulary of a run, from its data-meta.json (and tokenizer.json).
pub fn run_vocab(run: &Path) -> Result<Vocab, TrainError> {
    let meta = Meta::load_file(&run.join("data-meta.json"))?;
    let table = llmos_tokenizer::byte_to_char();
    let byte_tokens =
        |bytes: &[u8]| -> String { bytes.iter().map(|&b| table[b as usize]).collect() };
    // a vocabulary of single-byte tokens: no merges, no special tokens, plain-text chat
    let single_bytes = |tokens: Vec<String>| -> Vocab {
        let vocab: serde_json::Map<String, J> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let hf_json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []}
        });
        Vocab {
            types: vec![1; tokens.len()],
            merges: vec![],
            pre: "default".into(),
            hf_json,
            tokens,
            bos: None,
            eos: None,
            chat_template: Some(PLAIN_TEMPLATE.to_string()),
        }
    };
    match &meta.tokenizer {
        TokenizerSpec::Char { chars } => {
            if let Some(c) = chars.iter().find(|c| !c.is_ascii()) {
                return Err(bad(
                    &run.join("data-meta.json"),
                    format!(
                        "character {c:?} is not ASCII: a char vocabulary exports to GGUF only when every character is one byte"
                    ),
                ));
            }
            Ok(single_bytes(
                chars.iter().map(|&c| byte_tokens(&[c as u8])).collect(),
            ))
        }
        TokenizerSpec::Byte => Ok(single_bytes(
            (0..=255u8).map(|b| byte_tokens(&[b])).collect(),
        )),
        TokenizerSpec::Hf { file } => {
            let p = run.join(file);
            let text = std::fs::read_to_string(&p).map_err(|e| bad(&p, e.to_string()))?;
            let j: J =
                serde_json::from_str(&text).map_err(|e| bad(&p, format!("not JSON: {e}")))?;
            let model = &j["model"];
            let vocab = model["vocab"]
                .as_object()
                .ok_or_else(|| bad(&p, "model.vocab missing"))?;
            let mut tokens = vec![String::new(); meta.vocab];
            let mut types = vec![1i32; meta.vocab];
            for (t, id) in vocab {
                let id = id
                    .as_u64()
                    .ok_or_else(|| bad(&p, "a vocab id is not an integer"))?
                    as usize;
                *tokens
                    .get_mut(id)
                    .ok_or_else(|| bad(&p, format!("id {id} beyond the vocabulary")))? = t.clone();
            }
            let mut special_ids = std::collections::HashMap::new();
            for a in j["added_tokens"].as_array().into_iter().flatten() {
                let (Some(id), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) else {
                    continue;
                };
                let id = id as usize;
                if id < tokens.len() {
                    tokens[id] = c.to_string();
                    types[id] = 3;
                    special_ids.insert(c.to_string(), id as u32);
                }
            }
            if let Some(i) = tokens.iter().position(|t| t.is_empty()) {
                return Err(bad(&p, format!("token id {i} has no text")));
            }
            let merges: Vec<String> = model["merges"]
                .as_array()
                .ok_or_else(|| bad(&p, "model.merges missing"))?
                .iter()
                .filter_map(|m| match m {
                    J::String(s) => Some(s.clone()),
                    J::Array(a) if a.len() == 2 => {
                        Some(format!("{} {}", a[0].as_str()?, a[1].as_str()?))
                    }
                    _ => None,
                })
                .collect();
            let pattern = j["pre_tokenizer"]["pretokenizers"]
                .as_array()
                .and_then(|a| a.iter().find_map(|s| s["pattern"]["Regex"].as_str()))
                .unwrap_or("");
            let pre = if Some(pattern) == llmos_tokenizer::train::pattern("gpt2") {
                "gpt2"
            } else {
                // llama.cpp's "llama-bpe" split is Llama 3's pattern (and close to GPT-4's)
                "llama-bpe"
            };
            let bos = special_ids.get("<|bos|>").copied();
            let chat = [
                "<|user_start|>",
                "<|user_end|>",
                "<|assistant_start|>",
                "<|assistant_end|>",
            ]
            .iter()
            .all(|t| special_ids.contains_key(*t))
                && bos.is_some();
            Ok(Vocab {
                tokens,
                types,
                merges,
                pre: pre.into(),
                hf_json: j,
                bos,
                eos: special_ids.get("<|assistant_end|>").copied().or(bos),
                chat_template: chat.then(|| CHAT_TEMPLATE.to_string()),
            })
        }
    }
}

/// A trained model ready to export: its shape, parameters and vocabulary.
pub struct Exportable {
    pub cfg: ModelConfig,
    pub params: Vec<f32>,
    pub vocab: Vocab,
    pub step: usize,
}

/// Loads the checkpoint and vocabulary of a run directory.
pub fn load_run(run: &Path) -> Result<Exportable, TrainError> {
    let c = Checkpoint::load(&checkpoint_path(run))?;
    let vocab = run_vocab(run)?;
    if vocab.tokens.len() != c.model.vocab {
        return Err(bad(
            run,
            format!(
                "the vocabulary has {} tokens, the model {}",
                vocab.tokens.len(),
                c.model.vocab
            ),
        ));
    }
    Ok(Exportable {
        cfg: c.model,
        params: c.params,
        vocab,
        step: c.step,
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The GGUF metadata of a llama model with this shape and vocabulary (all but
/// `general.file_type`): what `write_gguf` writes, and what `llmos quantize` writes for a
/// Hugging Face checkpoint.
pub fn gguf_metadata(
    c: &ModelConfig,
    name: &str,
    v: &Vocab,
    add_bos: bool,
) -> Vec<(String, Value)> {
    let s = |x: &str| Value::String(x.to_string());
    let u = |x: usize| Value::U32(x as u32);
    let mut m: Vec<(&str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("general.name", s(name)),
        ("llama.context_length", u(c.ctx)),
        ("llama.embedding_length", u(c.dim)),
        ("llama.block_count", u(c.layers)),
        ("llama.feed_forward_length", u(c.ffn)),
        ("llama.attention.head_count", u(c.heads)),
        ("llama.attention.head_count_kv", u(c.kv_heads)),
        ("llama.rope.freq_base", Value::F32(c.rope_theta)),
        ("llama.rope.dimension_count", u(c.head_dim())),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.norm_eps),
        ),
        ("llama.vocab_size", u(c.vocab)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s(&v.pre)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(v.tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(v.types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(v.merges.iter().map(|t| s(t)).collect()),
        ),
    ];
    if let Some(b) = v.bos {
        m.push(("tokenizer.ggml.bos_token_id", Value::U32(b)));
    }
    if let Some(e) = v.eos {
        m.push(("tokenizer.ggml.eos_token_id", Value::U32(e)));
    }
    m.push(("tokenizer.ggml.add_bos_token", Value::Bool(add_bos)));
    if let Some(t) = &v.chat_template {
        m.push(("tokenizer.chat_template", s(t)));
    }
    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Writes the model as a GGUF file (atomically).
pub fn write_gguf(m: &Exportable, path: &Path, name: &str) -> Result<(), TrainError> {
    let c = &m.cfg;
    let mut w = GgufWriter::new();
    for (k, v) in gguf_metadata(c, name, &m.vocab, m.vocab.bos.is_some()) {
        w.set(&k, v);
    }
    w.set("general.file_type", Value::U32(0));
    let layout = Layout::new(c);
    for t in &layout.tensors {
        // GGUF lists dimensions innermost first: [cols, rows]; 1-D for norms
        let dims: Vec<u64> = if t.rows == 1 {
            vec![t.cols as u64]
        } else {
            vec![t.cols as u64, t.rows as u64]
        };
        w.add_tensor(&t.name, &dims, DType::F32, f32_bytes(&m.params[t.range()]));
    }
    w.write(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        err: e,
    })
}

/// HF Llama names a tensor of ours.
fn hf_name(name: &str) -> String {
    if name == "token_embd.weight" {
        return "model.embed_tokens.weight".into();
    }
    if name == "output_norm.weight" {
        return "model.norm.weight".into();
    }
    if name == "output.weight" {
        return "lm_head.weight".into();
    }
    let rest = name.strip_prefix("blk.").expect("block tensor");
    let (i, t) = rest.split_once('.').expect("blk.N.name");
    let t = match t {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => other,
    };
    format!("model.layers.{i}.{t}")
}

/// Our (GGUF llama) name of a HF Llama tensor: the inverse of [`hf_name`] (None: not a
/// llama tensor).
pub fn gguf_name(hf: &str) -> Option<String> {
    Some(match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (i, t) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            let t = match t {
                "input_layernorm.weight" => "attn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => return None,
            };
            format!("blk.{i}.{t}")
        }
    })
}

/// Rows of a Q or K weight reordered from adjacent-pair RoPE (what we train, and GGUF's
/// llama layout) to HF's half-split RoPE: within each head, rows 2i and 2i+1 go to i and
/// i + d/2.
fn to_half_split(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for (src, dst) in [(2 * i, i), (2 * i + 1, i + half)] {
                let s = (h * head_dim + src) * cols;
                let d = (h * head_dim + dst) * cols;
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

/// The inverse of [`to_half_split`], on raw rows of any type (`row` bytes each): within
/// each head, HF's rows i and i + d/2 go back to the adjacent pair 2i, 2i + 1.
pub fn from_half_split(w: &[u8], heads: usize, rows: usize, row: usize) -> Vec<u8> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0u8; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for (src, dst) in [(i, 2 * i), (i + half, 2 * i + 1)] {
                let s = (h * d + src) * row;
                let t = (h * d + dst) * row;
                out[t..t + row].copy_from_slice(&w[s..s + row]);
            }
        }
    }
    out
}

/// Writes a HF Llama directory: config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json.
pub fn write_hf(m: &Exportable, dir: &Path) -> Result<(), TrainError> {
    let io = |p: PathBuf| move |e: std::io::Error| TrainError::Io { path: p, err: e };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let c = &m.cfg;
    let v = &m.vocab;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim(),
        "max_position_embeddings": c.ctx,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tied,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "bos_token_id": v.bos,
        "eos_token_id": v.eos,
    });
    write_json(&dir.join("config.json"), &config)?;
    let layout = Layout::new(c);
    let kvd = c.kv_heads * c.head_dim();
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for t in &layout.tensors {
        let data = &m.params[t.range()];
        let data = if t.name.ends_with("attn_q.weight") {
            to_half_split(data, c.heads, c.head_dim(), c.dim)
        } else if t.name.ends_with("attn_k.weight") {
            debug_assert_eq!(t.rows, kvd);
            to_half_split(data, c.kv_heads, c.head_dim(), c.dim)
        } else {
            data.to_vec()
        };
        let shape = if t.rows == 1 {
            vec![t.cols]
        } else {
            vec![t.rows, t.cols]
        };
        owned.push((hf_name(&t.name), shape, data));
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = owned
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.as_slice()))
        .collect();
    let st = dir.join("model.safetensors");
    llmos_formats::safetensors::write(&st, &refs, &[("format", "pt")]).map_err(io(st.clone()))?;
    write_atomic(
        &dir.join("tokenizer.json"),
        serde_json::to_string(&v.hf_json).expect("json").as_bytes(),
    )?;
    let name = |id: Option<u32>| id.map(|i| v.tokens[i as usize].clone());
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(v.bos),
        "eos_token": name(v.eos),
        "add_bos_token": v.bos.is_some(),
        "model_max_length": c.ctx,
    });
    if let Some(t) = &v.chat_template {
        tc["chat_template"] = json!(t);
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_split_moves_pairs_to_halves() {
        // one head of dim 4, 1 column: rows [a0 a1 b0 b1] -> [a0 b0 a1 b1]
        let w = [0.0f32, 1.0, 2.0, 3.0];
        assert_eq!(to_half_split(&w, 1, 4, 1), vec![0.0, 2.0, 1.0, 3.0]);
    }

    /// Back from half-split order: two heads of 8 rows, 3 columns, through f32 bytes.
    #[test]
    fn from_half_split_inverts_to_half_split() {
        let w: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let there = to_half_split(&w, 2, 8, 3);
        let back = from_half_split(&f32_bytes(&there), 2, 16, 12);
        assert_eq!(back, f32_bytes(&w));
    }

    #[test]
    fn hf_names_cover_every_tensor() {
        assert_eq!(
            hf_name("blk.3.ffn_down.weight"),
            "model.layers.3.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.weight"),
            "model.layers.0.self_attn.k_proj.weight"
        );
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
    }

    /// Every tensor of a model maps to a HF name and back; strangers map to nothing.
    #[test]
    fn gguf_names_invert_hf_names() {
        let c = ModelConfig {
            vocab: 10,
            dim: 8,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            ffn: 16,
            ctx: 8,
            tied: false,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            gemma: None,
        };
        for t in &Layout::new(&c).tensors {
            assert_eq!(
                gguf_name(&hf_name(&t.name)).as_deref(),
                Some(t.name.as_str())
            );
        }
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.bias"), None);
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }
}

#[cfg(test)]
mod roundtrip {
    use crate::data::{Codec, TokenizerSpec, char_vocab, prepare};
    use crate::model::{Model, Workspace};
    use crate::train::{TrainConfig, train};
    use std::sync::atomic::AtomicBool;

    /// A model trained here, exported to GGUF and run by the inference engine (llmos-model,
    /// f32 activations), gives the training forward's loss on the same tokens: the two
    /// halves agree on every tensor's layout and on RoPE.
    #[test]
    fn exported_gguf_runs_with_the_training_loss() {
        crate::tests::init_pool();
        let root = std::env::temp_dir().join(format!("llmos-export-{}", std::process::id()));
        let data = root.join("data");
        let text: String = (0..200)
            .map(|i| format!("{i} apples and {} pears.\n\n\n", i * 3))
            .collect();
        let texts = vec![("t.txt".to_string(), text)];
        let chars = char_vocab(texts.iter().map(|(_, t)| t.as_str()));
        let codec = Codec::Char(chars.clone());
        prepare(
            &texts,
            TokenizerSpec::Char { chars },
            &codec,
            0.05,
            1,
            &data,
        )
        .unwrap();
        for (tied, kv) in [(true, 2), (false, 1)] {
            let cfg = TrainConfig {
                layers: 2,
                heads: 2,
                kv_heads: Some(kv),
                dim: 32,
                ffn: Some(48),
                ctx: 40,
                tied,
                batch: 2,
                steps: 15,
                lr: 3e-3,
                warmup: 2,
                eval_every: 0,
                save_every: 0,
                ..TrainConfig::default()
            };
            let run = root.join(format!("run-{tied}"));
            train(
                &data,
                &run,
                &cfg,
                false,
                &AtomicBool::new(false),
                &mut |_| {},
                &mut |_| {},
            )
            .unwrap();
            let m = super::load_run(&run).unwrap();
            let path = root.join(format!("m-{tied}.gguf"));
            super::write_gguf(&m, &path, "t").unwrap();
            let tokens: Vec<u32> = codec
                .encode("17 apples and 51 pears.\n\n\n18 apples")
                .unwrap();
            let t = tokens.len() - 1;
            let tm = Model::new(m.cfg.clone());
            let want = tm.loss(&m.params, &tokens, 1, t, &mut Workspace::default());
            // the fine-tuning import reads back exactly this model, and writes it back
            let g = llmos_formats::Gguf::open(&path).unwrap();
            let cfg2 = crate::import::config_of(&g, m.cfg.ctx).unwrap();
            assert_eq!(cfg2, m.cfg);
            let p2 = crate::import::params_of(&g, &cfg2).unwrap();
            assert!(p2 == m.params, "imported parameters differ");
            let again = root.join(format!("again-{tied}.gguf"));
            crate::import::write_like(&g, &cfg2, &p2, None, &again, "t2").unwrap();
            let g2 = llmos_formats::Gguf::open(&again).unwrap();
            assert!(crate::import::params_of(&g2, &cfg2).unwrap() == m.params);
            assert_eq!(
                g2.get("tokenizer.chat_template"),
                g.get("tokenizer.chat_template")
            );
            let g = std::sync::Arc::new(g);
            let mut im = llmos_model::Model::load(g).unwrap();
            im.act = llmos_tensor::ActMode::F32;
            let mut cache = im.new_cache(64);
            let logits = im.forward(&mut cache, &tokens[..t], true).unwrap();
            let v = m.cfg.vocab;
            let nll: f64 = logits
                .chunks_exact(v)
                .enumerate()
                .map(|(i, row)| crate::eval::nll(row, tokens[i + 1]))
                .sum();
            let got = nll / t as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "tied={tied}: inference {got} vs training {want}"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
