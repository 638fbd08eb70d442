//! The mock's behaviours, one method each: what it writes on the socket (or does not) to
//! answer one request as that behaviour says.

use super::serve::Request;
use super::wire::{chunk, finish_stream, open_stream, respond, respond_as, write_event};
use super::{Shared, StreamEnd, TOOL_ARGUMENTS};
use serde_json::{Value, json};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request on one connection: the socket it is answered on, the mock it reached, and
/// the request.
pub(super) struct Exchange<'a> {
    pub(super) socket: TcpStream,
    pub(super) shared: &'a Shared,
    pub(super) request: Request,
}

impl Exchange<'_> {
    /// `Answer`, asked for a stream: the same answer and usage as the non-streamed one.
    pub(super) async fn answer_streamed(&mut self) -> io::Result<()> {
        let shared = self.shared;
        let pieces = ["Hello", " from ", shared.name.as_str(), "", ""];
        self.stream_pieces(&pieces, StreamEnd::Done).await
    }

    /// `Answer` (and `Slow`, once its delay is over): a whole completion that echoes the
    /// request's body.
    pub(super) async fn answer(&mut self) -> io::Result<()> {
        let name = &self.shared.name;
        let reply = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": self.request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Hello from {name}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            "echo": self.request.body,
        });
        respond(&mut self.socket, 200, &[], &reply.to_string()).await
    }

    /// `Status`: an OpenAI-style error, with `Retry-After` when given.
    pub(super) async fn error_status(
        &mut self,
        status: u16,
        retry_after: Option<String>,
        code: &str,
    ) -> io::Result<()> {
        let name = &self.shared.name;
        let reply = json!({"error": {"message": format!("{name} says {status}"), "type": "error", "code": code}});
        let extra: Vec<(&str, String)> = retry_after
            .map(|r| ("retry-after", r))
            .into_iter()
            .collect();
        respond(&mut self.socket, status, &extra, &reply.to_string()).await
    }

    /// `Reset`: zero linger makes the close a reset; it does not block.
    pub(super) fn reset(self) -> io::Result<()> {
        #[allow(deprecated)]
        self.socket.set_linger(Some(Duration::ZERO))?;
        drop(self.socket);
        Ok(())
    }

    /// `Silent`: the connection stays open and nothing is sent.
    pub(super) async fn stay_silent(&mut self) -> io::Result<()> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }

    /// `HeadersThenStall`: the 200 head of a stream, then nothing.
    pub(super) async fn headers_then_stall(&mut self) -> io::Result<()> {
        open_stream(&mut self.socket).await?;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }

    /// `Stream` (and every other plain stream): these content pieces, then the end `end`
    /// names.
    pub(super) async fn stream_pieces(
        &mut self,
        pieces: &[&str],
        end: StreamEnd,
    ) -> io::Result<()> {
        let (socket, model) = (&mut self.socket, self.request.model.as_str());
        // Close-delimited body (no chunked encoding), as HTTP/1.1 allows with connection: close.
        open_stream(socket).await?;
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
                let _ =
                    tokio::time::timeout(Duration::from_secs(3600), socket.read(&mut byte)).await;
                self.shared
                    .closed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// `TextIgnoringPrefill` (and the end of `Text`): `text` streamed in 4-character pieces.
    pub(super) async fn stream_in_fours(&mut self, text: &str) -> io::Result<()> {
        let chars: Vec<char> = text.chars().collect();
        let pieces: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        self.stream_pieces(&pieces, StreamEnd::Done).await
    }

    /// `Text`: the rest of `text` after the request's prefill (a last assistant message),
    /// or a 400 for a prefill when `prefill` is false.
    pub(super) async fn text_after_prefill(&mut self, text: &str, prefill: bool) -> io::Result<()> {
        let last = self.request.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned();
        let prefix = last
            .filter(|m| m["role"] == "assistant")
            .and_then(|m| m["content"].as_str().map(str::to_string));
        let rest = match prefix {
            Some(_) if !prefill => {
                let reply = json!({"error": {"message": "assistant prefill is not supported", "type": "invalid_request_error", "code": "invalid_request_error"}});
                return respond(&mut self.socket, 400, &[], &reply.to_string()).await;
            }
            Some(p) => text.strip_prefix(p.as_str()).unwrap_or(text).to_string(),
            None => text.to_string(),
        };
        self.stream_in_fours(&rest).await
    }

    /// `Paced`: `text` a word every `every`, streamed at that pace, or sent whole once
    /// written when the request does not ask for a stream.
    pub(super) async fn paced(&mut self, text: &str, every: Duration) -> io::Result<()> {
        let words = words(text);
        if self.request.stream {
            return self.paced_stream(&words, every).await;
        }
        tokio::time::sleep(every * words.len() as u32).await;
        let reply = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": self.request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": words.len(), "total_tokens": 10 + words.len()},
        });
        respond(&mut self.socket, 200, &[], &reply.to_string()).await
    }

    /// `Paced`, streamed: a first (empty) event at once, then the words at that pace.
    async fn paced_stream(&mut self, words: &[&str], every: Duration) -> io::Result<()> {
        let (socket, model) = (&mut self.socket, self.request.model.as_str());
        open_stream(socket).await?;
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

    /// `ToolCall`: a call of `get_weather` with its arguments in three pieces; `cut` closes
    /// the connection after the first, mid-JSON.
    pub(super) async fn tool_call(&mut self, cut: bool) -> io::Result<()> {
        let (socket, model) = (&mut self.socket, self.request.model.as_str());
        open_stream(socket).await?;
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

    /// `Events`: these chunks as they are, then `[DONE]`.
    pub(super) async fn events(&mut self, events: &[Value]) -> io::Result<()> {
        let socket = &mut self.socket;
        open_stream(socket).await?;
        for event in events {
            write_event(socket, event).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        socket.write_all(b"data: [DONE]\n\n").await?;
        socket.shutdown().await
    }

    /// `Redirect`: a 307 to `to`.
    pub(super) async fn redirect(&mut self, to: String) -> io::Result<()> {
        respond(&mut self.socket, 307, &[("location", to)], "{}").await
    }

    /// `EchoKeyEvent`: a stream whose first event is an error quoting the key.
    pub(super) async fn echo_key_event(&mut self) -> io::Result<()> {
        let sent = self.request.header("authorization").unwrap_or_default();
        open_stream(&mut self.socket).await?;
        let event = json!({"error": {"message": format!("upstream broke; auth was {sent}"), "code": "server_error"}});
        write_event(&mut self.socket, &event).await?;
        self.socket.shutdown().await
    }

    /// `EchoKeyEscaped`: an error quoting the key with its `-` escaped in the JSON.
    pub(super) async fn echo_key_escaped(&mut self, status: u16) -> io::Result<()> {
        let sent = self.request.header("authorization").unwrap_or_default();
        let escaped = sent.replace('-', "\\u002d");
        let reply = format!(
            r#"{{"error": {{"message": "your key is {escaped}", "type": "invalid_request_error", "code": "bad_request"}}}}"#
        );
        respond(&mut self.socket, status, &[], &reply).await
    }

    /// `Endless`: 64 KiB content deltas for as long as the other side reads them.
    pub(super) async fn endless(&mut self) -> io::Result<()> {
        open_stream(&mut self.socket).await?;
        let piece = "x".repeat(64 * 1024);
        loop {
            let event = chunk(&self.request.model, &piece);
            self.socket.write_all(event.as_bytes()).await?;
        }
    }

    /// `Html`: a 200 sign-in page.
    pub(super) async fn html_page(&mut self) -> io::Result<()> {
        let page = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><h1>Please sign in</h1></body></html>\n";
        respond_as(&mut self.socket, 200, "text/html; charset=utf-8", &[], page).await
    }

    /// `EchoKey`: this status with an error quoting the key, in the body and in an
    /// `x-echo-authorization` header.
    pub(super) async fn echo_key(&mut self, status: u16) -> io::Result<()> {
        let sent = self.request.header("authorization").unwrap_or_default();
        let key = sent.strip_prefix("Bearer ").unwrap_or(&sent).to_string();
        let reply = json!({"error": {
            "message": format!("Incorrect API key provided: {key}. You can find your API key in your account settings."),
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }});
        let echoed = [("x-echo-authorization", sent)];
        respond(&mut self.socket, status, &echoed, &reply.to_string()).await
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
