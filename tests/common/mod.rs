//! Shared by the integration tests: the real model (fetched by `models/fetch.sh` on first
//! use), the shipped routes, and the shared data sets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod openapi;
pub mod serving;

use semroute::Router;
use semroute::config::Config;
use semroute::embed::{Encoder, files};
use semroute::http::classify::ClassifyResponse;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The model directory, fetched once if missing (the fetch script is idempotent and locks).
pub fn model_dir() -> PathBuf {
    static FETCHED: OnceLock<PathBuf> = OnceLock::new();
    FETCHED
        .get_or_init(|| {
            let dir = repo().join("models/all-MiniLM-L6-v2");
            if !dir.join("model.safetensors").is_file() {
                let status = Command::new("bash")
                    .arg(repo().join("models/fetch.sh"))
                    .status()
                    .expect("run models/fetch.sh");
                assert!(status.success(), "models/fetch.sh failed");
            }
            dir
        })
        .clone()
}

pub fn encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        model_dir();
        let config = semroute::config::EncoderConfig::default();
        let found = files::resolve(&config, &[repo().to_path_buf()]).expect("model files");
        Encoder::load_files(found, &config).expect("load the model")
    })
}

/// A model worker for in-process app states, one per test binary.
pub fn worker() -> semroute::embed::EmbedWorker {
    static WORKER: OnceLock<semroute::embed::EmbedWorker> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            model_dir();
            let config = semroute::config::EncoderConfig::default();
            let found = files::resolve(&config, &[repo().to_path_buf()]).expect("model files");
            let encoder = Encoder::load_files(found, &config).expect("load the model");
            semroute::embed::EmbedWorker::spawn(encoder, 64).expect("start the worker")
        })
        .clone()
}

pub fn shipped_config() -> Config {
    Config::load(&repo().join("routes.yaml")).expect("the shipped routes.yaml is valid")
}

/// A router over the shipped routes.yaml.
pub fn shipped_router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| Router::build(shipped_config(), encoder()).expect("build router"))
}

pub fn config_from(yaml: &str) -> Config {
    Config::parse(yaml, "test.yaml", repo()).unwrap_or_else(|err| panic!("{err}"))
}

/// `../shared`, or `SEMROUTE_SHARED` when set.
pub fn shared() -> PathBuf {
    if let Ok(dir) = std::env::var("SEMROUTE_SHARED") {
        return PathBuf::from(dir);
    }
    for candidate in [repo().join("../shared"), PathBuf::from("/work/shared")] {
        if candidate.is_dir() {
            return candidate;
        }
    }
    panic!("cannot find the shared data directory; set SEMROUTE_SHARED")
}

/// (text, route) pairs of a JSONL split such as `datasets/clinc150/val.jsonl`.
pub fn labelled(relative: &str) -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(shared().join(relative)).expect("read data set");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("valid JSONL");
            (
                v["text"].as_str().expect("text").to_string(),
                v["route"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The route a prompt goes to on a router.
pub fn route_of(router: &Router, text: &str) -> Option<String> {
    let embedding = encoder().embed_one(text).expect("embed");
    report(router, text, &embedding, None).route
}

/// A classification as `POST /classify` renders it (routes and utterances by name).
pub fn report(
    router: &Router,
    text: &str,
    embedding: &semroute::Embedding,
    top_k: Option<usize>,
) -> ClassifyResponse {
    ClassifyResponse::new(&router.classify(text, embedding, top_k), router.config())
}

/// An HTTP client for talking to a served semroute (reqwest is built without a default TLS
/// provider; semroute installs ring's, and so do the tests before building a client).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A ready in-process state serving `yaml` from `dir/routes.yaml`, reloadable from that file
/// (as `serve --config dir/routes.yaml` is).
pub fn reloadable(dir: &Path, yaml: &str) -> semroute::http::AppState {
    use semroute::http::{AppState, DEFAULT_BODY_LIMIT, Engine, Source};
    let path = dir.join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap();
    let worker = worker();
    let router = Router::build(config.clone(), worker.encoder()).unwrap();
    let source = Source {
        path,
        model_roots: vec![repo().to_path_buf()],
        queue: 64,
    };
    let state = AppState::new(std::sync::Arc::new(config), DEFAULT_BODY_LIMIT)
        .with_source(source, yaml.as_bytes());
    state.set_ready(Engine {
        router: std::sync::Arc::new(router),
        worker,
    });
    state
}
