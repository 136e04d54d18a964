//! /events: publish to the `events` stream, read it back, list subscribed topics.

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use orrery::store;
use orrery::streams::EVENTS;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::body::{read_body, request_body, AnyJson, Field, FieldValue, Nullable, ReadOnly, Text};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{JsonBody, QueryParams};
use crate::models::{EventAccepted, RecentEvent, RecentEvents, TopicGroup, TopicList};
use crate::state::AppState;
use crate::validation;

request_body!(
    /// Body of POST /events.
    pub struct EventPublish required ["topic"] {
        /// Dot-separated segments of A-Z a-z 0-9 _ -, at most 200 characters, no wildcard.
        topic: Field<Topic> = example json!("billing.invoice.paid"),
        /// Any JSON value (default {}); runs see it as `${event.payload}`.
        payload: Nullable<AnyJson>,
    }
);

/// An event topic: dot-separated segments of `A-Za-z0-9_-`, at most 200 characters, no wildcard.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic(pub String);

impl FieldValue for Topic {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Text(t) = Text::<1, 200>::read(v, path, errors)?;
        match validation::validate_topic(&t) {
            Ok(()) => Some(Topic(t)),
            Err(e) => {
                errors.push(FieldError::new(path, e.message));
                None
            }
        }
    }

    fn schema() -> Schema {
        let mut s = Text::<1, 200>::schema();
        if let Schema::Object(o) = &mut s {
            o.pattern = Some("^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$".into());
        }
        s
    }
}

/// How long this request keeps the event to itself before a relay may publish it.
const RELAY_HOLD_SECONDS: i32 = 5;
/// How long the request tries to put the event on the stream itself before leaving it to the relay.
const STREAM_ATTEMPT_MS: u64 = 500;

#[utoipa::path(post, path = "/events", tag = "events", request_body = EventPublish,
    description = "Stores the event (PostgreSQL, with its audit record) and puts it on the `events` stream. 202 means stored: with Redis down it is still accepted (`stream_id` null) and a scheduler's relay publishes it once Redis is back; every matching active task runs once for it.",
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
    let body = read_body::<EventPublish>(&body.0, &[], &ReadOnly::NONE)?;
    let Field::Set(Topic(topic)) = body.topic else {
        return Err(ApiError::field("topic", "is required"));
    };
    let payload = match body.payload {
        Nullable::Set(AnyJson(p)) => p,
        Nullable::Null => Value::Null,
        Nullable::Absent => json!({}),
    };

    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    let matching: Vec<_> = store::tasks::active_event_tasks(&tx, caller.owner_filter())
        .await?
        .into_iter()
        .filter(|(_, pattern)| validation::topic_matches(pattern, &topic))
        .map(|(task, _)| task)
        .collect();
    let event_id = Uuid::new_v4();
    // The event is stored with its audit record in one transaction (the outbox); accepted means stored. This
    // request holds it for a few seconds to put it on the stream itself; if it cannot, a scheduler's relay will.
    let published_at = store::outbox::insert(
        &tx,
        &event_id.to_string(),
        &topic,
        &payload,
        Some(caller.agent_id),
        RELAY_HOLD_SECONDS,
    )
    .await?;
    db::audit(
        &tx,
        caller.agent_id,
        "event.publish",
        "event",
        &event_id.to_string(),
        &json!({"topic": topic, "matching_tasks": matching.len()}),
    )
    .await?;
    tx.commit().await?;
    let fields = orrery::streams::event_fields(
        &event_id.to_string(),
        &topic,
        &payload,
        Some(&caller.agent_id.to_string()),
        published_at,
    );
    // Bounded: with Redis down the connection manager retries for seconds, and the event is already safe.
    let published = tokio::time::timeout(
        std::time::Duration::from_millis(STREAM_ATTEMPT_MS),
        state.redis.xadd(EVENTS, None, &fields),
    )
    .await
    .unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "timed out putting the event on the stream",
        )))
    });
    let stream_id = match published {
        Ok(id) => {
            if let Err(e) = store::outbox::mark_published(&client, &event_id.to_string(), &id).await
            {
                // The relay will publish it again after the hold; consumers deliver once per event id.
                tracing::warn!(error = %e, %event_id, "event published but not marked as relayed");
            }
            Some(id)
        }
        Err(e) => {
            tracing::warn!(error = %e, %event_id, "Redis unavailable: the event waits in the outbox for the relay");
            if let Err(e) = store::outbox::release(&client, &event_id.to_string()).await {
                tracing::warn!(error = %e, %event_id, "could not release the event to the relay early");
            }
            None
        }
    };
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
    let rows = store::tasks::active_event_tasks(&client, None).await?;
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
