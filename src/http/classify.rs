//! `POST /classify`: which route a prompt goes to, how sure, why, and the runners-up.

use super::AppState;
use super::conversation::ChatPrompt;
use super::json::ApiJson;
use super::request_id::RequestMeta;
use crate::config::{Config, MAX_TOP_K};
use crate::embed::has_visible_text;
use crate::error::{ApiError, ErrorBody};
use crate::route::decide::{MatchedBy, OverrideKind};
use crate::route::{Classification, Timing, TurnOutcome};
use axum::Json;
use axum::extract::{Extension, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// `{"text": "..."}` or `{"messages": [...]}` (the last user message is classified, with
/// the conversation before it as `conversation:` configures).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ClassifyRequest {
    /// The prompt to classify (give this or `messages`).
    #[serde(default)]
    pub text: Option<String>,
    /// A chat in OpenAI's format: its last `user` message is classified.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// How many candidate routes to list (the config's `top_k` when absent).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub top_k: Option<usize>,
}

/// An OpenAI-style chat message; `content` is a string or a list of parts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`...
    pub role: String,
    /// A string, or a list of parts such as `{"type": "text", "text": "..."}`.
    #[serde(default)]
    pub content: serde_json::Value,
}

impl Message {
    fn as_json(&self) -> serde_json::Value {
        serde_json::json!({"role": self.role, "content": self.content})
    }
}

/// What a request asks to classify.
pub enum Input {
    Text(String),
    /// The messages, in the shape `split_chat` reads.
    Chat(Vec<serde_json::Value>),
}

impl ClassifyRequest {
    /// The text or conversation to classify, or why there is none.
    pub fn input(&self) -> Result<Input, ApiError> {
        match (&self.text, &self.messages) {
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "give either `text` or `messages`, not both",
            )),
            (Some(text), None) if has_visible_text(text) => Ok(Input::Text(text.clone())),
            (Some(_), None) => Err(ApiError::invalid(
                "the text to classify is empty (or only invisible characters)",
            )),
            (None, Some(messages)) => {
                Ok(Input::Chat(messages.iter().map(Message::as_json).collect()))
            }
            (None, None) => Err(ApiError::invalid(
                "missing `text`: send {\"text\": \"...\"} or {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}",
            )),
        }
    }

    pub fn top_k(&self) -> Result<Option<usize>, ApiError> {
        match self.top_k {
            Some(k) if !(1..=MAX_TOP_K).contains(&k) => Err(ApiError::invalid(format!(
                "top_k must be between 1 and {MAX_TOP_K}"
            ))),
            other => Ok(other),
        }
    }
}

/// A classification as `POST /classify` (and `semroute classify --json`) shows it: routes
/// and utterances by name.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClassifyResponse {
    /// The chosen route, or `null`.
    pub route: Option<String>,
    /// The chosen route's score (for `default`/`none`: the best score seen).
    pub score: Option<f32>,
    pub matched_by: MatchedBy,
    /// The threshold that applied to the chosen (or best) route.
    pub threshold: f32,
    /// The best route's score minus the runner-up's (`null` with one candidate).
    pub margin: Option<f32>,
    /// The best two are within `ambiguity_margin`.
    pub ambiguous: bool,
    /// Every keyword and pattern that matched, in file order.
    pub overrides: Vec<OverrideReport>,
    /// Up to `top_k` routes, best first, each with its best neighbours.
    pub candidates: Vec<CandidateReport>,
    /// Tokens the prompt was embedded as, after truncation.
    pub tokens: usize,
    pub timing_us: Timing,
    /// What the conversation contributed (requests with `messages` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationView>,
}

/// A conversation's part in a decision, by name.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    /// The conversation's route when the last user message arrived (`null`: none yet).
    pub previous_route: Option<String>,
    /// `started` (no earlier route), `stuck` (stayed on it) or `switched`.
    pub outcome: TurnOutcome,
    /// The decision the last user message gets alone, without the conversation.
    pub without_context: WithoutContext,
    /// The most likely routes with the conversation, and their probabilities.
    pub context: Vec<ContextScore>,
    pub user_turns: usize,
    pub messages: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WithoutContext {
    pub route: Option<String>,
    pub score: Option<f32>,
    pub matched_by: MatchedBy,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContextScore {
    pub route: String,
    pub probability: f32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverrideReport {
    pub route: String,
    pub kind: OverrideKind,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CandidateReport {
    pub route: String,
    pub score: f32,
    pub threshold: f32,
    pub neighbors: Vec<NeighborReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NeighborReport {
    pub utterance: String,
    pub similarity: f32,
}

impl ClassifyResponse {
    /// Renders `c`, a classification by the router built from `config`.
    pub fn new(c: &Classification, config: &Config) -> ClassifyResponse {
        let name = |r| config.route(r).name.to_string();
        ClassifyResponse {
            route: c.route.map(name),
            score: c.score,
            matched_by: c.matched_by,
            threshold: c.threshold,
            margin: c.margin,
            ambiguous: c.ambiguous,
            overrides: c
                .overrides
                .iter()
                .map(|h| OverrideReport {
                    route: name(h.route),
                    kind: h.kind,
                    rule: h.rule.clone(),
                })
                .collect(),
            candidates: c
                .candidates
                .iter()
                .map(|cand| CandidateReport {
                    route: name(cand.route),
                    score: cand.score,
                    threshold: cand.threshold,
                    neighbors: cand
                        .neighbors
                        .iter()
                        .filter_map(|n| {
                            Some(NeighborReport {
                                utterance: config
                                    .route(cand.route)
                                    .utterances
                                    .get(n.utterance)?
                                    .clone(),
                                similarity: n.similarity,
                            })
                        })
                        .collect(),
                })
                .collect(),
            tokens: c.tokens,
            timing_us: c.timing_us,
            conversation: c.conversation.as_ref().map(|v| ConversationView {
                previous_route: v.previous.map(name),
                outcome: v.outcome,
                without_context: WithoutContext {
                    route: v.alone.route.map(name),
                    score: v.alone.score,
                    matched_by: v.alone.matched_by,
                },
                context: v
                    .belief
                    .iter()
                    .map(|b| ContextScore {
                        route: name(b.route),
                        probability: b.score,
                    })
                    .collect(),
                user_turns: v.user_turns,
                messages: v.messages,
            }),
        }
    }
}

/// Which route a prompt (or a chat's last user message) goes to, and why.
#[utoipa::path(
    post,
    path = "/classify",
    tag = "routing",
    request_body = ClassifyRequest,
    security((), ("client_key" = [])),
    responses(
        (status = 200, description = "The decision, the overrides that fired and the candidates", body = ClassifyResponse),
        (status = 400, description = "`invalid_json`: the body is not valid JSON", body = ErrorBody),
        (status = 401, description = "`unauthorized`: `auth.required` and no known client key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: the body did not arrive within `--body-timeout`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over `--max-body-bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `content-type: application/json`", body = ErrorBody),
        (status = 422, description = "`invalid_request`: no `text`/`messages`, empty text, both given, wrong types, `top_k` out of range", body = ErrorBody),
        (status = 429, description = "`overloaded`: more than `--queue` prompts wait for the model", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: the model worker failed", body = ErrorBody),
        (status = 503, description = "`not_ready`: the model is still loading", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn classify(
    State(state): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<Json<ClassifyResponse>, ApiError> {
    // `auth.required` applies here too (no limits: classifying spends no provider's money).
    // One config for the whole request, whatever a reload does meanwhile.
    let live = state.live();
    super::tenant::identify(&live.config, &headers)
        .inspect_err(|e| super::tenant::count_refusal(&state.metrics, e))?;
    let started = Instant::now();
    let input = request.input()?;
    let top_k = request.top_k()?;
    let engine = live.engine()?;
    let prompt = super::decisions::prompt_of(&state, &input);
    let config = engine.router.config();
    let mut result = match input {
        Input::Text(text) => {
            let embedding = engine
                .worker
                .embed(engine.worker.prefix(&text).to_string())
                .await?;
            let result = engine.router.classify(&text, &embedding, top_k);
            state.shadow_observe(&text, Arc::new(embedding), &result, config);
            result
        }
        Input::Chat(messages) => {
            let worker = &engine.worker;
            let mut prompt =
                ChatPrompt::read(&messages, &engine.router, |t| worker.prefix(t).to_string())?;
            let text = std::mem::take(&mut prompt.text);
            let (result, last) = prompt.classify(engine, top_k).await?;
            state.shadow_observe(&text, Arc::new(last), &result, config);
            result
        }
    };
    result.timing_us.total = started.elapsed().as_micros() as u64;
    // Everything but the search (and the decision) is the model's.
    result.timing_us.embed = result
        .timing_us
        .total
        .saturating_sub(result.timing_us.search);
    let answer = ClassifyResponse::new(&result, engine.router.config());
    super::decisions::classified(&state, &meta, &answer, prompt);
    Ok(Json(answer))
}
