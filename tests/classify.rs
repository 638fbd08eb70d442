//! Routing with the real model: held-in utterances and paraphrases on the shipped routes,
//! overrides beating similarity, thresholds falling back, CLINC150 at 150 routes, and the
//! HNSW index agreeing with exhaustive search.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{config_from, encoder, route_of, shipped_router};
use semroute::Router;
use semroute::offline::eval::Sample;
use semroute::route::decide::MatchedBy;
use semroute::route::index::UtteranceIndex;

#[test]
fn every_shipped_utterance_routes_to_its_own_route() {
    let router = shipped_router();
    for route in &router.config().routes {
        for utterance in &route.utterances {
            let embedding = encoder().embed_one(utterance).unwrap();
            let result = common::report(router, utterance, &embedding, None);
            assert_eq!(
                result.route.as_deref(),
                Some(route.name.as_str()),
                "{utterance:?} -> {result:?}"
            );
        }
    }
}

#[test]
fn paraphrases_route_to_the_right_place() {
    let router = shipped_router();
    let cases = [
        ("Write a Python function to parse JSON", "code"),
        (
            "can you help me debug a null pointer exception in my code",
            "code",
        ),
        ("write me a sonnet about the ocean", "creative_writing"),
        (
            "make up a fairy tale about a dragon who is afraid of fire",
            "creative_writing",
        ),
        (
            "what's the average growth rate in this spreadsheet of sales figures",
            "data_analysis",
        ),
        (
            "plot a histogram of customer ages from this data",
            "data_analysis",
        ),
        ("I forgot my login credentials and can't get in", "support"),
        ("the mobile app keeps freezing on startup", "support"),
        (
            "you charged my card two times for the same order",
            "billing",
        ),
        ("how much does the yearly subscription cost", "billing"),
        ("hello! how are you doing today?", "small_talk"),
        ("thank you so much, goodbye", "small_talk"),
        ("who wrote the novel Pride and Prejudice?", "general"),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let got = route_of(router, text);
        if got.as_deref() != Some(expected) {
            wrong.push(format!("{text:?}: expected {expected}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "misrouted:\n{}", wrong.join("\n"));
}

#[test]
fn the_answer_carries_score_threshold_and_runners_up() {
    let router = shipped_router();
    let text = "Write a Python function to parse JSON";
    let result = common::report(router, text, &encoder().embed_one(text).unwrap(), None);
    assert_eq!(result.route.as_deref(), Some("code"));
    let score = result.score.expect("a score");
    assert!(score >= result.threshold);
    assert!(result.candidates.len() >= 2, "runners-up are listed");
    assert_eq!(result.candidates[0].route, "code");
    assert!(result.candidates[0].score >= result.candidates[1].score);
    assert!(!result.candidates[0].neighbors.is_empty());
    assert!(result.tokens > 2);
}

#[test]
fn a_keyword_beats_a_stronger_semantic_match() {
    let router = shipped_router();
    // Semantically small talk, but it names a receipt: billing's keyword wins.
    let text = "hi, how are you? quick question about a receipt";
    let result = common::report(router, text, &encoder().embed_one(text).unwrap(), None);
    assert_eq!(result.candidates[0].route, "small_talk", "{result:?}");
    assert_eq!(result.route.as_deref(), Some("billing"), "{result:?}");
    assert_eq!(result.matched_by, MatchedBy::Keyword);
    assert_eq!(result.overrides[0].rule, "receipt");
    assert!(
        result.score.unwrap() < result.threshold,
        "a keyword wins below the threshold too"
    );
}

#[test]
fn when_two_routes_keywords_match_the_earlier_route_wins() {
    let router = shipped_router();
    // "poem" (creative_writing) and "invoice" (billing): creative_writing comes first in the file.
    let text = "write a cheerful little poem about an invoice";
    let result = common::report(router, text, &encoder().embed_one(text).unwrap(), None);
    assert_eq!(
        result.route.as_deref(),
        Some("creative_writing"),
        "{result:?}"
    );
    let routes: Vec<&str> = result.overrides.iter().map(|o| o.route.as_str()).collect();
    assert_eq!(routes, ["creative_writing", "billing"]);
}

#[test]
fn a_pattern_beats_everything() {
    let router = shipped_router();
    let text = "write a python script that charges card 4111 1111 1111 1111";
    let result = common::report(router, text, &encoder().embed_one(text).unwrap(), None);
    assert_eq!(
        result.route.as_deref(),
        Some("sensitive_data"),
        "{result:?}"
    );
    assert_eq!(result.matched_by, MatchedBy::Pattern);
    assert!(result.overrides.iter().all(|o| !o.rule.contains("4111")));
    assert!(
        result.score.is_some(),
        "an override still reports the route's score"
    );
}

#[test]
fn nothing_confident_falls_back_to_the_default_route() {
    let router = shipped_router();
    let text = "zxqv blorf 7731";
    let result = common::report(router, text, &encoder().embed_one(text).unwrap(), None);
    assert_eq!(result.route.as_deref(), Some("general"), "{result:?}");
    assert_eq!(result.matched_by, MatchedBy::Default);
    assert!(result.score.unwrap() < result.threshold);
}

#[test]
fn without_a_default_route_nothing_confident_gives_no_route() {
    let config = config_from(
        "threshold: 0.9\nroutes:\n  - name: weather\n    utterances: [will it rain tomorrow]\n",
    );
    let router = Router::build(config, encoder()).unwrap();
    let result = common::report(
        &router,
        "hello",
        &encoder().embed_one("hello").unwrap(),
        None,
    );
    assert_eq!(result.route, None);
    assert_eq!(result.matched_by, MatchedBy::None);
}

#[test]
fn a_route_threshold_overrides_the_global_one() {
    let yaml = "threshold: -1\nroutes:\n  - name: weather\n    threshold: 0.95\n    utterances: [will it rain tomorrow]\n  - name: food\n    utterances: [what should i eat]\n";
    let router = Router::build(config_from(yaml), encoder()).unwrap();
    let text = "is it going to rain this weekend";
    let result = common::report(&router, text, &encoder().embed_one(text).unwrap(), None);
    assert_eq!(result.candidates[0].route, "weather");
    assert_eq!(
        result.route.as_deref(),
        Some("food"),
        "weather misses its own 0.95"
    );
}

#[test]
fn clinc150_ten_shot_loads_and_routes_its_validation_split() {
    let config =
        semroute::Config::load(&common::shared().join("datasets/clinc150/routes-10shot.yaml"))
            .expect("the CLINC150 10-shot file loads as is");
    assert_eq!(config.routes.len(), 150);
    assert!(config.route_id("yes").is_some() && config.route_id("no").is_some());
    let router = Router::build(config, encoder()).unwrap();
    let val: Vec<_> = common::labelled("datasets/clinc150/val.jsonl")
        .into_iter()
        .filter(|(_, route)| route.is_some())
        .step_by(10)
        .collect();
    let texts: Vec<&str> = val.iter().map(|(t, _)| t.as_str()).collect();
    let embeddings = encoder().embed(&texts).unwrap();
    let correct = val
        .iter()
        .zip(&embeddings)
        .filter(|((text, route), e)| {
            let result = common::report(&router, text, e, None);
            result.candidates.first().map(|c| &c.route) == route.as_ref()
        })
        .count();
    let accuracy = correct as f64 / val.len() as f64;
    // 10 examples per route with a small frozen model: ~85% top-1 is expected here.
    assert!(
        accuracy > 0.75,
        "top-1 accuracy {accuracy:.3} on {} prompts",
        val.len()
    );
}

#[test]
fn hnsw_finds_the_same_top_10_as_exhaustive_search() {
    let train = common::labelled("datasets/clinc150/train.jsonl");
    let texts: Vec<&str> = train.iter().step_by(5).map(|(t, _)| t.as_str()).collect();
    assert!(texts.len() >= 3000);
    let vectors: Vec<Vec<f32>> = encoder()
        .embed(&texts)
        .unwrap()
        .into_iter()
        .map(|e| e.vector)
        .collect();
    // Ids come only from a config: one route owns every vector.
    let one = config_from("routes:\n  - name: all\n    utterances: [anything]\n");
    let routes = vec![one.route_id("all").unwrap(); vectors.len()];
    let index = UtteranceIndex::build_graph(&vectors, &routes).unwrap();
    let queries: Vec<&str> = common::labelled("datasets/clinc150/val.jsonl")
        .iter()
        .step_by(15)
        .map(|(t, _)| t.clone())
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    let query_vectors = encoder().embed(&queries).unwrap();
    let (mut found, mut total) = (0, 0);
    for q in &query_vectors {
        let exact: Vec<usize> = index
            .search_exhaustive(&q.vector, 10)
            .iter()
            .map(|n| n.utterance)
            .collect();
        let approx: Vec<usize> = index
            .search(&q.vector, 10)
            .iter()
            .map(|n| n.utterance)
            .collect();
        found += exact.iter().filter(|u| approx.contains(u)).count();
        total += exact.len();
    }
    let recall = found as f64 / total as f64;
    assert!(
        recall >= 0.99,
        "recall@10 {recall:.4} over {} queries",
        query_vectors.len()
    );
}

#[test]
fn a_rebuild_reads_unchanged_utterances_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let text = "you charged my card two times for the same order";
    let query = encoder().embed_one(text).unwrap();
    let cold = Router::build_cached(common::shipped_config(), encoder(), Some(dir.path())).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "the embeddings and the head: {files:?}");
    assert!(files[0].starts_with("embeddings-") && files[1].starts_with("head-"));
    let warm = Router::build_cached(common::shipped_config(), encoder(), Some(dir.path())).unwrap();
    let (a, b) = (
        common::report(&cold, text, &query, None),
        common::report(&warm, text, &query, None),
    );
    assert_eq!(a.route, b.route);
    assert_eq!(
        a.score, b.score,
        "cached vectors and head are the same vectors and head"
    );

    // A changed route: only its new utterance is embedded, and the answers stay right.
    let mut changed = common::shipped_config();
    changed.routes[0]
        .utterances
        .push("Write a Go program that tails a log file".into());
    let router = Router::build_cached(changed, encoder(), Some(dir.path())).unwrap();
    assert_eq!(
        route_of(&router, "write a golang tool to follow a log"),
        Some("code".into())
    );

    // A damaged cache is ignored, not trusted.
    for file in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(file.unwrap().path(), b"SRCACHE1 damaged").unwrap();
    }
    let rebuilt =
        Router::build_cached(common::shipped_config(), encoder(), Some(dir.path())).unwrap();
    assert_eq!(common::report(&rebuilt, text, &query, None).score, a.score);
}

#[test]
fn close_runner_ups_make_an_answer_ambiguous() {
    let router = shipped_router();
    let text = "you charged my card two times for the same order";
    let result = common::report(router, text, &encoder().embed_one(text).unwrap(), None);
    let margin = result.margin.unwrap();
    assert!((margin - (result.candidates[0].score - result.candidates[1].score)).abs() < 1e-6);
    assert_eq!(result.ambiguous, margin < 0.03);

    // With a margin wider than any gap, every answer with two candidates is ambiguous.
    let mut config = common::shipped_config();
    config.ambiguity_margin = 2.0;
    let wide = Router::build(config, encoder()).unwrap();
    assert!(common::report(&wide, text, &encoder().embed_one(text).unwrap(), None).ambiguous);
}

#[test]
fn an_override_route_outside_the_candidates_is_scored_like_the_candidates() {
    let router = shipped_router();
    let text = "hi, how are you? quick question about a receipt";
    let query = encoder().embed_one(text).unwrap();
    // top_k 64 retrieves every shipped utterance: billing's score is the plain formula.
    let all = common::report(router, text, &query, Some(64));
    let billing = all
        .candidates
        .iter()
        .find(|c| c.route == "billing")
        .unwrap();
    // top_k 1 keeps only small_talk as a candidate; billing wins by keyword and is scored apart.
    let one = common::report(router, text, &query, Some(1));
    assert_eq!(one.route.as_deref(), Some("billing"));
    assert!(
        (one.score.unwrap() - billing.score).abs() < 1e-5,
        "{:?} vs {}",
        one.score,
        billing.score
    );
}

#[test]
fn fit_run_writes_thresholds_that_decide_as_the_fit_predicted() {
    let samples: Vec<Sample> =
        std::fs::read_to_string(common::repo().join("tests/data/shipped-labelled.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Sample {
                    text: v["text"].as_str().unwrap().to_string(),
                    route: v["route"].as_str().map(str::to_string),
                    ..Sample::default()
                }
            })
            .collect();
    let router = Router::build(common::shipped_config(), encoder()).unwrap();
    let run = semroute::offline::fit::run(router, encoder(), &samples, Default::default()).unwrap();
    let (before, after) = (
        run.before.overall_acc.unwrap(),
        run.after.overall_acc.unwrap(),
    );
    assert!(
        after >= before,
        "fit never loses accuracy in-sample: {before} -> {after}"
    );
    assert_eq!(run.written.threshold.get(), run.fitted.thresholds.global);
    // The written config, served, decides exactly as the fit said it would: fit and the
    // router decide through the same function.
    let refitted = Router::build(run.written, encoder()).unwrap();
    let served = semroute::offline::eval::run(
        &refitted,
        encoder(),
        &samples,
        &semroute::offline::weights::Weights::UNIFORM,
    )
    .unwrap();
    assert_eq!(served.overall_acc, run.after.overall_acc);
    assert_eq!(served.per_route, run.after.per_route);
}
