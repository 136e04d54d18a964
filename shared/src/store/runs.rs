//! Run history and its statistics.

use chrono::{DateTime, Utc};
use tokio_postgres::Error;
use uuid::Uuid;

use super::rows::{Run, RunStats, RUN_COLUMNS};
use super::Page;
use deadpool_postgres::GenericClient as Db;

pub struct RunFilter {
    pub task_id: Option<Uuid>,
    pub success: Option<bool>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub owner: Option<Uuid>,
}

const RUN_WHERE: &str = "($1::uuid IS NULL OR r.task_id = $1) AND ($2::bool IS NULL OR r.success = $2)
     AND ($3::timestamptz IS NULL OR r.finished_at >= $3) AND ($4::timestamptz IS NULL OR r.finished_at < $4)
     AND ($5::uuid IS NULL OR t.created_by = $5)";

pub async fn list(
    c: &impl Db,
    f: &RunFilter,
    page: Page,
    include_errors: bool,
) -> Result<(Vec<Run>, i64), Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM task_run r JOIN task t ON t.id = r.task_id
              WHERE {RUN_WHERE} ORDER BY r.finished_at DESC, r.id DESC LIMIT $6 OFFSET $7"
        ))
        .await?;
    let rows = c
        .query(
            &st,
            &[
                &f.task_id,
                &f.success,
                &f.since,
                &f.until,
                &f.owner,
                &page.limit,
                &page.offset,
            ],
        )
        .await?;
    let count = c
        .prepare_cached(&format!(
            "SELECT count(*) AS total FROM task_run r JOIN task t ON t.id = r.task_id WHERE {RUN_WHERE}"
        ))
        .await?;
    let total: i64 = c
        .query_one(
            &count,
            &[&f.task_id, &f.success, &f.since, &f.until, &f.owner],
        )
        .await?
        .get("total");
    Ok((
        rows.iter()
            .map(|r| Run::from_row(r, include_errors))
            .collect(),
        total,
    ))
}

pub async fn get(c: &impl Db, id: i64, owner: Option<Uuid>) -> Result<Option<Run>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM task_run r JOIN task t ON t.id = r.task_id
              WHERE r.id = $1 AND ($2::uuid IS NULL OR t.created_by = $2)"
        ))
        .await?;
    Ok(c.query_opt(&st, &[&id, &owner])
        .await?
        .map(|r| Run::from_row(&r, true)))
}

pub async fn latest(c: &impl Db, task_id: Uuid) -> Result<Option<Run>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM task_run r WHERE r.task_id = $1 ORDER BY r.id DESC LIMIT 1"
        ))
        .await?;
    Ok(c.query_opt(&st, &[&task_id])
        .await?
        .map(|r| Run::from_row(&r, true)))
}

/// Totals, success rate, average and p95 duration and last success/failure of runs finished in the last
/// `days` days, of one task or of every task the owner may see.
pub async fn stats(
    c: &impl Db,
    task_id: Option<Uuid>,
    owner: Option<Uuid>,
    days: i32,
) -> Result<RunStats, Error> {
    let st = c
        .prepare_cached(
            "SELECT count(*) AS total,
                    count(*) FILTER (WHERE r.success) AS succeeded,
                    (avg(extract(epoch FROM r.finished_at - r.started_at)) FILTER (WHERE r.started_at IS NOT NULL))::float8
                        AS avg_duration_seconds,
                    (percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.started_at))
                        FILTER (WHERE r.started_at IS NOT NULL))::float8 AS p95_duration_seconds,
                    max(r.finished_at) FILTER (WHERE r.success) AS last_success_at,
                    max(r.finished_at) FILTER (WHERE NOT r.success) AS last_failure_at
               FROM task_run r JOIN task t ON t.id = r.task_id
              WHERE r.finished_at > now() - make_interval(days => $1::int)
                AND ($2::uuid IS NULL OR r.task_id = $2) AND ($3::uuid IS NULL OR t.created_by = $3)",
        )
        .await?;
    let r = c.query_one(&st, &[&days, &task_id, &owner]).await?;
    let total: i64 = r.get("total");
    let succeeded: i64 = r.get("succeeded");
    Ok(RunStats {
        days: days as i64,
        total,
        succeeded,
        failed: total - succeeded,
        success_rate: (total > 0).then(|| succeeded as f64 / total as f64),
        avg_duration_seconds: r.get("avg_duration_seconds"),
        p95_duration_seconds: r.get("p95_duration_seconds"),
        last_success_at: r.get("last_success_at"),
        last_failure_at: r.get("last_failure_at"),
    })
}
