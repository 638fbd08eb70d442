//! `semroute serve`'s flags, and turning them into the server's options.

use anyhow::{Context, Result};
use semroute::serve::{self, ServeOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The routes file.
    #[arg(long, short)]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = semroute::http::DEFAULT_BODY_LIMIT)]
    max_body_bytes: usize,
    /// Prompts that may wait for the model before new ones get 429.
    #[arg(long, default_value_t = serve::DEFAULT_QUEUE)]
    queue: usize,
    /// Seconds a client has to send a request's head, from its first byte.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    header_timeout: f64,
    /// Seconds a request body has to arrive whole (else 408).
    #[arg(long, default_value_t = 60.0, value_parser = seconds)]
    body_timeout: f64,
    /// Seconds a keep-alive connection may stay idle between requests.
    #[arg(long, default_value_t = 60.0, value_parser = seconds)]
    idle_timeout: f64,
    /// Seconds requests in flight get to finish after SIGTERM or ctrl-c; then open
    /// streams end with an error event and the server exits.
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    shutdown_timeout: f64,
    /// Connections open at once; more are closed at once (keep it under the file
    /// descriptor limit, `ulimit -n`).
    #[arg(long, default_value_t = semroute::http::server::Limits::default().max_connections)]
    max_connections: usize,
    /// Reload the config when its file changes (it is also reloaded on SIGHUP and on
    /// POST /admin/reload).
    #[arg(long)]
    watch: bool,
    /// Write one JSON line per /classify and per proxied request to FILE (appended; `-`:
    /// standard output). Prompts are included only with `log_prompts: true`.
    #[arg(long, value_name = "FILE")]
    decision_log: Option<PathBuf>,
    /// A candidate routes file: every prompt is also classified with it (never
    /// dispatched), and GET /admin/shadow compares its decisions with the live ones.
    #[arg(long, value_name = "FILE")]
    shadow: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve::serve(ServeOptions {
        config_path: args.config,
        addr: args.addr,
        body_limit: args.max_body_bytes,
        queue: args.queue,
        body_timeout: Duration::from_secs_f64(args.body_timeout),
        limits: semroute::http::server::Limits {
            header_timeout: Duration::from_secs_f64(args.header_timeout),
            idle_timeout: Duration::from_secs_f64(args.idle_timeout),
            shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
            max_connections: args.max_connections.max(1),
        },
        watch: args.watch,
        decision_log: args.decision_log,
        shadow: args.shadow,
    }))?;
    // Streams cut short at the end of the drain may still hold the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

/// A number of seconds: finite, positive, at most a day.
fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(value)
    } else {
        Err(format!("{value} is outside (0, 86400] seconds"))
    }
}
