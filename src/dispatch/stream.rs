//! Relaying a streamed answer (server-sent events) as it arrives. The stream counts as
//! started once its first event arrives within the first-byte timeout; before that, a
//! failure is an ordinary failed attempt and the next target is tried. After it, events are
//! relayed one by one; a malformed event is skipped and logged; an answer that finished
//! (`finish_reason`) but ends without `data: [DONE]` is closed with one. A stream that is
//! cut or goes silent for `stream_idle_timeout_ms` mid-answer is continued on the next
//! target: the text relayed so far goes as an assistant prefill and only the continuation
//! is relayed; a target that rejects the prefill (400) is asked again without it, and its
//! answer is relayed from where the relayed text ends, if it repeats that text exactly. If
//! nothing can continue, the stream ends with an SSE error event carrying the original
//! failure, never with what looks like a clean end. A client that goes away drops the
//! receiver, which ends the relay task and with it the upstream request.

use super::verdict::Outcome;
use super::{ChatRequest, Dispatcher};
use crate::config::{Backend, BackendId};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events buffered between the upstream and the client.
const RELAY_BUFFER: usize = 64;
/// Bytes of a prefilled continuation's opening compared with the relayed text to tell a
/// continuation from a target that ignored the prefill and started over.
const SNIFF_BYTES: usize = 24;

/// One parsed event.
#[derive(Debug, PartialEq)]
enum Event {
    Data(String),
    Done,
    /// Not JSON, not `[DONE]`: skipped.
    Malformed(String),
    /// Comments and events without data (keep-alives).
    Empty,
}

/// Splits complete events off the front of `buffer` (carriage returns already removed).
fn take_events(buffer: &mut Vec<u8>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
        let raw: Vec<u8> = buffer.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&raw[..end]);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        events.push(match data.as_slice() {
            [] => Event::Empty,
            lines => {
                let data = lines.join("\n");
                if data.trim() == "[DONE]" {
                    Event::Done
                } else if serde_json::from_str::<serde_json::Value>(&data).is_ok() {
                    Event::Data(data)
                } else {
                    Event::Malformed(data)
                }
            }
        });
    }
    events
}

fn frame(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The SSE error event a broken stream ends with.
pub fn error_event(message: &str) -> Bytes {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "upstream_error",
        "code": "stream_interrupted",
    }});
    frame(&body.to_string())
}

/// An upstream stream whose first event has arrived.
pub struct Opened {
    upstream: Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>,
    buffer: Vec<u8>,
    first: Vec<Event>,
}

/// What a relay needs to continue a broken stream on the next targets.
pub struct Continuation {
    pub dispatcher: Arc<Dispatcher>,
    pub request: ChatRequest,
    /// The backend streaming now.
    pub backend: BackendId,
    /// The targets after it, in order.
    pub rest: Vec<BackendId>,
}

/// Waits (up to the first-byte timeout) for the first event of a 2xx streaming response.
pub async fn open(response: reqwest::Response, backend: &Backend) -> Result<Opened, Outcome> {
    let mut upstream: Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>> =
        Box::pin(response.bytes_stream());
    let mut buffer = Vec::new();
    let mut first: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + backend.first_byte_timeout;
    while !first
        .iter()
        .any(|e| matches!(e, Event::Data(_) | Event::Done))
    {
        match tokio::time::timeout_at(deadline, upstream.next()).await {
            Err(_) => return Err(Outcome::Silent),
            Ok(None) => return Err(Outcome::Connect("the stream ended before any event".into())),
            Ok(Some(Err(err))) => return Err(Outcome::Connect(err.to_string())),
            Ok(Some(Ok(chunk))) => {
                buffer.extend(chunk.iter().filter(|&&b| b != b'\r'));
                first.extend(take_events(&mut buffer));
            }
        }
    }
    Ok(Opened {
        upstream,
        buffer,
        first,
    })
}

/// Relays `opened` from a task; the receiver yields SSE frames for the client.
pub fn relay(opened: Opened, continuation: Continuation) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(RELAY_BUFFER);
    tokio::spawn(run(opened, continuation, tx));
    rx
}

/// The assistant text of a chunk, and whether it finishes the answer.
fn delta(data: &str) -> (Option<String>, bool) {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(data) else {
        return (None, false);
    };
    let choice = &json["choices"][0];
    let text = choice["delta"]["content"].as_str().map(str::to_string);
    let finished = choice["finish_reason"].as_str().is_some();
    (text, finished)
}

/// `data` with its first choice's content replaced.
fn with_content(data: &str, content: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(mut json) => {
            json["choices"][0]["delta"]["content"] = content.into();
            json.to_string()
        }
        Err(_) => data.to_string(),
    }
}

/// How the current upstream broke.
enum Break {
    Cut(String),
    Stalled(Duration),
}

async fn run(opened: Opened, ctx: Continuation, tx: mpsc::Sender<Bytes>) {
    let Opened {
        mut upstream,
        mut buffer,
        first,
    } = opened;
    let mut backend = ctx.backend;
    let mut rest = ctx.rest.clone();
    let mut pending: VecDeque<Event> = first.into();
    // The assistant text relayed so far, and (after a restart without prefill) the part of
    // it the new answer must repeat before anything new is relayed.
    let mut relayed = String::new();
    let mut expect: Option<String> = None;
    // After a prefilled continuation: events held back until the answer's opening shows
    // whether the target continued the text or (ignoring the prefill) started over.
    let mut sniff: Option<Vec<(String, String)>> = None;
    let mut finished = false;
    let mut original_failure: Option<String> = None;
    loop {
        let name = ctx.dispatcher.config.backend(backend).name.clone();
        while let Some(event) = pending.pop_front() {
            if let Some(held) = &mut sniff {
                let seen: String = held.iter().map(|(_, t)| t.as_str()).collect();
                let decided = match &event {
                    Event::Data(data) => {
                        let text = delta(data).0.unwrap_or_default();
                        held.push((data.clone(), text));
                        let seen: String = held.iter().map(|(_, t)| t.as_str()).collect();
                        (seen.len() >= relayed.len().min(SNIFF_BYTES)).then_some(seen)
                    }
                    Event::Done => Some(seen),
                    _ => None,
                };
                let Some(seen) = decided else {
                    continue;
                };
                let held = sniff.take().unwrap_or_default();
                let restarted = !seen.is_empty()
                    && (relayed.starts_with(seen.as_str()) || seen.starts_with(relayed.as_str()));
                if restarted {
                    tracing::info!(backend = %name, "the target ignored the prefill and started over; relaying only what is new");
                    expect = Some(relayed.clone()).filter(|e| !e.is_empty());
                }
                // Replay the held events (the current one included) through the normal path.
                let mut replay: VecDeque<Event> = held
                    .into_iter()
                    .map(|(data, _)| Event::Data(data))
                    .collect();
                if matches!(event, Event::Done) {
                    replay.push_back(Event::Done);
                }
                replay.extend(pending.drain(..));
                pending = replay;
                continue;
            }
            let data = match event {
                Event::Data(data) => data,
                Event::Done => {
                    if let Some(missing) = expect.take().filter(|e| !e.is_empty()) {
                        let failure = original_failure.clone().unwrap_or_default();
                        tracing::warn!(backend = %name, missing = missing.len(), "the restarted answer ended before repeating what was relayed");
                        let _ = tx.send(error_event(&failure)).await;
                        return;
                    }
                    let _ = tx.send(frame("[DONE]")).await;
                    return;
                }
                Event::Malformed(data) => {
                    tracing::warn!(backend = %name, event = %data.chars().take(200).collect::<String>(), "skipping a malformed stream event");
                    continue;
                }
                Event::Empty => continue,
            };
            let (text, done) = delta(&data);
            finished |= done;
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&data)
                && let Some(usage) = json.get("usage").filter(|u| u.is_object())
            {
                let route = ctx.dispatcher.route_label(&ctx.request);
                ctx.dispatcher.record_usage(&route, backend, usage);
            }
            let out = match (&mut expect, text) {
                (Some(expected), Some(piece)) => {
                    if expected.starts_with(piece.as_str()) {
                        expected.drain(..piece.len());
                        if expected.is_empty() {
                            expect = None;
                        }
                        continue;
                    } else if let Some(new) = piece.strip_prefix(expected.as_str()) {
                        let new = new.to_string();
                        expect = None;
                        relayed.push_str(&new);
                        with_content(&data, &new)
                    } else {
                        tracing::warn!(backend = %name, "the restarted answer differs from what was relayed");
                        let failure = original_failure.clone().unwrap_or_default();
                        let _ = tx.send(error_event(&failure)).await;
                        return;
                    }
                }
                // Role-only or usage chunks of a restarted answer: nothing new yet.
                (Some(_), None) => continue,
                (None, text) => {
                    relayed.push_str(text.as_deref().unwrap_or(""));
                    data
                }
            };
            if tx.send(frame(&out)).await.is_err() {
                tracing::info!(backend = %name, "the client went away; cancelling the upstream stream");
                return;
            }
        }
        let idle = ctx.dispatcher.config.backend(backend).stream_idle_timeout;
        let next = tokio::select! {
            () = tx.closed() => {
                tracing::info!(backend = %name, "the client went away; cancelling the upstream stream");
                return;
            }
            next = tokio::time::timeout(idle, upstream.next()) => next,
        };
        let broken = match next {
            Ok(Some(Ok(chunk))) => {
                buffer.extend(chunk.iter().filter(|&&b| b != b'\r'));
                pending = take_events(&mut buffer).into();
                continue;
            }
            // A clean end after the answer finished but without [DONE]: finish it promptly.
            Ok(None) if finished && expect.is_none() => {
                tracing::warn!(backend = %name, "the upstream stream ended without [DONE]");
                let _ = tx.send(frame("[DONE]")).await;
                return;
            }
            Ok(None) => Break::Cut("the stream ended mid-answer".into()),
            Ok(Some(Err(err))) => Break::Cut(err.to_string()),
            Err(_) => Break::Stalled(idle),
        };
        let failure = match broken {
            Break::Cut(reason) => format!("the stream from {name} was cut: {reason}"),
            Break::Stalled(idle) => {
                format!("the stream from {name} stalled for {} ms", idle.as_millis())
            }
        };
        tracing::warn!(backend = %name, relayed = relayed.len(), %failure, "continuing on the next target");
        ctx.dispatcher.health(backend).failed(Instant::now());
        let failure = original_failure.get_or_insert(failure).clone();
        match continue_stream(&ctx, &mut rest, &relayed).await {
            Some((next, opened, restarted)) => {
                backend = next;
                upstream = opened.upstream;
                buffer = opened.buffer;
                pending = opened.first.into();
                finished = false;
                expect = restarted.then(|| relayed.clone()).filter(|e| !e.is_empty());
                sniff = (!restarted && !relayed.is_empty()).then(Vec::new);
            }
            None => {
                let _ = tx.send(error_event(&failure)).await;
                return;
            }
        }
    }
}

/// Opens the continuation of an answer on the next usable target: with the relayed text as
/// an assistant prefill, or, if the target rejects that (400), restarted from the start
/// (`true`: the caller must check that it repeats `relayed`).
async fn continue_stream(
    ctx: &Continuation,
    rest: &mut Vec<BackendId>,
    relayed: &str,
) -> Option<(BackendId, Opened, bool)> {
    let class = ctx.request.data_class.as_deref();
    while !rest.is_empty() {
        let b = rest.remove(0);
        let config = &ctx.dispatcher.config;
        if !config.backend(b).accepts(class) || !ctx.dispatcher.usable(b, Instant::now()) {
            continue;
        }
        let mut prefilled = ctx.request.body.clone();
        if !relayed.is_empty()
            && let Some(serde_json::Value::Array(messages)) = prefilled.get_mut("messages")
        {
            messages.push(serde_json::json!({"role": "assistant", "content": relayed}));
        }
        match ctx.dispatcher.open_stream(b, &prefilled).await {
            Ok(opened) => return Some((b, opened, false)),
            Err(Outcome::Status { status: 400, .. }) if !relayed.is_empty() => {
                tracing::info!(backend = %config.backend(b).name, "the prefill was rejected; restarting without it");
                if let Ok(opened) = ctx.dispatcher.open_stream(b, &ctx.request.body).await {
                    return Some((b, opened, true));
                }
            }
            Err(outcome) => {
                tracing::warn!(backend = %config.backend(b).name, outcome = %outcome.describe(), "cannot continue the stream here");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_parsed_and_classified() {
        let mut buffer =
            b"data: {\"a\":1}\n\n: keep-alive\n\ndata: not json\n\ndata: [DONE]\n\ndata: {\"b\""
                .to_vec();
        let events = take_events(&mut buffer);
        assert_eq!(
            events,
            [
                Event::Data("{\"a\":1}".into()),
                Event::Empty,
                Event::Malformed("not json".into()),
                Event::Done
            ]
        );
        assert_eq!(
            buffer, b"data: {\"b\"",
            "an incomplete event waits for more bytes"
        );
    }

    #[test]
    fn the_error_event_is_json_with_an_error_object() {
        let event = error_event("cut");
        let text = std::str::from_utf8(&event).unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(text.trim().trim_start_matches("data: ")).unwrap_or_default();
        assert_eq!(json["error"]["message"], "cut");
    }
}
