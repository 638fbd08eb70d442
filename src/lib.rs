//! semroute: a semantic router for LLM applications.
//!
//! Routes are defined in `routes.yaml` ([`config`]); their example utterances are embedded
//! with a local sentence encoder ([`embed`]) into an HNSW index ([`index`]). A prompt is
//! embedded, its nearest utterances are retrieved and scored per route ([`score`]), keyword
//! and pattern overrides are matched ([`overrides`]), and [`decide`] picks the route.
//! [`router`] ties these together; [`http`] serves them as a sidecar.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bench;
pub mod config;
pub mod decide;
pub mod dispatch;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fit;
pub mod head;
pub mod http;
pub mod index;
pub mod overrides;
pub mod router;
pub mod score;
pub mod serve;
pub mod tune;
pub mod vector;

pub use config::Config;
pub use embed::{Embedding, Encoder};
pub use router::{Classification, Router};
