//! Relaying a streamed answer (server-sent events) as it arrives. The stream counts as
//! started once its first event arrives within the first-byte timeout; before that, a
//! failure is an ordinary failed attempt and the next target is tried. After it, events are
//! relayed one by one: a malformed event is skipped and logged, a stream that ends without
//! `data: [DONE]` is finished with one, and a stream that is cut or goes silent for
//! `stream_idle_timeout_ms` ends with an SSE error event, never with what looks like a
//! clean end. A client that goes away drops the receiver, which ends the relay task and
//! with it the upstream request.

use super::verdict::Outcome;
use crate::config::Backend;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events buffered between the upstream and the client.
const RELAY_BUFFER: usize = 64;

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

/// Waits for the first event, then relays the rest from a task.
pub async fn start(
    response: reqwest::Response,
    backend: &Backend,
) -> Result<mpsc::Receiver<Bytes>, Outcome> {
    let mut upstream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut ready: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + backend.first_byte_timeout;
    while !ready
        .iter()
        .any(|e| matches!(e, Event::Data(_) | Event::Done))
    {
        match tokio::time::timeout_at(deadline, upstream.next()).await {
            Err(_) => return Err(Outcome::Silent),
            Ok(None) => return Err(Outcome::Connect("the stream ended before any event".into())),
            Ok(Some(Err(err))) => return Err(Outcome::Connect(err.to_string())),
            Ok(Some(Ok(chunk))) => {
                buffer.extend(chunk.iter().filter(|&&b| b != b'\r'));
                ready.extend(take_events(&mut buffer));
            }
        }
    }
    let (tx, rx) = mpsc::channel(RELAY_BUFFER);
    let name = backend.name.clone();
    let idle = backend.stream_idle_timeout;
    tokio::spawn(async move {
        relay(upstream, buffer, ready, tx, &name, idle).await;
    });
    Ok(rx)
}

async fn relay<S>(
    mut upstream: S,
    mut buffer: Vec<u8>,
    first: Vec<Event>,
    tx: mpsc::Sender<Bytes>,
    backend: &str,
    idle: Duration,
) where
    S: futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    let mut pending = first;
    loop {
        for event in pending.drain(..) {
            let out = match event {
                Event::Data(data) => frame(&data),
                Event::Done => {
                    let _ = tx.send(frame("[DONE]")).await;
                    return;
                }
                Event::Malformed(data) => {
                    tracing::warn!(backend, event = %data.chars().take(200).collect::<String>(), "skipping a malformed stream event");
                    continue;
                }
                Event::Empty => continue,
            };
            if tx.send(out).await.is_err() {
                tracing::info!(
                    backend,
                    "the client went away; cancelling the upstream stream"
                );
                return;
            }
        }
        match tokio::time::timeout(idle, upstream.next()).await {
            Ok(Some(Ok(chunk))) => {
                buffer.extend(chunk.iter().filter(|&&b| b != b'\r'));
                pending = take_events(&mut buffer);
            }
            Ok(None) => {
                // Ended without [DONE]: finish promptly rather than leave the client waiting.
                tracing::warn!(backend, "the upstream stream ended without [DONE]");
                let _ = tx.send(frame("[DONE]")).await;
                return;
            }
            Ok(Some(Err(err))) => {
                tracing::warn!(backend, error = %err, "the upstream stream was cut");
                let _ = tx
                    .send(error_event(&format!(
                        "the stream from {backend} was cut: {err}"
                    )))
                    .await;
                return;
            }
            Err(_) => {
                tracing::warn!(backend, "the upstream stream stalled");
                let _ = tx
                    .send(error_event(&format!(
                        "the stream from {backend} stalled for {} ms",
                        idle.as_millis()
                    )))
                    .await;
                return;
            }
        }
    }
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
