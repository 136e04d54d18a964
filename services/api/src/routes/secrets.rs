//! /secrets: write-only values a task's pipeline reads as `${secrets.NAME}`.
//!
//! A secret belongs to an agent (its `owner`); a task reads the secrets of the agent that owns the task. Agents
//! manage their own with `tasks:write` (and list them with `tasks:read`); admins manage anyone's with `?owner=`.
//! Values are sealed with `ORRERY_SECRETS_KEY` and never leave the server: no response, error, log line or
//! audit entry carries one.

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use orrery::secrets::{MAX_VALUE_BYTES, MIN_VALUE_CHARS};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Caller;
use crate::body::{read_body, request_body, Field, ReadOnly, Text};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::{JsonBody, QueryParams};
use crate::models::{Reencrypted, SecretInfo, SecretList};
use crate::state::AppState;

request_body!(
    /// Body of PUT /secrets/{name}.
    pub struct SecretPut required ["value"] {
        /// The value: 4 to 65536 characters (at most 65536 bytes). Stored encrypted; never returned.
        value: Field<Text<MIN_VALUE_CHARS, MAX_VALUE_BYTES>>,
    }
);

fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "name",
            "must be 1 to 64 characters of A-Z, a-z, 0-9 and _, not starting with a digit (it is read as ${secrets.NAME})",
        ))
    }
}

/// Whose secrets the call is about: the caller's, or (admins only) `?owner=`.
fn owner_of(caller: &Caller, q: &QueryParams) -> ApiResult<Uuid> {
    match q.uuid("owner")? {
        Some(o) if o != caller.agent_id && !caller.is_admin() => Err(ApiError::field(
            "owner",
            "only admins may manage another agent's secrets",
        )),
        Some(o) => Ok(o),
        None => Ok(caller.agent_id),
    }
}

fn keyring(state: &AppState) -> ApiResult<orrery::secrets::Keyring> {
    state.settings.secrets_keyring().ok_or_else(|| {
        ApiError::Unavailable(
            "secrets are disabled: set ORRERY_SECRETS_KEY (64 hex characters) on the API and the workers".into(),
        )
    })
}

#[utoipa::path(put, path = "/secrets/{name}", tag = "secrets", request_body = SecretPut,
    params(("name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$", description = "A-Z a-z 0-9 _, at most 64, not starting with a digit"),
        ("owner" = Option<Uuid>, Query, description = "Admins: the agent the secret belongs to (default: the caller)")),
    description = "Creates or replaces a secret (201 created, 200 replaced). The value is encrypted at rest and never returned.",
    responses((status = 200, body = SecretInfo), (status = 201, body = SecretInfo), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn put(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let name = path.into_inner();
    check_name(&name)?;
    let owner = owner_of(&caller, &q)?;
    let body = read_body::<SecretPut>(&body.0, &[], &ReadOnly::NONE)?;
    let Field::Set(Text(value)) = body.value else {
        return Err(ApiError::field("value", "is required"));
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::field(
            "value",
            format!("must be at most {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let ring = keyring(&state)?;
    let sealed = ring.seal(owner, &name, &value);
    drop(value);
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    if !db::agents::agent_exists(&tx, owner).await? {
        return Err(ApiError::field("owner", "no agent has this id"));
    }
    let (info, created) = db::secrets::put(&tx, owner, &name, &sealed).await?;
    db::audit(
        &tx,
        caller.agent_id,
        "secret.put",
        "secret",
        &format!("{owner}/{name}"),
        &json!({"owner": owner, "name": name, "created": created, "key_id": info.key_id}),
    )
    .await?;
    tx.commit().await?;
    Ok(if created {
        HttpResponse::Created().json(info)
    } else {
        HttpResponse::Ok().json(info)
    })
}

#[utoipa::path(get, path = "/secrets", tag = "secrets",
    params(("owner" = Option<Uuid>, Query, description = "Filter by owner (non-admins see only their own)")),
    responses((status = 200, body = SecretList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let owner = match q.uuid("owner")? {
        Some(o) if !caller.is_admin() && o != caller.agent_id => {
            return Err(ApiError::field(
                "owner",
                "only admins may list another agent's secrets",
            ))
        }
        Some(o) => Some(o),
        None => caller.owner_filter(),
    };
    let client = state.db().await?;
    let items = db::secrets::list(&client, owner).await?;
    Ok(HttpResponse::Ok().json(SecretList { items }))
}

#[utoipa::path(get, path = "/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$"), ("owner" = Option<Uuid>, Query)),
    responses((status = 200, body = SecretInfo), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let name = path.into_inner();
    check_name(&name)?;
    let owner = owner_of(&caller, &q)?;
    let client = state.db().await?;
    let info = db::secrets::get(&client, owner, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("Secret", &name))?;
    Ok(HttpResponse::Ok().json(info))
}

#[utoipa::path(delete, path = "/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$"), ("owner" = Option<Uuid>, Query)),
    responses((status = 204), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksWrite)?;
    let name = path.into_inner();
    check_name(&name)?;
    let owner = owner_of(&caller, &q)?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    if !db::secrets::delete(&tx, owner, &name).await? {
        return Err(ApiError::not_found("Secret", &name));
    }
    db::audit(
        &tx,
        caller.agent_id,
        "secret.delete",
        "secret",
        &format!("{owner}/{name}"),
        &json!({"owner": owner, "name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/secrets/reencrypt", tag = "secrets",
    description = "Key rotation: re-seals every secret sealed with an older key (one of ORRERY_SECRETS_OLD_KEYS) with ORRERY_SECRETS_KEY. Admin.",
    responses((status = 200, body = Reencrypted), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn reencrypt(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let ring = keyring(&state)?;
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let stale = db::secrets::lock_stale(&tx, ring.current_id()).await?;
    let mut n = 0i64;
    for (owner, name, sealed) in &stale {
        let value = ring
            .open(*owner, name, sealed)
            .map_err(|message| ApiError::Conflict {
                message,
                details: Some(json!({"owner": owner, "name": name, "key_id": sealed.key_id})),
            })?;
        db::secrets::replace_sealed(&tx, *owner, name, &ring.seal(*owner, name, &value)).await?;
        n += 1;
    }
    db::audit(
        &tx,
        caller.agent_id,
        "secret.reencrypt",
        "secret",
        "*",
        &json!({"reencrypted": n, "key_id": ring.current_id()}),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(Reencrypted {
        reencrypted: n,
        key_id: ring.current_id().to_string(),
    }))
}
