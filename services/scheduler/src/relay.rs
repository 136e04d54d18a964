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
use orrery::store::outbox::{self, Relayed};
use orrery::streams::{event_fields, Redis, EVENTS};
use tokio::sync::watch;

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
    let batch = outbox::lock_relay_batch(&tx, redeliver_seconds, RELAY_BATCH).await?;
    if batch.is_empty() {
        return Ok(0);
    }
    let mut relayed = Vec::with_capacity(batch.len());
    for ev in &batch {
        let fields = event_fields(
            &ev.event_id,
            &ev.topic,
            &ev.payload,
            ev.published_by.map(|u| u.to_string()).as_deref(),
            ev.published_at,
        );
        // A failure here rolls back: nothing is marked, the next pass tries again.
        let stream_id = redis.xadd(EVENTS, None, &fields).await?;
        relayed.push(Relayed {
            id: ev.id,
            stream_id,
        });
    }
    outbox::mark_relayed(&tx, &relayed).await?;
    tx.commit().await?;
    orrery::metrics::EVENTS_RELAYED.inc_by(relayed.len() as u64);
    tracing::info!(events = relayed.len(), "events relayed from the outbox");
    Ok(relayed.len())
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
