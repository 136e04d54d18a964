//! The scheduler's maintenance statements: its heartbeat row (`scheduler_heartbeat`, read by the API's
//! `/health` and the console) and retention pruning of `event_outbox`, `task_run`, `audit_log`,
//! `event_delivery` and the dependency arrivals and gates.
//!
//! These statements use the database's `now()`, not the injected clock: heartbeats are read against `now()`,
//! and retention is a matter of wall-clock age (the rows' own instants default to `now()`).

use deadpool_postgres::GenericClient;
use tokio_postgres::Error;

/// Writes the scheduler instance's heartbeat (`last_seen` now; the row is created with its host name and pid
/// the first time), then removes the rows of instances not seen for a day.
pub async fn scheduler_heartbeat(
    c: &impl GenericClient,
    instance_id: &str,
    hostname: &str,
    pid: i32,
) -> Result<(), Error> {
    let beat = c
        .prepare_cached(
            "INSERT INTO scheduler_heartbeat (instance_id, hostname, pid) VALUES ($1, $2, $3)
             ON CONFLICT (instance_id) DO UPDATE SET last_seen = now()",
        )
        .await?;
    c.execute(&beat, &[&instance_id, &hostname, &pid]).await?;
    let stale = c
        .prepare_cached(
            "DELETE FROM scheduler_heartbeat WHERE last_seen < now() - interval '1 day'",
        )
        .await?;
    c.execute(&stale, &[]).await?;
    Ok(())
}

/// Removes the scheduler instance's heartbeat row (a clean stop). Returns the rows removed.
pub async fn remove_scheduler_heartbeat(
    c: &impl GenericClient,
    instance_id: &str,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached("DELETE FROM scheduler_heartbeat WHERE instance_id = $1")
        .await?;
    c.execute(&st, &[&instance_id]).await
}

/// Which retention window a pruning statement uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Runs,
    Audit,
}

/// The pruning statements, in the order they run: `$1` the window in days, `$2` the batch size.
const PRUNE: [(&str, Window); 6] = [
    (
        "DELETE FROM event_outbox WHERE id IN (
           SELECT id FROM event_outbox WHERE delivered_at < now() - make_interval(days => $1) LIMIT $2)",
        Window::Runs,
    ),
    (
        "DELETE FROM task_run WHERE id IN (
           SELECT id FROM task_run WHERE finished_at < now() - make_interval(days => $1) LIMIT $2)",
        Window::Runs,
    ),
    (
        "DELETE FROM audit_log WHERE id IN (
           SELECT id FROM audit_log WHERE created_at < now() - make_interval(days => $1) LIMIT $2)",
        Window::Audit,
    ),
    (
        "DELETE FROM event_delivery WHERE (task_id, event_id) IN (
           SELECT task_id, event_id FROM event_delivery
            WHERE created_at < now() - make_interval(days => $1) LIMIT $2)",
        Window::Runs,
    ),
    // Dependencies (docs/flow-control.md#dependencies): gates and arrivals go with the run history, except a
    // gate held for a paused dependent (its work would be lost).
    (
        "DELETE FROM dependency_arrival WHERE (task_id, trace_id, parent_task_id) IN (
           SELECT task_id, trace_id, parent_task_id FROM dependency_arrival
            WHERE arrived_at < now() - make_interval(days => $1) LIMIT $2)",
        Window::Runs,
    ),
    (
        "DELETE FROM dependency_gate WHERE (task_id, trace_id) IN (
           SELECT task_id, trace_id FROM dependency_gate
            WHERE created_at < now() - make_interval(days => $1) AND state <> 'held' LIMIT $2)",
        Window::Runs,
    ),
];

/// Deletes the rows older than their retention window: delivered outbox events, runs, event deliveries and
/// dependency arrivals and gates (except held gates) after `runs_days`, audit rows after `audit_days`. Each
/// table in batches of `batch` rows, one statement each (idempotent, safe with several schedulers), until a
/// batch comes back short. Returns the rows deleted.
pub async fn prune(
    c: &impl GenericClient,
    runs_days: i32,
    audit_days: i32,
    batch: i64,
) -> Result<u64, Error> {
    let mut total = 0;
    for (sql, window) in PRUNE {
        let days = match window {
            Window::Runs => runs_days,
            Window::Audit => audit_days,
        };
        let st = c.prepare_cached(sql).await?;
        loop {
            let n = c.execute(&st, &[&days, &batch]).await?;
            total += n;
            if n < batch as u64 {
                break;
            }
        }
    }
    Ok(total)
}
