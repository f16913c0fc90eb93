//! GGUF reader: round trip through the writer, every metadata type, and malformed files
//! (each must be a one-line error naming the problem, never a panic).

use llmos_formats::{Gguf, GgufError, GgufWriter, Value};
use llmos_tensor::DType;

fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("u8", Value::U8(7))
        .set("i8", Value::I8(-7))
        .set("u16", Value::U16(700))
        .set("i16", Value::I16(-700))
        .set("u32", Value::U32(70_000))
        .set("i32", Value::I32(-70_000))
        .set("f32", Value::F32(0.5))
        .set("bool", Value::Bool(true))
        .set("u64", Value::U64(1 << 40))
        .set("i64", Value::I64(-(1 << 40)))
        .set("f64", Value::F64(0.25))
        .set(
            "arr",
            Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
        )
        .set(
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::U8(1)]),
                Value::Array(vec![Value::U8(2), Value::U8(3)]),
            ]),
        );
    let f: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.add_tensor("a.weight", &[32, 2], DType::F32, f);
    w.add_tensor("b.weight", &[32], DType::Q8_0, vec![1u8; 34]);
    w
}

#[test]
fn round_trip_keeps_every_value_and_tensor() {
    let bytes = sample().to_bytes();
    let g = Gguf::from_bytes("mem.gguf", bytes).unwrap();
    assert_eq!(g.version, 3);
    for (k, v) in &sample().metadata {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    let a = g.tensor("a.weight").unwrap();
    assert_eq!(
        (a.dims.as_slice(), a.dtype, a.size),
        (&[32u64, 2][..], DType::F32, 256)
    );
    assert_eq!(&g.tensor_data(a)[4..8], &1f32.to_le_bytes());
    let b = g.tensor("b.weight").unwrap();
    assert_eq!(b.offset % 32, 0);
    assert_eq!(g.tensor_data(b), &[1u8; 34][..]);
}

#[test]
fn version_2_files_read_too() {
    let mut bytes = sample().to_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(Gguf::from_bytes("v2.gguf", bytes).unwrap().version, 2);
}

fn err(bytes: Vec<u8>) -> String {
    let e = Gguf::from_bytes("bad.gguf", bytes)
        .err()
        .expect("malformed file must fail");
    let s = e.to_string();
    assert!(!s.contains('\n'), "one line: {s}");
    assert!(s.starts_with("bad.gguf: "), "names the file: {s}");
    s
}

/// Offset of the first tensor info's type field in `sample()` (found by searching for the
/// name, then skipping n_dims and dims).
fn tensor_type_offset(bytes: &[u8], name: &str) -> usize {
    let pos = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    let after = pos + name.len();
    let n_dims = u32::from_le_bytes(bytes[after..after + 4].try_into().unwrap()) as usize;
    after + 4 + 8 * n_dims
}

#[test]
fn malformed_files_are_one_line_errors() {
    let good = sample().to_bytes();

    assert!(err(b"GGML\x03\0\0\0".to_vec()).contains("not a GGUF file"));
    assert!(err(Vec::new()).contains("not a GGUF file"));

    let mut v = good.clone();
    v[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(err(v).contains("unsupported GGUF version 9"));

    // cut inside the header and inside the data
    assert!(err(good[..40].to_vec()).contains("truncated"));
    let e = err(good[..good.len() - 40].to_vec());
    assert!(e.contains("b.weight") && e.contains("ends at byte"), "{e}");

    let mut v = good.clone();
    let off = tensor_type_offset(&v, "a.weight");
    v[off..off + 4].copy_from_slice(&99u32.to_le_bytes());
    assert!(err(v).contains("unknown type id 99"));

    // absurd counts must fail before allocating
    let mut v = good.clone();
    v[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(v).contains("1152921504606846976 tensors"));
    let mut v = good.clone();
    v[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(v).contains("metadata entries"));

    // a tensor whose offset points past the end
    let mut v = good.clone();
    let off = tensor_type_offset(&v, "b.weight") + 4;
    v[off..off + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(err(v).contains("ends at byte"));
}

#[test]
fn missing_file_names_the_path() {
    let e = Gguf::open("/no/such/model.gguf").err().unwrap();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(
        e.to_string()
            .starts_with("/no/such/model.gguf: cannot open")
    );
}

/// Deterministic mutation fuzzing: flipping bytes and truncating a valid file never
/// panics; every outcome is Ok or a one-line error.
#[test]
fn mutated_files_never_panic() {
    let good = sample().to_bytes();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut v = good.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % v.len() as u64) as usize;
            v[i] = next() as u8;
        }
        if next() % 4 == 0 {
            v.truncate((next() % v.len() as u64) as usize);
        }
        if let Err(e) = Gguf::from_bytes("f.gguf", v) {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
