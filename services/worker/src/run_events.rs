//! Run lifecycle events on `orrery:runs` (started, succeeded, failed, dead), pipelined in batches off the
//! hot path, and the `events.publish` sink (XADD to `events`).
//!
//! Events are hints for dashboards and `redis-cli`: with Redis down they are dropped (the truth is
//! `task_run`), and a full buffer drops rather than slows runs down.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use orrery::queue::ClaimedWork;
use orrery::store;
use orrery::streams::{event_fields, Redis, EVENTS, RUNS, RUNS_MAXLEN};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};
use uuid::Uuid;

use crate::executor::{BoxFuture, EventSink, Published};

const BUFFER: usize = 100_000;
const MAX_PIPELINE: usize = 1000;

#[derive(Debug, Clone)]
pub struct RunEvent {
    pub due_work_id: i64,
    pub task_id: Uuid,
    pub event: &'static str,
    pub attempt: i32,
}

impl RunEvent {
    pub fn new(work: &ClaimedWork, event: &'static str) -> Self {
        Self {
            due_work_id: work.id,
            task_id: work.task_id,
            event,
            attempt: work.attempt,
        }
    }
}

pub struct RunEvents {
    tx: std::sync::Mutex<Option<mpsc::Sender<RunEvent>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RunEvents {
    pub fn start(redis: Redis, worker_id: String) -> Self {
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(publish_loop(redis, worker_id, rx));
        Self {
            tx: std::sync::Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Never blocks: a full buffer (Redis slow or down) drops the event.
    pub fn send(&self, event: RunEvent) {
        if let Some(tx) = self.tx.lock().expect("events lock").as_ref() {
            let _ = tx.try_send(event);
        }
    }

    /// Flushes what is buffered, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) {
        self.tx.lock().expect("events lock").take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = tokio::time::timeout(timeout, task).await;
        }
    }
}

async fn publish_loop(redis: Redis, worker_id: String, mut rx: mpsc::Receiver<RunEvent>) {
    let key = redis.key(RUNS);
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    let mut warned = false;
    loop {
        match rx.recv().await {
            Some(e) => batch.push(e),
            None => return,
        }
        while batch.len() < MAX_PIPELINE {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for e in &batch {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(RUNS_MAXLEN)
                .arg("*")
                .arg("run_id")
                .arg(e.due_work_id)
                .arg("due_work_id")
                .arg(e.due_work_id)
                .arg("task_id")
                .arg(e.task_id.to_string())
                .arg("event")
                .arg(e.event)
                .arg("attempt")
                .arg(e.attempt)
                .arg("worker_id")
                .arg(&worker_id)
                .ignore();
        }
        let sent = async {
            let mut conn = redis.conn().await?;
            pipe.query_async::<()>(&mut conn).await
        }
        .await;
        match sent {
            Ok(()) => warned = false,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, dropped = batch.len(), "run events not published (redis unavailable)");
                    warned = true;
                }
            }
        }
        batch.clear();
    }
}

/// `events.publish`: the event is stored in `event_outbox` first (so it is never lost), then put on the `events`
/// stream with a bounded attempt; while Redis is down the schedulers' relay publishes it when Redis is back.
pub struct OutboxSink {
    pool: Pool,
    redis: Redis,
    published_by: String,
}

impl OutboxSink {
    pub fn new(pool: Pool, redis: Redis, published_by: String) -> Self {
        Self {
            pool,
            redis,
            published_by,
        }
    }
}

/// How long a step holds its event before a relay may publish it.
const RELAY_HOLD_SECONDS: i32 = 5;
/// How long a step tries the stream itself before leaving the event to the relay.
const STREAM_ATTEMPT: Duration = Duration::from_millis(500);

impl EventSink for OutboxSink {
    fn publish(&self, topic: String, payload: Value) -> BoxFuture<'_, Result<Published, String>> {
        Box::pin(async move {
            let event_id = Uuid::new_v4().to_string();
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let published_at = store::outbox::insert(
                &client,
                &event_id,
                &topic,
                &payload,
                None,
                RELAY_HOLD_SECONDS,
            )
            .await
            .map_err(|e| e.to_string())?;
            let fields = event_fields(
                &event_id,
                &topic,
                &payload,
                Some(&self.published_by),
                published_at,
            );
            let stream_id =
                match tokio::time::timeout(STREAM_ATTEMPT, self.redis.xadd(EVENTS, None, &fields))
                    .await
                {
                    Ok(Ok(id)) => {
                        let _ = store::outbox::mark_published(&client, &event_id, &id).await;
                        Some(id)
                    }
                    _ => {
                        // Stored: the relay publishes it (now, rather than after the hold).
                        let _ = store::outbox::release(&client, &event_id).await;
                        None
                    }
                };
            Ok(Published {
                event_id,
                stream_id,
            })
        })
    }
}

/// Keeps `Arc` in the public surface consistent for callers building executors.
pub type SharedSink = Arc<dyn EventSink>;
