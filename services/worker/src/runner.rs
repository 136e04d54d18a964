//! Runs claimed rows, at most `WORKER_CONCURRENCY` at once, and decides how each attempt settles.
//!
//! [`run_one`] is the seam between the queue and the pipeline executor: a claimed row in, the step output
//! and the outcome out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orrery::clock::Clock;
use orrery::model::{BackoffStrategy, Trigger};
use orrery::pipeline::Payload;
use orrery::queue::{ClaimedWork, Completion, Settlement};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch, Mutex};

use crate::claimer::Claimed;
use crate::completer::Finished;
use crate::executor::{Executor, HttpTool, RunContext, RunFailure};
use crate::held::HeldRows;
use crate::run_events::{OutboxSink, RunEvent, RunEvents};
use crate::stats::Stats;
use orrery::streams::Redis;

/// A runner task's handles (each runner owns a clone).
#[derive(Clone)]
pub struct Runner {
    pub held: HeldRows,
    pub stats: Stats,
    pub events: Arc<RunEvents>,
    pub redis: Redis,
    pub http: HttpTool,
    pub shell: crate::executor::ShellTool,
    pub secrets: crate::secrets::SecretReader,
    pub backoff_base: f64,
    pub backoff_max: f64,
    /// A pipeline's `now` (the claims and completions bind the `Db`'s clock).
    pub clock: Clock,
}

pub async fn runner_loop(
    runner: Runner,
    work: Arc<Mutex<mpsc::UnboundedReceiver<Claimed>>>,
    done: mpsc::UnboundedSender<Finished>,
    abort: watch::Receiver<bool>,
) {
    loop {
        let next = { work.lock().await.recv().await };
        let Some(Claimed { work, claimed }) = next else {
            return;
        };
        if let Some(at) = work.not_before.filter(|at| *at > work.claimed_at) {
            // Granted ahead by its queue's rate limit (at most GRANT_AHEAD_SECONDS): starts on that instant.
            let wait = (at - work.claimed_at).to_std().unwrap_or_default();
            tokio::time::sleep_until((claimed + wait).into()).await;
        }
        if runner.stats.is_stopping() {
            // Prefetched but never started: give the attempt back.
            let _ = done.send(Finished::Release {
                id: work.id,
                fencing_token: work.fencing_token,
            });
            continue;
        }
        runner.held.started(work.id, work.fencing_token);
        runner.stats.run_started();
        let started_instant = Instant::now();
        let started_at = on_db_clock(work.claimed_at, claimed, started_instant);
        let lag = (started_at - work.ready_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        orrery::metrics::QUEUE_LAG
            .with_label_values(&[work.trigger.as_str()])
            .observe(lag.max(0.0));
        runner.events.send(RunEvent::new(&work, "started"));

        let mut abort = abort.clone();
        let (output, outcome) = tokio::select! {
            r = run_one(&runner, &work) => r,
            _ = async { while !*abort.borrow() { if abort.changed().await.is_err() { std::future::pending::<()>().await; } } } => {
                (None, Err(RunFailure::retryable(
                    "shutdown",
                    "the worker shut down before the run finished (shutdown grace period exceeded)",
                )))
            }
        };
        let elapsed = started_instant.elapsed();
        let finished_at = started_at
            + chrono::Duration::from_std(elapsed).unwrap_or_else(|_| chrono::Duration::zero());
        let completion = settle(&runner, &work, outcome, output, started_at, finished_at);
        orrery::metrics::RUN_DURATION
            .with_label_values(&[match completion.settlement {
                Settlement::Succeeded => "succeeded",
                Settlement::Retry { .. } => "retried",
                Settlement::Dead => "dead",
            }])
            .observe(elapsed.as_secs_f64());
        runner.stats.run_ended();
        let _ = done.send(Finished::Settle {
            completion,
            task_id: work.task_id,
            attempt: work.attempt,
            limited: work.limited,
        });
    }
}

/// The database instant `at_local` corresponds to, given that the claim answered at `claimed_at` (database
/// clock) when the local monotonic clock read `claimed_local`.
fn on_db_clock(
    claimed_at: DateTime<Utc>,
    claimed_local: Instant,
    at_local: Instant,
) -> DateTime<Utc> {
    claimed_at
        + chrono::Duration::from_std(at_local.saturating_duration_since(claimed_local))
            .unwrap_or_else(|_| chrono::Duration::zero())
}

/// Runs one claimed row's pipeline. Returns the step output (if any) and the outcome.
pub async fn run_one(
    runner: &Runner,
    work: &ClaimedWork,
) -> (Option<Value>, Result<(), RunFailure>) {
    let payload: Payload = match serde_json::from_value(work.task_payload.clone()) {
        Ok(p) => p,
        Err(e) => {
            return (
                None,
                Err(RunFailure::permanent(
                    "invalid_payload",
                    format!("the task's payload is not a valid pipeline: {e}"),
                )),
            )
        }
    };
    let mut ctx = run_context(work, &payload, &runner.clock);
    // A dependent run's params come from its parents' runs (rendered here, merged like run-now params).
    if work.trigger == Trigger::Dependency {
        match crate::dependency::params(&runner.secrets.pool, work).await {
            Ok(extra) => ctx.params.extend(extra),
            Err(failure) => return (None, Err(failure)),
        }
    }
    // Only runs whose pipeline reads `secrets.NAME` touch the secret table.
    let names = orrery::secrets::referenced_names(&work.task_payload);
    let secrets = if names.is_empty() {
        Vec::new()
    } else {
        match crate::secrets::load(&runner.secrets, work.task_id, &names).await {
            Ok(s) => s,
            Err(failure) => return (None, Err(failure)),
        }
    };
    for (name, value) in &secrets {
        ctx.secrets
            .insert(name.clone(), Value::String(value.clone()));
    }
    let sink = Arc::new(OutboxSink::new(
        runner.secrets.pool.clone(),
        runner.redis.clone(),
        format!("task:{}", work.task_id),
    ));
    let executor = Executor::new(runner.http.clone(), sink).with_shell(runner.shell.clone());
    let timeout = Duration::from_secs(work.timeout_seconds.max(1) as u64);
    let (mut output, mut outcome) = executor.run(&payload, &ctx, timeout).await;
    // Whatever a step returned or a server echoed: no secret value leaves the run.
    if !secrets.is_empty() {
        orrery::secrets::redact_value(&mut output, &secrets);
        if let Err(f) = &mut outcome {
            f.message = orrery::secrets::redact_str(&f.message, &secrets);
        }
    }
    (Some(output), outcome)
}

/// The template context of a run (API decision 4): task params merged with the row's params (run-now wins).
pub fn run_context(work: &ClaimedWork, payload: &Payload, clock: &Clock) -> RunContext {
    let mut params: Map<String, Value> = payload.params.clone();
    if let Some(Value::Object(extra)) = &work.params {
        for (k, v) in extra {
            params.insert(k.clone(), v.clone());
        }
    }
    RunContext {
        task_id: work.task_id,
        task_title: work.task_title.clone(),
        run_id: work.id,
        attempt: work.attempt,
        scheduled_for: work.run_at,
        params,
        event: work.event.clone(),
        secrets: Map::new(),
        clock: clock.clone(),
    }
}

/// Success → row deleted; retryable failure with retries left → rescheduled after the task's backoff;
/// anything else → dead.
fn settle(
    runner: &Runner,
    work: &ClaimedWork,
    outcome: Result<(), RunFailure>,
    output: Option<Value>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
) -> Completion {
    let (settlement, error, error_kind) = match outcome {
        Ok(()) => (Settlement::Succeeded, None, None),
        Err(failure) => {
            let settlement = decide(
                &failure,
                work.attempt,
                work.max_retries,
                work.backoff_strategy,
                runner.backoff_base,
                runner.backoff_max,
                rand::random::<f64>(),
            );
            tracing::info!(
                due_work_id = work.id,
                task_id = %work.task_id,
                attempt = work.attempt,
                error_kind = failure.code,
                retry = matches!(settlement, Settlement::Retry { .. }),
                error = %failure,
                "run failed"
            );
            (
                settlement,
                Some(failure.to_string()),
                Some(failure.code.to_string()),
            )
        }
    };
    Completion {
        id: work.id,
        fencing_token: work.fencing_token,
        settlement,
        started_at,
        finished_at,
        error,
        error_kind,
        output,
    }
}

/// Retry while the failure is retryable and `attempt ≤ max_retries` (so a task makes at most
/// `max_retries + 1` attempts); the delay before attempt n+1 is `backoff_delay(strategy, n, base, max)`.
pub fn decide(
    failure: &RunFailure,
    attempt: i32,
    max_retries: i16,
    strategy: BackoffStrategy,
    base: f64,
    max: f64,
    jitter: f64,
) -> Settlement {
    orrery::queue::failure_settlement(
        failure.is_retryable(),
        attempt,
        max_retries,
        strategy,
        base,
        max,
        jitter,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::ErrorKind;

    fn failure(kind: ErrorKind) -> RunFailure {
        match kind {
            ErrorKind::Retryable => RunFailure::retryable("x", "m"),
            ErrorKind::Permanent => RunFailure::permanent("x", "m"),
        }
    }

    #[test]
    fn retryable_failures_retry_until_max_retries_then_die() {
        let f = failure(ErrorKind::Retryable);
        assert_eq!(
            decide(&f, 1, 3, BackoffStrategy::Linear, 1.0, 60.0, 0.0),
            Settlement::Retry { delay_seconds: 1.0 }
        );
        assert_eq!(
            decide(&f, 3, 3, BackoffStrategy::Linear, 1.0, 60.0, 0.0),
            Settlement::Retry { delay_seconds: 3.0 }
        );
        assert_eq!(
            decide(&f, 4, 3, BackoffStrategy::Linear, 1.0, 60.0, 0.0),
            Settlement::Dead
        );
        assert_eq!(
            decide(&f, 1, 0, BackoffStrategy::Fixed, 1.0, 60.0, 0.0),
            Settlement::Dead
        );
    }

    #[test]
    fn permanent_failures_die_at_once() {
        let f = failure(ErrorKind::Permanent);
        assert_eq!(
            decide(&f, 1, 10, BackoffStrategy::Fixed, 1.0, 60.0, 0.0),
            Settlement::Dead
        );
    }

    #[test]
    fn exponential_backoff_doubles_and_is_capped() {
        let f = failure(ErrorKind::Retryable);
        let d = |attempt| match decide(
            &f,
            attempt,
            10,
            BackoffStrategy::ExponentialJitter,
            1.0,
            5.0,
            1.0,
        ) {
            Settlement::Retry { delay_seconds } => delay_seconds,
            other => panic!("{other:?}"),
        };
        assert_eq!((d(1), d(2), d(3), d(4)), (1.0, 2.0, 4.0, 5.0));
    }
}
