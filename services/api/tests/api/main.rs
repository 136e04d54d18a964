//! The API over HTTP against the real service, PostgreSQL and Redis. One test binary, one module per area.

#[path = "../common/mod.rs"]
mod common;

mod agents;
mod dependencies;
mod errors;
mod events;
mod first_hour;
mod health;
mod jobs;
mod names;
mod preview;
mod queue;
mod queues;
mod runs;
mod secrets;
mod tasks;
