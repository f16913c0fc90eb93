//! llmos-formats: model file formats. GGUF read (mmap) and write; typed metadata values;
//! safetensors write and header parsing.
//! It knows the bytes and types of tensors, not what any tensor means.

pub mod gguf;
pub mod safetensors;

pub use gguf::{Gguf, GgufError, GgufWriter, TensorInfo, Value};
