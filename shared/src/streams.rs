//! Redis access: one lazily (re)connecting connection manager, key prefixes and the stream names.
//!
//! Redis is an accelerator, never the only copy: a binary starts without it, and every caller treats a Redis
//! error as "degraded" rather than fatal (except `POST /events`, which answers 503).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tokio::sync::Mutex;

pub const EVENTS: &str = "events";
pub const TASK_CHANGES: &str = "orrery:task-changes";
pub const WAKEUP: &str = "orrery:wakeup";
pub const RUNS: &str = "orrery:runs";

/// Approximate caps (MAXLEN ~) of the hint streams; `events` is trimmed by the scheduler's maintenance.
pub const TASK_CHANGES_MAXLEN: usize = 10_000;
pub const WAKEUP_MAXLEN: usize = 1_000;
pub const RUNS_MAXLEN: usize = 100_000;

#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    prefix: String,
    manager: Arc<Mutex<Option<ConnectionManager>>>,
}

impl Redis {
    pub fn new(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix: prefix.to_string(),
            manager: Arc::new(Mutex::new(None)),
        })
    }

    /// The full key of a stream or key name, with the configured prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// A shared, auto-reconnecting connection for short commands. Fails fast while Redis is down.
    pub async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let mut guard = self.manager.lock().await;
        if let Some(m) = guard.as_ref() {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let manager = tokio::time::timeout(
            Duration::from_secs(2),
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "timed out connecting to Redis"))
        })??;
        *guard = Some(manager.clone());
        Ok(manager)
    }

    /// A dedicated connection for blocking reads (XREAD BLOCK must not stall other commands).
    pub async fn dedicated(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(30));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// PING with a short timeout, for `/health`.
    pub async fn ping(&self) -> bool {
        let check = async {
            let mut c = self.conn().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Some(_))
        )
    }

    /// XADD with an approximate MAXLEN cap; returns the entry id.
    pub async fn xadd(
        &self,
        stream: &str,
        maxlen: Option<usize>,
        fields: &[(&str, String)],
    ) -> redis::RedisResult<String> {
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key(stream));
        if let Some(n) = maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        cmd.query_async(&mut c).await
    }

    /// Best-effort hint: errors are logged at debug level and otherwise ignored.
    pub async fn hint(&self, stream: &str, maxlen: usize, fields: &[(&str, String)]) {
        if let Err(e) = self.xadd(stream, Some(maxlen), fields).await {
            tracing::debug!(error = %e, stream, "redis hint not delivered");
        }
    }
}

/// The fields of an `events` stream entry, as every publisher writes them and the scheduler reads them.
pub fn event_fields(
    event_id: &str,
    topic: &str,
    payload: &serde_json::Value,
    published_by: Option<&str>,
    published_at: chrono::DateTime<chrono::Utc>,
) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("event_id", event_id.to_string()),
        ("topic", topic.to_string()),
        ("payload", payload.to_string()),
    ];
    if let Some(by) = published_by {
        fields.push(("published_by", by.to_string()));
    }
    fields.push((
        "published_at",
        published_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    ));
    fields
}
