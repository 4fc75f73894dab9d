//! Opening a GGUF file for import: the checks that turn "not GGUF", "truncated" and "another
//! architecture" into one clear error naming the file, typed access to the metadata, and
//! dequantized tensors.
//!
//! candle's `gguf_file::Content::read` parses the header; on top of it this module checks the magic
//! bytes first (so a JSON or safetensors file is called what it is, not "unknown magic") and that
//! every tensor's bytes lie inside the file (so a cut-off download is reported before any work).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use notellm_model::error::{ModelError, Result};

/// The only architecture whose tensors and metadata this importer maps.
pub const SUPPORTED_ARCHITECTURE: &str = "llama";

/// An opened, checked GGUF file.
#[derive(Debug)]
pub struct GgufSource {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufSource {
    /// Opens `path`, reads the header and checks the magic, the architecture and that no tensor
    /// runs past the end of the file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut file, &mut magic).map_err(io)?;
        if got < 4 || &magic != b"GGUF" {
            let start = String::from_utf8_lossy(&magic[..got]).escape_debug().to_string();
            return Err(gguf_err(
                path,
                format!("not a GGUF file: it starts with {start:?} ({len} bytes); a GGUF file starts with \"GGUF\""),
            ));
        }
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let content = Content::read(&mut reader).map_err(|e| {
            gguf_err(path, format!("cannot read the GGUF header ({len} bytes; truncated or corrupt?): {e}"))
        })?;
        let src = Self { path: path.to_owned(), content, reader };
        src.check_architecture()?;
        src.check_complete(len)?;
        Ok(src)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    /// An error about this file.
    pub fn err(&self, msg: impl Into<String>) -> ModelError {
        gguf_err(&self.path, msg)
    }

    fn check_architecture(&self) -> Result<()> {
        let arch = self.string("general.architecture")?;
        if arch != SUPPORTED_ARCHITECTURE {
            return Err(self.err(format!(
                "architecture is {arch:?}; only {SUPPORTED_ARCHITECTURE:?} GGUFs (Llama, SmolLM2, ...) can be imported"
            )));
        }
        Ok(())
    }

    /// Every tensor's data must lie inside the file.
    fn check_complete(&self, file_len: u64) -> Result<()> {
        let mut worst: Option<(&str, u64)> = None;
        for (name, info) in &self.content.tensor_infos {
            let block = info.ggml_dtype.block_size();
            let elems = info.shape.elem_count();
            if elems % block != 0 {
                return Err(self.err(format!(
                    "tensor `{name}` has {elems} elements, not a multiple of its {:?} block size {block}",
                    info.ggml_dtype
                )));
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = self.content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
            if worst.is_none_or(|(_, e)| end > e) {
                worst = Some((name, end));
            }
        }
        match worst {
            None => Err(self.err("holds no tensors")),
            Some((name, end)) if end > file_len => Err(self.err(format!(
                "truncated: the file has {file_len} bytes but tensor `{name}` ends at byte {end}; download it again"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.err(format!("metadata `{key}` is missing")))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<String> {
        match self.value(key)? {
            Value::String(s) => Ok(s.clone()),
            v => Err(self.err(format!("metadata `{key}` is {:?}, expected a string", v.value_type()))),
        }
    }

    /// Any integer type, as GGUF writers differ in which one they use.
    pub fn uint(&self, key: &str) -> Result<u64> {
        let v = self.value(key)?;
        as_u64(v).ok_or_else(|| self.err(format!("metadata `{key}` is {v:?}, expected a non-negative integer")))
    }

    pub fn opt_uint(&self, key: &str) -> Result<Option<u64>> {
        if self.has(key) {
            self.uint(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn float(&self, key: &str) -> Result<f64> {
        match self.value(key)? {
            // Through the shortest decimal form, so that 1e-5 stored as f32 reads back as 1e-5.
            Value::F32(f) => Ok(f.to_string().parse::<f64>().unwrap_or(*f as f64)),
            Value::F64(f) => Ok(*f),
            v => as_u64(v)
                .map(|u| u as f64)
                .ok_or_else(|| self.err(format!("metadata `{key}` is {:?}, expected a number", v.value_type()))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(format!("metadata `{key}` is {:?}, expected a bool", v.value_type()))),
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        match self.value(key)? {
            Value::Array(a) => Ok(a),
            v => Err(self.err(format!("metadata `{key}` is {:?}, expected an array", v.value_type()))),
        }
    }

    pub fn string_array(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(self.err(format!("metadata `{key}`[{i}] is {:?}, expected a string", v.value_type()))),
            })
            .collect()
    }

    pub fn int_array(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_i64(v).ok_or_else(|| {
                    self.err(format!("metadata `{key}`[{i}] is {:?}, expected an integer", v.value_type()))
                })
            })
            .collect()
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape as candle sees it (`[out, in]` for matrices: GGUF stores dims reversed).
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims().to_vec())
    }

    /// Reads tensor `name` and dequantizes it to f32 on the CPU.
    pub fn tensor_f32(&mut self, name: &str) -> Result<Tensor> {
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

fn gguf_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Gguf { path: path.to_owned(), msg: msg.into() }
}

/// Fills as much of `buf` as the file has.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn as_u64(v: &Value) -> Option<u64> {
    as_i64(v).and_then(|i| u64::try_from(i).ok()).or(match v {
        Value::U64(u) => Some(*u),
        _ => None,
    })
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}
