//! Arbitrary bytes as a GGUF file: parsing returns Ok or a one-line error, never panics,
//! never allocates what the header merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = llmos_formats::Gguf::from_bytes("fuzz.gguf", data.to_vec()) {
        assert!(!e.to_string().contains('\n'));
    }
});
