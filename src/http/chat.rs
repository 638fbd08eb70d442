//! `POST /v1/chat/completions`, the OpenAI-compatible proxy. The body passes through
//! untouched apart from `model`: `auto` (or none) routes by classifying the last user
//! message, a route's or a backend's name goes straight there. Whatever `model` says, the
//! request carries the strictest data class of its header, its route and every
//! class-bearing pattern that matches it. A large body is parsed, scanned and prepared on a
//! blocking thread, never on the async runtime.

mod answer;

use answer::{api_error, count_answer, respond};

use super::cached;
use super::conversation::ChatPrompt;
use super::decisions;
use super::experiments;
use super::json::read_json_body;
use super::openapi::{ChatCompletion, ChatCompletionRequest, RelayedError};
use super::tenant;
use super::{AppState, Live};
use crate::cache::key::Scope;
use crate::config::{Config, RouteId};
use crate::dispatch::classes::{self, Classed};
use crate::dispatch::{ChatRequest, Destination, DispatchError};
use crate::embed::has_visible_text;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::experiment::Client;
use crate::quota::demand::Demand;
use crate::quota::{Admitted, Caller};
use crate::route::decide::OverrideKind;
use crate::route::split_chat;
use crate::telemetry::decisions::PendingDecision;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The request header that raises a request's data class.
pub const DATA_CLASS_HEADER: &str = "x-semroute-data-class";
/// Bodies larger than this are prepared on a blocking thread.
const BLOCKING_BYTES: usize = 64 * 1024;

/// The request, parsed and scanned.
struct Prepared {
    body: Arc<Map<String, Value>>,
    destination: Option<Destination>,
    /// Routes whose class-bearing patterns matched somewhere in the request.
    class_hits: Vec<RouteId>,
    /// With `model: auto`: the last user message and the earlier turns to route by.
    prompt: Option<ChatPrompt>,
    /// Its prompt's tokens and its answer's cap.
    demand: Demand,
}

/// OpenAI's chat completions: routed by `model` (`auto` classifies the last user message),
/// sent to the route's targets in order, the backend's answer relayed as it came.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "proxy",
    request_body = ChatCompletionRequest,
    params(
        ("x-semroute-data-class" = Option<String>, Header, description = "Raises the request's data class (the strictest of all values applies)"),
        ("x-semroute-user" = Option<String>, Header, description = "The end user, when the body has no `user`"),
        ("cache-control" = Option<String>, Header, description = "`no-cache`: do not answer from the cache (the answer is still kept); `no-store`: neither read nor keep"),
    ),
    security((), ("client_key" = [])),
    responses(
        (status = 200, description = "The backend's answer: a completion, or with `stream: true` server-sent events",
            content((ChatCompletion = "application/json"), (String = "text/event-stream")),
            headers(
                ("x-semroute-route" = String, description = "The route by name (`-`: a backend was named)"),
                ("x-semroute-backend" = String, description = "The backend that answered"),
                ("x-semroute-score" = String, description = "The route's score (`-`: not classified)"),
                ("x-semroute-attempts" = u32, description = "Upstream calls made (0: answered from the cache)"),
                ("x-semroute-variant" = String, description = "The experiment variant (backend) the request was assigned, when its route runs an experiment"),
                ("x-semroute-cache" = String, description = "`hit`, `semantic-hit` or `miss`, when the request used the answer cache"),
                ("x-ratelimit-limit-requests" = u64, description = "With a requests-per-minute limit (and `-tokens` with a tokens one)"),
                ("x-ratelimit-remaining-requests" = u64, description = "What the limit leaves"),
                ("x-ratelimit-reset-requests" = String, description = "When it is whole again (`20ms`, `1.5s`, `6m0s`)"),
            )),
        (status = 400, description = "`invalid_json`; `context_length_exceeded`: no target's context window holds the request; or the backend's own 400", body = RelayedError),
        (status = 401, description = "`unauthorized`: `auth.required` and no known client key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the key may not use this route, backend or data class; `data_class_refused`: no target may receive the request's data class", body = ErrorBody),
        (status = 404, description = "`not_found`: the config defines no backends; `model_not_found`: `model` names no route or backend; or the backend's own 404", body = RelayedError),
        (status = 408, description = "`request_timeout`: the body did not arrive within `--body-timeout`; or the backend's own 408", body = RelayedError),
        (status = 413, description = "`payload_too_large`: the body is over the limit (at least 32 MiB); or the backend's own 413", body = RelayedError),
        (status = 415, description = "`unsupported_media_type`: not `content-type: application/json`; or the backend's own 415", body = RelayedError),
        (status = 422, description = "`invalid_request`: no `messages`, wrong types, no user text to route by, no route matched and no `default_route`; or the backend's own 422", body = RelayedError),
        (status = 429, description = "`rate_limit_exceeded`, `budget_exceeded` (the key's or the user's), or `overloaded` (the model's queue is full)", body = ErrorBody,
            headers(
                ("Retry-After" = u64, description = "Seconds to wait"),
                ("x-ratelimit-limit-requests" = u64, description = "The limit that refused (or `-tokens`)"),
                ("x-ratelimit-remaining-requests" = u64, description = "What the limit leaves"),
                ("x-ratelimit-reset-requests" = String, description = "When it is whole again"),
            )),
        (status = "4XX", description = "Any other 4xx of the backend, relayed as it came", body = RelayedError),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 502, description = "`upstream_failed`: every target failed (the message lists each failure)", body = ErrorBody),
        (status = 503, description = "`upstream_unavailable`: every target is cooling down; `not_ready`: the model is loading; `state_unavailable`: Redis is unreachable and `state.on_error` is `fail_closed`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    // Written when the request, or its stream, is over: one decision line, refusals too.
    let decision = decisions::pending(&state, request.extensions().get());
    let result = proxy(state, request, decision.as_ref())
        .await
        .inspect_err(|e| tenant::count_refusal(&metrics, e));
    if let Some(d) = &decision {
        d.status(match &result {
            Ok(response) => response.status().as_u16(),
            Err(err) => err.code.status().as_u16(),
        });
    }
    result
}

async fn proxy(
    state: AppState,
    request: Request,
    decision: Option<&Arc<PendingDecision>>,
) -> Result<Response, ApiError> {
    // One config for the whole request, whatever a reload does meanwhile.
    let live = state.live();
    let Some(dispatcher) = live.dispatcher.clone() else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "this config defines no backends to proxy to; add `backends:` and route `targets:`",
        ));
    };
    let config = dispatcher.config().clone();
    let key = tenant::identify(&config, request.headers())?;
    decisions::keyed(decision, &config, key);
    let header_classes = header_classes(request.headers())?;
    let header_user = request
        .headers()
        .get(tenant::USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    let peer = experiments::client_of(None, &request);
    let directive = cached::Directive::of(request.headers());
    let limit = state.body_limit.max(super::CHAT_BODY_LIMIT);
    let bytes = read_json_body(request, limit, state.body_timeout).await?;
    let size = bytes.len();
    let prepared = prepare_off_runtime(&live, &config, bytes).await?;
    decisions::prompted(decision, &prepared.body);
    if prepared.destination.is_none() {
        tenant::may_classify(&config, key)?;
    }
    let (destination, score, embedding) = match (prepared.destination, prepared.prompt) {
        (Some(destination), _) => {
            decisions::named(decision, &config, destination);
            (destination, None, None)
        }
        (None, Some(prompt)) => classify(&state, &live, prompt, decision).await?,
        (None, None) => return Err(ApiError::new(ErrorKind::Internal, "nothing to route by")),
    };
    let route = match destination {
        Destination::Route(r) => Some(r),
        Destination::Backend(_) => None,
    };
    let data_class = classes::request_class(&config, &header_classes, route, &prepared.class_hits)
        .map_err(|(class, reason)| {
            ApiError::new(
                ErrorKind::DataClassRefused,
                DispatchError::NotEligible { class, reason }.to_string(),
            )
        })?;
    if let Some(Classed { class, because }) = &data_class {
        tracing::debug!(%class, %because, "data class");
    }
    tenant::authorize(
        &config,
        key,
        destination,
        data_class.as_ref().map(|c| c.class.as_str()),
    )?;
    let user = tenant::user_of(&prepared.body, header_user.as_deref());
    let client = Client {
        user: Some(user.clone()).filter(|u| !u.is_empty()),
        ..peer
    };
    let admitted = admit(&live, &config, key, user, &prepared.demand, destination).await?;
    let key_name = key
        .and_then(|k| config.auth.keys.get(k))
        .map(|k| k.name.as_str());
    let variant = experiments::assign(&live, route, &client, key_name, decision).await;
    let scope = Scope {
        key: key_name,
        data_class: data_class.as_ref().map(|c| c.class.as_str()),
        destination: match destination {
            Destination::Route(r) => config.route(r).name.as_str(),
            Destination::Backend(b) => config.backend(b).name.as_str(),
        },
        variant: variant.map(|v| config.backend(v).name.as_str()),
    };
    let lookup = cached::Lookup::new(
        live.cache.as_ref(),
        &prepared.body,
        &scope,
        embedding,
        directive,
    );
    let request = ChatRequest {
        body: prepared.body,
        destination,
        data_class,
        size,
        demand: prepared.demand,
        ticket: admitted.as_ref().map(|a| a.ticket.clone()),
        decision: decision.cloned(),
        client,
        variant,
    };
    let (result, cache) = answer::fetch(&state, &dispatcher, &request, lookup).await;
    count_answer(&state, &config, route, &result);
    let mut headers = admitted.as_ref().map(tenant::admitted_headers);
    let answer = result.map_err(|e| api_error(e, headers.clone()))?;
    let headers = headers.get_or_insert_default();
    if let Some(v) = variant {
        let name = config.backend(v).name.clone();
        headers.push((experiments::VARIANT_HEADER, name));
    }
    if let Some(label) = cache {
        headers.push((cached::CACHE_HEADER, label.to_string()));
    }
    respond(answer, &config, route, score, std::mem::take(headers))
}

/// Charges the caller's limits and budgets (`None`: none are configured).
async fn admit(
    live: &Live,
    config: &Config,
    key: Option<usize>,
    user: String,
    demand: &Demand,
    destination: Destination,
) -> Result<Option<Admitted>, ApiError> {
    let Some(quota) = live
        .quota
        .as_ref()
        .filter(|_| crate::quota::Quota::any_limits(config))
    else {
        return Ok(None);
    };
    let targets: Vec<&crate::config::Backend> = match destination {
        Destination::Route(r) => config
            .route(r)
            .dispatch
            .targets
            .iter()
            .map(|&b| config.backend(b))
            .collect(),
        Destination::Backend(b) => vec![config.backend(b)],
    };
    let charge = crate::quota::most_of(&targets, demand);
    quota
        .admit(&Caller { key, user }, charge)
        .await
        .map(Some)
        .map_err(tenant::refused)
}

/// Every value of the data-class header (a proxy in between may add its own): the
/// strictest applies.
fn header_classes(headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
    let mut classes = Vec::new();
    for value in headers.get_all(DATA_CLASS_HEADER) {
        let class = value
            .to_str()
            .map_err(|_| ApiError::invalid(format!("{DATA_CLASS_HEADER} must be ASCII")))?
            .trim();
        if !class.is_empty() {
            classes.push(class.to_string());
        }
    }
    Ok(classes)
}

/// `prepare`, on a blocking thread when the body is large.
async fn prepare_off_runtime(
    live: &Live,
    config: &Arc<Config>,
    bytes: Bytes,
) -> Result<Prepared, ApiError> {
    let engine = live
        .engine
        .as_ref()
        .map(|e| (e.router.clone(), e.worker.clone()));
    let config = config.clone();
    let large = bytes.len() > BLOCKING_BYTES;
    let work = move || prepare(&bytes, &config, engine.as_ref());
    if large {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?
    } else {
        work()
    }
}

/// Parses the body and does everything that reads all of it: the data-class scan, and with
/// `model: auto` the last user message's override hits and the part of it to embed.
fn prepare(
    bytes: &[u8],
    config: &Config,
    engine: Option<&(Arc<crate::Router>, crate::embed::EmbedWorker)>,
) -> Result<Prepared, ApiError> {
    let body: Map<String, Value> = super::json::parse(bytes)?;
    let model = match body.get("model") {
        None | Some(Value::Null) => "auto",
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(ApiError::invalid("`model` must be a string")),
    };
    if body
        .get("stream")
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        return Err(ApiError::invalid("`stream` must be true or false"));
    }
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(ApiError::invalid("`messages` must be a list of messages")),
        None => return Err(ApiError::invalid("missing `messages`")),
    };
    if let Some(i) = messages
        .iter()
        .position(|m| !m.get("role").is_some_and(Value::is_string))
    {
        return Err(ApiError::invalid(format!(
            "`messages[{i}]` is not a message with a string `role`"
        )));
    }
    let destination = named(config, model)?;
    let (prompt, class_hits) = match destination {
        Some(_) => (None, classes::pattern_hits(config, &body, None)),
        None => {
            let (earlier, text) = split_chat(messages)
                .filter(|(_, t)| has_visible_text(t))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "with `model: auto`, `messages` needs a user message with visible text to route by",
                    )
                })?;
            let (router, worker) = engine.ok_or_else(super::live::not_ready)?;
            // The prompt is matched against every route rule once; the data-class scan
            // reuses its pattern hits.
            let hits = router.override_hits(&text);
            let routes: Vec<RouteId> = hits
                .iter()
                .filter(|h| h.kind == OverrideKind::Pattern)
                .map(|h| h.route)
                .collect();
            let class_hits = classes::pattern_hits(config, &body, Some((&text, &routes)));
            let prompt = ChatPrompt::new(&earlier, &text, hits, router, |t| {
                worker.prefix(t).to_string()
            });
            (Some(prompt), class_hits)
        }
    };
    // Only limits, budgets, context windows and `cheapest` read the estimate.
    let demand = if counts_tokens(config) {
        let counter = engine.and_then(|(_, worker)| worker.counter());
        Demand::of(&body, |text| match counter {
            Some(counter) => counter.count(text),
            None => crate::embed::count::by_bytes(text.len()),
        })
    } else {
        Demand::default()
    };
    Ok(Prepared {
        body: Arc::new(body),
        destination,
        class_hits,
        prompt,
        demand,
    })
}

/// Whether anything reads token counts (limits, budgets, context windows, the cheapest
/// strategy): only then is the tokenizer run over the request.
fn counts_tokens(config: &Config) -> bool {
    crate::quota::Quota::any_limits(config)
        || config
            .backends
            .iter()
            .any(|b| b.context_window.is_some() || !b.limits.is_empty())
        || config
            .routes
            .iter()
            .any(|r| r.dispatch.strategy == crate::config::Strategy::Cheapest)
}

/// The destination `model` names (`None`: `auto`).
fn named(config: &Config, model: &str) -> Result<Option<Destination>, ApiError> {
    if model == "auto" {
        return Ok(None);
    }
    if let Some(r) = config.route_id(model) {
        return Ok(Some(Destination::Route(r)));
    }
    if let Some(b) = config.backend_id(model) {
        return Ok(Some(Destination::Backend(b)));
    }
    Err(ApiError::new(
        ErrorKind::ModelNotFound,
        format!(
            "`model` is `{model}`: use `auto`, a route ({}) or a backend ({})",
            names(config.routes.iter().map(|r| r.name.as_str())),
            names(config.backends.iter().map(|b| b.name.as_str())),
        ),
    ))
}

/// Embeds the prompt and decides the route: the destination, the route's score and, for
/// the semantic cache, the prompt's embedding.
async fn classify(
    state: &AppState,
    live: &Live,
    mut prompt: ChatPrompt,
    decision: Option<&Arc<PendingDecision>>,
) -> Result<(Destination, Option<f32>, Option<Arc<Vec<f32>>>), ApiError> {
    let engine = live.engine()?;
    let started = std::time::Instant::now();
    let text = std::mem::take(&mut prompt.text);
    let (c, last) = prompt.classify(engine, None).await?;
    state.metrics.classified(started.elapsed());
    decisions::routed(decision, engine.router.config(), &c);
    let semantic = live.cache.as_ref().is_some_and(|c| c.semantic());
    let embedding = semantic.then(|| Arc::new(last.vector.clone()));
    state.shadow_observe(&text, Arc::new(last), &c, engine.router.config());
    match c.route {
        Some(r) => Ok((Destination::Route(r), c.score, embedding)),
        None => Err(ApiError::invalid(
            "no route matched this prompt and the config has no `default_route` to send it to",
        )),
    }
}

fn names<'a>(list: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = list.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}
