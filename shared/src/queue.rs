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
    pub trigger: String,
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
    pub backoff_strategy: String,
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
           d.misfire_grace_seconds, d.trigger, d.attempt, d.locked_by, d.locked_until, d.event_id, d.event,
           d.trace_id, d.params
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
       t.title, t.payload, t.timeout_seconds, t.max_retries, t.backoff_strategy,
       coalesce($4::timestamptz, clock_timestamp()), "#
    };
}

/// The dependents of parents that reached their final outcome in this statement (docs/flow-control.md#dependencies):
/// reads a CTE `parent_settled (id, task_id, trace_id, params, outcome, output, run_id)` (outcome `succeeded` or
/// `dead`) and the `clock` CTE; records each parent's arrival at each of its dependents in the parent's trace
/// (`dependency_arrival`), counts it on the dependent's gate (`dependency_gate`, upserted: concurrent settlements
/// of parents of one fan-in serialize on that row) and inserts the dependent's `due_work` row (trigger
/// `dependency`, the parents' trace) in the statement whose arrival completes the gate. Defines `dep_fired`
/// (the ids inserted). The dependent's task row is locked `FOR SHARE` so that a concurrent pause or cancel either
/// sees the new row (pause parks it) or is seen by the gate (held, dropped).
macro_rules! fire_dependents {
    () => {
        r#"dep_hit AS (
    SELECT DISTINCT ON (e.task_id, p.trace_id, p.task_id)
           e.task_id, p.trace_id, p.task_id AS parent_task_id, p.outcome,
           (e.condition = 'any' OR (e.condition = 'success') = (p.outcome = 'succeeded')) AS met,
           p.id AS parent_due_work_id, p.run_id, e.params AS template,
           CASE WHEN e.params IS NOT NULL
                THEN coalesce((SELECT pt.payload->'params' FROM task pt WHERE pt.id = p.task_id), '{}'::jsonb)
                     || coalesce(p.params, '{}'::jsonb) END AS parent_params,
           CASE WHEN e.params IS NOT NULL THEN p.output END AS parent_output
      FROM parent_settled p
      JOIN task_dependency e ON e.parent_task_id = p.task_id
     ORDER BY e.task_id, p.trace_id, p.task_id, p.id
),
dep_arrived AS (
    INSERT INTO dependency_arrival AS a (task_id, trace_id, parent_task_id, outcome, met, parent_due_work_id,
                                         parent_run_id, params_template, parent_params, parent_output, arrived_at)
    SELECT h.task_id, h.trace_id, h.parent_task_id, h.outcome, h.met, h.parent_due_work_id, h.run_id, h.template,
           h.parent_params, h.parent_output, (SELECT now FROM clock)
      FROM dep_hit h
        ON CONFLICT (task_id, trace_id, parent_task_id) DO UPDATE
       SET outcome = excluded.outcome, met = excluded.met, parent_due_work_id = excluded.parent_due_work_id,
           parent_run_id = excluded.parent_run_id, settlements = a.settlements + 1,
           params_template = excluded.params_template, parent_params = excluded.parent_params,
           parent_output = excluded.parent_output, arrived_at = excluded.arrived_at
     WHERE a.met IS DISTINCT FROM excluded.met
    RETURNING a.task_id, a.trace_id, a.met, a.settlements = 1 AS first
),
dep_child AS (
    SELECT t.id, t.status FROM task t WHERE t.id IN (SELECT task_id FROM dep_arrived) FOR SHARE
),
dep_delta AS (
    SELECT a.task_id, a.trace_id,
           sum(CASE WHEN a.first THEN 1 ELSE 0 END)::integer AS arrived,
           sum(CASE WHEN NOT a.met THEN 1 WHEN a.first THEN 0 ELSE -1 END)::integer AS unmet,
           (SELECT count(*) FROM task_dependency e WHERE e.task_id = a.task_id)::integer AS expected,
           c.status AS child_status
      FROM dep_arrived a
      LEFT JOIN dep_child c ON c.id = a.task_id
     GROUP BY a.task_id, a.trace_id, c.status
),
dep_gate AS (
    INSERT INTO dependency_gate AS g (task_id, trace_id, expected, arrived, unmet, state, just_fired,
                                      dependent_status, created_at, decided_at)
    SELECT d.task_id, d.trace_id, d.expected, d.arrived, d.unmet, s.state, s.state = 'fired', d.child_status,
           (SELECT now FROM clock), CASE WHEN s.state <> 'waiting' THEN (SELECT now FROM clock) END
      FROM dep_delta d,
           LATERAL (SELECT dependency_gate_state(d.arrived, d.expected, d.unmet, d.child_status) AS state) s
        ON CONFLICT (task_id, trace_id) DO UPDATE
       SET arrived = g.arrived + excluded.arrived,
           unmet = g.unmet + excluded.unmet,
           state = CASE WHEN g.state IN ('fired', 'dropped') THEN g.state
                        ELSE dependency_gate_state(g.arrived + excluded.arrived, g.expected,
                                                   g.unmet + excluded.unmet, excluded.dependent_status) END,
           just_fired = g.state NOT IN ('fired', 'dropped')
                        AND dependency_gate_state(g.arrived + excluded.arrived, g.expected, g.unmet + excluded.unmet,
                                                  excluded.dependent_status) = 'fired',
           dependent_status = excluded.dependent_status,
           decided_at = CASE WHEN g.state IN ('fired', 'dropped') THEN g.decided_at
                             ELSE (SELECT now FROM clock) END
    RETURNING g.task_id, g.trace_id, g.just_fired
),
dep_fired AS (
    INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup,
                          misfire_grace_seconds, trigger, trace_id)
    SELECT t.id, (SELECT now FROM clock), (SELECT now FROM clock), t.priority,
           coalesce(t.concurrency_key, CASE WHEN t.overlap <> 'allow' THEN 'task:' || t.id::text END),
           t.overlap, t.catchup, t.misfire_grace_seconds, 'dependency', g.trace_id
      FROM dep_gate g
      JOIN task t ON t.id = g.task_id
     WHERE g.just_fired
    RETURNING id
)
"#
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
    RETURNING d.id
),
recorded AS (
    INSERT INTO task_run (task_id, due_work_id, attempt, worker_id, trigger, scheduled_for, started_at,
                          finished_at, success, error, error_kind, event_id, event, trace_id)
    SELECT x.task_id, x.id, x.attempt, x.locked_by,
           CASE WHEN x.attempt > 1 THEN 'retry' ELSE x.trigger END, x.run_at, NULL::timestamptz,
           (SELECT now FROM clock), false,
           'the lease of worker ' || coalesce(x.locked_by, '?') || ' expired at '
               || x.locked_until::text || ' without a completion',
           'lease_expired', x.event_id, x.event, x.trace_id
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
           x.action, x.event_id, x.event, x.trace_id
      FROM decided x
     WHERE x.action IN ('misfired', 'overlap_skipped')
    RETURNING id, due_work_id, attempt
),
-- A lease that expired on the last attempt is the parent's final failure: its dependents are decided here.
parent_settled AS (
    SELECT x.id, x.task_id, x.trace_id, x.params, 'dead'::text AS outcome, NULL::jsonb AS output,
           ((SELECT jsonb_object_agg(r.due_work_id::text, r.id) FROM recorded r WHERE r.attempt > 0)
               ->> x.id::text)::bigint AS run_id
      FROM decided x
     WHERE x.action = 'lease_exhausted'
       AND EXISTS (SELECT 1 FROM task_dependency e WHERE e.parent_task_id = x.task_id)
),
"#,
    fire_dependents!(),
    r#"
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
    if rows.first().map(|r| r.get::<_, bool>(19)).unwrap_or(true) {
        return Ok(outcome(&rows));
    }
    let stmt = client.prepare_cached(CLAIM_SQL).await?;
    let catchup_limit = crate::model::CATCHUP_ALL_LIMIT as i64;
    let rows = client
        .query(
            &stmt,
            &[&worker_id, &lease_seconds, &limit, &clock, &catchup_limit],
        )
        .await?;
    Ok(outcome(&rows))
}

/// Reads the answer of either claim statement (same leading columns).
fn outcome(rows: &[tokio_postgres::Row]) -> ClaimOutcome {
    let examined = rows.first().map(|r| r.get::<_, i64>(18)).unwrap_or(0);
    let claimed = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(0).is_some())
        .map(|r| ClaimedWork {
            id: r.get(0),
            task_id: r.get(1),
            run_at: r.get(2),
            ready_at: r.get(3),
            priority: r.get(4),
            concurrency_key: r.get(5),
            trigger: r.get(6),
            attempt: r.get(7),
            fencing_token: r.get(8),
            event_id: r.get(9),
            event: r.get(10),
            params: r.get(11),
            task_title: r.get(12),
            task_payload: r.get(13),
            timeout_seconds: r.get(14),
            max_retries: r.get(15),
            backoff_strategy: r.get(16),
            claimed_at: r.get(17),
        })
        .collect();
    ClaimOutcome { claimed, examined }
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
/// the fencing token still matches, and a dead row only once), their concurrency slots released, one task_run per
/// accepted attempt inserted, and the dependents of the rows that reached their final outcome released
/// ([`fire_dependents`]) in the same transaction. $1 clock, $2 worker id, then the columns of the batch as arrays.
pub const COMPLETE_SQL: &str = concat!(
    r#"WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
input AS (
    SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::float8[], $7::timestamptz[],
                         $8::timestamptz[], $9::text[], $10::text[], $11::jsonb[])
                  AS i(id, fencing, outcome, delay, started_at, finished_at, error, error_kind, output)
),
finished AS (
    DELETE FROM due_work d
     USING input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'succeeded'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event,
              d.trace_id, d.params
),
retried AS (
    UPDATE due_work d
       SET ready_at = (SELECT now FROM clock) + make_interval(secs => i.delay),
           locked_by = NULL, locked_until = NULL, last_error = i.error, last_error_kind = i.error_kind
      FROM input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'retry' AND d.state = 'pending'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event,
              d.trace_id, d.params
),
buried AS (
    UPDATE due_work d
       SET state = 'dead', dead_at = (SELECT now FROM clock), locked_by = NULL, locked_until = NULL,
           last_error = i.error, last_error_kind = i.error_kind
      FROM input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'dead' AND d.state = 'pending'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event,
              d.trace_id, d.params
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
                          finished_at, success, error, error_kind, output, event_id, event, trace_id)
    SELECT x.task_id, x.id, x.attempt, $2, CASE WHEN x.attempt > 1 THEN 'retry' ELSE x.trigger END, x.run_at,
           i.started_at, i.finished_at, i.outcome = 'succeeded', i.error, i.error_kind, i.output, x.event_id, x.event,
           x.trace_id
      FROM settled x
      JOIN input i ON i.id = x.id
     WHERE EXISTS (SELECT 1 FROM task t WHERE t.id = x.task_id)
    RETURNING id, due_work_id
),
-- The run ids come from one aggregate of `recorded` (an init plan, evaluated only when a row has dependents): a join
-- with the CTE is planned as a nested loop (no statistics), quadratic in the batch.
parent_settled AS (
    SELECT x.id, x.task_id, x.trace_id, x.params, i.outcome, i.output,
           ((SELECT jsonb_object_agg(r.due_work_id::text, r.id) FROM recorded r) ->> x.id::text)::bigint AS run_id
      FROM settled x
      JOIN input i ON i.id = x.id
     WHERE i.outcome IN ('succeeded', 'dead')
       AND EXISTS (SELECT 1 FROM task_dependency e WHERE e.parent_task_id = x.task_id)
),
"#,
    fire_dependents!(),
    r#"
SELECT id, (SELECT count(*) FROM dep_fired) FROM settled
"#
);

/// What a completion statement did.
#[derive(Debug, Default)]
pub struct CompleteOutcome {
    /// The ids that were accepted (the others lost their lease to a newer claim, or their task was deleted, and
    /// are discarded).
    pub accepted: Vec<i64>,
    /// Dependent due_work rows this statement inserted (the caller wakes workers for them after it returns).
    pub dependents_fired: i64,
}

/// Writes a batch of completions.
pub async fn complete_batch(
    client: &impl GenericClient,
    worker_id: &str,
    batch: &[Completion],
    clock: Option<DateTime<Utc>>,
) -> Result<CompleteOutcome, tokio_postgres::Error> {
    if batch.is_empty() {
        return Ok(CompleteOutcome::default());
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
    Ok(CompleteOutcome {
        accepted: rows.iter().map(|r| r.get(0)).collect(),
        dependents_fired: rows.first().map(|r| r.get(1)).unwrap_or(0),
    })
}

/// One parent's final outcome as a dependent run sees it: what its edge's `params` templates render from.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub parent_task_id: Uuid,
    pub parent_title: Option<String>,
    pub parent_name: Option<String>,
    /// `succeeded` or `dead`.
    pub outcome: String,
    pub parent_due_work_id: i64,
    pub parent_run_id: Option<i64>,
    pub template: Value,
    pub parent_params: Option<Value>,
    pub parent_output: Option<Value>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub trace_id: Uuid,
}

/// The parents of a dependent row whose edges carry `params` templates, in the order of the dependent's `after`.
pub const UPSTREAM_SQL: &str = r#"
SELECT a.parent_task_id, t.title, t.name, a.outcome, a.parent_due_work_id, a.parent_run_id, a.params_template,
       a.parent_params, a.parent_output, r.error, r.error_kind, d.trace_id
  FROM due_work d
  JOIN dependency_arrival a ON a.task_id = d.task_id AND a.trace_id = d.trace_id
  LEFT JOIN task t ON t.id = a.parent_task_id
  LEFT JOIN task_run r ON r.id = a.parent_run_id
  LEFT JOIN task_dependency e ON e.task_id = a.task_id AND e.parent_task_id = a.parent_task_id
 WHERE d.id = $1 AND a.params_template IS NOT NULL
 ORDER BY e.position NULLS LAST, a.parent_task_id
"#;

pub async fn upstream(
    client: &impl GenericClient,
    due_work_id: i64,
) -> Result<Vec<Upstream>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(UPSTREAM_SQL).await?;
    let rows = client.query(&stmt, &[&due_work_id]).await?;
    Ok(rows
        .iter()
        .map(|r| Upstream {
            parent_task_id: r.get(0),
            parent_title: r.get(1),
            parent_name: r.get(2),
            outcome: r.get(3),
            parent_due_work_id: r.get(4),
            parent_run_id: r.get(5),
            template: r.get(6),
            parent_params: r.get(7),
            parent_output: r.get(8),
            error: r.get(9),
            error_kind: r.get(10),
            trace_id: r.get(11),
        })
        .collect())
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
    Ok(rows.iter().map(|r| r.get(0)).collect())
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
    Ok(rows.iter().map(|r| r.get(0)).collect())
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
) - (SELECT now FROM clock))::float8
"#;

pub async fn seconds_until_next_wake(
    client: &impl GenericClient,
    clock: Option<DateTime<Utc>>,
) -> Result<Option<f64>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(NEXT_WAKE_SQL).await?;
    let row = client.query_one(&stmt, &[&clock]).await?;
    Ok(row.get(0))
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
    state: &str,
    clock: Option<DateTime<Utc>>,
) -> Result<(), tokio_postgres::Error> {
    let stmt = client.prepare_cached(HEARTBEAT_SQL).await?;
    client
        .execute(
            &stmt,
            &[
                &worker_id, &hostname, &pid, &processed, &failed, &in_flight, &state, &clock,
            ],
        )
        .await?;
    Ok(())
}
