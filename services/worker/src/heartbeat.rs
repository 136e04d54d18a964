//! The `worker_heartbeat` row: one per worker process, written every 5 s and on each state change.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use orrery::queue;
use tokio::sync::watch;

use crate::worker::Shared;

pub const INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(shared: Arc<Shared>, _stop: watch::Receiver<bool>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        beat(&shared).await;
    }
}

pub async fn beat(shared: &Shared) {
    let result = async {
        let client = shared.pool.get().await?;
        queue::heartbeat(
            &client,
            &shared.worker_id,
            &shared.hostname,
            std::process::id() as i32,
            shared.processed.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
            shared.running.load(Ordering::Relaxed),
            shared.state(),
            shared.clock.param(),
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
