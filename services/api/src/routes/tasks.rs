//! /tasks: create, list, read, edit, delete, and every lifecycle action.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use orrery::lifecycle::{Action, Outcome, PendingWork};
use orrery::model::{
    BackoffStrategy, Catchup, DependencyCondition, Overlap, Scope, TaskStatus, Trigger,
};
use orrery::schedule::{Schedule, ScheduleKind};
use orrery::store::{
    self,
    work::{self, NewWork, Ready},
};
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use uuid::Uuid;

use super::{announce_task_change, wake_workers};
use crate::auth::Caller;
use crate::body::{
    self, named_schema, read_body, request_body, Choice, Field, FieldValue, Id, Instant, Int,
    JsonObject, List, Name, NameRule, Nullable, ReadOnly, Text,
};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{path_uuid, JsonBody, OptionalJsonBody, QueryParams};
use crate::models::{
    BackfillReport, Fires, RunNowAccepted, Snoozed, Task, TaskPage, TaskRow, TaskTransition,
};
use crate::state::AppState;
use crate::validation;
use orrery::store::tasks::{Cursor, TaskValues};

/// Most parents of one task.
pub const MAX_AFTER: usize = 1000;

/// Most fires one backfill call materializes.
pub const BACKFILL_MAX_FIRES: i64 = 1000;

const NAME_RULE: &str =
    "must be 1 to 100 characters, each a letter (A-Z, a-z), a digit, '.', '_' or '-'";

/// The rule of task names: `^[A-Za-z0-9._-]{1,100}$` (the same as the column's CHECK).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskNameRule;

impl NameRule for TaskNameRule {
    const MAX: usize = 100;
    const RULE: &'static str = NAME_RULE;
}

/// The rule of queue names: `^[A-Za-z0-9._-]{1,64}$` (`orrery::config::valid_queue_name`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueNameRule;

impl NameRule for QueueNameRule {
    const MAX: usize = 64;
    const RULE: &'static str =
        "must be a string of 1 to 64 characters, each a letter (A-Z, a-z), a digit, '.', '_' or '-'";
}

pub type TaskName = Name<TaskNameRule>;

/// A task name: `^[A-Za-z0-9._-]{1,100}$` (the same rule as the column's CHECK).
pub fn valid_name(s: &str) -> bool {
    TaskName::valid(s)
}

/// The fields every new task needs.
const CREATE_REQUIRED: &[&str] = &["title", "schedule_kind", "schedule_expr"];

/// Fields of a task a client reads but never writes.
const TASK_READ_ONLY: ReadOnly = ReadOnly {
    fields: &["id", "status", "created_at", "updated_at", "next_run_at"],
    message: "is read-only (use the lifecycle actions to change status)",
};

request_body!(
    /// The writable fields of a task: the body of POST /tasks (title, schedule_kind and schedule_expr
    /// required) and of PATCH/PUT /tasks/{id} (any subset). Every field is typed; a body with problems is one
    /// 422 naming each field at fault.
    pub struct TaskBody {
        /// Optional stable name, unique per owner among existing tasks (duplicate → 409): 1..100 characters of
        /// `A-Za-z0-9._-`. Tasks-as-code files (`orrery apply`) find their task by it. null removes it.
        name: Nullable<TaskName> = example json!("nightly-report"),
        title: Field<Text<1, 200>>,
        description: Field<Text<0, 2000>>,
        /// cron, rrule, once or event.
        schedule_kind: Field<Choice<ScheduleKind>> = example json!("cron"),
        /// A 5-field cron expression or macro, an RFC 5545 rule, an RFC 3339 instant or a topic pattern.
        schedule_expr: Field<Text<1, { validation::MAX_EXPR_CHARS }>> = example json!("*/5 * * * *"),
        /// IANA time zone name (default: TZ).
        timezone: Field<Text<1, 64>> = example json!("UTC"),
        /// `{"params": {...}, "pipeline": [{"id", "uses", "with", "save_as", "if", "timeout_seconds"}]}`; both
        /// keys are optional and the whole payload defaults to `{"params": {}, "pipeline": []}` (see
        /// docs/pipelines.md).
        payload: Field<JsonObject>
            = example json!({"params": {}, "pipeline": [{"id": "ping", "uses": "noop"}]}),
        /// 1 (first) to 9 (last); default 5.
        priority: Field<Int<1, 9>>,
        dedupe_key: Nullable<Text<1, 100>>,
        dedupe_window_seconds: Field<Int<0, { i32::MAX as i64 }>>,
        max_retries: Field<Int<0, 10>>,
        backoff_strategy: Field<Choice<BackoffStrategy>>,
        concurrency_key: Nullable<Text<1, 100>>,
        timeout_seconds: Field<Int<1, 86_400>>,
        misfire_grace_seconds: Field<Int<0, { i32::MAX as i64 }>>,
        /// What to do with fires older than the misfire grace window.
        catchup: Field<Choice<Catchup>>,
        /// What to do with a fire while a run of the same task is leased.
        overlap: Field<Choice<Overlap>>,
        /// The queue its runs wait in (default `default`). A queue named for the first time is created without
        /// limits (see /queues and docs/flow-control.md). An edit moves the task's pending runs that no worker
        /// holds.
        queue: Field<Name<QueueNameRule>> = example json!("default"),
        /// Template of each run's rate key, e.g. `customer-${params.customer_id}` (placeholders
        /// `${params.PATH}` and `${event.PATH}` only), limited by the queue's `key_rate_limit`; null = none.
        rate_key: Nullable<RateKey> = example json!("customer-${params.customer_id}"),
        /// Admins may create a task on behalf of another agent.
        created_by: Field<Id>,
        /// Tasks this one runs after, each parent once (see docs/flow-control.md#dependencies). On an edit it
        /// replaces the task's `after` (null or [] removes every dependency); a change that would close a cycle
        /// is a 422 naming the entry and the cycle.
        after: Nullable<List<AfterEntry, MAX_AFTER>>,
    }
);

request_body!(
    /// One entry of `after` as written.
    pub struct AfterEntry required ["task"] {
        /// The parent: a task id, or the name of a task of the same owner. It must exist and not be canceled.
        task: Field<ParentRef> = example json!("extract"),
        /// success (default), failure (the parent is dead: retries exhausted or a permanent error) or any.
        condition: Nullable<Choice<DependencyCondition>>,
        /// Templates over the parent's final run, rendered into this task's params for the dependent run, e.g.
        /// `{"file": "${steps.export.body.path}"}`. Template roots: params, steps, task, run.
        params: Nullable<Templates>,
    }
);

named_schema!(
    /// Body of POST /tasks.
    pub TaskCreate = body::body_schema::<TaskBody>(
        CREATE_REQUIRED,
        "Body of POST /tasks: title, schedule_kind and schedule_expr are required (PATCH and PUT take the same fields, all optional).",
    )
);

named_schema!(
    /// Body of PATCH/PUT /tasks/{id}.
    pub TaskPatch = body::body_schema::<TaskBody>(
        &[],
        "Body of PATCH/PUT /tasks/{id}: any subset of the task's writable fields.",
    )
);

impl TaskBody {
    /// Reads a create (`creating`: the schedule and title are required) or an edit.
    fn read(v: &Value, creating: bool) -> ApiResult<TaskBody> {
        let required = if creating { CREATE_REQUIRED } else { &[] };
        read_body(v, required, &TASK_READ_ONLY)
    }

    /// The stored values after this body: set fields replace, null clears a nullable one, absent ones stay.
    /// `after` is resolved against the database by the caller (`resolve_after`), so it is left out.
    fn apply(self, mut v: TaskValues) -> TaskValues {
        self.name.map(Name::into_string).apply_to(&mut v.name);
        self.title.map(Text::into_string).apply_to(&mut v.title);
        self.description
            .map(Text::into_string)
            .apply_to(&mut v.description);
        self.schedule_kind
            .map(|Choice(k)| k)
            .apply_to(&mut v.schedule_kind);
        self.schedule_expr
            .map(Text::into_string)
            .apply_to(&mut v.schedule_expr);
        self.timezone
            .map(Text::into_string)
            .apply_to(&mut v.timezone);
        self.payload.map(|JsonObject(p)| p).apply_to(&mut v.payload);
        self.priority
            .map(|Int(p)| p as i16)
            .apply_to(&mut v.priority);
        self.dedupe_key
            .map(Text::into_string)
            .apply_to(&mut v.dedupe_key);
        self.dedupe_window_seconds
            .map(|Int(n)| n as i32)
            .apply_to(&mut v.dedupe_window_seconds);
        self.max_retries
            .map(|Int(n)| n as i16)
            .apply_to(&mut v.max_retries);
        self.backoff_strategy
            .map(|Choice(b)| b)
            .apply_to(&mut v.backoff_strategy);
        self.concurrency_key
            .map(Text::into_string)
            .apply_to(&mut v.concurrency_key);
        self.timeout_seconds
            .map(|Int(n)| n as i32)
            .apply_to(&mut v.timeout_seconds);
        self.misfire_grace_seconds
            .map(|Int(n)| n as i32)
            .apply_to(&mut v.misfire_grace_seconds);
        self.catchup.map(|Choice(c)| c).apply_to(&mut v.catchup);
        self.overlap.map(|Choice(o)| o).apply_to(&mut v.overlap);
        self.queue.map(Name::into_string).apply_to(&mut v.queue);
        self.rate_key.map(|RateKey(r)| r).apply_to(&mut v.rate_key);
        self.created_by.map(|Id(by)| by).apply_to(&mut v.created_by);
        v
    }
}

/// A parent named in `after`: a task id, or a task name (resolved against the database later).
#[derive(Debug, Clone, PartialEq)]
pub struct ParentRef(pub String);

impl FieldValue for ParentRef {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v {
            Value::String(t) if Uuid::parse_str(t).is_ok() || valid_name(t) => {
                Some(ParentRef(t.clone()))
            }
            Value::String(_) => {
                errors.push(FieldError::new(
                    path,
                    format!("must be a task id or a task name ({NAME_RULE})"),
                ));
                None
            }
            _ => {
                errors.push(FieldError::new(
                    path,
                    "must be a string: a task id or a task name",
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .min_length(Some(1))
                .max_length(Some(100))
                .build(),
        )
    }
}

/// An object of `${...}` templates over a parent's final run (`after[i].params`).
#[derive(Debug, Clone, PartialEq)]
pub struct Templates(pub Value);

impl FieldValue for Templates {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        if !v.is_object() {
            errors.push(FieldError::new(
                path,
                "must be an object of templates over the parent's run",
            ));
            return None;
        }
        let problems = orrery::pipeline::template_errors(v, path);
        if problems.is_empty() {
            Some(Templates(v.clone()))
        } else {
            errors.extend(
                problems
                    .into_iter()
                    .map(|e| FieldError::new(e.field, e.message)),
            );
            None
        }
    }

    fn schema() -> Schema {
        JsonObject::schema()
    }
}

/// `rate_key`: a template of 1..200 characters whose placeholders are all `${params.PATH}` or `${event.PATH}`
/// (the part the database renders, `orrery_rate_key` of migration V11).
#[derive(Debug, Clone, PartialEq)]
pub struct RateKey(pub String);

impl FieldValue for RateKey {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Value::String(s) = v else {
            errors.push(FieldError::new(
                path,
                "must be a template string (e.g. \"customer-${params.customer_id}\") or null",
            ));
            return None;
        };
        match rate_key_problem(s) {
            None => Some(RateKey(s.clone())),
            Some(problem) => {
                errors.push(FieldError::new(path, problem));
                None
            }
        }
    }

    fn schema() -> Schema {
        Text::<1, 200>::schema()
    }
}

fn rate_key_problem(s: &str) -> Option<String> {
    let len = s.chars().count();
    if !(1..=200).contains(&len) {
        return Some("must be 1 to 200 characters".into());
    }
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Some("has a '${' without its closing '}'".into());
        };
        let expr = after[..end].trim();
        let mut parts = expr.split('.');
        let root = parts.next().unwrap_or("");
        let path_ok = parts.all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !matches!(root, "params" | "event") || !path_ok {
            return Some(format!(
                "placeholder '${{{}}}' is not ${{params.PATH}} or ${{event.PATH}} (a rate key is rendered when the run is created)",
                expr.chars().take(60).collect::<String>()
            ));
        }
        rest = &after[end + 1..];
    }
    None
}

request_body!(
    /// Body of POST /tasks/{id}/run (optional).
    pub struct RunNowBody {
        /// Merged over the task's params for this run.
        params: Nullable<JsonObject>,
    }
);

request_body!(
    /// Body of POST /tasks/{id}/backfill.
    pub struct BackfillBody required ["from", "to"] {
        /// The window's start (inclusive).
        from: Field<Instant> = example json!("2026-11-01T00:00:00Z"),
        /// The window's end (exclusive), not after now.
        to: Field<Instant> = example json!("2026-11-08T00:00:00Z"),
        /// Most fires materialized by this call (default 1000).
        max_fires: Field<Int<1, BACKFILL_MAX_FIRES>>,
    }
);

request_body!(
    /// Body of POST /tasks/{id}/snooze.
    pub struct SnoozeBody required ["delay_seconds"] {
        /// How much later the next pending fire runs.
        delay_seconds: Field<Int<1, 604_800>>,
    }
);

/// Resolves `after` entries (ids or names of the owner's tasks) into the stored form, with a 422 naming the
/// entry for a parent that does not exist, is canceled, is listed twice or is the task itself.
async fn resolve_after(
    c: &impl db::Db,
    caller: &Caller,
    v: &TaskValues,
    this: Option<Uuid>,
    decls: Vec<AfterEntry>,
) -> ApiResult<Value> {
    let mut errors = Vec::new();
    let mut stored = Vec::with_capacity(decls.len());
    let mut seen: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    let owner = if caller.is_admin() {
        None
    } else {
        Some(caller.agent_id)
    };
    let own_label = v.name.clone().unwrap_or_else(|| "this task".to_string());
    for (i, entry) in decls.into_iter().enumerate() {
        let field = format!("after[{i}].task");
        // The reader only answers entries with a task (it is required).
        let Field::Set(ParentRef(task)) = entry.task else {
            continue;
        };
        let condition = match entry.condition {
            Nullable::Set(Choice(c)) => c,
            _ => DependencyCondition::Success,
        };
        let params = match entry.params {
            Nullable::Set(Templates(p)) => Some(p),
            _ => None,
        };
        let found = match Uuid::parse_str(&task) {
            Ok(id) => store::dependencies::parent_by_id(c, id, owner).await?,
            Err(_) => store::dependencies::parent_by_name(c, v.created_by, &task).await?,
        };
        let is_self = match &found {
            Some(p) => Some(p.id) == this,
            None => v.name.as_deref() == Some(task.as_str()),
        };
        if is_self {
            errors.push(FieldError::new(
                field,
                format!("a task cannot run after itself (cycle: {own_label} → {own_label})"),
            ));
            continue;
        }
        let Some(p) = found else {
            errors.push(FieldError::new(
                field,
                match Uuid::parse_str(&task) {
                    Ok(_) => format!("no task with id {}", task),
                    Err(_) => format!(
                        "no task named {:?} among the tasks of agent {}",
                        task, v.created_by
                    ),
                },
            ));
            continue;
        };
        if p.status == TaskStatus::Canceled {
            errors.push(FieldError::new(
                field,
                format!("task {} is canceled and never runs again", task),
            ));
            continue;
        }
        if let Some(j) = seen.insert(p.id, i) {
            errors.push(FieldError::new(
                field,
                format!("task {} is already listed at after[{j}]", task),
            ));
            continue;
        }
        let _ = p.name;
        stored.push(store::dependencies::stored_entry(
            &task,
            p.id,
            condition.as_str(),
            params.as_ref(),
        ));
    }
    if errors.is_empty() {
        Ok(Value::Array(stored))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// The parent ids of a stored `after`.
fn parent_ids(after: &Value) -> Vec<Uuid> {
    after
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("task_id")?.as_str()?.parse().ok())
        .collect()
}

/// 422 when running `task` after `after` would close a cycle, naming the entry and the cycle. Call with the
/// graph locked (store::dependencies::lock_graph) in the transaction that writes the edges.
async fn check_cycle(c: &impl db::Db, task: Uuid, after: &Value) -> ApiResult<()> {
    let parents = parent_ids(after);
    let Some((i, path)) = store::dependencies::find_cycle(c, task, &parents).await? else {
        return Ok(());
    };
    let labels = store::dependencies::labels(c, &path).await?;
    let shown: Vec<String> = path
        .iter()
        .map(|id| labels.get(id).cloned().unwrap_or_else(|| id.to_string()))
        .collect();
    Err(ApiError::Validation(vec![FieldError::new(
        format!("after[{i}].task"),
        format!(
            "would close a cycle: {} (each task runs after the one before it)",
            shown.join(" → ")
        ),
    )]))
}

/// Validates the whole (merged) task: schedule, time zone and payload. Returns the parsed schedule.
fn validate(v: &TaskValues, anchor: DateTime<Utc>) -> ApiResult<Schedule> {
    let mut errors = Vec::new();
    let schedule =
        validation::parse_schedule(v.schedule_kind, &v.schedule_expr, &v.timezone, anchor)
            .map_err(|e| errors.extend(e))
            .ok();
    if let Err(e) = validation::validate_payload(&v.payload) {
        errors.extend(e);
    }
    match schedule {
        Some(s) if errors.is_empty() => Ok(s),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// Where the scheduler starts from after a create or a schedule edit (see the module docs of the scheduler):
/// it materializes fires strictly after `materialized_until`.
fn initial_cursor(
    s: &Schedule,
    now: DateTime<Utc>,
    grace_seconds: i32,
    active: bool,
) -> ApiResult<Cursor> {
    let mut cursor = Cursor {
        schedule_anchor: now,
        materialized_until: now,
        next_run_at: None,
    };
    match s.kind() {
        ScheduleKind::Event => {}
        ScheduleKind::Once => {
            let fire = validation::next_fire_after(s, DateTime::<Utc>::MIN_UTC)
                .ok_or_else(|| ApiError::field("schedule_expr", "does not denote an instant"))?;
            if fire <= now {
                if now - fire > Duration::seconds(grace_seconds as i64) {
                    return Err(ApiError::field(
                        "schedule_expr",
                        format!(
                            "{} is in the past (more than misfire_grace_seconds = {grace_seconds} ago)",
                            fire.to_rfc3339()
                        ),
                    ));
                }
                // Within the grace window: run it now.
                cursor.materialized_until = fire - Duration::seconds(1);
            }
            cursor.next_run_at = Some(fire);
        }
        ScheduleKind::Cron | ScheduleKind::Rrule => {
            let next = validation::next_fire_after(s, now);
            if next.is_none() {
                return Err(ApiError::field("schedule_expr", no_fires_message(s, now)));
            }
            cursor.next_run_at = next;
        }
    }
    if !active {
        cursor.next_run_at = None;
    }
    Ok(cursor)
}

/// Why a cron or RRULE has no fire after now, and what to write instead.
fn no_fires_message(s: &Schedule, now: DateTime<Utc>) -> String {
    match s.implicit_rrule_start() {
        Some(start) => {
            // The next whole minute, as a DTSTART the user can paste.
            let suggestion = (now + Duration::seconds(60 - now.timestamp().rem_euclid(60)))
                .format("%Y%m%dT%H%M%SZ");
            format!(
                "the schedule has no fires after now: an RRULE without DTSTART starts at local midnight of the \
                 day it is written ({} in {}), and its COUNT or UNTIL is used up before now. Add a DTSTART to \
                 say when counting starts, e.g. \"DTSTART:{suggestion}\\nRRULE:FREQ=...;COUNT=...\"",
                start.format("%Y-%m-%dT%H:%M:%S"),
                s.rule_timezone().name()
            )
        }
        None if s.kind() == ScheduleKind::Rrule => {
            "the schedule has no fires after now (its COUNT or UNTIL \
                 is used up, or its DTSTART and RDATEs are all in the past)"
                .to_string()
        }
        None => "the schedule has no fires after now".to_string(),
    }
}

async fn check_created_by(c: &impl db::Db, caller: &Caller, created_by: Uuid) -> ApiResult<()> {
    if created_by == caller.agent_id {
        return Ok(());
    }
    if !caller.is_admin() {
        return Err(ApiError::field(
            "created_by",
            "only admins may create or move tasks on behalf of another agent",
        ));
    }
    if !db::agents::agent_exists(c, created_by).await? {
        return Err(ApiError::field("created_by", "no agent has this id"));
    }
    Ok(())
}

async fn check_dedupe(c: &impl db::Db, v: &TaskValues, exclude: Option<Uuid>) -> ApiResult<()> {
    let Some(key) = &v.dedupe_key else {
        return Ok(());
    };
    store::tasks::lock_dedupe_key(c, v.created_by, key).await?;
    if let Some(existing) =
        store::tasks::find_duplicate(c, v.created_by, key, v.dedupe_window_seconds, exclude).await?
    {
        return Err(ApiError::Conflict {
            message: format!("task {existing} already holds dedupe_key {key:?}"),
            details: Some(json!({"existing_task_id": existing, "dedupe_key": key})),
        });
    }
    Ok(())
}

/// 409 naming the task that already holds the name (per owner, among existing tasks).
async fn check_name(c: &impl db::Db, v: &TaskValues, exclude: Option<Uuid>) -> ApiResult<()> {
    let Some(name) = &v.name else {
        return Ok(());
    };
    match store::tasks::find_by_name(c, v.created_by, name, exclude).await? {
        Some(existing) => Err(name_taken(existing, name)),
        None => Ok(()),
    }
}

fn name_taken(existing: Uuid, name: &str) -> ApiError {
    ApiError::Conflict {
        message: format!("task {existing} already has the name {name:?}"),
        details: Some(json!({"existing_task_id": existing, "name": name})),
    }
}

/// A unique violation on the name index (two concurrent writers of one name): 409 naming the holder.
async fn name_race(c: &impl db::Db, v: &TaskValues, e: tokio_postgres::Error) -> ApiError {
    let is_name = e
        .as_db_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == "task_owner_name");
    match (&v.name, is_name) {
        (Some(name), true) => match store::tasks::find_by_name(c, v.created_by, name, None).await {
            Ok(Some(existing)) => name_taken(existing, name),
            _ => ApiError::conflict(format!("another task already has the name {name:?}")),
        },
        _ => e.into(),
    }
}

/// A foreign key violation of task_dependency (a parent deleted between resolving `after` and writing it).
fn is_dependency_fk(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .and_then(|d| d.table())
        .is_some_and(|t| t == "task_dependency")
}

#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = TaskCreate,
    params(("dry_run" = Option<bool>, Query, description = "true: run every check (validation, name, dedupe) and answer 204 without writing")),
    responses((status = 201, body = Task), (status = 204, description = "dry_run: the task is valid; nothing was written"), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let dry_run = q.boolean("dry_run")?.unwrap_or(false);
    let mut input = TaskBody::read(&body.0, true)?;
    let defaults = TaskValues {
        name: None,
        title: String::new(),
        description: String::new(),
        created_by: caller.agent_id,
        schedule_kind: ScheduleKind::Cron,
        schedule_expr: String::new(),
        timezone: state.settings.default_timezone().name().to_string(),
        payload: json!({"params": {}, "pipeline": []}),
        priority: 5,
        dedupe_key: None,
        dedupe_window_seconds: 0,
        max_retries: state.settings.worker_max_retries.min(10) as i16,
        backoff_strategy: BackoffStrategy::ExponentialJitter,
        concurrency_key: None,
        timeout_seconds: 300,
        misfire_grace_seconds: state
            .settings
            .scheduler_misfire_grace_time
            .min(i32::MAX as u32) as i32,
        catchup: Catchup::Skip,
        overlap: Overlap::Allow,
        after: json!([]),
        queue: "default".into(),
        rate_key: None,
    };
    let after_input = std::mem::take(&mut input.after);
    let mut values = input.apply(defaults);
    validation::normalize_payload(&mut values.payload);
    // Validation and the cursor use this process's clock; the stored anchor and cursor use the database's
    // (the same instant to within the statement's latency).
    let now = state.clock.now();
    let schedule = validate(&values, now)?;
    let cursor = initial_cursor(&schedule, now, values.misfire_grace_seconds, true)?;
    // A `once` fire inside its grace window: the cursor sits just before it so it is materialized at once.
    let until = (cursor.materialized_until < now).then_some(cursor.materialized_until);
    let mut client = state.db().await?;
    check_created_by(&client, &caller, values.created_by).await?;
    check_name(&client, &values, None).await?;
    // A new task has no dependents yet, so its `after` cannot close a cycle (unless it names itself).
    if let Nullable::Set(List(decls)) = after_input {
        values.after = resolve_after(&client, &caller, &values, None, decls).await?;
    }
    if dry_run {
        if values.dedupe_key.is_some() {
            let tx = client.transaction().await?;
            check_dedupe(&tx, &values, None).await?;
        }
        return Ok(HttpResponse::NoContent().finish());
    }
    let fk_to_field = |e: tokio_postgres::Error| {
        if crate::error::sqlstate(&e) == Some("23503") && is_dependency_fk(&e) {
            ApiError::field("after", "a parent task was deleted meanwhile")
        } else if crate::error::sqlstate(&e) == Some("23503") {
            ApiError::field("created_by", "no agent has this id")
        } else {
            e.into()
        }
    };
    let inserted = if values.dedupe_key.is_some() {
        let tx = client.transaction().await?;
        check_dedupe(&tx, &values, None).await?;
        match store::tasks::insert_audited(&tx, &values, until, cursor.next_run_at, caller.agent_id)
            .await
        {
            Ok(row) => {
                tx.commit().await?;
                Ok(row)
            }
            Err(e) => Err(e),
        }
    } else {
        // The common case needs no transaction: task and audit record are one statement.
        store::tasks::insert_audited(&client, &values, until, cursor.next_run_at, caller.agent_id)
            .await
    };
    let task = match inserted {
        Ok(row) => row.task,
        Err(e) if crate::error::sqlstate(&e) == Some("23505") => {
            return Err(name_race(&client, &values, e).await)
        }
        Err(e) => return Err(fk_to_field(e)),
    };
    announce_task_change(&state, task.id, "created");
    if until.is_some() {
        wake_workers(&state, task.id);
    }
    Ok(HttpResponse::Created().json(task))
}

#[utoipa::path(get, path = "/tasks", tag = "tasks",
    params(("status" = Option<String>, Query, description = "active, paused, canceled or completed"),
        ("schedule_kind" = Option<String>, Query, description = "cron, rrule, once or event"),
        ("created_by" = Option<Uuid>, Query),
        ("name" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,100}$", description = "exact task name"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200), ("offset" = Option<i64>, Query, minimum = 0)),
    responses((status = 200, body = TaskPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let page = crate::input::page(&q)?;
    let status = q
        .parsed::<TaskStatus>("status", &format!("one of {}", TaskStatus::expected()))?
        .map(|s| s.as_str().to_string());
    let schedule_kind = q
        .parsed::<ScheduleKind>("schedule_kind", "one of cron, rrule, once, event")?
        .map(|k| k.as_str().to_string());
    let name = match q.get("name") {
        Some(n) if !valid_name(n) => return Err(ApiError::field("name", NAME_RULE)),
        other => other.map(str::to_string),
    };
    let filter = store::tasks::TaskFilter {
        status,
        schedule_kind,
        created_by: q.uuid("created_by")?,
        owner: caller.owner_filter(),
        name,
    };
    let client = state.db().await?;
    let (items, total) = store::tasks::list(&client, &filter, page).await?;
    let has_more = page.has_more(items.len(), total);
    Ok(HttpResponse::Ok().json(TaskPage {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
        has_more,
    }))
}

/// Loads a task the caller may see (another agent's task is a 404, never a 403).
pub async fn visible_task(c: &impl db::Db, caller: &Caller, id: Uuid) -> ApiResult<TaskRow> {
    store::tasks::get(c, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))
}

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    responses((status = 200, body = Task), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let id = path_uuid(&path, "id")?;
    let client = state.db().await?;
    let row = visible_task(&client, &caller, id).await?;
    Ok(HttpResponse::Ok().json(row.task))
}

#[utoipa::path(patch, path = "/tasks/{id}", tag = "tasks", request_body = TaskPatch,
    params(("id" = Uuid, Path), ("dry_run" = Option<bool>, Query, description = "true: run every check and answer 204 without writing")),
    responses((status = 200, body = Task), (status = 204, description = "dry_run: the edit is valid; nothing was written"), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn patch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let id = path_uuid(&path, "id")?;
    let dry_run = q.boolean("dry_run")?.unwrap_or(false);
    let mut input = TaskBody::read(&body.0, false)?;
    let after_input = std::mem::take(&mut input.after);
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    // The graph lock comes before any row lock: an edit of `after` inserts edges whose foreign keys lock the
    // parents' rows, so taking it after this task's row lock could deadlock with another edit.
    if !after_input.is_absent() {
        store::dependencies::lock_graph(&tx).await?;
    }
    let row = store::tasks::lock(&tx, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    if row.task.status.is_terminal() {
        return Err(ApiError::conflict(format!(
            "Task {id} is {}; terminal tasks cannot be edited",
            row.task.status
        )));
    }
    let before = TaskValues::from_task(&row.task);
    let mut values = input.apply(before.clone());
    validation::normalize_payload(&mut values.payload);
    let now = store::now(&tx, &state.clock).await?;
    let schedule_changed = values.schedule_kind != before.schedule_kind
        || values.schedule_expr != before.schedule_expr
        || values.timezone != before.timezone;
    let anchor = if schedule_changed {
        now
    } else {
        row.schedule_anchor
    };
    let schedule = validate(&values, anchor)?;
    let active = row.task.status == TaskStatus::Active;
    let cursor = if schedule_changed {
        Some(initial_cursor(
            &schedule,
            now,
            values.misfire_grace_seconds,
            active,
        )?)
    } else {
        None
    };
    if values.created_by != before.created_by {
        check_created_by(&tx, &caller, values.created_by).await?;
    }
    if values.dedupe_key.is_some()
        && (values.dedupe_key != before.dedupe_key
            || values.dedupe_window_seconds != before.dedupe_window_seconds
            || values.created_by != before.created_by)
    {
        check_dedupe(&tx, &values, Some(id)).await?;
    }
    if values.name.is_some()
        && (values.name != before.name || values.created_by != before.created_by)
    {
        check_name(&tx, &values, Some(id)).await?;
    }
    match after_input {
        Nullable::Set(List(decls)) => {
            values.after = resolve_after(&tx, &caller, &values, Some(id), decls).await?;
        }
        Nullable::Null => values.after = json!([]),
        Nullable::Absent => {}
    }
    if values.after != before.after {
        check_cycle(&tx, id, &values.after).await?;
    }
    if dry_run {
        return Ok(HttpResponse::NoContent().finish());
    }
    if schedule_changed {
        work::remove_unleased(&tx, id, true, &state.clock).await?;
    }
    let updated = match store::tasks::update(&tx, id, &values, cursor).await {
        Ok(row) => row.task,
        Err(e) if crate::error::sqlstate(&e) == Some("23505") => {
            drop(tx);
            return Err(name_race(&client, &values, e).await);
        }
        Err(e) if is_dependency_fk(&e) => {
            return Err(ApiError::field(
                "after",
                "a parent task was deleted meanwhile",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    work::restamp_pending(&tx, id, &state.clock).await?;
    db::audit(
        &tx,
        caller.agent_id,
        "task.update",
        "task",
        &id.to_string(),
        &json!({"changed": changed_fields(&before, &values), "schedule_changed": schedule_changed}),
    )
    .await?;
    tx.commit().await?;
    announce_task_change(&state, id, "updated");
    if cursor.is_some_and(|c| c.materialized_until < now) && active {
        wake_workers(&state, id);
    }
    Ok(HttpResponse::Ok().json(updated))
}

fn changed_fields(a: &TaskValues, b: &TaskValues) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => { $( if a.$f != b.$f { out.push(stringify!($f)); } )* };
    }
    cmp!(
        name,
        title,
        description,
        created_by,
        schedule_kind,
        schedule_expr,
        timezone,
        payload,
        priority,
        dedupe_key,
        dedupe_window_seconds,
        max_retries,
        backoff_strategy,
        concurrency_key,
        timeout_seconds,
        misfire_grace_seconds,
        catchup,
        overlap,
        after,
        queue,
        rate_key
    );
    out
}

#[utoipa::path(put, path = "/tasks/{id}", tag = "tasks", request_body = TaskPatch,
    params(("id" = Uuid, Path), ("dry_run" = Option<bool>, Query, description = "true: run every check and answer 204 without writing")),
    description = "Same as PATCH (kept for compatibility).",
    responses((status = 200, body = Task), (status = 204, description = "dry_run: the edit is valid; nothing was written"), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn put(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    patch(state, caller, path, q, body).await
}

#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    description = "Deletes the task, its pending work and its run history. A run already leased finishes; its result is discarded.",
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let id = path_uuid(&path, "id")?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    store::dependencies::lock_graph(&tx).await?;
    let row = store::tasks::lock(&tx, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    let dependents = store::dependencies::forget_parent(&tx, id).await?;
    store::tasks::delete(&tx, id).await?;
    db::audit(
        &tx,
        caller.agent_id,
        "task.delete",
        "task",
        &id.to_string(),
        &json!({"title": row.task.title, "name": row.task.name, "status": row.task.status,
                "dependents_unlinked": dependents}),
    )
    .await?;
    tx.commit().await?;
    announce_task_change(&state, id, "deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Pause, resume or cancel, as the lifecycle state machine (orrery::lifecycle) says.
async fn transition(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    action: Action,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let id = path_uuid(&path, "id")?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let row = store::tasks::lock(&tx, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    let previous = row.task.status;
    let (to, work) = match action.apply(row.task.status) {
        Ok(Outcome::Unchanged) => {
            return Ok(HttpResponse::Ok().json(TaskTransition {
                task: row.task,
                previous_status: previous,
            }))
        }
        Ok(Outcome::Move { to, work }) => (to, work),
        Err(refused) => {
            return Err(ApiError::Conflict {
                message: format!(
                    "cannot {} Task {id}: it is {previous}",
                    refused.action.verb()
                ),
                details: Some(json!({"status": previous})),
            })
        }
    };
    let mut details = json!({"previous_status": previous});
    match action {
        // Dependent work that has not started goes back to its gate; resume releases it.
        Action::Pause => {
            details["dependency_runs_held"] =
                json!(work::hold_dependents(&tx, id, &state.clock).await?);
        }
        Action::Cancel => {
            let (edges, gates) = store::dependencies::drop_for_cancel(&tx, id).await?;
            details["dependencies_dropped"] = json!(edges);
            details["dependency_gates_dropped"] = json!(gates);
        }
        Action::Resume | Action::Complete => {}
    }
    match work {
        PendingWork::RemoveUnleased => {
            let removed = work::remove_unleased(&tx, id, false, &state.clock).await?;
            tracing::debug!(task_id = %id, removed, "unleased work removed");
            store::tasks::set_status(&tx, id, to, None, None, &state.clock).await?;
        }
        PendingWork::RestartFromNow => {
            let now = store::now(&tx, &state.clock).await?;
            let schedule = validation::parse_schedule(
                row.task.schedule_kind,
                &row.task.schedule_expr,
                &row.task.timezone,
                row.schedule_anchor,
            )
            .map_err(|errors| {
                let why: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect();
                ApiError::Internal(anyhow::anyhow!(
                    "task {id}: the stored schedule no longer parses ({})",
                    why.join("; ")
                ))
            })?;
            let next = validation::next_fire_after(&schedule, now);
            // No backlog burst: the scheduler materializes from now on.
            store::tasks::set_status(&tx, id, to, Some(now), next, &state.clock).await?;
            details["dependency_runs_released"] =
                json!(work::release_held_dependents(&tx, id, &state.clock).await?);
        }
        PendingWork::Keep => {
            store::tasks::set_status(&tx, id, to, None, None, &state.clock).await?;
        }
    }
    let updated = store::tasks::get(&tx, id, None)
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    db::audit(
        &tx,
        caller.agent_id,
        action.audit_action(),
        "task",
        &id.to_string(),
        &details,
    )
    .await?;
    tx.commit().await?;
    announce_task_change(&state, id, action.done());
    if details["dependency_runs_released"].as_u64().unwrap_or(0) > 0 {
        wake_workers(&state, id);
    }
    Ok(HttpResponse::Ok().json(TaskTransition {
        task: updated.task,
        previous_status: previous,
    }))
}

macro_rules! lifecycle {
    ($name:ident, $action:expr, $path:literal, $doc:literal) => {
        #[utoipa::path(post, path = $path, tag = "tasks", params(("id" = Uuid, Path)), description = $doc,
            responses((status = 200, body = TaskTransition), (status = 401, body = ErrorEnvelope),
                (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
                (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
            security(("bearer" = [])))]
        pub async fn $name(
            state: web::Data<AppState>,
            caller: Caller,
            path: web::Path<String>,
        ) -> ApiResult<HttpResponse> {
            transition(state, caller, path, $action).await
        }
    };
}

lifecycle!(pause, Action::Pause, "/tasks/{id}/pause",
    "active → paused; removes the task's unleased due work. Pausing a paused task answers 200 unchanged.");
lifecycle!(
    resume,
    Action::Resume,
    "/tasks/{id}/resume",
    "paused → active; fires are materialized from now on (no backlog burst)."
);
lifecycle!(
    cancel,
    Action::Cancel,
    "/tasks/{id}/cancel",
    "active|paused → canceled (terminal); removes the task's unleased due work."
);

#[utoipa::path(post, path = "/tasks/{id}/run_now", tag = "tasks", params(("id" = Uuid, Path)),
    request_body(content = Option<RunNowBody>, description = "Optional; `params` are merged over the task's params"),
    responses((status = 202, body = RunNowAccepted), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn run_now(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: OptionalJsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let id = path_uuid(&path, "id")?;
    let params = match &body.0 {
        None => None,
        Some(v) => match read_body::<RunNowBody>(v, &[], &ReadOnly::NONE)?.params {
            Nullable::Set(JsonObject(p)) => Some(p),
            _ => None,
        },
    };
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let row = store::tasks::lock(&tx, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    if !row.task.status.accepts_manual_work() {
        return Err(ApiError::Conflict {
            message: format!(
                "Task {id} is {}; only active tasks can run now",
                row.task.status
            ),
            details: Some(json!({"status": row.task.status})),
        });
    }
    let manual = NewWork {
        params: params.clone(),
        ..NewWork::new(id, Trigger::Manual)
    };
    let enqueued = work::enqueue(&tx, &[manual], &state.clock)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    let (due_work_id, run_at) = (enqueued.id, enqueued.run_at);
    db::audit(
        &tx,
        caller.agent_id,
        "task.run_now",
        "task",
        &id.to_string(),
        &json!({"due_work_id": due_work_id}),
    )
    .await?;
    tx.commit().await?;
    wake_workers(&state, id);
    Ok(HttpResponse::Accepted().json(RunNowAccepted {
        due_work_id,
        run_at,
    }))
}

#[utoipa::path(post, path = "/tasks/{id}/snooze", tag = "tasks", params(("id" = Uuid, Path)), request_body = SnoozeBody,
    description = "Moves the next pending fire later by delay_seconds (materializing it first if needed); later fires are unaffected.",
    responses((status = 200, body = Snoozed), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn snooze(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let id = path_uuid(&path, "id")?;
    let body = read_body::<SnoozeBody>(&body.0, &[], &ReadOnly::NONE)?;
    let Field::Set(Int(delay)) = body.delay_seconds else {
        return Err(ApiError::field("delay_seconds", "is required"));
    };
    let delay = delay as i32;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let row = store::tasks::lock(&tx, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    if !row.task.status.accepts_manual_work() {
        return Err(ApiError::Conflict {
            message: format!(
                "Task {id} is {}; only active tasks can be snoozed",
                row.task.status
            ),
            details: Some(json!({"status": row.task.status})),
        });
    }
    let (due_work_id, run_at, ready_at, task) =
        match work::next_unleased_fire(&tx, id, &state.clock).await? {
            Some(fire) => {
                let ready_at = work::delay(&tx, fire.id, delay).await?;
                (fire.id, fire.run_at, ready_at, row.task)
            }
            None => {
                let now = store::now(&tx, &state.clock).await?;
                let schedule = validation::parse_schedule(
                    row.task.schedule_kind,
                    &row.task.schedule_expr,
                    &row.task.timezone,
                    row.schedule_anchor,
                )
                .map_err(|_| ApiError::conflict(format!("Task {id} has no schedule to snooze")))?;
                let after = row.materialized_until.unwrap_or(now);
                let fire = validation::next_fire_after(&schedule, after).ok_or_else(|| {
                    ApiError::conflict(format!("Task {id} has no upcoming fire to snooze"))
                })?;
                let ready_at = fire + Duration::seconds(delay as i64);
                let snoozed = NewWork::new(id, Trigger::Schedule)
                    .at(fire)
                    .ready(Ready::At(ready_at));
                let wid = work::enqueue(&tx, &[snoozed], &state.clock)
                    .await?
                    .pop()
                    .map(|e| e.id)
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "the next fire of Task {id} is being materialized; retry"
                        ))
                    })?;
                let updated =
                    store::tasks::set_materialized_until(&tx, id, fire, Some(fire)).await?;
                (wid, fire, ready_at, updated.task)
            }
        };
    db::audit(
        &tx,
        caller.agent_id,
        "task.snooze",
        "task",
        &id.to_string(),
        &json!({"due_work_id": due_work_id, "delay_seconds": delay, "ready_at": ready_at}),
    )
    .await?;
    tx.commit().await?;
    announce_task_change(&state, id, "snoozed");
    Ok(HttpResponse::Ok().json(Snoozed {
        task,
        due_work_id,
        run_at,
        ready_at,
    }))
}

#[utoipa::path(get, path = "/tasks/{id}/schedule", tag = "tasks",
    params(("id" = Uuid, Path), ("count" = Option<i64>, Query, minimum = 1, maximum = 1000),
        ("after" = Option<String>, Query, description = "RFC 3339 instant (default now)")),
    responses((status = 200, body = Fires), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn schedule(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let id = path_uuid(&path, "id")?;
    let count = q.int("count", 1, 1000, 10)? as usize;
    let after = q.instant("after")?.unwrap_or_else(|| state.clock.now());
    let client = state.db().await?;
    let row = visible_task(&client, &caller, id).await?;
    let s = validation::parse_schedule(
        row.task.schedule_kind,
        &row.task.schedule_expr,
        &row.task.timezone,
        row.schedule_anchor,
    )
    .map_err(ApiError::Validation)?;
    let fires = validation::next_fires(&s, after, count);
    Ok(HttpResponse::Ok().json(validation::fires_json(&s, &fires)))
}

#[utoipa::path(post, path = "/tasks/{id}/backfill", tag = "tasks", params(("id" = Uuid, Path)), request_body = BackfillBody,
    description = "Materializes the task's nominal fires in the past window [from, to) as work due now, each fire at most once in the task's lifetime (fires that already ran, are pending or dead, or were backfilled before are skipped). At most max_fires (≤ 1000) per call; `capped` and `next_from` say where to continue. Only fires the scheduler has already passed (up to its cursor) are considered. Allowed while the task is active or completed.",
    responses((status = 200, body = BackfillReport), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn backfill(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let id = path_uuid(&path, "id")?;
    let body = read_body::<BackfillBody>(&body.0, &[], &ReadOnly::NONE)?;
    let (Field::Set(Instant(from)), Field::Set(Instant(to))) = (body.from, body.to) else {
        return Err(ApiError::field("from", "is required"));
    };
    let max_fires = body.max_fires.set().map_or(BACKFILL_MAX_FIRES, |Int(n)| n);
    if from >= to {
        return Err(ApiError::field("to", "must be later than from"));
    }

    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let row = store::tasks::lock(&tx, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Task", id))?;
    let now = store::now(&tx, &state.clock).await?;
    if to > now {
        return Err(ApiError::field(
            "to",
            format!(
                "must not be after now ({}): future fires are the scheduler's to materialize",
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    let status = row.task.status.as_str();
    if status != TaskStatus::Active.as_str() && status != TaskStatus::Completed.as_str() {
        return Err(ApiError::Conflict {
            message: format!(
                "Task {id} is {status}; only active or completed tasks can be backfilled"
            ),
            details: Some(json!({"status": status})),
        });
    }
    if row.task.schedule_kind == ScheduleKind::Event {
        return Err(ApiError::Conflict {
            message: format!(
                "Task {id} is triggered by events and has no nominal fires to backfill"
            ),
            details: Some(json!({"schedule_kind": row.task.schedule_kind})),
        });
    }
    let schedule = validation::parse_schedule(
        row.task.schedule_kind,
        &row.task.schedule_expr,
        &row.task.timezone,
        row.schedule_anchor,
    )
    .map_err(|_| ApiError::conflict(format!("Task {id} has no schedule to backfill")))?;
    // Fires up to the scheduler's cursor are in the past it has passed; later ones are still its own.
    let mut until = to - Duration::seconds(1);
    if let Some(cursor) = row.materialized_until {
        until = until.min(cursor);
    }
    let mut fires = Vec::new();
    let mut next_from = None;
    let mut cursor = from - Duration::seconds(1);
    while let Some(t) = validation::next_fire_after(&schedule, cursor) {
        if t > until {
            break;
        }
        if fires.len() as i64 == max_fires {
            next_from = Some(t);
            break;
        }
        fires.push(t);
        cursor = t;
    }
    let created = if fires.is_empty() {
        Vec::new()
    } else {
        work::lock_scheduled_between(&tx, id, fires[0], fires[fires.len() - 1]).await?;
        work::backfill(&tx, id, &fires, &state.clock).await?
    };
    let report = BackfillReport {
        task_id: id,
        from,
        to,
        until,
        fires: fires.len() as i64,
        created: created.len() as i64,
        skipped: (fires.len() - created.len()) as i64,
        capped: next_from.is_some(),
        next_from,
        created_fires: created,
    };
    db::audit(
        &tx,
        caller.agent_id,
        "task.backfill",
        "task",
        &id.to_string(),
        &json!({"from": from, "to": to, "until": until, "fires": report.fires, "created": report.created,
                "skipped": report.skipped, "capped": report.capped}),
    )
    .await?;
    tx.commit().await?;
    if report.created > 0 {
        wake_workers(&state, id);
    }
    Ok(HttpResponse::Ok().json(report))
}
