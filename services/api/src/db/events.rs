//! The event outbox (`event_outbox`): what POST /events stores before it touches Redis.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

use super::Db;

/// Stores an accepted event, held by this request for `hold_seconds`; returns its publication instant.
pub async fn insert_outbox(
    c: &impl Db,
    event_id: Uuid,
    topic: &str,
    payload: &Value,
    published_by: Uuid,
    hold_seconds: i32,
) -> Result<DateTime<Utc>, Error> {
    let st = c
        .prepare_cached(
            "INSERT INTO event_outbox (event_id, topic, payload, published_by, claimed_until)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::int))
             RETURNING published_at",
        )
        .await?;
    Ok(c.query_one(
        &st,
        &[
            &event_id.to_string(),
            &topic,
            payload,
            &published_by,
            &hold_seconds,
        ],
    )
    .await?
    .get(0))
}

/// The event is on the stream.
pub async fn mark_relayed(c: &impl Db, event_id: Uuid, stream_id: &str) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "UPDATE event_outbox SET relayed_at = now(), relay_count = relay_count + 1, stream_id = $2,
                    claimed_until = NULL
              WHERE event_id = $1",
        )
        .await?;
    c.execute(&st, &[&event_id.to_string(), &stream_id]).await?;
    Ok(())
}

/// This request could not publish it: hand it to the relay now rather than after the hold.
pub async fn release(c: &impl Db, event_id: Uuid) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "UPDATE event_outbox SET claimed_until = NULL WHERE event_id = $1 AND relayed_at IS NULL",
        )
        .await?;
    c.execute(&st, &[&event_id.to_string()]).await?;
    Ok(())
}
