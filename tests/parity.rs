//! The embeddings match sentence-transformers' all-MiniLM-L6-v2 on the shared fixture texts
//! (empty, CJK, emoji, code, a text past 256 tokens ...), alone and padded into a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use semroute::config::{EncoderConfig, Precision};
use semroute::embed::native::{NativeBert, Options};
use semroute::embed::{Backend, Encoder, files};
use semroute::kernels::gemm::{Int8Isa, Isa, bf16_supported};
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
fn int8_stays_within_cosine_099_of_sentence_transformers() {
    if Int8Isa::detect().is_none() {
        eprintln!("this CPU has no int8 kernel; the int8 path falls back to f32");
        return;
    }
    let encoder = load(Backend::Native(Isa::detect(), Precision::Int8));
    assert_eq!(
        encoder.backend(),
        Backend::Native(Isa::detect(), Precision::Int8)
    );
    let worst = worst_cosine(&encoder);
    eprintln!("int8 worst cosine to the references: {worst}");
    assert!(worst >= 0.99, "int8: worst cosine {worst}");
}

/// The fixture texts as token ids, and the model's config.
fn fixture_tokens() -> (Vec<Vec<u32>>, candle_transformers::models::bert::Config) {
    let dir = common::model_dir();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut ids: Vec<Vec<u32>> = references()
        .iter()
        .map(|r| {
            let e = tokenizer.encode(r.text.as_str(), true).unwrap();
            e.get_ids()[..e.get_ids().len().min(256)].to_vec()
        })
        .collect();
    // Enough sequences that a batch splits among every thread count below.
    ids.extend(ids.clone());
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    (ids, config)
}

#[test]
fn results_are_bit_identical_at_one_two_and_four_threads() {
    let (ids, config) = fixture_tokens();
    let weights = common::model_dir().join("model.safetensors");
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    for precision in [Precision::F32, Precision::Int8] {
        let mut seen: Option<Vec<Vec<f32>>> = None;
        // 4 threads is more than this machine's cores, on a 2-core machine.
        for threads in [1, 2, 4] {
            let options = Options {
                isa: Isa::detect(),
                precision,
                threads,
                quantized_cache: None,
            };
            let model = NativeBert::load_with(&weights, &config, &options).unwrap();
            assert_eq!(model.threads(), threads);
            let together = model.embed(&batch).unwrap();
            let alone: Vec<Vec<f32>> = batch
                .iter()
                .map(|ids| model.embed(&[ids]).unwrap().remove(0))
                .collect();
            let bits = |v: &Vec<Vec<f32>>| -> Vec<Vec<u32>> {
                v.iter()
                    .map(|e| e.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert_eq!(
                bits(&together),
                bits(&alone),
                "{precision:?}: batch vs alone"
            );
            match &seen {
                None => seen = Some(together),
                Some(first) => assert_eq!(
                    bits(first),
                    bits(&together),
                    "{precision:?} at {threads} threads differs from 1 thread"
                ),
            }
        }
    }
}

#[test]
fn int8_weights_are_a_quarter_of_f32_and_cached_for_the_next_start() {
    if Int8Isa::detect().is_none() {
        return;
    }
    let (ids, config) = fixture_tokens();
    let weights = common::model_dir().join("model.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let options = |precision| Options {
        isa: Isa::detect(),
        precision,
        threads: 1,
        quantized_cache: Some((dir.path().to_path_buf(), "f00d".into())),
    };
    let f32_model = NativeBert::load_with(&weights, &config, &options(Precision::F32)).unwrap();
    let first = NativeBert::load_with(&weights, &config, &options(Precision::Int8)).unwrap();
    let ratio = first.layer_weight_bytes() as f64 / f32_model.layer_weight_bytes() as f64;
    assert!(ratio < 0.26, "int8 layers take {ratio} of the f32 ones");
    let cached = dir.path().join("int8-f00d.bin");
    let written = std::fs::metadata(&cached).unwrap().modified().unwrap();
    // The second start reads the file (and does not write it again) and computes the same.
    let second = NativeBert::load_with(&weights, &config, &options(Precision::Int8)).unwrap();
    assert_eq!(
        std::fs::metadata(&cached).unwrap().modified().unwrap(),
        written
    );
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    assert_eq!(first.embed(&batch).unwrap(), second.embed(&batch).unwrap());
    // A damaged file is ignored and replaced by the same bytes: one that is too short, one of
    // the right size and shape whose weights were changed (the checksum catches it), and a
    // huge sparse one (refused by its size before it is read).
    let good = std::fs::read(&cached).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let huge = std::fs::File::create(dir.path().join("huge")).unwrap();
    huge.set_len(1 << 32).unwrap();
    for damaged in [b"SRINT802 not really".to_vec(), flipped] {
        std::fs::write(&cached, &damaged).unwrap();
        let again = NativeBert::load_with(&weights, &config, &options(Precision::Int8)).unwrap();
        assert_eq!(first.embed(&batch).unwrap(), again.embed(&batch).unwrap());
        assert!(
            std::fs::read(&cached).unwrap() == good,
            "the cache was rewritten"
        );
    }
    std::fs::rename(dir.path().join("huge"), &cached).unwrap();
    let again = NativeBert::load_with(&weights, &config, &options(Precision::Int8)).unwrap();
    assert_eq!(first.embed(&batch).unwrap(), again.embed(&batch).unwrap());
    assert!(std::fs::read(&cached).unwrap() == good);
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
