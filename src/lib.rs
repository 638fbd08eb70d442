//! semroute: a semantic router for LLM applications, in layers (see ARCHITECTURE.md).
//!
//! Routes and backends are defined in `routes.yaml` and validated once ([`config`]). The
//! engine ([`route`]) embeds each route's utterances with a local sentence encoder
//! ([`embed`], on the numeric [`kernels`]) into an HNSW index and decides a prompt's route.
//! The proxy ([`dispatch`]) sends a request to the route's backends with fallback, balancing
//! and cooldowns; [`http`] serves both, [`telemetry`] counts what happens, [`serve`] starts
//! and stops the service. [`offline`] holds the tools that run beside it: eval, fit, bench,
//! encoder tuning.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(test)]
mod architecture;
pub mod cache;
pub mod config;
pub mod dispatch;
pub mod embed;
pub mod error;
pub mod experiment;
pub mod http;
pub mod kernels;
pub mod offline;
pub mod quota;
pub mod route;
pub mod serve;
pub mod telemetry;

pub use config::Config;
pub use embed::{Embedding, Encoder};
pub use route::{Classification, Router};
