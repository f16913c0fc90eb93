//! llmos-formats: model file formats. GGUF read (mmap) and write; typed metadata values.
//! It knows the bytes and types of tensors, not what any tensor means.

pub mod gguf;

pub use gguf::{Gguf, GgufError, GgufWriter, TensorInfo, Value};
