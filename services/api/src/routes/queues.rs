//! /queues: named queues, their flow control (pause, max_concurrency, rate limit) and figures (admin).

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use orrery::store;
use serde_json::{json, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::auth::Caller;
use crate::body::{
    read_body, request_body, type_name, Bool, Field, FieldValue, Int, Nullable, ReadOnly,
};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::JsonBody;
use crate::models::{NamedQueue, NamedQueueList, RateLimit};
use crate::state::AppState;
use orrery::store::queues::QueueSettings;

request_body!(
    /// Body of PUT /queues/{name} (absent fields take their defaults) and PATCH (absent fields are kept).
    pub struct QueueBody {
        /// Most runs of the queue leased at once; null for no limit.
        max_concurrency: Nullable<Int<1, 100_000>>,
        paused: Field<Bool>,
        /// At most `limit` runs start per `period_seconds`; null for no limit.
        rate_limit: Nullable<RateLimitBody>,
        /// The same, applied to each rate key of the queue on its own (see a task's `rate_key`); null for none.
        key_rate_limit: Nullable<RateLimitBody>,
    }
);

request_body!(
    /// A rate limit: `limit` starts per `period_seconds`.
    pub struct RateLimitBody required ["limit", "period_seconds"] {
        limit: Field<Int<1, 1_000_000>>,
        period_seconds: Field<PeriodSeconds>,
    }
);

/// A rate limit's period: 0.001 to 86400 seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeriodSeconds(pub f64);

impl FieldValue for PeriodSeconds {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v.as_f64() {
            Some(p) if p.is_finite() && (0.001..=86_400.0).contains(&p) => Some(PeriodSeconds(p)),
            Some(_) => {
                errors.push(FieldError::new(
                    path,
                    "must be between 0.001 and 86400 seconds",
                ));
                None
            }
            None => {
                errors.push(FieldError::new(
                    path,
                    format!("must be a number of seconds, not {}", type_name(v)),
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.001))
                .maximum(Some(86_400))
                .build(),
        )
    }
}

impl RateLimitBody {
    fn limit(self) -> Option<RateLimit> {
        match (self.limit, self.period_seconds) {
            (Field::Set(Int(limit)), Field::Set(PeriodSeconds(period_seconds))) => {
                Some(RateLimit {
                    limit: limit as i32,
                    period_seconds,
                })
            }
            _ => None,
        }
    }
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

fn read_queue_body(body: &Value) -> ApiResult<QueueBody> {
    read_body(body, &[], &ReadOnly::NONE)
}

/// The settings after this body: set fields replace, null removes a limit, absent ones stay.
fn apply(mut s: QueueSettings, b: QueueBody) -> QueueSettings {
    b.max_concurrency
        .map(|Int(n)| n as i32)
        .apply_to(&mut s.max_concurrency);
    if let Field::Set(Bool(p)) = b.paused {
        s.paused = p;
    }
    for (field, target) in [
        (b.rate_limit, &mut s.rate_limit),
        (b.key_rate_limit, &mut s.key_rate_limit),
    ] {
        match field {
            Nullable::Set(r) => *target = r.limit(),
            Nullable::Null => *target = None,
            Nullable::Absent => {}
        }
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
        items: store::queues::list(&client).await?,
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
    let q = store::queues::get(&client, &name)
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
    let input = read_queue_body(&body.0)?;
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
    let input = read_queue_body(&body.0)?;
    write(&state, &caller, &name, input, false).await
}

async fn write(
    state: &AppState,
    caller: &Caller,
    name: &str,
    input: QueueBody,
    replace: bool,
) -> ApiResult<HttpResponse> {
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let before = store::queues::lock_settings(&tx, name).await?;
    let base = match (&before, replace) {
        (_, true) => DEFAULTS,
        (Some(b), false) => b.clone(),
        (None, false) => return Err(ApiError::not_found("Queue", name)),
    };
    let after = apply(base, input);
    store::queues::upsert(&tx, name, &after).await?;
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
    let q = store::queues::get(&tx, name)
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
