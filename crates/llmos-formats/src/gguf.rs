//! GGUF, the llama.cpp model file: header, typed key/value metadata, tensor infos, then
//! aligned tensor data. Versions 2 and 3 are read (both use 64-bit counts); files are
//! memory-mapped and every count and offset is checked against the file size before use, so
//! a malformed file is an error, never a panic or a huge allocation.
//!
//! Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv x (string key,
//! u32 type, value), n_tensors x (string name, u32 n_dims, n_dims x u64 dims, u32 type,
//! u64 offset), padding to `general.alignment` (default 32), tensor data.

use llmos_tensor::DType;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// What went wrong reading a GGUF file; `Display` is one line naming the problem and where.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot open: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {found:?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: String },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: truncated: {what} at byte {offset} needs {need} bytes but the file has {len}")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        need: u64,
        len: u64,
    },
    #[error(
        "{path}: header claims {count} {what}, more than a file of {len} bytes can hold (truncated or corrupt)"
    )]
    AbsurdCount {
        path: PathBuf,
        what: &'static str,
        count: u64,
        len: u64,
    },
    #[error("{path}: metadata key {key:?} has unknown value type {ty}")]
    UnknownValueType { path: PathBuf, key: String, ty: u32 },
    #[error("{path}: tensor {name:?} has unknown type id {id}")]
    UnknownTensorType {
        path: PathBuf,
        name: String,
        id: u32,
    },
    #[error("{path}: tensor {name:?}: {problem}")]
    BadTensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
    #[error("{path}: tensor {name:?} data ends at byte {end} but the file has {len} bytes")]
    TensorPastEnd {
        path: PathBuf,
        name: String,
        end: u64,
        len: u64,
    },
    #[error("{path}: invalid UTF-8 in {what} at byte {offset}")]
    Utf8 {
        path: PathBuf,
        what: &'static str,
        offset: u64,
    },
    #[error("{path}: {problem}")]
    Other { path: PathBuf, problem: String },
}

/// A metadata value. Arrays keep their element values (which all share one type).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer value as u64 (negative values are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) if s.len() > 80 => write!(f, "{:?}…", &s[..s.floor_char_boundary(80)]),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => {
                write!(f, "[")?;
                for (i, v) in a.iter().take(5).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > 5 {
                    write!(f, ", … ({} items)", a.len())?;
                }
                write!(f, "]")
            }
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Where one tensor's data lies and what it is. `dims[0]` is the innermost (contiguous)
/// dimension, as GGML writes it: a PyTorch [out, in] weight has dims [in, out].
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The file's bytes: memory-mapped, or owned (for tests and small files).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    data_start: u64,
    bytes: Bytes,
}

/// Bounds-checked little-endian reader over the header.
struct Cursor<'a> {
    b: &'a [u8],
    pos: u64,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn len(&self) -> u64 {
        self.b.len() as u64
    }

    fn remaining(&self) -> u64 {
        self.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos,
                need: n,
                len: self.len(),
            });
        }
        let s = &self.b[self.pos as usize..(self.pos + n) as usize];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let n = self.u64(&|| format!("{what} length"))?;
        let start = self.pos;
        let raw = self.take(n, &|| format!("{what} of {n} bytes"))?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::Utf8 {
            path: self.path.to_path_buf(),
            what,
            offset: start,
        })
    }

    /// Fails early if `count` items of at least `min_size` bytes cannot fit in the rest of
    /// the file, so a corrupt count never drives an allocation or a long loop.
    fn check_count(&self, what: &'static str, count: u64, min_size: u64) -> Result<(), GgufError> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::AbsurdCount {
                path: self.path.to_path_buf(),
                what,
                count,
                len: self.len(),
            });
        }
        Ok(())
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let w = || format!("value of {key:?}");
        Ok(match ty {
            0 => Value::U8(self.take(1, &w)?[0]),
            1 => Value::I8(self.take(1, &w)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, &w)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2, &w)?.try_into().unwrap())),
            4 => Value::U32(self.u32(&w)?),
            5 => Value::I32(self.u32(&w)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(&w)?)),
            7 => Value::Bool(self.take(1, &w)?[0] != 0),
            8 => Value::String(self.string("string value")?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Other {
                        path: self.path.to_path_buf(),
                        problem: format!("metadata key {key:?}: arrays nested too deep"),
                    });
                }
                let et = self.u32(&|| format!("array type of {key:?}"))?;
                let n = self.u64(&|| format!("array length of {key:?}"))?;
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(GgufError::UnknownValueType {
                            path: self.path.to_path_buf(),
                            key: key.to_string(),
                            ty: et,
                        });
                    }
                };
                self.check_count("array elements", n, min)?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(&w)?),
            11 => Value::I64(self.u64(&w)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&w)?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    ty,
                });
            }
        })
    }
}

/// Drops the page cache of a model file just written in small pieces (a download), once it
/// is on disk. A file written that way sits in the cache as small folios, which the kernel
/// maps with 4 KiB pages however [`Gguf::open`] advises; read in afresh by the first map,
/// it comes as 2 MiB folios. Only clean pages are dropped; failures change nothing.
pub fn drop_page_cache(path: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = std::fs::File::open(path) {
        let dont = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
        let _ = nix::fcntl::posix_fadvise(&f, 0, 0, dont);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

impl Gguf {
    /// Opens and memory-maps `path`, parsing and validating the header.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(GgufError::Other {
                path: path.to_path_buf(),
                problem: "is a directory, not a GGUF file".into(),
            });
        }
        let bytes = if meta.len() == 0 {
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private; llmos never writes to a model file while
            // it is open, and a file truncated underneath us by another process is outside
            // what any mmap-based loader (llama.cpp included) can defend against.
            let m = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            // Transparent huge pages for the weights where the kernel maps file pages that
            // way (Linux with large page-cache folios, e.g. ext4 since 6.16): asked before any
            // page is touched, so the pages read in for this map come as 2 MiB folios. Decode
            // streams every weight once per token; with 4 KiB pages that is a TLB miss per
            // 4 KiB (SmolLM2 Q4_1 tg at 2 threads, interleaved: 106-112 -> 114-121 tok/s).
            // Where it does not apply the advice changes nothing, so its result is ignored.
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            Bytes::Mapped(m)
        };
        Self::parse(path.to_path_buf(), bytes)
    }

    /// Parses a GGUF held in memory (used by tests and for small generated files).
    pub fn from_bytes(path: impl Into<PathBuf>, data: Vec<u8>) -> Result<Gguf, GgufError> {
        Self::parse(path.into(), Bytes::Owned(data))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Gguf, GgufError> {
        let mut c = Cursor {
            b: &bytes,
            pos: 0,
            path: &path,
        };
        let magic = c
            .take(4, &|| "magic".into())
            .map_err(|_| GgufError::BadMagic {
                path: path.clone(),
                found: String::from_utf8_lossy(&bytes[..bytes.len().min(4)]).into_owned(),
            })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::Version {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // smallest possible entries: a kv is key length (8) + type (4) + 1-byte value;
        // a tensor info is name length (8) + n_dims (4) + type (4) + offset (8)
        c.check_count("metadata entries", n_kv, 13)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&|| format!("type of metadata entry {i}"))?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        c.check_count("tensors", n_tensors, 24)?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let bad = |problem: String| GgufError::BadTensor {
                path: path.clone(),
                name: name.clone(),
                problem,
            };
            let n_dims = c.u32(&|| format!("dimension count of tensor {name:?}"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(format!("{n_dims} dimensions (GGUF allows 1 to 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&|| format!("dimensions of tensor {name:?}"))?);
            }
            let tid = c.u32(&|| format!("type of tensor {name:?}"))?;
            let dtype = DType::from_ggml_id(tid).map_err(|_| GgufError::UnknownTensorType {
                path: path.clone(),
                name: name.clone(),
                id: tid,
            })?;
            let offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
            let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let Some(n) = n else {
                return Err(bad(format!("dimensions {dims:?} overflow")));
            };
            if dims[0] % dtype.block_size() as u64 != 0 {
                return Err(bad(format!(
                    "row of {} values is not a whole number of {dtype} blocks",
                    dims[0]
                )));
            }
            let size = dtype
                .row_bytes(n)
                .ok_or_else(|| bad(format!("size of {n} {dtype} values overflows")))?;
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
                size,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Other {
                        path: path.clone(),
                        problem: format!("general.alignment {v} is not a power of two"),
                    });
                }
            },
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let len = bytes.len() as u64;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::BadTensor {
                    path: path.clone(),
                    name: t.name.clone(),
                    problem: format!(
                        "offset {} is not a multiple of the alignment {alignment}",
                        t.offset
                    ),
                });
            }
            let end = data_start
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(GgufError::TensorPastEnd {
                        path: path.clone(),
                        name: t.name.clone(),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    });
                }
            }
        }
        Ok(Gguf {
            path,
            version,
            metadata,
            tensors,
            alignment,
            data_start,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let s = (self.data_start + t.offset) as usize;
        &self.bytes[s..s + t.size as usize]
    }

    /// The whole data section; tensor offsets are relative to its start.
    pub fn data_section(&self) -> &[u8] {
        &self.bytes[(self.data_start as usize).min(self.bytes.len())..]
    }

    /// Tells the OS that this process no longer reads `range` of the data section through
    /// the map (a model that keeps a repacked copy of those bytes): their pages leave the
    /// process's resident set. Reading them again later is correct, just a page fault; a
    /// file held in memory is left as it is.
    pub fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Bytes::Mapped(m) = &self.bytes {
            let start = self.data_start as usize + range.start;
            if range.end < range.start || start + range.len() > m.len() {
                return;
            }
            // SAFETY: the map is read-only and backed by the file: dropping its pages
            // discards nothing (no private changes exist), and any later read of these
            // bytes faults them in again from the file with the same contents.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, range.len())
            };
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Builds a GGUF file in memory and writes it atomically (temp file, then rename).
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, DType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), v));
        self
    }

    /// Adds a tensor; `dims` innermost first, `data` already in `dtype`'s encoding.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: DType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), dtype, data));
        self
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The encoded file.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn put_str(o: &mut Vec<u8>, s: &str) {
            o.extend_from_slice(&(s.len() as u64).to_le_bytes());
            o.extend_from_slice(s.as_bytes());
        }
        fn put_val(o: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U8(x) => o.push(*x),
                Value::I8(x) => o.push(*x as u8),
                Value::U16(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::I16(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::U32(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::I32(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::F32(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::Bool(x) => o.push(*x as u8),
                Value::String(s) => put_str(o, s),
                Value::Array(a) => {
                    let et = a.first().map_or(4, |e| e.type_id());
                    o.extend_from_slice(&et.to_le_bytes());
                    o.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for e in a {
                        put_val(o, e);
                    }
                }
                Value::U64(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::I64(x) => o.extend_from_slice(&x.to_le_bytes()),
                Value::F64(x) => o.extend_from_slice(&x.to_le_bytes()),
            }
        }
        let align = self.alignment();
        let mut o = Vec::new();
        o.extend_from_slice(MAGIC);
        o.extend_from_slice(&3u32.to_le_bytes());
        o.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        o.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut o, k);
            o.extend_from_slice(&v.type_id().to_le_bytes());
            put_val(&mut o, v);
        }
        let mut off = 0u64;
        for (name, dims, dt, data) in &self.tensors {
            put_str(&mut o, name);
            o.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                o.extend_from_slice(&d.to_le_bytes());
            }
            o.extend_from_slice(&dt.ggml_id().to_le_bytes());
            o.extend_from_slice(&off.to_le_bytes());
            off = (off + data.len() as u64).div_ceil(align) * align;
        }
        o.resize(
            (o.len() as u64).div_ceil(align) as usize * align as usize,
            0,
        );
        for (_, _, _, data) in &self.tensors {
            o.extend_from_slice(data);
            o.resize(
                (o.len() as u64).div_ceil(align) as usize * align as usize,
                0,
            );
        }
        o
    }

    /// Writes the file atomically: a crash leaves either the old file or the new one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.to_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path)
    }
}
