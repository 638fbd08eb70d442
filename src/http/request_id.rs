//! `x-request-id`: every request gets an id, the client's when it is sane, else a fresh one,
//! and every response carries it back, errors included. The id is logged as sent, so a
//! client's id is taken only if it is 1 to 128 printable ASCII characters without spaces: a
//! client cannot put line breaks, control characters or a 10 KB id into the decision log.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest client id taken as it is.
pub const MAX_REQUEST_ID: usize = 128;

/// A request's id and arrival, for handlers (a request extension).
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub id: String,
    /// When the request reached the app: a decision's `ts` and the start of its latency.
    pub at: SystemTime,
    pub arrived: Instant,
}

/// The middleware, as a layer: written out rather than with `axum::middleware::from_fn`,
/// which costs about a microsecond more per request (it clones and boxes the inner service
/// on every call).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S> tower::Service<Request> for RequestId<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let value = tag(&mut request);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            response.headers_mut().insert(REQUEST_ID, value);
            Ok(response)
        })
    }
}

/// Sets the request's id (replacing an insane one) and its `RequestMeta`; the id's header
/// value, for the response.
fn tag(request: &mut Request) -> HeaderValue {
    let arrived = Instant::now();
    let at = SystemTime::now();
    let mut sent = request.headers().get_all(&REQUEST_ID).iter();
    let id = match (sent.next(), sent.next()) {
        (Some(one), None) if sane(one.as_bytes()) => {
            String::from_utf8_lossy(one.as_bytes()).into_owned()
        }
        _ => generate(),
    };
    let value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("-"));
    request.headers_mut().insert(REQUEST_ID, value.clone());
    request
        .extensions_mut()
        .insert(RequestMeta { id, at, arrived });
    value
}

/// 1 to [`MAX_REQUEST_ID`] visible ASCII characters (`!` to `~`).
pub fn sane(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// A fresh id: 128 bits as 32 hex digits. Each is a keyed hash of a counter, keyed from the
/// OS's randomness once per process (std's `RandomState`): unique in the process, unrelated
/// between processes, and far cheaper than a system call per request.
pub fn generate() -> String {
    static KEYS: LazyLock<[std::collections::hash_map::RandomState; 2]> =
        LazyLock::new(Default::default);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |key: &std::collections::hash_map::RandomState| {
        let mut hasher = key.build_hasher();
        hasher.write_u64(n);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(&KEYS[0]), half(&KEYS[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_sane() {
        assert!(sane(b"abc-123_DEF.x:y/z"));
        assert!(sane(&[b'a'; MAX_REQUEST_ID]));
        for bad in [
            &b""[..],
            b"has space",
            b"line\nbreak",
            b"tab\t",
            b"nul\0",
            "caf\u{e9}".as_bytes(),
            b"\x7f",
        ] {
            assert!(!sane(bad), "{bad:?}");
        }
        assert!(!sane(&[b'a'; MAX_REQUEST_ID + 1]));
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && sane(id.as_bytes())));
    }
}
