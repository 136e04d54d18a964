//! Tasks as the API reads and edits them (the work they own is written through `orrery::store`).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

use super::Db;
use crate::input::Page;
use crate::models::{Task, TaskRef, TaskRow, TASK_COLUMNS};

/// Every writable column of a task, validated.
#[derive(Debug, Clone)]
pub struct TaskValues {
    pub name: Option<String>,
    pub title: String,
    pub description: String,
    pub created_by: Uuid,
    pub schedule_kind: orrery::schedule::ScheduleKind,
    pub schedule_expr: String,
    pub timezone: String,
    pub payload: Value,
    pub priority: i16,
    pub dedupe_key: Option<String>,
    pub dedupe_window_seconds: i32,
    pub max_retries: i16,
    pub backoff_strategy: orrery::model::BackoffStrategy,
    pub concurrency_key: Option<String>,
    pub timeout_seconds: i32,
    pub misfire_grace_seconds: i32,
    pub catchup: orrery::model::Catchup,
    pub overlap: orrery::model::Overlap,
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
        .prepare_cached(&format!("SELECT count(*) FROM task WHERE {WHERE}"))
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
        .get(0);
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
            .map(|r| r.get(0)),
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
        .map(|r| r.get(0)))
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
        .query_one(
            &st,
            &[
                &v.title,
                &v.description,
                &v.created_by,
                &v.schedule_kind.as_str(),
                &v.schedule_expr,
                &v.timezone,
                &v.payload,
                &v.priority,
                &v.dedupe_key,
                &v.dedupe_window_seconds,
                &v.max_retries,
                &v.backoff_strategy.as_str(),
                &v.concurrency_key,
                &v.timeout_seconds,
                &v.misfire_grace_seconds,
                &v.catchup.as_str(),
                &v.overlap.as_str(),
                &until,
                &next_run_at,
                &actor,
                &v.name,
                &v.after,
                &v.queue,
                &v.rate_key,
            ],
        )
        .await?;
    Ok(TaskRow::from_row(&row))
}

static INSERT_AUDITED: LazyLock<String> = LazyLock::new(|| {
    format!(
            "WITH t AS (
               INSERT INTO task (title, description, created_by, schedule_kind, schedule_expr, timezone, payload,
                                 priority, dedupe_key, dedupe_window_seconds, max_retries, backoff_strategy,
                                 concurrency_key, timeout_seconds, misfire_grace_seconds, catchup, overlap,
                                 schedule_anchor, materialized_until, next_run_at, name, after, queue, rate_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                       now(), coalesce($18, now()), $19, $21, $22, $23, $24)
               RETURNING {TASK_COLUMNS}
             ), named_queue AS (
               INSERT INTO queue (name) VALUES ($23) ON CONFLICT (name) DO NOTHING
             ), audit AS (
               INSERT INTO audit_log (actor, action, subject_type, subject_id, details)
               SELECT $20, 'task.create', 'task', t.id::text,
                      jsonb_build_object('title', t.title, 'name', t.name, 'schedule_kind', t.schedule_kind,
                                         'created_by', t.created_by)
                 FROM t
             )
             SELECT {TASK_COLUMNS} FROM t"
    )
});

/// Writes the edited values; with `cursor` the schedule is re-anchored and the cursor reset.
pub async fn update(
    c: &impl Db,
    id: Uuid,
    v: &TaskValues,
    cursor: Option<Cursor>,
) -> Result<TaskRow, Error> {
    let st = c
        .prepare_cached(&format!(
            "UPDATE task SET title = $2, description = $3, created_by = $4, schedule_kind = $5, schedule_expr = $6,
                    timezone = $7, payload = $8, priority = $9, dedupe_key = $10, dedupe_window_seconds = $11,
                    max_retries = $12, backoff_strategy = $13, concurrency_key = $14, timeout_seconds = $15,
                    misfire_grace_seconds = $16, catchup = $17, overlap = $18,
                    schedule_anchor = CASE WHEN $19 THEN $20 ELSE schedule_anchor END,
                    materialized_until = CASE WHEN $19 THEN $21 ELSE materialized_until END,
                    next_run_at = CASE WHEN $19 THEN $22 ELSE next_run_at END,
                    name = $23, after = $24, queue = $25, rate_key = $26, updated_at = now()
              WHERE id = $1
             RETURNING {TASK_COLUMNS}"
        ))
        .await?;
    let reset = cursor.is_some();
    let anchor = cursor.map(|c| c.schedule_anchor);
    let until = cursor.map(|c| c.materialized_until);
    let next = cursor.and_then(|c| c.next_run_at);
    ensure_queue(c, &v.queue).await?;
    let row = c
        .query_one(
            &st,
            &[
                &id,
                &v.title,
                &v.description,
                &v.created_by,
                &v.schedule_kind.as_str(),
                &v.schedule_expr,
                &v.timezone,
                &v.payload,
                &v.priority,
                &v.dedupe_key,
                &v.dedupe_window_seconds,
                &v.max_retries,
                &v.backoff_strategy.as_str(),
                &v.concurrency_key,
                &v.timeout_seconds,
                &v.misfire_grace_seconds,
                &v.catchup.as_str(),
                &v.overlap.as_str(),
                &reset,
                &anchor,
                &until,
                &next,
                &v.name,
                &v.after,
                &v.queue,
                &v.rate_key,
            ],
        )
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
                    id: r.get(0),
                    title: r.get(1),
                },
                r.get(2),
            )
        })
        .collect())
}

pub async fn agent_exists(c: &impl Db, id: Uuid) -> Result<bool, Error> {
    let st = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM agent WHERE id = $1)")
        .await?;
    Ok(c.query_one(&st, &[&id]).await?.get(0))
}
