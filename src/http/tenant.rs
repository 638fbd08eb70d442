//! Who a request comes from and what it may do: its client key (401 when one is required
//! and it is missing or unknown; compared in constant time, never logged or echoed), the
//! routes, backends and data class the key may use (403 naming the rule), and its rate
//! limits and budgets (429 with OpenAI's `x-ratelimit-*` headers).

use crate::config::{BackendId, ClientKey, Config, key_digest};
use crate::dispatch::Destination;
use crate::error::{ApiError, ErrorKind};
use crate::quota::rules::RateState;
use crate::quota::{Admitted, Refusal};
use crate::telemetry::{Metrics, Refused};
use axum::http::{HeaderMap, header};
use std::time::Duration;

/// The request header naming the end user (when the body has no `user`).
pub const USER_HEADER: &str = "x-semroute-user";

/// The key a request presents, as its place in `auth.keys`: `None` for no key (or an
/// unknown one when keys are optional). 401 when a key is required and none matches.
pub fn identify(config: &Config, headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let auth = &config.auth;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(unauthorized("send one Authorization header, not several"));
        }
        (Some(value), None) => bearer(value.as_bytes()),
    };
    let found = presented.and_then(|key| find(&auth.keys, key));
    match (found, auth.required) {
        (Some(i), _) => Ok(Some(i)),
        (None, false) => Ok(None),
        (None, true) if presented.is_none() => Err(unauthorized(
            "this endpoint needs a client key: send `Authorization: Bearer <key>`",
        )),
        (None, true) => Err(unauthorized("the client key is not valid")),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, message)
}

/// The token of `Bearer <token>` (the scheme in any case), if the value is one.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The key whose digest matches `presented`'s, checking every key in constant time.
fn find(keys: &[ClientKey], presented: &[u8]) -> Option<usize> {
    let digest = key_digest(presented);
    let mut found = None;
    for (i, key) in keys.iter().enumerate() {
        let difference = key
            .digest
            .iter()
            .zip(&digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // No early exit: every key is compared whatever matched before.
        if std::hint::black_box(difference) == 0 {
            found = Some(i);
        }
    }
    found
}

/// A layer for endpoints that need a key when `auth.required` is true and nothing more.
pub async fn require_key(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match identify(&state.live().config, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(err) => {
            count_refusal(&state.metrics, &err);
            err.into_response()
        }
    }
}

/// Whether the key may send a request that asks for `auto` (checked before classifying).
pub fn may_classify(config: &Config, key: Option<usize>) -> Result<(), ApiError> {
    match key.and_then(|k| config.auth.keys.get(k)) {
        Some(k) if k.routes.as_ref().is_some_and(|r| !r.auto) => Err(forbidden(format!(
            "key `{}` may not use `auto` (its routes: {}); name a route it may use",
            k.name,
            route_list(config, k)
        ))),
        _ => Ok(()),
    }
}

/// Whether the key may use `destination` with `data_class` (403 naming the rule).
pub fn authorize(
    config: &Config,
    key: Option<usize>,
    destination: Destination,
    data_class: Option<&str>,
) -> Result<(), ApiError> {
    let Some(k) = key.and_then(|k| config.auth.keys.get(k)) else {
        return Ok(());
    };
    match destination {
        Destination::Route(r) => {
            if let Some(access) = &k.routes
                && !access.routes.contains(&r)
            {
                return Err(forbidden(format!(
                    "key `{}` may not use route `{}` (its routes: {})",
                    k.name,
                    config.route(r).name,
                    route_list(config, k)
                )));
            }
        }
        Destination::Backend(b) => {
            let allowed = nameable_backends(config, k);
            if let Some(allowed) = &allowed
                && !allowed.contains(&b)
            {
                let names: Vec<&str> = allowed
                    .iter()
                    .map(|&b| config.backend(b).name.as_str())
                    .collect();
                return Err(forbidden(format!(
                    "key `{}` may not name backend `{}` (its backends: {})",
                    k.name,
                    config.backend(b).name,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
    }
    if let (Some(max), Some(class)) = (&k.max_data_class, data_class) {
        let classes = &config.data_classes;
        if classes.rank(class) > classes.rank(max) {
            return Err(forbidden(format!(
                "key `{}` may send data up to class `{max}`, and this request is `{class}`",
                k.name
            )));
        }
    }
    Ok(())
}

/// The backends `key` may name directly (`None`: every one): its `backends`, else, when
/// its routes are listed, those routes' targets (naming a backend must not reach past
/// them).
fn nameable_backends(config: &Config, key: &ClientKey) -> Option<Vec<BackendId>> {
    if let Some(backends) = &key.backends {
        return Some(backends.clone());
    }
    let access = key.routes.as_ref()?;
    let mut targets: Vec<BackendId> = access
        .routes
        .iter()
        .flat_map(|&r| config.route(r).dispatch.targets.iter().copied())
        .collect();
    targets.sort_unstable();
    targets.dedup();
    Some(targets)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorKind::Forbidden, message)
}

fn route_list(config: &Config, key: &ClientKey) -> String {
    let Some(access) = &key.routes else {
        return "all".into();
    };
    let mut names: Vec<&str> = access
        .routes
        .iter()
        .map(|&r| config.route(r).name.as_str())
        .collect();
    if access.auto {
        names.insert(0, "auto");
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The request's end user: its `user` field, else the `x-semroute-user` header, else none.
pub fn user_of(body: &serde_json::Map<String, serde_json::Value>, header: Option<&str>) -> String {
    let named = body
        .get("user")
        .and_then(|u| u.as_str())
        .or(header)
        .unwrap_or_default();
    crate::quota::user_label(named)
}

/// A refusal as the client sees it: 429 with `Retry-After` and the limit's headers.
pub fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Rate {
            which,
            retry_after,
            state,
            tokens,
        } => ApiError::new(
            ErrorKind::RateLimitExceeded,
            format!(
                "rate limit reached: {which}; retry in {}",
                reset_text(retry_after)
            ),
        )
        .with_retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64)
        .with_headers(rate_headers(tokens, &state)),
        Refusal::TooLarge { which } => ApiError::new(
            ErrorKind::RateLimitExceeded,
            format!("this request alone needs more than {which} allows in a minute; send a smaller one"),
        ),
        Refusal::Budget {
            which,
            spent,
            reserved,
            limit,
            retry_after,
        } => ApiError::new(
            ErrorKind::BudgetExceeded,
            format!(
                "budget exceeded: {which} is ${limit:.2}, ${spent:.6} is spent and ${reserved:.6} held by requests in flight, and this request may cost more than is left"
            ),
        )
        .with_retry_after(retry_after.as_secs().max(1)),
        Refusal::Unavailable => ApiError::new(
            ErrorKind::StateUnavailable,
            "the shared limits (Redis) cannot be reached and state.on_error is fail_closed; retry shortly",
        ),
    }
}

/// Counts a request refused by its key, limits or budgets (other errors are not counted
/// here).
pub fn count_refusal(metrics: &Metrics, error: &ApiError) {
    let why = match error.code {
        ErrorKind::Unauthorized => Refused::Auth,
        ErrorKind::Forbidden => Refused::Forbidden,
        ErrorKind::RateLimitExceeded => Refused::Rate,
        ErrorKind::BudgetExceeded => Refused::Budget,
        ErrorKind::StateUnavailable => Refused::Unavailable,
        _ => return,
    };
    metrics.tenants.refused(why);
}

/// The `x-ratelimit-*` headers of an admitted request.
pub fn admitted_headers(admitted: &Admitted) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if let Some(state) = &admitted.requests {
        headers.extend(rate_headers(false, state));
    }
    if let Some(state) = &admitted.tokens {
        headers.extend(rate_headers(true, state));
    }
    headers
}

fn rate_headers(tokens: bool, state: &RateState) -> Vec<(&'static str, String)> {
    let names = if tokens {
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ]
    } else {
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ]
    };
    vec![
        (names[0], state.limit.to_string()),
        (names[1], state.remaining.to_string()),
        (names[2], reset_text(Duration::from_micros(state.reset_us))),
    ]
}

/// A duration as OpenAI writes resets: `20ms`, `1.5s`, `6m0s`.
fn reset_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        let text = format!("{s:.3}");
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let s = d.as_secs();
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// Whether the client is on this machine and no proxy forwarded the request (a proxy on
/// loopback would otherwise make every client look local).
pub fn local_and_direct(request: &axum::extract::Request) -> bool {
    let headers = request.headers();
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    let loopback = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    loopback && !forwarded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_a_key() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn resets_are_written_as_openai_does() {
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }
}
