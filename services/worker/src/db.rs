//! The database handle every task that writes the queue owns a clone of: the pool, who this worker is to the
//! queue (its `locked_by`), and the clock its statements bind.

use std::sync::Arc;

use deadpool_postgres::Pool;
use orrery::clock::Clock;

#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    /// `hostname-pid-random`: the `locked_by` of every lease this worker takes.
    pub worker_id: Arc<str>,
    pub clock: Clock,
}

impl Db {
    pub fn new(pool: Pool, worker_id: &str, clock: Clock) -> Self {
        Self {
            pool,
            worker_id: worker_id.into(),
            clock,
        }
    }

    pub fn clock(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.clock.param()
    }
}

/// `hostname-pid-random`: unique per process, readable in psql.
pub fn new_worker_id(hostname: &str) -> String {
    format!(
        "{}-{}-{:06x}",
        hostname,
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}
