//! The trainer's view of real models (SmolLM2, and Gemma 3 with its own block) against the
//! inference engine, without and with LoRA adapters: the frozen base read from its
//! quantized file, the adapters applied at run time (`--lora`) and folded in
//! (`export --merge`) all give the same next-token log-likelihoods.

mod common;
use common::*;
use llmos_formats::Gguf;
use llmos_train::import::{GgufWeights, adapter_gguf, config_of, merged_gguf};
use llmos_train::lora::Lora;
use llmos_train::{Model, Workspace};
use std::sync::Arc;

const TEXT: &str = "The old lighthouse keeper climbed the stairs every evening, counting each step as the sea grew dark below.";

/// Per-token -log p of `ids[1..]` under the engine in f32-activation mode.
fn engine_nll(g: Gguf, lora: Option<&Gguf>, ids: &[u32]) -> Vec<f64> {
    let mut m = llmos_model::Model::load(Arc::new(g)).unwrap();
    m.act = llmos_tensor::ActMode::F32;
    if let Some(a) = lora {
        m.add_lora(a).unwrap();
    }
    let mut cache = m.new_cache(256);
    let t = ids.len() - 1;
    let logits = m.forward(&mut cache, &ids[..t], true).unwrap();
    let v = logits.len() / t;
    (0..t)
        .map(|i| llmos_train::eval::nll(&logits[i * v..(i + 1) * v], ids[i + 1]))
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a as f64 - b).abs() < 2e-3 * (1.0 + b.abs()),
            "{what}, token {i}: trainer {a} vs engine {b}"
        );
    }
}

#[test]
fn trainer_and_engine_agree_on_real_models_with_and_without_adapters() {
    llmos_tensor::pool::init(2);
    let d = scratch("lora-parity");
    for alias in ["smollm2", "gemma3"] {
        let path = model(alias);
        let g = Gguf::open(&path).unwrap();
        let tok = llmos_tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let ids = tok.encode(TEXT, true, false);
        let t = ids.len() - 1;
        let cfg = config_of(&g, 64).unwrap();
        assert_eq!(cfg.gemma.is_some(), alias == "gemma3");
        let m = Model::new(cfg.clone());
        let base = GgufWeights::new(&g, &cfg).unwrap();
        let mut ws = Workspace::default();
        let mut nll = vec![0f32; t];
        m.token_nll(&base, &ids, 1, t, &mut ws, &mut nll);
        close(
            alias,
            &nll,
            &engine_nll(Gguf::open(&path).unwrap(), None, &ids),
        );
        // adapters with B away from zero: the model really changes
        let lora = Lora::new(&cfg, 4, 8.0);
        let mut a = lora.init(3);
        let mut s = 1u64;
        for ti in lora.tensors().iter().filter(|t| t.name.ends_with("lora_b")) {
            for x in &mut a[ti.range()] {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.06;
            }
        }
        let mut with = vec![0f32; t];
        m.token_nll_lora(&base, Some((&lora, &a)), &ids, 1, t, &mut ws, &mut with);
        let moved = with
            .iter()
            .zip(&nll)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 0.05,
            "{alias}: the adapters change nothing ({moved})"
        );
        let ap = d.join(format!("{alias}-adapter.gguf"));
        adapter_gguf(&g, alias, &lora, &a, "test")
            .write(&ap)
            .unwrap();
        let ag = Gguf::open(&ap).unwrap();
        let runtime = engine_nll(Gguf::open(&path).unwrap(), Some(&ag), &ids);
        close(&format!("{alias} + adapter"), &with, &runtime);
        let mp = d.join(format!("{alias}-merged.gguf"));
        merged_gguf(&g, &cfg, &lora, &a, llmos_tensor::DType::F32, "merged")
            .unwrap()
            .write(&mp)
            .unwrap();
        close(
            &format!("{alias} merged"),
            &with,
            &engine_nll(Gguf::open(&mp).unwrap(), None, &ids),
        );
        // the adapter file reads back as written
        let (l2, a2) = llmos_train::import::read_adapter(&ag, &cfg).unwrap();
        assert_eq!((l2.rank, l2.alpha), (4, 8.0));
        assert!(a2 == a);
    }
}
