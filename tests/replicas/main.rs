//! Limits and budgets shared by two `semroute serve` processes through a real `redis-server`:
//! a limit holds across replicas, concurrent requests cannot overspend a budget, every
//! reservation is settled or lapses, Redis going away follows `state.on_error`, and a
//! client key shows up nowhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
mod harness;
#[path = "../upstream/mod.rs"]
mod upstream;

mod budgets;
mod cache;
mod experiments;
mod failures;
mod health;
mod limits;
