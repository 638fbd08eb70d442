//! Backend health shared by the replicas on one Redis: a replica that sees a provider's
//! 429, a refused credential or opens a breaker announces it (PUBLISH, and a key that
//! expires with the cooldown, for replicas that start later); every replica listens and
//! cools the backend too. A half-open probe is claimed in Redis (SET NX with an expiry),
//! so one replica probes at a time.

use super::Quota;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a claimed probe is held at most (a replica that dies mid-probe frees it so).
pub const PROBE_CLAIM: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    RateLimited,
    Credential,
    Open,
    Recovered,
}

/// One replica's news about a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub backend: String,
    pub kind: SignalKind,
    /// When the cooldown ends, in ms since the epoch (Recovered: when it was seen).
    pub until_ms: u64,
    /// The replica that saw it (a replica ignores its own).
    pub origin: u64,
}

impl Signal {
    /// How much of the cooldown is left now (`None`: over).
    pub fn remaining(&self) -> Option<Duration> {
        let now = wall_ms();
        (self.until_ms > now).then(|| Duration::from_millis(self.until_ms - now))
    }
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Quota {
    fn channel(&self) -> String {
        format!("{}:health", self.prefix())
    }

    fn cool_key(&self, backend: &str) -> String {
        format!("{}:cool:{backend}", self.prefix())
    }

    /// This replica's id in signals.
    pub fn replica(&self) -> u64 {
        self.replica
    }

    /// Announces `kind` for `backend` until `wait` from now, to every replica (best effort:
    /// a Redis that cannot be reached only costs the others their early warning).
    pub async fn announce(&self, backend: &str, kind: SignalKind, wait: Duration) {
        let Some(shared) = &self.shared else {
            return;
        };
        let signal = Signal {
            backend: backend.to_string(),
            kind,
            until_ms: wall_ms().saturating_add(wait.as_millis() as u64),
            origin: self.replica,
        };
        let Ok(text) = serde_json::to_string(&signal) else {
            return;
        };
        let key = self.cool_key(backend);
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(self.channel()).arg(&text).ignore();
        if kind == SignalKind::Recovered {
            pipe.cmd("DEL").arg(&key).ignore();
        } else {
            pipe.cmd("SET")
                .arg(&key)
                .arg(&text)
                .arg("PX")
                .arg(wait.as_millis().max(1) as u64)
                .ignore();
        }
        if let Err(err) = shared.pipeline(&pipe).await {
            tracing::warn!(error = %err, backend, "cannot share the backend's health with the other replicas");
        }
    }

    /// Claims `backend`'s half-open probe for this replica: `false` if another holds it.
    /// Without Redis (or when it cannot be reached) the local probe slot is enough.
    pub async fn claim_probe(&self, backend: &str) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let key = format!("{}:probe:{backend}", self.prefix());
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(self.replica)
            .arg("NX")
            .arg("PX")
            .arg(PROBE_CLAIM.as_millis() as u64);
        match shared.query::<Option<String>>(&cmd).await {
            Ok(reply) => reply.is_some(),
            Err(_) => true,
        }
    }

    /// Frees `backend`'s probe claim once its verdict is in.
    pub async fn release_probe(&self, backend: &str) {
        if let Some(shared) = &self.shared {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(format!("{}:probe:{backend}", self.prefix()));
            let _ = shared.query::<i64>(&cmd).await;
        }
    }

    /// The cooldowns other replicas announced that are still on (read at start and after
    /// each reconnect of the listener).
    async fn current(&self, backends: &[String]) -> Vec<Signal> {
        let Some(shared) = &self.shared else {
            return Vec::new();
        };
        if backends.is_empty() {
            return Vec::new();
        }
        let mut cmd = redis::cmd("MGET");
        for backend in backends {
            cmd.arg(self.cool_key(backend));
        }
        shared
            .query::<Vec<Option<String>>>(&cmd)
            .await
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect()
    }

    /// Hands every other replica's signal to `apply`, for as long as this process runs:
    /// the cooldowns on now, then each announcement as it comes, reconnecting after a
    /// second when Redis goes away.
    pub async fn listen(&self, backends: Vec<String>, apply: impl Fn(Signal) + Send + Sync) {
        let Some(url) = self.config.state.redis.clone() else {
            return;
        };
        loop {
            match self.subscribe(&url, &backends, &apply).await {
                Ok(()) => tracing::warn!("the shared health channel closed; reconnecting"),
                Err(err) => {
                    tracing::debug!(error = %err, "the shared health channel is down; retrying")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn subscribe(
        &self,
        url: &str,
        backends: &[String],
        apply: &(impl Fn(Signal) + Send + Sync),
    ) -> redis::RedisResult<()> {
        let client = redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel()).await?;
        for signal in self.current(backends).await {
            if signal.origin != self.replica {
                apply(signal);
            }
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Signal>(&text) {
                Ok(signal) if signal.origin != self.replica => apply(signal),
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "an unreadable health signal"),
            }
        }
        Ok(())
    }
}
