//! Experiments, the sticky strategy and the cache: variants resolved in target order, every
//! mistake reported with its path, and each written back as it was read.

use super::*;

fn route(experiment: &str) -> String {
    format!(
        "{BACKENDS}routes:\n  - name: support\n    utterances: [x]\n    targets: [fast, big]\n    strategy: sticky\n    experiment:\n{experiment}"
    )
}

#[test]
fn an_experiment_is_resolved_in_target_order_and_survives_being_written() {
    let config = valid(&route(
        "      name: support-small-vs-big\n      variants: {big: 0.1, fast: 0.9}\n      sticky: ip\n",
    ));
    let dispatch = &config.routes[0].dispatch;
    assert_eq!(dispatch.strategy, Strategy::Sticky);
    let experiment = dispatch.experiment.as_ref().unwrap();
    assert_eq!(experiment.name, "support-small-vs-big");
    assert_eq!(experiment.sticky, StickyBy::Ip);
    let variants: Vec<(usize, f64)> = experiment
        .variants
        .iter()
        .map(|v| (v.backend.index(), v.share))
        .collect();
    assert_eq!(variants, [(0, 0.9), (1, 0.1)]);
    let again = valid(&config.to_yaml("").unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(again.routes[0].dispatch, *dispatch);
}

#[test]
fn sticky_defaults_to_the_user() {
    let config = valid(&route(
        "      name: e\n      variants: {fast: 0.5, big: 0.5}\n",
    ));
    let experiment = config.routes[0].dispatch.experiment.as_ref().unwrap();
    assert_eq!(experiment.sticky, StickyBy::User);
}

#[test]
fn shares_that_do_not_sum_to_one_are_refused() {
    let problem = issue(&route(
        "      name: e\n      variants: {fast: 0.9, big: 0.2}\n",
    ));
    assert_eq!(problem.path, "routes[0].experiment.variants");
    assert!(problem.message.contains("sum to 1.1"), "{problem:?}");
}

#[test]
fn a_variant_must_be_one_of_the_targets_with_a_share_in_range() {
    let yaml = format!(
        "{BACKENDS}  - name: other\n    url: http://127.0.0.1:9/v1\n    model: m\nroutes:\n  - name: support\n    utterances: [x]\n    targets: [fast, big]\n    experiment:\n      name: e\n      variants: {{fast: 0.5, other: 0.5}}\n"
    );
    let problem = issue(&yaml);
    assert_eq!(problem.path, "routes[0].experiment.variants.other");
    assert!(problem.message.contains("not one of the route's targets"));
    let problem = issue(&route(
        "      name: e\n      variants: {fast: 1.5, big: 0.5}\n",
    ));
    assert!(problem.message.contains("not in (0, 1]"), "{problem:?}");
    let problem = issue(&route("      name: e\n      variants: {fast: 1.0}\n"));
    assert!(problem.message.contains("at least two variants"));
}

#[test]
fn names_sticky_and_duplicates_are_checked() {
    let problem = issue(&route(
        "      name: 'a b'\n      variants: {fast: 0.5, big: 0.5}\n",
    ));
    assert_eq!(problem.path, "routes[0].experiment.name");
    let problem = issue(&route(
        "      name: e\n      variants: {fast: 0.5, big: 0.5}\n      sticky: session\n",
    ));
    assert_eq!(problem.path, "routes[0].experiment.sticky");
    assert!(problem.hint.unwrap().contains("user, ip or none"));
    let experiment = "    experiment: {name: e, variants: {fast: 0.5, big: 0.5}}\n";
    let yaml = format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast, big]\n{experiment}  - name: b\n    utterances: [y]\n    targets: [fast, big]\n{experiment}"
    );
    let problem = issue(&yaml);
    assert_eq!(problem.path, "routes[1].experiment.name");
    assert!(problem.message.contains("already run by route `a`"));
    let problem = issue(&format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast]\n    strategy: random\n"
    ));
    assert!(problem.hint.unwrap().contains("sticky"));
}

#[test]
fn a_cache_is_resolved_with_its_defaults_and_survives_being_written() {
    let config = valid(&format!(
        "cache:\n  exact: {{ttl_s: 600}}\n  semantic: {{threshold: 0.97}}\n{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast]\n"
    ));
    let cache = config.cache.clone().unwrap();
    let exact = cache.exact.unwrap();
    assert_eq!(exact.ttl, std::time::Duration::from_secs(600));
    assert_eq!(exact.max_entries, 100_000);
    assert_eq!(cache.semantic.unwrap().threshold, 0.97);
    assert_eq!(cache.store, CacheStore::Memory);
    assert!(!cache.any_temperature);
    let again = valid(&config.to_yaml("").unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(again.cache, config.cache);
}

#[test]
fn cache_mistakes_are_reported() {
    let routes =
        format!("{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast]\n");
    let problem = issue(&format!("cache:\n  exact: {{}}\n  store: redis\n{routes}"));
    assert_eq!(problem.path, "cache.store");
    assert!(problem.message.contains("state.redis"), "{problem:?}");
    let problem = issue(&format!("cache:\n  semantic: {{threshold: 1.5}}\n{routes}"));
    assert_eq!(problem.path, "cache.semantic.threshold");
    let problem = issue(&format!("cache:\n  exact: {{ttl_s: 0}}\n{routes}"));
    assert_eq!(problem.path, "cache.exact.ttl_s");
    let problem = issue(&format!("cache:\n  store: memory\n{routes}"));
    assert!(
        problem.message.contains("nothing would be cached"),
        "{problem:?}"
    );
    assert!(valid(&format!("state: {{redis: 'redis://127.0.0.1:6379'}}\ncache:\n  exact: {{}}\n  store: redis\n{routes}")).cache.is_some());
}
