//! The answer cache on the proxy: which requests may use it (`cacheable`, and the client's
//! `Cache-Control`), their keys (scoped to the client key, data class, destination and
//! variant), a hit answered without a call upstream (a stream replayed as one chunk and
//! `[DONE]`), and a fresh 200 completion kept (a stream's as it is relayed, once whole).

use crate::cache::key::{self, Scope};
use crate::cache::{AnswerCache, Entry, Hit, Keys};
use crate::config::Cost;
use crate::dispatch::assemble::{Assembler, completion_to_chunk, is_completion};
use crate::dispatch::relay::Piece;
use crate::dispatch::{Answer, AnswerBody};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The answer header saying where the answer came from: `hit`, `semantic-hit` or `miss`.
pub const CACHE_HEADER: &str = "x-semroute-cache";

/// What the client's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    /// Answer from the cache (off with `no-cache` or `no-store`).
    pub read: bool,
    /// Keep the fresh answer (off with `no-store`).
    pub write: bool,
}

impl Directive {
    /// From `Cache-Control` (every value, read as bytes: a directive next to a byte that
    /// is not text still counts) and HTTP/1.0's `Pragma: no-cache`.
    pub fn of(headers: &HeaderMap) -> Directive {
        let mut directive = Directive {
            read: true,
            write: true,
        };
        let values = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .chain(headers.get_all(header::PRAGMA).iter());
        for value in values {
            for part in value.as_bytes().split(|&b| b == b',' || b == b';') {
                let part = part.trim_ascii();
                if part.eq_ignore_ascii_case(b"no-cache") {
                    directive.read = false;
                } else if part.eq_ignore_ascii_case(b"no-store") {
                    directive.read = false;
                    directive.write = false;
                }
            }
        }
        directive
    }
}

/// A request's way into the cache: the cache, its keys and what the client allows.
pub struct Lookup {
    cache: Arc<AnswerCache>,
    keys: Keys,
    directive: Directive,
}

impl Lookup {
    /// `None` when the request does not use the cache: none configured, the client says
    /// `no-store`, or the answer would not be the same twice (`AnswerCache::cacheable`).
    pub fn new(
        cache: Option<&Arc<AnswerCache>>,
        body: &Map<String, Value>,
        scope: &Scope<'_>,
        embedding: Option<Arc<Vec<f32>>>,
        directive: Directive,
    ) -> Option<Lookup> {
        let cache = cache?;
        if !(directive.read || directive.write) || !cache.cacheable(body) {
            return None;
        }
        let semantic = embedding
            .filter(|_| cache.semantic())
            .map(|vector| (key::bucket(body, scope), vector));
        Some(Lookup {
            cache: cache.clone(),
            keys: Keys {
                exact: key::exact(body, scope),
                semantic,
            },
            directive,
        })
    }

    /// The cached answer, if the client lets the cache answer and there is one.
    pub async fn hit(&self) -> Option<Hit> {
        if !self.directive.read {
            return None;
        }
        self.cache.get(&self.keys).await
    }

    /// `answer` as the client gets it, kept once whole if it is a 200 completion from
    /// `backend` (priced at `cost`, from the usage it reports).
    pub fn keep(self, answer: Answer, backend: String, cost: Option<Cost>) -> Answer {
        if !self.directive.write || answer.status != 200 || answer.broken {
            return answer;
        }
        match answer.body {
            AnswerBody::Full(bytes) => {
                let parsed = serde_json::from_slice::<Value>(&bytes).ok();
                if let Some(completion) = parsed.filter(is_completion) {
                    let entry = Entry {
                        body: bytes.clone(),
                        backend,
                        cost_usd: priced(&completion, cost),
                    };
                    self.cache.put(&self.keys, entry);
                }
                Answer {
                    body: AnswerBody::Full(bytes),
                    ..answer
                }
            }
            AnswerBody::Stream(pieces) => Answer {
                body: AnswerBody::Stream(self.tee(pieces, backend, cost)),
                ..answer
            },
        }
    }

    /// Relays `pieces` unchanged, folding them into a completion that is kept when the
    /// stream ends well.
    fn tee(
        self,
        mut pieces: tokio::sync::mpsc::Receiver<Piece>,
        backend: String,
        cost: Option<Cost>,
    ) -> tokio::sync::mpsc::Receiver<Piece> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut assembler = Some(Assembler::default());
            while let Some(piece) = pieces.recv().await {
                match &piece {
                    Piece::Chunk(chunk) => {
                        if let Some(a) = assembler.as_mut() {
                            a.add(chunk);
                        }
                    }
                    Piece::Failed(_) => assembler = None,
                    Piece::Done { .. } => {
                        if let Some(a) = assembler.take() {
                            let completion = a.finish();
                            if let Ok(body) = serde_json::to_vec(&completion) {
                                let entry = Entry {
                                    body: Bytes::from(body),
                                    backend: backend.clone(),
                                    cost_usd: priced(&completion, cost),
                                };
                                self.cache.put(&self.keys, entry);
                            }
                        }
                    }
                }
                // A client that left stops the relay; what was not whole is not kept.
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// What `completion`'s reported usage costs at `cost` (0 without either).
fn priced(completion: &Value, cost: Option<Cost>) -> f64 {
    let Some(cost) = cost else {
        return 0.0;
    };
    let tokens = |k: &str| {
        completion["usage"][k]
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .unwrap_or(0.0)
    };
    (tokens("prompt_tokens") * cost.input_per_mtok
        + tokens("completion_tokens") * cost.output_per_mtok)
        / 1e6
}

/// A hit as an answer: the completion, or for a stream one chunk holding it and `[DONE]`.
pub fn answer(hit: &Hit, stream: bool, backend: crate::config::BackendId) -> Answer {
    let entry = hit.entry();
    let body = if stream {
        let completion: Value = serde_json::from_slice(&entry.body).unwrap_or(Value::Null);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx.try_send(Piece::Chunk(completion_to_chunk(&completion)));
        let _ = tx.try_send(Piece::Done { backend });
        AnswerBody::Stream(rx)
    } else {
        AnswerBody::Full(entry.body.clone())
    };
    Answer {
        status: 200,
        content_type: Some(
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            }
            .into(),
        ),
        body,
        backend,
        attempts: 0,
        broken: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn directive(pairs: &[(header::HeaderName, &[u8])]) -> Directive {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name, HeaderValue::from_bytes(value).unwrap());
        }
        Directive::of(&headers)
    }

    #[test]
    fn cache_control_is_read_whatever_surrounds_the_directive() {
        let none = Directive {
            read: true,
            write: true,
        };
        let fresh = Directive {
            read: false,
            write: true,
        };
        let neither = Directive {
            read: false,
            write: false,
        };
        assert_eq!(directive(&[]), none);
        assert_eq!(
            directive(&[(header::CACHE_CONTROL, b"max-age=0, No-Cache")]),
            fresh
        );
        assert_eq!(
            directive(&[(header::CACHE_CONTROL, b"no-store, \xff")]),
            neither
        );
        assert_eq!(
            directive(&[(header::CACHE_CONTROL, b"no-store ;x")]),
            neither
        );
        assert_eq!(directive(&[(header::PRAGMA, b"no-cache")]), fresh);
        assert_eq!(directive(&[(header::CACHE_CONTROL, b"no-cachex")]), none);
    }
}
