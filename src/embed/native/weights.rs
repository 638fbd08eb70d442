//! Loading the native encoder's weights: tensors from the safetensors checkpoint (through
//! candle), each encoder layer's linear layers packed for the chosen precision, and the
//! quantized-weights cache, which keeps int8 layers on disk beside the embedding cache
//! (keyed by the checkpoint's SHA-256) so a restart does not quantize again.

use crate::config::Precision;
use crate::kernels::gemm::{Int8Isa, Linear};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The file's format (and the int8 packing's): a file of another version is not read.
const MAGIC: &[u8; 8] = b"SRINT802";

pub(super) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

pub(super) struct Layer {
    pub qkv: Linear,
    pub attn_out: Linear,
    pub attn_norm: Norm,
    pub up: Linear,
    pub down: Linear,
    pub out_norm: Norm,
}

impl Layer {
    /// Encoder layer `i`, with query, key and value fused into one layer.
    pub fn load(w: &Weights, i: usize, hidden: usize, inter: usize) -> Result<Layer, String> {
        let l = format!("encoder.layer.{i}");
        let qkv_names = [
            format!("{l}.attention.self.query"),
            format!("{l}.attention.self.key"),
            format!("{l}.attention.self.value"),
        ];
        let qkv_refs: Vec<&str> = qkv_names.iter().map(String::as_str).collect();
        Ok(Layer {
            qkv: w.linear(&qkv_refs, hidden, hidden)?,
            attn_out: w.linear(&[&format!("{l}.attention.output.dense")], hidden, hidden)?,
            attn_norm: w.norm(&format!("{l}.attention.output.LayerNorm"), hidden)?,
            up: w.linear(&[&format!("{l}.intermediate.dense")], inter, hidden)?,
            down: w.linear(&[&format!("{l}.output.dense")], hidden, inter)?,
            out_norm: w.norm(&format!("{l}.output.LayerNorm"), hidden)?,
        })
    }

    pub fn linears(&self) -> [&Linear; 4] {
        [&self.qkv, &self.attn_out, &self.up, &self.down]
    }
}

/// The int8 layers of one checkpoint, on disk.
pub(super) struct QuantizedCache {
    path: PathBuf,
}

impl QuantizedCache {
    /// The cache file for the checkpoint whose SHA-256 is `weights_sha` in `dir`.
    pub fn new(dir: &Path, weights_sha: &str) -> QuantizedCache {
        QuantizedCache {
            path: dir.join(format!("int8-{weights_sha}.bin")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layers' bytes in load order, if the file holds exactly layers of the `expected`
    /// byte lengths and its checksum matches; `None` otherwise (a damaged or foreign file is
    /// logged, then replaced by the caller). The size is checked before anything is read.
    fn load(&self, expected: &[usize]) -> Option<Vec<Vec<u8>>> {
        let total = MAGIC.len() + 32 + expected.iter().map(|len| 8 + len).sum::<usize>();
        let found = std::fs::metadata(&self.path).ok()?.len();
        let blobs = (found == total as u64)
            .then(|| std::fs::read(&self.path).ok())
            .flatten()
            .and_then(|bytes| parse(&bytes, expected));
        if blobs.is_none() {
            tracing::warn!(
                file = %self.path.display(),
                "the int8 weights cache is damaged or from another version; quantizing again"
            );
        }
        blobs
    }

    /// Writes the int8 layers of `layers`, replacing the file atomically.
    pub fn store(&self, layers: &[Layer]) -> std::io::Result<()> {
        let mut payload = Vec::new();
        for linear in layers.iter().flat_map(Layer::linears) {
            let blob = linear.int8_bytes().unwrap_or_default();
            payload.extend((blob.len() as u64).to_le_bytes());
            payload.extend(blob);
        }
        let mut bytes = MAGIC.to_vec();
        bytes.extend(Sha256::digest(&payload));
        bytes.extend(payload);
        super::super::cache::write_atomically(&self.path, &bytes)
    }
}

/// Splits a cache file into its layers: the magic, the SHA-256 of the rest, then each
/// layer's length (which must be the expected one) and bytes.
fn parse(bytes: &[u8], expected: &[usize]) -> Option<Vec<Vec<u8>>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (sum, mut rest) = rest.split_first_chunk::<32>()?;
    if Sha256::digest(rest).as_slice() != sum {
        return None;
    }
    let mut blobs = Vec::with_capacity(expected.len());
    for &len in expected {
        let (found, tail) = rest.split_first_chunk::<8>()?;
        if u64::from_le_bytes(*found) != len as u64 || tail.len() < len {
            return None;
        }
        let (blob, tail) = tail.split_at(len);
        blobs.push(blob.to_vec());
        rest = tail;
    }
    rest.is_empty().then_some(blobs)
}

/// The checkpoint, and how its linear layers are to be packed.
pub(super) struct Weights {
    file: MmapedSafetensors,
    prefix: &'static str,
    precision: Precision,
    int8: Option<Int8Isa>,
    /// Int8 layers read from the quantized-weights cache, in load order, still to be used.
    cached: RefCell<std::vec::IntoIter<Vec<u8>>>,
    /// Whether every int8 layer came from the cache.
    pub all_cached: std::cell::Cell<bool>,
}

impl Weights {
    /// Maps the checkpoint; its tensors may or may not be under `bert.`. With int8, layers
    /// are taken from `cache` if it holds all of them (`shapes`: each linear layer's outputs
    /// and inputs, in load order).
    pub fn open(
        path: &Path,
        precision: Precision,
        int8: Option<Int8Isa>,
        cache: Option<(&QuantizedCache, &[(usize, usize)])>,
    ) -> Result<Weights, String> {
        // SAFETY: the file is memory-mapped read-only while loading; see `Encoder::load_files`.
        let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| e.to_string())?;
        let prefix = if file.get("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let cached = match (precision, cache) {
            (Precision::Int8, Some((cache, shapes))) => {
                let expected: Vec<usize> = shapes
                    .iter()
                    .map(|&(n, k)| Linear::int8_bytes_len(n, k))
                    .collect();
                cache.load(&expected).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        Ok(Weights {
            file,
            prefix,
            precision,
            int8,
            all_cached: std::cell::Cell::new(!cached.is_empty()),
            cached: RefCell::new(cached.into_iter()),
        })
    }

    pub fn get(&self, name: &str, len: usize) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self
            .file
            .load(&full, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor {full}: {e}"))?;
        if tensor.len() != len {
            return Err(format!(
                "tensor {full} has {} values, expected {len}",
                tensor.len()
            ));
        }
        Ok(tensor)
    }

    pub fn norm(&self, name: &str, hidden: usize) -> Result<Norm, String> {
        Ok(Norm {
            gamma: self.get(&format!("{name}.weight"), hidden)?,
            beta: self.get(&format!("{name}.bias"), hidden)?,
        })
    }

    /// The layers `names` stacked into one (`n_each` outputs each, `k` inputs).
    pub fn linear(&self, names: &[&str], n_each: usize, k: usize) -> Result<Linear, String> {
        let n = names.len() * n_each;
        if let (Precision::Int8, Some(isa)) = (self.precision, self.int8) {
            if let Some(blob) = self.cached.borrow_mut().next() {
                if let Some(layer) = Linear::from_int8_bytes(&blob, n, k, isa) {
                    return Ok(layer);
                }
                tracing::warn!(
                    layer = names[0],
                    "a cached int8 layer is unusable; quantizing again"
                );
            }
            self.all_cached.set(false);
        }
        let mut weight = Vec::with_capacity(n * k);
        let mut bias = Vec::with_capacity(n);
        for name in names {
            weight.extend(self.get(&format!("{name}.weight"), n_each * k)?);
            bias.extend(self.get(&format!("{name}.bias"), n_each)?);
        }
        let layer = match (self.precision, self.int8) {
            (Precision::Int8, Some(isa)) => Linear::new_int8(&weight, &bias, n, k, isa),
            (Precision::Bf16, _) => Linear::new_bf16(&weight, &bias, n, k),
            _ => Linear::new(&weight, &bias, n, k),
        };
        layer.ok_or_else(|| format!("layer {} has the wrong shape", names.join("+")))
    }
}
