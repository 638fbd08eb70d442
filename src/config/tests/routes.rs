//! Routes: names, what selects them (utterances, keywords, patterns), the default route.

use super::*;

#[test]
fn routes_named_yes_and_no_stay_strings() {
    let config = valid(
        "routes:\n  - name: yes\n    utterances: [sure]\n  - name: no\n    utterances: [nope]\n",
    );
    assert_eq!(config.routes[0].name.as_str(), "yes");
    assert_eq!(config.routes[1].name.as_str(), "no");
}

#[test]
fn a_duplicate_route_name_points_at_both() {
    let i = issue("routes:\n  - name: a\n    utterances: [x]\n  - name: a\n    utterances: [y]\n");
    assert_eq!(i.path, "routes[1].name");
    assert_eq!(i.line, Some(4));
    assert!(i.message.contains("line 2"), "{i:?}");
    assert!(i.hint.as_deref().is_some_and(|h| h.contains("unique")));
}

#[test]
fn a_route_with_nothing_to_match_on_is_refused() {
    let i = issue("routes:\n  - name: a\n    utterances: [x]\n  - name: empty\n");
    assert_eq!(i.path, "routes[1]");
    assert_eq!(i.line, Some(4));
    assert!(i.message.contains("empty"), "{i:?}");
}

#[test]
fn the_default_route_alone_may_have_no_utterances() {
    let config = valid(
        "default_route: fallback\nroutes:\n  - name: a\n    utterances: [x]\n  - name: fallback\n",
    );
    assert_eq!(config.default_route, Some(RouteId::at(1)));
}

#[test]
fn a_route_with_only_keywords_or_patterns_is_fine() {
    valid("routes:\n  - name: a\n    keywords: [invoice]\n  - name: b\n    patterns: ['x+']\n");
}

#[test]
fn an_invalid_regex_is_explained() {
    let i = issue("routes:\n  - name: a\n    patterns: ['(unclosed']\n");
    assert_eq!(i.path, "routes[0].patterns[0]");
    assert_eq!(i.line, Some(3));
    assert!(i.message.contains("invalid regular expression"), "{i:?}");
}

#[test]
fn a_default_route_that_names_nothing_lists_the_routes() {
    let i = issue("default_route: genral\nroutes:\n  - name: general\n    utterances: [x]\n");
    assert_eq!(i.path, "default_route");
    assert_eq!(i.line, Some(1));
    assert!(
        i.hint.as_deref().is_some_and(|h| h.contains("general")),
        "{i:?}"
    );
}

#[test]
fn empty_utterances_keywords_and_names_are_refused() {
    assert_eq!(
        issue("routes:\n  - name: a\n    utterances: ['  ']\n").path,
        "routes[0].utterances[0]"
    );
    assert_eq!(
        issue("routes:\n  - name: a\n    keywords: ['']\n").path,
        "routes[0].keywords[0]"
    );
    assert_eq!(
        issue("routes:\n  - name: ''\n    utterances: [x]\n").path,
        "routes[0].name"
    );
}

#[test]
fn patterns_that_serve_could_not_compile_together_are_refused_with_their_line() {
    // Each pattern compiles alone; together they pass the compiled-size limit.
    let patterns: Vec<String> = (0..10)
        .map(|_| "      - '\\w{1,30}'\n".to_string())
        .collect();
    let yaml = format!("routes:\n  - name: a\n    patterns:\n{}", patterns.concat());
    let problem = issue(&yaml);
    assert_eq!(problem.path, "routes[0].patterns[6]", "{problem:?}");
    assert_eq!(problem.line, Some(10), "{problem:?}");
    assert!(problem.message.contains("size limit"), "{problem:?}");
}
