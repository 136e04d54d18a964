//! The console's reads: counts for the overview and keyset-paginated lists (never OFFSET).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Error;
use utoipa::ToSchema;
use uuid::Uuid;

use super::rows::{DeadWork, Run, TaskRow, DEAD_COLUMNS, RUN_COLUMNS, TASK_COLUMNS};
use crate::model::TaskStatus;
use deadpool_postgres::GenericClient as Db;

/// Tasks by status (only the caller's own tasks unless admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskCounts {
    pub active: i64,
    pub paused: i64,
    pub canceled: i64,
    pub completed: i64,
}

/// Work in the queue (due_work rows).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct WorkCounts {
    /// Pending, ready now, not leased.
    pub due: i64,
    /// Pending with ready_at in the future.
    pub scheduled: i64,
    /// Held by a live lease (running).
    pub running: i64,
    pub dead: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Outcomes {
    pub succeeded: i64,
    pub failed: i64,
}

/// Runs finished in one hour of the last day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HourBucket {
    /// Start of the hour-long window (now − (hours_ago + 1) h, exclusive of the next bucket).
    pub hours_ago: i32,
    pub succeeded: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RunCounts {
    pub last_hour: Outcomes,
    pub last_day: Outcomes,
    /// 24 buckets, hours_ago 0 (the last hour) to 23.
    pub by_hour: Vec<HourBucket>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct WorkerCounts {
    /// Seen within the last 15 s and not stopped.
    pub alive: i64,
    /// Heartbeat rows, stale ones included.
    pub total: i64,
    /// Whether a scheduler heartbeat is younger than 30 s.
    pub scheduler_alive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NextFire {
    pub task_id: Uuid,
    pub title: String,
    pub schedule_kind: String,
    pub schedule_expr: String,
    pub timezone: String,
    pub next_run_at: DateTime<Utc>,
}

/// GET /console/overview. Sections the token may not see are null.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub generated_at: DateTime<Utc>,
    pub tasks: TaskCounts,
    /// Queue counts of the caller's tasks (every task for admins).
    pub work: WorkCounts,
    /// Null without the runs:read scope.
    pub runs: Option<RunCounts>,
    /// Null unless admin.
    pub workers: Option<WorkerCounts>,
    /// The 10 earliest upcoming fires across the tasks the caller may see.
    pub next_fires: Vec<NextFire>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OwnerRef {
    pub id: Uuid,
    pub name: String,
}

/// Seconds without a heartbeat after which a worker counts as gone (three beats).
pub const WORKER_ALIVE_SECONDS: f64 = 15.0;

async fn task_counts(c: &impl Db, owner: Option<Uuid>) -> Result<TaskCounts, Error> {
    let st = c
        .prepare_cached(
            "SELECT status, count(*) AS n FROM task WHERE ($1::uuid IS NULL OR created_by = $1) GROUP BY status",
        )
        .await?;
    let mut counts = TaskCounts::default();
    for r in c.query(&st, &[&owner]).await? {
        let n: i64 = r.get("n");
        match r.get("status") {
            TaskStatus::Active => counts.active = n,
            TaskStatus::Paused => counts.paused = n,
            TaskStatus::Canceled => counts.canceled = n,
            TaskStatus::Completed => counts.completed += n,
        }
    }
    Ok(counts)
}

async fn work_counts(c: &impl Db, owner: Option<Uuid>) -> Result<WorkCounts, Error> {
    let st = c
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE d.state = 'pending' AND d.ready_at <= now()
                                     AND (d.locked_until IS NULL OR d.locked_until <= now())) AS due,
                    count(*) FILTER (WHERE d.state = 'pending' AND d.ready_at > now()
                                     AND (d.locked_until IS NULL OR d.locked_until <= now())) AS scheduled,
                    count(*) FILTER (WHERE d.state = 'pending' AND d.locked_until > now()) AS running,
                    count(*) FILTER (WHERE d.state = 'dead') AS dead
               FROM due_work d
              WHERE $1::uuid IS NULL OR d.task_id IN (SELECT id FROM task WHERE created_by = $1)",
        )
        .await?;
    let r = c.query_one(&st, &[&owner]).await?;
    Ok(WorkCounts {
        due: r.get("due"),
        scheduled: r.get("scheduled"),
        running: r.get("running"),
        dead: r.get("dead"),
    })
}

async fn run_counts(c: &impl Db, owner: Option<Uuid>) -> Result<RunCounts, Error> {
    // One range scan of the last day on task_run (finished_at), bucketed by hours ago.
    let st = c
        .prepare_cached(
            "SELECT least(floor(extract(epoch FROM now() - r.finished_at) / 3600), 23)::int AS h,
                    count(*) FILTER (WHERE r.success) AS succeeded,
                    count(*) FILTER (WHERE NOT r.success) AS failed
               FROM task_run r
              WHERE r.finished_at > now() - interval '1 day'
                AND ($1::uuid IS NULL OR r.task_id IN (SELECT id FROM task WHERE created_by = $1))
              GROUP BY 1",
        )
        .await?;
    let mut by_hour: Vec<HourBucket> = (0..24)
        .map(|h| HourBucket {
            hours_ago: h,
            succeeded: 0,
            failed: 0,
        })
        .collect();
    for r in c.query(&st, &[&owner]).await? {
        let h: i32 = r.get("h");
        if let Some(b) = by_hour.get_mut(h.clamp(0, 23) as usize) {
            b.succeeded += r.get::<_, i64>("succeeded");
            b.failed += r.get::<_, i64>("failed");
        }
    }
    let mut counts = RunCounts::default();
    counts.last_hour.succeeded = by_hour[0].succeeded;
    counts.last_hour.failed = by_hour[0].failed;
    for b in &by_hour {
        counts.last_day.succeeded += b.succeeded;
        counts.last_day.failed += b.failed;
    }
    counts.by_hour = by_hour;
    Ok(counts)
}

async fn worker_counts(c: &impl Db) -> Result<WorkerCounts, Error> {
    let st = c
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE last_seen > now() - make_interval(secs => $1) AND state <> 'stopped')
                        AS alive,
                    count(*) AS total,
                    coalesce((SELECT max(last_seen) > now() - interval '30 seconds' FROM scheduler_heartbeat), false)
                        AS scheduler_alive
               FROM worker_heartbeat",
        )
        .await?;
    let r = c.query_one(&st, &[&WORKER_ALIVE_SECONDS]).await?;
    Ok(WorkerCounts {
        alive: r.get("alive"),
        total: r.get("total"),
        scheduler_alive: r.get("scheduler_alive"),
    })
}

async fn next_fires(c: &impl Db, owner: Option<Uuid>) -> Result<Vec<NextFire>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, title, schedule_kind, schedule_expr, timezone, next_run_at FROM task
              WHERE status = 'active' AND next_run_at IS NOT NULL AND next_run_at < 'infinity'
                AND ($1::uuid IS NULL OR created_by = $1)
              ORDER BY next_run_at, id LIMIT 10",
        )
        .await?;
    Ok(c.query(&st, &[&owner])
        .await?
        .iter()
        .map(|r| NextFire {
            task_id: r.get("id"),
            title: r.get("title"),
            schedule_kind: r.get("schedule_kind"),
            schedule_expr: r.get("schedule_expr"),
            timezone: r.get("timezone"),
            next_run_at: r.get("next_run_at"),
        })
        .collect())
}

/// Everything the overview shows, pipelined on one connection.
pub async fn overview(
    c: &impl Db,
    owner: Option<Uuid>,
    with_runs: bool,
    with_workers: bool,
    now: DateTime<Utc>,
) -> Result<Overview, Error> {
    let runs = async {
        if with_runs {
            run_counts(c, owner).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let workers = async {
        if with_workers {
            worker_counts(c).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (tasks, work, runs, workers, next) = tokio::try_join!(
        task_counts(c, owner),
        work_counts(c, owner),
        runs,
        workers,
        next_fires(c, owner)
    )?;
    Ok(Overview {
        generated_at: now,
        tasks,
        work,
        runs,
        workers,
        next_fires: next,
    })
}

pub struct TaskQuery {
    pub owner: Option<Uuid>,
    pub status: Option<String>,
    pub schedule_kind: Option<String>,
    pub timezone: Option<String>,
    pub created_by: Option<Uuid>,
    /// ILIKE pattern on the title (already escaped and wrapped in %).
    pub title_like: Option<String>,
    /// A search that is a whole task id.
    pub id: Option<Uuid>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One page of tasks, newest first, walking the (created_at DESC, id DESC) index from the cursor.
pub async fn tasks(c: &impl Db, q: &TaskQuery) -> Result<Vec<TaskRow>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM task
              WHERE ($1::uuid IS NULL OR created_by = $1)
                AND ($2::text IS NULL OR status = $2)
                AND ($3::text IS NULL OR schedule_kind = $3)
                AND ($4::text IS NULL OR timezone = $4)
                AND ($5::uuid IS NULL OR created_by = $5)
                AND ($6::text IS NULL OR title ILIKE $6 OR id = $7)
                AND ($8::timestamptz IS NULL OR (created_at, id) < ($8, $9))
              ORDER BY created_at DESC, id DESC LIMIT $10"
        ))
        .await?;
    let (after_at, after_id) = match q.after {
        Some((t, id)) => (Some(t), Some(id)),
        None => (None, None),
    };
    let rows = c
        .query(
            &st,
            &[
                &q.owner,
                &q.status,
                &q.schedule_kind,
                &q.timezone,
                &q.created_by,
                &q.title_like,
                &q.id,
                &after_at,
                &after_id,
                &q.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(TaskRow::from_row).collect())
}

/// Agent names by id (for owners shown beside tasks).
pub async fn agent_names(c: &impl Db, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let st = c
        .prepare_cached("SELECT id, name FROM agent WHERE id = ANY($1)")
        .await?;
    Ok(c.query(&st, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get("id"), r.get("name")))
        .collect())
}

pub async fn agent_name(c: &impl Db, id: Uuid) -> Result<Option<String>, Error> {
    let st = c
        .prepare_cached("SELECT name FROM agent WHERE id = $1")
        .await?;
    Ok(c.query_opt(&st, &[&id]).await?.map(|r| r.get("name")))
}

pub async fn facets(
    c: &impl Db,
    owner: Option<Uuid>,
) -> Result<(Vec<String>, Vec<OwnerRef>), Error> {
    let tz = c
        .prepare_cached(
            "SELECT DISTINCT timezone FROM task WHERE ($1::uuid IS NULL OR created_by = $1) ORDER BY 1 LIMIT 500",
        )
        .await?;
    let owners = c
        .prepare_cached(
            "SELECT a.id, a.name FROM agent a
              WHERE ($1::uuid IS NULL OR a.id = $1)
                AND EXISTS (SELECT 1 FROM task t WHERE t.created_by = a.id)
              ORDER BY a.name LIMIT 500",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&owner];
    let (tz, owners) = tokio::try_join!(c.query(&tz, &params), c.query(&owners, &params))?;
    Ok((
        tz.iter().map(|r| r.get("timezone")).collect(),
        owners
            .iter()
            .map(|r| OwnerRef {
                id: r.get("id"),
                name: r.get("name"),
            })
            .collect(),
    ))
}

/// Runs of one task, newest first, from the (task_id, id DESC) index.
pub async fn task_runs(
    c: &impl Db,
    task_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Run>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM task_run r
              WHERE r.task_id = $1 AND ($2::bigint IS NULL OR r.id < $2)
              ORDER BY r.id DESC LIMIT $3"
        ))
        .await?;
    Ok(c.query(&st, &[&task_id, &before, &limit])
        .await?
        .iter()
        .map(|r| Run::from_row(r, true))
        .collect())
}

/// Every attempt of one fire (the runs sharing its due_work id), oldest first.
pub async fn attempts(c: &impl Db, task_id: Uuid, due_work_id: i64) -> Result<Vec<Run>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM task_run r
              WHERE r.task_id = $1 AND r.due_work_id = $2 ORDER BY r.id LIMIT 100"
        ))
        .await?;
    Ok(c.query(&st, &[&task_id, &due_work_id])
        .await?
        .iter()
        .map(|r| Run::from_row(r, true))
        .collect())
}

/// Dead work, most recently dead first, from the (dead_at DESC, id DESC) partial index.
pub async fn dead(
    c: &impl Db,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<DeadWork>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {DEAD_COLUMNS} FROM due_work d
              WHERE d.state = 'dead' AND ($1::timestamptz IS NULL OR (d.dead_at, d.id) < ($1, $2))
              ORDER BY d.dead_at DESC, d.id DESC LIMIT $3"
        ))
        .await?;
    let (at, id) = match after {
        Some((t, i)) => (Some(t), Some(i)),
        None => (None, None),
    };
    Ok(c.query(&st, &[&at, &id, &limit])
        .await?
        .iter()
        .map(DeadWork::from_row)
        .collect())
}

pub async fn task_titles(c: &impl Db, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let st = c
        .prepare_cached("SELECT id, title FROM task WHERE id = ANY($1)")
        .await?;
    Ok(c.query(&st, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get("id"), r.get("title")))
        .collect())
}

/// Of `ids`, the tasks owned by `owner` (for filtering the live run feed).
pub async fn owned_tasks(c: &impl Db, ids: &[Uuid], owner: Uuid) -> Result<Vec<Uuid>, Error> {
    let st = c
        .prepare_cached("SELECT id FROM task WHERE id = ANY($1) AND created_by = $2")
        .await?;
    Ok(c.query(&st, &[&ids, &owner])
        .await?
        .iter()
        .map(|r| r.get("id"))
        .collect())
}
