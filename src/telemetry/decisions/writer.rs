//! The decision log's writer: a thread of its own (file writes never block the async
//! runtime) that turns each decision into a JSON line and writes it through a buffer,
//! flushed whenever the queue is momentarily empty, so lines show up within a few
//! milliseconds under light traffic and go out in large writes under heavy traffic.
//!
//! The thread looks at the queue every [`TICK`] rather than waiting on it: a thread that
//! waits must be woken by whoever hands it a line, and that wake (a system call, 3-4 us on
//! the development machine) would be most of what the log costs a request. Handing over a
//! line is then only a push onto the queue.

use super::Decision;
use crate::telemetry::Metrics;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

/// How often the writer takes what is queued: the longest a line waits to be written (and
/// the queue must hold what arrives meanwhile: 8,192 lines in 5 ms is 1.6 million a second).
pub const TICK: Duration = Duration::from_millis(5);

/// What the writer is handed.
pub(super) enum Message {
    Line(Arc<Decision>),
    /// Write and flush everything before this, then say so.
    Sync(oneshot::Sender<()>),
}

/// Where `--decision-log` writes: standard output for `-`, else `path` opened for append
/// (created if missing), so a restart adds to the same file.
pub fn open_sink(path: &Path) -> std::io::Result<Box<dyn Write + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Box::new(file))
}

/// Starts the writer thread; it ends once every sender is gone and the queue is written.
pub(super) fn spawn(
    out: Box<dyn Write + Send>,
    queue: mpsc::Receiver<Message>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("decision-log".into())
        .spawn(move || Writer::new(out, metrics).run(queue))
        .map(|_| ())
}

struct Writer {
    out: BufWriter<Box<dyn Write + Send>>,
    /// One line, formatted whole before it is written (a line that cannot be formatted is
    /// never half written).
    line: Vec<u8>,
    metrics: Arc<Metrics>,
    /// Lines written but not yet flushed (counted as dropped if the flush fails).
    unflushed: u64,
    /// Whether the last write failed (one warning per run of failures).
    failing: bool,
}

impl Writer {
    fn new(out: Box<dyn Write + Send>, metrics: Arc<Metrics>) -> Writer {
        Writer {
            out: BufWriter::with_capacity(64 * 1024, out),
            line: Vec::with_capacity(1024),
            metrics,
            unflushed: 0,
            failing: false,
        }
    }

    fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        loop {
            match queue.try_recv() {
                Ok(Message::Line(decision)) => self.write(&decision),
                Ok(Message::Sync(done)) => {
                    self.flush();
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => {
                    self.flush();
                    std::thread::sleep(TICK);
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        self.flush();
    }

    fn write(&mut self, decision: &Decision) {
        self.line.clear();
        let written = serde_json::to_writer(&mut self.line, decision)
            .map_err(std::io::Error::from)
            .and_then(|()| {
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            });
        match written {
            Ok(()) => self.unflushed += 1,
            Err(err) => self.failed(&err, 1),
        }
    }

    fn flush(&mut self) {
        if self.unflushed == 0 {
            return;
        }
        match self.out.flush() {
            Ok(()) => self.failing = false,
            Err(err) => self.failed(&err, self.unflushed),
        }
        self.unflushed = 0;
    }

    fn failed(&mut self, err: &std::io::Error, lines: u64) {
        self.metrics.decisions_dropped(lines);
        if !self.failing {
            tracing::warn!(error = %err, "cannot write the decision log; lines are dropped");
        }
        self.failing = true;
    }
}
