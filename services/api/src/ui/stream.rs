//! GET /console/runs/stream: the `orrery:runs` stream as Server-Sent Events, filtered to what the caller may
//! see. Redis down: 503 at once (the console falls back to polling); Redis lost mid-stream: an `error`
//! event, then the response ends. A comment line every 15 s keeps proxies from timing the stream out.

use orrery::store;
use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use orrery::model::Scope;
use orrery::streams::RUNS;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::state::AppState;

const BLOCK_MS: u64 = 15_000;
const BATCH: usize = 200;

fn redis_down(e: redis::RedisError) -> ApiError {
    tracing::debug!(error = %e, "redis unavailable for the run stream");
    ApiError::Unavailable("Redis is unavailable: the live run feed is off (poll instead)".into())
}

/// A stream entry id as Redis writes them (`<ms>-<seq>`).
fn valid_stream_id(s: &str) -> bool {
    let mut parts = s.split('-');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

struct Feed {
    state: web::Data<AppState>,
    conn: MultiplexedConnection,
    key: String,
    last_id: String,
    /// None: admin, sees every task. Some: visibility of task ids already looked up.
    owner: Option<Uuid>,
    visible: HashMap<Uuid, bool>,
    started: bool,
    done: bool,
}

impl Feed {
    async fn filter(&mut self, entries: Vec<StreamId>) -> Vec<StreamId> {
        let Some(owner) = self.owner else {
            return entries;
        };
        let unknown: Vec<Uuid> = entries
            .iter()
            .filter_map(|e| e.get::<String>("task_id"))
            .filter_map(|s| Uuid::parse_str(&s).ok())
            .filter(|id| !self.visible.contains_key(id))
            .collect();
        if !unknown.is_empty() {
            if self.visible.len() > 50_000 {
                self.visible.clear();
            }
            let owned = match self.state.pool.get().await {
                Ok(c) => store::console::owned_tasks(&c, &unknown, owner)
                    .await
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            for id in unknown {
                self.visible.insert(id, owned.contains(&id));
            }
        }
        entries
            .into_iter()
            .filter(|e| {
                e.get::<String>("task_id")
                    .and_then(|s| Uuid::parse_str(&s).ok())
                    .is_some_and(|id| self.visible.get(&id).copied().unwrap_or(false))
            })
            .collect()
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(Bytes::from_static(
                b"retry: 5000\n: orrery run feed\nevent: hello\ndata: {}\n\n",
            ));
        }
        let read: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last_id)
            .query_async(&mut self.conn)
            .await;
        let entries = match read {
            Ok(Some(reply)) => reply
                .keys
                .into_iter()
                .flat_map(|k| k.ids)
                .collect::<Vec<_>>(),
            Ok(None) => return Some(Bytes::from_static(b": keepalive\n\n")),
            Err(e) => {
                tracing::debug!(error = %e, "run stream lost Redis");
                self.done = true;
                return Some(Bytes::from_static(
                    b"event: error\ndata: {\"message\":\"Redis is unavailable\"}\n\n",
                ));
            }
        };
        if let Some(last) = entries.last() {
            self.last_id = last.id.clone();
        }
        let entries = self.filter(entries).await;
        if entries.is_empty() {
            return Some(Bytes::from_static(b": keepalive\n\n"));
        }
        let mut out = String::new();
        for e in entries {
            let text = |k: &str| e.get::<String>(k);
            let data = json!({
                "stream_id": e.id,
                "due_work_id": text("due_work_id").and_then(|s| s.parse::<i64>().ok()),
                "task_id": text("task_id"),
                "event": text("event"),
                "attempt": text("attempt").and_then(|s| s.parse::<i64>().ok()),
                "worker_id": text("worker_id"),
            });
            out.push_str(&format!("id: {}\nevent: run\ndata: {data}\n\n", e.id));
        }
        Some(Bytes::from(out))
    }
}

#[utoipa::path(get, path = "/console/runs/stream", tag = "console",
    description = "Run lifecycle events (started, succeeded, failed, dead) of the tasks the caller may see, as \
        Server-Sent Events (`event: run`, JSON data), from `orrery:runs`. Starts at the newest entry, or after \
        `Last-Event-ID`. 503 when Redis is down: poll the lists instead.",
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn stream(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::RunsRead)?;
    let key = state.redis.key(RUNS);
    let connect = async {
        let mut conn = state.redis.dedicated().await?;
        let last_event = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| valid_stream_id(s))
            .map(str::to_string);
        let last_id = match last_event {
            Some(id) => id,
            None => {
                let newest: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                newest
                    .ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".into())
            }
        };
        Ok::<_, redis::RedisError>((conn, last_id))
    };
    let (conn, last_id) = tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .map_err(|_| {
            ApiError::Unavailable(
                "Redis is unavailable: the live run feed is off (poll instead)".into(),
            )
        })?
        .map_err(redis_down)?;
    let feed = Feed {
        state: state.clone(),
        conn,
        key,
        last_id,
        owner: caller.owner_filter(),
        visible: HashMap::new(),
        started: false,
        done: false,
    };
    let body = futures::stream::unfold(feed, |mut feed| async move {
        feed.next_chunk()
            .await
            .map(|chunk| (Ok::<_, actix_web::Error>(chunk), feed))
    });
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache, no-store"))
        // nginx must pass events through as they come instead of buffering the response.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::valid_stream_id;

    #[test]
    fn only_redis_entry_ids_are_resumed_from() {
        assert!(valid_stream_id("1700000000000-0"));
        assert!(!valid_stream_id("1700000000000"));
        assert!(!valid_stream_id("$"));
        assert!(!valid_stream_id("1-2-3"));
        assert!(!valid_stream_id("a-1"));
    }
}
