//! One attempt on one backend: the request written for it, sent, and its answer opened (a
//! stream up to its first event, see `attempt/open.rs`) or read whole; what went wrong as an
//! `Outcome` for `verdict.rs` to judge. `Upstreams` holds the backends' HTTP clients and
//! keys, and so decides what of an upstream's error may reach the client.

mod open;

pub use open::Opened;
pub(super) use open::{error_chain, in_band};

use super::assemble;
use super::body::UpstreamBody;
use super::relay::Relay;
use super::verdict::{Outcome, parse_retry_after};
use super::{
    Answer, AnswerBody, BLOCKING_SERIALIZE_BYTES, ChatRequest, Dispatcher, MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES,
};
use crate::config::{Backend, BackendId};
use bytes::Bytes;
use open::read_body;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The backends' HTTP clients (one per backend: its own connection pool and connect
/// timeout) and API keys (read from the environment once), by `BackendId`.
pub struct Upstreams {
    clients: Vec<reqwest::Client>,
    keys: Vec<Option<String>>,
}

impl Upstreams {
    pub fn new(backends: &[Backend]) -> Result<Upstreams, reqwest::Error> {
        // reqwest is built without a default TLS provider; install ring's once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clients = backends
            .iter()
            .map(|b| {
                reqwest::Client::builder()
                    .connect_timeout(b.connect_timeout)
                    // A redirect would send the conversation to a host the config never
                    // named (past its data classes): a 3xx is a failed attempt instead.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = backends
            .iter()
            .map(|b| {
                let name = b.api_key_env.as_deref()?;
                let key = std::env::var(name).ok().filter(|k| !k.is_empty());
                if key.is_none() {
                    tracing::warn!(backend = %b.name, variable = name, "the API key variable is not set; sending no key");
                }
                key
            })
            .collect();
        Ok(Upstreams { clients, keys })
    }

    /// A request to backend `b`, carrying its key.
    fn request(
        &self,
        b: BackendId,
        method: reqwest::Method,
        url: String,
    ) -> reqwest::RequestBuilder {
        let builder = self.clients[b.index()].request(method, url);
        match &self.keys[b.index()] {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// The status of `GET {url}/models` on `backend` (an active health check); `None`: no
    /// answer within the first-byte timeout.
    pub async fn models_status(&self, b: BackendId, backend: &Backend) -> Option<u16> {
        self.request(b, reqwest::Method::GET, format!("{}/models", backend.url))
            .timeout(backend.first_byte_timeout)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// `text` from an upstream, or a note that it was withheld because it quotes a key.
    pub fn redact(&self, text: &str) -> String {
        if self.keys.iter().flatten().any(|key| quotes_key(text, key)) {
            return "[withheld: the backend's message quoted its credential]".into();
        }
        text.to_string()
    }

    /// The body of an upstream error relayed to the client: rebuilt from the upstream's
    /// OpenAI-style `error` object with every string checked for any backend's key (a
    /// message that quotes a key, whole or in part, escaped or not, is withheld); a body
    /// that is not such JSON (compressed, HTML, text) is not relayed.
    pub fn client_error_body(&self, status: u16, body: &[u8]) -> Bytes {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|json| json.get("error"));
        let field = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(|text| self.redact(text))
        };
        let message = match error {
            Some(Value::String(text)) => Some(self.redact(text)),
            _ => field("message"),
        }
        .unwrap_or_else(|| format!("the backend answered HTTP {status}"));
        let mut out = serde_json::json!({"error": {
            "message": message,
            "type": field("type").unwrap_or_else(|| "upstream_error".into()),
            "code": field("code"),
        }});
        if let Some(param) = field("param") {
            out["error"]["param"] = param.into();
        }
        Bytes::from(out.to_string())
    }
}

impl Dispatcher {
    /// One attempt on one backend: the answer, or how it failed. A streamed answer's relay
    /// gets the targets after this one (`rest`) to continue on if the stream breaks, and
    /// holds the backend's in-flight count until the stream ends.
    pub(super) async fn attempt(
        self: &Arc<Self>,
        b: BackendId,
        request: &ChatRequest,
        rest: &[BackendId],
    ) -> Result<Answer, Outcome> {
        let in_flight = self.health.get(b).enter();
        let (content_type, body) = if request.is_stream() || self.config.backend(b).upstream_stream
        {
            let opened = self.open_stream(b, request, None).await?;
            let relay = Relay::spawn(
                self.clone(),
                request.clone(),
                b,
                rest.to_vec(),
                opened,
                in_flight,
            );
            ("text/event-stream", AnswerBody::Stream(relay))
        } else {
            let completion = self.plain(b, request).await?;
            drop(in_flight);
            ("application/json", AnswerBody::Full(completion))
        };
        Ok(Answer {
            status: 200,
            content_type: Some(content_type.into()),
            body,
            backend: b,
            attempts: 0,
            broken: false,
        })
    }

    /// A request sent and answered plainly (only `timeout_ms` bounds it): the completion
    /// as it came, its usage counted.
    async fn plain(&self, b: BackendId, request: &ChatRequest) -> Result<Bytes, Outcome> {
        let response = self.send(b, request, None, false).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_body(response, MAX_ANSWER_BYTES).await?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Outcome::Invalid(format!(
                "the body ({}) is not JSON",
                content_type.as_deref().unwrap_or("no content-type")
            ))
        })?;
        if !assemble::is_completion(&json) {
            return Err(match json.get("error").filter(|e| !e.is_null()) {
                Some(_) => Outcome::Invalid("a 2xx answer carrying an `error`".into()),
                None => Outcome::Invalid("the JSON answer has no `choices`".into()),
            });
        }
        if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
            self.record_usage(request, b, usage);
        }
        Ok(bytes)
    }

    /// Sends `request` to `b` (with the backend's model, and `prefill` appended) and waits
    /// for a 2xx response's headers. Streams (`stream`) are bounded by the first-byte
    /// timeout and never by `timeout_ms`, which bounds only plain requests.
    async fn send(
        &self,
        b: BackendId,
        request: &ChatRequest,
        prefill: Option<&str>,
        stream: bool,
    ) -> Result<reqwest::Response, Outcome> {
        let backend = self.config.backend(b);
        let payload = payload(backend, request, prefill, stream).await?;
        let mut builder = self
            .upstreams
            .request(
                b,
                reqwest::Method::POST,
                format!("{}/chat/completions", backend.url),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload);
        if !stream {
            builder = builder.timeout(backend.timeout);
        }
        let started = Instant::now();
        let sent = if stream {
            match tokio::time::timeout(backend.first_byte_timeout, builder.send()).await {
                Err(_) => return Err(Outcome::Silent),
                Ok(sent) => sent,
            }
        } else {
            builder.send().await
        };
        let response = match sent {
            Err(err) if err.is_timeout() => return Err(Outcome::Silent),
            Err(err) => return Err(Outcome::Connect(error_chain(&err.without_url()))),
            Ok(response) => response,
        };
        self.metrics.upstream_ttfb(&backend.name, started.elapsed());
        if response.status().is_success() {
            return Ok(response);
        }
        Err(refused(response, backend).await)
    }

    /// Sends a request as a stream (with `prefill` appended) and waits for its first event,
    /// both within the first-byte timeout.
    pub(super) async fn open_stream(
        &self,
        b: BackendId,
        request: &ChatRequest,
        prefill: Option<&str>,
    ) -> Result<Opened, Outcome> {
        let backend = self.config.backend(b);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + backend.first_byte_timeout;
        let response = self.send(b, request, prefill, true).await?;
        open::open(response, deadline, started)
            .await
            .map_err(|outcome| match outcome {
                Outcome::InBand { code, message } => Outcome::InBand {
                    code: code.map(|c| self.upstreams.redact(&c)),
                    message: self.upstreams.redact(&message),
                },
                other => other,
            })
    }
}

/// The request body for `backend`: the client's, with the backend's model and `prefill`
/// appended; a stream (`stream`) always asks for usage, so every answer is counted in the
/// metrics. A large body is written on a blocking thread.
async fn payload(
    backend: &Backend,
    request: &ChatRequest,
    prefill: Option<&str>,
    stream: bool,
) -> Result<Vec<u8>, Outcome> {
    let size = request.size;
    let written = if size > BLOCKING_SERIALIZE_BYTES {
        let (client, model) = (request.body.clone(), backend.model.clone());
        let prefill = prefill.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            UpstreamBody {
                client: &client,
                model: &model,
                force_stream: stream,
                prefill: prefill.as_deref(),
            }
            .to_vec(size)
        })
        .await
        .map_err(|e| Outcome::Connect(format!("writing the request: {e}")))?
    } else {
        UpstreamBody {
            client: &request.body,
            model: &backend.model,
            force_stream: stream,
            prefill,
        }
        .to_vec(size)
    };
    written.map_err(|e| Outcome::Connect(format!("writing the request: {e}")))
}

/// A non-2xx response as an outcome, with its `Retry-After` and (some of) its body.
async fn refused(response: reqwest::Response, backend: &Backend) -> Outcome {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // An error body that trickles in is not waited for past the idle timeout.
    let body = tokio::time::timeout(
        backend.stream_idle_timeout,
        read_body(response, MAX_ERROR_BYTES),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|b| b.to_vec())
    .unwrap_or_default();
    Outcome::Status {
        status,
        retry_after,
        body,
    }
}

/// Whether `text` (decoded, not JSON-escaped) quotes `key`, whole or a run of 10 of its
/// characters past its first 13 (often a public prefix such as `sk-ant-api03-`).
fn quotes_key(text: &str, key: &str) -> bool {
    const RUN: usize = 10;
    const PREFIX: usize = 13;
    if key.is_empty() {
        return false;
    }
    if text.contains(key) {
        return true;
    }
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < PREFIX + RUN {
        return false;
    }
    (PREFIX..=chars.len() - RUN).any(|i| {
        let run: String = chars[i..i + RUN].iter().collect();
        text.contains(&run)
    })
}
