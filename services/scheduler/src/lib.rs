//! orrery-scheduler: materializes cron, RRULE, once and event fires into `due_work`, exactly once.
//!
//! Loops: the materializer (woken by `orrery:task-changes`, else every second; the database state is the
//! truth, so a missed message only costs up to a second), the events consumer, and the maintenance jobs.

pub mod events;
pub mod maintenance;
pub mod materializer;
pub mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orrery::runtime::{self, Context, HealthPort};
use orrery::streams::{Redis, TASK_CHANGES, WAKEUP, WAKEUP_MAXLEN};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::{watch, Notify};

use materializer::Materializer;

pub fn main() -> i32 {
    runtime::main("orrery-scheduler", HealthPort::Scheduler, run)
}

pub fn instance_id() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "scheduler".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub async fn run(ctx: Context) -> anyhow::Result<()> {
    // Wait for migrations (applied in the background, retried while PostgreSQL is down).
    while !ctx.readiness.migrated() {
        if *ctx.stop.borrow() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = instance_id();
    tracing::info!(instance_id = %id, "scheduler running");
    let wake = Arc::new(Notify::new());
    tokio::spawn(listen_task_changes(
        ctx.redis.clone(),
        wake.clone(),
        ctx.stop.clone(),
    ));
    tokio::spawn(events::run(
        ctx.pool.clone(),
        ctx.redis.clone(),
        id.clone(),
        ctx.settings.scheduler_event_reclaim_ms,
        ctx.clock.clone(),
        ctx.stop.clone(),
    ));
    tokio::spawn(relay::run(
        ctx.pool.clone(),
        ctx.redis.clone(),
        ctx.settings.scheduler_event_redeliver_seconds,
        ctx.stop.clone(),
    ));
    let maintenance = Arc::new(maintenance::Maintenance {
        pool: ctx.pool.clone(),
        redis: ctx.redis.clone(),
        settings: ctx.settings.clone(),
        instance_id: id.clone(),
    });
    let _ = maintenance.heartbeat().await;
    let mut jobs = match maintenance::start(maintenance.clone()).await {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::error!(error = %e, "maintenance jobs did not start");
            None
        }
    };
    let materializer = Materializer::new(
        ctx.pool.clone(),
        ctx.clock.clone(),
        chrono::Duration::seconds(ctx.settings.scheduler_lookahead_seconds as i64),
        ctx.settings.scheduler_batch_size as i64,
    );
    materialize_loop(
        &materializer,
        &ctx.redis,
        wake,
        ctx.stop.clone(),
        ctx.settings.scheduler_reconcile_interval,
    )
    .await;
    if let Some(j) = jobs.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(1), j.shutdown()).await;
    }
    maintenance.stop_heartbeat().await;
    Ok(())
}

/// Materializes until caught up, then sleeps until a task change, the next tick, or stop.
pub async fn materialize_loop(
    materializer: &Materializer,
    redis: &Redis,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    reconcile_interval: f64,
) {
    let mut backoff = Duration::from_millis(100);
    let mut last_reconcile = Instant::now() - Duration::from_secs(3600);
    let reconcile_every = Duration::from_secs_f64(reconcile_interval);
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        match materializer.catch_up().await {
            Ok(stats) => {
                backoff = Duration::from_millis(100);
                if stats.fires > 0 {
                    tracing::debug!(tasks = stats.tasks, fires = stats.fires, "materialized");
                    let earliest = stats.earliest.map(|t| t.to_rfc3339()).unwrap_or_default();
                    redis
                        .hint(
                            WAKEUP,
                            WAKEUP_MAXLEN,
                            &[("reason", "materialized".into()), ("ready_at", earliest)],
                        )
                        .await;
                }
                if stats.misfires > 0 {
                    tracing::info!(
                        misfires = stats.misfires,
                        "overdue fires skipped by catch-up policy"
                    );
                }
                if last_reconcile.elapsed() >= reconcile_every.min(Duration::from_secs(1)) {
                    last_reconcile = Instant::now();
                    match materializer.complete_exhausted().await {
                        Ok(done) if !done.is_empty() => {
                            tracing::info!(count = done.len(), "tasks completed");
                            for id in done {
                                redis
                                    .hint(
                                        TASK_CHANGES,
                                        orrery::streams::TASK_CHANGES_MAXLEN,
                                        &[
                                            ("task_id", id.to_string()),
                                            ("action", "completed".into()),
                                        ],
                                    )
                                    .await;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "completion check failed"),
                    }
                    orrery::metrics::RECONCILE_DURATION
                        .with_label_values(&["ok"])
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "materialization failed");
                orrery::metrics::RECONCILE_DURATION
                    .with_label_values(&["error"])
                    .observe(started.elapsed().as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        tokio::select! {
            _ = wake.notified() => {},
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            _ = stop.changed() => return,
        }
    }
}

/// Wakes the materializer on every `orrery:task-changes` entry. Without Redis the 1 s tick is the fallback.
async fn listen_task_changes(redis: Redis, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let stream = redis.key(TASK_CHANGES);
    let mut last = "$".to_string();
    let mut backoff = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut conn = match redis.dedicated().await {
            Ok(c) => c,
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        loop {
            let opts = StreamReadOptions::default().count(100).block(5000);
            let keys = [stream.as_str()];
            let ids = [last.as_str()];
            let reply: redis::RedisResult<StreamReadReply> = tokio::select! {
                r = conn.xread_options(&keys, &ids, &opts) => r,
                _ = stop.changed() => return,
            };
            match reply {
                Ok(reply) => {
                    let ids: Vec<String> = reply
                        .keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .map(|i| i.id)
                        .collect();
                    if let Some(l) = ids.last() {
                        last = l.clone();
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "task-changes listener reconnecting");
                    // Anything missed meanwhile is caught by the periodic pass.
                    last = "$".to_string();
                    wake.notify_one();
                    break;
                }
            }
        }
    }
}
