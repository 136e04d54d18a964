//! The claim loop: one statement claims up to a batch of ready rows into a small local buffer; an idle
//! worker sleeps until a Redis hint, the next known `ready_at` / lease expiry, or the polling safety net.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orrery::queue::{self, ClaimedWork};
use tokio::sync::{mpsc, watch};

use crate::worker::{Held, Shared};

/// With Redis up, hints wake idle workers; this bounds the sleep anyway (rows inserted without a hint).
const IDLE_CAP_WITH_REDIS: Duration = Duration::from_secs(5);

/// A claimed row and the local instant its claim statement was sent (to place the start on the database
/// clock: `claimed_at` was read by PostgreSQL after that instant).
pub struct Claimed {
    pub work: ClaimedWork,
    pub claimed: Instant,
}

/// The claimer's own connection, taken out of the pool for good: its claims commit asynchronously.
///
/// `synchronous_commit = off` is safe for claims and only for claims: a claim lost in a PostgreSQL crash
/// just returns its rows to the queue with their previous fencing token, so the worker's later completion
/// (which commits synchronously, and whose WAL flush covers every earlier record) is rejected by the fencing
/// check and the rows run again — at-least-once, as documented. It saves a WAL flush per claim, which is
/// most of an idle worker's pickup latency. (Forcing the claim's generic plan was tried and
/// rejected: with many dead index entries ahead of the live rows its execution went from ~10 ms to ~300 ms.)
struct ClaimConnection {
    client: Option<deadpool_postgres::Object>,
}

impl ClaimConnection {
    async fn get(&mut self, shared: &Shared) -> anyhow::Result<&deadpool_postgres::Object> {
        if self.client.is_none() {
            let client = shared.pool.get().await?;
            client.batch_execute("SET synchronous_commit = off").await?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("just set"))
    }

    /// Closes the connection rather than returning it (with its session setting) to the pool.
    fn discard(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Drop for ClaimConnection {
    fn drop(&mut self) {
        self.discard();
    }
}

pub async fn claim_loop(
    shared: Arc<Shared>,
    work_tx: mpsc::UnboundedSender<Claimed>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = ClaimConnection { client: None };
    let batch = shared.settings.batch_size.max(1);
    let max_outstanding = shared.settings.max_outstanding();
    // Claim again once a quarter of a batch is free: big statements, a buffer that never runs dry.
    let threshold = (batch / 4).clamp(1, shared.settings.concurrency.max(1));
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let room = max_outstanding.saturating_sub(shared.held_count());
        if room < threshold {
            tokio::select! {
                _ = shared.capacity.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let want = room.min(batch);
        // Taken before the statement is sent: the claim's database clock reading is at or after this
        // instant, so start times derived from it are never early.
        let sent = Instant::now();
        let claimed = match claim(&shared, &mut conn, want).await {
            Ok(c) => {
                backoff = Duration::from_millis(100);
                c
            }
            Err(e) => {
                conn.discard();
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "claim failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let got = claimed.len();
        if got > 0 {
            tracing::debug!(
                got,
                want,
                claim_us = sent.elapsed().as_micros() as u64,
                "claimed"
            );
        }
        if got > 0 {
            {
                let mut held = shared.held.lock().expect("held lock");
                for w in &claimed {
                    held.insert(
                        w.id,
                        Held {
                            fencing_token: w.fencing_token,
                            started: false,
                        },
                    );
                }
            }
            orrery::metrics::WORK
                .with_label_values(&["claimed"])
                .inc_by(got as u64);
            for work in claimed {
                if work_tx
                    .send(Claimed {
                        work,
                        claimed: sent,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
        if got == want {
            continue;
        }
        // The queue had less than we asked for: wait for a reason to look again.
        idle_wait(&shared, &mut conn, &mut stop).await;
    }
}

async fn claim(
    shared: &Shared,
    conn: &mut ClaimConnection,
    want: usize,
) -> anyhow::Result<Vec<ClaimedWork>> {
    let client = conn.get(shared).await?;
    Ok(queue::claim_batch(
        client,
        &shared.worker_id,
        shared.settings.lease_seconds,
        want as i64,
        shared.clock.param(),
    )
    .await?)
}

async fn idle_wait(shared: &Shared, conn: &mut ClaimConnection, stop: &mut watch::Receiver<bool>) {
    let cap = if shared.redis_up.load(Ordering::SeqCst) {
        IDLE_CAP_WITH_REDIS.max(shared.settings.poll_interval)
    } else {
        shared.settings.poll_interval
    };
    let next = match conn.get(shared).await {
        Ok(client) => match queue::seconds_until_next_wake(client, shared.clock.param()).await {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(error = %e, "next wake-up query failed");
                conn.discard();
                None
            }
        },
        Err(_) => {
            conn.discard();
            None
        }
    };
    let wait = match next {
        // A known instant: wake right at it (the timer rounds up to the millisecond).
        Some(s) if s > 0.0 => Duration::from_secs_f64(s).min(cap),
        // Something is overdue yet was not claimable (its concurrency key is busy): the completion that frees
        // it notifies `capacity`, the polling interval covers other workers' completions.
        Some(_) => shared.settings.poll_interval.min(cap),
        None => cap,
    };
    tokio::select! {
        _ = shared.wake.notified() => tracing::trace!("woken by a hint"),
        _ = shared.capacity.notified() => {}
        _ = tokio::time::sleep(wait) => {}
        _ = stop.changed() => {}
    }
}
