//! Element types of weights as GGML/GGUF numbers them, with their block geometry.
//!
//! A quantized type stores `block_size` values in `type_size` bytes; a row of `n` values
//! takes `n / block_size * type_size` bytes and `n` must be a multiple of the block size.

use crate::TensorError;

/// The GGML type ids this crate can hold. The numbers are the on-disk ids (ggml.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

/// One row of the type table: (type, ggml id, name, values per block, bytes per block).
const TABLE: &[(DType, u32, &str, usize, usize)] = &[
    (DType::F32, 0, "F32", 1, 4),
    (DType::F16, 1, "F16", 1, 2),
    (DType::Q4_0, 2, "Q4_0", 32, 18),
    (DType::Q4_1, 3, "Q4_1", 32, 20),
    (DType::Q5_0, 6, "Q5_0", 32, 22),
    (DType::Q5_1, 7, "Q5_1", 32, 24),
    (DType::Q8_0, 8, "Q8_0", 32, 34),
    (DType::Q8_1, 9, "Q8_1", 32, 36),
    (DType::Q2K, 10, "Q2_K", 256, 84),
    (DType::Q3K, 11, "Q3_K", 256, 110),
    (DType::Q4K, 12, "Q4_K", 256, 144),
    (DType::Q5K, 13, "Q5_K", 256, 176),
    (DType::Q6K, 14, "Q6_K", 256, 210),
    (DType::Q8K, 15, "Q8_K", 256, 292),
    (DType::I8, 24, "I8", 1, 1),
    (DType::I16, 25, "I16", 1, 2),
    (DType::I32, 26, "I32", 1, 4),
    (DType::I64, 27, "I64", 1, 8),
    (DType::F64, 28, "F64", 1, 8),
    (DType::BF16, 30, "BF16", 1, 2),
];

impl DType {
    fn row(self) -> &'static (DType, u32, &'static str, usize, usize) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every DType has a table row")
    }

    /// The type with GGML id `id`; ids of types this crate does not know are an error.
    pub fn from_ggml_id(id: u32) -> Result<DType, TensorError> {
        TABLE
            .iter()
            .find(|r| r.1 == id)
            .map(|r| r.0)
            .ok_or(TensorError::UnknownType(id))
    }

    pub fn ggml_id(self) -> u32 {
        self.row().1
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Parses a name such as `q4_k` or `Q8_0` (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        TABLE
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(name))
            .map(|r| r.0)
    }

    /// Values per block (1 for plain element types).
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Bytes taken by `n` values, or `None` if `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }

    /// Whether `dequantize` and the matmul entry point accept this type.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            DType::F32
                | DType::F16
                | DType::BF16
                | DType::Q4_0
                | DType::Q4_1
                | DType::Q5_0
                | DType::Q5_1
                | DType::Q8_0
                | DType::Q4K
                | DType::Q5K
                | DType::Q6K
        )
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
