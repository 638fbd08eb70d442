//! Shadow routes (`serve --shadow candidate.yaml`): every prompt the service classifies is
//! classified again by a candidate config, off the request path (a bounded queue a task
//! drains; when it is full, prompts are skipped and counted, requests never wait), and
//! never dispatched. `GET /admin/shadow` reports how often the candidate agrees, a
//! confusion table live -> candidate with example prompts (kept only with `log_prompts`),
//! and the candidate's score distribution.
//!
//! Both sides are compared on the prompt's last message alone (a conversation's context
//! is not scored again with the candidate's utterances), with the embedding the live
//! classification already computed: the candidate costs a search, never a forward pass.

use super::live::{Engine, rfc3339};
use crate::config::Config;
use crate::embed::Embedding;
use crate::route::{Classification, Router as RouteIndex};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Prompts waiting for the candidate before new ones are skipped.
const QUEUE: usize = 1024;
/// Example prompts kept per cell of the confusion table.
const EXAMPLES: usize = 3;
/// The score histogram's buckets: [-1, 1] in steps of 0.1.
const BUCKETS: usize = 20;
/// Bytes of a prompt the candidate's keywords and patterns are matched in (a queued
/// prompt holds at most this much memory).
pub const TEXT_BYTES: usize = 64 * 1024;

/// A prompt the service classified, and the live decision on its last message alone.
pub struct Observed {
    text: String,
    embedding: Arc<Embedding>,
    live: Side,
}

impl Observed {
    /// `text` is cut to its first [`TEXT_BYTES`] (at a character boundary).
    pub fn new(text: &str, embedding: Arc<Embedding>, live: Side) -> Observed {
        Observed {
            text: cut(text).to_string(),
            embedding,
            live,
        }
    }
}

/// The first [`TEXT_BYTES`] of `text`, at a character boundary.
pub fn cut(text: &str) -> &str {
    let mut end = text.len().min(TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One side's decision, by name.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Side {
    pub route: Option<String>,
    pub matched_by: &'static str,
    pub score: Option<f32>,
}

impl Side {
    pub fn of(classification: &Classification, config: &Config) -> Side {
        let (route, matched_by, score) = match &classification.conversation {
            Some(c) => (c.alone.route, c.alone.matched_by, c.alone.score),
            None => (
                classification.route,
                classification.matched_by,
                classification.score,
            ),
        };
        Side {
            route: route.map(|r| config.route(r).name.to_string()),
            matched_by: matched_by.as_str(),
            score,
        }
    }
}

/// The candidate and what it has seen so far.
pub struct Shadow {
    file: String,
    router: Arc<RouteIndex>,
    queue: tokio::sync::mpsc::Sender<Observed>,
    tally: Arc<Mutex<Tally>>,
    log_prompts: bool,
}

#[derive(Default)]
struct Tally {
    compared: u64,
    agreed: u64,
    skipped: u64,
    /// (live route, candidate route) -> count and example prompts.
    cells: BTreeMap<(String, String), Cell>,
    /// The candidate's best score, by bucket.
    scores: [u64; BUCKETS],
    since: Option<SystemTime>,
}

#[derive(Default)]
struct Cell {
    count: u64,
    examples: Vec<String>,
}

/// `GET /admin/shadow`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShadowReport {
    pub candidate: String,
    pub since: Option<String>,
    pub compared: u64,
    pub agreed: u64,
    /// `agreed / compared` (null before the first prompt).
    pub agreement: Option<f64>,
    /// Prompts not compared because the queue was full.
    pub skipped: u64,
    /// Live route -> candidate route, most frequent first (`-`: no route).
    pub confusion: Vec<ConfusionCell>,
    /// The candidate's score of its best route: counts per bucket of 0.1 from -1 to 1.
    pub scores: Vec<ScoreBucket>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfusionCell {
    pub live: String,
    pub candidate: String,
    pub count: u64,
    /// Up to three prompts (only with `log_prompts: true`).
    pub examples: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScoreBucket {
    pub from: f32,
    pub to: f32,
    pub count: u64,
}

impl Shadow {
    /// Builds the candidate from `file` with the live model (the candidate's `encoder:` must
    /// be the live one's: its embeddings are reused) and starts the task that compares.
    pub fn start(file: &Path, live: &Engine, log_prompts: bool) -> Result<Shadow, String> {
        let config = Config::load(file).map_err(|e| e.to_string())?;
        if config.encoder != live.router.config().encoder {
            return Err(format!(
                "the shadow config {} has another `encoder:` than the live one; shadow routes reuse the live embeddings, so the encoders must be the same",
                file.display()
            ));
        }
        let (router, _) = RouteIndex::rebuild(
            config,
            live.worker.encoder().as_ref(),
            Some(&live.router),
            None,
        )
        .map_err(|e| format!("the shadow routes cannot be built: {e}"))?;
        let router = Arc::new(router);
        let (queue, mut observed) = tokio::sync::mpsc::channel::<Observed>(QUEUE);
        let tally = Arc::new(Mutex::new(Tally {
            since: Some(SystemTime::now()),
            ..Tally::default()
        }));
        let (task_router, task_tally) = (router.clone(), tally.clone());
        tokio::spawn(async move {
            while let Some(prompt) = observed.recv().await {
                let router = task_router.clone();
                let judged = tokio::task::spawn_blocking(move || {
                    let c = router.classify(&prompt.text, &prompt.embedding, None);
                    (Side::of(&c, router.config()), prompt)
                })
                .await;
                if let (Ok((candidate, prompt)), Ok(mut tally)) = (judged, task_tally.lock()) {
                    tally.count(&prompt, &candidate, log_prompts);
                }
            }
        });
        Ok(Shadow {
            file: file.display().to_string(),
            router,
            queue,
            tally,
            log_prompts,
        })
    }

    /// Queues `prompt` for the candidate; skipped (and counted) when the queue is full.
    pub fn observe(&self, prompt: Observed) {
        if self.queue.try_send(prompt).is_err()
            && let Ok(mut tally) = self.tally.lock()
        {
            tally.skipped += 1;
        }
    }

    pub fn router(&self) -> &Arc<RouteIndex> {
        &self.router
    }

    pub fn report(&self) -> ShadowReport {
        let Ok(tally) = self.tally.lock() else {
            return self.empty_report();
        };
        let mut confusion: Vec<ConfusionCell> = tally
            .cells
            .iter()
            .map(|((live, candidate), cell)| ConfusionCell {
                live: live.clone(),
                candidate: candidate.clone(),
                count: cell.count,
                examples: if self.log_prompts {
                    cell.examples.clone()
                } else {
                    Vec::new()
                },
            })
            .collect();
        confusion.sort_by_key(|c| std::cmp::Reverse(c.count));
        ShadowReport {
            candidate: self.file.clone(),
            since: tally.since.map(rfc3339),
            compared: tally.compared,
            agreed: tally.agreed,
            agreement: (tally.compared > 0).then(|| tally.agreed as f64 / tally.compared as f64),
            skipped: tally.skipped,
            confusion,
            scores: buckets(&tally.scores),
        }
    }

    fn empty_report(&self) -> ShadowReport {
        ShadowReport {
            candidate: self.file.clone(),
            since: None,
            compared: 0,
            agreed: 0,
            agreement: None,
            skipped: 0,
            confusion: Vec::new(),
            scores: buckets(&[0; BUCKETS]),
        }
    }
}

impl Tally {
    fn count(&mut self, prompt: &Observed, candidate: &Side, log_prompts: bool) {
        self.compared += 1;
        if prompt.live.route == candidate.route {
            self.agreed += 1;
        }
        let name = |r: &Option<String>| r.clone().unwrap_or_else(|| "-".into());
        let cell = self
            .cells
            .entry((name(&prompt.live.route), name(&candidate.route)))
            .or_default();
        cell.count += 1;
        if log_prompts && cell.examples.len() < EXAMPLES {
            cell.examples.push(prompt.text.chars().take(300).collect());
        }
        if let Some(score) = candidate.score.filter(|s| s.is_finite()) {
            let bucket = (((score.clamp(-1.0, 1.0) + 1.0) * 10.0) as usize).min(BUCKETS - 1);
            self.scores[bucket] += 1;
        }
    }
}

fn buckets(counts: &[u64; BUCKETS]) -> Vec<ScoreBucket> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &count)| ScoreBucket {
            from: -1.0 + i as f32 * 0.1,
            to: -1.0 + (i + 1) as f32 * 0.1,
            count,
        })
        .collect()
}
