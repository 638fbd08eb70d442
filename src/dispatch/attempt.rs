//! One attempt on one backend: the request written for it, sent, and its answer opened
//! (for a stream, up to its first event) or read whole; what went wrong as an `Outcome` for
//! `verdict.rs` to judge; and what of an upstream's error may reach the client.

use super::assemble::{self, completion_to_chunk, is_completion};
use super::body::UpstreamBody;
use super::relay::Relay;
use super::sse::{self, Event};
use super::verdict::{Outcome, parse_retry_after};
use super::{
    Answer, AnswerBody, BLOCKING_SERIALIZE_BYTES, ChatRequest, Dispatcher, MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES,
};
use crate::config::BackendId;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

impl Dispatcher {
    /// One attempt on one backend: the answer, or how it failed. A streamed answer's relay
    /// gets the targets after this one (`rest`) to continue on if the stream breaks, and
    /// holds the backend's in-flight count until the stream ends.
    pub(super) async fn attempt(
        self: &Arc<Self>,
        b: BackendId,
        request: &ChatRequest,
        rest: &[BackendId],
    ) -> Result<Answer, Outcome> {
        let backend = self.config.backend(b);
        let in_flight = self.health[b.0].enter();
        if request.is_stream() || backend.upstream_stream {
            let opened = self.open_stream(b, request, None).await?;
            let pieces = Relay::spawn(
                self.clone(),
                request.clone(),
                b,
                rest.to_vec(),
                opened,
                in_flight,
            );
            return Ok(Answer {
                status: 200,
                content_type: Some("text/event-stream".into()),
                body: AnswerBody::Stream(pieces),
                backend: b,
                attempts: 0,
            });
        }
        // A plain request: only `timeout_ms` bounds it.
        let response = self.send(b, request, None, false).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_body(response, MAX_ANSWER_BYTES).await?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Outcome::Invalid(format!(
                "the body ({}) is not JSON",
                content_type.as_deref().unwrap_or("no content-type")
            ))
        })?;
        if !assemble::is_completion(&json) {
            return Err(match json.get("error").filter(|e| !e.is_null()) {
                Some(_) => Outcome::Invalid("a 2xx answer carrying an `error`".into()),
                None => Outcome::Invalid("the JSON answer has no `choices`".into()),
            });
        }
        if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
            self.record_usage(&self.route_label(request), b, usage);
        }
        drop(in_flight);
        Ok(Answer {
            status: 200,
            content_type: Some("application/json".into()),
            body: AnswerBody::Full(bytes),
            backend: b,
            attempts: 0,
        })
    }

    /// Sends `request` to `b` (with the backend's model, and `prefill` appended) and waits
    /// for a 2xx response's headers. Streams (`stream`) are bounded by the first-byte
    /// timeout and never by `timeout_ms`, which bounds only plain requests.
    async fn send(
        &self,
        b: BackendId,
        request: &ChatRequest,
        prefill: Option<&str>,
        stream: bool,
    ) -> Result<reqwest::Response, Outcome> {
        let backend = self.config.backend(b);
        // Every streamed call asks for usage, so every answer is counted in the metrics.
        let force_stream = stream;
        let size = request.size;
        let payload = if size > BLOCKING_SERIALIZE_BYTES {
            let (client, model) = (request.body.clone(), backend.model.clone());
            let prefill = prefill.map(str::to_string);
            tokio::task::spawn_blocking(move || {
                UpstreamBody {
                    client: &client,
                    model: &model,
                    force_stream,
                    prefill: prefill.as_deref(),
                }
                .to_vec(size)
            })
            .await
            .map_err(|e| Outcome::Connect(format!("writing the request: {e}")))?
        } else {
            UpstreamBody {
                client: &request.body,
                model: &backend.model,
                force_stream,
                prefill,
            }
            .to_vec(size)
        }
        .map_err(|e| Outcome::Connect(format!("writing the request: {e}")))?;
        let mut builder = self.clients[b.0]
            .post(format!("{}/chat/completions", backend.url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload);
        if !stream {
            builder = builder.timeout(backend.timeout);
        }
        if let Some(key) = &self.keys[b.0] {
            builder = builder.bearer_auth(key);
        }
        let started = Instant::now();
        let sent = if stream {
            match tokio::time::timeout(backend.first_byte_timeout, builder.send()).await {
                Err(_) => return Err(Outcome::Silent),
                Ok(sent) => sent,
            }
        } else {
            builder.send().await
        };
        let response = match sent {
            Err(err) if err.is_timeout() => return Err(Outcome::Silent),
            Err(err) => return Err(Outcome::Connect(error_chain(&err.without_url()))),
            Ok(response) => response,
        };
        self.metrics
            .upstream_ttfb(backend.name.as_str(), started.elapsed());
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // An error body that trickles in is not waited for past the idle timeout.
        let body = tokio::time::timeout(
            backend.stream_idle_timeout,
            read_body(response, MAX_ERROR_BYTES),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_vec())
        .unwrap_or_default();
        Err(Outcome::Status {
            status,
            retry_after,
            body,
        })
    }

    /// The body of an upstream error relayed to the client: rebuilt from the upstream's
    /// OpenAI-style `error` object with every string checked for any backend's key (a
    /// message that quotes a key, whole or in part, escaped or not, is withheld); a body
    /// that is not such JSON (compressed, HTML, text) is not relayed.
    pub(super) fn client_error_body(&self, status: u16, body: &[u8]) -> Bytes {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|json| json.get("error"));
        let field = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(|text| self.redact(text))
        };
        let message = match error {
            Some(Value::String(text)) => Some(self.redact(text)),
            _ => field("message"),
        }
        .unwrap_or_else(|| format!("the backend answered HTTP {status}"));
        let mut out = serde_json::json!({"error": {
            "message": message,
            "type": field("type").unwrap_or_else(|| "upstream_error".into()),
            "code": field("code"),
        }});
        if let Some(param) = field("param") {
            out["error"]["param"] = param.into();
        }
        Bytes::from(out.to_string())
    }

    /// `text` from an upstream, or a note that it was withheld because it quotes a key.
    pub(crate) fn redact(&self, text: &str) -> String {
        if self.keys.iter().flatten().any(|key| quotes_key(text, key)) {
            return "[withheld: the backend's message quoted its credential]".into();
        }
        text.to_string()
    }

    /// Sends a request as a stream (with `prefill` appended) and waits for its first event,
    /// both within the first-byte timeout.
    pub(super) async fn open_stream(
        &self,
        b: BackendId,
        request: &ChatRequest,
        prefill: Option<&str>,
    ) -> Result<Opened, Outcome> {
        let backend = self.config.backend(b);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + backend.first_byte_timeout;
        let response = self.send(b, request, prefill, true).await?;
        open(response, deadline, started)
            .await
            .map_err(|outcome| match outcome {
                Outcome::InBand { code, message } => Outcome::InBand {
                    code: code.map(|c| self.redact(&c)),
                    message: self.redact(&message),
                },
                other => other,
            })
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// An upstream answer whose first event has arrived.
pub struct Opened {
    pub(super) upstream: ByteStream,
    pub(super) parser: sse::Parser,
    pub(super) pending: VecDeque<Event>,
    pub(super) started: Instant,
}

/// Waits, until `deadline`, for the first event of a 2xx answer to a streaming request. An
/// answer that is JSON (a provider that did not stream) is taken whole if it is a chat
/// completion; anything else that is not an event stream is a failed attempt.
async fn open(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    started: Instant,
) -> Result<Opened, Outcome> {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let parser = sse::Parser::new();
    match content_type.as_deref() {
        Some(ct) if ct.starts_with("application/json") => {
            let body = tokio::time::timeout_at(deadline, read_limited(response))
                .await
                .map_err(|_| Outcome::Silent)??;
            let json: Value = serde_json::from_slice(&body)
                .map_err(|_| Outcome::Invalid("the JSON answer does not parse".into()))?;
            if let Some(error) = json.get("error").filter(|e| !e.is_null()) {
                return Err(in_band(error));
            }
            if !is_completion(&json) {
                return Err(Outcome::Invalid("the JSON answer has no `choices`".into()));
            }
            let empty: ByteStream = Box::pin(futures_util::stream::empty());
            return Ok(Opened {
                upstream: empty,
                parser,
                pending: VecDeque::from([Event::Chunk(completion_to_chunk(&json)), Event::Done]),
                started,
            });
        }
        Some(ct) if !ct.starts_with("text/event-stream") => {
            return Err(Outcome::Invalid(format!(
                "the answer is `{}`, not an event stream",
                ct.split(';').next().unwrap_or(ct)
            )));
        }
        _ => {}
    }
    let mut opened = Opened {
        upstream: Box::pin(response.bytes_stream()),
        parser,
        pending: VecDeque::new(),
        started,
    };
    let mut events = Vec::new();
    // The opening bytes, in case the "stream" turns out to be one JSON answer.
    let mut opening: Vec<u8> = Vec::new();
    loop {
        for event in events.drain(..) {
            match event {
                Event::Error(json) => return Err(in_band(&json["error"])),
                Event::Done if opened.pending.is_empty() => {
                    return Err(Outcome::Invalid(
                        "the stream ended without an answer".into(),
                    ));
                }
                Event::Malformed(_) => {}
                other => opened.pending.push_back(other),
            }
        }
        if !opened.pending.is_empty() {
            return Ok(opened);
        }
        match tokio::time::timeout_at(deadline, opened.upstream.next()).await {
            Err(_) => return Err(Outcome::Silent),
            Ok(None) => return whole_answer(&opening, opened),
            Ok(Some(Err(err))) => return Err(Outcome::Connect(error_chain(&err.without_url()))),
            Ok(Some(Ok(chunk))) => {
                if opening.len() < OPENING_BYTES {
                    opening.extend_from_slice(
                        &chunk[..chunk.len().min(OPENING_BYTES - opening.len())],
                    );
                }
                if opened.parser.push(&chunk, &mut events).is_err() {
                    return Err(Outcome::Invalid(
                        "an event too large to be an answer".into(),
                    ));
                }
            }
        }
    }
}

/// Bytes of a stream's opening kept to read it as one JSON answer if no event comes.
const OPENING_BYTES: usize = 1024 * 1024;

/// A "stream" that ended before any event: a provider that sent one JSON answer under an
/// event-stream content type is taken at its word if that is a chat completion.
fn whole_answer(opening: &[u8], mut opened: Opened) -> Result<Opened, Outcome> {
    let json: Value = serde_json::from_slice(opening)
        .map_err(|_| Outcome::Invalid("the stream ended before any event".into()))?;
    if let Some(error) = json.get("error").filter(|e| !e.is_null()) {
        return Err(in_band(error));
    }
    if !is_completion(&json) {
        return Err(Outcome::Invalid("the stream ended before any event".into()));
    }
    opened.pending = VecDeque::from([Event::Chunk(completion_to_chunk(&json)), Event::Done]);
    Ok(opened)
}

/// An in-band `error` object as an outcome.
pub(super) fn in_band(error: &Value) -> Outcome {
    let text = |v: &Value| v.as_str().map(str::to_string);
    Outcome::InBand {
        code: text(&error["code"]).or_else(|| text(&error["type"])),
        message: text(&error["message"]).unwrap_or_else(|| error.to_string()),
    }
}

/// Reads a body of at most 16 MiB.
async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, Outcome> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Outcome::Connect(error_chain(&e.without_url())))?;
        if body.len() + chunk.len() > sse::MAX_EVENT_BYTES {
            return Err(Outcome::Invalid("the answer is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `text` (decoded, not JSON-escaped) quotes `key`, whole or a run of 10 of its
/// characters past its first 13 (often a public prefix such as `sk-ant-api03-`).
fn quotes_key(text: &str, key: &str) -> bool {
    const RUN: usize = 10;
    const PREFIX: usize = 13;
    if key.is_empty() {
        return false;
    }
    if text.contains(key) {
        return true;
    }
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < PREFIX + RUN {
        return false;
    }
    (PREFIX..=chars.len() - RUN).any(|i| {
        let run: String = chars[i..i + RUN].iter().collect();
        text.contains(&run)
    })
}

/// Reads a body of at most `limit` bytes.
async fn read_body(response: reqwest::Response, limit: usize) -> Result<Bytes, Outcome> {
    use futures_util::StreamExt;
    let mut body = bytes::BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                Outcome::Silent
            } else {
                Outcome::Connect(format!(
                    "reading the body: {}",
                    error_chain(&e.without_url())
                ))
            }
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Outcome::Invalid(format!(
                "the body is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An error with its causes, for logs (reqwest's top-level message is often just
/// "error sending request").
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
