//! Tasks and the due work the API writes for them (run now, snooze, removal on pause/cancel/edit).

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
    pub schedule_kind: String,
    pub schedule_expr: String,
    pub timezone: String,
    pub payload: Value,
    pub priority: i16,
    pub dedupe_key: Option<String>,
    pub dedupe_window_seconds: i32,
    pub max_retries: i16,
    pub backoff_strategy: String,
    pub concurrency_key: Option<String>,
    pub timeout_seconds: i32,
    pub misfire_grace_seconds: i32,
    pub catchup: String,
    pub overlap: String,
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
            schedule_kind: t.schedule_kind.clone(),
            schedule_expr: t.schedule_expr.clone(),
            timezone: t.timezone.clone(),
            payload: t.payload.clone(),
            priority: t.priority as i16,
            dedupe_key: t.dedupe_key.clone(),
            dedupe_window_seconds: t.dedupe_window_seconds,
            max_retries: t.max_retries as i16,
            backoff_strategy: t.backoff_strategy.clone(),
            concurrency_key: t.concurrency_key.clone(),
            timeout_seconds: t.timeout_seconds,
            misfire_grace_seconds: t.misfire_grace_seconds,
            catchup: t.catchup.clone(),
            overlap: t.overlap.clone(),
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
                &v.schedule_kind,
                &v.schedule_expr,
                &v.timezone,
                &v.payload,
                &v.priority,
                &v.dedupe_key,
                &v.dedupe_window_seconds,
                &v.max_retries,
                &v.backoff_strategy,
                &v.concurrency_key,
                &v.timeout_seconds,
                &v.misfire_grace_seconds,
                &v.catchup,
                &v.overlap,
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
                &v.schedule_kind,
                &v.schedule_expr,
                &v.timezone,
                &v.payload,
                &v.priority,
                &v.dedupe_key,
                &v.dedupe_window_seconds,
                &v.max_retries,
                &v.backoff_strategy,
                &v.concurrency_key,
                &v.timeout_seconds,
                &v.misfire_grace_seconds,
                &v.catchup,
                &v.overlap,
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

/// Copies the task's claim-relevant settings onto its pending, unleased work.
pub async fn restamp_pending_work(c: &impl Db, t: &Task) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "UPDATE due_work SET priority = $2,
                    concurrency_key = coalesce($3, CASE WHEN $4 <> 'allow' THEN 'task:' || $1::uuid::text END),
                    overlap = $4, catchup = $5, misfire_grace_seconds = $6, queue = $7,
                    rate_key = orrery_rate_key($8, coalesce($9::jsonb->'params', '{}') || coalesce(params, '{}'), event),
                    external_queue = (SELECT external_queue FROM task WHERE id = $1)
              WHERE task_id = $1 AND state = 'pending' AND (locked_until IS NULL OR locked_until < now())",
        )
        .await?;
    let priority = t.priority as i16;
    c.execute(
        &st,
        &[
            &t.id,
            &priority,
            &t.concurrency_key,
            &t.overlap,
            &t.catchup,
            &t.misfire_grace_seconds,
            &t.queue,
            &t.rate_key,
            &t.payload,
        ],
    )
    .await
}

/// Changes the status; `cursor_to` moves the materialization cursor (resume), `next_run_at` is written as is.
pub async fn set_status(
    c: &impl Db,
    id: Uuid,
    status: &str,
    cursor_to: Option<DateTime<Utc>>,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<TaskRow, Error> {
    let st = c
        .prepare_cached(&format!(
            "UPDATE task SET status = $2, materialized_until = coalesce($3, materialized_until),
                    next_run_at = $4, updated_at = now()
              WHERE id = $1 RETURNING {TASK_COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(&st, &[&id, &status, &cursor_to, &next_run_at])
        .await?;
    Ok(TaskRow::from_row(&row))
}

/// Removes the task's pending work that no worker holds: all of it (pause, cancel), or only the future
/// scheduled fires (schedule edits).
pub async fn delete_unleased_work(
    c: &impl Db,
    task_id: Uuid,
    only_future_fires: bool,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "DELETE FROM due_work
              WHERE task_id = $1 AND state = 'pending' AND (locked_until IS NULL OR locked_until < now())
                AND (NOT $2 OR (trigger = 'schedule' AND run_at > now()))",
        )
        .await?;
    c.execute(&st, &[&task_id, &only_future_fires]).await
}

/// Manual work due now; returns (id, run_at).
pub async fn insert_manual_work(
    c: &impl Db,
    t: &Task,
    params: Option<&Value>,
) -> Result<(i64, DateTime<Utc>), Error> {
    let st = c
        .prepare_cached(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup,
                                   misfire_grace_seconds, trigger, params, queue, rate_key, external_queue)
             VALUES ($1, now(), now(), $2, coalesce($3, CASE WHEN $4 <> 'allow' THEN 'task:' || $1::uuid::text END),
                     $4, $5, $6, 'manual', $7,
                     (SELECT tq.queue FROM task tq WHERE tq.id = $1),
                     (SELECT orrery_rate_key(tq.rate_key, coalesce(tq.payload->'params', '{}') || coalesce($7::jsonb, '{}'), NULL::jsonb) FROM task tq WHERE tq.id = $1),
                     (SELECT external_queue FROM task WHERE id = $1))
             RETURNING id, run_at",
        )
        .await?;
    let priority = t.priority as i16;
    let r = c
        .query_one(
            &st,
            &[
                &t.id,
                &priority,
                &t.concurrency_key,
                &t.overlap,
                &t.catchup,
                &t.misfire_grace_seconds,
                &params,
            ],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// The task's next pending, unleased fire (locked), as (id, run_at, ready_at). Manual runs are not fires:
/// snoozing never delays a run someone asked for explicitly.
pub async fn next_unleased_work(
    c: &impl Db,
    task_id: Uuid,
) -> Result<Option<(i64, DateTime<Utc>, DateTime<Utc>)>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, run_at, ready_at FROM due_work
              WHERE task_id = $1 AND state = 'pending' AND (locked_until IS NULL OR locked_until < now())
                AND trigger <> 'manual'
              ORDER BY ready_at, id LIMIT 1 FOR UPDATE",
        )
        .await?;
    Ok(c.query_opt(&st, &[&task_id])
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Moves a work item's ready_at later; returns the new ready_at.
pub async fn delay_work(c: &impl Db, id: i64, seconds: i32) -> Result<DateTime<Utc>, Error> {
    let st = c
        .prepare_cached(
            "UPDATE due_work SET ready_at = ready_at + make_interval(secs => $2::int) WHERE id = $1 RETURNING ready_at",
        )
        .await?;
    Ok(c.query_one(&st, &[&id, &seconds]).await?.get(0))
}

/// Materializes one scheduled fire with a later ready_at (snooze); None if the fire already exists.
pub async fn insert_scheduled_work(
    c: &impl Db,
    t: &Task,
    run_at: DateTime<Utc>,
    ready_at: DateTime<Utc>,
) -> Result<Option<i64>, Error> {
    let st = c
        .prepare_cached(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup,
                                   misfire_grace_seconds, trigger, queue, rate_key, external_queue)
             VALUES ($1, $2, $3, $4, coalesce($5, CASE WHEN $6 <> 'allow' THEN 'task:' || $1::uuid::text END),
                     $6, $7, $8, 'schedule',
                     (SELECT tq.queue FROM task tq WHERE tq.id = $1),
                     (SELECT orrery_rate_key(tq.rate_key, coalesce(tq.payload->'params', '{}') || coalesce(NULL::jsonb, '{}'), NULL::jsonb) FROM task tq WHERE tq.id = $1),
                     (SELECT external_queue FROM task WHERE id = $1))
             ON CONFLICT (task_id, run_at) WHERE trigger = 'schedule' DO NOTHING
             RETURNING id",
        )
        .await?;
    let priority = t.priority as i16;
    Ok(c.query_opt(
        &st,
        &[
            &t.id,
            &run_at,
            &ready_at,
            &priority,
            &t.concurrency_key,
            &t.overlap,
            &t.catchup,
            &t.misfire_grace_seconds,
        ],
    )
    .await?
    .map(|r| r.get(0)))
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

/// Waits for every in-flight settlement of the task's scheduled fires in `[from, to]` by locking them: a worker
/// completing one holds its row lock until its run is recorded, so after this the run is visible.
pub async fn lock_scheduled_work_between(
    c: &impl Db,
    task_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "SELECT id FROM due_work
              WHERE task_id = $1 AND trigger = 'schedule' AND run_at BETWEEN $2 AND $3
              ORDER BY id FOR UPDATE",
        )
        .await?;
    Ok(c.query(&st, &[&task_id, &from, &to]).await?.len() as u64)
}

/// Materializes the given nominal fires of a task as scheduled work due now, each at most once in the task's
/// lifetime: a fire that already ran (a task_run with attempt ≥ 1), is pending or dead in due_work, or was
/// backfilled before is left out. Returns the fires created.
pub async fn insert_backfill(
    c: &impl Db,
    t: &Task,
    fires: &[DateTime<Utc>],
) -> Result<Vec<DateTime<Utc>>, Error> {
    let st = c
        .prepare_cached(
            "WITH fire AS (SELECT unnest($2::timestamptz[]) AS run_at),
             fresh AS (
                 SELECT f.run_at FROM fire f
                  WHERE NOT EXISTS (SELECT 1 FROM task_run r
                                     WHERE r.task_id = $1 AND r.scheduled_for = f.run_at AND r.attempt > 0
                                       AND r.trigger IN ('schedule', 'retry'))
                    AND NOT EXISTS (SELECT 1 FROM due_work d
                                     WHERE d.task_id = $1 AND d.trigger = 'schedule' AND d.run_at = f.run_at)
             ),
             marked AS (
                 INSERT INTO backfill_fire (task_id, run_at) SELECT $1, run_at FROM fresh
                 ON CONFLICT DO NOTHING
                 RETURNING run_at
             )
             INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup,
                                   misfire_grace_seconds, trigger, queue, rate_key, external_queue)
             SELECT $1, m.run_at, now(), $3,
                    coalesce($4, CASE WHEN $5 <> 'allow' THEN 'task:' || $1::uuid::text END), $5, $6, $7, 'schedule',
                    (SELECT tq.queue FROM task tq WHERE tq.id = $1),
                    (SELECT orrery_rate_key(tq.rate_key, coalesce(tq.payload->'params', '{}') || coalesce(NULL::jsonb, '{}'), NULL::jsonb) FROM task tq WHERE tq.id = $1),
                    (SELECT external_queue FROM task WHERE id = $1)
               FROM marked m
             ON CONFLICT (task_id, run_at) WHERE trigger = 'schedule' DO NOTHING
             RETURNING run_at",
        )
        .await?;
    let priority = t.priority as i16;
    let mut created: Vec<DateTime<Utc>> = c
        .query(
            &st,
            &[
                &t.id,
                &fires,
                &priority,
                &t.concurrency_key,
                &t.overlap,
                &t.catchup,
                &t.misfire_grace_seconds,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    created.sort_unstable();
    Ok(created)
}
