//! The config in service and everything built from it (the router, the dispatcher and the
//! limits), held as one snapshot that a reload replaces whole (`ArcSwap`). A request loads
//! the snapshot once and finishes on it, so a reload never changes a request half-way.

use crate::config::Config;
use crate::dispatch::{Dispatcher, Streams};
use crate::embed::EmbedWorker;
use crate::error::{ApiError, ErrorKind};
use crate::quota::Quota;
use crate::route::Router as RouteIndex;
use crate::telemetry::Metrics;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// What a handler needs once the service is ready.
#[derive(Clone)]
pub struct Engine {
    pub router: Arc<RouteIndex>,
    pub worker: EmbedWorker,
}

/// Where the config in service came from (`GET /admin/config`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Origin {
    /// The file, when the config was read from one.
    pub file: Option<String>,
    /// SHA-256 of the file's bytes (hex).
    pub hash: String,
    /// When this config went into service (RFC 3339, UTC).
    pub loaded_at: String,
    /// 1 for the config the service started with, one more at each reload that changed it.
    pub generation: u64,
}

impl Origin {
    pub fn new(file: Option<&Path>, text: &[u8], generation: u64) -> Origin {
        Origin {
            file: file.map(|f| f.display().to_string()),
            hash: hex::encode(Sha256::digest(text)),
            loaded_at: rfc3339(SystemTime::now()),
            generation,
        }
    }
}

/// One config in service and what was built from it.
#[derive(Clone)]
pub struct Live {
    pub config: Arc<Config>,
    /// `None` while the model and index load at startup.
    pub engine: Option<Engine>,
    /// Present when the config defines backends.
    pub dispatcher: Option<Arc<Dispatcher>>,
    /// Present when the config sets limits, backend quotas or a shared state.
    pub quota: Option<Arc<Quota>>,
    /// The experiments' counters: in `state.redis`, or this process's (carried over a
    /// reload that keeps the same state).
    pub experiments: Arc<crate::experiment::store::Store>,
    /// The answer cache, when `cache:` is set (carried over a reload that keeps it).
    pub cache: Option<Arc<crate::cache::AnswerCache>>,
    pub origin: Origin,
}

impl Live {
    /// The limits and the dispatcher for `config`; with `previous`, counters, limits and
    /// each surviving backend's health carry on from it.
    pub fn assemble(
        config: Arc<Config>,
        origin: Origin,
        metrics: &Arc<Metrics>,
        streams: &Streams,
        previous: Option<&Live>,
    ) -> Result<Live, String> {
        let quota = quota_for(&config, metrics, previous.and_then(|p| p.quota.as_deref()))?;
        let dispatcher = if config.backends.is_empty() {
            None
        } else {
            let built = match previous.and_then(|p| p.dispatcher.as_deref()) {
                Some(old) => Dispatcher::succeed(old, config.clone(), quota.clone()),
                None => Dispatcher::new(
                    config.clone(),
                    metrics.clone(),
                    quota.clone(),
                    streams.clone(),
                ),
            };
            let dispatcher =
                Arc::new(built.map_err(|err| {
                    format!("cannot start the HTTP client for the backends: {err}")
                })?);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    dispatcher.start_health_checks(&runtime);
                    dispatcher.start_listening(&runtime);
                }
                Err(_) => tracing::warn!("no async runtime: active health checks are off"),
            }
            Some(dispatcher)
        };
        let experiments = match previous {
            Some(p)
                if p.config.state.redis == config.state.redis
                    && p.config.state.prefix == config.state.prefix =>
            {
                p.experiments.clone()
            }
            _ => Arc::new(
                crate::experiment::store::Store::for_state(&config.state)
                    .map_err(|err| format!("cannot set up the experiments' counters: {err}"))?,
            ),
        };
        let cache = answer_cache(&config, previous)?;
        Ok(Live {
            config,
            engine: previous.and_then(|p| p.engine.clone()),
            dispatcher,
            quota,
            experiments,
            cache,
            origin,
        })
    }

    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.as_ref().ok_or_else(not_ready)
    }
}

/// The answer cache `config` asks for: `previous`'s when its cache and state are the same
/// (its entries stay), a new one otherwise.
fn answer_cache(
    config: &Config,
    previous: Option<&Live>,
) -> Result<Option<Arc<crate::cache::AnswerCache>>, String> {
    let Some(wanted) = &config.cache else {
        return Ok(None);
    };
    if let Some(p) = previous
        && p.config.cache.as_ref() == Some(wanted)
        && p.config.state.redis == config.state.redis
        && p.config.state.prefix == config.state.prefix
        && let Some(cache) = &p.cache
    {
        return Ok(Some(cache.clone()));
    }
    crate::cache::AnswerCache::new(wanted, &config.state)
        .map(|c| Some(Arc::new(c)))
        .map_err(|err| format!("cannot set up the answer cache: {err}"))
}

/// The limits `config` needs, if any. With a previous quota its counters carry on; a
/// first one that cannot reach its Redis counts in this process (logged).
fn quota_for(
    config: &Arc<Config>,
    metrics: &Arc<Metrics>,
    previous: Option<&Quota>,
) -> Result<Option<Arc<Quota>>, String> {
    if !Quota::needed(config) {
        return Ok(None);
    }
    if let Some(previous) = previous {
        let quota = Quota::succeed(previous, config.clone())
            .map_err(|err| format!("cannot set up the shared limits: {err}"))?;
        return Ok(Some(warmed(Arc::new(quota), previous.shared().is_none())));
    }
    let quota = match Quota::new(config.clone(), metrics.clone()) {
        Ok(quota) => quota,
        Err(err) => {
            tracing::error!(error = %err, "cannot set up the shared limits; limits are counted in this process");
            let mut local = (**config).clone();
            local.state.redis = None;
            Quota::new(Arc::new(local), metrics.clone())
                .map_err(|err| format!("cannot set up the limits: {err}"))?
        }
    };
    Ok(Some(warmed(Arc::new(quota), true)))
}

/// Connects a new shared store now, so the first request does not pay for it.
fn warmed(quota: Arc<Quota>, new_store: bool) -> Arc<Quota> {
    if new_store
        && quota.shared().is_some()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        let warming = quota.clone();
        runtime.spawn(async move { warming.warm_up().await });
    }
    quota
}

pub fn not_ready() -> ApiError {
    ApiError::new(
        ErrorKind::NotReady,
        "the model and route index are still loading; retry shortly",
    )
}

/// `at` as RFC 3339 in UTC, to the millisecond (`2026-12-01T09:07:30.822Z`).
pub fn rfc3339(at: SystemTime) -> String {
    crate::telemetry::decisions::time::format(at)
}
