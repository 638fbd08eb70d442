//! `semroute bench`: the numbers users quote, measured in-process on this machine: one
//! prompt's embedding latency, batch throughput, classification latency, index build time.

use crate::config::Config;
use crate::embed::Encoder;
use crate::route::{BuildError, Router};
use serde::Serialize;
use std::time::Instant;

/// Prompts measured one at a time (after a warm-up of `WARMUP`).
const SINGLE_PROMPTS: usize = 500;
const WARMUP: usize = 20;
const BATCH: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub embed_single_p50_ms: f64,
    pub embed_single_p99_ms: f64,
    pub embed_batch_per_s: f64,
    pub classify_p50_ms: f64,
    pub index_build_s: f64,
    pub prompts: usize,
    pub utterances: usize,
    /// What ran the forward pass: `native/<f32 kernel>/<precision>` or `candle`.
    pub backend: String,
    pub precision: String,
    pub threads: usize,
    /// Memory of the encoder layers' packed weights.
    pub layer_weights_mb: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Runs the benchmark on `prompts` (non-empty) with the routes of `config`.
pub fn run(
    config: Config,
    encoder: &Encoder,
    prompts: &[String],
) -> Result<BenchReport, BuildError> {
    let utterances = config.routes.iter().map(|r| r.utterances.len()).sum();
    let started = Instant::now();
    let router = Router::build(config, encoder)?;
    let index_build_s = started.elapsed().as_secs_f64();

    for p in prompts.iter().cycle().take(WARMUP) {
        encoder.embed_one(p)?;
    }
    let mut single = Vec::with_capacity(SINGLE_PROMPTS);
    let mut classify = Vec::with_capacity(SINGLE_PROMPTS);
    for p in prompts.iter().cycle().take(SINGLE_PROMPTS) {
        let t = Instant::now();
        let embedding = encoder.embed_one(p)?;
        single.push(ms(t));
        let result = router.classify(p, &embedding, None);
        classify.push(ms(t));
        std::hint::black_box(result);
    }
    single.sort_by(f64::total_cmp);
    classify.sort_by(f64::total_cmp);

    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let rounds = (2048 / texts.len().max(1)).max(1);
    let t = Instant::now();
    let mut embedded = 0;
    for _ in 0..rounds {
        for chunk in texts.chunks(BATCH) {
            embedded += encoder.embed(chunk)?.len();
        }
    }
    let embed_batch_per_s = embedded as f64 / t.elapsed().as_secs_f64();

    Ok(BenchReport {
        embed_single_p50_ms: percentile(&single, 0.5),
        embed_single_p99_ms: percentile(&single, 0.99),
        embed_batch_per_s,
        classify_p50_ms: percentile(&classify, 0.5),
        index_build_s,
        prompts: prompts.len(),
        utterances,
        backend: encoder.describe(),
        precision: match encoder.backend() {
            crate::embed::Backend::Native(_, precision) => format!("{precision:?}").to_lowercase(),
            crate::embed::Backend::Candle => "f32".into(),
        },
        threads: encoder.threads(),
        layer_weights_mb: encoder.layer_weight_bytes() as f64 / 1e6,
    })
}
