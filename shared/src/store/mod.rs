//! The storage seam: every statement on `task`, `due_work`, `task_run`, `event_delivery`, the event outbox,
//! dependencies and the queue tables lives below this module, so the data model's rules are written once. The
//! API, the scheduler and the worker call it and hold no SQL of their own for these tables.
//!
//! - [`work`]: `enqueue` (the one place that copies a task's policies onto its work and derives the implicit
//!   concurrency key), restamping, removal of unleased work (pause, cancel, schedule edits), snooze, backfill,
//!   event delivery, and the dead-letter actions (replay, delete).
//! - [`queue`]: the worker's side: claim, complete, reschedule, dead, lease renewal, release, heartbeat.
//! - [`tasks`]: the task row (reads, create, edit, delete) and its lifecycle writes (status, cursor), the
//!   scheduler's completion.
//! - [`dependencies`]: `after` resolution, the cycle check, edges and gates on cancel and delete, a run's parents
//!   and children.
//! - [`queues`], [`backlog`], [`runs`], [`console`]: the queue settings and figures, the queue summary and dead
//!   letters, `task_run` reads, the operator console's reads; [`rows`]: the shapes they answer.
//! - [`materialize`]: the materializer's clock read, its batch of due tasks (`FOR UPDATE SKIP LOCKED`) and its
//!   cursor moves.
//! - [`outbox`]: the event outbox as the scheduler sees it: the relay's batch and its record of the XADDs, the
//!   event consumer's active event tasks and its record of delivered events.
//! - [`maintenance`]: the scheduler's heartbeat and retention pruning.
//!
//! Every function takes any client or transaction (`GenericClient`), binds the injected clock
//! (`coalesce($n::timestamptz, now())`; the outbox and maintenance statements use the database's `now()`, for
//! the reasons their module docs give), and maps rows by column name.

pub mod backlog;
pub mod console;
pub mod dependencies;
pub mod maintenance;
pub mod materialize;
pub mod outbox;
pub mod queue;
pub mod queues;
pub mod rows;
pub mod runs;
pub mod tasks;
pub mod work;

/// Now on the injected clock, as the database sees it (`Clock::Database`: the transaction's `now()`, so every
/// statement of one transaction agrees), or a test's manual instant.
pub async fn now(
    c: &impl deadpool_postgres::GenericClient,
    clock: &crate::clock::Clock,
) -> Result<chrono::DateTime<chrono::Utc>, tokio_postgres::Error> {
    let st = c
        .prepare_cached("SELECT coalesce($1::timestamptz, now()) AS now")
        .await?;
    Ok(c.query_one(&st, &[&clock.param()]).await?.get("now"))
}

/// One page of a list: `limit` rows from `offset`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    /// Whether rows remain after this page, out of `total`.
    pub fn has_more(&self, returned: usize, total: i64) -> bool {
        self.offset.saturating_add(returned as i64) < total
    }
}

/// The implicit concurrency key of a task's work, as SQL over the task row aliased `t`: the task's own key, or
/// `task:<id>` when its overlap policy is not `allow` (so the claim serializes the task's runs). Written here
/// only; `enqueue` and `work::restamp_pending` use it.
pub const TASK_CONCURRENCY_KEY: &str =
    "coalesce(t.concurrency_key, CASE WHEN t.overlap <> 'allow' THEN 'task:' || t.id::text END)";

/// The rate key of a new work item, as SQL over the task row `t` and the work's own `u.params` and `u.event`:
/// the task's `rate_key` template rendered with the task's params overridden by the run's, and the triggering
/// event (`orrery_rate_key`, migration V11). Used by `enqueue`; `dep_fired` in the completion renders it for
/// dependents the same way (they have no params or event of their own).
pub const TASK_RATE_KEY: &str =
    "orrery_rate_key(t.rate_key, coalesce(t.payload->'params', '{}') || coalesce(u.params, '{}'), u.event)";
