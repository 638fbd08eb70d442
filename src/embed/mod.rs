//! Sentence embeddings: tokenize, BERT forward (candle), mean pooling over the attention
//! mask, L2 normalisation. The same recipe as sentence-transformers' all-MiniLM-L6-v2.

pub mod cache;
pub mod count;
mod device;
pub mod files;
pub mod native;
pub mod text;
pub mod worker;

pub use files::{ModelFiles, NotFound};
pub use text::{Truncator, has_visible_text};
pub use worker::{EmbedWorker, WorkerError};

use crate::config::EncoderConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// Tokens in one forward pass: packed (native) or padded rows x longest (candle).
const BATCH_TOKEN_BUDGET: usize = 2048;
const MAX_BATCH: usize = 64;

/// A prompt's embedding: a unit vector, and how many tokens (special tokens included,
/// after truncation) produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vector: Vec<f32>,
    pub tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    NotFound(#[from] NotFound),
    #[error("{0}")]
    Device(String),
    #[error("cannot load {file}: {reason}")]
    Load { file: PathBuf, reason: String },
    #[error(
        "encoder.max_tokens is {max_tokens} but the model accepts at most {limit} tokens; write a value up to {limit}"
    )]
    MaxTokens { max_tokens: usize, limit: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// What builds a router's embeddings: the encoder called on the caller's thread, or the
/// inference worker's queue (see `EmbedWorker::embed_waiting`).
pub trait Embedder {
    /// The model the embeddings come from (its dimension and cache key).
    fn model(&self) -> &Encoder;
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError>;
}

impl Embedder for Encoder {
    fn model(&self) -> &Encoder {
        self
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        self.embed(texts)
    }
}

impl From<candle_core::Error> for EmbedError {
    fn from(err: candle_core::Error) -> Self {
        EmbedError::Inference(err.to_string())
    }
}

/// Which implementation runs the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The native CPU encoder (`native`), used for `device: cpu`.
    Native(crate::kernels::gemm::Isa, crate::config::Precision),
    /// candle-transformers' BERT, used for CUDA and Metal.
    Candle,
}

enum Model {
    Native(Box<native::NativeBert>),
    Candle(Box<BertModel>),
}

pub struct Encoder {
    /// Identifies this model's embeddings for the cache (computed on first use).
    cache_key: std::sync::OnceLock<String>,
    max_tokens: usize,
    model: Model,
    tokenizer: std::sync::Arc<Tokenizer>,
    device: Device,
    dim: usize,
    files: ModelFiles,
}

impl Encoder {
    /// Finds (see `files::resolve`) and loads the model on the configured device.
    pub fn load(config: &EncoderConfig, local_roots: &[PathBuf]) -> Result<Encoder, ModelError> {
        let files = files::resolve(config, local_roots)?;
        Encoder::load_files(files, config)
    }

    pub fn load_files(files: ModelFiles, config: &EncoderConfig) -> Result<Encoder, ModelError> {
        let device = device::select(config.device)?;
        let backend = if device.is_cpu() {
            Backend::Native(crate::kernels::gemm::Isa::detect(), config.precision)
        } else {
            Backend::Candle
        };
        Encoder::load_backend(files, config, backend)
    }

    /// Loads with a chosen backend (tests compare them; CUDA/Metal need `Candle`).
    pub fn load_backend(
        files: ModelFiles,
        config: &EncoderConfig,
        backend: Backend,
    ) -> Result<Encoder, ModelError> {
        let device = match backend {
            Backend::Native(..) => Device::Cpu,
            Backend::Candle => device::select(config.device)?,
        };
        let load_err = |file: &PathBuf| {
            let file = file.clone();
            move |reason: String| ModelError::Load { file, reason }
        };
        let bert_config: BertConfig = std::fs::read_to_string(&files.config)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
            .map_err(load_err(&files.config))?;
        if config.max_tokens > bert_config.max_position_embeddings {
            return Err(ModelError::MaxTokens {
                max_tokens: config.max_tokens,
                limit: bert_config.max_position_embeddings,
            });
        }
        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| load_err(&files.tokenizer)(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| load_err(&files.tokenizer)(e.to_string()))?;
        tokenizer.with_padding(None);
        let mut weights_sha = None;
        let model = match backend {
            Backend::Native(isa, precision) => {
                let quantized_cache = quantized_cache(precision, &files.weights);
                weights_sha = quantized_cache.as_ref().map(|(_, sha)| sha.clone());
                let options = native::Options {
                    isa,
                    precision,
                    threads: threads_for(config.threads),
                    quantized_cache,
                };
                Model::Native(Box::new(
                    native::NativeBert::load_with(&files.weights, &bert_config, &options)
                        .map_err(load_err(&files.weights))?,
                ))
            }
            Backend::Candle => {
                // SAFETY: the weights file is memory-mapped read-only; it must not be modified
                // while the process runs, which holds for a model directory (the fetch script
                // replaces files by rename, never in place).
                let vb = unsafe {
                    VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, &device)
                }
                .map_err(|e| load_err(&files.weights)(e.to_string()))?;
                Model::Candle(Box::new(
                    BertModel::load(vb, &bert_config)
                        .map_err(|e| load_err(&files.weights)(e.to_string()))?,
                ))
            }
        };
        let encoder = Encoder {
            cache_key: std::sync::OnceLock::new(),
            max_tokens: config.max_tokens,
            model,
            tokenizer: std::sync::Arc::new(tokenizer),
            device,
            dim: bert_config.hidden_size,
            files,
        };
        if let Some(sha) = weights_sha {
            let _ = encoder.cache_key.set(encoder.key_for(&sha));
        }
        // One throwaway pass allocates the buffers and wakes the helper threads, so the
        // first real prompt does not pay for it (~10 ms).
        if let Err(err) = encoder.embed_one("warm up the encoder") {
            tracing::warn!(error = %err, "the warm-up embedding failed");
        }
        Ok(encoder)
    }

    /// A token counter on this model's tokenizer (`None` if it cannot be set up).
    pub fn token_counter(&self) -> Option<count::TokenCounter> {
        count::TokenCounter::new((*self.tokenizer).clone()).ok()
    }

    /// Embedding dimension (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A string that differs whenever the embeddings would: the weights' SHA-256, the
    /// backend and precision, and the truncation length.
    pub fn cache_key(&self) -> std::io::Result<String> {
        if let Some(key) = self.cache_key.get() {
            return Ok(key.clone());
        }
        let weights = cache::file_sha256(&self.files.weights)?;
        Ok(self
            .cache_key
            .get_or_init(|| self.key_for(&weights))
            .clone())
    }

    fn key_for(&self, weights_sha: &str) -> String {
        format!("{weights_sha}/{:?}/{}", self.backend(), self.max_tokens)
    }

    pub fn backend(&self) -> Backend {
        match &self.model {
            Model::Native(m) => Backend::Native(m.isa(), m.precision()),
            Model::Candle(_) => Backend::Candle,
        }
    }

    /// Threads the forward pass runs on (1 for candle's backends, which manage their own).
    pub fn threads(&self) -> usize {
        match &self.model {
            Model::Native(m) => m.threads(),
            Model::Candle(_) => 1,
        }
    }

    /// What runs the forward pass, for reports: `native/avx2/f32`, `native/avx2/int8(avx2)`,
    /// `candle`.
    pub fn describe(&self) -> String {
        match &self.model {
            Model::Native(m) => {
                let precision = match (m.precision(), m.int8_isa()) {
                    (crate::config::Precision::Int8, Some(isa)) => format!("int8({isa:?})"),
                    (p, _) => format!("{p:?}"),
                };
                format!("native/{:?}/{precision}", m.isa()).to_lowercase()
            }
            Model::Candle(_) => "candle".into(),
        }
    }

    /// Bytes the encoder layers' weights take in memory (0 for candle's backends).
    pub fn layer_weight_bytes(&self) -> usize {
        match &self.model {
            Model::Native(m) => m.layer_weight_bytes(),
            Model::Candle(_) => 0,
        }
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Result<Embedding, EmbedError> {
        let mut out = self.embed(&[text])?;
        out.pop()
            .ok_or_else(|| EmbedError::Inference("no embedding produced".into()))
    }

    /// Cuts texts to what truncation keeps, without tokenizing the rest.
    pub fn truncator(&self) -> Truncator {
        Truncator::new(self.tokenizer.clone(), self.max_tokens)
    }

    /// Embeds texts in order. Sequences of similar length are padded into shared forward
    /// passes, so mixed lengths waste little work.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        // Only what truncation keeps is tokenized, however long the text.
        let truncator = self.truncator();
        let texts: Vec<&str> = texts.iter().map(|t| truncator.prefix(t)).collect();
        let texts = texts.as_slice();
        // One text is tokenized in place: encode_batch would hand it to the thread pool.
        let encodings = match texts {
            [one] => self.tokenizer.encode(*one, true).map(|e| vec![e]),
            many => self.tokenizer.encode_batch(many.to_vec(), true),
        }
        .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut results: Vec<Option<Embedding>> = vec![None; encodings.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted by length: the last sequence taken is the longest in the batch.
            let mut end = start + 1;
            while end < order.len()
                && end - start < MAX_BATCH
                && (end - start + 1) * encodings[order[end]].get_ids().len() <= BATCH_TOKEN_BUDGET
            {
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end]
                .iter()
                .map(|&i| encodings[i].get_ids())
                .collect();
            let vectors = match &self.model {
                Model::Native(model) => model.embed(&batch).map_err(EmbedError::Inference)?,
                Model::Candle(model) => self.forward_candle(model, &batch)?,
            };
            for (&i, vector) in order[start..end].iter().zip(vectors) {
                results[i] = Some(Embedding {
                    vector,
                    tokens: encodings[i].get_ids().len(),
                });
            }
            start = end;
        }
        results
            .into_iter()
            .map(|e| e.ok_or_else(|| EmbedError::Inference("a text was not embedded".into())))
            .collect()
    }

    /// One padded candle forward pass; returns a unit vector per sequence.
    fn forward_candle(
        &self,
        model: &BertModel,
        batch: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let rows = batch.len();
        let width = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * width..r * width + seq.len()].copy_from_slice(seq);
            mask[r * width..r * width + seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens only.
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        // L2 normalisation, with sentence-transformers' epsilon.
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// The cores available to this process: `std::thread::available_parallelism` counts the CPUs
/// it may run on and, on Linux, the cgroup's CPU quota (a container limited to 2 CPUs on a
/// 64-core host gets 2).
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The encoder's threads for `encoder.threads`: the cores available by default; more than
/// that is capped, since a thread beyond the cores only spins against the working ones.
pub fn threads_for(configured: Option<usize>) -> usize {
    let available = available_threads();
    match configured {
        Some(n) if n > available => {
            tracing::warn!(
                configured = n,
                available,
                "encoder.threads is more than the cores available to the process; using {available}"
            );
            available
        }
        Some(n) => n.max(1),
        None => available,
    }
}

/// Where an int8 encoder keeps its quantized weights: the cache directory and the weights'
/// SHA-256 (`None` for other precisions, with caching off, or if the file cannot be read).
fn quantized_cache(
    precision: crate::config::Precision,
    weights: &Path,
) -> Option<(PathBuf, String)> {
    if precision != crate::config::Precision::Int8 {
        return None;
    }
    let dir = cache::default_dir()?;
    let sha = cache::file_sha256(weights)
        .map_err(
            |err| tracing::warn!(error = %err, "cannot hash the weights; int8 weights not cached"),
        )
        .ok()?;
    Some((dir, sha))
}
