//! A real mock OpenAI-compatible upstream on 127.0.0.1 (random port), written on a bare TCP
//! listener so it can misbehave exactly as providers do: answer, answer an error status
//! (with or without `Retry-After`), reset the connection, stay silent, send headers and
//! stall, stream and then cut off, stall, send a malformed event, an error event or omit
//! `[DONE]`, answer slowly (a long answer, streamed at a steady pace or sent whole at the
//! end), cut a tool call mid-arguments, answer 200 with an HTML page, or refuse its key
//! and echo it back. It records every request it receives. Here: the behaviours and the
//! handle; `serve.rs` reads a request and picks its behaviour, `behaviours.rs` plays it,
//! `wire.rs` writes HTTP and SSE on the socket.
#![allow(dead_code)]

mod behaviours;
mod serve;
mod wire;

use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// What the upstream does with one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with a completion (streamed when the request asks for it).
    Answer,
    /// An error status with an OpenAI-style body.
    Status {
        status: u16,
        retry_after: Option<String>,
        code: &'static str,
    },
    /// Reset the connection without a byte.
    Reset,
    /// Never answer.
    Silent,
    /// Send 200 headers of a stream, then nothing.
    HeadersThenStall,
    /// Stream these content pieces, then end as `end` says.
    Stream {
        pieces: Vec<&'static str>,
        end: StreamEnd,
    },
    /// Answer after this long.
    Slow(Duration),
    /// Stream `text` in 4-character pieces. A request ending in an assistant message (a
    /// prefill) gets the rest of `text` after it when `prefill` is true, a 400 otherwise.
    Text { text: &'static str, prefill: bool },
    /// Stream `text` from its start whatever the request holds (a provider that accepts a
    /// prefill but answers from scratch).
    TextIgnoringPrefill(&'static str),
    /// A long answer, `text` in words, one every `every`. Asked to stream, it sends a first
    /// (empty) event at once and then the words at that pace; asked for a plain answer, it
    /// sends nothing until the whole answer is written, as OpenAI-compatible servers do.
    Paced { text: &'static str, every: Duration },
    /// Stream a call of the tool `get_weather` (arguments [`TOOL_ARGUMENTS`]) in pieces;
    /// `cut`: close the connection in the middle of the arguments.
    ToolCall { cut: bool },
    /// 200 with `content-type: text/html` and an HTML page (a proxy or a login wall in
    /// front of the provider), whatever the request asked for.
    Html,
    /// This status (401, 403 ...) with an error that quotes the key the request carried,
    /// in the body and in an `x-echo-authorization` header, as some providers do.
    EchoKey(u16),
    /// Stream these chunks as they are, then `[DONE]`, whatever the request asked for.
    Events(Vec<Value>),
    /// 307 to this URL (a provider, or something in front of it, sending the request on).
    Redirect(String),
    /// A stream whose first event is an error quoting the key the request carried.
    EchoKeyEvent,
    /// This status with an error quoting the key with its `-` escaped as `\u002d` in the JSON.
    EchoKeyEscaped(u16),
    /// Stream 64 KiB content deltas without end.
    Endless,
}

/// The arguments of the tool call `Behaviour::ToolCall` streams.
pub const TOOL_ARGUMENTS: &str = r#"{"city": "Paris", "unit": "celsius"}"#;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamEnd {
    Done,
    /// Close the connection mid-answer.
    Cut,
    /// Keep the connection open and send nothing more.
    Stall,
    /// A malformed event, then the rest and [DONE].
    Malformed,
    /// Close cleanly without `data: [DONE]`.
    NoDone,
    /// An in-band error event (`data: {"error": ...}`), then close without `[DONE]`.
    Error,
}

impl Behaviour {
    pub fn status(status: u16) -> Behaviour {
        Behaviour::Status {
            status,
            retry_after: None,
            code: "server_error",
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub authorization: Option<String>,
}

struct Shared {
    name: String,
    script: Mutex<VecDeque<Behaviour>>,
    fallback: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    /// Stalled streams whose client closed the connection.
    closed: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Starts an upstream that answers every request with `fallback` unless scripted.
    pub async fn start(name: &str, fallback: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            name: name.to_string(),
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(fallback),
            received: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicUsize::new(0),
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let _ = serve::serve(socket, shared).await;
                });
            }
        });
        Upstream { url, shared }
    }

    /// The next requests get these behaviours, in order, before the fallback again.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.shared.script.lock().unwrap().extend(behaviours);
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.fallback.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many stalled streams saw their client (semroute) close the connection.
    pub fn closed(&self) -> usize {
        self.shared.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }
}
