//! The claim loop: one statement claims up to a batch of ready rows into a small local buffer; an idle
//! worker sleeps until a Redis hint, the next known `ready_at` / lease expiry, or the polling safety net.

use std::time::{Duration, Instant};

use orrery::queue::{self, ClaimedWork};
use tokio::sync::{mpsc, watch};

use crate::db::Db;
use crate::held::HeldRows;
use crate::settings::WorkerSettings;
use crate::stats::Stats;
use crate::wakeup::Hints;

/// How often a claim tries the flow-controlled statement first when it got nothing last time.
const FLOW_RETRY: Duration = Duration::from_millis(100);

/// With Redis up, hints wake idle workers; this bounds the sleep anyway (rows inserted without a hint).
const IDLE_CAP_WITH_REDIS: Duration = Duration::from_secs(5);

/// A claimed row and the local instant its claim's rows arrived (to place the start on the database clock:
/// `claimed_at` was read by PostgreSQL as it produced the rows, just before that instant).
pub struct Claimed {
    pub work: ClaimedWork,
    pub claimed: Instant,
}

/// The claimer's own connection, taken out of the pool for good: its claims commit asynchronously.
///
/// `synchronous_commit = off` is safe for claims and only for claims: a claim lost in a PostgreSQL crash
/// just returns its rows to the queue with their previous fencing token, so the worker's later completion
/// (which commits synchronously, and whose WAL flush covers every earlier record) is rejected by the fencing
/// check and the rows run again — at-least-once, as documented. The sequence of fencing tokens can lose its
/// advance in the same crash; [`queue::start_claim_session`] moves it past the lost tokens on every new
/// connection, so a re-claim never hands a row the token of its lost claim. It saves a WAL flush per claim, which is
/// most of an idle worker's pickup latency. (Forcing the claim's generic plan was tried and
/// rejected: with many dead index entries ahead of the live rows its execution went from ~10 ms to ~300 ms.)
struct ClaimConnection {
    client: Option<deadpool_postgres::Object>,
}

impl ClaimConnection {
    async fn get(&mut self, db: &Db) -> anyhow::Result<&deadpool_postgres::Object> {
        if self.client.is_none() {
            let client = db.pool.get().await?;
            // Fencing tokens moved past any a lost asynchronous claim took, then asynchronous commit and no JIT.
            queue::start_claim_session(&client).await?;
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

/// The claimer task's handles.
pub struct Claimer {
    pub db: Db,
    pub settings: WorkerSettings,
    pub held: HeldRows,
    pub stats: Stats,
    pub hints: Hints,
}

pub async fn claim_loop(
    claimer: Claimer,
    work_tx: mpsc::UnboundedSender<Claimed>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = ClaimConnection { client: None };
    let batch = claimer.settings.batch_size.max(1);
    let concurrency = claimer.settings.concurrency.max(1);
    let max_outstanding = claimer.settings.max_outstanding();
    // Claim again once a quarter of a batch is wanted: big statements, a buffer that never runs dry.
    let big_claim = (batch / 4).clamp(1, concurrency);
    let mut pace = Pace::new(claimer.stats.processed());
    let mut backoff = Duration::from_millis(100);
    // An open constrained queue was seen by the last claim: the flow-controlled claim runs first while it gets
    // rows, and at most every FLOW_RETRY otherwise (it also runs whenever the plain claim leaves room).
    let mut limited = false;
    let mut flow_getting = false;
    let mut last_flow = Instant::now();
    // The plain claim found nothing last time (only constrained queues have work): while the flow claim is
    // getting rows, the plain claim is skipped for up to FLOW_RETRY (it reads past every waiting row).
    let mut plain_empty = false;
    let mut last_plain = Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let rate = pace.update(claimer.stats.processed());
        let (held, buffered) = claimer.held.held_and_buffered();
        let running = (claimer.stats.running().max(0) as usize).min(concurrency);
        let free = concurrency - running;
        let ahead = ahead(rate, claimer.settings.prefetch, batch);
        let want = wanted(
            free,
            buffered,
            ahead,
            max_outstanding.saturating_sub(held),
            batch,
        );
        // Small claims only to fill idle runners that no buffered row will take (slow work); with every runner
        // covered, claim only once half of the wanted buffer is gone (fewer, bigger statements).
        let idle_uncovered = free.saturating_sub(buffered);
        let threshold = if idle_uncovered > 0 {
            idle_uncovered.min(big_claim)
        } else {
            big_claim.max(ahead / 2)
        };
        if want == 0 || want < threshold {
            tokio::select! {
                _ = claimer.held.capacity() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // Start times are placed on the database clock from the claim's last clock reading and the instant its
        // rows arrived (see `received`): never before the claimed rows' ready_at, and short of the true start
        // only by the answer's transit on the connection.
        let sent = Instant::now();
        let flow_first = limited && (flow_getting || last_flow.elapsed() >= FLOW_RETRY);
        let plain =
            !(flow_first && flow_getting && plain_empty && last_plain.elapsed() < FLOW_RETRY);
        let outcome = match claim(&claimer, &mut conn, want, flow_first, plain).await {
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
        let received = Instant::now();
        let queue::ClaimOutcome {
            claimed,
            examined,
            limited: now_limited,
            flow_ran,
            flow_claimed,
            plain_ran,
            plain_examined,
        } = outcome;
        if plain_ran {
            last_plain = Instant::now();
            plain_empty = plain_examined == 0;
        }
        limited = now_limited;
        if flow_ran {
            last_flow = Instant::now();
            flow_getting = flow_claimed > 0;
        }
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
            claimer.held.claimed(&claimed);
            orrery::metrics::WORK
                .with_label_values(&["claimed"])
                .inc_by(got as u64);
            for work in claimed {
                if work_tx
                    .send(Claimed {
                        work,
                        claimed: received,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
        // The statement took as many rows as it was allowed to: more may be ready now, even if few of them were
        // claimed (after an outage the head of the queue is mostly misfires, which the claim drops).
        if examined >= want as i64 {
            continue;
        }
        // Fewer than wanted: the queue is empty for now. A drain that ended should not keep a stale rate.
        pace.rate = 0.0;
        idle_wait(&claimer, &mut conn, &mut stop, sent.elapsed()).await;
    }
}

/// How long ahead the local buffer should cover at the current completion rate.
const PREFETCH_WINDOW: f64 = 0.1;

/// Rows to claim now: enough to fill the idle runners plus `ahead` (see [`ahead`]), minus what is already
/// buffered, within `room` and one batch.
///
/// Short jobs at thousands per second make that a whole batch (big statements, a buffer that never runs dry);
/// slow jobs make it just the idle runners, so a busy worker never sits on rows that an idle worker could start
/// (with a fixed prefetch, the first of several idle workers to claim took a whole burst of slow work and ran
/// it `WORKER_CONCURRENCY` at a time while the others waited).
fn wanted(free: usize, buffered: usize, ahead: usize, room: usize, batch: usize) -> usize {
    (free + ahead).saturating_sub(buffered).min(room).min(batch)
}

/// Rows to keep claimed beyond the idle runners: [`PREFETCH_WINDOW`] of work at the measured completion
/// `rate`, at least `prefetch` (`WORKER_PREFETCH`), at most one batch.
fn ahead(rate: f64, prefetch: usize, batch: usize) -> usize {
    ((rate.max(0.0) * PREFETCH_WINDOW).min(batch as f64) as usize)
        .max(prefetch)
        .min(batch)
}

/// Completion rate (rows per second), smoothed over windows of at least 100 ms.
struct Pace {
    since: Instant,
    at_since: i64,
    rate: f64,
}

impl Pace {
    fn new(processed: i64) -> Self {
        Self {
            since: Instant::now(),
            at_since: processed,
            rate: 0.0,
        }
    }

    fn update(&mut self, processed: i64) -> f64 {
        let elapsed = self.since.elapsed().as_secs_f64();
        if elapsed >= 0.1 {
            let current = (processed - self.at_since).max(0) as f64 / elapsed;
            self.rate = 0.5 * self.rate + 0.5 * current;
            self.since = Instant::now();
            self.at_since = processed;
        }
        self.rate
    }
}

async fn claim(
    claimer: &Claimer,
    conn: &mut ClaimConnection,
    want: usize,
    flow_first: bool,
    plain: bool,
) -> anyhow::Result<queue::ClaimOutcome> {
    let client = conn.get(&claimer.db).await?;
    let outcome = queue::claim_batch(
        client,
        &claimer.db.worker_id,
        claimer.settings.lease_seconds,
        want as i64,
        claimer.db.clock(),
        claimer.settings.queues.as_deref(),
        flow_first,
        plain,
    )
    .await?;
    orrery::metrics::WORKER_CLAIMS.inc();
    Ok(outcome)
}

async fn idle_wait(
    claimer: &Claimer,
    conn: &mut ClaimConnection,
    stop: &mut watch::Receiver<bool>,
    since: Duration,
) {
    let cap = if claimer.hints.redis_up() {
        IDLE_CAP_WITH_REDIS.max(claimer.settings.poll_interval)
    } else {
        claimer.settings.poll_interval
    };
    // A little more than the time since the claim that found nothing was sent (see seconds_until_next_wake).
    let since = since.as_secs_f64() + 0.005;
    let (next, room) = match conn.get(&claimer.db).await {
        Ok(client) => match queue::seconds_until_next_wake(client, claimer.db.clock(), since).await
        {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(error = %e, "next wake-up query failed");
                conn.discard();
                (None, None)
            }
        },
        Err(_) => {
            conn.discard();
            (None, None)
        }
    };
    // A rate window opened since that claim began: claim again now.
    if room.is_some_and(|s| s <= 0.0) {
        return;
    }
    let wait = match next {
        // A known instant: wake right at it (the timer rounds up to the millisecond).
        Some(s) if s > 0.0 => Duration::from_secs_f64(s).min(cap),
        // Something is overdue yet was not claimable (its concurrency key is busy): the completion that frees
        // it notifies `capacity`, the polling interval covers other workers' completions.
        Some(_) => claimer.settings.poll_interval.min(cap),
        None => cap,
    };
    let wait = match room {
        Some(s) => wait.min(Duration::from_secs_f64(s)),
        None => wait,
    };
    tokio::select! {
        _ = claimer.hints.woken() => tracing::trace!("woken by a hint"),
        _ = claimer.held.capacity() => {}
        _ = tokio::time::sleep(wait) => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{ahead, wanted};

    #[test]
    fn slow_work_claims_only_what_idle_runners_can_start() {
        // ~3 completions per second keep nothing ahead.
        assert_eq!(ahead(3.0, 0, 500), 0);
        // 4 runners, all busy, nothing buffered: nothing to claim.
        assert_eq!(wanted(0, 0, 0, 1000, 500), 0);
        // One runner freed: exactly one row.
        assert_eq!(wanted(1, 0, 0, 1000, 500), 1);
        // Idle worker, no history: fill the runners, no more.
        assert_eq!(wanted(32, 0, 0, 1000, 500), 32);
        // Rows already buffered count against the idle runners.
        assert_eq!(wanted(4, 3, 0, 1000, 500), 1);
    }

    #[test]
    fn fast_work_claims_whole_batches_within_room() {
        // 20,000 completions per second: 2,000 rows per 100 ms window, capped by the batch.
        assert_eq!(ahead(20_000.0, 0, 500), 500);
        assert_eq!(wanted(10, 0, 500, 1000, 500), 500);
        // Capped by the room left under WORKER_CONCURRENCY + 2 x WORKER_BATCH_SIZE.
        assert_eq!(wanted(10, 0, 500, 120, 500), 120);
        // 1,000 per second: 100 rows ahead plus the idle runners, minus what is buffered.
        assert_eq!(ahead(1_000.0, 0, 500), 100);
        assert_eq!(wanted(8, 30, 100, 1000, 500), 78);
        assert_eq!(wanted(8, 300, 100, 1000, 500), 0);
    }

    #[test]
    fn a_configured_prefetch_is_kept_whatever_the_rate() {
        assert_eq!(ahead(0.0, 10, 500), 10);
        assert_eq!(wanted(2, 4, 10, 1000, 500), 8);
        assert_eq!(ahead(0.0, 900, 500), 500);
    }
}
