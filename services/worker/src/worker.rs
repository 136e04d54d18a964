//! The worker process: shared state, start-up, and the shutdown sequence (stop claiming → release the
//! prefetched rows → let in-flight runs finish within the grace period → flush completions → exit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use orrery::clock::Clock;
use orrery::config::Settings;
use orrery::runtime::Context;
use orrery::streams::Redis;
use tokio::sync::{mpsc, watch, Notify};

use crate::completer::Finished;
use crate::run_events::RunEvents;

/// A row this worker holds a lease on, from claim until its completion is written (or it is released).
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub fencing_token: i64,
    pub started: bool,
}

/// The worker's knobs, copied out of [`Settings`].
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
    /// Opens the secrets a pipeline reads; `None` without ORRERY_SECRETS_KEY.
    pub secrets: Option<orrery::secrets::Keyring>,
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
            secrets: s.secrets_keyring(),
        }
    }

    /// Rows held at most: running + a prefetched batch + a batch awaiting its completion statement, so a
    /// claim and a completion can always be in flight at the same time.
    pub fn max_outstanding(&self) -> usize {
        self.concurrency + 2 * self.batch_size
    }
}

/// State shared by the worker's tasks.
pub struct Shared {
    pub settings: WorkerSettings,
    pub worker_id: String,
    pub hostname: String,
    pub pool: Pool,
    pub redis: Redis,
    pub clock: Clock,
    pub held: Mutex<HashMap<i64, Held>>,
    /// Completions written or rows released: the claimer may have room again.
    pub capacity: Notify,
    /// A Redis hint (or anything else) says work may be ready.
    pub wake: Notify,
    pub redis_up: AtomicBool,
    pub stopping: AtomicBool,
    pub processed: AtomicI64,
    pub failed: AtomicI64,
    pub running: AtomicI32,
    pub state: Mutex<&'static str>,
    pub events: RunEvents,
}

impl Shared {
    pub fn held_count(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }

    /// Rows held, and of those the ones claimed but not started yet.
    pub fn held_and_buffered(&self) -> (usize, usize) {
        let held = self.held.lock().expect("held lock");
        (held.len(), held.values().filter(|h| !h.started).count())
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn set_state(&self, state: &'static str) {
        *self.state.lock().expect("state lock") = state;
    }

    pub fn state(&self) -> &'static str {
        *self.state.lock().expect("state lock")
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

pub struct Worker;

impl Worker {
    pub async fn run(ctx: Context) -> anyhow::Result<()> {
        let Context {
            settings,
            pool,
            redis,
            readiness,
            stop,
        } = ctx;
        let hostname = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let worker_id = new_worker_id(&hostname);
        let ws = WorkerSettings::from_settings(&settings);
        // One client for every run. If it cannot be built the worker does not start: no fallback to a client
        // with other redirect or address rules.
        let policy = orrery::http_policy::HttpPolicy::parse(&settings.worker_http_allow_cidrs)
            .map_err(|e| anyhow::anyhow!("WORKER_HTTP_ALLOW_CIDRS: {e}"))?;
        tracing::info!(allowed = ?policy.allowed(), "http.request address policy");
        let http = crate::executor::HttpTool::new(policy)
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client of http.request: {e}"))?
            .with_body_cap(ws.http_body_cap);
        tracing::info!(worker_id = %worker_id, concurrency = ws.concurrency, batch_size = ws.batch_size,
            lease_seconds = ws.lease_seconds, "worker starting");

        // Migrations run in the background; claim nothing before the schema is there.
        {
            let mut stop = stop.clone();
            while !readiness.migrated() {
                if *stop.borrow() {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.changed() => {}
                }
            }
        }

        let events = RunEvents::start(redis.clone(), worker_id.clone());
        let shared = Arc::new(Shared {
            settings: ws.clone(),
            worker_id: worker_id.clone(),
            hostname,
            pool,
            redis,
            clock: Clock::Database,
            held: Mutex::new(HashMap::new()),
            capacity: Notify::new(),
            wake: Notify::new(),
            redis_up: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            processed: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            running: AtomicI32::new(0),
            state: Mutex::new("starting"),
            events,
        });

        let heartbeat = tokio::spawn(crate::heartbeat::run(shared.clone(), stop.clone()));
        let wakeup = tokio::spawn(crate::wakeup::listen(shared.clone(), stop.clone()));
        let renewer = tokio::spawn(crate::lease::renew_loop(shared.clone(), stop.clone()));

        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let completer = tokio::spawn(crate::completer::run(shared.clone(), done_rx));

        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
        let (abort_tx, abort_rx) = watch::channel(false);
        let mut runners = Vec::with_capacity(ws.concurrency);
        for _ in 0..ws.concurrency {
            runners.push(tokio::spawn(crate::runner::runner_loop(
                shared.clone(),
                http.clone(),
                work_rx.clone(),
                done_tx.clone(),
                abort_rx.clone(),
            )));
        }
        drop(done_tx);

        shared.set_state("running");
        crate::heartbeat::beat(&shared).await;
        tracing::info!(worker_id = %worker_id, "worker running");

        // Claims until stopped; dropping `work_tx` then lets the runners drain the buffer (releasing it).
        crate::claimer::claim_loop(shared.clone(), work_tx, stop.clone()).await;

        let draining_since = Instant::now();
        shared.stopping.store(true, Ordering::SeqCst);
        shared.set_state("draining");
        tracing::info!(
            running = shared.running.load(Ordering::SeqCst),
            held = shared.held_count(),
            "stopping: no more claims; finishing in-flight runs"
        );
        let grace = ws.shutdown_grace;
        let grace_timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = abort_tx.send(true);
        });
        {
            let s = shared.clone();
            tokio::spawn(async move { crate::heartbeat::beat(&s).await });
        }
        for r in runners {
            let _ = r.await;
        }
        grace_timer.abort();
        // Every runner has sent its last completion; the completer flushes and exits.
        let _ = completer.await;
        renewer.abort();
        wakeup.abort();
        heartbeat.abort();
        shared.set_state("stopped");
        crate::heartbeat::beat(&shared).await;
        shared.events.close(Duration::from_secs(1)).await;
        tracing::info!(
            elapsed_ms = draining_since.elapsed().as_millis() as u64,
            processed = shared.processed.load(Ordering::SeqCst),
            failed = shared.failed.load(Ordering::SeqCst),
            "worker stopped"
        );
        Ok(())
    }
}
