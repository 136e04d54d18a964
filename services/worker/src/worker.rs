//! The worker process: builds the handles (database, held rows, stats, hints), gives each task the ones it
//! uses, and runs the shutdown sequence (stop claiming → release the
//! prefetched rows → let in-flight runs finish within the grace period → flush completions → exit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use orrery::model::WorkerState;
use orrery::runtime::Context;
use tokio::sync::{mpsc, watch};

use crate::claimer::Claimer;
use crate::completer::{Completer, Finished};
use crate::db::{new_worker_id, Db};
use crate::heartbeat::Heartbeat;
use crate::held::HeldRows;
use crate::run_events::RunEvents;
use crate::runner::Runner;
use crate::settings::WorkerSettings;
use crate::stats::Stats;
use crate::wakeup::Hints;

pub struct Worker;

impl Worker {
    pub async fn run(ctx: Context) -> anyhow::Result<()> {
        let Context {
            settings,
            pool,
            redis,
            readiness,
            stop,
            clock,
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
        let shell_policy = orrery::shell_policy::ShellPolicy::parse(&settings.worker_shell_allow)
            .map_err(|e| anyhow::anyhow!("WORKER_SHELL_ALLOW: {e}"))?;
        if settings.worker_shell_enabled {
            tracing::info!(allowed = ?shell_policy.patterns(), "shell tool enabled");
        }
        let shell = crate::executor::ShellTool::new(
            settings.worker_shell_enabled,
            shell_policy,
            settings.worker_shell_output_cap_bytes,
        );
        tracing::info!(worker_id = %worker_id, concurrency = ws.concurrency, batch_size = ws.batch_size,
            lease_seconds = ws.lease_seconds, queues = ?ws.queues, "worker starting");

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

        let events = Arc::new(RunEvents::start(redis.clone(), worker_id.clone()));
        // The handles: each task below gets clones of the ones it uses, and nothing else.
        let db = Db::new(pool, &worker_id, clock.clone());
        let held = HeldRows::default();
        let stats = Stats::default();
        let hints = Hints::default();
        let hb = Heartbeat {
            db: db.clone(),
            stats: stats.clone(),
            hostname: hostname.into(),
        };

        let heartbeat = tokio::spawn(crate::heartbeat::run(hb.clone()));
        let wakeup = tokio::spawn(crate::wakeup::listen(
            hints.clone(),
            redis.clone(),
            stop.clone(),
        ));
        let renewer = tokio::spawn(crate::lease::renew_loop(
            db.clone(),
            held.clone(),
            ws.lease_seconds,
            stop.clone(),
        ));

        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let completer = tokio::spawn(crate::completer::run(
            Completer {
                db: db.clone(),
                held: held.clone(),
                stats: stats.clone(),
                events: events.clone(),
                redis: redis.clone(),
                lease_seconds: ws.lease_seconds,
                concurrency: ws.concurrency,
                queues: ws.queues.clone(),
                hints: hints.clone(),
            },
            done_rx,
        ));

        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
        let (abort_tx, abort_rx) = watch::channel(false);
        let runner = Runner {
            held: held.clone(),
            stats: stats.clone(),
            events: events.clone(),
            redis,
            http,
            shell,
            secrets: crate::secrets::SecretReader {
                pool: db.pool.clone(),
                keyring: settings.secrets_keyring(),
            },
            backoff_base: ws.backoff_base,
            backoff_max: ws.backoff_max,
            clock,
        };
        let mut runners = Vec::with_capacity(ws.concurrency);
        for _ in 0..ws.concurrency {
            runners.push(tokio::spawn(crate::runner::runner_loop(
                runner.clone(),
                work_rx.clone(),
                done_tx.clone(),
                abort_rx.clone(),
            )));
        }
        drop(done_tx);
        drop(runner);

        stats.set_state(WorkerState::Running);
        crate::heartbeat::beat(&hb).await;
        tracing::info!(worker_id = %worker_id, "worker running");

        // Claims until stopped; dropping `work_tx` then lets the runners drain the buffer (releasing it).
        let claimer = Claimer {
            db: db.clone(),
            settings: ws.clone(),
            held: held.clone(),
            stats: stats.clone(),
            hints,
        };
        crate::claimer::claim_loop(claimer, work_tx, stop.clone()).await;

        let draining_since = Instant::now();
        stats.stop_starting();
        stats.set_state(WorkerState::Draining);
        tracing::info!(
            running = stats.running(),
            held = held.count(),
            "stopping: no more claims; finishing in-flight runs"
        );
        let grace = ws.shutdown_grace;
        let grace_timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = abort_tx.send(true);
        });
        {
            let hb = hb.clone();
            tokio::spawn(async move { crate::heartbeat::beat(&hb).await });
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
        stats.set_state(WorkerState::Stopped);
        crate::heartbeat::beat(&hb).await;
        events.close(Duration::from_secs(1)).await;
        tracing::info!(
            elapsed_ms = draining_since.elapsed().as_millis() as u64,
            processed = stats.processed(),
            failed = stats.failed(),
            "worker stopped"
        );
        Ok(())
    }
}
