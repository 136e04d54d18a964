//! The SQL of the queue: claim, renew, complete, retry, dead-letter, release. One place to read it.
//!
//! Every statement takes the clock as a parameter (`coalesce($n::timestamptz, now())`, see
//! [`crate::clock::Clock::param`]) so tests can substitute time; production passes NULL and every lease and
//! due decision uses PostgreSQL's clock, never a worker's.
//!
//! The claim is one statement: it locks a batch of ready rows (`FOR UPDATE SKIP LOCKED`, in the order of the
//! `due_work_claim` partial index), applies the misfire and overlap policies, takes concurrency slots with
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE locked_until < now` (a unique-index arbitration, not a snapshot
//! count, so two claimers can never both win a key), records leases that expired without a completion, and
//! stamps the winners with a lease, a fresh fencing token and the next attempt number.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

/// A claimed row with what the worker needs to run it (task columns joined in).
#[derive(Debug, Clone)]
pub struct ClaimedWork {
    pub id: i64,
    pub task_id: Uuid,
    pub run_at: DateTime<Utc>,
    pub ready_at: DateTime<Utc>,
    pub priority: i16,
    pub concurrency_key: Option<String>,
    pub trigger: crate::model::Trigger,
    /// The attempt this claim starts (already incremented and persisted).
    pub attempt: i32,
    pub fencing_token: i64,
    pub event_id: Option<String>,
    pub event: Option<Value>,
    pub params: Option<Value>,
    pub task_title: String,
    pub task_payload: Value,
    pub timeout_seconds: i32,
    pub max_retries: i16,
    pub backoff_strategy: crate::model::BackoffStrategy,
    /// The database clock as the claim statement produced its rows, after every write of the claim (anchor for
    /// started_at / queue lag; at or after `now()` of the claim, hence at or after every claimed `ready_at`).
    pub claimed_at: DateTime<Utc>,
}

// The claim exists in two forms that must agree word for word on which rows are candidates, what claiming
// writes and what the answer holds; these macros keep those parts in one place.

/// Clock and candidates: ready rows, unleased or with an expired lease, whose concurrency key is free, in the
/// order of the `due_work_claim` index, locked with `SKIP LOCKED`.
macro_rules! claim_head {
    () => {
        r#"
WITH clock AS (SELECT coalesce($4::timestamptz, now()) AS now),
candidate AS (
    SELECT d.id, d.task_id, d.run_at, d.ready_at, d.priority, d.concurrency_key, d.overlap, d.catchup,
           d.misfire_grace_seconds, d.trigger, d.attempt, d.locked_by, d.locked_until, d.event_id, d.event
      FROM due_work d
     WHERE d.state = 'pending'
       AND d.ready_at <= (SELECT now FROM clock)
       AND (d.locked_until IS NULL OR d.locked_until < (SELECT now FROM clock))
       AND (d.concurrency_key IS NULL OR d.overlap = 'skip' OR NOT EXISTS (
                SELECT 1 FROM concurrency_slot s
                 WHERE s.key = d.concurrency_key AND s.locked_until >= (SELECT now FROM clock)))
     ORDER BY d.priority, d.ready_at, d.id
     LIMIT $3
       FOR UPDATE OF d SKIP LOCKED
),
"#
    };
}

/// A candidate `c` that is a schedule fire past its misfire grace window.
macro_rules! claim_misfired {
    () => {
        r#"c.trigger = 'schedule' AND c.attempt = 0 AND c.overlap <> 'queue'
                  AND c.ready_at < (SELECT now FROM clock) - make_interval(secs => c.misfire_grace_seconds)"#
    };
}

/// What claiming writes on a row `d`: lease, fresh fencing token, next attempt.
macro_rules! claim_stamp {
    () => {
        r#"    UPDATE due_work d
       SET locked_by = $1,
           locked_until = (SELECT now FROM clock) + make_interval(secs => $2),
           fencing_token = nextval('due_work_fencing'),
           attempt = d.attempt + 1
"#
    };
}

/// What a claim returns of the rows it stamped.
macro_rules! claim_returning {
    () => {
        r#"    RETURNING d.id, d.task_id, d.run_at, d.ready_at, d.priority, d.concurrency_key, d.trigger, d.attempt,
              d.fencing_token, d.event_id, d.event, d.params
"#
    };
}

/// The answer's columns, read by [`outcome`]: the claimed rows with their task, the clock, then `examined`
/// (and, in the fast form, `simple`), which each form appends with its own FROM.
macro_rules! claim_answer {
    () => {
        r#"SELECT c.id, c.task_id, c.run_at, c.ready_at, c.priority, c.concurrency_key, c.trigger, c.attempt,
       c.fencing_token, c.event_id, c.event, c.params,
       t.title AS task_title, t.payload AS task_payload, t.timeout_seconds, t.max_retries, t.backoff_strategy,
       coalesce($4::timestamptz, clock_timestamp()) AS claimed_at, "#
    };
}

/// The common case of the claim, planned in a fraction of the time of [`CLAIM_SQL`]: when every candidate is a
/// plain row (no concurrency key, no expired lease of an earlier attempt, not a schedule fire past its misfire
/// grace), it claims them exactly as [`CLAIM_SQL`] would. Otherwise it claims nothing, answers
/// `simple = false`, and [`claim_batch`] runs [`CLAIM_SQL`], which applies the policies (the candidates' row
/// locks end with this statement's transaction). Same parameters as [`CLAIM_SQL`] but the last.
pub const CLAIM_FAST_SQL: &str = concat!(
    claim_head!(),
    r#"verdict AS (
    SELECT count(*) AS examined,
           coalesce(bool_and(c.concurrency_key IS NULL AND c.locked_until IS NULL AND NOT ("#,
    claim_misfired!(),
    r#")), true) AS simple
      FROM candidate c
),
claimed AS (
"#,
    claim_stamp!(),
    r#"      FROM candidate c
     WHERE d.id = c.id AND (SELECT simple FROM verdict)
"#,
    claim_returning!(),
    r#")
"#,
    claim_answer!(),
    r#"v.examined, v.simple
  FROM verdict v
  LEFT JOIN (claimed c JOIN task t ON t.id = c.task_id) ON true
 ORDER BY c.priority, c.ready_at, c.id
"#
);

/// The claim statement with every policy. $1 worker id, $2 lease seconds, $3 batch size, $4 clock
/// (NULL = now()), $5 the catch-up `all` limit.
pub const CLAIM_SQL: &str = concat!(
    claim_head!(),
    r#"classified AS (
    SELECT c.*, t.max_retries,
           CASE
             WHEN c.locked_until IS NOT NULL AND c.attempt > t.max_retries THEN 'lease_exhausted'
             WHEN "#,
    claim_misfired!(),
    r#"
             THEN CASE c.catchup
                    WHEN 'skip' THEN 'misfired'
                    WHEN 'latest' THEN CASE WHEN EXISTS (
                            SELECT 1 FROM due_work o
                             WHERE o.task_id = c.task_id AND o.trigger = 'schedule' AND o.state = 'pending'
                               AND o.run_at > c.run_at
                               AND o.ready_at < (SELECT now FROM clock) - make_interval(secs => o.misfire_grace_seconds))
                         THEN 'misfired' END
                    ELSE CASE WHEN (
                            SELECT count(*) FROM (
                                SELECT 1 FROM due_work o
                                 WHERE o.task_id = c.task_id AND o.trigger = 'schedule' AND o.state = 'pending'
                                   AND o.run_at > c.run_at
                                   AND o.ready_at < (SELECT now FROM clock) - make_interval(secs => o.misfire_grace_seconds)
                                 LIMIT $5) newer) >= $5
                         THEN 'misfired' END
                  END
           END AS drop_kind
      FROM candidate c
      JOIN task t ON t.id = c.task_id
),
slot AS (
    INSERT INTO concurrency_slot AS s (key, due_work_id, locked_until)
    SELECT DISTINCT ON (c.concurrency_key) c.concurrency_key, c.id,
           (SELECT now FROM clock) + make_interval(secs => $2)
      FROM classified c
     WHERE c.concurrency_key IS NOT NULL AND c.drop_kind IS NULL
     ORDER BY c.concurrency_key, c.priority, c.ready_at, c.id
        ON CONFLICT (key) DO UPDATE
       SET due_work_id = excluded.due_work_id, locked_until = excluded.locked_until
     WHERE s.locked_until < excluded.locked_until - make_interval(secs => $2)
    RETURNING s.due_work_id
),
decided AS (
    SELECT c.*,
           CASE
             WHEN c.drop_kind IS NOT NULL THEN c.drop_kind
             WHEN c.concurrency_key IS NULL OR c.id IN (SELECT due_work_id FROM slot) THEN 'claim'
             WHEN c.overlap = 'skip' THEN 'overlap_skipped'
             ELSE 'wait'
           END AS action
      FROM classified c
),
claimed AS (
"#,
    claim_stamp!(),
    r#"      FROM decided x
     WHERE d.id = x.id AND x.action = 'claim'
"#,
    claim_returning!(),
    r#"),
dropped AS (
    DELETE FROM due_work d
     USING decided x
     WHERE d.id = x.id AND x.action IN ('misfired', 'overlap_skipped')
),
buried AS (
    UPDATE due_work d
       SET state = 'dead', dead_at = (SELECT now FROM clock), locked_by = NULL, locked_until = NULL,
           last_error = 'lease expired without a completion and no retries are left',
           last_error_kind = 'lease_expired'
      FROM decided x
     WHERE d.id = x.id AND x.action = 'lease_exhausted'
),
recorded AS (
    INSERT INTO task_run (task_id, due_work_id, attempt, worker_id, trigger, scheduled_for, started_at,
                          finished_at, success, error, error_kind, event_id, event)
    SELECT x.task_id, x.id, x.attempt, x.locked_by,
           CASE WHEN x.attempt > 1 THEN 'retry' ELSE x.trigger END, x.run_at, NULL::timestamptz,
           (SELECT now FROM clock), false,
           'the lease of worker ' || coalesce(x.locked_by, '?') || ' expired at '
               || x.locked_until::text || ' without a completion',
           'lease_expired', x.event_id, x.event
      FROM decided x
     WHERE x.locked_until IS NOT NULL AND x.attempt > 0 AND x.action <> 'wait'
    UNION ALL
    SELECT x.task_id, x.id, 0, $1, x.trigger, x.run_at, NULL::timestamptz, (SELECT now FROM clock), false,
           CASE x.action
             WHEN 'misfired' THEN 'fire missed its grace window of ' || x.misfire_grace_seconds
                                  || 's and the catch-up policy is ' || x.catchup
             ELSE 'a run of the same task (concurrency key ' || x.concurrency_key
                  || ') was in progress and the overlap policy is skip'
           END,
           x.action, x.event_id, x.event
      FROM decided x
     WHERE x.action IN ('misfired', 'overlap_skipped')
)
"#,
    claim_answer!(),
    r#"n.examined
  FROM (SELECT count(*) AS examined FROM candidate) n
  LEFT JOIN (claimed c JOIN task t ON t.id = c.task_id) ON true
 ORDER BY c.priority, c.ready_at, c.id
"#
);

/// What one claim statement did.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// The rows this worker now holds a lease on, in claim order.
    pub claimed: Vec<ClaimedWork>,
    /// Candidate rows the statement locked and decided on: claimed, dropped as misfires or overlaps, buried, or
    /// left waiting for their concurrency key. When it equals the limit, more rows may be ready right now even
    /// if few were claimed (after an outage the head of the queue is mostly misfires).
    pub examined: i64,
}

/// Claims up to `limit` ready rows for `worker_id` with a lease of `lease_seconds`.
pub async fn claim_batch(
    client: &impl GenericClient,
    worker_id: &str,
    lease_seconds: f64,
    limit: i64,
    clock: Option<DateTime<Utc>>,
) -> Result<ClaimOutcome, tokio_postgres::Error> {
    let fast = client.prepare_cached(CLAIM_FAST_SQL).await?;
    let rows = client
        .query(&fast, &[&worker_id, &lease_seconds, &limit, &clock])
        .await?;
    if rows
        .first()
        .map(|r| r.get::<_, bool>("simple"))
        .unwrap_or(true)
    {
        return outcome(&rows);
    }
    let stmt = client.prepare_cached(CLAIM_SQL).await?;
    let catchup_limit = crate::model::CATCHUP_ALL_LIMIT as i64;
    let rows = client
        .query(
            &stmt,
            &[&worker_id, &lease_seconds, &limit, &clock, &catchup_limit],
        )
        .await?;
    outcome(&rows)
}

/// Reads the answer of either claim statement (same leading columns).
fn outcome(rows: &[tokio_postgres::Row]) -> Result<ClaimOutcome, tokio_postgres::Error> {
    let examined = rows
        .first()
        .map(|r| r.get::<_, i64>("examined"))
        .unwrap_or(0);
    let claimed = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>("id").is_some())
        .map(|r| {
            Ok(ClaimedWork {
                id: r.try_get("id")?,
                task_id: r.try_get("task_id")?,
                run_at: r.try_get("run_at")?,
                ready_at: r.try_get("ready_at")?,
                priority: r.try_get("priority")?,
                concurrency_key: r.try_get("concurrency_key")?,
                trigger: r.try_get("trigger")?,
                attempt: r.try_get("attempt")?,
                fencing_token: r.try_get("fencing_token")?,
                event_id: r.try_get("event_id")?,
                event: r.try_get("event")?,
                params: r.try_get("params")?,
                task_title: r.try_get("task_title")?,
                task_payload: r.try_get("task_payload")?,
                timeout_seconds: r.try_get("timeout_seconds")?,
                max_retries: r.try_get("max_retries")?,
                backoff_strategy: r.try_get("backoff_strategy")?,
                claimed_at: r.try_get("claimed_at")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(ClaimOutcome { claimed, examined })
}

/// How a finished attempt leaves its row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settlement {
    /// Row deleted, successful task_run.
    Succeeded,
    /// Row kept pending with `ready_at = now + delay` and its lease cleared.
    Retry { delay_seconds: f64 },
    /// Row kept as `state = 'dead'` for inspection and replay.
    Dead,
}

impl Settlement {
    fn as_str(&self) -> &'static str {
        match self {
            Settlement::Succeeded => "succeeded",
            Settlement::Retry { .. } => "retry",
            Settlement::Dead => "dead",
        }
    }
}

/// One finished attempt, as the completer writes it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: i64,
    pub fencing_token: i64,
    pub settlement: Settlement,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub output: Option<Value>,
}

/// Settles a batch in one statement: successes deleted, retries rescheduled, dead rows buried (each only while
/// the fencing token still matches), their concurrency slots released and one task_run per accepted attempt
/// inserted. $1 clock, $2 worker id, then the columns of the batch as arrays.
pub const COMPLETE_SQL: &str = r#"
WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
input AS (
    SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::float8[], $7::timestamptz[],
                         $8::timestamptz[], $9::text[], $10::text[], $11::jsonb[])
                  AS i(id, fencing, outcome, delay, started_at, finished_at, error, error_kind, output)
),
finished AS (
    DELETE FROM due_work d
     USING input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'succeeded'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event
),
retried AS (
    UPDATE due_work d
       SET ready_at = (SELECT now FROM clock) + make_interval(secs => i.delay),
           locked_by = NULL, locked_until = NULL, last_error = i.error, last_error_kind = i.error_kind
      FROM input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'retry'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event
),
buried AS (
    UPDATE due_work d
       SET state = 'dead', dead_at = (SELECT now FROM clock), locked_by = NULL, locked_until = NULL,
           last_error = i.error, last_error_kind = i.error_kind
      FROM input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'dead'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event
),
settled AS (
    SELECT * FROM finished UNION ALL SELECT * FROM retried UNION ALL SELECT * FROM buried
),
released AS (
    DELETE FROM concurrency_slot s
     USING settled x
     WHERE s.key = x.concurrency_key AND s.due_work_id = x.id
),
recorded AS (
    INSERT INTO task_run (task_id, due_work_id, attempt, worker_id, trigger, scheduled_for, started_at,
                          finished_at, success, error, error_kind, output, event_id, event)
    SELECT x.task_id, x.id, x.attempt, $2, CASE WHEN x.attempt > 1 THEN 'retry' ELSE x.trigger END, x.run_at,
           i.started_at, i.finished_at, i.outcome = 'succeeded', i.error, i.error_kind, i.output, x.event_id, x.event
      FROM settled x
      JOIN input i ON i.id = x.id
     WHERE EXISTS (SELECT 1 FROM task t WHERE t.id = x.task_id)
)
SELECT id FROM settled
"#;

/// Writes a batch of completions; returns the ids that were accepted (the others lost their lease to a newer
/// claim, or their task was deleted, and are discarded).
pub async fn complete_batch(
    client: &impl GenericClient,
    worker_id: &str,
    batch: &[Completion],
    clock: Option<DateTime<Utc>>,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(COMPLETE_SQL).await?;
    let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
    let fencing: Vec<i64> = batch.iter().map(|c| c.fencing_token).collect();
    let outcome: Vec<&str> = batch.iter().map(|c| c.settlement.as_str()).collect();
    let delay: Vec<f64> = batch
        .iter()
        .map(|c| match c.settlement {
            Settlement::Retry { delay_seconds } => delay_seconds,
            _ => 0.0,
        })
        .collect();
    let started: Vec<DateTime<Utc>> = batch.iter().map(|c| c.started_at).collect();
    let finished: Vec<DateTime<Utc>> = batch.iter().map(|c| c.finished_at).collect();
    let error: Vec<Option<&str>> = batch.iter().map(|c| c.error.as_deref()).collect();
    let kind: Vec<Option<&str>> = batch.iter().map(|c| c.error_kind.as_deref()).collect();
    let output: Vec<Option<&Value>> = batch.iter().map(|c| c.output.as_ref()).collect();
    let rows = client
        .query(
            &stmt,
            &[
                &clock, &worker_id, &ids, &fencing, &outcome, &delay, &started, &finished, &error,
                &kind, &output,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get("id")).collect())
}

/// Extends the leases (and concurrency slots) of rows this worker still holds. Returns the ids renewed; a
/// held row missing from the answer was lost (its lease expired and another worker may have taken it).
pub const RENEW_SQL: &str = r#"
WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
renewed AS (
    UPDATE due_work d
       SET locked_until = (SELECT now FROM clock) + make_interval(secs => $3)
      FROM unnest($4::bigint[], $5::bigint[]) AS i(id, fencing)
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND d.locked_by = $2
       AND d.locked_until >= (SELECT now FROM clock)
    RETURNING d.id, d.concurrency_key, d.locked_until
),
slots AS (
    UPDATE concurrency_slot s
       SET locked_until = r.locked_until
      FROM renewed r
     WHERE s.key = r.concurrency_key AND s.due_work_id = r.id
)
SELECT id FROM renewed
"#;

pub async fn renew_leases(
    client: &impl GenericClient,
    worker_id: &str,
    lease_seconds: f64,
    held: &[(i64, i64)],
    clock: Option<DateTime<Utc>>,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(RENEW_SQL).await?;
    let ids: Vec<i64> = held.iter().map(|h| h.0).collect();
    let fencing: Vec<i64> = held.iter().map(|h| h.1).collect();
    let rows = client
        .query(&stmt, &[&clock, &worker_id, &lease_seconds, &ids, &fencing])
        .await?;
    Ok(rows.iter().map(|r| r.get("id")).collect())
}

/// Gives back prefetched rows that never started (shutdown): lease cleared, the attempt returned.
pub const RELEASE_SQL: &str = r#"
WITH released AS (
    UPDATE due_work d
       SET locked_by = NULL, locked_until = NULL, attempt = greatest(d.attempt - 1, 0)
      FROM unnest($1::bigint[], $2::bigint[]) AS i(id, fencing)
     WHERE d.id = i.id AND d.fencing_token = i.fencing
    RETURNING d.id, d.concurrency_key
),
slots AS (
    DELETE FROM concurrency_slot s
     USING released r
     WHERE s.key = r.concurrency_key AND s.due_work_id = r.id
)
SELECT id FROM released
"#;

pub async fn release_unstarted(
    client: &impl GenericClient,
    held: &[(i64, i64)],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(RELEASE_SQL).await?;
    let ids: Vec<i64> = held.iter().map(|h| h.0).collect();
    let fencing: Vec<i64> = held.iter().map(|h| h.1).collect();
    let rows = client.query(&stmt, &[&ids, &fencing]).await?;
    Ok(rows.iter().map(|r| r.get("id")).collect())
}

/// Seconds until the next future `ready_at` (one index probe per priority of the claim index), NULL when
/// nothing is scheduled. Expired leases are not predicted here: an idle worker re-checks at least every few
/// seconds and the claim takes them.
pub const NEXT_WAKE_SQL: &str = r#"
WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now)
SELECT extract(epoch FROM (
    SELECT min(n.ready_at)
      FROM generate_series(1, 9) AS p(priority),
           LATERAL (SELECT d.ready_at FROM due_work d
                     WHERE d.state = 'pending' AND d.priority = p.priority
                       AND d.ready_at > (SELECT now FROM clock)
                     ORDER BY d.ready_at LIMIT 1) n
) - (SELECT now FROM clock))::float8 AS seconds
"#;

pub async fn seconds_until_next_wake(
    client: &impl GenericClient,
    clock: Option<DateTime<Utc>>,
) -> Result<Option<f64>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(NEXT_WAKE_SQL).await?;
    let row = client.query_one(&stmt, &[&clock]).await?;
    Ok(row.get("seconds"))
}

/// The worker's heartbeat row (one per worker process, so workers never contend on one row).
pub const HEARTBEAT_SQL: &str = r#"
INSERT INTO worker_heartbeat AS h (worker_id, hostname, pid, started_at, last_seen, processed, failed,
                                   in_flight, state)
VALUES ($1, $2, $3, coalesce($8::timestamptz, now()), coalesce($8::timestamptz, now()), $4, $5, $6, $7)
ON CONFLICT (worker_id) DO UPDATE
   SET last_seen = excluded.last_seen, processed = excluded.processed, failed = excluded.failed,
       in_flight = excluded.in_flight, state = excluded.state
"#;

#[allow(clippy::too_many_arguments)]
pub async fn heartbeat(
    client: &impl GenericClient,
    worker_id: &str,
    hostname: &str,
    pid: i32,
    processed: i64,
    failed: i64,
    in_flight: i32,
    state: crate::model::WorkerState,
    clock: Option<DateTime<Utc>>,
) -> Result<(), tokio_postgres::Error> {
    let stmt = client.prepare_cached(HEARTBEAT_SQL).await?;
    client
        .execute(
            &stmt,
            &[
                &worker_id,
                &hostname,
                &pid,
                &processed,
                &failed,
                &in_flight,
                &state.as_str(),
                &clock,
            ],
        )
        .await?;
    Ok(())
}
