//! A chat's earlier turns for routing (`POST /classify` with `messages`, chat with `model:
//! auto`): the messages the config reads are looked up in the router's score cache by
//! text; the rest are embedded (concurrently: the model worker batches them) and scored.

use super::Engine;
use crate::embed::{Embedding, has_visible_text};
use crate::error::{ApiError, ErrorKind};
use crate::route::conversation::{MessageScores, Speaker};
use crate::route::decide::OverrideHit;
use crate::route::{Classification, Router, history, message_key, split_chat};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// An earlier message: scored already, or to be embedded and scored.
pub(super) enum Earlier {
    Known(Speaker, Arc<MessageScores>),
    Embed {
        speaker: Speaker,
        key: [u8; 32],
        /// What the model sees of it.
        prefix: String,
        /// Its keyword and pattern hits (a user's message only).
        hits: Vec<OverrideHit>,
    },
}

/// The routing input of a chat: its last user message and the earlier messages the config
/// reads.
pub(super) struct ChatPrompt {
    /// The last user message's first bytes (`shadow::cut`), for the shadow config.
    pub text: String,
    /// The last user message's cache key.
    pub key: [u8; 32],
    /// What the model sees of it.
    pub prefix: String,
    pub hits: Vec<OverrideHit>,
    pub earlier: Vec<Earlier>,
}

impl ChatPrompt {
    /// Reads `messages`; the error says what is missing.
    pub fn read(
        messages: &[Value],
        router: &Router,
        prefix: impl Fn(&str) -> String,
    ) -> Result<ChatPrompt, ApiError> {
        let (earlier, last) = split_chat(messages)
            .filter(|(_, last)| has_visible_text(last))
            .ok_or_else(|| {
                ApiError::invalid("`messages` needs a user message with visible text to route by")
            })?;
        let hits = router.override_hits(&last);
        Ok(ChatPrompt::new(&earlier, &last, hits, router, prefix))
    }

    /// From a chat already split (`split_chat`), with the last message's override hits.
    pub fn new(
        earlier: &[crate::route::Earlier],
        last: &str,
        hits: Vec<OverrideHit>,
        router: &Router,
        prefix: impl Fn(&str) -> String,
    ) -> ChatPrompt {
        let earlier = history(earlier, &router.config().conversation)
            .iter()
            .map(|m| {
                let key = message_key(m.speaker, &m.text);
                match router.cached_scores(&key) {
                    Some(scores) => Earlier::Known(m.speaker, scores),
                    None => Earlier::Embed {
                        speaker: m.speaker,
                        key,
                        prefix: prefix(&m.text),
                        hits: match m.speaker {
                            Speaker::User => router.override_hits(&m.text),
                            Speaker::Assistant => Vec::new(),
                        },
                    },
                }
            })
            .collect();
        ChatPrompt {
            text: super::shadow::cut(last).to_string(),
            key: message_key(Speaker::User, last),
            prefix: prefix(last),
            hits,
            earlier,
        }
    }

    /// Embeds the last message and every earlier one not scored yet (each distinct text
    /// once), and decides; the last message's embedding comes back with the decision. The
    /// first refusal by the model worker (a full queue) ends it.
    pub async fn classify(
        self,
        engine: &Engine,
        top_k: Option<usize>,
    ) -> Result<(Classification, Embedding), ApiError> {
        let (router, worker) = (&engine.router, &engine.worker);
        let mut seen = HashSet::new();
        let distinct: Vec<&Earlier> = self
            .earlier
            .iter()
            .filter(|e| matches!(e, Earlier::Embed { key, .. } if seen.insert(*key)))
            .collect();
        let missing = distinct.iter().filter_map(|e| match e {
            Earlier::Embed { prefix, .. } => Some(worker.embed(prefix.clone())),
            Earlier::Known(..) => None,
        });
        let (last, missing) = tokio::join!(
            worker.embed(self.prefix),
            futures_util::future::try_join_all(missing)
        );
        let (last, missing) = (last?, missing?);
        let mut fresh: HashMap<[u8; 32], Arc<MessageScores>> = HashMap::new();
        for (e, embedding) in distinct.into_iter().zip(&missing) {
            if let Earlier::Embed {
                speaker, key, hits, ..
            } = e
            {
                let scores = router.score_message(*key, *speaker, hits, embedding);
                fresh.insert(*key, scores);
            }
        }
        let mut scored: Vec<(Speaker, Arc<MessageScores>)> = Vec::new();
        for e in &self.earlier {
            match e {
                Earlier::Known(speaker, scores) => scored.push((*speaker, scores.clone())),
                Earlier::Embed { speaker, key, .. } => {
                    let scores = fresh.get(key).cloned().ok_or_else(|| {
                        ApiError::new(ErrorKind::Internal, "a message was not embedded")
                    })?;
                    scored.push((*speaker, scores));
                }
            }
        }
        let last_scores = router.score_message(self.key, Speaker::User, &self.hits, &last);
        let earlier: Vec<(Speaker, &MessageScores)> =
            scored.iter().map(|(s, m)| (*s, m.as_ref())).collect();
        let decided = router.classify_conversation(&earlier, &last_scores, self.hits, &last, top_k);
        Ok((decided, last))
    }
}
