//! Labelled conversations offline (`eval`, `fit`): every distinct message is embedded once,
//! in batches, and scored once; then each item's last user message is decided with its
//! earlier turns, exactly as the service decides it.

use crate::config::ConversationConfig;
use crate::embed::{EmbedError, Embedding, Encoder};
use crate::offline::eval::Sample;
use crate::route::conversation::{MessageScores, Speaker};
use crate::route::decide::OverrideHit;
use crate::route::{Classification, Earlier, Router, history, message_key};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Texts embedded per batch.
const BATCH: usize = 64;

/// Every message of `samples` embedded and scored by `router`.
pub struct Scored {
    /// By (speaker, text) key.
    scores: HashMap<[u8; 32], Arc<MessageScores>>,
    /// The embeddings and override hits of the samples' last user messages, by key.
    last: HashMap<[u8; 32], (Embedding, Vec<OverrideHit>)>,
}

impl Scored {
    /// Embeds and scores each distinct message once: every sample's last user message and
    /// the earlier ones `params` reads (the history `classify` will be given).
    pub fn new(
        router: &Router,
        encoder: &Encoder,
        samples: &[Sample],
        params: &ConversationConfig,
    ) -> Result<Self, EmbedError> {
        let mut pending: Vec<(Speaker, &str)> = Vec::new();
        let mut seen = HashSet::new();
        let mut lasts = HashSet::new();
        for sample in samples {
            let last = message_key(Speaker::User, &sample.text);
            lasts.insert(last);
            let earlier = read(sample, params).iter().map(|(s, t)| (*s, t.as_str()));
            for (speaker, text) in earlier.chain([(Speaker::User, sample.text.as_str())]) {
                if seen.insert(message_key(speaker, text)) {
                    pending.push((speaker, text));
                }
            }
        }
        let mut scores = HashMap::with_capacity(pending.len());
        let mut last = HashMap::with_capacity(lasts.len());
        for chunk in pending.chunks(BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
            for ((speaker, text), embedding) in chunk.iter().zip(encoder.embed(&texts)?) {
                let key = message_key(*speaker, text);
                let hits = match speaker {
                    Speaker::User => router.override_hits(text),
                    Speaker::Assistant => Vec::new(),
                };
                scores.insert(key, router.score_message(key, *speaker, &hits, &embedding));
                if lasts.contains(&key) {
                    last.insert(key, (embedding, hits));
                }
            }
        }
        Ok(Scored { scores, last })
    }

    /// Each sample's classification with `params` as the conversation settings (the
    /// samples given to `new`, which read the same history, in the same order).
    pub fn classify(
        &self,
        router: &Router,
        samples: &[Sample],
        params: &ConversationConfig,
    ) -> Vec<Classification> {
        samples
            .iter()
            .filter_map(|sample| {
                let scored: Vec<(Speaker, &MessageScores)> = read(sample, params)
                    .iter()
                    .filter_map(|(speaker, text)| {
                        let s = self.scores.get(&message_key(*speaker, text))?;
                        Some((*speaker, s.as_ref()))
                    })
                    .collect();
                let key = message_key(Speaker::User, &sample.text);
                let (embedding, hits) = self.last.get(&key)?;
                let last = self.scores.get(&key)?;
                Some(router.classify_conversation_with(
                    params,
                    &scored,
                    last,
                    hits.clone(),
                    embedding,
                    None,
                ))
            })
            .collect()
    }
}

/// The earlier messages of `sample` a conversation with `params` reads.
fn read<'a>(sample: &'a Sample, params: &ConversationConfig) -> &'a [(Speaker, String)] {
    let earlier: Vec<Earlier> = sample
        .earlier
        .iter()
        .map(|(speaker, text)| Earlier {
            speaker: *speaker,
            text: Cow::Borrowed(text.as_str()),
        })
        .collect();
    let kept = history(&earlier, params).len();
    &sample.earlier[sample.earlier.len() - kept..]
}
