//! /queues: named queues, their flow control (pause, max_concurrency, rate limit) and figures (admin).

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::db;
use crate::db::queues::QueueSettings;
use crate::error::{ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{Fields, JsonBody, Opt};
use crate::models::{NamedQueue, NamedQueueList, RateLimit};
use crate::state::AppState;

/// Body of PUT /queues/{name} (absent fields take their defaults) and PATCH (absent fields are kept).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct QueueBody {
    /// 1..100000, or null for no limit.
    #[schema(minimum = 1, maximum = 100000)]
    max_concurrency: Option<i32>,
    paused: Option<bool>,
    /// `{"limit": 1..1000000, "period_seconds": 0.001..86400}`, or null for no limit.
    rate_limit: Option<RateLimit>,
    /// The same, applied to each rate key of the queue on its own (see a task's `rate_key`); null for none.
    key_rate_limit: Option<RateLimit>,
}

fn queue_name(raw: &str) -> ApiResult<String> {
    if orrery::config::valid_queue_name(raw) {
        Ok(raw.to_string())
    } else {
        Err(ApiError::Validation(vec![FieldError::new(
            "name",
            "must be 1 to 64 characters, each a letter (A-Z, a-z), a digit, '.', '_' or '-'",
        )]))
    }
}

/// The fields present in the body: Set, Null (no limit) or Absent.
struct QueueInput {
    max_concurrency: Opt<i32>,
    paused: Opt<bool>,
    rate_limit: Opt<RateLimit>,
    key_rate_limit: Opt<RateLimit>,
}

/// `{limit, period_seconds}`, null (no limit) or absent, with errors naming `field.limit` etc.
fn read_rate_limit(f: &mut Fields, field: &str) -> Opt<RateLimit> {
    match f.raw(field) {
        None => Opt::Absent,
        Some(Value::Null) => Opt::Null,
        Some(Value::Object(o)) => {
            let mut ok = true;
            for key in o.keys() {
                if key != "limit" && key != "period_seconds" {
                    f.errors.push(FieldError::new(
                        format!("{field}.{}", key.chars().take(64).collect::<String>()),
                        "unknown field",
                    ));
                    ok = false;
                }
            }
            let limit = match o.get("limit").and_then(Value::as_i64) {
                Some(n) if (1..=1_000_000).contains(&n) => Some(n as i32),
                _ => {
                    f.errors.push(FieldError::new(
                        format!("{field}.limit"),
                        "is required: an integer between 1 and 1000000",
                    ));
                    None
                }
            };
            let period = match o.get("period_seconds").and_then(Value::as_f64) {
                Some(p) if p.is_finite() && (0.001..=86_400.0).contains(&p) => Some(p),
                _ => {
                    f.errors.push(FieldError::new(
                        format!("{field}.period_seconds"),
                        "is required: a number of seconds between 0.001 and 86400",
                    ));
                    None
                }
            };
            match (limit, period, ok) {
                (Some(limit), Some(period_seconds), true) => Opt::Set(RateLimit {
                    limit,
                    period_seconds,
                }),
                _ => Opt::Absent,
            }
        }
        Some(_) => {
            f.errors.push(FieldError::new(
                field,
                "must be an object {limit, period_seconds} or null",
            ));
            Opt::Absent
        }
    }
}

fn read_body(body: &Value) -> ApiResult<QueueInput> {
    let mut f = Fields::object(
        body,
        &["max_concurrency", "paused", "rate_limit", "key_rate_limit"],
    )?;
    let max_concurrency = match f.raw("max_concurrency") {
        Some(Value::Null) => Opt::Null,
        None => Opt::Absent,
        Some(_) => match f.int("max_concurrency", 1, 100_000) {
            Opt::Set(n) => Opt::Set(n as i32),
            _ => Opt::Absent,
        },
    };
    let paused = match f.raw("paused") {
        None => Opt::Absent,
        Some(Value::Bool(b)) => Opt::Set(*b),
        Some(_) => {
            f.errors
                .push(FieldError::new("paused", "must be true or false"));
            Opt::Absent
        }
    };
    let rate_limit = read_rate_limit(&mut f, "rate_limit");
    let key_rate_limit = read_rate_limit(&mut f, "key_rate_limit");
    f.finish()?;
    Ok(QueueInput {
        max_concurrency,
        paused,
        rate_limit,
        key_rate_limit,
    })
}

fn apply(mut s: QueueSettings, i: QueueInput) -> QueueSettings {
    match i.max_concurrency {
        Opt::Set(n) => s.max_concurrency = Some(n),
        Opt::Null => s.max_concurrency = None,
        Opt::Absent => {}
    }
    if let Opt::Set(p) = i.paused {
        s.paused = p;
    }
    match i.rate_limit {
        Opt::Set(r) => s.rate_limit = Some(r),
        Opt::Null => s.rate_limit = None,
        Opt::Absent => {}
    }
    match i.key_rate_limit {
        Opt::Set(r) => s.key_rate_limit = Some(r),
        Opt::Null => s.key_rate_limit = None,
        Opt::Absent => {}
    }
    s
}

const DEFAULTS: QueueSettings = QueueSettings {
    max_concurrency: None,
    paused: false,
    rate_limit: None,
    key_rate_limit: None,
};

#[utoipa::path(get, path = "/queues", tag = "queue",
    description = "Every queue with settings or work: its flow control and its depth (ready), lag (age of the oldest ready row) and throughput (attempts finished in the last minute).",
    responses((status = 200, body = NamedQueueList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let client = state.db().await?;
    Ok(HttpResponse::Ok().json(NamedQueueList {
        items: db::queues::list(&client).await?,
    }))
}

#[utoipa::path(get, path = "/queues/{name}", tag = "queue",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, body = NamedQueue), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let name = queue_name(&path)?;
    let client = state.db().await?;
    let q = db::queues::get(&client, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("Queue", &name))?;
    Ok(HttpResponse::Ok().json(q))
}

#[utoipa::path(put, path = "/queues/{name}", tag = "queue", request_body = QueueBody,
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    description = "Creates the queue or replaces its settings (absent fields: no limit, not paused). Pausing keeps the queue's work waiting; resuming lets it start again.",
    responses((status = 200, body = NamedQueue), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn put(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let name = queue_name(&path)?;
    let input = read_body(&body.0)?;
    write(&state, &caller, &name, input, true).await
}

#[utoipa::path(patch, path = "/queues/{name}", tag = "queue", request_body = QueueBody,
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    description = "Changes the given settings of an existing queue (`{\"paused\": true}` pauses it, `{\"paused\": false}` resumes it).",
    responses((status = 200, body = NamedQueue), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn patch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let name = queue_name(&path)?;
    let input = read_body(&body.0)?;
    write(&state, &caller, &name, input, false).await
}

async fn write(
    state: &AppState,
    caller: &Caller,
    name: &str,
    input: QueueInput,
    replace: bool,
) -> ApiResult<HttpResponse> {
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let before = db::queues::lock_settings(&tx, name).await?;
    let base = match (&before, replace) {
        (_, true) => DEFAULTS,
        (Some(b), false) => b.clone(),
        (None, false) => return Err(ApiError::not_found("Queue", name)),
    };
    let after = apply(base, input);
    db::queues::upsert(&tx, name, &after).await?;
    db::audit(
        &tx,
        caller.agent_id,
        if before.is_none() {
            "queue.create"
        } else {
            "queue.update"
        },
        "queue",
        name,
        &json!({
            "max_concurrency": after.max_concurrency,
            "paused": after.paused,
            "rate_limit": after.rate_limit,
            "key_rate_limit": after.key_rate_limit,
        }),
    )
    .await?;
    let q = db::queues::get(&tx, name)
        .await?
        .ok_or_else(|| ApiError::not_found("Queue", name))?;
    tx.commit().await?;
    // Resumed, or a limit raised: idle workers may claim now.
    let redis = state.redis.clone();
    tokio::spawn(async move {
        redis
            .hint(
                orrery::streams::WAKEUP,
                orrery::streams::WAKEUP_MAXLEN,
                &[("reason", "queue".to_string())],
            )
            .await;
    });
    Ok(HttpResponse::Ok().json(q))
}
