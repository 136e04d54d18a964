//! /runs and /tasks/{id}/runs/*: run history and statistics.

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use orrery::store;

use super::tasks::visible_task;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::{path_i64, path_uuid, QueryParams};
use crate::models::{Run, RunPage, RunStats};
use crate::state::AppState;

const MAX_DAYS: i64 = 3650;

#[utoipa::path(get, path = "/runs", tag = "runs",
    params(("task_id" = Option<uuid::Uuid>, Query), ("success" = Option<bool>, Query),
        ("since" = Option<String>, Query, description = "RFC 3339; runs finished at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339; runs finished before"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200), ("offset" = Option<i64>, Query, minimum = 0),
        ("include_errors" = Option<bool>, Query, description = "false omits the error text (default true)")),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let page = crate::input::page(&q)?;
    let filter = store::runs::RunFilter {
        task_id: q.uuid("task_id")?,
        success: q.boolean("success")?,
        since: q.instant("since")?,
        until: q.instant("until")?,
        owner: caller.owner_filter(),
    };
    let include_errors = q.boolean("include_errors")?.unwrap_or(true);
    let client = state.db().await?;
    let (items, total) = store::runs::list(&client, &filter, page, include_errors).await?;
    let has_more = page.has_more(items.len(), total);
    Ok(HttpResponse::Ok().json(RunPage {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
        has_more,
    }))
}

#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = i64, Path, minimum = 1)),
    description = "One run with its trace: `parents` (the parents' final runs that released it) and `children` (the dependents its final outcome arrived at, with their gate and runs).",
    responses((status = 200, body = Run), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let id = path_i64(&path, "id")?;
    let client = state.db().await?;
    let mut run = store::runs::get(&client, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("Run", id))?;
    // The run's place in its chain (docs/flow-control.md#dependencies).
    run.parents = Some(match run.trace_id {
        Some(trace) => store::dependencies::run_parents(&client, run.task_id, trace).await?,
        None => Vec::new(),
    });
    run.children = Some(store::dependencies::run_children(&client, run.id).await?);
    Ok(HttpResponse::Ok().json(run))
}

#[utoipa::path(get, path = "/tasks/{id}/runs/latest", tag = "runs", params(("id" = uuid::Uuid, Path)),
    description = "The task's most recent run, or null if it never ran.",
    responses((status = 200, body = Option<Run>), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn latest(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let id = path_uuid(&path, "id")?;
    let client = state.db().await?;
    visible_task(&client, &caller, id).await?;
    let run = store::runs::latest(&client, id).await?;
    Ok(HttpResponse::Ok().json(run))
}

#[utoipa::path(get, path = "/tasks/{id}/runs/stats", tag = "runs",
    params(("id" = uuid::Uuid, Path), ("days" = Option<i64>, Query, minimum = 1, maximum = 3650)),
    responses((status = 200, body = RunStats), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn task_stats(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let id = path_uuid(&path, "id")?;
    let days = q.int("days", 1, MAX_DAYS, 7)? as i32;
    let client = state.db().await?;
    visible_task(&client, &caller, id).await?;
    let stats = store::runs::stats(&client, Some(id), None, days).await?;
    Ok(HttpResponse::Ok().json(stats))
}

#[utoipa::path(get, path = "/runs/stats", tag = "runs",
    params(("days" = Option<i64>, Query, minimum = 1, maximum = 3650)),
    responses((status = 200, body = RunStats), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn global_stats(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let days = q.int("days", 1, MAX_DAYS, 7)? as i32;
    let client = state.db().await?;
    let stats = store::runs::stats(&client, None, None, days).await?;
    Ok(HttpResponse::Ok().json(stats))
}
