//! Keeps the leases of every held row (running or prefetched) alive: one statement per renewal round,
//! three rounds per lease period, so a live worker never loses a row to lease expiry.

use std::sync::Arc;
use std::time::Duration;

use orrery::queue;
use tokio::sync::watch;

use crate::worker::Shared;

pub async fn renew_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs_f64((shared.settings.lease_seconds / 3.0).max(0.05));
    let mut stopped = false;
    loop {
        // Keep renewing while draining (in-flight runs finish during the grace period).
        if stopped {
            tokio::time::sleep(every).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => { stopped = true; continue; }
            }
        }
        let held: Vec<(i64, i64)> = {
            let map = shared.held.lock().expect("held lock");
            map.iter().map(|(id, h)| (*id, h.fencing_token)).collect()
        };
        if held.is_empty() {
            continue;
        }
        let result = async {
            let client = shared.pool.get().await?;
            anyhow::Ok(
                queue::renew_leases(
                    &client,
                    &shared.worker_id,
                    shared.settings.lease_seconds,
                    &held,
                    shared.clock.param(),
                )
                .await?,
            )
        }
        .await;
        match result {
            Ok(renewed) => {
                if renewed.len() < held.len() {
                    let renewed: std::collections::HashSet<i64> = renewed.into_iter().collect();
                    let still_held = shared.held.lock().expect("held lock");
                    for (id, _) in &held {
                        // Rows settled meanwhile are gone from `held`; the rest really lost their lease.
                        if !renewed.contains(id) && still_held.contains_key(id) {
                            tracing::warn!(due_work_id = id, "lease lost: its result will be discarded if another worker reclaimed it");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), held = held.len(), "lease renewal failed")
            }
        }
    }
}
