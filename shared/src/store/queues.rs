//! Named queues (migration V11): their settings and, per queue, depth, lag and throughput.

use tokio_postgres::{Error, Row};

use super::rows::{NamedQueue, RateLimit};
use deadpool_postgres::GenericClient as Db;

/// The settings of a queue as written by PUT/PATCH.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    pub max_concurrency: Option<i32>,
    pub paused: bool,
    pub rate_limit: Option<RateLimit>,
    pub key_rate_limit: Option<RateLimit>,
}

/// Every queue with a row or with work, with its figures. Runs finished in the last minute are counted per
/// task queue (a task moved between queues counts in its current one).
const LIST: &str = "
WITH names AS (
    SELECT name FROM queue
    UNION SELECT DISTINCT queue FROM due_work
),
work AS (
    SELECT d.queue,
           count(*) FILTER (WHERE d.state = 'pending' AND d.ready_at <= now()
                            AND (d.locked_until IS NULL OR d.locked_until <= now())) AS ready,
           count(*) FILTER (WHERE d.state = 'pending' AND d.ready_at > now()
                            AND (d.locked_until IS NULL OR d.locked_until <= now())) AS scheduled,
           count(*) FILTER (WHERE d.state = 'pending' AND d.locked_until > now()) AS running,
           count(*) FILTER (WHERE d.state = 'dead') AS dead,
           extract(epoch FROM now() - min(d.ready_at) FILTER (WHERE d.state = 'pending' AND d.ready_at <= now()
                            AND (d.locked_until IS NULL OR d.locked_until <= now())))::float8 AS lag
      FROM due_work d
     WHERE ($1::text IS NULL OR d.queue = $1)
     GROUP BY d.queue
),
done AS (
    SELECT t.queue, count(*) AS finished
      FROM task_run r JOIN task t ON t.id = r.task_id
     WHERE r.finished_at > now() - interval '1 minute' AND r.attempt > 0
       AND ($1::text IS NULL OR t.queue = $1)
     GROUP BY t.queue
)
SELECT n.name, q.max_concurrency, coalesce(q.paused, false) AS paused, q.rate_limit, q.rate_period_seconds,
       coalesce(w.ready, 0) AS ready, coalesce(w.scheduled, 0) AS scheduled, coalesce(w.running, 0) AS running,
       coalesce(w.dead, 0) AS dead, w.lag, coalesce(x.finished, 0) AS finished, q.created_at, q.updated_at,
       q.key_rate_limit, q.key_rate_period_seconds
  FROM names n
  LEFT JOIN queue q ON q.name = n.name
  LEFT JOIN work w ON w.queue = n.name
  LEFT JOIN done x ON x.queue = n.name
 WHERE $1::text IS NULL OR n.name = $1
 ORDER BY n.name";

fn rate(limit: Option<i32>, period: Option<f64>) -> Option<RateLimit> {
    limit.zip(period).map(|(limit, period_seconds)| RateLimit {
        limit,
        period_seconds,
    })
}

fn from_row(r: &Row) -> NamedQueue {
    NamedQueue {
        name: r.get("name"),
        max_concurrency: r.get("max_concurrency"),
        paused: r.get("paused"),
        rate_limit: rate(r.get("rate_limit"), r.get("rate_period_seconds")),
        ready: r.get("ready"),
        scheduled: r.get("scheduled"),
        running: r.get("running"),
        dead: r.get("dead"),
        lag_seconds: r.get("lag"),
        finished_last_minute: r.get("finished"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        key_rate_limit: rate(r.get("key_rate_limit"), r.get("key_rate_period_seconds")),
    }
}

/// Every queue with settings or work, by name.
pub async fn list(c: &impl Db) -> Result<Vec<NamedQueue>, Error> {
    let st = c.prepare_cached(LIST).await?;
    Ok(c.query(&st, &[&None::<String>])
        .await?
        .iter()
        .map(from_row)
        .collect())
}

/// One queue (None: it has neither settings nor work).
pub async fn get(c: &impl Db, name: &str) -> Result<Option<NamedQueue>, Error> {
    let st = c.prepare_cached(LIST).await?;
    Ok(c.query_opt(&st, &[&Some(name)])
        .await?
        .as_ref()
        .map(from_row))
}

/// The queue's settings, locked for the rest of the transaction; None if it has no row.
pub async fn lock_settings(c: &impl Db, name: &str) -> Result<Option<QueueSettings>, Error> {
    let st = c
        .prepare_cached(
            "SELECT max_concurrency, paused, rate_limit, rate_period_seconds, key_rate_limit, key_rate_period_seconds
               FROM queue WHERE name = $1 FOR UPDATE",
        )
        .await?;
    Ok(c.query_opt(&st, &[&name]).await?.map(|r| QueueSettings {
        max_concurrency: r.get("max_concurrency"),
        paused: r.get("paused"),
        rate_limit: rate(r.get("rate_limit"), r.get("rate_period_seconds")),
        key_rate_limit: rate(r.get("key_rate_limit"), r.get("key_rate_period_seconds")),
    }))
}

/// Creates or replaces the queue's settings.
pub async fn upsert(c: &impl Db, name: &str, s: &QueueSettings) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "INSERT INTO queue AS q (name, max_concurrency, paused, rate_limit, rate_period_seconds,
                                     key_rate_limit, key_rate_period_seconds)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE
                SET max_concurrency = excluded.max_concurrency, paused = excluded.paused,
                    rate_limit = excluded.rate_limit, rate_period_seconds = excluded.rate_period_seconds,
                    key_rate_limit = excluded.key_rate_limit,
                    key_rate_period_seconds = excluded.key_rate_period_seconds,
                    updated_at = now()",
        )
        .await?;
    let limit = s.rate_limit.as_ref().map(|r| r.limit);
    let period = s.rate_limit.as_ref().map(|r| r.period_seconds);
    let key_limit = s.key_rate_limit.as_ref().map(|r| r.limit);
    let key_period = s.key_rate_limit.as_ref().map(|r| r.period_seconds);
    c.execute(
        &st,
        &[
            &name,
            &s.max_concurrency,
            &s.paused,
            &limit,
            &period,
            &key_limit,
            &key_period,
        ],
    )
    .await?;
    Ok(())
}
