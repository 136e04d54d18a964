//! Maintenance jobs on tokio-cron-scheduler: the scheduler heartbeat (which the API's `/health` reads),
//! retention pruning of `task_run`, `audit_log`, `event_delivery` and the dependency gates and arrivals (idempotent batched deletes, safe with
//! several schedulers), and trimming of the `events` stream that never removes entries still pending for the
//! consumer group. The SQL is in `orrery::store::maintenance`.

use std::sync::Arc;

use deadpool_postgres::Pool;
use orrery::config::Settings;
use orrery::store::maintenance as store;
use orrery::streams::{Redis, EVENTS};
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::events::GROUP;

const PRUNE_BATCH: i64 = 5_000;

pub struct Maintenance {
    pub pool: Pool,
    pub redis: Redis,
    pub settings: Settings,
    pub instance_id: String,
}

impl Maintenance {
    pub async fn heartbeat(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        store::scheduler_heartbeat(&client, &self.instance_id, &host, std::process::id() as i32)
            .await?;
        Ok(())
    }

    pub async fn stop_heartbeat(&self) {
        if let Ok(client) = self.pool.get().await {
            let _ = store::remove_scheduler_heartbeat(&client, &self.instance_id).await;
        }
    }

    /// Deletes rows older than the retention windows, in batches, until none are left.
    pub async fn prune(&self) -> anyhow::Result<u64> {
        let client = self.pool.get().await?;
        let runs_days = self.settings.retention_runs_days as i32;
        let audit_days = self.settings.retention_audit_days as i32;
        Ok(store::prune(&client, runs_days, audit_days, PRUNE_BATCH).await?)
    }

    /// Caps the `events` stream at about RETENTION_STREAM_MAX_LEN entries, never cutting an entry the
    /// consumer group has not delivered or acknowledged.
    pub async fn trim_events(&self) -> anyhow::Result<u64> {
        let mut conn = self.redis.conn().await?;
        let stream = self.redis.key(EVENTS);
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        let cap = self.settings.retention_stream_max_len as u64;
        if len <= cap {
            return Ok(0);
        }
        let excess = (len - cap).min(10_000);
        let head: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(excess)
            .query_async(&mut conn)
            .await?;
        let Some((last, _)) = head.last() else {
            return Ok(0);
        };
        let mut cut = next_id(last);
        // The oldest entry the group still needs: the smallest pending id, else everything after last-delivered.
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if let redis::Value::Array(items) = &pending {
            if let Some(redis::Value::BulkString(min)) = items.get(1) {
                let min = String::from_utf8_lossy(min).into_owned();
                if id_less(&min, &cut) {
                    cut = min;
                }
            }
        }
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if let Some(delivered) = last_delivered(&groups) {
            let after = next_id(&delivered);
            if id_less(&after, &cut) {
                cut = after;
            }
        }
        let removed: u64 = redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MINID")
            .arg(&cut)
            .query_async(&mut conn)
            .await?;
        Ok(removed)
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn id_less(a: &str, b: &str) -> bool {
    parse_id(a) < parse_id(b)
}

fn next_id(id: &str) -> String {
    let (ms, seq) = parse_id(id);
    format!("{ms}-{}", seq + 1)
}

fn last_delivered(groups: &redis::Value) -> Option<String> {
    let redis::Value::Array(groups) = groups else {
        return None;
    };
    for g in groups {
        let fields: Vec<(String, String)> = match g {
            redis::Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| {
                    let k = redis::from_redis_value::<String>(&kv[0]).ok()?;
                    let v = kv
                        .get(1)
                        .and_then(|v| redis::from_redis_value::<String>(v).ok())
                        .unwrap_or_default();
                    Some((k, v))
                })
                .collect(),
            redis::Value::Map(items) => items
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        redis::from_redis_value::<String>(k).ok()?,
                        redis::from_redis_value::<String>(v).unwrap_or_default(),
                    ))
                })
                .collect(),
            _ => continue,
        };
        if fields.iter().any(|(k, v)| k == "name" && v == GROUP) {
            return fields
                .into_iter()
                .find(|(k, _)| k == "last-delivered-id")
                .map(|(_, v)| v);
        }
    }
    None
}

/// Starts the cron-driven maintenance jobs; returns the running JobScheduler (shut it down on stop).
pub async fn start(m: Arc<Maintenance>) -> anyhow::Result<JobScheduler> {
    let sched = JobScheduler::new().await?;
    let hb = m.clone();
    sched
        .add(Job::new_async("*/5 * * * * *", move |_, _| {
            let m = hb.clone();
            Box::pin(async move {
                if let Err(e) = m.heartbeat().await {
                    tracing::warn!(error = %e, "scheduler heartbeat failed");
                }
            })
        })?)
        .await?;
    let pr = m.clone();
    sched
        .add(Job::new_async("0 */5 * * * *", move |_, _| {
            let m = pr.clone();
            Box::pin(async move {
                match m.prune().await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "retention pruning"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention pruning failed"),
                }
                match m.trim_events().await {
                    Ok(n) if n > 0 => tracing::info!(entries = n, "events stream trimmed"),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "events stream trim skipped"),
                }
            })
        })?)
        .await?;
    sched.start().await?;
    Ok(sched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(id_less("9-0", "10-0"));
        assert!(id_less("10-1", "10-2"));
        assert!(!id_less("10-2", "10-2"));
        assert_eq!(next_id("10-2"), "10-3");
    }
}
