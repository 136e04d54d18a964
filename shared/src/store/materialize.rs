//! The materializer's statements (it plans against `store::now`): the batch of time-based tasks whose next fire is
//! inside the look-ahead (locked `FOR UPDATE SKIP LOCKED`, so any number of schedulers never meet), and the
//! cursor moves written in the same transaction as the work (`work::enqueue`) and the misfire records
//! (`tasks::record_missed_fires`).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Error;
use uuid::Uuid;

use crate::model::Catchup;
use crate::schedule::ScheduleKind;

/// A time-based task the materializer took, with what planning its fires needs.
#[derive(Debug, Clone)]
pub struct DueTask {
    pub id: Uuid,
    pub schedule_kind: ScheduleKind,
    pub schedule_expr: String,
    pub timezone: String,
    pub schedule_anchor: DateTime<Utc>,
    /// Where materialization resumes: `materialized_until`, or the task's creation before its first pass.
    pub cursor: DateTime<Utc>,
    pub catchup: Catchup,
    pub misfire_grace_seconds: i32,
}

/// Locks at most `limit` active time-based tasks (not `event`) whose next fire is unknown or at or before
/// `horizon`, skipping rows another scheduler holds (`FOR UPDATE SKIP LOCKED`; the locks last until the caller's
/// transaction ends). Returns them by next fire, unknown first.
pub async fn lock_due_tasks(
    c: &impl GenericClient,
    horizon: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DueTask>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, schedule_kind, schedule_expr, timezone, schedule_anchor,
                    coalesce(materialized_until, created_at) AS cursor, catchup, misfire_grace_seconds
               FROM task
              WHERE status = 'active' AND schedule_kind <> 'event'
                AND (next_fire_at IS NULL OR next_fire_at <= $1)
              ORDER BY next_fire_at NULLS FIRST
              LIMIT $2
                FOR UPDATE SKIP LOCKED",
        )
        .await?;
    c.query(&st, &[&horizon, &limit])
        .await?
        .iter()
        .map(|r| {
            Ok(DueTask {
                id: r.get("id"),
                schedule_kind: r.try_get("schedule_kind")?,
                schedule_expr: r.get("schedule_expr"),
                timezone: r.get("timezone"),
                schedule_anchor: r.get("schedule_anchor"),
                cursor: r.get("cursor"),
                catchup: r.try_get("catchup")?,
                misfire_grace_seconds: r.get("misfire_grace_seconds"),
            })
        })
        .collect()
}

/// Where a task's materialization cursor moves after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorMove {
    pub task_id: Uuid,
    /// The new `materialized_until`: fires up to here exist.
    pub materialized_until: DateTime<Utc>,
    /// The first fire after it (the new `next_fire_at`), if the schedule has one.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// No fire will ever come (or the task is parked): `next_fire_at` becomes `infinity`, whatever
    /// `next_fire_at` says.
    pub exhausted: bool,
    /// Written as is to `next_run_at` (what the API shows as the next run).
    pub next_run_at: Option<DateTime<Utc>>,
}

/// Writes the cursor moves of a pass (`materialized_until`, `next_fire_at`, `next_run_at`) in one statement.
/// Returns the rows changed.
pub async fn advance_cursors(c: &impl GenericClient, moves: &[CursorMove]) -> Result<u64, Error> {
    let id: Vec<Uuid> = moves.iter().map(|m| m.task_id).collect();
    let until: Vec<DateTime<Utc>> = moves.iter().map(|m| m.materialized_until).collect();
    let next: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.next_fire_at).collect();
    let exhausted: Vec<bool> = moves.iter().map(|m| m.exhausted).collect();
    let run: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.next_run_at).collect();
    let st = c
        .prepare_cached(
            "UPDATE task t
                SET materialized_until = u.mu,
                    next_fire_at = CASE WHEN u.ex THEN 'infinity'::timestamptz ELSE u.nf END,
                    next_run_at = u.nr
               FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bool[], $5::timestamptz[])
                    AS u(id, mu, nf, ex, nr)
              WHERE t.id = u.id",
        )
        .await?;
    c.execute(&st, &[&id, &until, &next, &exhausted, &run])
        .await
}
