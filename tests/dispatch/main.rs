//! Dispatch through `POST /v1/chat/completions` against real mock upstreams on 127.0.0.1
//! (`upstream`), driven through the app by `proxy`: one module per concern, in one test
//! binary that loads the model once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../proxy/mod.rs"]
mod proxy;
#[path = "../upstream/mod.rs"]
mod upstream;

mod balancing;
mod cache;
mod classes;
mod continuation;
mod conversations;
mod cooldowns;
mod decisions;
mod escalation;
mod experiments;
mod keys;
mod long_answers;
mod metrics;
mod quotas;
mod reload;
mod requests;
mod retries;
mod streaming;
mod tenant_attacks;
mod tenants;
