//! orrery-worker: leases `due_work`, runs pipelines, retries with backoff, records every attempt.
//!
//! The folder reads as the engine: [`claimer`] leases batches of ready rows and feeds a small local buffer,
//! [`runner`] runs them (at most `WORKER_CONCURRENCY` at once) through the [`executor`], [`completer`]
//! writes the results in batches, [`lease`] keeps the leases of held rows alive, [`wakeup`] listens for
//! Redis hints, [`run_events`] publishes run lifecycle events, [`heartbeat`] reports liveness.
//! [`worker`] wires them: each task owns clones of the handles it uses ([`db::Db`], [`held::HeldRows`],
//! [`stats::Stats`], [`wakeup::Hints`]) and no module depends on the worker module or on a shared hub.
//! The SQL lives in `orrery::queue`.

pub mod claimer;
pub mod completer;
pub mod db;
pub mod dependency;
pub mod executor;
pub mod heartbeat;
pub mod held;
pub mod lease;
pub mod run_events;
pub mod runner;
pub mod secrets;
pub mod settings;
pub mod stats;
pub mod wakeup;
pub mod worker;

use orrery::runtime::{self, Context, HealthPort};

pub fn main() -> i32 {
    runtime::main("orrery-worker", HealthPort::Worker, run)
}

pub async fn run(ctx: Context) -> anyhow::Result<()> {
    worker::Worker::run(ctx).await
}
