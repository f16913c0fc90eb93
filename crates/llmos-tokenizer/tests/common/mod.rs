//! Helpers shared by the tokenizer integration tests.

use std::path::PathBuf;

/// The asset cache that scripts/fetch-test-assets fills ($LLMOS_HOME, default ~/.cache/llmos).
pub fn home() -> PathBuf {
    std::env::var_os("LLMOS_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/llmos"))
}
