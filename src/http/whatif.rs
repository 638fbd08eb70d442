//! What-if (`POST /admin/whatif`): a route's utterances or threshold edited in the page,
//! tried on prompts without touching the file. The edited config's router is built beside
//! the live one (only new utterances embedded), both classify each prompt, and the answer
//! lists the prompts that would move, from where to where. Prompts come with the request,
//! or are the recent ones the service kept (`log_prompts: true`).
//!
//! Like shadow routes, both sides decide on a prompt's last message alone.

use super::AppState;
use super::json::ApiJson;
use super::shadow::{Side, cut};
use crate::config::RouteEdit;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::route::Router as RouteIndex;
use crate::telemetry::decisions::{Filter, Prompt};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Most prompts tried at once.
pub const MAX_PROMPTS: usize = 1_000;
/// Prompts embedded per pass of the model.
const BATCH: usize = 32;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatIfRequest {
    pub edits: Vec<RouteEdit>,
    /// The prompts to try; without them, the recent ones (newest first).
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    /// At most this many recent prompts (default and most: 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhatIfResponse {
    /// Prompts tried.
    pub prompts: usize,
    /// Those whose route would change.
    pub moved: Vec<Moved>,
    pub unchanged: usize,
    /// Utterances the edits added that the model embedded.
    pub embedded: usize,
    pub ms: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Moved {
    pub text: String,
    pub from: Side,
    pub to: Side,
}

/// One what-if at a time: each may embed up to a thousand prompts.
pub struct Turn(tokio::sync::Semaphore);

impl Default for Turn {
    fn default() -> Turn {
        Turn(tokio::sync::Semaphore::new(1))
    }
}

/// Tries edits to routes' utterances or thresholds on prompts, without touching the file:
/// which prompts would move, from where to where.
#[utoipa::path(
    post,
    path = "/admin/whatif",
    tag = "admin",
    security((), ("admin_key" = [])),
    request_body = WhatIfRequest,
    responses(
        (status = 200, description = "The prompts whose route would change", body = WhatIfResponse),
        (status = 400, description = "`invalid_json`: the body is not valid JSON", body = ErrorBody),
        (status = 401, description = "`unauthorized`: not on loopback (or forwarded) and no admin key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a client key, or a browser page of another origin", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `--body-timeout`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over `--max-body-bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `content-type: application/json`", body = ErrorBody),
        (status = 422, description = "`invalid_request`: an unknown route, a threshold outside [-1, 1], empty or too many utterances, too many prompts", body = ErrorBody),
        (status = 429, description = "`overloaded`: another what-if is running", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: the model worker failed", body = ErrorBody),
        (status = 503, description = "`not_ready`: the model is still loading", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn whatif(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<WhatIfRequest>,
) -> Result<Json<WhatIfResponse>, ApiError> {
    let started = Instant::now();
    let Ok(_turn) = state.whatif.0.try_acquire() else {
        return Err(ApiError::new(
            ErrorKind::Overloaded,
            "a what-if is running; try again when it answers",
        ));
    };
    let live = state.live();
    let engine = live.engine()?.clone();
    let edited = live
        .config
        .with_edits(&request.edits)
        .map_err(|e| ApiError::invalid(format!("edits: {e}")))?;
    let prompts = prompts(&state, request.prompts, request.limit)?;
    let tried = prompts.len();
    let (moved, embedded) = tokio::task::spawn_blocking(move || {
        let encoder = engine.worker.encoder();
        let (candidate, provenance) =
            RouteIndex::rebuild(edited, encoder.as_ref(), Some(&engine.router), None)
                .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        let moved = compare(&engine.router, &candidate, &prompts, |batch| {
            let refs: Vec<&str> = batch.iter().map(|t| engine.worker.prefix(t)).collect();
            encoder
                .embed(&refs)
                .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))
        })?;
        Ok::<_, ApiError>((moved, provenance.embedded))
    })
    .await
    .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))??;
    Ok(Json(WhatIfResponse {
        prompts: tried,
        unchanged: tried - moved.len(),
        moved,
        embedded,
        ms: started.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// The prompts to try: the request's (checked), else the recent ones kept.
fn prompts(
    state: &AppState,
    given: Option<Vec<String>>,
    limit: Option<usize>,
) -> Result<Vec<String>, ApiError> {
    let limit = limit.unwrap_or(MAX_PROMPTS).min(MAX_PROMPTS);
    let Some(given) = given else {
        return Ok(state.recent_prompts(limit));
    };
    if given.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(format!(
            "`prompts` holds {} prompts; at most {MAX_PROMPTS} are tried at once",
            given.len()
        )));
    }
    Ok(given
        .into_iter()
        .filter(|p| crate::embed::has_visible_text(p))
        .map(|p| cut(&p).to_string())
        .collect())
}

/// Each prompt decided by `before` and `after` (embedded in batches by `embed`); those
/// whose route differs.
fn compare(
    before: &RouteIndex,
    after: &RouteIndex,
    prompts: &[String],
    embed: impl Fn(&[String]) -> Result<Vec<crate::embed::Embedding>, ApiError>,
) -> Result<Vec<Moved>, ApiError> {
    let mut moved = Vec::new();
    for batch in prompts.chunks(BATCH) {
        let embeddings = embed(batch)?;
        for (text, embedding) in batch.iter().zip(&embeddings) {
            let from = Side::of(&before.classify(text, embedding, None), before.config());
            let to = Side::of(&after.classify(text, embedding, None), after.config());
            if from.route != to.route {
                moved.push(Moved {
                    text: text.clone(),
                    from,
                    to,
                });
            }
        }
    }
    Ok(moved)
}

impl AppState {
    /// The recent prompts kept (`log_prompts: true`), newest first, at most `limit`: a
    /// conversation's last user message.
    fn recent_prompts(&self, limit: usize) -> Vec<String> {
        let filter = Filter {
            route: None,
            matched_by: None,
            limit,
        };
        self.decisions
            .recent(&filter)
            .iter()
            .filter_map(|d| match d.prompt.as_ref()? {
                Prompt::Text(text) => Some(text.clone()),
                Prompt::Messages(messages) => messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(|m| m.content.clone()),
            })
            .filter(|text| crate::embed::has_visible_text(text))
            .collect()
    }
}
