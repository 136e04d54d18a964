//! Response shapes of the console's read-only endpoints (and their OpenAPI schemas).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::models::{DeadWork, Run, Task};

/// Who the token belongs to and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub agent_id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub admin: bool,
}

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

/// A task in the console list, with its owner's name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleTask {
    #[serde(flatten)]
    pub task: Task,
    pub owner_name: Option<String>,
}

/// One keyset page: pass `next_cursor` back as `after` for the next page; null at the end.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleTaskPage {
    pub items: Vec<ConsoleTask>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OwnerRef {
    pub id: Uuid,
    pub name: String,
}

/// Values the task filters can take, among the tasks the caller may see.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskFacets {
    pub timezones: Vec<String>,
    pub owners: Vec<OwnerRef>,
}

/// Runs of one task, newest first; pass `next_cursor` back as `before`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleRunPage {
    pub items: Vec<Run>,
    pub next_cursor: Option<String>,
}

/// Every attempt of the fire a run belongs to (oldest first), and the task's title.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunAttempts {
    pub task_id: Uuid,
    pub task_title: String,
    pub items: Vec<Run>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleDeadWork {
    #[serde(flatten)]
    pub work: DeadWork,
    pub task_title: Option<String>,
}

/// Dead work, most recently dead first; pass `next_cursor` back as `after`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleDeadPage {
    pub items: Vec<ConsoleDeadWork>,
    pub next_cursor: Option<String>,
}

/// How a DST transition touched one fire.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FireDst {
    /// gap or fold.
    pub kind: String,
    /// The wall-clock time the schedule asked for, when it differs from when the fire runs.
    pub intended_local: Option<String>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimelineFire {
    /// UTC, RFC 3339.
    pub at: String,
    /// Local wall-clock time in the task's zone, with its offset.
    pub local: String,
    pub offset_seconds: i32,
    pub dst: Option<FireDst>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    /// The instant the offset changes (UTC, RFC 3339).
    pub at: String,
    /// gap (clocks jump forward) or fold (clocks go back).
    pub kind: String,
    pub offset_before_seconds: i32,
    pub offset_after_seconds: i32,
    /// Local wall-clock time just before and at the transition.
    pub local_before: String,
    pub local_after: String,
    /// Wall-clock times the schedule asked for that did not run at all because of this transition.
    pub skipped_local: Vec<String>,
}

/// The task's next fires in its zone and in UTC, with the DST transitions in the window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Timeline {
    pub task_id: Uuid,
    pub timezone: String,
    pub schedule_kind: String,
    pub window_start: String,
    pub window_end: String,
    pub fires: Vec<TimelineFire>,
    pub transitions: Vec<Transition>,
}
