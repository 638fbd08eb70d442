//! The client's end of a relayed answer: a bounded channel whose sends give up when the
//! client stops reading for too long, so a client that neither reads nor leaves cannot hold
//! an upstream connection, an in-flight slot and a budget reservation forever.

use super::Piece;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a client may leave a piece unread before it is taken to have gone.
pub const DEFAULT_CLIENT_STALL: Duration = Duration::from_secs(60);

pub struct ClientSide {
    tx: mpsc::Sender<Piece>,
    stall: Duration,
    /// Set when a send gave up: the client is treated as gone from then on.
    stalled: AtomicBool,
}

/// The client is gone (or stopped reading).
#[derive(Debug)]
pub struct Gone;

impl ClientSide {
    pub fn new(tx: mpsc::Sender<Piece>, stall: Duration) -> ClientSide {
        ClientSide {
            tx,
            stall,
            stalled: AtomicBool::new(false),
        }
    }

    /// Hands `piece` to the client, waiting at most the stall time for it to read.
    pub async fn send(&self, piece: Piece) -> Result<(), Gone> {
        if self.is_closed() {
            return Err(Gone);
        }
        match tokio::time::timeout(self.stall, self.tx.send(piece)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                tracing::info!(
                    stall_s = self.stall.as_secs_f64(),
                    "the client stopped reading; ending its answer"
                );
                self.stalled.store(true, Ordering::Relaxed);
                Err(Gone)
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.stalled.load(Ordering::Relaxed) || self.tx.is_closed()
    }

    /// Resolves when the client has gone.
    pub async fn closed(&self) {
        if self.stalled.load(Ordering::Relaxed) {
            return;
        }
        self.tx.closed().await;
    }
}
