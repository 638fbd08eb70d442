//! What makes two requests the same for the cache: their canonical JSON (keys sorted at
//! every level) without what does not change the answer (`stream`, `stream_options`,
//! `user`) and with `model` replaced by where routing sent them (the route or backend, and
//! an experiment's variant), inside a partition of the client key and the data class, so
//! no answer ever crosses from one key or class to another.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The fields left out of the key: they change how the answer is delivered or who it is
/// counted to, not what it says.
const NOT_IN_KEY: [&str; 4] = ["stream", "stream_options", "user", "model"];

/// Where a request went and whose it is: requests in different scopes never share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The client key's name (`None`: no key).
    pub key: Option<&'a str>,
    pub data_class: Option<&'a str>,
    /// The route's or backend's name.
    pub destination: &'a str,
    /// The experiment variant the request was assigned.
    pub variant: Option<&'a str>,
}

/// The exact key of `body` in `scope`.
pub fn exact(body: &Map<String, Value>, scope: &Scope<'_>) -> [u8; 32] {
    digest("exact", body, scope, false)
}

/// The semantic bucket of `body` in `scope`: the same request but for the text of its last
/// user message (which the embeddings compare).
pub fn bucket(body: &Map<String, Value>, scope: &Scope<'_>) -> [u8; 32] {
    digest("semantic", body, scope, true)
}

fn digest(kind: &str, body: &Map<String, Value>, scope: &Scope<'_>, blank_last: bool) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [
        kind,
        scope.key.unwrap_or(""),
        scope.data_class.unwrap_or(""),
        scope.destination,
        scope.variant.unwrap_or(""),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let mut text = Vec::with_capacity(256);
    let last_user = blank_last.then(|| last_user_message(body)).flatten();
    write_body(body, last_user, &mut text);
    hasher.update(&text);
    hasher.finalize().into()
}

/// The index of the last message with role `user`.
fn last_user_message(body: &Map<String, Value>) -> Option<usize> {
    body.get("messages")?
        .as_array()?
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"))
}

/// The body's canonical text, without `NOT_IN_KEY` and with the content of message
/// `blank` (if any) left out.
fn write_body(body: &Map<String, Value>, blank: Option<usize>, out: &mut Vec<u8>) {
    let keep = |k: &str| !NOT_IN_KEY.contains(&k);
    write_object(body, keep, out, |key, value, out| {
        match (key, value, blank) {
            ("messages", Value::Array(messages), Some(blank)) => {
                write_array(messages, out, |j, message, out| match message {
                    Value::Object(m) if j == blank => {
                        write_object(m, |k| k != "content", out, |_, v, out| canonical(v, out));
                    }
                    other => canonical(other, out),
                });
            }
            _ => canonical(value, out),
        }
    });
}

/// `value` as JSON with every object's keys sorted.
pub fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object(map, |_| true, out, |_, v, out| canonical(v, out)),
        Value::Array(items) => write_array(items, out, |_, item, out| canonical(item, out)),
        scalar => {
            // Numbers, strings, booleans and null have one serialization.
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// The entries of `map` that `keep` keeps, keys sorted, each value written by `value`.
fn write_object(
    map: &Map<String, Value>,
    keep: impl Fn(&str) -> bool,
    out: &mut Vec<u8>,
    mut value: impl FnMut(&str, &Value, &mut Vec<u8>),
) {
    let mut keys: Vec<&String> = map.keys().filter(|k| keep(k)).collect();
    keys.sort();
    out.push(b'{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        value(key, &map[key], out);
    }
    out.push(b'}');
}

/// `items`, each written by `item` (with its position).
fn write_array(
    items: &[Value],
    out: &mut Vec<u8>,
    mut item: impl FnMut(usize, &Value, &mut Vec<u8>),
) {
    out.push(b'[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(i, v, out);
    }
    out.push(b']');
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    const SCOPE: Scope<'static> = Scope {
        key: Some("team-a"),
        data_class: None,
        destination: "support",
        variant: None,
    };

    #[test]
    fn order_stream_user_and_model_do_not_matter_parameters_do() {
        let a = body(
            json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}),
        );
        let b = body(
            json!({"messages": [{"content": "hi", "role": "user"}], "temperature": 0, "stream": true, "user": "u9", "model": "support"}),
        );
        assert_eq!(exact(&a, &SCOPE), exact(&b, &SCOPE));
        let c = body(
            json!({"temperature": 0, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_ne!(exact(&a, &SCOPE), exact(&c, &SCOPE));
        let d = body(json!({"temperature": 0, "messages": [{"role": "user", "content": "hi!"}]}));
        assert_ne!(exact(&a, &SCOPE), exact(&d, &SCOPE));
    }

    #[test]
    fn keys_classes_destinations_and_variants_never_share() {
        let a = body(json!({"temperature": 0, "messages": [{"role": "user", "content": "hi"}]}));
        let base = exact(&a, &SCOPE);
        for other in [
            Scope {
                key: Some("team-b"),
                ..SCOPE
            },
            Scope { key: None, ..SCOPE },
            Scope {
                data_class: Some("pii"),
                ..SCOPE
            },
            Scope {
                destination: "billing",
                ..SCOPE
            },
            Scope {
                variant: Some("big"),
                ..SCOPE
            },
        ] {
            assert_ne!(exact(&a, &other), base, "{other:?}");
        }
    }

    #[test]
    fn the_bucket_leaves_out_only_the_last_user_text() {
        let a = body(
            json!({"temperature": 0, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reset my password"}]}),
        );
        let b = body(
            json!({"temperature": 0, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how do I reset my password"}]}),
        );
        assert_eq!(bucket(&a, &SCOPE), bucket(&b, &SCOPE));
        assert_ne!(exact(&a, &SCOPE), exact(&b, &SCOPE));
        let c = body(
            json!({"temperature": 0, "messages": [{"role": "system", "content": "be verbose"}, {"role": "user", "content": "reset my password"}]}),
        );
        assert_ne!(bucket(&a, &SCOPE), bucket(&c, &SCOPE));
    }
}
