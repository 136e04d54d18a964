//! /events: publish to the `events` stream, read it back, list subscribed topics.

use actix_web::{web, HttpResponse};
use chrono::{SecondsFormat, Utc};
use orrery::model::Scope;
use orrery::streams::EVENTS;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::{Fields, JsonBody, QueryParams};
use crate::models::{EventAccepted, RecentEvent, RecentEvents, TopicGroup, TopicList};
use crate::state::AppState;
use crate::validation;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EventPublish {
    /// Dot-separated segments of A-Z a-z 0-9 _ -, at most 200 characters, no wildcard.
    #[schema(
        example = "billing.invoice.paid",
        pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$",
        max_length = 200
    )]
    topic: String,
    /// Any JSON value (default {}); runs see it as `${event.payload}`.
    payload: Option<Value>,
}

fn redis_down(e: redis::RedisError) -> ApiError {
    tracing::warn!(error = %e, "redis unavailable");
    ApiError::Unavailable("Redis is unavailable; the event was not published".into())
}

#[utoipa::path(post, path = "/events", tag = "events", request_body = EventPublish,
    responses((status = 202, body = EventAccepted), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn publish(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::EventsPublish)?;
    let mut f = Fields::object(&body.0, &["topic", "payload"])?;
    let topic = f.string("topic", 1, 200, false);
    f.require("topic", &topic);
    let payload = f.raw("payload").cloned().unwrap_or_else(|| json!({}));
    if let Some(path) = crate::input::find_nul(&payload, "payload") {
        f.errors.push(crate::error::FieldError::new(
            path,
            "must not contain NUL characters",
        ));
    }
    let topic = topic.set();
    if let Some(t) = &topic {
        if let Err(e) = validation::validate_topic(t) {
            f.errors.push(e);
        }
    }
    f.finish()?;
    let topic = topic.unwrap_or_default();

    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let matching: Vec<_> = db::tasks::active_event_tasks(&tx, caller.owner_filter())
        .await?
        .into_iter()
        .filter(|(_, pattern)| validation::topic_matches(pattern, &topic))
        .map(|(task, _)| task)
        .collect();
    let event_id = Uuid::new_v4();
    db::audit(
        &tx,
        caller.agent_id,
        "event.publish",
        "event",
        &event_id.to_string(),
        &json!({"topic": topic, "matching_tasks": matching.len()}),
    )
    .await?;
    // The stream entry is the only copy of the event: if Redis refuses it, the audit record is rolled back
    // and nothing is half-written.
    let stream_id = state
        .redis
        .xadd(
            EVENTS,
            None,
            &[
                ("event_id", event_id.to_string()),
                ("topic", topic.clone()),
                ("payload", payload.to_string()),
                ("published_by", caller.agent_id.to_string()),
                (
                    "published_at",
                    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                ),
            ],
        )
        .await
        .map_err(redis_down)?;
    tx.commit().await?;
    Ok(HttpResponse::Accepted().json(EventAccepted {
        event_id,
        stream_id,
        topic,
        matching_tasks: matching,
    }))
}

#[utoipa::path(get, path = "/events/recent", tag = "events",
    params(("count" = Option<i64>, Query, minimum = 1, maximum = 1000)),
    responses((status = 200, body = RecentEvents), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn recent(
    state: web::Data<AppState>,
    caller: Caller,
    q: QueryParams,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let count = q.int("count", 1, 1000, 50)?;
    let mut conn = state.redis.conn().await.map_err(|e| {
        tracing::warn!(error = %e, "redis unavailable");
        ApiError::Unavailable("Redis is unavailable".into())
    })?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(state.redis.key(EVENTS))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "redis unavailable");
            ApiError::Unavailable("Redis is unavailable".into())
        })?;
    let items = reply
        .ids
        .into_iter()
        .map(|entry| {
            let text = |k: &str| entry.get::<String>(k);
            let payload = text("payload")
                .map(|p| serde_json::from_str::<Value>(&p).unwrap_or(Value::String(p)));
            RecentEvent {
                event_id: text("event_id"),
                topic: text("topic"),
                payload,
                published_by: text("published_by"),
                published_at: text("published_at"),
                stream_id: entry.id.clone(),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(RecentEvents { items }))
}

#[utoipa::path(get, path = "/events/topics", tag = "events",
    description = "Active event tasks grouped by topic pattern.",
    responses((status = 200, body = TopicList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn topics(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    caller.require(Scope::Admin)?;
    let client = state.db().await?;
    let rows = db::tasks::active_event_tasks(&client, None).await?;
    let mut items: Vec<TopicGroup> = Vec::new();
    for (task, pattern) in rows {
        match items.last_mut() {
            Some(g) if g.topic == pattern => g.tasks.push(task),
            _ => items.push(TopicGroup {
                topic: pattern,
                tasks: vec![task],
            }),
        }
    }
    Ok(HttpResponse::Ok().json(TopicList { items }))
}
