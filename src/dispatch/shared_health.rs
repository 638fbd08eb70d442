//! The dispatcher's side of health shared through Redis (`quota::signals`): a cooldown
//! this replica enters is announced to the others, theirs are applied here, and a
//! half-open probe is claimed across replicas before it is sent.

use super::Dispatcher;
use super::verdict::Cooldown;
use crate::config::BackendId;
use crate::quota::signals::{Signal, SignalKind};
use std::sync::Arc;
use std::time::Instant;

impl Dispatcher {
    /// Applies the other replicas' health signals from now on (with `state.redis`).
    pub fn start_listening(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let Some(quota) = self.quota.clone().filter(|q| q.shared().is_some()) else {
            return;
        };
        let names: Vec<String> = self
            .config
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect();
        let weak = Arc::downgrade(self);
        let retired = self.until_retired();
        runtime.spawn(async move {
            let listening = quota.listen(names, move |signal| {
                if let Some(dispatcher) = weak.upgrade() {
                    dispatcher.apply_signal(&signal);
                }
            });
            // A reload's dispatcher listens in this one's place (dropping the subscription).
            tokio::select! {
                () = listening => {}
                () = retired => {}
            }
        });
    }

    fn apply_signal(&self, signal: &Signal) {
        let Some(b) = self.config.backend_id(&signal.backend) else {
            return;
        };
        let (health, now) = (self.health.get(b), Instant::now());
        match (signal.kind, signal.remaining()) {
            (SignalKind::Recovered, _) => health.succeeded(),
            (_, None) => {}
            (SignalKind::RateLimited | SignalKind::Credential, Some(wait)) => {
                health.pinned_for(now, wait);
            }
            (SignalKind::Open, Some(wait)) => health.opened_for(now, wait),
        }
        tracing::debug!(backend = %signal.backend, kind = ?signal.kind, "health shared by another replica");
    }

    /// Tells the other replicas that `b` entered `cooldown`.
    pub(super) fn share_cooldown(&self, b: BackendId, cooldown: Cooldown) {
        let kind = match cooldown {
            Cooldown::None => return,
            Cooldown::Failure => SignalKind::Open,
            Cooldown::RateLimited(_) => SignalKind::RateLimited,
            Cooldown::Credential => SignalKind::Credential,
        };
        let Some(until) = self.health.get(b).cooling_until() else {
            return;
        };
        self.announce(b, kind, until.saturating_duration_since(Instant::now()));
    }

    /// Tells the other replicas that `b` answered its probe: it is back.
    pub(super) fn share_recovery(&self, b: BackendId) {
        self.announce(b, SignalKind::Recovered, std::time::Duration::ZERO);
    }

    fn announce(&self, b: BackendId, kind: SignalKind, wait: std::time::Duration) {
        let Some(quota) = self.quota.clone().filter(|q| q.shared().is_some()) else {
            return;
        };
        let name = self.config.backend(b).name.clone();
        tokio::spawn(async move { quota.announce(&name, kind, wait).await });
    }

    /// Claims `b`'s probe across replicas (always granted without Redis).
    pub(super) async fn claim_probe(&self, b: BackendId) -> bool {
        match &self.quota {
            Some(quota) => quota.claim_probe(&self.config.backend(b).name).await,
            None => true,
        }
    }

    /// Frees `b`'s probe claim.
    pub(super) fn release_probe(&self, b: BackendId) {
        if let Some(quota) = self.quota.clone().filter(|q| q.shared().is_some()) {
            let name = self.config.backend(b).name.clone();
            tokio::spawn(async move { quota.release_probe(&name).await });
        }
    }
}
