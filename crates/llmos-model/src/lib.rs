//! llmos-model: the "run code". Architecture configs read from GGUF metadata, weights bound
//! by tensor name, and the forward pass with a KV cache for the llama family (Llama 2/3,
//! Mistral, SmolLM), qwen2 and gemma3. It knows nothing about sampling or text.

mod config;
mod forward;
mod lora;
pub mod profile;
mod weights;

pub use config::{Arch, Config};
pub use forward::KvCache;
pub use weights::Model;

/// Errors binding a model file or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model metadata: missing key {0}")]
    MissingKey(String),
    #[error("model metadata: {0}")]
    BadMetadata(String),
    #[error("unsupported architecture {0:?} (supported: llama, mistral, qwen2, gemma3)")]
    UnsupportedArch(String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        got: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name}: {source}")]
    Tensor {
        name: String,
        source: llmos_tensor::TensorError,
    },
    #[error(
        "context full: {need} tokens do not fit in a context of {ctx} (raise --ctx, up to the model's {train})"
    )]
    ContextFull {
        need: usize,
        ctx: usize,
        train: usize,
    },
    #[error(
        "the KV cache was filled with another activation mode (f16 cache in q8, f32 in f32); use a new cache"
    )]
    CacheMode,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("batch sequence {0} has no tokens")]
    EmptySequence(usize),
    #[error("repacking weights: no memory for a copy: {0}")]
    Repack(std::io::Error),
}
