//! One connection to the mock: the request read off the socket, a health check answered,
//! any other request recorded and answered with the next scripted behaviour (or the
//! fallback), each behaviour played by its own method in `behaviours.rs`.

use super::behaviours::Exchange;
use super::wire::respond;
use super::{Behaviour, Received, Shared};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A request as received.
pub(super) struct Request {
    /// The request line and the headers.
    head: String,
    /// The JSON body (`null` if it is not JSON).
    pub(super) body: Value,
    /// Whether the body asks for a stream.
    pub(super) stream: bool,
    /// The body's `model`, which the answer names.
    pub(super) model: String,
}

impl Request {
    /// The value of the header `name` (in any case), if the request carries it.
    pub(super) fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }
}

fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

pub(super) async fn serve(mut socket: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut socket).await? else {
        return Ok(());
    };
    if head.starts_with("GET ") {
        return health_check(&mut socket, &shared).await;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request = Request {
        stream: body["stream"] == json!(true),
        model: body["model"].as_str().unwrap_or("").to_string(),
        head,
        body,
    };
    shared.received.lock().unwrap().push(Received {
        body: request.body.clone(),
        authorization: request.header("authorization"),
    });
    let behaviour = {
        let next = shared.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| shared.fallback.lock().unwrap().clone())
    };
    let exchange = Exchange {
        socket,
        shared: &shared,
        request,
    };
    play(exchange, behaviour).await
}

/// Reads the head, then the body by Content-Length: the head as text and the bytes after
/// it, or `None` if the client closed the connection before a whole head.
async fn read_request(socket: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let length: usize = header_in(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = data.split_off(head_end);
    Ok(Some((head, body)))
}

/// Health checks: `GET /v1/models` answers as the fallback behaviour would (200 for an
/// answer, the status for Status and EchoKey, nothing for Silent ...), and is not recorded.
async fn health_check(socket: &mut TcpStream, shared: &Shared) -> std::io::Result<()> {
    let fallback = shared.fallback.lock().unwrap().clone();
    match fallback {
        Behaviour::Answer
        | Behaviour::Slow(_)
        | Behaviour::Text { .. }
        | Behaviour::Paced { .. }
        | Behaviour::ToolCall { .. }
        | Behaviour::Events(_) => {
            respond(socket, 200, &[], "{\"object\": \"list\", \"data\": []}").await
        }
        Behaviour::Status { status, .. } | Behaviour::EchoKey(status) => {
            respond(socket, status, &[], "{}").await
        }
        _ => {
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO))?;
            Ok(())
        }
    }
}

/// Answers the exchange's request as `behaviour` says.
async fn play(mut exchange: Exchange<'_>, behaviour: Behaviour) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Answer if exchange.request.stream => exchange.answer_streamed().await,
        Behaviour::Answer => exchange.answer().await,
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            exchange.answer().await
        }
        Behaviour::Status {
            status,
            retry_after,
            code,
        } => exchange.error_status(status, retry_after, code).await,
        Behaviour::Reset => exchange.reset(),
        Behaviour::Silent => exchange.stay_silent().await,
        Behaviour::HeadersThenStall => exchange.headers_then_stall().await,
        Behaviour::Stream { pieces, end } => exchange.stream_pieces(&pieces, end).await,
        Behaviour::Text { text, prefill } => exchange.text_after_prefill(text, prefill).await,
        Behaviour::TextIgnoringPrefill(text) => exchange.stream_in_fours(text).await,
        Behaviour::Paced { text, every } => exchange.paced(text, every).await,
        Behaviour::ToolCall { cut } => exchange.tool_call(cut).await,
        Behaviour::Events(events) => exchange.events(&events).await,
        Behaviour::Redirect(to) => exchange.redirect(to).await,
        Behaviour::EchoKeyEvent => exchange.echo_key_event().await,
        Behaviour::EchoKeyEscaped(status) => exchange.echo_key_escaped(status).await,
        Behaviour::Endless => exchange.endless().await,
        Behaviour::Html => exchange.html_page().await,
        Behaviour::EchoKey(status) => exchange.echo_key(status).await,
    }
}
