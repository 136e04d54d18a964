//! Writes finished attempts in batches: whatever has accumulated while the previous statement ran goes
//! into the next one (one statement per batch settles the rows and inserts their task_run rows).

use std::sync::Arc;
use std::time::Duration;

use orrery::queue::{self, Completion, Settlement};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::Db;
use crate::held::HeldRows;
use crate::run_events::{RunEvent, RunEvents};
use crate::stats::Stats;
use crate::wakeup::Hints;
use orrery::streams::{Redis, WAKEUP, WAKEUP_MAXLEN};

/// Upper bound of one completion statement.
const MAX_BATCH: usize = 1000;

pub enum Finished {
    Settle {
        completion: Completion,
        task_id: Uuid,
        attempt: i32,
        /// In a queue with a concurrency or rate limit (see `ClaimedWork::limited`).
        limited: bool,
    },
    /// Claimed but never started (shutdown): lease cleared, attempt given back.
    Release { id: i64, fencing_token: i64 },
}

/// The completer task's handles.
pub struct Completer {
    pub db: Db,
    pub held: HeldRows,
    pub stats: Stats,
    pub events: Arc<RunEvents>,
    pub redis: Redis,
    pub lease_seconds: f64,
    /// Runners and served queues (`WORKER_CONCURRENCY`, `WORKER_QUEUES`): whether dependents released by a
    /// completion can all be taken here.
    pub concurrency: usize,
    pub queues: Option<Vec<String>>,
    /// Dependent work released by a completion is due at once: this worker's claimer is woken directly and
    /// the others with a hint on `orrery:wakeup`.
    pub hints: Hints,
}

pub async fn run(completer: Completer, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let completer = &completer;
    let mut batch: Vec<Finished> = Vec::with_capacity(MAX_BATCH);
    loop {
        match rx.recv().await {
            Some(first) => batch.push(first),
            None => return,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        flush(completer, &mut batch).await;
    }
}

async fn flush(completer: &Completer, batch: &mut Vec<Finished>) {
    let mut settle = Vec::new();
    let mut meta = Vec::new();
    let mut release = Vec::new();
    let mut gave_places = false;
    let mut limited_ids = Vec::new();
    for f in batch.drain(..) {
        match f {
            Finished::Settle {
                completion,
                task_id,
                attempt,
                limited,
            } => {
                gave_places |= limited;
                limited_ids.push(limited);
                meta.push((task_id, attempt));
                settle.push(completion);
            }
            Finished::Release { id, fencing_token } => release.push((id, fencing_token)),
        }
    }
    if !settle.is_empty() {
        let started = std::time::Instant::now();
        let fired = std::sync::atomic::AtomicI64::new(0);
        let fired_queues = std::sync::Mutex::new(Vec::new());
        let accepted = write_with_retry(completer, "complete", || async {
            let client = completer.db.pool.get().await?;
            let outcome = queue::complete_batch(
                &client,
                &completer.db.worker_id,
                &settle,
                completer.db.clock(),
            )
            .await?;
            fired.store(
                outcome.dependents_fired,
                std::sync::atomic::Ordering::Relaxed,
            );
            *fired_queues.lock().expect("fired queues") = outcome.dependent_queues;
            Ok(outcome.accepted)
        })
        .await;
        let fired = fired.load(std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            batch = settle.len(),
            complete_us = started.elapsed().as_micros() as u64,
            dependents_fired = fired,
            "completed"
        );
        let accepted: std::collections::HashSet<(i64, i64)> = accepted.into_iter().collect();
        let mut unreported = accepted.clone();
        for (c, (task_id, attempt)) in settle.iter().zip(meta.iter()) {
            // Once per accepted pair: a batch holding the same (row, token) twice reports it once.
            let ok = unreported.remove(&(c.id, c.fencing_token));
            if !ok {
                tracing::warn!(
                    due_work_id = c.id,
                    task_id = %task_id,
                    attempt,
                    fencing_token = c.fencing_token,
                    "completion discarded: the lease was lost to a newer claim (or the task was deleted)"
                );
                orrery::metrics::WORK
                    .with_label_values(&["discarded"])
                    .inc();
                continue;
            }
            let event = match c.settlement {
                Settlement::Succeeded => "succeeded",
                Settlement::Retry { .. } => "failed",
                Settlement::Dead => "dead",
            };
            match c.settlement {
                Settlement::Succeeded => {
                    completer.stats.finished(false);
                    orrery::metrics::WORK
                        .with_label_values(&["succeeded"])
                        .inc();
                }
                Settlement::Retry { .. } => {
                    completer.stats.finished(true);
                    orrery::metrics::WORK.with_label_values(&["failed"]).inc();
                    orrery::metrics::WORK.with_label_values(&["retried"]).inc();
                }
                Settlement::Dead => {
                    completer.stats.finished(true);
                    orrery::metrics::WORK.with_label_values(&["failed"]).inc();
                    orrery::metrics::WORK.with_label_values(&["dead"]).inc();
                }
            }
            completer.events.send(RunEvent {
                due_work_id: c.id,
                task_id: *task_id,
                event,
                attempt: *attempt,
            });
        }
        completer.held.remove(settle.iter().map(|c| c.id));
        if fired > 0 {
            let queues = fired_queues.into_inner().expect("fired queues");
            wake_for_dependents(completer, fired, &queues);
        }
        if gave_places {
            let ids: Vec<i64> = settle
                .iter()
                .zip(limited_ids.iter())
                .filter(|(c, l)| **l && accepted.contains(&(c.id, c.fencing_token)))
                .map(|(c, _)| c.id)
                .collect();
            // One try: a place not given back expires with the row's lease.
            let dropped = async {
                let client = completer.db.pool.get().await?;
                anyhow::Ok(queue::drop_places(&client, &ids).await?)
            }
            .await;
            if let Err(e) = dropped {
                tracing::warn!(error = %format!("{e:#}"), rows = ids.len(),
                    "queue places not given back; they expire with the leases");
            }
            // Places in a limited queue are free again: idle workers waiting for one may claim now (this
            // worker's own claimer is woken through `held`).
            let redis = completer.redis.clone();
            tokio::spawn(async move {
                redis
                    .hint(WAKEUP, WAKEUP_MAXLEN, &[("reason", "queue_place".into())])
                    .await
            });
        }
    }
    if !release.is_empty() {
        let released = write_with_retry(completer, "release", || async {
            let client = completer.db.pool.get().await?;
            Ok(queue::release_unstarted(&client, &release).await?)
        })
        .await;
        orrery::metrics::WORK
            .with_label_values(&["released"])
            .inc_by(released.len() as u64);
        tracing::info!(
            released = released.len(),
            "released prefetched rows that never started"
        );
        completer.held.remove(release.iter().map(|(id, _)| *id));
    }
}

/// Dependent rows were committed with the batch: wake this worker's claimer at once, and tell the other workers
/// (off the completer's path; a lost hint only delays them to their next poll) unless this worker takes them all
/// itself: it serves every queue they are in and has an idle runner for each. The hint would only have the others
/// race this worker's claim for rows it takes anyway, which on a small host costs the chain its latency (the
/// dependencies bench: 1.0 ms of p99 per edge with two workers). External dependents are claimed by long-polls
/// that do not read the hint.
fn wake_for_dependents(completer: &Completer, fired: i64, queues: &[String]) {
    completer.hints.wake();
    orrery::metrics::WORK
        .with_label_values(&["dependents_fired"])
        .inc_by(fired as u64);
    let served = match &completer.queues {
        None => true,
        Some(mine) => queues.iter().all(|q| mine.contains(q)),
    };
    let idle = completer.concurrency.saturating_sub(completer.held.count());
    // A stopping worker claims nothing more: the others must hear of the rows.
    let takes_all = served && (fired as usize) <= idle && !completer.stats.is_stopping();
    if queues.is_empty() || takes_all {
        return;
    }
    let redis = completer.redis.clone();
    tokio::spawn(async move {
        redis
            .hint(
                WAKEUP,
                WAKEUP_MAXLEN,
                &[("reason", "dependency".to_string())],
            )
            .await;
    });
}

/// Retries a write while PostgreSQL is unreachable: the leases are still ours until they expire, and a
/// write that arrives after a newer claim is discarded by the fencing token anyway. Gives up (the rows are
/// then reclaimed after their leases expire) once two lease periods have passed.
async fn write_with_retry<T, F, Fut>(completer: &Completer, what: &str, mut write: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<T>>>,
{
    let deadline =
        std::time::Instant::now() + Duration::from_secs_f64(completer.lease_seconds * 2.0);
    let mut backoff = Duration::from_millis(50);
    loop {
        match write().await {
            Ok(ids) => return ids,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), what, retry_in_ms = backoff.as_millis() as u64, "queue write failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), what, "queue write failed; giving up, the leases will expire");
                return Vec::new();
            }
        }
    }
}
