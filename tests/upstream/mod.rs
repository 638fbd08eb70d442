//! A real mock OpenAI-compatible upstream on 127.0.0.1 (random port), written on a bare TCP
//! listener so it can misbehave exactly as providers do: answer, answer an error status
//! (with or without `Retry-After`), reset the connection, stay silent, send headers and
//! stall, stream and then cut off, stall, send a malformed event or omit `[DONE]`. It
//! records every request it receives.
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
}

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
        // Answer, the status for Status, nothing for Silent ...), and is not recorded.
        let fallback = shared.fallback.lock().unwrap().clone();
        return match fallback {
            Behaviour::Answer | Behaviour::Slow(_) | Behaviour::Text { .. } => {
                respond(
                    &mut socket,
                    200,
                    &[],
                    "{\"object\": \"list\", \"data\": []}",
                )
                .await
            }
            Behaviour::Status { status, .. } => respond(&mut socket, status, &[], "{}").await,
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
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
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
