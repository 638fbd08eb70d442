//! What starts a reload besides `POST /admin/reload`: SIGHUP, and with `serve --watch` the
//! config file changing (watched through its directory, since editors and Kubernetes
//! replace a file rather than write it in place; a burst of events is one reload).

use super::AppState;
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::time::Duration;

/// Events closer together than this are one change (an editor's save is several).
const QUIET: Duration = Duration::from_millis(200);

/// Reloads on every SIGHUP from now on.
pub fn on_signal(state: AppState) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let _ = state.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Reloads when `path` changes, from now on.
pub fn watch(state: AppState, path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if event.kind.is_access() {
            return;
        }
        // The file itself, or Kubernetes' `..data` link of a mounted ConfigMap.
        let ours = event.paths.iter().any(|p| {
            let file = p.file_name();
            file == name.as_deref() || file.is_some_and(|f| f.to_string_lossy().starts_with(".."))
        });
        if ours {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    })
    .map_err(std::io::Error::other)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(std::io::Error::other)?;
    tracing::info!(dir = %dir.display(), "watching the config file for changes");
    tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            while tokio::time::timeout(QUIET, rx.recv())
                .await
                .is_ok_and(|e| e.is_some())
            {}
            tracing::info!("the config file changed: reloading");
            let _ = state.reload().await;
        }
    });
    Ok(())
}
