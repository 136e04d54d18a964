//! Keeps the leases of every held row (running or prefetched) alive: one statement per renewal round,
//! three rounds per lease period, so a live worker never loses a row to lease expiry.

use std::time::Duration;

use orrery::queue;
use tokio::sync::watch;

use crate::db::Db;
use crate::held::HeldRows;

pub async fn renew_loop(
    db: Db,
    held_rows: HeldRows,
    lease_seconds: f64,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs_f64((lease_seconds / 3.0).max(0.05));
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
        // Rate keys whose window emptied are forgotten (one small statement per round; see PRUNE_KEYS_SQL).
        if !stopped {
            let pruned = async {
                let client = db.pool.get().await?;
                anyhow::Ok(queue::prune_rate_keys(&client, db.clock()).await?)
            }
            .await;
            if let Err(e) = pruned {
                tracing::debug!(error = %format!("{e:#}"), "pruning rate keys failed");
            }
        }
        let held = held_rows.snapshot();
        if held.is_empty() {
            continue;
        }
        let result = async {
            let client = db.pool.get().await?;
            anyhow::Ok(
                queue::renew_leases(&client, &db.worker_id, lease_seconds, &held, db.clock())
                    .await?,
            )
        }
        .await;
        match result {
            Ok(renewed) => {
                if renewed.len() < held.len() {
                    let renewed: std::collections::HashSet<i64> = renewed.into_iter().collect();
                    for (id, _) in &held {
                        // Rows settled meanwhile are gone from `held`; the rest really lost their lease.
                        if !renewed.contains(id) && held_rows.contains(*id) {
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
