//! Task lifecycle writes: the status moves of `crate::lifecycle` and what goes with them.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Error;
use uuid::Uuid;

use crate::clock::Clock;
use crate::lifecycle::Action;
use crate::model::{TaskStatus, SYSTEM_AGENT_ID};

/// Writes a task's new status; `cursor_to` moves the materialization cursor (resume), `next_run_at` is written
/// as is. Returns the rows changed (0: no such task).
pub async fn set_status(
    c: &impl GenericClient,
    id: Uuid,
    status: TaskStatus,
    cursor_to: Option<DateTime<Utc>>,
    next_run_at: Option<DateTime<Utc>>,
    clock: &Clock,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "UPDATE task SET status = $2, materialized_until = coalesce($3, materialized_until),
                    next_run_at = $4, updated_at = coalesce($5::timestamptz, now())
              WHERE id = $1",
        )
        .await?;
    c.execute(
        &st,
        &[
            &id,
            &status.as_str(),
            &cursor_to,
            &next_run_at,
            &clock.param(),
        ],
    )
    .await
}

/// The scheduler's completion (lifecycle `Action::Complete`): exhausted schedules (`once` after its fire,
/// COUNT/UNTIL reached) whose pending work is all gone move to `completed`, audited as the system agent.
/// Returns the tasks completed.
pub async fn complete_exhausted(c: &impl GenericClient, clock: &Clock) -> Result<Vec<Uuid>, Error> {
    let complete = Action::Complete;
    let sources: Vec<&str> = complete.sources().iter().map(|s| s.as_str()).collect();
    let st = c
        .prepare_cached(
            "WITH done AS (
                 UPDATE task t SET status = $3, updated_at = coalesce($1::timestamptz, now())
                  WHERE t.status = ANY($4) AND t.next_fire_at = 'infinity' AND t.schedule_kind <> 'event'
                    AND NOT EXISTS (SELECT 1 FROM due_work d WHERE d.task_id = t.id AND d.state = 'pending')
                 RETURNING t.id)
             INSERT INTO audit_log (actor, action, subject_type, subject_id, details)
             SELECT $2::uuid, $5, 'task', id::text, '{\"by\": \"scheduler\"}'::jsonb FROM done
             RETURNING subject_id",
        )
        .await?;
    let rows = c
        .query(
            &st,
            &[
                &clock.param(),
                &SYSTEM_AGENT_ID,
                &complete.target().as_str(),
                &sources,
                &complete.audit_action(),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, String>("subject_id").parse().ok())
        .collect())
}

/// One schedule fire the materializer skipped (older than its misfire grace, catch-up `skip`/`latest`).
#[derive(Debug, Clone)]
pub struct MissedFire {
    pub task_id: Uuid,
    pub scheduled_for: DateTime<Utc>,
    pub message: String,
}

/// Records skipped fires as failed `task_run` rows of attempt 0 (`error_kind = 'misfired'`), in the
/// materializer's transaction.
pub async fn record_missed_fires(
    c: &impl GenericClient,
    fires: &[MissedFire],
    clock: &Clock,
) -> Result<u64, Error> {
    if fires.is_empty() {
        return Ok(0);
    }
    let task: Vec<Uuid> = fires.iter().map(|f| f.task_id).collect();
    let at: Vec<DateTime<Utc>> = fires.iter().map(|f| f.scheduled_for).collect();
    let msg: Vec<&str> = fires.iter().map(|f| f.message.as_str()).collect();
    let st = c
        .prepare_cached(
            "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, finished_at, success, error, error_kind)
             SELECT t, 0, 'schedule', a, coalesce($4::timestamptz, now()), false, m, 'misfired'
               FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(t, a, m)",
        )
        .await?;
    c.execute(&st, &[&task, &at, &msg, &clock.param()]).await
}
