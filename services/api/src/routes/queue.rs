//! /queue and /workers (admin).

use actix_web::{web, HttpResponse};
use orrery::model::{Scope, TaskStatus};
use orrery::store;
use serde_json::json;

use super::wake_workers;
use crate::auth::Caller;
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::{path_i64, QueryParams};
use crate::models::{DeadWorkPage, QueueSummary, ReplayAccepted, WorkerList};
use crate::state::AppState;

#[utoipa::path(get, path = "/queue", tag = "queue",
    responses((status = 200, body = QueueSummary), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn summary(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let client = state.db().await?;
    Ok(HttpResponse::Ok().json(store::backlog::summary(&client).await?))
}

#[utoipa::path(get, path = "/queue/dead", tag = "queue",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200), ("offset" = Option<i64>, Query, minimum = 0)),
    responses((status = 200, body = DeadWorkPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn dead(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let page = crate::input::page(&q)?;
    let client = state.db().await?;
    let (items, total) = store::backlog::list_dead(&client, page).await?;
    let has_more = page.has_more(items.len(), total);
    Ok(HttpResponse::Ok().json(DeadWorkPage {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
        has_more,
    }))
}

#[utoipa::path(post, path = "/queue/dead/{id}/replay", tag = "queue", params(("id" = i64, Path, minimum = 1)),
    description = "Puts a dead item back in the queue: pending, attempt 0, due now. Allowed while its task is active or completed (a `once` task, an exhausted COUNT/UNTIL); 409 while it is paused (resume first) or canceled.",
    responses((status = 202, body = ReplayAccepted), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn replay(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_i64(&path, "id")?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let (task_id, status) = orrery::store::work::lock_dead(&tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Dead work", id))?;
    // Replay re-runs one fire that already happened, so it makes sense while the task is active and after its
    // schedule is exhausted (completed: a `once` task or a used-up COUNT/UNTIL). A paused task runs nothing
    // until resumed, and a canceled one never runs again.
    if status == TaskStatus::Paused.as_str() {
        return Err(ApiError::Conflict {
            message: format!("Task {task_id} is paused; resume it before replaying its work"),
            details: Some(json!({"task_id": task_id, "status": status})),
        });
    }
    if status == TaskStatus::Canceled.as_str() {
        return Err(ApiError::Conflict {
            message: format!(
                "Task {task_id} is canceled and never runs again; its dead work can be inspected or deleted"
            ),
            details: Some(json!({"task_id": task_id, "status": status})),
        });
    }
    orrery::store::work::replay_dead(&tx, id, &state.clock).await?;
    db::audit(
        &tx,
        caller.agent_id,
        "due_work.replay",
        "due_work",
        &id.to_string(),
        &json!({"task_id": task_id}),
    )
    .await?;
    tx.commit().await?;
    wake_workers(&state, task_id);
    Ok(HttpResponse::Accepted().json(ReplayAccepted { due_work_id: id }))
}

#[utoipa::path(delete, path = "/queue/dead/{id}", tag = "queue", params(("id" = i64, Path, minimum = 1)),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete_dead(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_i64(&path, "id")?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let task_id = orrery::store::work::delete_dead(&tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Dead work", id))?;
    db::audit(
        &tx,
        caller.agent_id,
        "due_work.delete",
        "due_work",
        &id.to_string(),
        &json!({"task_id": task_id}),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/workers", tag = "queue",
    responses((status = 200, body = WorkerList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn workers(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let client = state.db().await?;
    Ok(HttpResponse::Ok().json(WorkerList {
        items: store::backlog::workers(&client).await?,
    }))
}
