//! The stream relay: one task per streamed answer that takes an upstream's events and hands
//! the client (or the assembler of a non-streaming answer) chunks it can trust.
//!
//! What it guarantees, per choice of the answer:
//! - every kind of delta is tracked: content, refusal and reasoning text, tool calls, role;
//! - tool-call deltas are held back until their choice finishes and then sent whole, so a
//!   stream cut in the middle of a call never delivers a half or a doubled call;
//! - nothing is relayed twice: after a break, the answer continues on the next target with
//!   the relayed text as an assistant prefill (one choice, content only), or restarts there
//!   and is relayed only from where the relayed text ends, if it repeats that text exactly;
//!   a target that accepted the prefill but started over is caught from its opening;
//! - a break is a cut connection, a stall of `stream_idle_timeout_ms`, an error event in
//!   the stream, or `max_stream_ms` when set; a stream that keeps sending is never cut;
//! - when nothing can continue, the end is `Piece::Failed` with the original failure, never
//!   a clean `[DONE]`; a client that goes away ends the task and with it the upstream call;
//! - the in-flight count of the backend streaming is held until the stream ends.

mod choice;
pub mod client;
mod resume;

use super::attempt::{Opened, error_chain, in_band};
use super::health::InFlight;
use super::sse::Event;
use super::{ChatRequest, Dispatcher};
use crate::config::BackendId;
use bytes::Bytes;
use choice::{Choice, MAX_CHOICES, Rewritten, delta_size, index_of, tools_choice};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Pieces buffered between the relay and the client.
const RELAY_BUFFER: usize = 64;
/// The largest answer taken (text and tool calls of every choice, held or relayed): an
/// upstream that never stops cannot grow memory without limit.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of a prefilled continuation's opening compared with the relayed text to tell a
/// continuation from a target that ignored the prefill and started over.
const SNIFF_BYTES: usize = 24;

/// What the relay hands on, in order; the last is `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Chunk(Value),
    /// The answer is complete; `backend` sent its end.
    Done {
        backend: BackendId,
    },
    /// The answer broke and nothing could continue it: the original failure.
    Failed(String),
}

/// What the next event meant.
enum Step {
    Go,
    Done,
    /// The upstream broke: continue elsewhere.
    Break(String),
    /// The continuation cannot be stitched on: end with the original failure.
    Fatal(String),
    /// The answer cannot go on at all (it grew past the size limit): end with this.
    Abort(String),
}

/// A streamed answer in progress.
pub struct Relay {
    dispatcher: Arc<Dispatcher>,
    request: ChatRequest,
    backend: BackendId,
    /// Targets after this one, in order.
    rest: Vec<BackendId>,
    in_flight: Option<InFlight>,
    upstream: Opened,
    /// The first upstream's completion id, kept for the whole answer.
    id: Option<Value>,
    choices: BTreeMap<u64, Choice>,
    /// Choices the client asked for (`n`).
    expected: usize,
    /// After a prefilled continuation: chunks held until the opening shows whether the
    /// target continued the text or started over.
    sniff: Option<Vec<Value>>,
    original_failure: Option<String>,
    /// Bytes of text and tool calls taken into the answer so far (relayed or held).
    size: usize,
    /// Whether usage chunks go on to the client (it asked, or the answer is reassembled).
    usage_for_client: bool,
    out: client::ClientSide,
}

impl Relay {
    /// Starts relaying `opened` (from `backend`) in a task; the receiver yields the pieces.
    pub fn spawn(
        dispatcher: Arc<Dispatcher>,
        request: ChatRequest,
        backend: BackendId,
        rest: Vec<BackendId>,
        opened: Opened,
        in_flight: InFlight,
    ) -> mpsc::Receiver<Piece> {
        let (tx, rx) = mpsc::channel(RELAY_BUFFER);
        let out = client::ClientSide::new(tx, dispatcher.client_stall());
        let usage_for_client = !request.is_stream()
            || request
                .body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                == Some(&Value::Bool(true));
        let expected = request
            .body
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, MAX_CHOICES) as usize;
        let relay = Relay {
            dispatcher,
            request,
            backend,
            rest,
            in_flight: Some(in_flight),
            upstream: opened,
            id: None,
            choices: BTreeMap::new(),
            expected,
            sniff: None,
            original_failure: None,
            size: 0,
            usage_for_client,
            out,
        };
        tokio::spawn(relay.run());
        rx
    }

    fn name(&self) -> String {
        self.dispatcher.config.backend(self.backend).name.clone()
    }

    async fn run(mut self) {
        self.relay_all().await;
        // An answer whose usage never came (the client left, the stream broke) is charged
        // for what was relayed, so ending early is never free.
        self.dispatcher
            .charge_relayed(&self.request, self.backend, self.size);
    }

    async fn relay_all(&mut self) {
        let mut shutdown = self.dispatcher.streams.closing.subscribe();
        loop {
            let mut broken = None;
            while let Some(event) = self.upstream.pending.pop_front() {
                match self.step(event).await {
                    Step::Go => {}
                    Step::Done => {
                        self.flush_tools().await;
                        let _ = self
                            .out
                            .send(Piece::Done {
                                backend: self.backend,
                            })
                            .await;
                        return;
                    }
                    Step::Break(reason) => {
                        broken = Some(reason);
                        break;
                    }
                    Step::Fatal(reason) => {
                        tracing::warn!(backend = %self.name(), %reason, "the continuation cannot be relayed");
                        let failure = self.original_failure.clone().unwrap_or(reason);
                        let _ = self.out.send(Piece::Failed(failure)).await;
                        return;
                    }
                    Step::Abort(reason) => {
                        tracing::warn!(backend = %self.name(), %reason, "ending the answer");
                        let _ = self.out.send(Piece::Failed(reason)).await;
                        return;
                    }
                }
                if self.out.is_closed() {
                    return self.client_left();
                }
            }
            if broken.is_none() {
                broken = match self.read(&mut shutdown).await {
                    Read::More => None,
                    Read::Ended => Some("the stream ended mid-answer".to_string()),
                    Read::Broken(reason) => Some(reason),
                    Read::ClientLeft => return self.client_left(),
                    Read::ShuttingDown => {
                        let _ = self
                            .out
                            .send(Piece::Failed(
                                "semroute is shutting down; the answer was cut short".into(),
                            ))
                            .await;
                        return;
                    }
                };
            }
            if let Some(reason) = broken
                && !self.recover(reason).await
            {
                return;
            }
        }
    }

    fn client_left(&self) {
        tracing::info!(backend = %self.name(), "the client went away; cancelling the upstream stream");
    }

    /// Reads the next bytes from upstream into `pending`.
    async fn read(&mut self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Read {
        let backend = self.dispatcher.config.backend(self.backend);
        let idle = backend.stream_idle_timeout;
        let limit = backend.max_stream.map(|max| self.upstream.started + max);
        let over_time = async {
            match limit {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            () = self.out.closed() => return Read::ClientLeft,
            _ = shutdown.wait_for(|closing| *closing) => return Read::ShuttingDown,
            () = over_time => {
                return Read::Broken(format!(
                    "the stream from {} ran longer than max_stream_ms",
                    backend.name
                ));
            }
            next = tokio::time::timeout(idle, self.upstream.upstream.next()) => next,
        };
        match next {
            Ok(Some(Ok(chunk))) => {
                let mut events = Vec::new();
                if self.upstream.parser.push(&chunk, &mut events).is_err() {
                    return Read::Broken(format!(
                        "the stream from {} sent an event too large to be an answer",
                        backend.name
                    ));
                }
                self.upstream.pending.extend(events);
                Read::More
            }
            Ok(None) => Read::Ended,
            Ok(Some(Err(err))) => Read::Broken(format!(
                "the stream from {} was cut: {}",
                backend.name,
                error_chain(&err.without_url())
            )),
            Err(_) => Read::Broken(format!(
                "the stream from {} stalled for {} ms",
                backend.name,
                idle.as_millis()
            )),
        }
    }

    async fn step(&mut self, event: Event) -> Step {
        match event {
            Event::Malformed(data) => {
                tracing::warn!(backend = %self.name(), event = %data.chars().take(200).collect::<String>(), "skipping a malformed stream event");
                Step::Go
            }
            Event::Error(json) => Step::Break(format!(
                "the stream from {} carried an error event: {}",
                self.name(),
                self.dispatcher
                    .upstreams
                    .redact(&in_band(&json["error"]).describe())
            )),
            Event::Done => {
                if let Some(held) = self.sniff.take() {
                    return self.release_sniffed(held, true).await;
                }
                if self.choices.values().any(|c| !c.replay_complete()) {
                    return Step::Fatal(
                        "the restarted answer ended before repeating what was relayed".into(),
                    );
                }
                Step::Done
            }
            Event::Chunk(chunk) => {
                if let Some(held) = &mut self.sniff {
                    let finishes = chunk["choices"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| !c["finish_reason"].is_null()));
                    held.push(chunk);
                    let seen: usize = held
                        .iter()
                        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                        .map(str::len)
                        .sum();
                    let relayed = self.relayed_content().len();
                    if seen >= relayed.min(SNIFF_BYTES) || finishes {
                        let held = self.sniff.take().unwrap_or_default();
                        return self.release_sniffed(held, false).await;
                    }
                    return Step::Go;
                }
                self.relay_chunk(chunk).await
            }
        }
    }

    fn relayed_content(&self) -> &str {
        self.choices
            .get(&0)
            .and_then(|c| c.texts.get("content"))
            .map_or("", String::as_str)
    }

    /// Decides, from a prefilled continuation's opening, whether it continued the text or
    /// started over, then relays the held chunks (and `[DONE]` if that came).
    async fn release_sniffed(&mut self, held: Vec<Value>, done: bool) -> Step {
        let seen: String = held
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        let relayed = self.relayed_content().to_string();
        let restarted =
            !seen.is_empty() && (relayed.starts_with(&seen) || seen.starts_with(&relayed));
        if restarted {
            tracing::info!(backend = %self.name(), "the target ignored the prefill and started over; relaying only what is new");
            if let Some(choice) = self.choices.get_mut(&0) {
                choice.replay = Some(BTreeMap::new());
            }
        }
        for chunk in held {
            match self.relay_chunk(chunk).await {
                Step::Go => {}
                other => return other,
            }
        }
        if done {
            return Box::pin(self.step(Event::Done)).await;
        }
        Step::Go
    }

    /// Rewrites one upstream chunk (see the module comment) and sends what is new.
    async fn relay_chunk(&mut self, mut chunk: Value) -> Step {
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.dispatcher
                .record_usage(&self.request, self.backend, usage);
        }
        // Usage is always asked for upstream; a streaming client gets it only if it asked.
        if !self.usage_for_client
            && let Value::Object(fields) = &mut chunk
        {
            fields.remove("usage");
        }
        match &self.id {
            Some(id) => chunk["id"] = id.clone(),
            None => self.id = chunk.get("id").cloned(),
        }
        let mut before = Vec::new();
        let mut kept = Vec::new();
        let choices = match chunk.get_mut("choices").map(Value::take) {
            Some(Value::Array(choices)) => choices,
            _ => Vec::new(),
        };
        for (position, c) in choices.into_iter().enumerate() {
            let Some(index) = index_of(&c, position, MAX_CHOICES) else {
                tracing::warn!(backend = %self.name(), index = %c["index"], "skipping a choice with an invalid index");
                continue;
            };
            self.size += delta_size(&c["delta"]);
            if self.size > MAX_ANSWER_BYTES {
                return Step::Abort(format!(
                    "the answer from {} grew past {} MiB",
                    self.dispatcher.config.backend(self.backend).name,
                    MAX_ANSWER_BYTES >> 20
                ));
            }
            match self.choices.entry(index).or_default().rewrite(index, c) {
                Ok(Rewritten { calls, choice }) => {
                    before.extend(calls);
                    kept.extend(choice);
                }
                Err(reason) => return Step::Fatal(reason),
            }
        }
        if !before.is_empty() {
            let mut calls = chunk.clone();
            calls["choices"] = Value::Array(before);
            if let Value::Object(calls) = &mut calls {
                calls.remove("usage");
            }
            if self.out.send(Piece::Chunk(calls)).await.is_err() {
                return Step::Go;
            }
        }
        let has_usage = chunk.get("usage").is_some_and(Value::is_object);
        if kept.is_empty() && !has_usage {
            return Step::Go;
        }
        chunk["choices"] = Value::Array(kept);
        let _ = self.out.send(Piece::Chunk(chunk)).await;
        Step::Go
    }

    /// Sends tool calls still held when the answer ends without finishing their choice.
    async fn flush_tools(&mut self) {
        let held: Vec<Value> = self
            .choices
            .iter_mut()
            .filter(|(_, c)| !c.tools.is_empty())
            .map(|(&index, c)| tools_choice(index, &std::mem::take(&mut c.tools)))
            .collect();
        if held.is_empty() {
            return;
        }
        let chunk = json!({
            "id": self.id.clone().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "choices": held,
        });
        let _ = self.out.send(Piece::Chunk(chunk)).await;
    }

    fn all_finished(&self) -> bool {
        self.choices.len() >= self.expected && self.choices.values().all(|c| c.finished)
    }
}

enum Read {
    More,
    Ended,
    Broken(String),
    ClientLeft,
    ShuttingDown,
}

/// Frames a piece for a streaming client.
pub fn frame(piece: &Piece) -> Bytes {
    match piece {
        Piece::Chunk(chunk) => Bytes::from(format!("data: {chunk}\n\n")),
        Piece::Done { .. } => Bytes::from_static(b"data: [DONE]\n\n"),
        Piece::Failed(message) => error_event(message),
    }
}

/// The SSE error event a broken stream ends with.
pub fn error_event(message: &str) -> Bytes {
    let body = json!({"error": {
        "message": message,
        "type": "upstream_error",
        "code": "stream_interrupted",
    }});
    Bytes::from(format!("data: {body}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_event_is_json_with_an_error_object() {
        let event = error_event("cut");
        let text = std::str::from_utf8(&event).unwrap_or_default();
        let json: Value =
            serde_json::from_str(text.trim().trim_start_matches("data: ")).unwrap_or_default();
        assert_eq!(json["error"]["message"], "cut");
    }
}
