//! What the store answers: the rows of `task`, `task_run`, `due_work` and the queue tables as the API shows
//! them (each with its OpenAPI schema), and the column lists their statements select. Rows are mapped by
//! column name.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::{
    BackoffStrategy, Catchup, DependencyCondition, Overlap, TaskStatus, Trigger, WorkerState,
};
use crate::schedule::ScheduleKind;

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: Uuid,
    /// Optional stable name, unique per owner (`created_by`) among existing tasks: 1..100 of `A-Za-z0-9._-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,100}$")]
    pub name: Option<String>,
    pub title: String,
    pub description: String,
    pub created_by: Uuid,
    /// cron, rrule, once or event.
    #[schema(value_type = String, pattern = "^(cron|rrule|once|event)$")]
    pub schedule_kind: ScheduleKind,
    pub schedule_expr: String,
    pub timezone: String,
    /// `{"params": {...}, "pipeline": [step, ...]}`.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// active, paused, canceled or completed.
    #[schema(value_type = String, pattern = "^(active|paused|canceled|completed)$")]
    pub status: TaskStatus,
    pub priority: i32,
    pub dedupe_key: Option<String>,
    pub dedupe_window_seconds: i32,
    pub max_retries: i32,
    /// exponential_jitter, linear or fixed.
    #[schema(value_type = String, pattern = "^(exponential_jitter|linear|fixed)$")]
    pub backoff_strategy: BackoffStrategy,
    pub concurrency_key: Option<String>,
    pub timeout_seconds: i32,
    pub misfire_grace_seconds: i32,
    /// skip, latest or all.
    #[schema(value_type = String, pattern = "^(skip|latest|all)$")]
    pub catchup: Catchup,
    /// allow, skip or queue.
    #[schema(value_type = String, pattern = "^(allow|skip|queue)$")]
    pub overlap: Overlap,
    /// The queue its runs wait in (docs/flow-control.md).
    pub queue: String,
    /// Template of each run's rate key (`${params.customer_id}`), limited by its queue's `key_rate_limit`;
    /// null = none.
    pub rate_key: Option<String>,
    /// The earliest pending fire, or the next computed one; null when none is known.
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tasks this task runs after (docs/flow-control.md#dependencies); empty when none.
    pub after: Vec<Dependency>,
}

/// One entry of a task's `after`: run once this parent's run of the same trace reaches its final outcome and
/// the outcome meets `condition`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Dependency {
    /// The parent as written: its name or its id.
    pub task: String,
    /// The parent's id (resolved when the task was written).
    pub task_id: Uuid,
    /// success, failure (the parent is dead: retries exhausted or a permanent error) or any.
    #[schema(value_type = String, pattern = "^(success|failure|any)$")]
    pub condition: DependencyCondition,
    /// Templates over the parent's run (`${steps.<name>...}`, `${params...}`, `${task...}`, `${run.outcome}`,
    /// `${run.error}`) rendered into this task's params for the dependent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
}

/// A parent of a run (GET /runs/{id}): its final outcome in the run's trace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunParent {
    pub task_id: Uuid,
    pub task_name: Option<String>,
    pub task_title: Option<String>,
    /// The edge's condition (null if the edge was removed since).
    #[schema(value_type = Option<String>, pattern = "^(success|failure|any)$")]
    pub condition: Option<DependencyCondition>,
    /// succeeded or dead.
    pub outcome: String,
    pub condition_met: bool,
    /// The parent's final run (its last attempt).
    pub run_id: Option<i64>,
    pub due_work_id: i64,
}

/// A child of a run (GET /runs/{id}): a dependent this run's final outcome arrived at.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunChild {
    pub task_id: Uuid,
    pub task_name: Option<String>,
    pub task_title: Option<String>,
    #[schema(value_type = Option<String>, pattern = "^(success|failure|any)$")]
    pub condition: Option<DependencyCondition>,
    pub condition_met: bool,
    /// The dependent's gate in this trace: waiting (other parents have not settled), unmet, held (the dependent
    /// is paused), fired or dropped (the dependent is canceled).
    pub gate: Option<String>,
    /// The dependent's runs in this trace so far.
    pub run_ids: Vec<i64>,
}

/// Every column the API reads from `task` (`schedule_anchor` and `materialized_until` are internal: not part of
/// the JSON).
pub const TASK_COLUMNS: &str = "id, title, description, created_by, schedule_kind, schedule_expr, timezone, \
     payload, status, priority, dedupe_key, dedupe_window_seconds, max_retries, backoff_strategy, \
     concurrency_key, timeout_seconds, misfire_grace_seconds, catchup, overlap, next_run_at, created_at, \
     updated_at, schedule_anchor, materialized_until, name, after, queue, rate_key";

/// A task row with the scheduler's internal columns.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub task: Task,
    pub schedule_anchor: DateTime<Utc>,
    pub materialized_until: Option<DateTime<Utc>>,
}

impl TaskRow {
    pub fn from_row(r: &Row) -> Self {
        let priority: i16 = r.get("priority");
        let max_retries: i16 = r.get("max_retries");
        TaskRow {
            task: Task {
                id: r.get("id"),
                name: r.get("name"),
                title: r.get("title"),
                description: r.get("description"),
                created_by: r.get("created_by"),
                schedule_kind: r.get("schedule_kind"),
                schedule_expr: r.get("schedule_expr"),
                timezone: r.get("timezone"),
                payload: r.get("payload"),
                status: r.get("status"),
                priority: priority as i32,
                dedupe_key: r.get("dedupe_key"),
                dedupe_window_seconds: r.get("dedupe_window_seconds"),
                max_retries: max_retries as i32,
                backoff_strategy: r.get("backoff_strategy"),
                concurrency_key: r.get("concurrency_key"),
                timeout_seconds: r.get("timeout_seconds"),
                misfire_grace_seconds: r.get("misfire_grace_seconds"),
                catchup: r.get("catchup"),
                overlap: r.get("overlap"),
                queue: r.get("queue"),
                rate_key: r.get("rate_key"),
                next_run_at: finite(r, "next_run_at"),
                created_at: r.get("created_at"),
                updated_at: r.get("updated_at"),
                after: serde_json::from_value(r.get::<_, Value>("after")).unwrap_or_default(),
            },
            schedule_anchor: r.get("schedule_anchor"),
            materialized_until: finite(r, "materialized_until"),
        }
    }
}

/// A timestamptz that may be `infinity` (which chrono cannot represent): such values read as None.
pub fn finite(r: &Row, column: &str) -> Option<DateTime<Utc>> {
    r.try_get::<_, Option<DateTime<Utc>>>(column).ok().flatten()
}

/// One execution attempt (or a fire skipped as a misfire or overlap, with attempt 0).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: i64,
    pub task_id: Uuid,
    pub due_work_id: Option<i64>,
    pub attempt: i32,
    pub worker_id: Option<String>,
    /// schedule, manual, event, retry or dependency.
    #[schema(value_type = String, pattern = "^(schedule|manual|event|retry|dependency)$")]
    pub trigger: Trigger,
    pub scheduled_for: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub success: bool,
    /// Omitted (null) with `include_errors=false`.
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub output: Option<Value>,
    /// The event that triggered the run (trigger `event`, or a retry of one); null otherwise.
    pub event_id: Option<String>,
    /// The event's topic (null unless event-triggered).
    pub event_topic: Option<String>,
    /// The event as the run saw it: `{id, topic, payload, published_at}` (null unless event-triggered).
    #[schema(value_type = Option<Object>)]
    pub event: Option<Value>,
    /// The run's trace: a root fire and every run it caused through dependencies share it.
    pub trace_id: Option<Uuid>,
    /// GET /runs/{id} only: the parents whose outcomes released this run (empty for a root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<Vec<RunParent>>,
    /// GET /runs/{id} only: the dependents this run's final outcome arrived at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<RunChild>>,
}

pub const RUN_COLUMNS: &str = "r.id, r.task_id, r.due_work_id, r.attempt, r.worker_id, r.trigger, \
     r.scheduled_for, r.started_at, r.finished_at, r.success, r.error, r.error_kind, r.output, r.event_id, r.event, \
     r.trace_id";

impl Run {
    pub fn from_row(r: &Row, include_errors: bool) -> Self {
        Run {
            id: r.get("id"),
            task_id: r.get("task_id"),
            due_work_id: r.get("due_work_id"),
            attempt: r.get("attempt"),
            worker_id: r.get("worker_id"),
            trigger: r.get("trigger"),
            scheduled_for: r.get("scheduled_for"),
            started_at: r.get("started_at"),
            finished_at: r.get("finished_at"),
            success: r.get("success"),
            error: if include_errors { r.get("error") } else { None },
            error_kind: r.get("error_kind"),
            output: r.get("output"),
            event_id: r.get("event_id"),
            event_topic: r
                .get::<_, Option<Value>>("event")
                .as_ref()
                .and_then(|e| e.get("topic"))
                .and_then(Value::as_str)
                .map(str::to_string),
            event: r.get("event"),
            trace_id: r.get("trace_id"),
            parents: None,
            children: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunStats {
    /// The window: runs finished in the last `days` days.
    pub days: i64,
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// succeeded / total; null without runs.
    pub success_rate: Option<f64>,
    /// finished_at − started_at over runs that started.
    pub avg_duration_seconds: Option<f64>,
    pub p95_duration_seconds: Option<f64>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PriorityCount {
    pub priority: i32,
    /// Pending rows ready now.
    pub ready: i64,
    /// Pending rows due later.
    pub scheduled: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueSummary {
    /// Pending, due (ready_at ≤ now) and not leased.
    pub ready: i64,
    /// Pending with ready_at in the future.
    pub scheduled: i64,
    /// Held by a live lease.
    pub leased: i64,
    pub dead: i64,
    /// Age of the oldest ready row; null when nothing is ready.
    pub oldest_ready_age_seconds: Option<f64>,
    pub by_priority: Vec<PriorityCount>,
}

/// A due_work row in the dead state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadWork {
    pub id: i64,
    pub task_id: Uuid,
    pub run_at: DateTime<Utc>,
    pub ready_at: DateTime<Utc>,
    pub priority: i32,
    /// schedule, manual, event, retry or dependency.
    #[schema(value_type = String, pattern = "^(schedule|manual|event|retry|dependency)$")]
    pub trigger: Trigger,
    pub attempt: i32,
    pub event_id: Option<String>,
    pub params: Option<Value>,
    pub last_error: Option<String>,
    pub last_error_kind: Option<String>,
    pub dead_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

pub const DEAD_COLUMNS: &str =
    "d.id, d.task_id, d.run_at, d.ready_at, d.priority, d.trigger, d.attempt, \
     d.event_id, d.params, d.last_error, d.last_error_kind, d.dead_at, d.created_at";

impl DeadWork {
    pub fn from_row(r: &Row) -> Self {
        let priority: i16 = r.get("priority");
        DeadWork {
            id: r.get("id"),
            task_id: r.get("task_id"),
            run_at: r.get("run_at"),
            ready_at: r.get("ready_at"),
            priority: priority as i32,
            trigger: r.get("trigger"),
            attempt: r.get("attempt"),
            event_id: r.get("event_id"),
            params: r.get("params"),
            last_error: r.get("last_error"),
            last_error_kind: r.get("last_error_kind"),
            dead_at: r.get("dead_at"),
            created_at: r.get("created_at"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    pub worker_id: String,
    pub hostname: String,
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub processed: i64,
    pub failed: i64,
    pub in_flight: i32,
    /// starting, running, draining or stopped.
    #[schema(value_type = String, pattern = "^(starting|running|draining|stopped)$")]
    pub state: WorkerState,
    /// Seen within the last 15 s (three heartbeat intervals).
    pub alive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskRef {
    pub id: Uuid,
    pub title: String,
}

/// At most `limit` runs of the queue start in any window of `period_seconds` (a sliding window, exact across
/// workers; docs/flow-control.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RateLimit {
    #[schema(minimum = 1, maximum = 1000000)]
    pub limit: i32,
    #[schema(minimum = 0.001, maximum = 86400)]
    pub period_seconds: f64,
}

/// A named queue: its settings and its figures.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamedQueue {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Runs of the queue in progress at once across all workers; null = no limit.
    pub max_concurrency: Option<i32>,
    /// A paused queue starts nothing; its work waits (nothing is dropped).
    pub paused: bool,
    pub rate_limit: Option<RateLimit>,
    /// Applied to each rate key of the queue on its own (the rendered `rate_key` of the tasks' runs; runs
    /// without a key are not limited by it).
    pub key_rate_limit: Option<RateLimit>,
    /// Pending, due and not leased (the depth).
    pub ready: i64,
    /// Pending with ready_at in the future.
    pub scheduled: i64,
    /// Held by a live lease.
    pub running: i64,
    pub dead: i64,
    /// Age of the oldest ready row (the lag); null when nothing is ready.
    pub lag_seconds: Option<f64>,
    /// Attempts of the queue's tasks that finished in the last minute (the throughput).
    pub finished_last_minute: i64,
    /// Null for a queue that has work but no settings row.
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}
