//! After a relayed stream breaks: whether the answer was already complete, and if not,
//! where it continues (the next usable target, with the relayed text as a prefill when the
//! answer allows one, else restarted there).

use super::{Opened, Piece, Relay};
use crate::config::BackendId;
use crate::dispatch::verdict::Outcome;
use crate::telemetry::decisions::PendingDecision;
use std::collections::BTreeMap;
use std::time::Instant;

impl Relay {
    /// After a break: finishes cleanly if the answer was complete, else continues on the
    /// next usable target. Returns false when the relay is over.
    pub(super) async fn recover(&mut self, reason: String) -> bool {
        let name = self.name();
        if self.all_finished() && self.sniff.is_none() {
            tracing::warn!(backend = %name, %reason, "the stream broke after the answer finished; ending it");
            let _ = self
                .out
                .send(Piece::Done {
                    backend: self.backend,
                })
                .await;
            return false;
        }
        tracing::warn!(backend = %name, %reason, "continuing on the next target");
        if self.dispatcher.health(self.backend).failed(Instant::now()) {
            self.dispatcher.cooled(self.backend);
        }
        self.in_flight = None;
        let failure = self.original_failure.get_or_insert(reason).clone();
        match self.continuation().await {
            Some((backend, opened, prefilled)) => {
                self.backend = backend;
                let name = self.name();
                self.request.note(|d| d.continued_on(&name));
                self.upstream = opened;
                self.in_flight = Some(self.dispatcher.health(backend).enter());
                let relayed = self.relayed_content().to_string();
                for choice in self.choices.values_mut() {
                    choice.tools.clear();
                    if !prefilled && !choice.finished {
                        choice.replay = Some(BTreeMap::new());
                    }
                }
                self.sniff = (prefilled && !relayed.is_empty()).then(Vec::new);
                true
            }
            None => {
                let _ = self.out.send(Piece::Failed(failure)).await;
                false
            }
        }
    }

    /// Whether the answer so far can be continued by a prefill: one choice, content only.
    fn prefillable(&self) -> Option<String> {
        if self.expected != 1 || self.choices.len() > 1 {
            return None;
        }
        let choice = self.choices.get(&0)?;
        let only_content = choice
            .texts
            .iter()
            .all(|(field, text)| *field == "content" || text.is_empty());
        let content = choice.texts.get("content")?;
        (only_content && !content.is_empty() && choice.replay.is_none()).then(|| content.clone())
    }

    /// Opens the continuation on the next usable target: prefilled when possible, else (or
    /// when the prefill is refused with a 400) restarted. `true`: prefilled.
    async fn continuation(&mut self) -> Option<(BackendId, Opened, bool)> {
        let prefill = self.prefillable();
        let class = self.request.data_class.as_ref().map(|c| c.class.clone());
        while !self.rest.is_empty() {
            let b = self.rest.remove(0);
            let backend = self.dispatcher.config.backend(b);
            let now = Instant::now();
            if !backend.accepts(class.as_deref())
                || !self
                    .dispatcher
                    .health
                    .usable(b, backend.max_concurrent, now)
            {
                continue;
            }
            // A backend that may be probed is probed by one request at a time.
            let Some(_admission) = self.dispatcher.health(b).admit(now) else {
                continue;
            };
            self.request.note(PendingDecision::attempted);
            let first = self
                .dispatcher
                .open_stream(b, &self.request, prefill.as_deref())
                .await;
            match first {
                Ok(opened) => {
                    self.dispatcher.health(b).succeeded();
                    return Some((b, opened, prefill.is_some()));
                }
                Err(Outcome::Status { status: 400, .. }) if prefill.is_some() => {
                    tracing::info!(backend = %backend.name, "the prefill was rejected; restarting without it");
                    self.request.note(PendingDecision::attempted);
                    if let Ok(opened) = self.dispatcher.open_stream(b, &self.request, None).await {
                        self.dispatcher.health(b).succeeded();
                        return Some((b, opened, false));
                    }
                }
                Err(outcome) => {
                    tracing::warn!(backend = %backend.name, outcome = %outcome.describe(), "cannot continue the stream here");
                    self.dispatcher.continuation_failed(b, &outcome);
                }
            }
        }
        None
    }
}
