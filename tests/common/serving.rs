//! A state served on a real socket (127.0.0.1, a free port), as `semroute serve` serves it.

use semroute::http::server::{self, Limits};
use semroute::http::{AppState, app};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A server running a state; stop it with `stop`, await it with `done`.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serves `state` with `limits` until the returned server is stopped.
pub async fn start(state: AppState, limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let streams = state.streams().clone();
    let done = tokio::spawn(server::serve(
        listener,
        app(state),
        limits,
        async move {
            let _ = stopped.await;
        },
        move || streams.close(),
    ));
    Running {
        addr,
        stop: Some(stop),
        done,
    }
}
