//! Event triggers: consume the `events` stream with a consumer group, create `due_work` (trigger `event`) for
//! every active event task whose topic pattern matches — at most once per (task, event), through the
//! `event_delivery` table — and acknowledge only after the rows commit. Entries left pending by a dead
//! scheduler are reclaimed with XAUTOCLAIM.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use orrery::clock::Clock;
use orrery::schedule::TopicPattern;
use orrery::store::outbox;
use orrery::store::work::Delivery;
use orrery::streams::{Redis, EVENTS};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

pub const GROUP: &str = "orrery-scheduler";

#[derive(Debug, Clone)]
pub struct Event {
    pub stream_id: String,
    pub event_id: String,
    pub topic: String,
    pub payload: Value,
    pub published_at: Option<DateTime<Utc>>,
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    entry.get::<String>(name)
}

pub fn parse_entry(entry: &StreamId) -> Option<Event> {
    let topic = field(entry, "topic")?;
    let event_id = field(entry, "event_id").unwrap_or_else(|| entry.id.clone());
    let payload = field(entry, "payload")
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or(Value::Null);
    let published_at = field(entry, "published_at").and_then(|p| {
        DateTime::parse_from_rfc3339(&p)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    });
    Some(Event {
        stream_id: entry.id.clone(),
        event_id,
        topic,
        payload,
        published_at,
    })
}

/// Inserts the due work of a batch of events in one transaction; returns the rows created.
pub async fn deliver(pool: &Pool, events: &[Event], clock: &Clock) -> anyhow::Result<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let tasks = outbox::active_event_tasks(&tx).await?;
    let patterns: Vec<(Uuid, Option<TopicPattern>)> = tasks
        .iter()
        .map(|t| (t.id, TopicPattern::parse(&t.schedule_expr).ok()))
        .collect();
    let mut deliveries = Vec::new();
    for ev in events {
        let event_json = json!({
            "id": ev.event_id,
            "topic": ev.topic,
            "payload": ev.payload,
            "published_at": ev.published_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "stream_id": ev.stream_id,
        });
        for (task_id, pattern) in &patterns {
            if pattern.as_ref().is_some_and(|p| p.matches(&ev.topic)) {
                deliveries.push(Delivery {
                    task_id: *task_id,
                    event_id: ev.event_id.clone(),
                    event: event_json.clone(),
                    published_at: ev.published_at,
                });
            }
        }
    }
    let created = orrery::store::work::deliver(&tx, &deliveries, clock).await?;
    // Delivered: the relay never publishes these again.
    let event_ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    outbox::mark_delivered(&tx, &event_ids).await?;
    tx.commit().await?;
    orrery::metrics::FIRES_MATERIALIZED
        .with_label_values(&["event"])
        .inc_by(created);
    let now = clock.now();
    for ev in events {
        if let Some(p) = ev.published_at {
            let lag = (now - p).num_milliseconds().max(0) as f64 / 1000.0;
            orrery::metrics::SCHEDULER_LAG
                .with_label_values(&["event"])
                .observe(lag);
        }
    }
    Ok(created)
}

async fn ensure_group(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> redis::RedisResult<()> {
    // From the beginning of the stream: events published before any scheduler ran are not lost.
    let r: redis::RedisResult<String> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reclaims entries idle for too long in other consumers' pending lists (a scheduler that died).
async fn reclaim(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
    idle_ms: u64,
) -> redis::RedisResult<Vec<StreamId>> {
    let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(GROUP)
        .arg(consumer)
        .arg(idle_ms)
        .arg("0-0")
        .arg("COUNT")
        .arg(100)
        .query_async(conn)
        .await?;
    Ok(reply.claimed)
}

async fn handle(
    pool: &Pool,
    clock: &Clock,
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    entries: Vec<StreamId>,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let events: Vec<Event> = entries.iter().filter_map(parse_entry).collect();
    let created = deliver(pool, &events, clock).await?;
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let _: i64 = conn.xack(stream, GROUP, &ids).await?;
    tracing::debug!(events = entries.len(), created, "events delivered");
    Ok(())
}

/// The consumer loop: runs until `stop`; survives Redis and PostgreSQL outages by retrying.
/// `reclaim_idle_ms`: pending entries idle longer than this belong to a scheduler presumed dead.
pub async fn run(
    pool: Pool,
    redis: Redis,
    consumer: String,
    reclaim_idle_ms: u64,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let stream = redis.key(EVENTS);
    let mut backoff = Duration::from_millis(200);
    'outer: loop {
        if *stop.borrow() {
            return;
        }
        let mut conn = match redis.dedicated().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "events consumer: Redis unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = ensure_group(&mut conn, &stream).await {
            tracing::warn!(error = %e, "events consumer: cannot create the consumer group");
            tokio::time::sleep(backoff).await;
            continue;
        }
        // Our own pending entries first (we crashed after reading, before acking), then the reclaim of others'.
        let mut own_pending = true;
        let mut last_reclaim = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if *stop.borrow() {
                return;
            }
            if last_reclaim.elapsed() > Duration::from_millis(reclaim_idle_ms.clamp(100, 5000)) {
                last_reclaim = std::time::Instant::now();
                match reclaim(&mut conn, &stream, &consumer, reclaim_idle_ms).await {
                    Ok(entries) => {
                        if let Err(e) = handle(&pool, &clock, &mut conn, &stream, entries).await {
                            tracing::warn!(error = %e, "events consumer: reclaimed entries not delivered yet");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "events consumer: XAUTOCLAIM failed");
                        continue 'outer;
                    }
                }
            }
            let start = if own_pending { "0" } else { ">" };
            let opts = StreamReadOptions::default()
                .group(GROUP, &consumer)
                .count(100)
                .block(1000);
            let keys = [stream.as_str()];
            let ids = [start];
            let reply: redis::RedisResult<StreamReadReply> = tokio::select! {
                r = conn.xread_options(&keys, &ids, &opts) => r,
                _ = stop.changed() => return,
            };
            match reply {
                Ok(reply) => {
                    backoff = Duration::from_millis(200);
                    let entries: Vec<StreamId> =
                        reply.keys.into_iter().flat_map(|k| k.ids).collect();
                    if own_pending && entries.is_empty() {
                        own_pending = false;
                        continue;
                    }
                    if let Err(e) = handle(&pool, &clock, &mut conn, &stream, entries).await {
                        // Not acknowledged: they stay pending and are read again from "0".
                        tracing::warn!(error = %e, "events consumer: delivery failed; will retry");
                        own_pending = true;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {},
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "events consumer: Redis read failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'outer;
                }
            }
        }
    }
}
