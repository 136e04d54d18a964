//! Response shapes (and the OpenAPI schemas generated from them).

use chrono::{DateTime, Utc};
use orrery::model::TaskStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

pub use orrery::store::rows::{
    DeadWork, Dependency, NamedQueue, PriorityCount, QueueSummary, RateLimit, Run, RunChild,
    RunParent, RunStats, Task, TaskRef, TaskRow, Worker, DEAD_COLUMNS, RUN_COLUMNS, TASK_COLUMNS,
};

/// An agent: a caller of the API with scopes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    /// Subset of admin, tasks:read, tasks:write, runs:read, events:publish, jobs:work.
    pub scopes: Vec<String>,
    pub webhook_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const AGENT_COLUMNS: &str = "id, name, scopes, webhook_url, created_at, updated_at";

impl Agent {
    pub fn from_row(r: &Row) -> Self {
        Agent {
            id: r.get("id"),
            name: r.get("name"),
            scopes: r.get("scopes"),
            webhook_url: r.get("webhook_url"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

/// A token's metadata (the secret is shown only once, at creation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// After this instant the token is refused (401); null = never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token just created: its metadata and the secret, which is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewTokenResponse {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `orr_` + 64 hex characters. Store it now: only its SHA-256 digest is kept.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentCreated {
    pub agent: Agent,
    /// The agent's first token (shown once).
    pub token: String,
    pub token_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<Token>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskTransition {
    pub task: Task,
    /// The status before the action (equal to `task.status` when nothing changed).
    #[schema(value_type = String, pattern = "^(active|paused|canceled|completed)$")]
    pub previous_status: TaskStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunNowAccepted {
    pub due_work_id: i64,
    pub run_at: DateTime<Utc>,
}

/// What POST /tasks/{id}/backfill did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackfillReport {
    pub task_id: Uuid,
    /// Start of the window (inclusive), as requested.
    pub from: DateTime<Utc>,
    /// End of the window (exclusive) as requested.
    pub to: DateTime<Utc>,
    /// The last instant considered: `to` less a second, or the scheduler's cursor when that is earlier (fires after
    /// the cursor are still the scheduler's to materialize, with the task's catch-up policy).
    pub until: DateTime<Utc>,
    /// Nominal fires found in the window (at most `max_fires`).
    pub fires: i64,
    /// Fires materialized now as `due_work` (trigger `schedule`, due now).
    pub created: i64,
    /// Fires left out: they already ran, are pending or dead, or were backfilled before.
    pub skipped: i64,
    /// True when the window holds more than `max_fires` fires; continue from `next_from`.
    pub capped: bool,
    /// With `capped`: the first fire not considered; send it as `from` to go on.
    pub next_from: Option<DateTime<Utc>>,
    /// The instants created, in order.
    pub created_fires: Vec<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snoozed {
    pub task: Task,
    /// The due_work row that was moved (or materialized and moved).
    pub due_work_id: i64,
    /// The nominal fire instant (unchanged).
    pub run_at: DateTime<Utc>,
    /// When the fire will now run.
    pub ready_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Fire {
    /// UTC, RFC 3339 with `Z` and whole seconds.
    pub at: String,
    /// The same instant in the zone the schedule is written in (see `timezone`), with its offset.
    pub local: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Fires {
    /// The IANA zone of every `local`: the zone the rule is evaluated in. That is the task's (or request's)
    /// `timezone`, except for an RRULE whose DTSTART names its own zone (`DTSTART;TZID=America/New_York:...` →
    /// `America/New_York`; a DTSTART ending in `Z` → `UTC`).
    #[schema(example = "Europe/Berlin")]
    pub timezone: String,
    pub fires: Vec<Fire>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplayAccepted {
    pub due_work_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    pub items: Vec<Worker>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventAccepted {
    pub event_id: Uuid,
    /// The entry id in the `events` stream; null when Redis could not be reached: the event is stored in
    /// PostgreSQL (`event_outbox`) and a scheduler's relay publishes it as soon as Redis is back.
    pub stream_id: Option<String>,
    pub topic: String,
    /// Active event tasks whose topic pattern matches, among those the caller may see.
    pub matching_tasks: Vec<TaskRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentEvent {
    pub stream_id: String,
    pub event_id: Option<String>,
    pub topic: Option<String>,
    /// The payload as published (JSON; a string if it could not be parsed).
    pub payload: Option<Value>,
    pub published_by: Option<String>,
    pub published_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentEvents {
    pub items: Vec<RecentEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicGroup {
    /// The topic pattern (`schedule_expr` of event tasks).
    pub topic: String,
    pub tasks: Vec<TaskRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    pub items: Vec<TopicGroup>,
}

macro_rules! page {
    ($name:ident, $item:ty) => {
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Rows matching the filters.
            pub total: i64,
            pub limit: i64,
            pub offset: i64,
            pub has_more: bool,
        }
    };
}

page!(TaskPage, Task);

page!(AgentPage, Agent);

page!(RunPage, Run);

page!(DeadWorkPage, DeadWork);

/// One audit record: who did what to which subject.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// The agent that acted (the system agent for the scheduler's own changes); null if it was deleted.
    pub actor: Option<Uuid>,
    /// The acting agent's name, when it still exists.
    pub actor_name: Option<String>,
    /// `task.create`, `task.update`, `task.pause`, `task.backfill`, `due_work.replay`, `agent.create`, ...
    pub action: String,
    /// `task`, `agent`, `token` or `due_work`.
    pub subject_type: String,
    pub subject_id: String,
    #[schema(value_type = Object)]
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub limit: i64,
    /// True when older entries match: ask again with `before` = `next_before`.
    pub has_more: bool,
    /// The id to pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

/// A secret as the API shows it: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// The agent whose tasks can read it as `${secrets.NAME}`.
    pub owner: Uuid,
    pub name: String,
    /// Which encryption key sealed it (first 16 hex characters of the key's SHA-256).
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub items: Vec<SecretInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reencrypted {
    /// Secrets re-sealed with the current key.
    pub reencrypted: i64,
    /// Id of the current key.
    pub key_id: String,
}

/// One job handed to an external worker by `POST /jobs/claim`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// The `due_work` id; the same for every attempt of one fire, so also the idempotency key.
    pub job_id: i64,
    /// Send it back with every heartbeat, completion and failure; a stale token is refused with 409.
    pub fencing_token: i64,
    pub task_id: Uuid,
    pub task_title: String,
    pub queue: String,
    /// 1 for the first run of a fire; increases with every retry and every lease that expired.
    pub attempt: i32,
    /// `max_retries + 1`: a failure at this attempt (or a non-retryable one) makes the job dead.
    pub max_attempts: i32,
    /// `schedule`, `manual`, `event` or `retry` (an attempt after the first).
    pub trigger: String,
    /// The nominal fire instant (`run_at`).
    pub scheduled_for: DateTime<Utc>,
    /// The task's params merged with the run's (run_now params win).
    pub params: Value,
    /// `{id, topic, payload, published_at}` for event-triggered jobs, else null.
    pub event: Option<Value>,
    /// The job's idempotency key (the job id, as a string, as `http.request` sends it).
    pub idempotency_key: String,
    /// The lease ends here unless a heartbeat extends it; after it, another claim may take the job.
    pub lease_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobsClaimed {
    /// Up to `max_jobs` jobs; empty when none became ready within `wait_seconds`.
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobLease {
    pub job_id: i64,
    pub fencing_token: i64,
    pub lease_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobSettled {
    pub job_id: i64,
    /// `succeeded`, `retry` (runs again after `retry_at`) or `dead` (no retries left, or not retryable).
    pub outcome: String,
    /// When the retry becomes ready (outcome `retry` only).
    pub retry_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamedQueueList {
    pub items: Vec<NamedQueue>,
}
