//! Labelled conversations offline (`eval`, `fit`): every distinct message is embedded once,
//! in batches, and scored once; then each item's last user message is decided with its
//! earlier turns, exactly as the service decides it.

use crate::config::ConversationConfig;
use crate::embed::{EmbedError, Embedding, Encoder};
use crate::offline::eval::Sample;
use crate::route::conversation::{MessageScores, Speaker};
use crate::route::{Classification, Earlier, Router, history, message_key};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Texts embedded per batch.
const BATCH: usize = 64;

/// Every message of `samples` embedded and scored by `router`.
pub struct Scored {
    /// By (speaker, text) key.
    scores: HashMap<[u8; 32], Arc<MessageScores>>,
    /// The last user messages' embeddings, by sample.
    last: Vec<Embedding>,
}

impl Scored {
    pub fn new(router: &Router, encoder: &Encoder, samples: &[Sample]) -> Result<Self, EmbedError> {
        let history_turns = router.config().conversation.history_turns;
        let mut pending: Vec<(Speaker, &str)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for sample in samples {
            for (speaker, text) in read(sample, history_turns) {
                if seen.insert(message_key(*speaker, text)) {
                    pending.push((*speaker, text.as_str()));
                }
            }
        }
        let mut scores = HashMap::with_capacity(pending.len() + samples.len());
        for chunk in pending.chunks(BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
            for ((speaker, text), embedding) in chunk.iter().zip(encoder.embed(&texts)?) {
                let key = message_key(*speaker, text);
                let hits = match speaker {
                    Speaker::User => router.override_hits(text),
                    Speaker::Assistant => Vec::new(),
                };
                scores.insert(key, router.score_message(key, *speaker, &hits, &embedding));
            }
        }
        let mut last = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|s| s.text.as_str()).collect();
            for (text, embedding) in texts.iter().zip(encoder.embed(&texts)?) {
                let key = message_key(Speaker::User, text);
                let hits = router.override_hits(text);
                scores.insert(
                    key,
                    router.score_message(key, Speaker::User, &hits, &embedding),
                );
                last.push(embedding);
            }
        }
        Ok(Scored { scores, last })
    }

    /// Each sample's classification with `params` as the conversation settings.
    pub fn classify(
        &self,
        router: &Router,
        samples: &[Sample],
        params: &ConversationConfig,
    ) -> Vec<Classification> {
        samples
            .iter()
            .zip(&self.last)
            .map(|(sample, embedding)| {
                let scored: Vec<(Speaker, &MessageScores)> = read(sample, params.history_turns)
                    .iter()
                    .filter_map(|(speaker, text)| {
                        let s = self.scores.get(&message_key(*speaker, text))?;
                        Some((*speaker, s.as_ref()))
                    })
                    .collect();
                let hits = router.override_hits(&sample.text);
                match self.scores.get(&message_key(Speaker::User, &sample.text)) {
                    Some(last) => router
                        .classify_conversation_with(params, &scored, last, hits, embedding, None),
                    None => router.classify_with_hits(hits, embedding, None),
                }
            })
            .collect()
    }
}

/// The earlier messages of `sample` a conversation reads.
fn read(sample: &Sample, history_turns: usize) -> &[(Speaker, String)] {
    let earlier: Vec<Earlier> = sample
        .earlier
        .iter()
        .map(|(speaker, text)| Earlier {
            speaker: *speaker,
            text: Cow::Borrowed(text.as_str()),
        })
        .collect();
    let kept = history(&earlier, history_turns).len();
    &sample.earlier[sample.earlier.len() - kept..]
}
