//! The classification engine: a prompt's embedding and text in, a decision with its evidence
//! out. Routes' utterances live in an HNSW index ([`index`]), neighbours become per-route
//! scores ([`score`]) mixed with each route's mean utterance ([`prototypes`]) and re-weighted
//! by a learned head ([`head`], trained with L-BFGS), keywords and patterns are
//! matched ([`overrides`]), and [`decide`] applies the precedence rules. [`Router`] ties
//! them together. Nothing here knows about HTTP, backends or the command line.

mod context;
pub mod conversation;
pub mod decide;
pub mod head;
pub mod index;
mod lbfgs;
pub mod overrides;
pub mod prototypes;
pub mod score;

mod build;
mod router;

pub use build::Provenance;
pub use context::{
    Alone, ConversationReport, Earlier, TurnOutcome, content_text, history, message_key, split_chat,
};
pub use router::{BuildError, Candidate, Classification, NearUtterance, Router, Timing};
