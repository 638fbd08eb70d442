//! The embeddings match sentence-transformers' all-MiniLM-L6-v2 on the shared fixture texts
//! (empty, CJK, emoji, code, a text past 256 tokens ...), alone and padded into a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use semroute::config::{EncoderConfig, Precision};
use semroute::embed::{Backend, Encoder, files};
use semroute::kernels::gemm::{Isa, bf16_supported};
use semroute::route::index::dot;

struct Reference {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let path = common::shared().join("fixtures/minilm-reference.jsonl");
    let text = std::fs::read_to_string(&path).expect("read the fixture file");
    let refs: Vec<Reference> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("fixture JSON");
            Reference {
                text: v["text"].as_str().expect("text").to_string(),
                tokens: v["tokens"].as_u64().expect("tokens") as usize,
                embedding: v["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect(),
            }
        })
        .collect();
    assert_eq!(refs.len(), 16, "the fixture has 16 texts");
    refs
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn each_fixture_text_embeds_like_sentence_transformers() {
    let encoder = common::encoder();
    for r in references() {
        let e = encoder.embed_one(&r.text).expect("embed");
        assert_eq!(e.tokens, r.tokens, "token count of {:?}", r.text);
        assert_eq!(e.vector.len(), 384);
        let cos = cosine(&e.vector, &r.embedding);
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", r.text);
        assert!(
            (dot(&e.vector, &e.vector) - 1.0).abs() < 1e-5,
            "unit length"
        );
    }
}

#[test]
fn padding_in_a_batch_changes_nothing() {
    let encoder = common::encoder();
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batch = encoder.embed(&texts).expect("embed batch");
    assert_eq!(batch.len(), refs.len());
    for (e, r) in batch.iter().zip(&refs) {
        assert_eq!(e.tokens, r.tokens, "token count of {:?}", r.text);
        let cos = cosine(&e.vector, &r.embedding);
        assert!(cos >= 0.9999, "cosine {cos} for {:?} in a batch", r.text);
    }
}

#[test]
fn a_huge_prompt_is_truncated_not_refused() {
    let text = "route this prompt please ".repeat(20_000);
    let e = common::encoder()
        .embed_one(&text)
        .expect("embed a 500 KB prompt");
    assert_eq!(e.tokens, 256);
}

fn load(backend: Backend) -> Encoder {
    common::model_dir();
    let config = EncoderConfig::default();
    let found = files::resolve(&config, &[common::repo().to_path_buf()]).expect("model files");
    Encoder::load_backend(found, &config, backend).expect("load the model")
}

/// Worst cosine to the references, with exact token counts checked on the way.
fn worst_cosine(encoder: &Encoder) -> f32 {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let mut worst = 1.0f32;
    for batch in [
        encoder.embed(&texts).expect("embed"),
        texts
            .iter()
            .map(|t| encoder.embed_one(t).expect("embed"))
            .collect(),
    ] {
        for (e, r) in batch.iter().zip(&refs) {
            assert_eq!(e.tokens, r.tokens, "token count of {:?}", r.text);
            worst = worst.min(cosine(&e.vector, &r.embedding));
        }
    }
    worst
}

#[test]
fn every_float32_kernel_this_cpu_has_meets_parity() {
    for isa in Isa::available() {
        let encoder = load(Backend::Native(isa, Precision::F32));
        let worst = worst_cosine(&encoder);
        assert!(worst >= 0.9999, "{isa:?}: worst cosine {worst}");
    }
}

#[test]
fn the_candle_backend_meets_parity_too() {
    let worst = worst_cosine(&load(Backend::Candle));
    assert!(worst >= 0.9999, "candle: worst cosine {worst}");
}

#[test]
fn bfloat16_stays_within_cosine_0999() {
    if !bf16_supported() {
        eprintln!("this CPU has no AVX512_BF16; the bf16 path falls back to f32");
        return;
    }
    let encoder = load(Backend::Native(Isa::detect(), Precision::Bf16));
    assert_eq!(
        encoder.backend(),
        Backend::Native(Isa::detect(), Precision::Bf16)
    );
    let worst = worst_cosine(&encoder);
    assert!(worst >= 0.999, "bf16: worst cosine {worst}");
    eprintln!("bf16 worst cosine to the references: {worst}");
}

#[test]
fn the_fine_tuning_model_embeds_like_the_encoder_before_any_step() {
    // `semroute fit --tune-encoder` trains its own differentiable BERT; untrained, it must
    // compute exactly the function the encoder serves, padding included.
    common::model_dir();
    let files = files::resolve(&EncoderConfig::default(), &[common::repo().to_path_buf()])
        .expect("model files");
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let vectors = semroute::offline::tune::embed(&files, &texts, 256).expect("embed");
    for (r, v) in refs.iter().zip(&vectors) {
        let cos = cosine(v, &r.embedding);
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", r.text);
    }
}
