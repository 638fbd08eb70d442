//! The decision log's side in the HTTP layer: a `/classify` answer or a proxied request
//! turned into a decision (route and key by name; never a key itself, and a prompt only
//! with `log_prompts` on), and `GET /admin/decisions`, the recent decisions for the page.

use super::AppState;
use super::classify::{ClassifyResponse, Input};
use super::request_id::RequestMeta;
use crate::config::Config;
use crate::dispatch::Destination;
use crate::error::{ApiError, ErrorBody};
use crate::route::decide::MatchedBy;
use crate::route::{Classification, content_text};
use crate::telemetry::decisions::{
    DEFAULT_RECENT, Decision, Filter, PendingDecision, Prompt, Routing, Tokens,
};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

pub const CLASSIFY: &str = "/classify";
pub const CHAT: &str = "/v1/chat/completions";
/// Decisions `GET /admin/decisions` lists unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;

/// Every `matched_by`, as `/classify` writes it.
pub const MATCHED_BY: [&str; 6] = [
    "semantic",
    "keyword",
    "pattern",
    "conversation",
    "default",
    "none",
];

pub fn matched_by(m: MatchedBy) -> &'static str {
    m.as_str()
}

/// What a request to classify would keep as its prompt (built only with `log_prompts` on).
pub fn prompt_of(state: &AppState, input: &Input) -> Option<Prompt> {
    if !state.decisions.log_prompts() {
        return None;
    }
    Some(match input {
        Input::Text(text) => Prompt::text(text),
        Input::Chat(messages) => messages_prompt(messages),
    })
}

/// A conversation's messages with text, by role. Read from the end, and only as far as
/// the prompt keeps: a long conversation's early messages are never looked at.
fn messages_prompt(messages: &[Value]) -> Prompt {
    Prompt::messages(messages.iter().filter_map(|m| {
        let role = m.get("role")?.as_str()?;
        Some((role, content_text(m.get("content")?)?))
    }))
}

/// Records a `/classify` answer.
pub fn classified(
    state: &AppState,
    meta: &RequestMeta,
    answer: &ClassifyResponse,
    prompt: Option<Prompt>,
) {
    if !state.decisions.is_on() {
        return;
    }
    let mut decision = Decision::new(meta.at, meta.id.clone(), CLASSIFY);
    decision.routing = Routing {
        route: answer.route.clone(),
        matched_by: Some(matched_by(answer.matched_by)),
        score: answer.score,
        margin: answer.margin,
        ambiguous: Some(answer.ambiguous),
    };
    decision.prompt = prompt;
    state.decisions.record(decision);
}

/// A proxied request's decision, recorded when the request (or its stream) is over.
pub fn pending(state: &AppState, meta: Option<&RequestMeta>) -> Option<Arc<PendingDecision>> {
    let meta = meta?;
    let decision = Decision::new(meta.at, meta.id.clone(), CHAT);
    let needed = super::experiments::any(&state.live().config);
    state.decisions.pending(decision, meta.arrived, needed)
}

/// The client key's name, when the request carried a known key.
pub fn keyed(decision: Option<&Arc<PendingDecision>>, config: &Config, key: Option<usize>) {
    if let (Some(d), Some(k)) = (decision, key.and_then(|k| config.auth.keys.get(k))) {
        d.key(&k.name);
    }
}

/// The conversation of a proxied request, when prompts are logged.
pub fn prompted(decision: Option<&Arc<PendingDecision>>, body: &serde_json::Map<String, Value>) {
    if let Some(d) = decision.filter(|d| d.wants_prompt()) {
        let messages = body.get("messages").and_then(Value::as_array);
        d.prompt(messages_prompt(messages.map_or(&[], Vec::as_slice)));
    }
}

/// A destination the client named: a route by name, a backend with no route.
pub fn named(decision: Option<&Arc<PendingDecision>>, config: &Config, to: Destination) {
    if let (Some(d), Destination::Route(r)) = (decision, to) {
        d.routed(Routing {
            route: Some(config.route(r).name.to_string()),
            ..Routing::default()
        });
    }
}

/// A classified request's route and how it was chosen.
pub fn routed(decision: Option<&Arc<PendingDecision>>, config: &Config, c: &Classification) {
    if let Some(d) = decision {
        d.routed(Routing {
            route: c.route.map(|r| config.route(r).name.to_string()),
            matched_by: Some(matched_by(c.matched_by)),
            score: c.score,
            margin: c.margin,
            ambiguous: Some(c.ambiguous),
        });
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Recent {
    /// Off: no decision is kept, the list is empty.
    log_prompts: bool,
    /// Newest first.
    #[schema(value_type = Vec<DecisionLine>)]
    decisions: Vec<Decision>,
}

/// One decision as the log writes it (`Decision`, whose flattened parts utoipa cannot
/// describe as one flat object).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a description only: the answer is `Decision`
struct DecisionLine {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    #[schema(format = DateTime)]
    ts: String,
    request_id: String,
    /// `/classify` or `/v1/chat/completions`.
    endpoint: String,
    route: Option<String>,
    matched_by: Option<String>,
    score: Option<f32>,
    margin: Option<f32>,
    ambiguous: Option<bool>,
    /// Proxied requests only: the backend that answered last.
    #[schema(required = false)]
    backend: Option<String>,
    /// Proxied requests only: calls made upstream.
    #[schema(required = false)]
    attempts: u32,
    /// Proxied requests only: the status the client got (499: it left first).
    #[schema(required = false)]
    status: u16,
    #[schema(required = false)]
    latency_ms: f64,
    #[schema(required = false)]
    ttfb_ms: Option<f64>,
    #[schema(required = false)]
    tokens: Option<Tokens>,
    #[schema(required = false)]
    cost_usd: Option<f64>,
    /// The client key's name, when the request carried a known one.
    #[schema(required = false)]
    key: String,
    /// Proxied requests in an experiment: its name and the variant (backend) assigned.
    #[schema(required = false)]
    experiment: String,
    #[schema(required = false)]
    variant: String,
    /// Proxied requests that used the answer cache: `hit`, `semantic-hit` or `miss`.
    #[schema(required = false)]
    cache: String,
    /// The prompt (only with `log_prompts: true`).
    #[schema(required = false)]
    prompt: Prompt,
}

/// `GET /admin/decisions?route=&matched_by=&limit=`: the recent decisions with their
/// prompts, newest first (`route=-`: those without a route).
#[utoipa::path(
    get,
    path = "/admin/decisions",
    tag = "admin",
    security((), ("admin_key" = [])),
    params(
        ("route" = Option<String>, Query, description = "Only this route's decisions (`-`: those without a route)"),
        ("matched_by" = Option<String>, Query, description = "Only decisions matched this way: semantic, keyword, pattern, conversation, default or none"),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1,000; default 100)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "The recent decisions, newest first (kept only with `log_prompts: true`)", body = Recent),
        (status = 422, description = "`invalid_request`: an unknown parameter or a value out of range", body = ErrorBody),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key, or a browser page of another origin", body = ErrorBody),
    )
)]
pub async fn recent(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Recent>, ApiError> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut filter = Filter {
        route: None,
        matched_by: None,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in &pairs {
        match (name.as_str(), value.as_str()) {
            (_, "") => {}
            ("route", "-") => filter.route = Some(None),
            ("route", route) => filter.route = Some(Some(route)),
            ("matched_by", m) if MATCHED_BY.contains(&m) => filter.matched_by = Some(m),
            ("matched_by", _) => {
                return Err(ApiError::invalid(format!(
                    "`matched_by` is one of {}",
                    MATCHED_BY.join(", ")
                )));
            }
            ("limit", n) => {
                filter.limit = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=DEFAULT_RECENT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "`limit` is a whole number from 1 to {DEFAULT_RECENT}"
                        ))
                    })?;
            }
            (other, _) => {
                return Err(ApiError::invalid(format!(
                    "unknown parameter `{other}`; use route, matched_by and limit"
                )));
            }
        }
    }
    let decisions = state.decisions.recent(&filter);
    Ok(Json(Recent {
        log_prompts: state.decisions.log_prompts(),
        decisions: decisions.iter().map(|d| Decision::clone(d)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_by_is_written_as_classify_writes_it() {
        for m in [
            MatchedBy::Semantic,
            MatchedBy::Keyword,
            MatchedBy::Pattern,
            MatchedBy::Conversation,
            MatchedBy::Default,
            MatchedBy::None,
        ] {
            assert_eq!(serde_json::to_value(m).ok(), Some(matched_by(m).into()));
        }
    }
}
