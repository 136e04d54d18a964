//! The task row: its reads, create, edit and delete (with the values a client writes), and the lifecycle
//! writes (the status moves of `crate::lifecycle` and what goes with them).

use super::rows::{Task, TaskRef, TaskRow, TASK_COLUMNS};
use super::Page;
use crate::clock::Clock;
use crate::lifecycle::Action;
use crate::model::{TaskStatus, SYSTEM_AGENT_ID};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use deadpool_postgres::GenericClient as Db;
use serde_json::Value;
use std::sync::LazyLock;
use tokio_postgres::types::ToSql;
use tokio_postgres::Error;
use uuid::Uuid;
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

/// Every writable column of a task, validated.
#[derive(Debug, Clone)]
pub struct TaskValues {
    pub name: Option<String>,
    pub title: String,
    pub description: String,
    pub created_by: Uuid,
    pub schedule_kind: crate::schedule::ScheduleKind,
    pub schedule_expr: String,
    pub timezone: String,
    pub payload: Value,
    pub priority: i16,
    pub dedupe_key: Option<String>,
    pub dedupe_window_seconds: i32,
    pub max_retries: i16,
    pub backoff_strategy: crate::model::BackoffStrategy,
    pub concurrency_key: Option<String>,
    pub timeout_seconds: i32,
    pub misfire_grace_seconds: i32,
    pub catchup: crate::model::Catchup,
    pub overlap: crate::model::Overlap,
    /// The stored `after` (resolved entries, see `models::Dependency`).
    pub after: Value,
    pub queue: String,
    pub rate_key: Option<String>,
}

impl TaskValues {
    pub fn from_task(t: &Task) -> Self {
        TaskValues {
            name: t.name.clone(),
            title: t.title.clone(),
            description: t.description.clone(),
            created_by: t.created_by,
            schedule_kind: t.schedule_kind,
            schedule_expr: t.schedule_expr.clone(),
            timezone: t.timezone.clone(),
            payload: t.payload.clone(),
            priority: t.priority as i16,
            dedupe_key: t.dedupe_key.clone(),
            dedupe_window_seconds: t.dedupe_window_seconds,
            max_retries: t.max_retries as i16,
            backoff_strategy: t.backoff_strategy,
            concurrency_key: t.concurrency_key.clone(),
            timeout_seconds: t.timeout_seconds,
            misfire_grace_seconds: t.misfire_grace_seconds,
            catchup: t.catchup,
            overlap: t.overlap,
            after: serde_json::to_value(&t.after).unwrap_or_else(|_| Value::Array(Vec::new())),
            queue: t.queue.clone(),
            rate_key: t.rate_key.clone(),
        }
    }
}

/// The scheduler cursor and user-facing next fire written with a task.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    pub schedule_anchor: DateTime<Utc>,
    pub materialized_until: DateTime<Utc>,
    pub next_run_at: Option<DateTime<Utc>>,
}

/// The hottest query of the API, built once.
static GET_TASK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM task WHERE id = $1 AND ($2::uuid IS NULL OR created_by = $2)"
    )
});

pub async fn get(c: &impl Db, id: Uuid, owner: Option<Uuid>) -> Result<Option<TaskRow>, Error> {
    let st = c.prepare_cached(&GET_TASK).await?;
    Ok(c.query_opt(&st, &[&id, &owner])
        .await?
        .as_ref()
        .map(TaskRow::from_row))
}

/// Reads and locks the task row for the rest of the transaction (the scheduler skips locked rows).
pub async fn lock(c: &impl Db, id: Uuid, owner: Option<Uuid>) -> Result<Option<TaskRow>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM task WHERE id = $1 AND ($2::uuid IS NULL OR created_by = $2) FOR UPDATE"
        ))
        .await?;
    Ok(c.query_opt(&st, &[&id, &owner])
        .await?
        .as_ref()
        .map(TaskRow::from_row))
}

pub struct TaskFilter {
    pub status: Option<String>,
    pub schedule_kind: Option<String>,
    pub created_by: Option<Uuid>,
    pub owner: Option<Uuid>,
    pub name: Option<String>,
}

pub async fn list(c: &impl Db, f: &TaskFilter, page: Page) -> Result<(Vec<Task>, i64), Error> {
    const WHERE: &str =
        "($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR schedule_kind = $2)
         AND ($3::uuid IS NULL OR created_by = $3) AND ($4::uuid IS NULL OR created_by = $4)
         AND ($5::text IS NULL OR name = $5)";
    let st = c
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM task WHERE {WHERE} ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
        ))
        .await?;
    let rows = c
        .query(
            &st,
            &[
                &f.status,
                &f.schedule_kind,
                &f.created_by,
                &f.owner,
                &f.name,
                &page.limit,
                &page.offset,
            ],
        )
        .await?;
    let count = c
        .prepare_cached(&format!("SELECT count(*) AS total FROM task WHERE {WHERE}"))
        .await?;
    let total: i64 = c
        .query_one(
            &count,
            &[
                &f.status,
                &f.schedule_kind,
                &f.created_by,
                &f.owner,
                &f.name,
            ],
        )
        .await?
        .get("total");
    Ok((
        rows.iter().map(|r| TaskRow::from_row(r).task).collect(),
        total,
    ))
}

/// Serializes dedupe checks of one (creator, key) until the transaction ends (decision 6).
pub async fn lock_dedupe_key(c: &impl Db, created_by: Uuid, key: &str) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 7243))",
        )
        .await?;
    c.query_one(&st, &[&created_by.to_string(), &key]).await?;
    Ok(())
}

/// A task that holds the key: with window 0 any non-terminal task of the creator; with window N any task of
/// the creator created within the last N seconds.
pub async fn find_duplicate(
    c: &impl Db,
    created_by: Uuid,
    key: &str,
    window_seconds: i32,
    exclude: Option<Uuid>,
) -> Result<Option<Uuid>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id FROM task
              WHERE created_by = $1 AND dedupe_key = $2 AND ($4::uuid IS NULL OR id <> $4)
                AND CASE WHEN $3::int = 0 THEN status IN ('active', 'paused')
                         ELSE created_at > now() - make_interval(secs => $3::int) END
              ORDER BY created_at DESC LIMIT 1",
        )
        .await?;
    Ok(
        c.query_opt(&st, &[&created_by, &key, &window_seconds, &exclude])
            .await?
            .map(|r| r.get("id")),
    )
}

/// The task of `created_by` that holds `name` (other than `exclude`), if any.
pub async fn find_by_name(
    c: &impl Db,
    created_by: Uuid,
    name: &str,
    exclude: Option<Uuid>,
) -> Result<Option<Uuid>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id FROM task WHERE created_by = $1 AND name = $2 AND ($3::uuid IS NULL OR id <> $3)",
        )
        .await?;
    Ok(c.query_opt(&st, &[&created_by, &name, &exclude])
        .await?
        .map(|r| r.get("id")))
}

/// The columns a client writes, in the order [`TaskValues::params`] binds them: `$1` to `$21` of the insert and
/// of the update.
const VALUE_COLUMNS: [&str; 21] = [
    "title",
    "description",
    "created_by",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "payload",
    "priority",
    "dedupe_key",
    "dedupe_window_seconds",
    "max_retries",
    "backoff_strategy",
    "concurrency_key",
    "timeout_seconds",
    "misfire_grace_seconds",
    "catchup",
    "overlap",
    "name",
    "after",
    "queue",
    "rate_key",
];

impl TaskValues {
    /// The values of [`VALUE_COLUMNS`], in order, followed by a statement's own parameters.
    fn params<'a>(&'a self, extra: &[&'a (dyn ToSql + Sync)]) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &self.title,
            &self.description,
            &self.created_by,
            &self.schedule_kind,
            &self.schedule_expr,
            &self.timezone,
            &self.payload,
            &self.priority,
            &self.dedupe_key,
            &self.dedupe_window_seconds,
            &self.max_retries,
            &self.backoff_strategy,
            &self.concurrency_key,
            &self.timeout_seconds,
            &self.misfire_grace_seconds,
            &self.catchup,
            &self.overlap,
            &self.name,
            &self.after,
            &self.queue,
            &self.rate_key,
        ];
        debug_assert_eq!(p.len(), VALUE_COLUMNS.len());
        p.extend_from_slice(extra);
        p
    }
}

/// Inserts the task and its audit record in one statement (atomic without an explicit transaction).
/// `schedule_anchor` is the database's now; `materialized_until` is `until` or now.
pub async fn insert_audited(
    c: &impl Db,
    v: &TaskValues,
    until: Option<DateTime<Utc>>,
    next_run_at: Option<DateTime<Utc>>,
    actor: Uuid,
) -> Result<TaskRow, Error> {
    let st = c.prepare_cached(&INSERT_AUDITED).await?;
    let row = c
        .query_one(&st, &v.params(&[&until, &next_run_at, &actor]))
        .await?;
    Ok(TaskRow::from_row(&row))
}

/// `$1`..`$21`: the values; `$22` materialized_until (null: now), `$23` next_run_at, `$24` the actor.
static INSERT_AUDITED: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=VALUE_COLUMNS.len()).map(|i| format!("${i}")).collect();
    format!(
        "WITH t AS (
           INSERT INTO task ({columns}, schedule_anchor, materialized_until, next_run_at)
           VALUES ({placeholders}, now(), coalesce($22, now()), $23)
           RETURNING {TASK_COLUMNS}
         ), named_queue AS (
           INSERT INTO queue (name) VALUES ($20) ON CONFLICT (name) DO NOTHING
         ), audit AS (
           INSERT INTO audit_log (actor, action, subject_type, subject_id, details)
           SELECT $24, 'task.create', 'task', t.id::text,
                  jsonb_build_object('title', t.title, 'name', t.name, 'schedule_kind', t.schedule_kind,
                                     'created_by', t.created_by)
             FROM t
         )
         SELECT {TASK_COLUMNS} FROM t",
        columns = VALUE_COLUMNS.join(", "),
        placeholders = placeholders.join(", "),
    )
});

/// `$1`..`$21`: the values; `$22` the task, `$23` whether the cursor resets, then its anchor, cursor and next run.
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> = VALUE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect();
    format!(
        "UPDATE task SET {set},
                schedule_anchor = CASE WHEN $23 THEN $24 ELSE schedule_anchor END,
                materialized_until = CASE WHEN $23 THEN $25 ELSE materialized_until END,
                next_run_at = CASE WHEN $23 THEN $26 ELSE next_run_at END,
                updated_at = now()
          WHERE id = $22
         RETURNING {TASK_COLUMNS}",
        set = set.join(", "),
    )
});

/// Writes the edited values; with `cursor` the schedule is re-anchored and the cursor reset.
pub async fn update(
    c: &impl Db,
    id: Uuid,
    v: &TaskValues,
    cursor: Option<Cursor>,
) -> Result<TaskRow, Error> {
    let st = c.prepare_cached(&UPDATE).await?;
    let reset = cursor.is_some();
    let anchor = cursor.map(|c| c.schedule_anchor);
    let until = cursor.map(|c| c.materialized_until);
    let next = cursor.and_then(|c| c.next_run_at);
    ensure_queue(c, &v.queue).await?;
    let row = c
        .query_one(&st, &v.params(&[&id, &reset, &anchor, &until, &next]))
        .await?;
    Ok(TaskRow::from_row(&row))
}

/// Creates the queue's row (no limits, not paused) if it does not exist yet.
pub async fn ensure_queue(c: &impl Db, name: &str) -> Result<(), Error> {
    let st = c
        .prepare_cached("INSERT INTO queue (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .await?;
    c.execute(&st, &[&name]).await?;
    Ok(())
}

pub async fn set_materialized_until(
    c: &impl Db,
    id: Uuid,
    until: DateTime<Utc>,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<TaskRow, Error> {
    let st = c
        .prepare_cached(&format!(
            "UPDATE task SET materialized_until = $2, next_run_at = $3, updated_at = now()
              WHERE id = $1 RETURNING {TASK_COLUMNS}"
        ))
        .await?;
    let row = c.query_one(&st, &[&id, &until, &next_run_at]).await?;
    Ok(TaskRow::from_row(&row))
}

/// Deletes the task; its due work, runs and event deliveries go with it (ON DELETE CASCADE).
pub async fn delete(c: &impl Db, id: Uuid) -> Result<u64, Error> {
    let st = c.prepare_cached("DELETE FROM task WHERE id = $1").await?;
    c.execute(&st, &[&id]).await
}

/// Active event tasks (visible to `owner`, or all): (id, title, topic pattern).
pub async fn active_event_tasks(
    c: &impl Db,
    owner: Option<Uuid>,
) -> Result<Vec<(TaskRef, String)>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, title, schedule_expr FROM task
              WHERE status = 'active' AND schedule_kind = 'event' AND ($1::uuid IS NULL OR created_by = $1)
              ORDER BY schedule_expr, created_at, id",
        )
        .await?;
    Ok(c.query(&st, &[&owner])
        .await?
        .iter()
        .map(|r| {
            (
                TaskRef {
                    id: r.get("id"),
                    title: r.get("title"),
                },
                r.get("schedule_expr"),
            )
        })
        .collect())
}
