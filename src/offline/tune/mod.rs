//! Encoder fine-tuning for `semroute fit --tune-encoder`: the model is adapted to the routes
//! with a contrastive objective on their own utterances (multiple-negatives ranking: each
//! batch holds two utterances of each of up to 32 routes; an utterance must pick its
//! partner out of the batch, so the other routes serve as negatives). It trains on the
//! utterances only, never on the labelled prompts `fit` evaluates with, so those stay a
//! held-out measure of what tuning gained. The tuned model is written as a model directory
//! (`config.json`, `tokenizer.json`, `model.safetensors`) that `encoder.path` can name.

mod bert;

use crate::embed::ModelFiles;
use bert::{Shape, TrainableBert, log_softmax_last};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::path::Path;
use std::time::Instant;
use tokenizers::{Tokenizer, TruncationParams};

/// Scale on the cosine similarities before the softmax (sentence-transformers' default).
const SIMILARITY_SCALE: f64 = 20.0;

#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    /// Passes over the routes; each makes `routes / batch_routes` optimiser steps.
    pub epochs: usize,
    /// Routes per batch (two utterances each).
    pub batch_routes: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Utterances are truncated to this many tokens while training.
    pub max_tokens: usize,
}

impl Default for TuneOptions {
    /// Chosen on CLINC150 val (150 routes, 10 utterances each).
    fn default() -> Self {
        TuneOptions {
            epochs: 40,
            batch_routes: 32,
            learning_rate: 2e-5,
            seed: 0,
            max_tokens: 128,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneReport {
    pub steps: usize,
    pub seconds: f64,
    /// The loss of the first and the last epoch (mean over their steps).
    pub first_loss: f64,
    pub last_loss: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(
        "tuning the encoder needs at least 2 routes with 2 or more utterances each; this config has {0}"
    )]
    TooFewRoutes(usize),
    #[error("cannot read {file}: {reason}")]
    Load { file: String, reason: String },
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write the tuned model to {dir}: {reason}")]
    Write { dir: String, reason: String },
}

/// Fine-tunes the model in `files` on `routes` (each route's utterances) and writes the
/// tuned model directory `out_dir`.
pub fn tune(
    files: &ModelFiles,
    routes: &[Vec<String>],
    options: &TuneOptions,
    out_dir: &Path,
) -> Result<TuneReport, TuneError> {
    let eligible: Vec<&Vec<String>> = routes.iter().filter(|u| u.len() >= 2).collect();
    if eligible.len() < 2 {
        return Err(TuneError::TooFewRoutes(eligible.len()));
    }
    let device = Device::Cpu;
    let (model, tokenizer) = load(files, options.max_tokens, &device)?;
    let mut optimizer = AdamW::new(
        model.vars(),
        ParamsAdamW {
            lr: options.learning_rate,
            ..ParamsAdamW::default()
        },
    )?;

    let started = Instant::now();
    let batch = options.batch_routes.clamp(2, eligible.len());
    let mut rng = SplitMix64(options.seed);
    let mut order: Vec<usize> = (0..eligible.len()).collect();
    let (mut steps, mut first_loss, mut last_loss) = (0, 0.0, 0.0);
    for epoch in 0..options.epochs {
        rng.shuffle(&mut order);
        let mut epoch_loss = 0.0;
        let mut epoch_steps = 0;
        for chunk in order.chunks_exact(batch) {
            let (mut anchors, mut positives) = (Vec::new(), Vec::new());
            for &r in chunk {
                let utterances = eligible[r];
                let a = rng.below(utterances.len());
                let p = (a + 1 + rng.below(utterances.len() - 1)) % utterances.len();
                anchors.push(utterances[a].as_str());
                positives.push(utterances[p].as_str());
            }
            let a = embed_texts(&model, &tokenizer, &anchors, &device)?;
            let p = embed_texts(&model, &tokenizer, &positives, &device)?;
            let logits = (a.matmul(&p.t()?)? * SIMILARITY_SCALE)?;
            let eye = Tensor::eye(chunk.len(), DType::F32, &device)?;
            let loss = (log_softmax_last(&logits)?.mul(&eye)?.sum_all()? / -(chunk.len() as f64))?;
            optimizer.backward_step(&loss)?;
            epoch_loss += f64::from(loss.to_scalar::<f32>()?);
            epoch_steps += 1;
            steps += 1;
        }
        let mean = epoch_loss / epoch_steps.max(1) as f64;
        if epoch == 0 {
            first_loss = mean;
        }
        last_loss = mean;
        tracing::info!(epoch, loss = mean, "tuning the encoder");
    }
    write_model(files, &model, out_dir)?;
    Ok(TuneReport {
        steps,
        seconds: started.elapsed().as_secs_f64(),
        first_loss,
        last_loss,
    })
}

/// The training model's embeddings of `texts`, padded into one batch: the same function
/// the encoder computes, here for checking the two against each other.
pub fn embed(
    files: &ModelFiles,
    texts: &[&str],
    max_tokens: usize,
) -> Result<Vec<Vec<f32>>, TuneError> {
    let device = Device::Cpu;
    let (model, tokenizer) = load(files, max_tokens, &device)?;
    Ok(embed_texts(&model, &tokenizer, texts, &device)?.to_vec2::<f32>()?)
}

fn load(
    files: &ModelFiles,
    max_tokens: usize,
    device: &Device,
) -> Result<(TrainableBert, Tokenizer), TuneError> {
    let load_err = |file: &Path| {
        let file = file.display().to_string();
        move |reason: String| TuneError::Load { file, reason }
    };
    let shape = read_shape(&files.config).map_err(load_err(&files.config))?;
    let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
        .map_err(|e| load_err(&files.tokenizer)(e.to_string()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|e| load_err(&files.tokenizer)(e.to_string()))?;
    tokenizer.with_padding(None);
    let model = TrainableBert::load(&files.weights, shape, device)?;
    Ok((model, tokenizer))
}

fn read_shape(config: &Path) -> Result<Shape, String> {
    let text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        json.get(name)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("`{name}` is missing or not a whole number"))
    };
    let shape = Shape {
        layers: field("num_hidden_layers")?,
        heads: field("num_attention_heads")?,
        hidden: field("hidden_size")?,
        eps: json
            .get("layer_norm_eps")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1e-12),
    };
    if shape.heads == 0 || !shape.hidden.is_multiple_of(shape.heads) {
        return Err(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            shape.hidden, shape.heads
        ));
    }
    Ok(shape)
}

/// Tokenises, pads and embeds a batch.
fn embed_texts(
    model: &TrainableBert,
    tokenizer: &Tokenizer,
    texts: &[&str],
    device: &Device,
) -> Result<Tensor, TuneError> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| TuneError::Candle(candle_core::Error::Msg(e.to_string())))?;
    let len = encodings
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = vec![0u32; texts.len() * len];
    let mut mask = vec![0u32; texts.len() * len];
    for (row, encoding) in encodings.iter().enumerate() {
        for (col, &id) in encoding.get_ids().iter().enumerate() {
            ids[row * len + col] = id;
            mask[row * len + col] = 1;
        }
    }
    let ids = Tensor::from_vec(ids, (texts.len(), len), device)?;
    let mask = Tensor::from_vec(mask, (texts.len(), len), device)?;
    Ok(model.embed(&ids, &mask)?)
}

/// `out_dir` gets the model's config and tokenizer and the tuned weights.
fn write_model(files: &ModelFiles, model: &TrainableBert, out_dir: &Path) -> Result<(), TuneError> {
    let write_err = |reason: String| TuneError::Write {
        dir: out_dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| write_err(e.to_string()))?;
    std::fs::copy(&files.config, out_dir.join("config.json"))
        .map_err(|e| write_err(e.to_string()))?;
    std::fs::copy(&files.tokenizer, out_dir.join("tokenizer.json"))
        .map_err(|e| write_err(e.to_string()))?;
    // Written beside and renamed, so a crash never leaves half a model under the real name.
    let tmp = out_dir.join("model.safetensors.partial");
    model.save(&tmp).map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&tmp, out_dir.join("model.safetensors")).map_err(|e| write_err(e.to_string()))
}

/// A small deterministic generator (SplitMix64), so a tuning run can be repeated exactly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
