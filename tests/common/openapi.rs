//! Every answer a test receives, checked against the app's OpenAPI description: the path and
//! method must be documented (or be the documented 404/405 fallback), the status listed for
//! that operation, the content type listed for that status, and a JSON body valid against
//! its schema. The shared `send` helpers call `check` on every answer they read.
//!
//! The check is stricter than the document in one way: an object schema that lists its
//! `properties` and says nothing of others is read as allowing no others, so a key the
//! answer carries and the description omits fails too. Schemas that pass keys through (the
//! relayed OpenAI shapes) say so with `additionalProperties`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::http::{HeaderMap, Method, StatusCode, header};
use jsonschema::Validator;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use utoipa::OpenApi;

/// When set, each checked answer appends a line (`METHOD path status type`) to this file, so
/// a whole run's checks can be counted.
pub const LOG_VAR: &str = "SEMROUTE_OPENAPI_LOG";

/// The description the app serves at `GET /openapi.json`, as JSON.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| serde_json::to_value(semroute::http::openapi::ApiDoc::openapi()).unwrap())
}

/// `check` for an answer read through the `http` types (axum's or reqwest's).
pub fn check_http(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("an ASCII content type"));
    check(method.as_str(), path, status.as_u16(), content_type, body);
}

/// `check` for an answer whose body a test holds open (a stream): the status and the
/// content type only.
pub fn check_head(method: &str, path: &str, response: &axum::response::Response) {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("an ASCII content type"));
    let media = media_type(content_type).unwrap_or_default();
    assert!(
        !is_json(&media),
        "{method} {path}: only a stream may be held open, not `{media}`"
    );
    check(method, path, response.status().as_u16(), content_type, &[]);
}

/// Panics unless the answer (`status`, `content_type`, `body`) to `method path` is one the
/// description documents. `path` is concrete (`/v1/models/auto?x=1`) or a template.
pub fn check(method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    let path = path.split('?').next().unwrap_or(path);
    let what = format!("{method} {path} answered {status}");
    let Some((template, item)) = path_item(path) else {
        assert_eq!(status, 404, "{what}, but the path is not documented");
        return fallback_error(&what, content_type, body, "not_found");
    };
    let Some(operation) = item.get(method.to_ascii_lowercase()) else {
        assert_eq!(
            status, 405,
            "{what}, but {method} {template} is not documented"
        );
        return fallback_error(&what, content_type, body, "method_not_allowed");
    };
    let responses = &operation["responses"];
    let range = format!("{}XX", status / 100);
    let Some(response) = responses
        .get(status.to_string())
        .or_else(|| responses.get(&range))
    else {
        let listed: Vec<&String> = responses.as_object().unwrap().keys().collect();
        panic!(
            "{what}: status {status} is not documented for {method} {template} (it lists {listed:?}); body: {}",
            String::from_utf8_lossy(body)
        );
    };
    let response = resolve(response);
    let media = media_type(content_type);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            body.is_empty(),
            "{what} with a body, but the description gives none"
        );
        return log(method, template, status, "-");
    };
    let media = media.unwrap_or_else(|| panic!("{what} without a content type"));
    let Some(entry) = content.get(&media) else {
        let listed: Vec<&String> = content.keys().collect();
        panic!("{what} as `{media}`, but {method} {template} {status} documents {listed:?}");
    };
    if is_json(&media) {
        let key = format!("{method} {template} {status} {media}");
        validate(&key, &entry["schema"], body, &what);
    }
    log(method, template, status, &media);
}

/// The documented path `path` falls under, and its path item.
fn path_item(path: &str) -> Option<(&'static str, &'static Value)> {
    let paths = document()["paths"].as_object().unwrap();
    paths
        .iter()
        .find(|(template, _)| matches(template, path))
        .map(|(template, item)| (template.as_str(), item))
}

/// Whether a concrete path fits a template: a `{param}` segment takes one segment, or the
/// rest of the path when it is the last (`/v1/models/{id}` is a wildcard route: model ids
/// may hold `/`).
pub fn matches(template: &str, path: &str) -> bool {
    let wanted: Vec<&str> = template.split('/').collect();
    let given: Vec<&str> = path.split('/').collect();
    for (i, part) in wanted.iter().enumerate() {
        let is_param = part.starts_with('{') && part.ends_with('}');
        let Some(seen) = given.get(i) else {
            return false;
        };
        if is_param && i + 1 == wanted.len() {
            return !given[i..].join("/").is_empty();
        }
        if (is_param && seen.is_empty()) || (!is_param && part != seen) {
            return false;
        }
    }
    wanted.len() == given.len()
}

/// A response object, following a `$ref` to `#/components/responses/...`.
fn resolve(response: &'static Value) -> &'static Value {
    match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => pointer(reference),
        None => response,
    }
}

fn pointer(reference: &str) -> &'static Value {
    let at = reference.strip_prefix('#').unwrap_or(reference);
    document()
        .pointer(at)
        .unwrap_or_else(|| panic!("`{reference}` does not resolve in the description"))
}

/// The unknown path's 404 and the unknown method's 405: the error body, with `code`.
fn fallback_error(what: &str, content_type: Option<&str>, body: &[u8], code: &str) {
    let media = media_type(content_type).unwrap_or_default();
    assert_eq!(media, "application/json", "{what}: the error is JSON");
    let schema = json!({"$ref": "#/components/schemas/ErrorBody"});
    validate("fallback", &schema, body, what);
    let parsed: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(parsed["error"]["code"], code, "{what}: {parsed}");
    log(
        "*",
        "(fallback)",
        if code == "not_found" { 404 } else { 405 },
        &media,
    );
}

fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_ascii_lowercase())
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// Validates `body` against `schema` (whose `$ref`s point into the description's
/// components), compiling each schema once.
fn validate(key: &str, schema: &Value, body: &[u8], what: &str) {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<Validator>>>> = OnceLock::new();
    let cache = VALIDATORS.get_or_init(Mutex::default);
    let known = cache.lock().unwrap().get(key).cloned();
    // Compiled outside the lock: a schema that does not compile fails this test alone.
    let validator = known.unwrap_or_else(|| {
        let compiled = Arc::new(compile(schema));
        cache
            .lock()
            .unwrap()
            .insert(key.to_string(), compiled.clone());
        compiled
    });
    let instance: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: the body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("  at `{}`: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the body does not match its documented schema:\n{}\nbody: {instance}",
        errors.join("\n")
    );
}

/// One schema document: the response's schema with the description's components beside it,
/// so `#/components/schemas/...` resolves, every object made strict (see the top).
pub fn compile(schema: &Value) -> Validator {
    let mut root = match schema {
        Value::Object(map) => map.clone(),
        other => Map::from_iter([("allOf".to_string(), json!([other]))]),
    };
    root.insert("components".into(), document()["components"].clone());
    let mut root = Value::Object(root);
    strict(&mut root);
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e}\n{root}"))
}

/// Adds `additionalProperties: false` to every object schema that lists `properties` and
/// does not say what else it allows.
pub fn strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                // Property names and examples are data, not schemas.
                if key != "example" && key != "examples" && key != "default" {
                    strict(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

fn log(method: &str, template: &str, status: u16, media: &str) {
    let Some(file) = std::env::var_os(LOG_VAR) else {
        return;
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    // One write per line: test threads append to the file together.
    out.write_all(format!("{method} {template} {status} {media}\n").as_bytes())
        .unwrap();
}

/// Reads a served answer whole (a real socket, through reqwest) and checks it; `method` is
/// the request's.
pub async fn read(method: &str, response: reqwest::Response) -> (StatusCode, HeaderMap, Vec<u8>) {
    let path = response.url().path().to_string();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap());
    check(method, &path, status.as_u16(), content_type, &body);
    (status, headers, body)
}

/// `read`, for an answer that must be JSON.
pub async fn read_json(method: &str, response: reqwest::Response) -> Value {
    let (status, _, body) = read(method, response).await;
    serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&body)))
}

/// Sends `request` through `app` (`oneshot`, no socket), reads the answer whole and checks it.
pub async fn oneshot(
    app: axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (StatusCode, HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    check_http(&method, &path, status, &headers, &body);
    (status, headers, body)
}

/// `check` for an HTTP/1.1 answer read off a raw socket (status line, headers, body of
/// `content-length` bytes or chunked); a body cut short is checked for its head only.
pub fn check_raw(method: &str, path: &str, raw: &str) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no whole head: {raw}"));
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    let headers: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let content_type = find("content-type");
    let body = match (find("content-length"), find("transfer-encoding")) {
        (Some(length), _) => body
            .get(..length.parse::<usize>().unwrap())
            .map(str::to_string),
        (None, Some(chunked)) if chunked.eq_ignore_ascii_case("chunked") => dechunk(body),
        _ => Some(body.to_string()),
    };
    match body {
        Some(body) => check(method, path, status, content_type, body.as_bytes()),
        None => {
            assert!(
                !is_json(&media_type(content_type).unwrap_or_default()),
                "{raw}"
            );
            check(method, path, status, content_type, &[]);
        }
    }
}

/// A chunked body put together (`None` when it was cut short).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// Reads a served answer whole and checks it, then gives it back as it was, for callers that
/// read it themselves (`method` is the request's). A stream is left unread, for the caller
/// to hold open or drop: its status and content type are checked.
pub async fn checked(method: &str, response: reqwest::Response) -> reqwest::Response {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let media = media_type(content_type.as_deref()).unwrap_or_default();
    if media == "text/event-stream" {
        let status = response.status().as_u16();
        check(
            method,
            response.url().path(),
            status,
            content_type.as_deref(),
            &[],
        );
        return response;
    }
    let (status, headers, body) = read(method, response).await;
    let mut rebuilt = axum::http::Response::new(body);
    *rebuilt.status_mut() = status;
    *rebuilt.headers_mut() = headers;
    reqwest::Response::from(rebuilt)
}
