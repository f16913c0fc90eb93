//! llmos-train: the training half of the stack. A llama-architecture model (and Gemma 3) in f32 with
//! hand-written backward passes (`layers`, `model`), the AdamW optimizer and schedule
//! (`optim`), token shards (`data`), the training loop with checkpoints (`train`), export
//! to GGUF and HF (`export`), GGUF import and LoRA adapters (`import`, `lora`) and
//! evaluations (`eval`).

pub mod bigbench;
pub mod data;
pub mod eval;
pub mod evals;
pub mod export;
pub mod grpo;
pub mod import;
pub mod layers;
pub mod lora;
pub mod model;
pub mod objectives;
pub mod optim;
pub mod prefs;
pub mod sft;
pub mod tasks;
pub mod train;

pub use model::{Layout, Model, ModelConfig, Rng, TensorInfo, Workspace, init_params};

#[cfg(test)]
pub(crate) mod tests {
    /// Tests run with two pool threads so the parallel paths are exercised.
    pub fn init_pool() {
        llmos_tensor::pool::init(2);
    }
}
