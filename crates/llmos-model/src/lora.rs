//! LoRA adapters applied at run time: y = W x + (alpha / r) B (A x) for every projection
//! that has an adapter, over the base's matrices as they are stored (quantized or not).
//! The file format is llama.cpp's adapter GGUF: `general.type` = "adapter",
//! `adapter.type` = "lora", `adapter.lora.alpha`, tensors `blk.N.NAME.weight.lora_a`
//! (GGUF dims [in, r]) and `.lora_b` ([r, out]) for NAME in attn_q, attn_k, attn_v,
//! attn_output, ffn_gate, ffn_up, ffn_down.

use crate::{Model, ModelError};
use llmos_formats::{Gguf, Value};
use llmos_tensor::ops::dot_f32;
use llmos_tensor::pool::for_each_chunk_mut;

/// The projections an adapter may cover, in a layer's order.
pub(crate) const PROJ: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// One projection's adapter: A [r, in] and B [out, r] row-major, B pre-scaled.
pub(crate) struct Pair {
    r: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Pair {
    /// y (rows of `out`) += s B (A x) for every row x of `x` (rows of `n_in`).
    pub(crate) fn apply(&self, x: &[f32], y: &mut [f32]) {
        let n_in = self.a.len() / self.r;
        let n_out = self.b.len() / self.r;
        let rows = x.len() / n_in;
        let per = rows.div_ceil(8).max(1);
        for_each_chunk_mut(&mut y[..rows * n_out], per * n_out, |ci, ys| {
            let mut u = vec![0f32; self.r];
            for (j, yr) in ys.chunks_exact_mut(n_out).enumerate() {
                let xr = &x[(ci * per + j) * n_in..(ci * per + j + 1) * n_in];
                for (k, uk) in u.iter_mut().enumerate() {
                    *uk = dot_f32(&self.a[k * n_in..(k + 1) * n_in], xr);
                }
                for (i, yi) in yr.iter_mut().enumerate() {
                    *yi += dot_f32(&self.b[i * self.r..(i + 1) * self.r], &u);
                }
            }
        });
    }
}

/// Adapters per layer, per projection of [`PROJ`].
pub(crate) type Adapters = Vec<[Option<Pair>; 7]>;

fn f32_tensor(g: &Gguf, name: &str, dims: [u64; 2]) -> Result<Vec<f32>, ModelError> {
    let t = g
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.dims != dims {
        return Err(ModelError::Shape {
            name: name.into(),
            got: t.dims.clone(),
            expected: dims.to_vec(),
        });
    }
    let mut v = vec![0f32; (dims[0] * dims[1]) as usize];
    llmos_tensor::quant::dequantize_row(t.dtype, g.tensor_data(t), &mut v).map_err(|source| {
        ModelError::Tensor {
            name: name.into(),
            source,
        }
    })?;
    Ok(v)
}

impl Model {
    /// Applies the LoRA adapter file `g` to this model from now on. The adapter must be made
    /// for this architecture and these shapes; projections it leaves out stay as they are.
    pub fn add_lora(&mut self, g: &Gguf) -> Result<(), ModelError> {
        let s = |k: &str| g.get(k).and_then(Value::as_str);
        if s("general.type") != Some("adapter") || s("adapter.type") != Some("lora") {
            return Err(ModelError::BadMetadata(
                "not a LoRA adapter (general.type must be \"adapter\" and adapter.type \"lora\")"
                    .into(),
            ));
        }
        if let Some(arch) = s("general.architecture")
            && arch != self.config.arch_name
        {
            return Err(ModelError::BadMetadata(format!(
                "the adapter is for architecture {arch}, the model is {}",
                self.config.arch_name
            )));
        }
        let known = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix("blk.") else {
                return false;
            };
            let Some((l, tail)) = rest.split_once('.') else {
                return false;
            };
            l.parse::<usize>().is_ok_and(|l| l < self.layers.len())
                && PROJ.iter().any(|p| {
                    tail == format!("{p}.weight.lora_a") || tail == format!("{p}.weight.lora_b")
                })
        };
        if let Some(t) = g.tensors.iter().find(|t| !known(&t.name)) {
            return Err(ModelError::BadMetadata(format!(
                "adapter tensor {} is not a LoRA A or B of this model's projections",
                t.name
            )));
        }
        let alpha = g.get("adapter.lora.alpha").and_then(Value::as_f64);
        let mut all: Adapters = Vec::with_capacity(self.layers.len());
        let mut count = 0;
        for (l, lw) in self.layers.iter().enumerate() {
            let mats = [&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.gate, &lw.up, &lw.down];
            let mut layer: [Option<Pair>; 7] = Default::default();
            for (slot, (p, m)) in layer.iter_mut().zip(PROJ.iter().zip(mats)) {
                let an = format!("blk.{l}.{p}.weight.lora_a");
                let bn = format!("blk.{l}.{p}.weight.lora_b");
                let (ta, tb) = (g.tensor(&an), g.tensor(&bn));
                if ta.is_none() && tb.is_none() {
                    continue;
                }
                let r = ta
                    .ok_or_else(|| ModelError::MissingTensor(an.clone()))?
                    .dims
                    .get(1)
                    .copied()
                    .unwrap_or(0);
                if r == 0 {
                    return Err(ModelError::BadMetadata(format!("{an}: rank 0")));
                }
                let a = f32_tensor(g, &an, [m.cols as u64, r])?;
                let mut b = f32_tensor(g, &bn, [r, m.rows as u64])?;
                let scale = alpha.map_or(1.0, |al| al as f32 / r as f32);
                b.iter_mut().for_each(|x| *x *= scale);
                *slot = Some(Pair {
                    r: r as usize,
                    a,
                    b,
                });
                count += 1;
            }
            all.push(layer);
        }
        if count == 0 {
            return Err(ModelError::BadMetadata("the adapter has no tensors".into()));
        }
        self.lora = Some(all);
        Ok(())
    }
}
