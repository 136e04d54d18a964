//! GET /audit (admin): who did what, newest first.

use actix_web::{web, HttpResponse};
use orrery::model::Scope;

use crate::auth::Caller;
use crate::db::{self, audit::AuditFilter};
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::QueryParams;
use crate::models::AuditPage;
use crate::state::AppState;

const SUBJECT_TYPES: &[&str] = &["task", "agent", "token", "due_work"];

#[utoipa::path(get, path = "/audit", tag = "audit",
    params(
        ("actor" = Option<uuid::Uuid>, Query, description = "Agent id of the actor"),
        ("action" = Option<String>, Query, description = "Exact action (`task.pause`) or a prefix ending in `*` (`task.*`)"),
        ("subject_type" = Option<String>, Query, description = "task, agent, token or due_work"),
        ("target" = Option<String>, Query, description = "The subject's id (a task or agent UUID, a due_work id)"),
        ("since" = Option<String>, Query, description = "RFC 3339: entries at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339: entries before"),
        ("before" = Option<i64>, Query, minimum = 1, description = "Keyset cursor: entries with a smaller id (from next_before)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let limit = q.int("limit", 1, 200, 50)?;
    let text = |name: &str, max: usize| -> ApiResult<Option<String>> {
        match q.get(name) {
            None => Ok(None),
            Some(s) if s.chars().count() > max || s.contains('\0') => Err(ApiError::field(
                name,
                format!("must be at most {max} characters, without NUL"),
            )),
            Some(s) => Ok(Some(s.to_string())),
        }
    };
    let subject_type = text("subject_type", 20)?;
    if let Some(t) = &subject_type {
        if !SUBJECT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::field(
                "subject_type",
                format!("must be one of {}", SUBJECT_TYPES.join(", ")),
            ));
        }
    }
    let filter = AuditFilter {
        actor: q.uuid("actor")?,
        action: text("action", 100)?,
        subject_type,
        target: text("target", 200)?,
        since: q.instant("since")?,
        until: q.instant("until")?,
        before: match q.get("before") {
            None => None,
            Some(_) => Some(q.int("before", 1, i64::MAX, 1)?),
        },
    };
    let client = state.db().await?;
    let mut items = db::audit::list(&client, &filter, limit + 1).await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_before = if has_more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(AuditPage {
        items,
        limit,
        has_more,
        next_before,
    }))
}
