//! The inference worker: one dedicated OS thread owns the encoder, so model work never runs
//! on the async runtime's threads. Requests queue on a bounded channel; while a batch runs,
//! new requests wait, and the next batch takes everything waiting (up to a limit), so
//! concurrent prompts share forward passes. A full queue is refused at once (overload),
//! never grown without bound.

use super::{EmbedError, Embedding, Encoder, Truncator};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most prompts taken into one batch.
const MAX_BATCH: usize = 64;

/// Most texts of work that is not a prompt's (a reload's) waiting in the queue at once: the
/// queue holds this many places more than `queue_capacity`, kept for it, so a reload never
/// takes a prompt's place.
const SIDE_WORK_IN_QUEUE: usize = 8;

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Embedding, EmbedError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the embedding queue is full ({0} prompts waiting); retry shortly")]
    Overloaded(usize),
    #[error("the embedding worker has stopped")]
    Stopped,
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// A cheap-to-clone handle to the inference thread.
#[derive(Clone)]
pub struct EmbedWorker {
    jobs: mpsc::Sender<Job>,
    capacity: usize,
    truncator: Truncator,
    /// The model's tokenizer, untruncated, for token estimates (`None` if it cannot be
    /// copied, which does not happen with a loaded tokenizer).
    counter: Option<super::count::TokenCounter>,
    /// The encoder the thread runs, for work that is not a prompt's (a reload embedding new
    /// utterances on its own blocking thread; the encoder takes concurrent callers).
    encoder: Arc<Encoder>,
}

impl EmbedWorker {
    /// Starts the thread. `queue_capacity` prompts may wait; more are refused.
    pub fn spawn(encoder: Encoder, queue_capacity: usize) -> std::io::Result<EmbedWorker> {
        let capacity = queue_capacity.max(1);
        let (jobs, receiver) = mpsc::channel(capacity + SIDE_WORK_IN_QUEUE);
        let truncator = encoder.truncator();
        let counter = encoder.token_counter();
        let encoder = Arc::new(encoder);
        let for_thread = encoder.clone();
        std::thread::Builder::new()
            .name("semroute-embed".into())
            .spawn(move || run(&for_thread, receiver))?;
        Ok(EmbedWorker {
            jobs,
            capacity,
            truncator,
            counter,
            encoder,
        })
    }

    /// The encoder the worker's thread runs.
    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// The part of `text` the model will see (see `Truncator::prefix`): send that, not a
    /// copy of a huge prompt.
    /// Estimates tokens with the model's tokenizer (see `count.rs`).
    pub fn counter(&self) -> Option<&super::count::TokenCounter> {
        self.counter.as_ref()
    }

    pub fn prefix<'a>(&self, text: &'a str) -> &'a str {
        self.truncator.prefix(text)
    }

    pub async fn embed(&self, text: String) -> Result<Embedding, WorkerError> {
        // The last places are side work's (see `SIDE_WORK_IN_QUEUE`).
        if self.jobs.capacity() <= SIDE_WORK_IN_QUEUE && !self.jobs.is_closed() {
            return Err(WorkerError::Overloaded(self.capacity));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { text, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => WorkerError::Overloaded(self.capacity),
                mpsc::error::TrySendError::Closed(_) => WorkerError::Stopped,
            })?;
        answer
            .await
            .map_err(|_| WorkerError::Stopped)?
            .map_err(WorkerError::from)
    }
}

impl super::Embedder for EmbedWorker {
    fn model(&self) -> &Encoder {
        &self.encoder
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        self.embed_waiting(texts).map_err(|err| match err {
            WorkerError::Embed(err) => err,
            other => EmbedError::Inference(other.to_string()),
        })
    }
}

impl EmbedWorker {
    /// Embeds `texts` through the queue from a thread outside the async runtime (it blocks),
    /// a few at a time: they share the worker's batches with prompts and run at its
    /// priority, instead of competing with it for the cores from another thread.
    pub fn embed_waiting(&self, texts: &[&str]) -> Result<Vec<Embedding>, WorkerError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(SIDE_WORK_IN_QUEUE) {
            let mut answers = Vec::with_capacity(chunk.len());
            for text in chunk {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    text: self.prefix(text).to_owned(),
                    reply,
                };
                self.jobs
                    .blocking_send(job)
                    .map_err(|_| WorkerError::Stopped)?;
                answers.push(answer);
            }
            for answer in answers {
                out.push(answer.blocking_recv().map_err(|_| WorkerError::Stopped)??);
            }
        }
        Ok(out)
    }
}

fn run(encoder: &Encoder, mut receiver: mpsc::Receiver<Job>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Callers that gave up (client disconnected) need no work.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let texts: Vec<&str> = batch.iter().map(|job| job.text.as_str()).collect();
        match guarded(encoder, &texts) {
            Ok(embeddings) => {
                for (job, embedding) in batch.into_iter().zip(embeddings) {
                    let _ = job.reply.send(Ok(embedding));
                }
            }
            // One bad prompt must not fail the others that shared its batch.
            Err(_) if batch.len() > 1 => {
                for job in batch {
                    let result = guarded(encoder, &[job.text.as_str()]).and_then(|mut v| {
                        v.pop()
                            .ok_or_else(|| EmbedError::Inference("empty result".into()))
                    });
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => {
                for job in batch {
                    let _ = job.reply.send(Err(EmbedError::Inference(err.to_string())));
                }
            }
        }
    }
}

/// Runs the encoder, turning a panic inside it into an error so the worker stays up.
fn guarded(encoder: &Encoder, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
    catch_unwind(AssertUnwindSafe(|| encoder.embed(texts))).unwrap_or_else(|_| {
        Err(EmbedError::Inference(
            "the model panicked on this input".into(),
        ))
    })
}
