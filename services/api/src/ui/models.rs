//! Response shapes of the console's read-only endpoints (and their OpenAPI schemas).

use crate::models::{DeadWork, Run, Task};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use orrery::store::console::{
    HourBucket, NextFire, Outcomes, Overview, OwnerRef, RunCounts, TaskCounts, WorkCounts,
    WorkerCounts,
};

/// Who the token belongs to and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub agent_id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub admin: bool,
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
