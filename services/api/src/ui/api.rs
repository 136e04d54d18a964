//! The console's read-only endpoints under /console. Every action the console takes goes through the
//! ordinary REST endpoints; these only gather what its pages show, with the same scopes and ownership rules.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use orrery::model::{Scope, TaskStatus};
use orrery::schedule::ScheduleKind;
use orrery::store;
use uuid::Uuid;

use super::models::{
    ConsoleDeadPage, ConsoleDeadWork, ConsoleRunPage, ConsoleTask, ConsoleTaskPage, Me, Overview,
    RunAttempts, TaskFacets, Timeline,
};
use super::timeline;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::{path_i64, path_uuid, QueryParams};
use crate::routes::tasks::visible_task;
use crate::state::AppState;

const CURSOR_MESSAGE: &str = "is not a cursor returned by this endpoint";

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Cursor instants stay within the years 1..=9999 (what PostgreSQL and the API accept everywhere).
fn from_micros(n: i64) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    DateTime::from_timestamp_micros(n).filter(|t| (1..=9999).contains(&t.year()))
}

/// `<microseconds since the epoch>_<key>`.
fn parse_cursor<K: std::str::FromStr>(
    q: &QueryParams,
    name: &str,
) -> ApiResult<Option<(DateTime<Utc>, K)>> {
    let Some(raw) = q.get(name) else {
        return Ok(None);
    };
    let parsed = raw.split_once('_').and_then(|(t, k)| {
        let t = from_micros(t.parse::<i64>().ok()?)?;
        Some((t, k.parse::<K>().ok()?))
    });
    parsed
        .map(Some)
        .ok_or_else(|| ApiError::field(name, CURSOR_MESSAGE))
}

#[utoipa::path(get, path = "/console/me", tag = "console",
    description = "The agent behind the token: its name and scopes (how the console signs in).",
    responses((status = 200, body = Me), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn me(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    let client = state.db().await?;
    let name = store::console::agent_name(&client, caller.agent_id)
        .await?
        .unwrap_or_else(|| "system".into());
    Ok(HttpResponse::Ok().json(Me {
        agent_id: caller.agent_id,
        name,
        scopes: caller.scopes.iter().map(|s| s.to_string()).collect(),
        admin: caller.is_admin(),
    }))
}

#[utoipa::path(get, path = "/console/overview", tag = "console",
    description = "Counts by task status, queue counts, runs of the last hour and day (runs:read), workers (admin) \
        and the next fires, over the tasks the caller may see.",
    responses((status = 200, body = Overview), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn overview(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let with_runs = caller.require(Scope::RunsRead).is_ok();
    let client = state.db().await?;
    let o: Overview = store::console::overview(
        &client,
        caller.owner_filter(),
        with_runs,
        caller.is_admin(),
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(o))
}

/// Escapes LIKE wildcards so a search is literal.
fn like_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[utoipa::path(get, path = "/console/tasks", tag = "console",
    description = "Tasks, newest first, keyset-paginated: pass `next_cursor` back as `after`.",
    params(("q" = Option<String>, Query, description = "Substring of the title, or a whole task id"),
        ("status" = Option<String>, Query, description = "active, paused, canceled or completed"),
        ("schedule_kind" = Option<String>, Query, description = "cron, rrule, once or event"),
        ("timezone" = Option<String>, Query), ("created_by" = Option<Uuid>, Query),
        ("after" = Option<String>, Query, description = "A next_cursor from a previous page"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, body = ConsoleTaskPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn tasks(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let limit = q.int("limit", 1, 200, 50)?;
    let status = q
        .parsed::<TaskStatus>("status", &format!("one of {}", TaskStatus::expected()))?
        .map(|s| s.as_str().to_string());
    let schedule_kind = q
        .parsed::<ScheduleKind>("schedule_kind", "one of cron, rrule, once, event")?
        .map(|k| k.as_str().to_string());
    let timezone = match q.get("timezone") {
        Some(t) if t.len() > 64 || t.contains('\0') => {
            return Err(ApiError::field("timezone", "must be at most 64 characters"))
        }
        Some("") => None,
        t => t.map(str::to_string),
    };
    let search = q.get("q").map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 200 || s.contains('\0')) {
        return Err(ApiError::field(
            "q",
            "must be at most 200 characters of text",
        ));
    }
    let query = store::console::TaskQuery {
        owner: caller.owner_filter(),
        status,
        schedule_kind,
        timezone,
        created_by: q.uuid("created_by")?,
        title_like: search.map(like_pattern),
        id: search.and_then(|s| Uuid::parse_str(s).ok()),
        after: parse_cursor::<Uuid>(&q, "after")?,
        limit: limit + 1,
    };
    let client = state.db().await?;
    let mut rows = store::console::tasks(&client, &query).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .map(|r| format!("{}_{}", micros(r.task.created_at), r.task.id));
    let mut owners: Vec<Uuid> = rows.iter().map(|r| r.task.created_by).collect();
    owners.sort();
    owners.dedup();
    let names = store::console::agent_names(&client, &owners).await?;
    let items = rows
        .into_iter()
        .map(|r| ConsoleTask {
            owner_name: names.get(&r.task.created_by).cloned(),
            task: r.task,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ConsoleTaskPage { items, next_cursor }))
}

#[utoipa::path(get, path = "/console/tasks/facets", tag = "console",
    description = "The time zones and owners of the tasks the caller may see (for the list's filters).",
    responses((status = 200, body = TaskFacets), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn facets(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let client = state.db().await?;
    let (timezones, owners) = store::console::facets(&client, caller.owner_filter()).await?;
    Ok(HttpResponse::Ok().json(TaskFacets { timezones, owners }))
}

#[utoipa::path(get, path = "/console/tasks/{id}/runs", tag = "console",
    description = "The task's runs, newest first, keyset-paginated: pass `next_cursor` back as `before`.",
    params(("id" = Uuid, Path), ("before" = Option<String>, Query, description = "A next_cursor from a previous page"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500)),
    responses((status = 200, body = ConsoleRunPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn task_runs(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let id = path_uuid(&path, "id")?;
    let limit = q.int("limit", 1, 500, 50)?;
    let before = match q.get("before") {
        None => None,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(ApiError::field("before", CURSOR_MESSAGE)),
        },
    };
    let client = state.db().await?;
    visible_task(&client, &caller, id).await?;
    let mut items = store::console::task_runs(&client, id, before, limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| items.last())
        .flatten()
        .map(|r| r.id.to_string());
    Ok(HttpResponse::Ok().json(ConsoleRunPage { items, next_cursor }))
}

#[utoipa::path(get, path = "/console/runs/{id}/attempts", tag = "console",
    description = "Every attempt of the fire the run belongs to (the runs sharing its due_work id), oldest first.",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = RunAttempts), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn attempts(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let id = path_i64(&path, "id")?;
    let client = state.db().await?;
    let run = store::runs::get(&client, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Run", id))?;
    let task = visible_task(&client, &caller, run.task_id).await?;
    let items = match run.due_work_id {
        Some(due) => store::console::attempts(&client, run.task_id, due).await?,
        None => vec![run.clone()],
    };
    Ok(HttpResponse::Ok().json(RunAttempts {
        task_id: run.task_id,
        task_title: task.task.title,
        items,
    }))
}

#[utoipa::path(get, path = "/console/tasks/{id}/timeline", tag = "console",
    description = "The task's next fires in its zone and in UTC, with the DST transitions in the window and the fires they moved.",
    params(("id" = Uuid, Path), ("count" = Option<i64>, Query, minimum = 1, maximum = 500)),
    responses((status = 200, body = Timeline), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn task_timeline(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let id = path_uuid(&path, "id")?;
    let count = q.int("count", 1, 500, 30)? as usize;
    let client = state.db().await?;
    let row = visible_task(&client, &caller, id).await?;
    drop(client);
    let t = &row.task;
    let kind = t.schedule_kind;
    let tz = orrery::schedule::parse_timezone(&t.timezone)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored time zone: {e}")))?;
    let now = state.clock.now();
    let schedule =
        orrery::schedule::Schedule::parse(kind, &t.schedule_expr, tz, row.schedule_anchor)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored schedule: {e}")))?;
    let built = timeline::build(
        &schedule,
        kind,
        &t.schedule_expr,
        row.schedule_anchor,
        now,
        count,
    );
    let text = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(HttpResponse::Ok().json(Timeline {
        task_id: t.id,
        timezone: t.timezone.clone(),
        schedule_kind: t.schedule_kind.as_str().to_string(),
        window_start: text(now),
        window_end: text(built.window_end),
        fires: built.fires,
        transitions: built.transitions,
    }))
}

#[utoipa::path(get, path = "/console/dead", tag = "console",
    description = "Dead work, most recently dead first, keyset-paginated: pass `next_cursor` back as `after`.",
    params(("after" = Option<String>, Query, description = "A next_cursor from a previous page"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, body = ConsoleDeadPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn dead(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let limit = q.int("limit", 1, 200, 50)?;
    let after = parse_cursor::<i64>(&q, "after")?;
    let client = state.db().await?;
    let mut rows = store::console::dead(&client, after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .and_then(|w| w.dead_at.map(|d| format!("{}_{}", micros(d), w.id)));
    let mut ids: Vec<Uuid> = rows.iter().map(|w| w.task_id).collect();
    ids.sort();
    ids.dedup();
    let titles = store::console::task_titles(&client, &ids).await?;
    let items = rows
        .into_iter()
        .map(|w| ConsoleDeadWork {
            task_title: titles.get(&w.task_id).cloned(),
            work: w,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ConsoleDeadPage { items, next_cursor }))
}
