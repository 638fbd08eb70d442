//! Criterion benches for the hot paths: embedding one prompt and a batch, searching the
//! CLINC150 10-shot index, the prototype similarities, classifying, the decision, and
//! training the route head. Needs the model: run ./models/fetch.sh first.
//! `cargo bench --bench router`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use semroute::Router;
use semroute::config::{Config, EncoderConfig, RouteId};
use semroute::embed::{Encoder, files};
use semroute::route::decide::{OverrideHit, RouteScore, decide};
use semroute::route::head::Head;
use semroute::route::index::UtteranceIndex;
use semroute::route::prototypes::Prototypes;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared() -> PathBuf {
    std::env::var("SEMROUTE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared"))
}

fn encoder() -> Encoder {
    let config = EncoderConfig::default();
    let found = files::resolve(&config, &[repo()]).expect("run ./models/fetch.sh first");
    Encoder::load_files(found, &config).unwrap()
}

fn benches(c: &mut Criterion) {
    let encoder = encoder();
    let prompt = "How do I reset my password for the billing portal?";
    c.bench_function("embed_single", |b| {
        b.iter(|| encoder.embed_one(black_box(prompt)).unwrap())
    });

    let val = std::fs::read_to_string(shared().join("datasets/clinc150/val.jsonl")).unwrap();
    let prompts: Vec<String> = val
        .lines()
        .take(64)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let mut group = c.benchmark_group("embed_batch");
    group.throughput(criterion::Throughput::Elements(refs.len() as u64));
    group.sample_size(10);
    group.bench_function("64_clinc_prompts", |b| {
        b.iter(|| encoder.embed(black_box(&refs)).unwrap())
    });
    group.finish();

    let config = Config::load(&shared().join("datasets/clinc150/routes-10shot.yaml")).unwrap();
    let texts: Vec<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.utterances.iter().map(String::as_str))
        .collect();
    let vectors: Vec<Vec<f32>> = encoder
        .embed(&texts)
        .unwrap()
        .into_iter()
        .map(|e| e.vector)
        .collect();
    let owners: Vec<RouteId> = config
        .route_ids()
        .flat_map(|id| std::iter::repeat_n(id, config.route(id).utterances.len()))
        .collect();
    let router = Router::from_embeddings(config.clone(), vectors.clone()).unwrap();
    let query = encoder.embed_one(prompt).unwrap();
    let graph = UtteranceIndex::build_graph(&vectors, &owners).expect("index");
    c.bench_function("search_graph_1500_utterances_top20", |b| {
        b.iter(|| graph.search(black_box(&query.vector), 20))
    });
    c.bench_function("search_scan_1500_utterances_top20", |b| {
        b.iter(|| {
            router
                .index()
                .search_exhaustive(black_box(&query.vector), 20)
        })
    });
    c.bench_function("build_graph_1500_utterances", |b| {
        b.iter(|| UtteranceIndex::build_graph(black_box(&vectors), &owners))
    });
    c.bench_function("build_scan_index_1500_utterances", |b| {
        b.iter(|| UtteranceIndex::build(black_box(&vectors), &owners))
    });
    let prototypes = Prototypes::new(&vectors, &owners);
    c.bench_function("prototypes_150_routes", |b| {
        b.iter(|| prototypes.similarities(black_box(&query.vector)))
    });
    c.bench_function("classify_after_embed_150_routes", |b| {
        b.iter(|| router.classify(black_box(prompt), black_box(&query), None))
    });

    let scores: Vec<RouteScore> = router
        .classify(prompt, &query, None)
        .candidates
        .iter()
        .map(|c| RouteScore {
            route: c.route,
            score: c.score,
        })
        .collect();
    let hits: Vec<OverrideHit> = Vec::new();
    c.bench_function("decide_150_routes", |b| {
        b.iter(|| decide(black_box(&scores), &hits, &config))
    });

    train_head(c, &vectors, &owners);
}

/// Training the route head at load: 1,500 CLINC150 utterance vectors, 150 routes.
fn train_head(c: &mut Criterion, vectors: &[Vec<f32>], owners: &[RouteId]) {
    let mut group = c.benchmark_group("train_head_clinc150");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("1500_utterances_150_routes", |b| {
        b.iter(|| Head::train(black_box(vectors), owners).unwrap())
    });
    group.finish();
}

criterion_group!(router_benches, benches);
criterion_main!(router_benches);
