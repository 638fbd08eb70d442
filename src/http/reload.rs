//! A reload: the config file read and validated again, the new router, limits and
//! dispatcher built beside the ones in service, then swapped in at once. Anything that goes
//! wrong leaves the old config serving; the error says why. Reloads run one at a time
//! (SIGHUP, `POST /admin/reload` and `serve --watch` may ask together).

use super::AppState;
use super::live::{Engine, Live, Origin, rfc3339};
use crate::config::{Config, ConfigError};
use crate::embed::{EmbedWorker, Encoder, ModelError, files};
use crate::route::{BuildError, Provenance, Router as RouteIndex};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What a state needs to reload: its config file, and for a changed `encoder:` where to
/// look for the model and how long its queue is.
pub struct Source {
    pub path: PathBuf,
    pub model_roots: Vec<PathBuf>,
    pub queue: usize,
}

/// Reloads one at a time, and what the last one came to.
#[derive(Default)]
pub struct Reloader {
    source: Option<Source>,
    turn: tokio::sync::Mutex<()>,
    last: std::sync::Mutex<Option<LastReload>>,
}

/// The last reload, for `GET /admin/config`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastReload {
    /// `ok`, `unchanged` or `error`.
    #[schema(pattern = "^(ok|unchanged|error)$")]
    pub result: &'static str,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// Why it failed (the old config kept serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reloader {
    pub fn new(source: Source) -> Reloader {
        Reloader {
            source: Some(source),
            ..Reloader::default()
        }
    }

    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    fn remember(&self, result: &'static str, error: Option<String>) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(LastReload {
                result,
                at: rfc3339(std::time::SystemTime::now()),
                error,
            });
        }
    }
}

/// Why a reload kept the old config.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this service was not started from a config file; there is nothing to reload")]
    NoFile,
    #[error("the model and route index are still loading; reload once /readyz is ready")]
    NotReady,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("the model of the new `encoder:` cannot be loaded: {0}")]
    Model(#[from] ModelError),
    #[error("the route index cannot be built: {0}")]
    Build(#[from] BuildError),
    #[error("{0}")]
    Assemble(String),
    #[error("the reload stopped unexpectedly: {0}")]
    Interrupted(String),
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// `ok` (the new config is in service) or `unchanged` (the file is the one in service).
    #[schema(pattern = "^(ok|unchanged)$")]
    pub result: &'static str,
    /// The config in service now.
    pub config: Origin,
    /// Routes and backends of the config in service.
    pub routes: usize,
    pub backends: usize,
    /// Utterances the model embedded for this reload (the others' embeddings were reused).
    pub embedded: usize,
    /// Utterances whose embeddings were reused.
    pub reused: usize,
    /// Whether `encoder:` changed, so the model was loaded again.
    pub model_reloaded: bool,
    /// From reading the file to the swap.
    pub ms: f64,
}

impl AppState {
    /// Reads the config file again and, if it is valid and differs from the one in
    /// service, swaps in everything built from it. Counted in
    /// `semroute_config_reloads_total{result}` and logged either way.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let started = Instant::now();
        let outcome = self.reload_once(started).await;
        match &outcome {
            Ok(done) => {
                self.metrics.reloaded(done.result);
                self.reloader.remember(done.result, None);
                tracing::info!(
                    result = done.result,
                    hash = %done.config.hash,
                    generation = done.config.generation,
                    embedded = done.embedded,
                    ms = done.ms,
                    "config reload"
                );
            }
            Err(err) => {
                self.metrics.reloaded("error");
                self.reloader.remember("error", Some(err.to_string()));
                tracing::error!(error = %err, "config reload failed; the previous config keeps serving");
            }
        }
        outcome
    }

    async fn reload_once(&self, started: Instant) -> Result<Reloaded, ReloadError> {
        let source = self.reloader.source.as_ref().ok_or(ReloadError::NoFile)?;
        let _turn = self.reloader.turn.lock().await;
        let current = self.live();
        current.engine.as_ref().ok_or(ReloadError::NotReady)?;
        let path = source.path.clone();
        let text = tokio::fs::read(&path)
            .await
            .map_err(|err| ConfigError::Unreadable {
                file: path.display().to_string(),
                reason: err.to_string(),
            })?;
        let origin = Origin::new(Some(&path), &text, current.origin.generation + 1);
        if origin.hash == current.origin.hash {
            return Ok(report(
                &current,
                "unchanged",
                Provenance::default(),
                false,
                started,
            ));
        }
        let roots = source.model_roots.clone();
        let queue = source.queue;
        let previous = current.clone();
        let built = in_background(move || build(&text, &path, &roots, queue, &previous)).await?;
        let (config, new_engine, provenance, model_reloaded) = built?;
        let mut next = Live::assemble(
            Arc::new(config),
            origin,
            &self.metrics,
            &self.streams,
            Some(&current),
        )
        .map_err(ReloadError::Assemble)?;
        next.engine = Some(new_engine);
        for note in &next.config.notes {
            tracing::warn!(path = %note.path, line = note.line, "{}", note.message);
        }
        let next = Arc::new(next);
        let replaced = self.live.swap(next.clone());
        self.decisions.set_log_prompts(next.config.log_prompts);
        if let Some(old) = &replaced.dispatcher {
            old.retire();
        }
        Ok(report(&next, "ok", provenance, model_reloaded, started))
    }
}

/// Validates `text` and builds its router (blocking: the model may embed utterances, or
/// load when `encoder:` changed).
fn build(
    text: &[u8],
    path: &std::path::Path,
    roots: &[PathBuf],
    queue: usize,
    previous: &Live,
) -> Result<(Config, Engine, Provenance, bool), ReloadError> {
    let text = std::str::from_utf8(text).map_err(|err| ConfigError::Unreadable {
        file: path.display().to_string(),
        reason: format!("not UTF-8: {err}"),
    })?;
    let base_dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let config = Config::parse(text, &path.display().to_string(), &base_dir)?;
    let old = previous.engine.as_ref().ok_or(ReloadError::NotReady)?;
    let same_model = config.encoder == previous.config.encoder;
    let worker = if same_model {
        old.worker.clone()
    } else {
        let files = files::resolve(&config.encoder, roots).map_err(ModelError::from)?;
        let encoder = Encoder::load_files(files, &config.encoder)?;
        EmbedWorker::spawn(encoder, queue).map_err(|err| {
            ReloadError::Interrupted(format!("cannot start the model's thread: {err}"))
        })?
    };
    let cache_dir = crate::embed::cache::default_dir();
    let reuse = same_model.then_some(old.router.as_ref());
    let (router, provenance) =
        RouteIndex::rebuild(config.clone(), &worker, reuse, cache_dir.as_deref())?;
    let engine = Engine {
        router: Arc::new(router),
        worker,
    };
    Ok((config, engine, provenance, !same_model))
}

fn report(
    live: &Live,
    result: &'static str,
    provenance: Provenance,
    model_reloaded: bool,
    started: Instant,
) -> Reloaded {
    Reloaded {
        result,
        config: live.origin.clone(),
        routes: live.config.routes.len(),
        backends: live.config.backends.len(),
        embedded: provenance.embedded,
        reused: provenance.reused,
        model_reloaded,
        ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Runs `work` on a thread of its own at a lower CPU priority, so that a reload takes what
/// the requests being served leave of the cores instead of an even share (the new
/// utterances are embedded through the worker's queue, at its priority; see `build`).
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReloadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("semroute-reload".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .map_err(|err| ReloadError::Interrupted(format!("cannot start the reload: {err}")))?;
    rx.await
        .map_err(|_| ReloadError::Interrupted("the reload's thread ended without a result".into()))
}

/// Lowers the calling thread's priority to nice 10 (on Linux a thread has its own nice
/// value). The idle scheduling class was tried: the requests' tail was no better and a
/// reload under load took twice as long (p50 249 ms, max 631 ms at 100 requests/s).
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, RELOAD_NICE)
    };
    if result != 0 {
        tracing::debug!("cannot lower the reload thread's priority");
    }
}

/// The reload thread's nice value: below the server's threads, above idle work.
#[cfg(target_os = "linux")]
const RELOAD_NICE: libc::c_int = 10;

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
