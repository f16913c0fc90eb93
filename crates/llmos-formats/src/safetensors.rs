//! safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range, then the raw data. Written for f32 tensors (what training
//! exports); read back for any dtype as bytes.

use serde_json::{Map, Value, json};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes f32 tensors (name, shape, values) with optional `__metadata__` strings.
pub fn to_bytes(tensors: &[(&str, Vec<usize>, &[f32])], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut at = 0usize;
    for (name, shape, data) in tensors {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape and data disagree"
        );
        let end = at + data.len() * 4;
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("header serializes");
    // the data starts 8-byte aligned: pad the header with spaces
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + at);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, data) in tensors {
        for v in data.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Writes tensors atomically (temp file, then rename).
pub fn write(
    path: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, to_bytes(tensors, metadata))?;
    std::fs::rename(&tmp, path)
}

/// One tensor of a parsed file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Parses the header of safetensors bytes; every byte range is checked against the file.
pub fn parse(b: &[u8]) -> Result<Vec<Entry>, SafetensorsError> {
    let bad = |m: String| SafetensorsError::Bad(m);
    if b.len() < 8 {
        return Err(bad(format!(
            "{} bytes: shorter than the 8-byte header length",
            b.len()
        )));
    }
    let hl = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let data_start = 8u64
        .checked_add(hl)
        .filter(|&e| e <= b.len() as u64)
        .ok_or_else(|| bad(format!("header of {hl} bytes runs past the end")))?
        as usize;
    let h: Value = serde_json::from_slice(&b[8..data_start])
        .map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = h
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = b.len() - data_start;
    let mut out = Vec::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{name}: no dtype")))?;
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| bad(format!("{name}: shape is not a list of integers")))?;
        let off: Vec<usize> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .filter(|o: &Vec<usize>| o.len() == 2)
            .ok_or_else(|| bad(format!("{name}: data_offsets is not [begin, end]")))?;
        let (start, end) = (off[0], off[1]);
        if start > end || end > data_len {
            return Err(bad(format!(
                "{name}: bytes {start}..{end} outside the {data_len} data bytes"
            )));
        }
        let width = match dtype {
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "F64" | "I64" | "U64" => 8,
            "I8" | "U8" | "BOOL" => 1,
            other => return Err(bad(format!("{name}: dtype {other} is not supported"))),
        };
        let n: Option<usize> = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.and_then(|n| n.checked_mul(width)) != Some(end - start) {
            return Err(bad(format!(
                "{name}: shape {shape:?} of {dtype} does not fill {} bytes",
                end - start
            )));
        }
        out.push(Entry {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            start: data_start + start,
            end: data_start + end,
        });
    }
    Ok(out)
}

/// A safetensors file opened for reading: memory-mapped, header parsed and checked.
pub struct SafeTensors {
    map: Option<memmap2::Mmap>,
    pub entries: Vec<Entry>,
}

impl SafeTensors {
    pub fn open(path: &std::path::Path) -> Result<SafeTensors, SafetensorsError> {
        let io = |e: std::io::Error| SafetensorsError::Bad(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private; llmos never writes to a model file
            // while it is open (the same terms as the GGUF reader's map).
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        let entries = parse(map.as_deref().unwrap_or(&[]))
            .map_err(|e| SafetensorsError::Bad(format!("{}: {e}", path.display())))?;
        Ok(SafeTensors { map, entries })
    }

    /// The bytes of one entry (checked against the file when the header was parsed).
    pub fn data(&self, e: &Entry) -> &[u8] {
        &self.map.as_deref().unwrap_or(&[])[e.start..e.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_headers() {
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.5f32];
        let bytes = to_bytes(
            &[("a", vec![2, 3], &a), ("b", vec![1], &b)],
            &[("format", "pt")],
        );
        let e = parse(&bytes).unwrap();
        let a_e = e.iter().find(|x| x.name == "a").unwrap();
        assert_eq!(a_e.shape, vec![2, 3]);
        let vals: Vec<f32> = bytes[a_e.start..a_e.end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, a);
        assert_eq!(
            (8 + u64::from_le_bytes(bytes[..8].try_into().unwrap())) % 8,
            0
        );
        // every truncation is refused with a reason, never a panic
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err(), "{n}");
        }
        let mut lying = bytes.clone();
        lying[0] = 0xff;
        assert!(parse(&lying).unwrap_err().to_string().contains("runs past"));
    }
}
