//! llmos-engine: generation on top of a model. Samplers, stop rules, streaming text, and a
//! session that keeps the KV cache across turns and reuses the longest shared prefix.
//! It works on token ids; text only enters through the tokenizer for streaming output.

mod batch;
pub mod sampler;
mod session;

pub use batch::{
    Batcher, Constraint, Event, Finish, Request, Sink, Stats, SubmitError, TokenLogprob,
};
pub use sampler::{Rng, Sampler, SamplerConfig};
pub use session::{GenParams, Generation, Session, StopReason};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] llmos_model::ModelError),
    #[error(
        "prompt of {prompt} tokens leaves no room to generate in a context of {ctx} tokens (use --ctx, up to the model's {train})"
    )]
    PromptTooLong {
        prompt: usize,
        ctx: usize,
        train: usize,
    },
    #[error("empty prompt: nothing to condition on (the model adds no BOS token)")]
    EmptyPrompt,
}
