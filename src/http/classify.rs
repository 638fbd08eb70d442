//! `POST /classify`: which route a prompt goes to, how sure, why, and the runners-up.

use super::AppState;
use super::json::ApiJson;
use crate::config::{Config, MAX_TOP_K};
use crate::embed::has_visible_text;
use crate::error::ApiError;
use crate::route::decide::{MatchedBy, OverrideKind};
use crate::route::{Classification, Timing};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Instant;

/// `{"text": "..."}` or `{"messages": [...]}` (the last user message is classified).
#[derive(Debug, Deserialize)]
pub struct ClassifyRequest {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub top_k: Option<usize>,
}

/// An OpenAI-style chat message; `content` is a string or a list of parts.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: serde_json::Value,
}

impl Message {
    fn as_json(&self) -> serde_json::Value {
        serde_json::json!({"role": self.role, "content": self.content})
    }
}

impl ClassifyRequest {
    /// The text to classify, or why there is none.
    pub fn prompt(&self) -> Result<String, ApiError> {
        let text = match (&self.text, &self.messages) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give either `text` or `messages`, not both",
                ));
            }
            (Some(text), None) => text.clone(),
            (None, Some(messages)) => {
                let messages: Vec<serde_json::Value> =
                    messages.iter().map(Message::as_json).collect();
                last_user_text(&messages)
                    .map(|t| t.into_owned())
                    .ok_or_else(|| {
                        ApiError::invalid("`messages` has no user message with text content")
                    })?
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "missing `text`: send {\"text\": \"...\"} or {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}",
                ));
            }
        };
        if !has_visible_text(&text) {
            return Err(ApiError::invalid(
                "the text to classify is empty (or only invisible characters)",
            ));
        }
        Ok(text)
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

/// The last user message's text: a string content, or its text parts joined by newlines.
/// Borrowed when it is one string (a conversation can be tens of megabytes).
pub(super) fn last_user_text(messages: &[serde_json::Value]) -> Option<Cow<'_, str>> {
    messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
        .find_map(|m| content_text(m.get("content")?))
}

fn content_text(content: &serde_json::Value) -> Option<Cow<'_, str>> {
    match content {
        serde_json::Value::String(text) => Some(Cow::Borrowed(text)),
        serde_json::Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("text"))
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect();
            (!texts.is_empty()).then(|| Cow::Owned(texts.join("\n")))
        }
        _ => None,
    }
}

/// A classification as `POST /classify` (and `semroute classify --json`) shows it: routes
/// and utterances by name.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyResponse {
    pub route: Option<String>,
    pub score: Option<f32>,
    pub matched_by: MatchedBy,
    pub threshold: f32,
    pub margin: Option<f32>,
    pub ambiguous: bool,
    pub overrides: Vec<OverrideReport>,
    pub candidates: Vec<CandidateReport>,
    pub tokens: usize,
    pub timing_us: Timing,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverrideReport {
    pub route: String,
    pub kind: OverrideKind,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateReport {
    pub route: String,
    pub score: f32,
    pub threshold: f32,
    pub neighbors: Vec<NeighborReport>,
}

#[derive(Debug, Clone, Serialize)]
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
        }
    }
}

pub async fn classify(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<Json<ClassifyResponse>, ApiError> {
    // `auth.required` applies here too (no limits: classifying spends no provider's money).
    super::tenant::identify(&state.config, &headers)
        .inspect_err(|e| super::tenant::count_refusal(&state.metrics, e))?;
    let started = Instant::now();
    let text = request.prompt()?;
    let top_k = request.top_k()?;
    let engine = state.engine()?;
    let embedding = engine
        .worker
        .embed(engine.worker.prefix(&text).to_string())
        .await?;
    let embed_us = started.elapsed().as_micros() as u64;
    let mut result = engine.router.classify(&text, &embedding, top_k);
    result.timing_us.embed = embed_us;
    result.timing_us.total = started.elapsed().as_micros() as u64;
    Ok(Json(ClassifyResponse::new(&result, engine.router.config())))
}
