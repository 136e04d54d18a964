//! The `worker_heartbeat` row: one per worker process, written every 5 s and on each state change.

use std::sync::Arc;
use std::time::Duration;

use orrery::queue;

use crate::db::Db;
use crate::stats::Stats;

pub const INTERVAL: Duration = Duration::from_secs(5);

/// The heartbeat task's handles.
#[derive(Clone)]
pub struct Heartbeat {
    pub db: Db,
    pub stats: Stats,
    pub hostname: Arc<str>,
}

pub async fn run(hb: Heartbeat) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        beat(&hb).await;
    }
}

pub async fn beat(hb: &Heartbeat) {
    let result = async {
        let client = hb.db.pool.get().await?;
        queue::heartbeat(
            &client,
            &hb.db.worker_id,
            &hb.hostname,
            std::process::id() as i32,
            hb.stats.processed(),
            hb.stats.failed(),
            hb.stats.running(),
            hb.stats.state(),
            hb.db.clock(),
        )
        .await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(3), result).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat not written"),
        Err(_) => tracing::debug!("heartbeat timed out"),
    }
}
