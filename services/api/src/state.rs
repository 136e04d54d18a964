//! What every handler can reach: the pool, Redis, settings and the auth cache.

use std::time::Instant;

use deadpool_postgres::Pool;
use orrery::config::Settings;
use orrery::health::Readiness;
use orrery::streams::Redis;

use crate::auth::AuthCache;
use crate::error::ApiResult;
use orrery::clock::Clock;

pub struct AppState {
    pub pool: Pool,
    pub redis: Redis,
    pub settings: Settings,
    pub readiness: Readiness,
    pub auth: AuthCache,
    pub started: Instant,
    /// Wakes `POST /jobs/claim` requests waiting for work when this process makes work ready (run now,
    /// replay, a retry due at once); others find it on their next poll.
    pub jobs_ready: tokio::sync::Notify,
    /// Turns true when the process is stopping: waiting claims answer at once.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Where handlers read time (runtime `Context::clock`).
    pub clock: Clock,
}

impl AppState {
    /// A pooled connection; a pool that cannot deliver one in time is a 503.
    pub async fn db(&self) -> ApiResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}
