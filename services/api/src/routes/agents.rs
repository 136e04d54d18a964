//! /agents (admin): agents and their tokens.

use actix_web::{web, HttpResponse};
use orrery::model::{Scope, SYSTEM_AGENT_ID};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::auth::{generate_token, Caller};
use crate::db;
use crate::error::{sqlstate, ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{path_uuid, Fields, JsonBody, Opt, Page, QueryParams};
use crate::models::{Agent, AgentCreated, AgentPage, NewTokenResponse, TokenList};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AgentCreate {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Subset of admin, tasks:read, tasks:write, runs:read, events:publish, jobs:work.
    scopes: Vec<String>,
    #[schema(max_length = 2000)]
    webhook_url: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AgentPatch {
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    scopes: Option<Vec<String>>,
    #[schema(max_length = 2000)]
    webhook_url: Option<String>,
}

fn read_scopes(f: &mut Fields, value: Option<&Value>) -> Opt<Vec<String>> {
    match value {
        None => Opt::Absent,
        Some(Value::Array(items)) => {
            let mut out: Vec<String> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(|s| s.parse::<Scope>()) {
                    Some(Ok(scope)) => {
                        if !out.iter().any(|s| s == scope.as_str()) {
                            out.push(scope.as_str().to_string());
                        }
                    }
                    Some(Err(_)) | None => f.errors.push(FieldError::new(
                        format!("scopes[{i}]"),
                        format!("must be one of {}", Scope::expected()),
                    )),
                }
            }
            Opt::Set(out)
        }
        Some(_) => {
            f.errors
                .push(FieldError::new("scopes", "must be an array of scope names"));
            Opt::Absent
        }
    }
}

fn check_webhook(f: &mut Fields, url: &Opt<String>) {
    if let Opt::Set(u) = url {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.len() > 8
            && !u.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            f.errors.push(FieldError::new(
                "webhook_url",
                "must be an http:// or https:// URL without spaces",
            ));
        }
    }
}

fn name_taken(e: tokio_postgres::Error, name: &str) -> ApiError {
    if sqlstate(&e) == Some("23505") {
        ApiError::Conflict {
            message: format!("an agent named {name:?} already exists"),
            details: Some(json!({"field": "name"})),
        }
    } else {
        e.into()
    }
}

#[utoipa::path(post, path = "/agents", tag = "agents", request_body = AgentCreate,
    responses((status = 201, body = AgentCreated), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let mut f = Fields::object(&body.0, &["name", "scopes", "webhook_url"])?;
    let name = f.string("name", 1, 100, false);
    f.require("name", &name);
    let scopes_raw = f.raw("scopes");
    let scopes = read_scopes(&mut f, scopes_raw);
    let webhook_url = f.string("webhook_url", 1, 2000, true);
    check_webhook(&mut f, &webhook_url);
    f.finish()?;
    let name = name.set().unwrap_or_default();
    let scopes = scopes.set().unwrap_or_default();
    let webhook_url = webhook_url.set();
    let token = generate_token();
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let agent = db::agents::insert_agent(&tx, &name, &scopes, webhook_url.as_deref())
        .await
        .map_err(|e| name_taken(e, &name))?;
    let meta = db::agents::insert_token(&tx, agent.id, &token.hash, None).await?;
    db::audit(
        &tx,
        caller.agent_id,
        "agent.create",
        "agent",
        &agent.id.to_string(),
        &json!({"name": agent.name, "scopes": agent.scopes}),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(AgentCreated {
        agent,
        token: token.secret,
        token_id: meta.id,
    }))
}

#[utoipa::path(get, path = "/agents", tag = "agents",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200), ("offset" = Option<i64>, Query, minimum = 0)),
    responses((status = 200, body = AgentPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let page = Page::from_query(&q)?;
    let client = state.db().await?;
    let (items, total) = db::agents::list_agents(&client, page).await?;
    let has_more = page.has_more(items.len(), total);
    Ok(HttpResponse::Ok().json(AgentPage {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
        has_more,
    }))
}

#[utoipa::path(get, path = "/agents/me", tag = "agents",
    description = "The agent behind the token (any valid token, no scope needed): who am I, and with which scopes.",
    responses((status = 200, body = Agent), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn me(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    let client = state.db().await?;
    let agent = db::agents::get_agent(&client, caller.agent_id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", caller.agent_id))?;
    Ok(HttpResponse::Ok().json(agent))
}

#[utoipa::path(get, path = "/agents/{id}", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = Agent), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&path, "id")?;
    let client = state.db().await?;
    let agent = db::agents::get_agent(&client, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", id))?;
    Ok(HttpResponse::Ok().json(agent))
}

#[utoipa::path(patch, path = "/agents/{id}", tag = "agents", params(("id" = Uuid, Path)), request_body = AgentPatch,
    responses((status = 200, body = Agent), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn patch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&path, "id")?;
    let mut f = Fields::object(&body.0, &["name", "scopes", "webhook_url"])?;
    let name = f.string("name", 1, 100, false);
    let scopes_raw = f.raw("scopes");
    let scopes = read_scopes(&mut f, scopes_raw);
    let webhook_url = f.string("webhook_url", 1, 2000, true);
    check_webhook(&mut f, &webhook_url);
    f.finish()?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let agent = db::agents::get_agent(&tx, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", id))?;
    if id == SYSTEM_AGENT_ID && !scopes.is_absent() {
        return Err(ApiError::conflict(
            "the system agent's scopes cannot be changed",
        ));
    }
    let new_name = name.set().unwrap_or_else(|| agent.name.clone());
    let new_scopes = scopes.set().unwrap_or_else(|| agent.scopes.clone());
    let new_webhook = match webhook_url {
        Opt::Set(u) => Some(u),
        Opt::Null => None,
        Opt::Absent => agent.webhook_url.clone(),
    };
    let updated = db::agents::update_agent(&tx, id, &new_name, &new_scopes, new_webhook.as_deref())
        .await
        .map_err(|e| name_taken(e, &new_name))?;
    db::audit(
        &tx,
        caller.agent_id,
        "agent.update",
        "agent",
        &id.to_string(),
        &json!({"name": updated.name, "scopes": updated.scopes}),
    )
    .await?;
    tx.commit().await?;
    state.auth.invalidate_agent(id);
    Ok(HttpResponse::Ok().json(updated))
}

#[utoipa::path(delete, path = "/agents/{id}", tag = "agents", params(("id" = Uuid, Path)),
    description = "Deletes the agent and its tokens. 409 for the system agent, yourself, or an agent that owns tasks.",
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&path, "id")?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let agent = db::agents::get_agent(&tx, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", id))?;
    if id == SYSTEM_AGENT_ID {
        return Err(ApiError::conflict("the system agent cannot be deleted"));
    }
    if id == caller.agent_id {
        return Err(ApiError::conflict("an agent cannot delete itself"));
    }
    let owned = db::agents::owned_task_count(&tx, id).await?;
    if owned > 0 {
        return Err(ApiError::Conflict {
            message: format!("Agent {id} owns {owned} task(s); delete or move them first"),
            details: Some(json!({"owned_tasks": owned})),
        });
    }
    db::agents::delete_agent(&tx, id).await.map_err(|e| {
        if sqlstate(&e) == Some("23503") {
            ApiError::conflict(format!("Agent {id} owns tasks; delete or move them first"))
        } else {
            e.into()
        }
    })?;
    db::audit(
        &tx,
        caller.agent_id,
        "agent.delete",
        "agent",
        &id.to_string(),
        &json!({"name": agent.name}),
    )
    .await?;
    tx.commit().await?;
    state.auth.invalidate_agent(id);
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/agents/{id}/tokens", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = TokenList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&path, "id")?;
    let client = state.db().await?;
    db::agents::get_agent(&client, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", id))?;
    let items = db::agents::list_tokens(&client, id).await?;
    Ok(HttpResponse::Ok().json(TokenList { items }))
}

/// Body of POST /agents/{id}/tokens (optional).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TokenCreate {
    /// RFC 3339 instant after which the token is refused; must be in the future.
    expires_at: Option<String>,
    /// Or: lifetime in seconds from now (60 .. 315360000, ten years).
    #[schema(minimum = 60, maximum = 315360000)]
    ttl_seconds: Option<i64>,
}

#[utoipa::path(post, path = "/agents/{id}/tokens", tag = "agents", params(("id" = Uuid, Path)),
    request_body(content = Option<TokenCreate>, description = "Optional: `expires_at` or `ttl_seconds` (not both); no body = never expires"),
    responses((status = 201, body = NewTokenResponse), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_token(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: crate::input::OptionalJsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&path, "id")?;
    let (expires_at, ttl) = match &body.0 {
        None => (None, None),
        Some(v) => {
            let mut f = crate::input::Fields::object(v, &["expires_at", "ttl_seconds"])?;
            let at = match f.string("expires_at", 1, 64, true) {
                crate::input::Opt::Set(s) => match crate::input::parse_instant(&s) {
                    Some(t) => Some(t),
                    None => {
                        f.errors.push(crate::error::FieldError::new(
                            "expires_at",
                            "must be an RFC 3339 instant between the years 1 and 9999",
                        ));
                        None
                    }
                },
                _ => None,
            };
            let ttl = f.int("ttl_seconds", 60, 315_360_000).set();
            if at.is_some() && ttl.is_some() {
                f.errors.push(crate::error::FieldError::new(
                    "ttl_seconds",
                    "set either expires_at or ttl_seconds, not both",
                ));
            }
            f.finish()?;
            (at, ttl)
        }
    };
    let token = generate_token();
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let now = db::now(&tx, &state.clock).await?;
    let expires_at = match (expires_at, ttl) {
        (Some(at), _) if at <= now => {
            return Err(ApiError::field("expires_at", "must be in the future"))
        }
        (Some(at), _) => Some(at),
        (None, Some(secs)) => Some(now + chrono::Duration::seconds(secs)),
        (None, None) => None,
    };
    db::agents::get_agent(&tx, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", id))?;
    let meta = db::agents::insert_token(&tx, id, &token.hash, expires_at).await?;
    db::audit(
        &tx,
        caller.agent_id,
        "token.create",
        "agent",
        &id.to_string(),
        &json!({"token_id": meta.id, "expires_at": meta.expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(NewTokenResponse {
        id: meta.id,
        agent_id: meta.agent_id,
        created_at: meta.created_at,
        last_used_at: meta.last_used_at,
        expires_at: meta.expires_at,
        token: token.secret,
    }))
}

#[utoipa::path(delete, path = "/agents/{id}/tokens/{token_id}", tag = "agents",
    params(("id" = Uuid, Path), ("token_id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&path.0, "id")?;
    let token_id = path_uuid(&path.1, "token_id")?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    if !db::agents::revoke_token(&tx, id, token_id).await? {
        return Err(ApiError::not_found("Token", token_id));
    }
    db::audit(
        &tx,
        caller.agent_id,
        "token.revoke",
        "agent",
        &id.to_string(),
        &json!({"token_id": token_id}),
    )
    .await?;
    tx.commit().await?;
    state.auth.invalidate_token(token_id);
    Ok(HttpResponse::NoContent().finish())
}
