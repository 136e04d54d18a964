//! The event outbox (`event_outbox`). Its publishers' side (`POST /events` and the worker's `events.publish`):
//! store the event, then mark it published or hand it to the relay. The scheduler's side: the relay's batch of events to (re)publish on the `events` stream and its record of the
//! XADDs, and the event consumer's reads and writes around `work::deliver` (the active event tasks, the events
//! it delivered).
//!
//! These statements use the database's `now()`, not the injected clock: the outbox's instants (`claimed_until`,
//! `relayed_at`, `delivered_at`) are written with `now()` by the API and the worker too, and compared with it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

/// An outbox event to put on the `events` stream.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_id: String,
    pub topic: String,
    pub payload: Value,
    pub published_by: Option<Uuid>,
    pub published_at: DateTime<Utc>,
}

/// Locks at most `limit` undelivered events the relay should publish, in outbox order, skipping rows another
/// relay holds (`FOR UPDATE SKIP LOCKED`, until the caller's transaction ends): those never relayed whose
/// publisher's hold (`claimed_until`) has ended, and those relayed more than `redeliver_seconds` ago and still
/// not delivered. Returns them.
pub async fn lock_relay_batch(
    c: &impl GenericClient,
    redeliver_seconds: i32,
    limit: i64,
) -> Result<Vec<OutboxEvent>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, event_id, topic, payload, published_by, published_at FROM event_outbox
              WHERE delivered_at IS NULL
                AND ((relayed_at IS NULL AND (claimed_until IS NULL OR claimed_until < now()))
                     OR relayed_at < now() - make_interval(secs => $1::int))
              ORDER BY id
              LIMIT $2
                FOR UPDATE SKIP LOCKED",
        )
        .await?;
    Ok(c.query(&st, &[&redeliver_seconds, &limit])
        .await?
        .iter()
        .map(|r| OutboxEvent {
            id: r.get("id"),
            event_id: r.get("event_id"),
            topic: r.get("topic"),
            payload: r.get("payload"),
            published_by: r.get("published_by"),
            published_at: r.get("published_at"),
        })
        .collect())
}

/// One XADD of an outbox event: the row and the stream entry it became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub id: i64,
    pub stream_id: String,
}

/// Records the relay's XADDs: `relayed_at` now, `relay_count` + 1, the stream id, the publisher's hold
/// cleared. Returns the rows changed.
pub async fn mark_relayed(c: &impl GenericClient, relayed: &[Relayed]) -> Result<u64, Error> {
    let ids: Vec<i64> = relayed.iter().map(|r| r.id).collect();
    let stream_ids: Vec<&str> = relayed.iter().map(|r| r.stream_id.as_str()).collect();
    let st = c
        .prepare_cached(
            "UPDATE event_outbox o SET relayed_at = now(), relay_count = o.relay_count + 1, stream_id = s.stream_id,
                    claimed_until = NULL
               FROM unnest($1::bigint[], $2::text[]) AS s(id, stream_id)
              WHERE o.id = s.id",
        )
        .await?;
    c.execute(&st, &[&ids, &stream_ids]).await
}

/// An active event-triggered task and its topic pattern, as written (`schedule_expr`).
#[derive(Debug, Clone)]
pub struct EventTask {
    pub id: Uuid,
    pub schedule_expr: String,
}

/// The active tasks triggered by events (`schedule_kind = 'event'`), whose patterns the consumer matches
/// against each event's topic. Returns them in no particular order.
pub async fn active_event_tasks(c: &impl GenericClient) -> Result<Vec<EventTask>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, schedule_expr FROM task WHERE status = 'active' AND schedule_kind = 'event'",
        )
        .await?;
    Ok(c.query(&st, &[])
        .await?
        .iter()
        .map(|r| EventTask {
            id: r.get("id"),
            schedule_expr: r.get("schedule_expr"),
        })
        .collect())
}

/// Marks outbox events delivered (`delivered_at` now, first delivery only): the relay never publishes them
/// again. Event ids not in the outbox are ignored. Returns the rows changed.
pub async fn mark_delivered(c: &impl GenericClient, event_ids: &[&str]) -> Result<u64, Error> {
    let st = c
        .prepare_cached(
            "UPDATE event_outbox SET delivered_at = now() WHERE event_id = ANY($1) AND delivered_at IS NULL",
        )
        .await?;
    c.execute(&st, &[&event_ids]).await
}

/// Stores an accepted event, held by its publisher for `hold_seconds` (the relay leaves it alone meanwhile);
/// returns its publication instant. `published_by`: the agent of `POST /events` (None for a pipeline step).
pub async fn insert(
    c: &impl GenericClient,
    event_id: &str,
    topic: &str,
    payload: &Value,
    published_by: Option<Uuid>,
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
        &[&event_id, &topic, payload, &published_by, &hold_seconds],
    )
    .await?
    .get("published_at"))
}

/// Its publisher put the event on the stream (entry `stream_id`).
pub async fn mark_published(
    c: &impl GenericClient,
    event_id: &str,
    stream_id: &str,
) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "UPDATE event_outbox SET relayed_at = now(), relay_count = relay_count + 1, stream_id = $2,
                    claimed_until = NULL
              WHERE event_id = $1",
        )
        .await?;
    c.execute(&st, &[&event_id, &stream_id]).await?;
    Ok(())
}

/// Its publisher could not put the event on the stream: the relay takes it now rather than after the hold.
pub async fn release(c: &impl GenericClient, event_id: &str) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "UPDATE event_outbox SET claimed_until = NULL WHERE event_id = $1 AND relayed_at IS NULL",
        )
        .await?;
    c.execute(&st, &[&event_id]).await?;
    Ok(())
}
