//! The queue as operators see it: counts, dead work, workers, liveness of the other processes.

use std::collections::BTreeMap;

use tokio_postgres::Error;

use super::rows::{DeadWork, PriorityCount, QueueSummary, Worker, DEAD_COLUMNS};
use super::Page;
use deadpool_postgres::GenericClient as Db;

/// A worker heartbeats every 5 s; three missed beats and it counts as gone.
pub const WORKER_ALIVE_SECONDS: i32 = 15;
/// The scheduler counts as running when its heartbeat is this recent.
pub const SCHEDULER_ALIVE_SECONDS: i32 = 30;

pub async fn summary(c: &impl Db) -> Result<QueueSummary, Error> {
    let st = c
        .prepare_cached(
            "SELECT priority,
                    count(*) FILTER (WHERE state = 'pending' AND ready_at <= now()
                                     AND (locked_until IS NULL OR locked_until <= now())) AS ready,
                    count(*) FILTER (WHERE state = 'pending' AND ready_at > now()
                                     AND (locked_until IS NULL OR locked_until <= now())) AS scheduled,
                    count(*) FILTER (WHERE state = 'pending' AND locked_until > now()) AS leased,
                    count(*) FILTER (WHERE state = 'dead') AS dead,
                    extract(epoch FROM now() - min(ready_at) FILTER (WHERE state = 'pending' AND ready_at <= now()
                                     AND (locked_until IS NULL OR locked_until <= now())))::float8 AS oldest_age
               FROM due_work GROUP BY priority ORDER BY priority",
        )
        .await?;
    let rows = c.query(&st, &[]).await?;
    let mut s = QueueSummary {
        ready: 0,
        scheduled: 0,
        leased: 0,
        dead: 0,
        oldest_ready_age_seconds: None,
        by_priority: Vec::new(),
    };
    let mut by = BTreeMap::new();
    for r in rows {
        let priority: i16 = r.get("priority");
        let (ready, scheduled, leased, dead): (i64, i64, i64, i64) = (
            r.get("ready"),
            r.get("scheduled"),
            r.get("leased"),
            r.get("dead"),
        );
        let age: Option<f64> = r.get("oldest_age");
        s.ready += ready;
        s.scheduled += scheduled;
        s.leased += leased;
        s.dead += dead;
        if let Some(a) = age {
            s.oldest_ready_age_seconds =
                Some(s.oldest_ready_age_seconds.map_or(a, |o: f64| o.max(a)));
        }
        by.insert(priority, (ready, scheduled));
    }
    s.by_priority = by
        .into_iter()
        .map(|(priority, (ready, scheduled))| PriorityCount {
            priority: priority as i32,
            ready,
            scheduled,
        })
        .collect();
    Ok(s)
}

pub async fn list_dead(c: &impl Db, page: Page) -> Result<(Vec<DeadWork>, i64), Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {DEAD_COLUMNS} FROM due_work d WHERE d.state = 'dead'
              ORDER BY d.dead_at DESC NULLS LAST, d.id DESC LIMIT $1 OFFSET $2"
        ))
        .await?;
    let rows = c.query(&st, &[&page.limit, &page.offset]).await?;
    let count = c
        .prepare_cached("SELECT count(*) AS total FROM due_work WHERE state = 'dead'")
        .await?;
    let total: i64 = c.query_one(&count, &[]).await?.get("total");
    Ok((rows.iter().map(DeadWork::from_row).collect(), total))
}

pub async fn workers(c: &impl Db) -> Result<Vec<Worker>, Error> {
    let st = c
        .prepare_cached(
            "SELECT worker_id, hostname, pid, started_at, last_seen, processed, failed, in_flight, state,
                    last_seen > now() - make_interval(secs => $1::int) AS alive
               FROM worker_heartbeat ORDER BY last_seen DESC, worker_id",
        )
        .await?;
    Ok(c.query(&st, &[&WORKER_ALIVE_SECONDS])
        .await?
        .iter()
        .map(|r| Worker {
            worker_id: r.get("worker_id"),
            hostname: r.get("hostname"),
            pid: r.get("pid"),
            started_at: r.get("started_at"),
            last_seen: r.get("last_seen"),
            processed: r.get("processed"),
            failed: r.get("failed"),
            in_flight: r.get("in_flight"),
            state: r.get("state"),
            alive: r.get("alive"),
        })
        .collect())
}

/// (schedulers seen recently, workers alive).
pub async fn liveness(c: &impl Db) -> Result<(i64, i64), Error> {
    let st = c
        .prepare_cached(
            "SELECT (SELECT count(*) FROM scheduler_heartbeat WHERE last_seen > now() - make_interval(secs => $1::int)) AS schedulers,
                    (SELECT count(*) FROM worker_heartbeat WHERE last_seen > now() - make_interval(secs => $2::int)
                        AND state <> 'stopped') AS workers",
        )
        .await?;
    let r = c
        .query_one(&st, &[&SCHEDULER_ALIVE_SECONDS, &WORKER_ALIVE_SECONDS])
        .await?;
    Ok((r.get("schedulers"), r.get("workers")))
}

pub async fn ping(c: &impl Db) -> Result<(), Error> {
    let st = c.prepare_cached("SELECT 1").await?;
    c.query_one(&st, &[]).await?;
    Ok(())
}
