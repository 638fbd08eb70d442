//! A proxied request's answer as the client gets it: semroute's headers on the backend's
//! answer (or a cached one), errors with their limits' headers, streams framed as SSE, and
//! `semroute_requests_total`.

use super::super::AppState;
use crate::config::{Config, RouteId};
use crate::dispatch::relay::{Piece, frame};
use crate::dispatch::{Answer, AnswerBody, DispatchError};
use crate::error::{ApiError, ErrorKind};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// `semroute_requests_total` for this answer (or refusal).
pub(super) fn count_answer(
    state: &AppState,
    config: &Config,
    route: Option<RouteId>,
    result: &Result<Answer, DispatchError>,
) {
    let route_label = route.map_or("-", |r| config.route(r).name.as_str());
    let (status_label, backend_label) = match result {
        Ok(a) => (
            a.status.to_string(),
            config.backend(a.backend).name.as_str(),
        ),
        Err(DispatchError::NotEligible { .. }) => ("403".into(), "-"),
        Err(DispatchError::TooLong { .. }) => ("400".into(), "-"),
        Err(DispatchError::AllCooling { .. }) => ("503".into(), "-"),
        Err(DispatchError::Exhausted { .. }) => ("502".into(), "-"),
    };
    state
        .metrics
        .answered(route_label, backend_label, &status_label);
}

pub(super) fn api_error(
    err: DispatchError,
    limits: Option<Vec<(&'static str, String)>>,
) -> ApiError {
    let error = match err {
        DispatchError::NotEligible { .. } => {
            ApiError::new(ErrorKind::DataClassRefused, err.to_string())
        }
        DispatchError::AllCooling { retry_after } => {
            ApiError::new(ErrorKind::UpstreamUnavailable, err.to_string())
                .with_retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64)
        }
        DispatchError::Exhausted { .. } => {
            ApiError::new(ErrorKind::UpstreamFailed, err.to_string())
        }
        DispatchError::TooLong { .. } => {
            ApiError::new(ErrorKind::ContextLengthExceeded, err.to_string())
        }
    };
    error.with_headers(limits.unwrap_or_default())
}

/// The upstream's answer with semroute's headers: the route and backend by name, the
/// route's score, the attempts made.
pub(super) fn respond(
    answer: Answer,
    config: &Config,
    route: Option<RouteId>,
    score: Option<f32>,
    limits: Vec<(&'static str, String)>,
) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match answer.body {
        AnswerBody::Full(bytes) => Body::from(bytes),
        AnswerBody::Stream(pieces) => Body::from_stream(framed(pieces)),
    };
    let mut response = Response::builder()
        .status(status)
        .body(body)
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    let h = response.headers_mut();
    if let Some(ct) = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    let text = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"));
    let route = route.map_or("-", |r| config.route(r).name.as_str());
    h.insert("x-semroute-route", text(route));
    h.insert(
        "x-semroute-backend",
        text(&config.backend(answer.backend).name),
    );
    h.insert(
        "x-semroute-score",
        text(&score.map_or("-".to_string(), |s: f32| format!("{s:.4}"))),
    );
    h.insert("x-semroute-attempts", HeaderValue::from(answer.attempts));
    for (name, value) in limits {
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.insert(name, value);
        }
    }
    Ok(response)
}

/// The relay's pieces as SSE frames.
fn framed(
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures_util::stream::poll_fn(move |cx| pieces.poll_recv(cx).map(|p| p.map(|p| Ok(frame(&p)))))
}

/// The answer to `request`: from the cache when `lookup` finds one (no call upstream),
/// else from its targets, kept in the cache when it may be. With the cache's verdict for
/// `x-semroute-cache` (`None`: the request does not use the cache).
pub(super) async fn fetch(
    state: &AppState,
    dispatcher: &std::sync::Arc<crate::dispatch::Dispatcher>,
    request: &crate::dispatch::ChatRequest,
    lookup: Option<super::cached::Lookup>,
) -> (Result<Answer, DispatchError>, Option<&'static str>) {
    let config = dispatcher.config();
    let Some(lookup) = lookup else {
        return (dispatcher.dispatch(request).await, None);
    };
    if let Some(hit) = lookup.hit().await
        && let Some(backend) = config.backend_id(&hit.entry().backend)
    {
        let label = hit.label();
        state.metrics.cache_lookup(
            if label == "hit" {
                "hit"
            } else {
                "semantic_hit"
            },
            hit.entry().cost_usd,
        );
        if let Some(d) = &request.decision {
            d.cached(label);
            d.answered_by(&hit.entry().backend);
        }
        let answer = super::cached::answer(&hit, request.is_stream(), backend);
        return (Ok(answer), Some(label));
    }
    state.metrics.cache_lookup("miss", 0.0);
    if let Some(d) = &request.decision {
        d.cached("miss");
    }
    let result = dispatcher.dispatch(request).await.map(|answer| {
        let backend = config.backend(answer.backend);
        let (name, cost) = (backend.name.clone(), backend.cost);
        lookup.keep(answer, name, cost)
    });
    (result, Some("miss"))
}
