//! Starting the sidecar: config, model files, socket, then the model and index load in the
//! background while `/healthz` already answers; `/readyz` turns 200 when they are in.

use crate::config::{Config, ConfigError};
use crate::embed::{EmbedWorker, Encoder, ModelError, files};
use crate::http::{AppState, Engine, Source, app};
use crate::route::{BuildError, Router};
use crate::telemetry::decisions::open_sink;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Prompts that may wait for the model before new ones are refused with 429.
pub const DEFAULT_QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config_path: PathBuf,
    pub addr: String,
    pub body_limit: usize,
    pub queue: usize,
    /// A request body must arrive within this.
    pub body_timeout: std::time::Duration,
    /// Header, idle and shutdown timeouts.
    pub limits: crate::http::server::Limits,
    /// Reload when the config file changes (besides SIGHUP and `POST /admin/reload`).
    pub watch: bool,
    /// Where decision log lines go (`-`: standard output); none are written without it.
    pub decision_log: Option<PathBuf>,
    /// A candidate config every prompt is also classified with (`GET /admin/shadow`).
    pub shadow: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("--shadow: {0}")]
    Shadow(String),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("cannot open the decision log {path}: {reason}")]
    DecisionLog { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Directories searched for a `models/<name>/` folder: the config file's, then the current.
pub fn model_roots(config_path: Option<&Path>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = config_path.and_then(Path::parent) {
        roots.push(if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        });
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots
}

/// Loads the encoder and builds the router (blocking: run it off the async runtime).
pub fn load_router(
    config: Config,
    model: files::ModelFiles,
) -> Result<(Router, Encoder), ServeError> {
    let started = Instant::now();
    let encoder = Encoder::load_files(model, &config.encoder)?;
    tracing::info!(
        model = %encoder.files().origin,
        ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    let utterances: usize = config.routes.iter().map(|r| r.utterances.len()).sum();
    let started = Instant::now();
    let cache_dir = crate::embed::cache::default_dir();
    let router = Router::build_cached(config, &encoder, cache_dir.as_deref())?;
    tracing::info!(
        utterances,
        ms = started.elapsed().as_millis() as u64,
        "route index built"
    );
    Ok((router, encoder))
}

/// Large buffers (a huge request, its copy for upstream) are given back to the system when
/// freed. glibc raises its mmap threshold to the size of each large block freed (up to
/// 32 MiB), after which tens-of-megabyte buffers come from arenas that keep their pages, so
/// one huge request would leave its memory resident for good; a fixed threshold stops that.
pub fn release_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 1 << 20;
        // SAFETY: mallopt only changes allocator tuning; called before the server starts.
        let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
        if applied != 1 {
            tracing::debug!("could not set the allocator's mmap threshold");
        }
    }
}

/// Runs the service until SIGTERM or ctrl-c.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    release_large_buffers();
    let path = &options.config_path;
    let text = std::fs::read(path).map_err(|err| ConfigError::Unreadable {
        file: path.display().to_string(),
        reason: err.to_string(),
    })?;
    let utf8 = std::str::from_utf8(&text).map_err(|err| ConfigError::Unreadable {
        file: path.display().to_string(),
        reason: format!("not UTF-8: {err}"),
    })?;
    let config = Config::parse(
        utf8,
        &path.display().to_string(),
        path.parent().unwrap_or(Path::new("")),
    )?;
    // Fail before binding if the model cannot be found: the clearest error, at once.
    let model = files::resolve(&config.encoder, &model_roots(Some(&options.config_path)))
        .map_err(ModelError::from)?;
    let decision_log = match &options.decision_log {
        Some(path) => Some(open_sink(path).map_err(|err| ServeError::DecisionLog {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?),
        None => None,
    };
    let listener = TcpListener::bind(&options.addr)
        .await
        .map_err(|err| ServeError::Bind {
            addr: options.addr.clone(),
            reason: err.to_string(),
        })?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(addr = %local, routes = config.routes.len(), "listening; loading model");
    for note in &config.notes {
        tracing::warn!(path = %note.path, line = note.line, "{}", note.message);
    }

    let source = Source {
        path: path.clone(),
        model_roots: model_roots(Some(path)),
        queue: options.queue,
    };
    let mut state = AppState::new(Arc::new(config.clone()), options.body_limit)
        .with_body_timeout(options.body_timeout)
        .with_source(source, &text);
    if let Some(out) = decision_log {
        state = state.with_decision_log(out)?;
    }
    let decisions = state.decisions().clone();
    // A client that stops reading a streamed answer is idle: gone after the idle timeout.
    state
        .streams()
        .set_client_stall(options.limits.idle_timeout);
    crate::http::watch::on_signal(state.clone());
    if options.watch {
        crate::http::watch::watch(state.clone(), path)?;
    }
    let (failed_tx, failed_rx) = oneshot::channel::<ServeError>();
    let loading_state = state.clone();
    let queue = options.queue;
    let shadow = options.shadow.clone();
    tokio::task::spawn_blocking(move || {
        let loaded = load_router(config, model).and_then(|(router, encoder)| {
            let worker = EmbedWorker::spawn(encoder, queue)?;
            let engine = Engine {
                router: Arc::new(router),
                worker,
            };
            if let Some(file) = &shadow {
                let log_prompts = engine.router.config().log_prompts;
                let candidate = crate::http::shadow::Shadow::start(file, &engine, log_prompts)
                    .map_err(ServeError::Shadow)?;
                tracing::info!(file = %file.display(), "shadow routes: every prompt is compared with this config");
                loading_state.set_shadow(candidate);
            }
            Ok(engine)
        });
        match loaded {
            Ok(engine) => {
                loading_state.set_ready(engine);
                tracing::info!("ready");
            }
            Err(err) => {
                let _ = failed_tx.send(err);
            }
        }
    });

    let streams = state.streams().clone();
    let mut failure = None;
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => tracing::info!("shutting down"),
            Ok(err) = failed_rx => failure = Some(err),
        }
    };
    crate::http::server::serve(listener, app(state), options.limits, stop, move || {
        streams.close();
    })
    .await;
    // The last lines (streams cut at the end of the drain) are written before the exit.
    if tokio::time::timeout(Duration::from_secs(2), decisions.sync())
        .await
        .is_err()
    {
        tracing::warn!("the decision log's last lines were not written in time");
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
