//! llmos-tensor: element types, block quantization, and the kernels every model runs on
//! (matmul, norms, softmax, activations, rotary embeddings), plus the thread pool setup.
//!
//! Dimension legend used in shapes: T = tokens, C = channels, H = heads, D = head dim.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod dtype;
pub mod gemm;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod q8;
pub mod quant;
pub mod quantize;
pub mod x8;

pub use dtype::DType;
pub use matmul::{ActCache, Weight, matmul, matmul_cached, matmul_cached_multi, matmul_with};
pub use q8::ActMode;

/// Errors from kernels that receive malformed shapes or unsupported types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("unknown tensor type id {0}")]
    UnknownType(u32),
    #[error("tensor type {0} is not supported yet")]
    Unsupported(DType),
    #[error("a row of {n} values is not a whole number of {dtype} blocks")]
    BadRowLength { dtype: DType, n: usize },
    #[error(
        "a repacked (X8) matrix needs whole groups of 8 rows and exactly its bytes: {rows} rows"
    )]
    BadGroups { rows: usize },
    #[error("{dtype} data too short: need {need} bytes, have {have}")]
    ShortData {
        dtype: DType,
        need: usize,
        have: usize,
    },
}

/// Sets the number of worker threads for all kernels. Call once, before the first matmul;
/// later calls are ignored (the pool is global).
pub fn init_threads(n: usize) {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |v| v.get())
    } else {
        n
    };
    pool::init(n);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}
