//! A request's data class: the strictest of the client's `x-semroute-data-class` header,
//! its route's `data_class`, and the class of every route whose pattern matches any string
//! anywhere in the request (every message, every role, tool calls and arguments included),
//! whatever `model` names. A client can raise its class, never lower it.

use crate::config::{Config, RouteId};
use crate::embed::text::is_hidden;
use serde_json::{Map, Value};

/// The class that applies, and the rule that set it (for a 403's message).
#[derive(Debug, Clone, PartialEq)]
pub struct Classed {
    pub class: String,
    pub because: String,
}

/// The class a request carries (`None`: unclassified), or why it is refused: a header
/// value naming a class the config does not know (that class, and the reason).
pub fn request_class(
    config: &Config,
    headers: &[String],
    route: Option<RouteId>,
    hits: &[RouteId],
) -> Result<Option<Classed>, (String, String)> {
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
    for class in headers {
        if classes.rank(class).is_none() {
            return Err((
                class.clone(),
                format!(
                    "`{class}` is not a data class of this config ({})",
                    classes.describe()
                ),
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

/// The routes whose class-bearing patterns match anywhere in `body`, each once: in every
/// string and object key, in each message's text parts joined, and in the folded form of
/// each (see `folded`), so neither invisible characters nor compatibility forms nor a split
/// into parts hide a match. `scanned` is a string of `body` already matched against every
/// route pattern (the prompt classified) with the routes whose patterns matched it, so its
/// raw form is not scanned again.
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
    let mut scan = |text: &str, raw_done: bool| {
        let mut found = |form: &str| {
            for source in rules.hits(form) {
                if !hits.contains(&source.route) {
                    hits.push(source.route);
                }
            }
        };
        if !raw_done {
            found(text);
        }
        fold_in_windows(text, &mut found);
    };
    // The very same string (not an equal one), so nothing can slip past unscanned.
    let is_scanned = |text: &str| {
        scanned
            .is_some_and(|(s, _)| std::ptr::eq(s.as_ptr(), text.as_ptr()) && s.len() == text.len())
    };
    let mut pending: Vec<&Value> = body.values().collect();
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) => scan(text, is_scanned(text)),
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                for (key, value) in map {
                    scan(key, false);
                    pending.push(value);
                }
            }
            _ => {}
        }
    }
    for key in body.keys() {
        scan(key, false);
    }
    // A message's text parts as the model reads them: one text.
    let messages = body.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        if let Some(Value::Array(parts)) = message.get("content") {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if texts.len() > 1 {
                scan(&texts.concat(), false);
            }
        }
    }
    hits.sort();
    hits
}

/// Bytes of folded text matched at a time, and how many of them the next window repeats,
/// so a match up to that long across a window's edge is still seen.
const FOLD_WINDOW: usize = 1 << 20;
const FOLD_OVERLAP: usize = 4096;

/// Hands `found` the text as a pattern should also see it, when that differs: fullwidth
/// forms made ASCII (`１２３` is `123`), the ideographic space a space, hidden characters
/// (zero-width spaces, joiners, soft hyphens) removed, and every dash made `-`. A large text
/// is folded a window at a time, so no copy of it is made.
fn fold_in_windows(text: &str, found: &mut impl FnMut(&str)) {
    if text.is_ascii() || !text.chars().any(|c| fold(c) != Some(c)) {
        return;
    }
    let mut window = String::with_capacity(text.len().min(FOLD_WINDOW + FOLD_OVERLAP) + 8);
    let mut fresh = false;
    for c in text.chars() {
        if let Some(f) = fold(c) {
            window.push(f);
            fresh = true;
        }
        if window.len() >= FOLD_WINDOW + FOLD_OVERLAP {
            found(&window);
            let mut keep = window.len() - FOLD_OVERLAP;
            while !window.is_char_boundary(keep) {
                keep += 1;
            }
            window.drain(..keep);
            fresh = false;
        }
    }
    if fresh {
        found(&window);
    }
}

/// One character folded (see `fold_in_windows`); `None`: removed.
fn fold(c: char) -> Option<char> {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0),
        '\u{3000}' => Some(' '),
        c if is_dash(c) => Some('-'),
        c if is_hidden(c) => None,
        c => Some(c),
    }
}

/// A dash other than ASCII `-`: hyphens, non-breaking hyphen, figure and en/em dashes,
/// minus signs (the fullwidth one is folded with its block).
fn is_dash(c: char) -> bool {
    matches!(
        c,
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}'
    )
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
        let header = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = request_class(&c, &header(&["public"]), team, &[]).unwrap_or_default();
        assert_eq!(got.map(|g| g.class).as_deref(), Some("internal"));
        let got = request_class(&c, &header(&["pii"]), team, &[]).unwrap_or_default();
        assert_eq!(got.map(|g| g.class).as_deref(), Some("pii"));
        assert!(request_class(&c, &header(&["secret"]), None, &[]).is_err());
        // Several values: the strictest, whatever their order.
        for values in [["public", "pii"], ["pii", "public"]] {
            let got = request_class(&c, &header(&values), None, &[]).unwrap_or_default();
            assert_eq!(got.map(|g| g.class).as_deref(), Some("pii"));
        }
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
        let got = request_class(&c, &["public".to_string()], None, &hits)
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

    #[test]
    fn hidden_characters_compatibility_forms_split_parts_and_keys_do_not_hide_a_match() {
        let c = config();
        for content in [
            json!("ssn 123-45\u{200b}-6789"),
            json!("ssn 123\u{00ad}-45-6789"),
            json!("ssn 123\u{2011}45\u{2011}6789"),
            json!("ssn １２３－４５－６７８９"),
            json!([{"type": "text", "text": "ssn 123-45-"}, {"type": "text", "text": "6789"}]),
        ] {
            let b = body(json!({"messages": [{"role": "user", "content": content}]}));
            assert_eq!(pattern_hits(&c, &b, None).len(), 1, "{content}");
        }
        let in_a_key =
            body(json!({"messages": [{"role": "user", "content": "hi"}], "x": {"123-45-6789": 1}}));
        assert_eq!(pattern_hits(&c, &in_a_key, None).len(), 1);
        let folds = |text: &str| {
            let mut seen = Vec::new();
            fold_in_windows(text, &mut |f: &str| seen.push(f.to_string()));
            seen
        };
        assert!(folds("plain ascii").is_empty());
        assert!(folds("Привет мир").is_empty(), "nothing to fold, no copy");
        assert_eq!(folds("ＡＰＩ\u{200b}＿ＫＥＹ\u{3000}："), ["API_KEY :"]);
        // A long text is folded a window at a time, a match across an edge still whole.
        let long = "\u{200b}".to_string() + &"я".repeat(FOLD_WINDOW) + "１２３－４５－６７８９";
        let windows = folds(&long);
        assert!(windows.len() >= 2);
        assert!(
            windows
                .iter()
                .all(|w| w.len() <= FOLD_WINDOW + FOLD_OVERLAP + 4)
        );
        assert!(windows.last().is_some_and(|w| w.ends_with("123-45-6789")));
    }
}
