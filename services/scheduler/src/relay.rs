//! The event relay: publishes to the `events` stream what `event_outbox` holds and Redis does not.
//!
//! POST /events stores an event and then puts it on the stream itself; the relay is the safety net. Each pass
//! takes, with `FOR UPDATE SKIP LOCKED` (several schedulers never relay the same rows at once):
//! - events never relayed whose hold by the API has ended (Redis was down, or the API died in between), and
//! - events relayed long ago and still not delivered (Redis lost them in a
//!   crash or a restart without persistence, or the consumer group was recreated); after
//!   `SCHEDULER_EVENT_REDELIVER_SECONDS` (60),
//!
//! XADDs them and records the relay in the same transaction. A relay that dies between XADD and commit publishes
//! again later, so the stream can hold an event twice; the consumer delivers once per (task, event id).

use std::time::Duration;

use deadpool_postgres::Pool;
use orrery::streams::{event_fields, Redis, EVENTS};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

/// Rows per relay transaction.
pub const RELAY_BATCH: i64 = 200;
/// Pause between passes when there is nothing to relay.
const IDLE: Duration = Duration::from_millis(500);

/// One pass; returns how many events it published.
pub async fn relay_once(
    pool: &Pool,
    redis: &Redis,
    redeliver_seconds: i32,
) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, event_id, topic, payload, published_by, published_at FROM event_outbox
              WHERE delivered_at IS NULL
                AND ((relayed_at IS NULL AND (claimed_until IS NULL OR claimed_until < now()))
                     OR relayed_at < now() - make_interval(secs => $1::int))
              ORDER BY id
              LIMIT $2
                FOR UPDATE SKIP LOCKED",
            &[&redeliver_seconds, &RELAY_BATCH],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut stream_ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.get("id");
        let event_id: String = r.get("event_id");
        let topic: String = r.get("topic");
        let payload: Value = r.get("payload");
        let by: Option<Uuid> = r.get("published_by");
        let fields = event_fields(
            &event_id,
            &topic,
            &payload,
            by.map(|u| u.to_string()).as_deref(),
            r.get("published_at"),
        );
        // A failure here rolls back: nothing is marked, the next pass tries again.
        let stream_id = redis.xadd(EVENTS, None, &fields).await?;
        ids.push(id);
        stream_ids.push(stream_id);
    }
    tx.execute(
        "UPDATE event_outbox o SET relayed_at = now(), relay_count = o.relay_count + 1, stream_id = s.stream_id,
                claimed_until = NULL
           FROM unnest($1::bigint[], $2::text[]) AS s(id, stream_id)
          WHERE o.id = s.id",
        &[&ids, &stream_ids],
    )
    .await?;
    tx.commit().await?;
    orrery::metrics::EVENTS_RELAYED.inc_by(ids.len() as u64);
    tracing::info!(events = ids.len(), "events relayed from the outbox");
    Ok(ids.len())
}

/// Relays until `stop`; survives Redis and PostgreSQL outages by retrying.
pub async fn run(
    pool: Pool,
    redis: Redis,
    redeliver_seconds: u32,
    mut stop: watch::Receiver<bool>,
) {
    let redeliver_seconds = redeliver_seconds.min(i32::MAX as u32) as i32;
    let mut backoff = IDLE;
    loop {
        if *stop.borrow() {
            return;
        }
        let pause = match relay_once(&pool, &redis, redeliver_seconds).await {
            Ok(n) if n as i64 == RELAY_BATCH => Duration::ZERO,
            Ok(_) => {
                backoff = IDLE;
                IDLE
            }
            Err(e) => {
                tracing::debug!(error = %e, "event relay: will retry");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
