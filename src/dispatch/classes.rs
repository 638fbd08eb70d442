//! A request's data class: the strictest of the client's `x-semroute-data-class` header,
//! its route's `data_class`, and the class of every route whose pattern matches any string
//! anywhere in the request (every message, every role, tool calls and arguments included),
//! whatever `model` names. A client can raise its class, never lower it.

use crate::config::{Config, RouteId};
use serde_json::{Map, Value};

/// The class that applies, and the rule that set it (for a 403's message).
#[derive(Debug, Clone, PartialEq)]
pub struct Classed {
    pub class: String,
    pub because: String,
}

/// The class a request carries (`None`: unclassified), or why it is refused: a header
/// naming a class the config does not know.
pub fn request_class(
    config: &Config,
    header: Option<&str>,
    route: Option<RouteId>,
    hits: &[RouteId],
) -> Result<Option<Classed>, String> {
    let classes = &config.data_classes;
    let mut strictest: Option<Classed> = None;
    let mut raise = |class: &str, because: String| {
        let stricter = match &strictest {
            None => true,
            Some(current) => classes.stricter(&current.class, class) != current.class.as_str(),
        };
        if stricter {
            strictest = Some(Classed {
                class: class.to_string(),
                because,
            });
        }
    };
    if let Some(class) = header {
        if classes.rank(class).is_none() {
            return Err(format!(
                "`{class}` is not a data class of this config ({})",
                classes.describe()
            ));
        }
        raise(class, "the x-semroute-data-class header".into());
    }
    if let Some(r) = route
        && let Some(class) = &config.route(r).dispatch.data_class
    {
        raise(class, format!("route `{}`", config.route(r).name));
    }
    for &r in hits {
        if let Some(class) = &config.route(r).dispatch.data_class {
            raise(
                class,
                format!(
                    "a pattern of route `{}` matched the request",
                    config.route(r).name
                ),
            );
        }
    }
    Ok(strictest)
}

/// The routes whose class-bearing patterns match any string in `body`, each once.
/// `scanned` is a string of `body` already matched against every route pattern (the
/// prompt classified) with the routes whose patterns matched it, so it is not scanned again.
pub fn pattern_hits(
    config: &Config,
    body: &Map<String, Value>,
    scanned: Option<(&str, &[RouteId])>,
) -> Vec<RouteId> {
    let rules = &config.class_patterns;
    let mut hits: Vec<RouteId> = Vec::new();
    if rules.set.is_empty() {
        return hits;
    }
    if let Some((_, routes)) = scanned {
        for &route in routes {
            if config.route(route).dispatch.data_class.is_some() && !hits.contains(&route) {
                hits.push(route);
            }
        }
    }
    // The very same string (not an equal one), so nothing can slip past unscanned.
    let is_scanned = |text: &str| {
        scanned
            .is_some_and(|(s, _)| std::ptr::eq(s.as_ptr(), text.as_ptr()) && s.len() == text.len())
    };
    let mut pending: Vec<&Value> = body.values().collect();
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) if is_scanned(text) => {}
            Value::String(text) => {
                for source in rules.hits(text) {
                    if !hits.contains(&source.route) {
                        hits.push(source.route);
                    }
                }
            }
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.values()),
            _ => {}
        }
    }
    hits.sort();
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        let yaml = r#"
backends:
  - {name: open, url: "http://127.0.0.1:1/v1", model: m, data_classes: [public, internal]}
  - {name: local, url: "http://127.0.0.1:2/v1", model: m, data_classes: [public, internal, pii]}
routes:
  - name: chat
    utterances: [hello]
    targets: [open, local]
  - name: team
    utterances: [our roadmap]
    targets: [open, local]
    data_class: internal
  - name: personal
    patterns: ['\b\d{3}-\d{2}-\d{4}\b']
    targets: [local]
    data_class: pii
"#;
        Config::parse(yaml, "t.yaml", std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_header_raises_the_class_but_never_lowers_it() {
        let c = config();
        let team = c.route_id("team");
        let got = request_class(&c, Some("public"), team, &[]).unwrap_or_default();
        assert_eq!(got.map(|g| g.class).as_deref(), Some("internal"));
        let got = request_class(&c, Some("pii"), team, &[]).unwrap_or_default();
        assert_eq!(got.map(|g| g.class).as_deref(), Some("pii"));
        assert!(request_class(&c, Some("secret"), None, &[]).is_err());
    }

    #[test]
    fn a_pattern_anywhere_in_the_conversation_sets_its_routes_class() {
        let c = config();
        let b = body(json!({"model": "open", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "my ssn is 123-45-6789"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "thanks"}
        ]}));
        let hits = pattern_hits(&c, &b, None);
        assert_eq!(hits, c.route_id("personal").into_iter().collect::<Vec<_>>());
        let got = request_class(&c, Some("public"), None, &hits)
            .unwrap_or_default()
            .unwrap_or_else(|| panic!("classed"));
        assert_eq!(got.class, "pii");
        assert!(got.because.contains("personal"), "{}", got.because);
        let tool_args = body(json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"ssn\": \"123-45-6789\"}"}}]}]}));
        assert_eq!(pattern_hits(&c, &tool_args, None).len(), 1);
        let plain = body(json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert!(pattern_hits(&c, &plain, None).is_empty());
        // A string already scanned with every pattern is not scanned again; a copy is.
        let b = body(json!({"messages": [{"role": "user", "content": "ssn 123-45-6789"}]}));
        let text = b["messages"][0]["content"].as_str().unwrap_or_default();
        assert!(pattern_hits(&c, &b, Some((text, &[]))).is_empty());
        let copy = text.to_string();
        assert_eq!(pattern_hits(&c, &b, Some((&copy, &[]))).len(), 1);
    }
}
