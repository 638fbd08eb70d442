//! A real mock OpenAI-compatible upstream on 127.0.0.1 (random port), written on a bare TCP
//! listener so it can misbehave exactly as providers do: answer, answer an error status
//! (with or without `Retry-After`), reset the connection, stay silent, send headers and
//! stall, stream and then cut off, stall, send a malformed event, an error event or omit
//! `[DONE]`, answer slowly (a long answer, streamed at a steady pace or sent whole at the
//! end), cut a tool call mid-arguments, answer 200 with an HTML page, or refuse its key
//! and echo it back. It records every request it receives.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
                    let _ = serve(socket, shared).await;
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

async fn serve(mut socket: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    // Read the head, then the body by Content-Length.
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    if head.starts_with("GET ") {
        // Health checks: `GET /v1/models` answers as the fallback behaviour would (200 for
        // an answer, the status for Status and EchoKey, nothing for Silent ...), and is not
        // recorded.
        let fallback = shared.fallback.lock().unwrap().clone();
        return match fallback {
            Behaviour::Answer
            | Behaviour::Slow(_)
            | Behaviour::Text { .. }
            | Behaviour::Paced { .. }
            | Behaviour::ToolCall { .. }
            | Behaviour::Events(_) => {
                respond(
                    &mut socket,
                    200,
                    &[],
                    "{\"object\": \"list\", \"data\": []}",
                )
                .await
            }
            Behaviour::Status { status, .. } | Behaviour::EchoKey(status) => {
                respond(&mut socket, status, &[], "{}").await
            }
            _ => {
                #[allow(deprecated)]
                socket.set_linger(Some(Duration::ZERO))?;
                Ok(())
            }
        };
    }
    let body: Value = serde_json::from_slice(&data[head_end..]).unwrap_or(Value::Null);
    let stream = body["stream"] == json!(true);
    let model = body["model"].as_str().unwrap_or("").to_string();
    shared.received.lock().unwrap().push(Received {
        body: body.clone(),
        authorization: header("authorization"),
    });
    let behaviour = {
        let next = shared.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| shared.fallback.lock().unwrap().clone())
    };
    let name = shared.name.clone();
    match behaviour {
        Behaviour::Answer if stream => {
            // The same answer and usage as the non-streamed one.
            stream_pieces(
                &mut socket,
                &shared,
                &model,
                &["Hello", " from ", &name, "", ""],
                StreamEnd::Done,
            )
            .await
        }
        Behaviour::Answer | Behaviour::Slow(_) => {
            if let Behaviour::Slow(delay) = behaviour {
                tokio::time::sleep(delay).await;
            }
            let reply = json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Hello from {name}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                "echo": body,
            });
            respond(&mut socket, 200, &[], &reply.to_string()).await
        }
        Behaviour::Status {
            status,
            retry_after,
            code,
        } => {
            let reply = json!({"error": {"message": format!("{name} says {status}"), "type": "error", "code": code}});
            let extra: Vec<(&str, String)> = retry_after
                .map(|r| ("retry-after", r))
                .into_iter()
                .collect();
            respond(&mut socket, status, &extra, &reply.to_string()).await
        }
        Behaviour::Reset => {
            // Zero linger makes the close a reset; it does not block.
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO))?;
            drop(socket);
            Ok(())
        }
        Behaviour::Silent => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        Behaviour::HeadersThenStall => {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                .await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        Behaviour::Stream { pieces, end } => {
            stream_pieces(&mut socket, &shared, &model, &pieces, end).await
        }
        Behaviour::TextIgnoringPrefill(text) => {
            let chars: Vec<char> = text.chars().collect();
            let pieces: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            stream_pieces(&mut socket, &shared, &model, &pieces, StreamEnd::Done).await
        }
        Behaviour::Paced { text, every } => {
            let words = words(text);
            if stream {
                paced(&mut socket, &model, &words, every).await
            } else {
                tokio::time::sleep(every * words.len() as u32).await;
                let reply = json!({
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": words.len(), "total_tokens": 10 + words.len()},
                });
                respond(&mut socket, 200, &[], &reply.to_string()).await
            }
        }
        Behaviour::ToolCall { cut } => tool_call(&mut socket, &model, cut).await,
        Behaviour::Events(events) => {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                .await?;
            for event in &events {
                write_event(&mut socket, event).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            socket.write_all(b"data: [DONE]\n\n").await?;
            socket.shutdown().await
        }
        Behaviour::Redirect(to) => respond(&mut socket, 307, &[("location", to)], "{}").await,
        Behaviour::EchoKeyEvent => {
            let sent = header("authorization").unwrap_or_default();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                .await?;
            let event = json!({"error": {"message": format!("upstream broke; auth was {sent}"), "code": "server_error"}});
            write_event(&mut socket, &event).await?;
            socket.shutdown().await
        }
        Behaviour::EchoKeyEscaped(status) => {
            let sent = header("authorization").unwrap_or_default();
            let escaped = sent.replace('-', "\\u002d");
            let reply = format!(
                r#"{{"error": {{"message": "your key is {escaped}", "type": "invalid_request_error", "code": "bad_request"}}}}"#
            );
            respond(&mut socket, status, &[], &reply).await
        }
        Behaviour::Endless => {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                .await?;
            let piece = "x".repeat(64 * 1024);
            loop {
                socket.write_all(chunk(&model, &piece).as_bytes()).await?;
            }
        }
        Behaviour::Html => {
            let page = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><h1>Please sign in</h1></body></html>\n";
            respond_as(&mut socket, 200, "text/html; charset=utf-8", &[], page).await
        }
        Behaviour::EchoKey(status) => {
            let sent = header("authorization").unwrap_or_default();
            let key = sent.strip_prefix("Bearer ").unwrap_or(&sent).to_string();
            let reply = json!({"error": {
                "message": format!("Incorrect API key provided: {key}. You can find your API key in your account settings."),
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }});
            let echoed = [("x-echo-authorization", sent)];
            respond(&mut socket, status, &echoed, &reply.to_string()).await
        }
        Behaviour::Text { text, prefill } => {
            let last = body["messages"].as_array().and_then(|m| m.last()).cloned();
            let prefix = last
                .filter(|m| m["role"] == "assistant")
                .and_then(|m| m["content"].as_str().map(str::to_string));
            let rest = match prefix {
                Some(_) if !prefill => {
                    let reply = json!({"error": {"message": "assistant prefill is not supported", "type": "invalid_request_error", "code": "invalid_request_error"}});
                    return respond(&mut socket, 400, &[], &reply.to_string()).await;
                }
                Some(p) => text.strip_prefix(p.as_str()).unwrap_or(text).to_string(),
                None => text.to_string(),
            };
            let chars: Vec<char> = rest.chars().collect();
            let pieces: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            stream_pieces(&mut socket, &shared, &model, &pieces, StreamEnd::Done).await
        }
    }
}

async fn respond(
    socket: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    respond_as(socket, status, "application/json", extra, body).await
}

async fn respond_as(
    socket: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

fn chunk(model: &str, content: &str) -> String {
    let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {event}\n\n")
}

async fn stream_pieces(
    socket: &mut TcpStream,
    shared: &Shared,
    model: &str,
    pieces: &[&str],
    end: StreamEnd,
) -> std::io::Result<()> {
    // Close-delimited body (no chunked encoding), as HTTP/1.1 allows with connection: close.
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        )
        .await?;
    for (i, piece) in pieces.iter().enumerate() {
        if end == StreamEnd::Malformed && i == 1 {
            socket.write_all(b"data: {this is not json\n\n").await?;
        }
        socket.write_all(chunk(model, piece).as_bytes()).await?;
        socket.flush().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match end {
        StreamEnd::Done | StreamEnd::Malformed => {
            let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": pieces.len(), "total_tokens": 10 + pieces.len()}});
            socket
                .write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes())
                .await?;
            socket.shutdown().await
        }
        StreamEnd::Error => {
            let error = json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": "server_error"}});
            socket
                .write_all(format!("data: {error}\n\n").as_bytes())
                .await?;
            socket.shutdown().await
        }
        StreamEnd::NoDone => {
            let last = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            socket
                .write_all(format!("data: {last}\n\n").as_bytes())
                .await?;
            socket.shutdown().await
        }
        StreamEnd::Cut => {
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO))?;
            Ok(())
        }
        StreamEnd::Stall => {
            // Wait for the other side to close, and count it.
            let mut byte = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(3600), socket.read(&mut byte)).await;
            shared
                .closed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }
}

/// `text` in words, each with the spaces that follow it (they join back into `text`).
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && text[i + 1..].starts_with(|n: char| n != ' ') {
            out.push(&text[start..=i]);
            start = i + 1;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

async fn write_event(socket: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    socket
        .write_all(format!("data: {event}\n\n").as_bytes())
        .await?;
    socket.flush().await
}

/// The end of a healthy stream: a finishing chunk, the usage, `[DONE]`.
async fn finish_stream(
    socket: &mut TcpStream,
    model: &str,
    finish_reason: &str,
    completion_tokens: usize,
) -> std::io::Result<()> {
    write_event(
        socket,
        &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}),
    )
    .await?;
    let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens, "total_tokens": 10 + completion_tokens}});
    socket
        .write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes())
        .await?;
    socket.shutdown().await
}

async fn paced(
    socket: &mut TcpStream,
    model: &str,
    words: &[&str],
    every: Duration,
) -> std::io::Result<()> {
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        )
        .await?;
    write_event(
        socket,
        &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
    )
    .await?;
    for word in words {
        tokio::time::sleep(every).await;
        socket.write_all(chunk(model, word).as_bytes()).await?;
        socket.flush().await?;
    }
    finish_stream(socket, model, "stop", words.len()).await
}

async fn tool_call(socket: &mut TcpStream, model: &str, cut: bool) -> std::io::Result<()> {
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        )
        .await?;
    let delta = |delta: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    };
    write_event(
        socket,
        &delta(json!({"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})),
    )
    .await?;
    // The arguments in three pieces; a cut comes after the first, mid-JSON.
    let (first, rest) = TOOL_ARGUMENTS.split_at(9);
    let (second, third) = rest.split_at(10);
    for (i, piece) in [first, second, third].into_iter().enumerate() {
        if cut && i == 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO))?;
            return Ok(());
        }
        write_event(
            socket,
            &delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    finish_stream(socket, model, "tool_calls", 3).await
}
