//! Writes of `due_work` outside the worker's claim/complete cycle: enqueue (the only `INSERT INTO due_work`),
//! restamp, removal of unleased work, snooze, backfill, event delivery and the dead-letter actions.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

use super::{TASK_CONCURRENCY_KEY, TASK_RATE_KEY};
use crate::clock::Clock;
use crate::model::Trigger;

/// One item of work to enqueue. Its policies (priority, concurrency key, overlap, catch-up, misfire grace) are
/// not given: `enqueue` copies them from the task row.
#[derive(Debug, Clone)]
pub struct NewWork {
    pub task_id: Uuid,
    pub trigger: Trigger,
    /// The nominal fire instant; None: now on the clock (manual runs).
    pub run_at: Option<DateTime<Utc>>,
    /// When a worker may claim it.
    pub ready: Ready,
    /// Run-now parameters, merged over the task's at run time.
    pub params: Option<Value>,
    pub event_id: Option<String>,
    pub event: Option<Value>,
    /// The dependency trace the work belongs to; None: a fresh one (a root fire).
    pub trace_id: Option<Uuid>,
}

impl NewWork {
    pub fn new(task_id: Uuid, trigger: Trigger) -> Self {
        NewWork {
            task_id,
            trigger,
            run_at: None,
            ready: Ready::AtRun,
            params: None,
            event_id: None,
            event: None,
            trace_id: None,
        }
    }

    pub fn at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }

    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }
}

/// When enqueued work becomes claimable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// At its nominal instant (`ready_at = run_at`).
    AtRun,
    /// Now on the clock, whatever its nominal instant (backfill).
    Now,
    /// At this instant (overlap queuing, snooze).
    At(DateTime<Utc>),
}

/// A row `enqueue` created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    pub task_id: Uuid,
    pub run_at: DateTime<Utc>,
    pub ready_at: DateTime<Utc>,
}

static ENQUEUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH u AS (
             SELECT x.task_id, coalesce(x.run_at, $8::timestamptz, now()) AS run_at,
                    CASE WHEN x.ready_now THEN coalesce($8::timestamptz, now()) ELSE x.ready_at END AS ready_at,
                    x.trigger, x.params, x.event_id, x.event, coalesce(x.trace_id, gen_random_uuid()) AS trace_id, x.n
               FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::jsonb[], $6::text[],
                           $7::jsonb[], $9::bool[], $10::uuid[])
                    WITH ORDINALITY AS x(task_id, run_at, ready_at, trigger, params, event_id, event, ready_now,
                                         trace_id, n)
         )
         INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup,
                               misfire_grace_seconds, trigger, params, event_id, event, external_queue, trace_id,
                               queue, rate_key)
         SELECT t.id, u.run_at, coalesce(u.ready_at, u.run_at), t.priority, {TASK_CONCURRENCY_KEY}, t.overlap,
                t.catchup, t.misfire_grace_seconds, u.trigger, u.params, u.event_id, u.event, t.external_queue,
                u.trace_id, t.queue, {TASK_RATE_KEY}
           FROM u JOIN task t ON t.id = u.task_id
          ORDER BY u.n
         ON CONFLICT DO NOTHING
         RETURNING id, task_id, run_at, ready_at"
    )
});

/// Inserts work for tasks, copying each task's policies (its external queue and named queue too), deriving its
/// concurrency key and rendering its rate key. A scheduled fire that
/// exists already (task, run_at) and an event already delivered to the task (task, event_id) are left out, as is
/// work of a task that no longer exists. Returns the rows created.
pub async fn enqueue(
    c: &impl GenericClient,
    work: &[NewWork],
    clock: &Clock,
) -> Result<Vec<Enqueued>, Error> {
    if work.is_empty() {
        return Ok(Vec::new());
    }
    let task: Vec<Uuid> = work.iter().map(|w| w.task_id).collect();
    let run_at: Vec<Option<DateTime<Utc>>> = work.iter().map(|w| w.run_at).collect();
    let ready_at: Vec<Option<DateTime<Utc>>> = work
        .iter()
        .map(|w| match w.ready {
            Ready::At(t) => Some(t),
            Ready::AtRun | Ready::Now => None,
        })
        .collect();
    let ready_now: Vec<bool> = work.iter().map(|w| w.ready == Ready::Now).collect();
    let trace_id: Vec<Option<Uuid>> = work.iter().map(|w| w.trace_id).collect();
    let trigger: Vec<&str> = work.iter().map(|w| w.trigger.as_str()).collect();
    let params: Vec<Option<&Value>> = work.iter().map(|w| w.params.as_ref()).collect();
    let event_id: Vec<Option<&str>> = work.iter().map(|w| w.event_id.as_deref()).collect();
    let event: Vec<Option<&Value>> = work.iter().map(|w| w.event.as_ref()).collect();
    let st = c.prepare_cached(&ENQUEUE).await?;
    let rows = c
        .query(
            &st,
            &[
                &task,
                &run_at,
                &ready_at,
                &trigger,
                &params,
                &event_id,
                &event,
                &clock.param(),
                &ready_now,
                &trace_id,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Enqueued {
            id: r.get("id"),
            task_id: r.get("task_id"),
            run_at: r.get("run_at"),
            ready_at: r.get("ready_at"),
        })
        .collect())
}

static RESTAMP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE due_work d SET priority = t.priority, concurrency_key = {TASK_CONCURRENCY_KEY},
                overlap = t.overlap, catchup = t.catchup, misfire_grace_seconds = t.misfire_grace_seconds,
                external_queue = t.external_queue, queue = t.queue,
                rate_key = orrery_rate_key(t.rate_key, coalesce(t.payload->'params', '{{}}') || coalesce(d.params, '{{}}'),
                                           d.event)
           FROM task t
          WHERE t.id = $1 AND d.task_id = t.id AND d.state = 'pending'
            AND (d.locked_until IS NULL OR d.locked_until < coalesce($2::timestamptz, now()))"
    )
});

/// Copies the task's claim-relevant settings (as just written) onto its pending, unleased work.
pub async fn restamp_pending(
    c: &impl GenericClient,
    task_id: Uuid,
    clock: &Clock,
) -> Result<u64, Error> {
    let st = c.prepare_cached(&RESTAMP).await?;
    c.execute(&st, &[&task_id, &clock.param()]).await
}

/// Removes the task's pending work that no worker holds: all of it (pause, cancel: the lifecycle's
/// `PendingWork::RemoveUnleased`), or only the future scheduled fires (schedule edits).
pub async fn remove_unleased(
    c: &impl GenericClient,
    task_id: Uuid,
    only_future_fires: bool,
    clock: &Clock,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "DELETE FROM due_work
              WHERE task_id = $1 AND state = 'pending'
                AND (locked_until IS NULL OR locked_until < coalesce($3::timestamptz, now()))
                AND (NOT $2 OR (trigger = 'schedule' AND run_at > coalesce($3::timestamptz, now())))",
        )
        .await?;
    c.execute(&st, &[&task_id, &only_future_fires, &clock.param()])
        .await
}

/// A pending fire of a task.
#[derive(Debug, Clone, Copy)]
pub struct PendingFire {
    pub id: i64,
    pub run_at: DateTime<Utc>,
    pub ready_at: DateTime<Utc>,
}

/// The task's next pending, unleased fire, locked. Manual runs are not fires: snoozing never delays a run
/// someone asked for explicitly.
pub async fn next_unleased_fire(
    c: &impl GenericClient,
    task_id: Uuid,
    clock: &Clock,
) -> Result<Option<PendingFire>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, run_at, ready_at FROM due_work
              WHERE task_id = $1 AND state = 'pending'
                AND (locked_until IS NULL OR locked_until < coalesce($2::timestamptz, now()))
                AND trigger <> 'manual'
              ORDER BY ready_at, id LIMIT 1 FOR UPDATE",
        )
        .await?;
    Ok(c.query_opt(&st, &[&task_id, &clock.param()])
        .await?
        .map(|r| PendingFire {
            id: r.get("id"),
            run_at: r.get("run_at"),
            ready_at: r.get("ready_at"),
        }))
}

/// Moves a work item's ready_at later (snooze); returns the new ready_at.
pub async fn delay(c: &impl GenericClient, id: i64, seconds: i32) -> Result<DateTime<Utc>, Error> {
    let st = c
        .prepare_cached(
            "UPDATE due_work SET ready_at = ready_at + make_interval(secs => $2::int) WHERE id = $1
             RETURNING ready_at",
        )
        .await?;
    Ok(c.query_one(&st, &[&id, &seconds]).await?.get("ready_at"))
}

/// Waits for every in-flight settlement of the task's scheduled fires in `[from, to]` by locking them: a worker
/// completing one holds its row lock until its run is recorded, so after this the run is visible.
pub async fn lock_scheduled_between(
    c: &impl GenericClient,
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

/// Enqueues the given nominal fires of a task as scheduled work due now, each at most once in the task's
/// lifetime: a fire that already ran (a task_run with attempt ≥ 1), is pending or dead in due_work, or was
/// backfilled before is left out. Returns the fires created, in order.
pub async fn backfill(
    c: &impl GenericClient,
    task_id: Uuid,
    fires: &[DateTime<Utc>],
    clock: &Clock,
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
             )
             INSERT INTO backfill_fire (task_id, run_at) SELECT $1, run_at FROM fresh
             ON CONFLICT DO NOTHING
             RETURNING run_at",
        )
        .await?;
    let marked: Vec<DateTime<Utc>> = c
        .query(&st, &[&task_id, &fires])
        .await?
        .iter()
        .map(|r| r.get("run_at"))
        .collect();
    let work: Vec<NewWork> = marked
        .iter()
        .map(|at| {
            NewWork::new(task_id, Trigger::Schedule)
                .at(*at)
                .ready(Ready::Now)
        })
        .collect();
    let mut created: Vec<DateTime<Utc>> = enqueue(c, &work, clock)
        .await?
        .iter()
        .map(|e| e.run_at)
        .collect();
    created.sort_unstable();
    Ok(created)
}

/// One event for one matching task.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub task_id: Uuid,
    pub event_id: String,
    /// `{id, topic, payload, published_at, stream_id}`: what the run sees as `event`.
    pub event: Value,
    /// The run's nominal instant; None: now on the clock.
    pub published_at: Option<DateTime<Utc>>,
}

/// Delivers events to tasks exactly once: records each (task, event) pair in `event_delivery` and enqueues
/// work for the pairs not delivered before. Returns the rows created.
pub async fn deliver(
    c: &impl GenericClient,
    deliveries: &[Delivery],
    clock: &Clock,
) -> Result<u64, Error> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let task: Vec<Uuid> = deliveries.iter().map(|d| d.task_id).collect();
    let event_id: Vec<&str> = deliveries.iter().map(|d| d.event_id.as_str()).collect();
    let st = c
        .prepare_cached(
            "INSERT INTO event_delivery (task_id, event_id)
             SELECT * FROM unnest($1::uuid[], $2::text[])
             ON CONFLICT DO NOTHING
             RETURNING task_id, event_id",
        )
        .await?;
    let fresh: std::collections::HashSet<(Uuid, String)> = c
        .query(&st, &[&task, &event_id])
        .await?
        .iter()
        .map(|r| (r.get("task_id"), r.get("event_id")))
        .collect();
    let work: Vec<NewWork> = deliveries
        .iter()
        .filter(|d| fresh.contains(&(d.task_id, d.event_id.clone())))
        .map(|d| NewWork {
            run_at: d.published_at,
            event_id: Some(d.event_id.clone()),
            event: Some(d.event.clone()),
            ..NewWork::new(d.task_id, Trigger::Event)
        })
        .collect();
    Ok(enqueue(c, &work, clock).await?.len() as u64)
}

/// A dead row and the status of its task, locked for a dead-letter action.
pub async fn lock_dead(c: &impl GenericClient, id: i64) -> Result<Option<(Uuid, String)>, Error> {
    let st = c
        .prepare_cached(
            "SELECT d.task_id, t.status FROM due_work d JOIN task t ON t.id = d.task_id
              WHERE d.id = $1 AND d.state = 'dead' FOR UPDATE OF d",
        )
        .await?;
    Ok(c.query_opt(&st, &[&id])
        .await?
        .map(|r| (r.get("task_id"), r.get("status"))))
}

/// Puts a dead row back in the queue: pending, attempt 0, due now, unleased.
pub async fn replay_dead(c: &impl GenericClient, id: i64, clock: &Clock) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "UPDATE due_work d SET state = 'pending', attempt = 0, ready_at = coalesce($2::timestamptz, now()),
                    locked_by = NULL, locked_until = NULL, dead_at = NULL,
                    external_queue = (SELECT t.external_queue FROM task t WHERE t.id = d.task_id)
              WHERE id = $1 AND state = 'dead'",
        )
        .await?;
    c.execute(&st, &[&id, &clock.param()]).await
}

/// Deletes a dead row; returns its task.
pub async fn delete_dead(c: &impl GenericClient, id: i64) -> Result<Option<Uuid>, Error> {
    let st = c
        .prepare_cached("DELETE FROM due_work WHERE id = $1 AND state = 'dead' RETURNING task_id")
        .await?;
    Ok(c.query_opt(&st, &[&id]).await?.map(|r| r.get("task_id")))
}

/// Resume of a dependent task: every held dependency gate of the task fires now, one work item each, in the
/// gate's trace. Returns the rows created.
pub async fn release_held_dependents(
    c: &impl GenericClient,
    task_id: Uuid,
    clock: &Clock,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "UPDATE dependency_gate SET state = 'fired', decided_at = coalesce($2::timestamptz, now())
              WHERE task_id = $1 AND state = 'held'
             RETURNING trace_id",
        )
        .await?;
    let work: Vec<NewWork> = c
        .query(&st, &[&task_id, &clock.param()])
        .await?
        .iter()
        .map(|r| NewWork {
            trace_id: Some(r.get("trace_id")),
            ..NewWork::new(task_id, Trigger::Dependency)
        })
        .collect();
    Ok(enqueue(c, &work, clock).await?.len() as u64)
}

/// Pause of a dependent task: its dependency work that has not started yet goes back to its gate (`held`), to
/// be released by resume ([`release_held_dependents`]); nothing is lost. Returns how many rows were parked.
pub async fn hold_dependents(
    c: &impl GenericClient,
    task_id: Uuid,
    clock: &Clock,
) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "WITH parked AS (
                 DELETE FROM due_work
                  WHERE task_id = $1 AND trigger = 'dependency' AND state = 'pending'
                    AND (locked_until IS NULL OR locked_until < coalesce($2::timestamptz, now()))
                 RETURNING trace_id
             )
             UPDATE dependency_gate g SET state = 'held', decided_at = coalesce($2::timestamptz, now())
               FROM parked p
              WHERE g.task_id = $1 AND g.trace_id = p.trace_id",
        )
        .await?;
    c.execute(&st, &[&task_id, &clock.param()]).await
}
