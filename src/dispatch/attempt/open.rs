//! Reading an upstream's response: a streamed answer up to its first event (or a JSON
//! answer taken whole in its place), a body within a size limit, and every way that goes
//! wrong as an `Outcome`.

use crate::dispatch::assemble::{completion_to_chunk, is_completion};
use crate::dispatch::sse::{self, Event};
use crate::dispatch::verdict::Outcome;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Instant;

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// An upstream answer whose first event has arrived.
pub struct Opened {
    pub(in crate::dispatch) upstream: ByteStream,
    pub(in crate::dispatch) parser: sse::Parser,
    pub(in crate::dispatch) pending: VecDeque<Event>,
    pub(in crate::dispatch) started: Instant,
}

/// Waits, until `deadline`, for the first event of a 2xx answer to a streaming request. An
/// answer that is JSON (a provider that did not stream) is taken whole if it is a chat
/// completion; anything else that is not an event stream is a failed attempt.
pub(super) async fn open(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    started: Instant,
) -> Result<Opened, Outcome> {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    match content_type.as_deref() {
        Some(ct) if ct.starts_with("application/json") => {
            open_json(response, deadline, started).await
        }
        Some(ct) if !ct.starts_with("text/event-stream") => Err(Outcome::Invalid(format!(
            "the answer is `{}`, not an event stream",
            ct.split(';').next().unwrap_or(ct)
        ))),
        _ => {
            let opened = Opened {
                upstream: Box::pin(response.bytes_stream()),
                parser: sse::Parser::new(),
                pending: VecDeque::new(),
                started,
            };
            first_event(opened, deadline).await
        }
    }
}

/// A JSON answer to a streaming request, read whole: its completion as the stream's one
/// chunk, or the failure it carries.
async fn open_json(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    started: Instant,
) -> Result<Opened, Outcome> {
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
    Ok(Opened {
        upstream: Box::pin(futures_util::stream::empty()),
        parser: sse::Parser::new(),
        pending: VecDeque::from([Event::Chunk(completion_to_chunk(&json)), Event::Done]),
        started,
    })
}

/// Reads an event stream until its first event that is part of an answer; an error event
/// or an end before any is a failed attempt.
async fn first_event(
    mut opened: Opened,
    deadline: tokio::time::Instant,
) -> Result<Opened, Outcome> {
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
pub(in crate::dispatch) fn in_band(error: &Value) -> Outcome {
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

/// Reads a body of at most `limit` bytes.
pub(super) async fn read_body(response: reqwest::Response, limit: usize) -> Result<Bytes, Outcome> {
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
pub(in crate::dispatch) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
