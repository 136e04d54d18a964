//! Orrery's shared library: configuration, telemetry, database and migrations, Redis streams, the schedule
//! engine, pipelines, and the SQL of the queue. The three binaries stay thin on top of it.

pub mod clock;
pub mod config;
pub mod db;
pub mod health;
pub mod http_policy;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod store;
/// The worker's queue statements (claim, complete, ...), at their old path.
pub use store::queue;
pub mod runtime;
pub mod schedule;
pub mod secrets;
pub mod shell_policy;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
