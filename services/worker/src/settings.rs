//! The worker's knobs, copied out of [`Settings`] once at start-up.

use std::time::Duration;

use orrery::config::Settings;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub lease_seconds: f64,
    pub poll_interval: Duration,
    pub concurrency: usize,
    pub batch_size: usize,
    pub prefetch: usize,
    pub backoff_base: f64,
    pub backoff_max: f64,
    pub shutdown_grace: Duration,
    pub http_body_cap: usize,
    /// `WORKER_QUEUES`: the queues this worker claims from; `None` = every queue.
    pub queues: Option<Vec<String>>,
}

impl WorkerSettings {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            lease_seconds: s.worker_lease_seconds as f64,
            poll_interval: Duration::from_secs_f64(s.worker_poll_interval),
            concurrency: s.worker_concurrency,
            batch_size: s.worker_batch_size,
            prefetch: s.worker_prefetch,
            backoff_base: s.worker_backoff_base_delay,
            backoff_max: s.worker_backoff_max_delay,
            shutdown_grace: Duration::from_secs(s.worker_shutdown_grace_seconds as u64),
            http_body_cap: s.worker_http_body_cap_bytes,
            // Validated when the settings were loaded.
            queues: orrery::config::parse_queue_list(&s.worker_queues).unwrap_or(None),
        }
    }

    /// Rows held at most: running + a prefetched batch + a batch awaiting its completion statement, so a
    /// claim and a completion can always be in flight at the same time.
    pub fn max_outstanding(&self) -> usize {
        self.concurrency + 2 * self.batch_size
    }
}
