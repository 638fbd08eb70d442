//! What the mock writes on the wire: whole HTTP/1.1 responses, the head of an SSE stream
//! (close-delimited), chat completion chunks, and the end of a healthy stream.

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The head of a 200 stream, whose body ends when the connection closes.
const STREAM_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

pub(super) async fn respond(
    socket: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    respond_as(socket, status, "application/json", extra, body).await
}

pub(super) async fn respond_as(
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

/// Starts a stream: the 200 head, nothing of the body yet.
pub(super) async fn open_stream(socket: &mut TcpStream) -> std::io::Result<()> {
    socket.write_all(STREAM_HEAD).await
}

/// The SSE event of a chunk with this content.
pub(super) fn chunk(model: &str, content: &str) -> String {
    let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {event}\n\n")
}

pub(super) async fn write_event(socket: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    socket
        .write_all(format!("data: {event}\n\n").as_bytes())
        .await?;
    socket.flush().await
}

/// The end of a healthy stream: a finishing chunk, the usage, `[DONE]`.
pub(super) async fn finish_stream(
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
