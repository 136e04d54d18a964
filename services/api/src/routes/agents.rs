//! /agents (admin): agents and their tokens.

use actix_web::{web, HttpResponse};
use orrery::model::{Scope, SYSTEM_AGENT_ID};
use orrery::store;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;

use crate::auth::{generate_token, Caller};
use crate::body::{
    body_schema, named_schema, read_body, request_body, Choice, Field, FieldValue, Instant, Int,
    List, Nullable, ReadOnly, Text,
};
use crate::db;
use crate::error::{sqlstate, ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{path_uuid, JsonBody, QueryParams};
use crate::models::{Agent, AgentCreated, AgentPage, NewTokenResponse, TokenList};
use crate::state::AppState;

request_body!(
    /// The writable fields of an agent: the body of POST /agents (`name` required) and PATCH /agents/{id}.
    pub struct AgentBody {
        name: Field<Text<1, 100>>,
        /// Subset of admin, tasks:read, tasks:write, runs:read, events:publish, jobs:work (default none).
        scopes: Field<List<Choice<Scope>, 64>>,
        /// An http:// or https:// URL; null removes it.
        webhook_url: Nullable<WebhookUrl>,
    }
);

const AGENT_CREATE_REQUIRED: &[&str] = &["name"];

named_schema!(
    /// Body of POST /agents.
    pub AgentCreate = body_schema::<AgentBody>(AGENT_CREATE_REQUIRED, "Body of POST /agents.")
);
named_schema!(
    /// Body of PATCH /agents/{id}.
    pub AgentPatch = body_schema::<AgentBody>(&[], "Body of PATCH /agents/{id}: any subset of the agent's fields.")
);

/// The scopes as stored: each once, in the order given.
fn scope_names(scopes: Field<List<Choice<Scope>, 64>>) -> Option<Vec<String>> {
    let List(items) = scopes.set()?;
    let mut out: Vec<String> = Vec::new();
    for Choice(scope) in items {
        if !out.iter().any(|s| s == scope.as_str()) {
            out.push(scope.as_str().to_string());
        }
    }
    Some(out)
}

/// An http:// or https:// URL of at most 2000 characters, without spaces or control characters.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookUrl(pub String);

impl FieldValue for WebhookUrl {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Text(u) = Text::<1, 2000>::read(v, path, errors)?;
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.len() > 8
            && !u.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Some(WebhookUrl(u))
        } else {
            errors.push(FieldError::new(
                path,
                "must be an http:// or https:// URL without spaces",
            ));
            None
        }
    }

    fn schema() -> Schema {
        Text::<1, 2000>::schema()
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
    let body = read_body::<AgentBody>(&body.0, AGENT_CREATE_REQUIRED, &ReadOnly::NONE)?;
    let name = body.name.set().map(|Text(n)| n).unwrap_or_default();
    let scopes = scope_names(body.scopes).unwrap_or_default();
    let webhook_url = match body.webhook_url {
        Nullable::Set(WebhookUrl(u)) => Some(u),
        _ => None,
    };
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
    let page = crate::input::page(&q)?;
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
    let body = read_body::<AgentBody>(&body.0, &[], &ReadOnly::NONE)?;
    let name = body.name.map(|Text(n)| n);
    let scopes = scope_names(body.scopes);
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let agent = db::agents::get_agent(&tx, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("Agent", id))?;
    if id == SYSTEM_AGENT_ID && scopes.is_some() {
        return Err(ApiError::conflict(
            "the system agent's scopes cannot be changed",
        ));
    }
    let new_name = name.set().unwrap_or_else(|| agent.name.clone());
    let new_scopes = scopes.unwrap_or_else(|| agent.scopes.clone());
    let mut new_webhook = agent.webhook_url.clone();
    body.webhook_url
        .map(|WebhookUrl(u)| u)
        .apply_to(&mut new_webhook);
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

request_body!(
    /// Body of POST /agents/{id}/tokens (optional).
    pub struct TokenCreate {
        /// Instant after which the token is refused; must be in the future.
        expires_at: Nullable<Instant>,
        /// Or: lifetime in seconds from now (ten years at most).
        ttl_seconds: Field<Int<60, 315_360_000>>,
    }
);

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
            let body = read_body::<TokenCreate>(v, &[], &ReadOnly::NONE)?;
            let at = match body.expires_at {
                Nullable::Set(Instant(t)) => Some(t),
                _ => None,
            };
            let ttl = body.ttl_seconds.set().map(|Int(n)| n);
            if at.is_some() && ttl.is_some() {
                return Err(ApiError::field(
                    "ttl_seconds",
                    "set either expires_at or ttl_seconds, not both",
                ));
            }
            (at, ttl)
        }
    };
    let token = generate_token();
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let now = store::now(&tx, &state.clock).await?;
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
