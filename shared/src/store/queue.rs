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
    /// `locked_until` as the claim wrote it.
    pub lease_expires_at: DateTime<Utc>,
    /// The database clock as the claim statement produced its rows, after every write of the claim (anchor for
    /// started_at / queue lag; at or after `now()` of the claim, hence at or after every claimed `ready_at`).
    pub claimed_at: DateTime<Utc>,
    /// Claimed through a `max_concurrency` place of its queue: finishing it gives the place back
    /// ([`drop_places`]) and is worth a wake-up hint to idle workers.
    pub limited: bool,
    /// The instant its queue's rate limit granted the start, when that is later than `claimed_at`: a window that
    /// was full at the claim but frees within [`GRANT_AHEAD_SECONDS`] is granted ahead, and the worker holds the row
    /// until this instant (database clock) before it starts it.
    pub not_before: Option<DateTime<Utc>>,
}

/// How far ahead a full rate window of a queue (without a per-key limit) is granted: `$7` of
/// [`CLAIM_FLOW_SQL`], passed to `queue_flow_grant` (migration V12).
pub const GRANT_AHEAD_SECONDS: f64 = 0.1;
/// How much earlier than a queue window's `next_room` an idle worker claims (`$3` of [`NEXT_WAKE_SQL`]): within the
/// horizon, so that the claim finds the room granted ahead and the rows start on the instant.
pub const GRANT_LEAD_SECONDS: f64 = 0.05;

// The claim exists in two forms that must agree word for word on which rows are candidates, what claiming
// writes and what the answer holds; these macros keep those parts in one place.

/// Clock and candidates: ready rows, unleased or with an expired lease, whose concurrency key is free, in the
/// order of the `due_work_claim` index, locked with `SKIP LOCKED`; rows of constrained queues are left to
/// [`CLAIM_FLOW_SQL`].
///
/// The queue filter is written `(d.queue || '') <> ALL (...)` on purpose: on the bare column, PostgreSQL
/// estimates `queue <> <unknown>` as `1 − 1/n_distinct(queue)`, which is 0 when every row is in `default`; it then
/// expected one candidate, planned a bitmap scan of every ready row plus a sort (and JIT), and a 500-row claim
/// took ~300 ms instead of ~1 ms. On an expression it uses the default selectivity (≈ all rows pass), and the
/// plan stays main's: the `due_work_claim` index in order, stopping at the LIMIT.
macro_rules! claim_head {
    ($filter:expr, $served_q:literal, $served_d:literal) => {
        concat!(
            r#"
WITH clock AS (SELECT coalesce($4::timestamptz, now()) AS now),
closed AS (
    SELECT coalesce(array_agg(q.name), '{}'::text[]) AS names, coalesce(bool_or(NOT q.paused), false) AS limited
      FROM queue q
     WHERE (q.paused OR q.max_concurrency IS NOT NULL OR q.rate_limit IS NOT NULL OR q.key_rate_limit IS NOT NULL)"#,
            $served_q,
            r#"
),
candidate AS (
    SELECT d.id, d.task_id, d.run_at, d.ready_at, d.priority, d.concurrency_key, d.overlap, d.catchup,
           d.misfire_grace_seconds, d.trigger, d.attempt, d.locked_by, d.locked_until, d.event_id, d.event,
           d.trace_id, d.params
      FROM due_work d
     WHERE d.state = 'pending' AND "#,
            $filter,
            r#"
       AND d.ready_at <= (SELECT now FROM clock)"#,
            $served_d,
            r#"
       AND (d.locked_until IS NULL OR d.locked_until < (SELECT now FROM clock))
       AND (d.concurrency_key IS NULL OR d.overlap = 'skip' OR NOT EXISTS (
                SELECT 1 FROM concurrency_slot s
                 WHERE s.key = d.concurrency_key AND s.locked_until >= (SELECT now FROM clock)
                   AND s.due_work_id <> d.id))
     ORDER BY d.priority, d.ready_at, d.id
     LIMIT $3
       FOR UPDATE OF d SKIP LOCKED
),
"#
        )
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
    ($extra:literal) => {
        concat!(
            r#"    UPDATE due_work d
       SET locked_by = $1,
           locked_until = (SELECT now FROM clock) + make_interval(secs => $2),
           fencing_token = nextval('due_work_fencing'),
           attempt = d.attempt + 1"#,
            $extra,
            r#"
"#
        )
    };
}

/// Prepares a connection for claims that commit asynchronously (`synchronous_commit = off`), as the worker's
/// claimer does. Run once on every new connection, before its first claim.
///
/// A claim committed asynchronously can be lost in a PostgreSQL crash, and with it the WAL record that advanced
/// `due_work_fencing`: after recovery the sequence hands out the lost claim's tokens again, often to the same rows
/// in the same order. A worker still holding a lost claim's (row, token) would then have its completion accepted
/// while another claim of that row with the same token is running. A crash breaks every connection, so each
/// claimer passes through here before it claims again: the sequence is moved a million values past anything a
/// lost claim can have taken (the lost window is the WAL not yet flushed, well under a second of claims), in a
/// transaction that commits synchronously with an xid of its own so that its commit flushes the WAL. An advisory
/// lock keeps two workers reconnecting at once from moving the sequence backwards.
pub const CLAIM_SESSION_SQL: &str = "BEGIN;
SELECT pg_current_xact_id();
SELECT pg_advisory_xact_lock(hashtext('orrery.due_work_fencing'));
SELECT setval('due_work_fencing', (SELECT last_value FROM due_work_fencing) + 1000000);
COMMIT;
SET synchronous_commit = off;
SET jit = off";

/// Runs [`CLAIM_SESSION_SQL`] on `client`. JIT goes off too: the flow claim's estimates (a lateral scan per
/// constrained queue) can exceed the JIT thresholds, and compiling it took seconds per claim on a busy 2-vCPU
/// host; no claim needs JIT.
pub async fn start_claim_session(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(CLAIM_SESSION_SQL).await
}

/// What a claim returns of the rows it stamped.
macro_rules! claim_returning {
    () => {
        r#"    RETURNING d.id, d.task_id, d.run_at, d.ready_at, d.priority, d.concurrency_key, d.trigger, d.attempt,
              d.fencing_token, d.event_id, d.event, d.params, d.locked_until, d.queue
"#
    };
}

/// The answer's columns, read by [`outcome`]: the claimed rows with their task, the clock, whether the row holds
/// a `max_concurrency` place, then `examined`, `simple` and `limited`, which each form appends with its own FROM.
macro_rules! claim_answer {
    ($limited_row:literal) => {
        concat!(
            r#"SELECT c.id, c.task_id, c.run_at, c.ready_at, c.priority, c.concurrency_key, c.trigger, c.attempt,
       c.fencing_token, c.event_id, c.event, c.params,
       t.title AS task_title, t.payload AS task_payload, t.timeout_seconds, t.max_retries, t.backoff_strategy,
       c.locked_until AS lease_expires_at, coalesce($4::timestamptz, clock_timestamp()) AS claimed_at, "#,
            $limited_row,
            " AS holds_place, "
        )
    };
}

/// The built-in worker's candidates: only work that no external worker runs (`external_queue IS NULL` is the
/// `due_work_claim` index predicate, so the plan is that index's scan), outside the constrained queues that only
/// [`CLAIM_FLOW_SQL`] claims.
macro_rules! builtin_filter {
    () => {
        "d.external_queue IS NULL AND (d.queue || '') <> ALL ((SELECT names FROM closed)::text[])"
    };
}

/// The fast form (see [`CLAIM_FAST_SQL`]) with the queue filters of [`claim_head`].
macro_rules! claim_fast {
    ($filter:expr, $extra:literal, $served_q:literal, $served_d:literal) => {
        concat!(
            claim_head!($filter, $served_q, $served_d),
            r#"verdict AS (
    SELECT count(*) AS examined,
           coalesce(bool_and(c.concurrency_key IS NULL AND c.locked_until IS NULL AND NOT ("#,
            claim_misfired!(),
            r#")), true) AS simple
      FROM candidate c
),
claimed AS (
"#,
            claim_stamp!($extra),
            r#"      FROM candidate c
     WHERE d.id = c.id AND (SELECT simple FROM verdict)
"#,
            claim_returning!(),
            r#")
"#,
            claim_answer!("false"),
            r#"v.examined, v.simple, (SELECT limited FROM closed) AS limited, NULL::timestamptz AS not_before
  FROM verdict v
  LEFT JOIN (claimed c JOIN task t ON t.id = c.task_id) ON true
 ORDER BY c.priority, c.ready_at, c.id
"#
        )
    };
}

/// Candidates decided on by the policies: misfire, exhausted lease, then concurrency slots (a slot already held
/// by the candidate itself, left by a claim whose queue made it wait, is its own). `$catchup` is the parameter
/// carrying the catch-up `all` limit.
macro_rules! claim_policies {
    ($catchup:literal) => {
        concat!(
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
                                 LIMIT "#,
            $catchup,
            r#") newer) >= "#,
            $catchup,
            r#"
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
        OR s.due_work_id = excluded.due_work_id
    RETURNING s.due_work_id
),
"#
        )
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
                          misfire_grace_seconds, trigger, trace_id, queue, rate_key, external_queue)
    SELECT t.id, (SELECT now FROM clock), (SELECT now FROM clock), t.priority,
           coalesce(t.concurrency_key, CASE WHEN t.overlap <> 'allow' THEN 'task:' || t.id::text END),
           t.overlap, t.catchup, t.misfire_grace_seconds, 'dependency', g.trace_id, t.queue,
           orrery_rate_key(t.rate_key, t.payload->'params', NULL), t.external_queue
      FROM dep_gate g
      JOIN task t ON t.id = g.task_id
     WHERE g.just_fired
    RETURNING id, queue, external_queue
)
"#
    };
}

/// What the decisions write: claimed rows stamped, misfires and skipped overlaps deleted, exhausted leases
/// buried, lost attempts and drops recorded.
macro_rules! claim_writes {
    ($extra:literal) => {
        concat!(
            r#"claimed AS (
"#,
    claim_stamp!($extra),
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
     WHERE x.locked_until IS NOT NULL AND x.attempt > 0 AND x.action NOT IN ('wait', 'flow_wait')
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
"#
        )
    };
}

/// The full form (see [`CLAIM_SQL`]) with the queue filters of [`claim_head`].
macro_rules! claim_full {
    ($filter:expr, $extra:literal, $served_q:literal, $served_d:literal) => {
        concat!(
            claim_head!($filter, $served_q, $served_d),
            claim_policies!("$5"),
            r#"decided AS (
    SELECT c.*,
           CASE
             WHEN c.drop_kind IS NOT NULL THEN c.drop_kind
             WHEN c.concurrency_key IS NULL OR c.id IN (SELECT due_work_id FROM slot) THEN 'claim'
             WHEN c.overlap = 'skip' THEN 'overlap_skipped'
             ELSE 'wait'
           END AS action
      FROM classified c
),
"#,
            claim_writes!($extra),
            claim_answer!("false"),
            r#"n.examined, true AS simple, (SELECT limited FROM closed) AS limited, NULL::timestamptz AS not_before
  FROM (SELECT count(*) AS examined FROM candidate) n
  LEFT JOIN (claimed c JOIN task t ON t.id = c.task_id) ON true
 ORDER BY c.priority, c.ready_at, c.id
"#
        )
    };
}

/// The common case of the claim, planned in a fraction of the time of [`CLAIM_SQL`]: when every candidate is a
/// plain row (no concurrency key, no expired lease of an earlier attempt, not a schedule fire past its misfire
/// grace), it claims them exactly as [`CLAIM_SQL`] would. Otherwise it claims nothing, answers
/// `simple = false`, and [`claim_batch`] runs [`CLAIM_SQL`], which applies the policies (the candidates' row
/// locks end with this statement's transaction). Same parameters as [`CLAIM_SQL`] but the last.
///
/// Both forms leave alone the rows of constrained queues (paused, or with a concurrency or rate limit), which
/// only [`CLAIM_FLOW_SQL`] claims; with no constrained queue the filter is `queue <> ALL ('{}')` and the claim
/// is what it was before queues existed. Both answer whether an open constrained queue exists (`limited`).
pub const CLAIM_FAST_SQL: &str = claim_fast!(builtin_filter!(), "", "", "");

/// [`CLAIM_FAST_SQL`] for a worker serving only the queues in $5 (`WORKER_QUEUES`).
pub const CLAIM_FAST_SERVED_SQL: &str = claim_fast!(
    builtin_filter!(),
    "",
    "\n       AND q.name = ANY ($5::text[])",
    "\n       AND d.queue = ANY ($5::text[])"
);

/// The claim statement with every policy. $1 worker id, $2 lease seconds, $3 batch size, $4 clock
/// (NULL = now()), $5 the catch-up `all` limit.
pub const CLAIM_SQL: &str = claim_full!(builtin_filter!(), "", "", "");

/// [`CLAIM_SQL`] for a worker serving only the queues in $6 (`WORKER_QUEUES`).
pub const CLAIM_SERVED_SQL: &str = claim_full!(
    builtin_filter!(),
    "",
    "\n       AND q.name = ANY ($6::text[])",
    "\n       AND d.queue = ANY ($6::text[])"
);

/// The claim of constrained queues that are open (not paused, with room): candidates are taken per queue
/// through `due_work_queue_claim`, at most as many as the queue has room for (so work over a limit is not even
/// locked), skipping rate keys whose window is full; the policies apply as in [`CLAIM_SQL`]; then the rows ask
/// their rate key's flow row and their queue's flow row for a grant (`queue_flow_grant`, inside
/// `INSERT ... ON CONFLICT DO UPDATE`, so concurrent claimers serialize on that row and never both take the last
/// unit). Rows refused stay pending untouched (`flow_wait`). A start granted by its key but refused by its
/// queue (a race between claimers) still counts in its key's window: limits are never exceeded, and only then
/// under-used. $1..$5 as [`CLAIM_SQL`], $6 the queues served (NULL = all), $7
/// [`GRANT_AHEAD_SECONDS`].
pub const CLAIM_FLOW_SQL: &str = concat!(
    r#"
WITH clock AS (SELECT coalesce($4::timestamptz, now()) AS now),
open AS (
    SELECT q.name, q.max_concurrency, q.rate_limit, q.rate_period_seconds, q.key_rate_limit,
           q.key_rate_period_seconds,
           least($3::bigint,
                 coalesce(q.max_concurrency
                          - (SELECT count(*) FROM unnest(f.running_until) AS u WHERE u >= (SELECT now FROM clock)),
                          $3::bigint),
                 -- The room the window will have within the grant-ahead horizon (queue_flow_grant decides).
                 coalesce(q.rate_limit
                          - (SELECT coalesce(sum(x.n), 0) FROM unnest(f.start_at, f.start_n) AS x(s, n)
                              WHERE x.s > (SELECT now FROM clock)
                                          + CASE WHEN q.key_rate_limit IS NULL THEN make_interval(secs => $7)
                                                 ELSE interval '0' END
                                          - make_interval(secs => q.rate_period_seconds)),
                          $3::bigint)) AS room
      FROM queue q
      LEFT JOIN queue_flow f ON f.queue = q.name AND f.rate_key = ''
     WHERE NOT q.paused
       AND (q.max_concurrency IS NOT NULL OR q.rate_limit IS NOT NULL OR q.key_rate_limit IS NOT NULL)
       AND ($6::text[] IS NULL OR q.name = ANY ($6::text[]))
),
candidate AS (
    SELECT d.*
      FROM open o
     CROSS JOIN LATERAL (
        SELECT d.id, d.task_id, d.run_at, d.ready_at, d.priority, d.concurrency_key, d.overlap, d.catchup,
               d.misfire_grace_seconds, d.trigger, d.attempt, d.locked_by, d.locked_until, d.event_id, d.event,
               d.trace_id, d.params, d.queue, d.rate_key
          FROM due_work d
         WHERE d.queue = o.name
           AND d.external_queue IS NULL
           AND d.state = 'pending'
           AND d.ready_at <= (SELECT now FROM clock)
           AND (d.locked_until IS NULL OR d.locked_until < (SELECT now FROM clock))
           AND (d.concurrency_key IS NULL OR d.overlap = 'skip' OR NOT EXISTS (
                    SELECT 1 FROM concurrency_slot s
                     WHERE s.key = d.concurrency_key AND s.locked_until >= (SELECT now FROM clock)
                       AND s.due_work_id <> d.id))
           AND (d.rate_key IS NULL OR o.key_rate_limit IS NULL OR NOT EXISTS (
                    SELECT 1 FROM queue_flow k
                     WHERE k.queue = d.queue AND k.rate_key = d.rate_key
                       AND k.wait_until > (SELECT now FROM clock)))
         ORDER BY d.priority, d.ready_at, d.id
         LIMIT o.room
           FOR UPDATE OF d SKIP LOCKED) d
     WHERE o.room > 0
     -- At most the batch in all; also keeps the planner's estimate small (the `queue` table is rarely
     -- analyzed), so the rows are stamped through the primary key, not by hashing all of due_work.
     LIMIT $3
),
"#,
    claim_policies!("$5"),
    r#"asking AS (
    SELECT c.* FROM classified c
     WHERE c.drop_kind IS NULL AND (c.concurrency_key IS NULL OR c.id IN (SELECT due_work_id FROM slot))
),
key_grant AS (
    INSERT INTO queue_flow AS f (queue, rate_key, running, running_until, start_at, start_n, asked, granted,
                                 wait_until, next_room)
    SELECT a.queue, a.rate_key, g.*
      FROM (SELECT c.queue, c.rate_key, array_agg(c.id ORDER BY c.priority, c.ready_at, c.id) AS ids,
                   o.key_rate_limit, o.key_rate_period_seconds
              FROM asking c
              JOIN open o ON o.name = c.queue
             WHERE c.rate_key IS NOT NULL AND o.key_rate_limit IS NOT NULL
             GROUP BY c.queue, c.rate_key, o.key_rate_limit, o.key_rate_period_seconds) a,
           queue_flow_grant('{}', '{}', '{}', '{}', a.ids, NULL, a.key_rate_limit, a.key_rate_period_seconds,
                            $2, coalesce($4::timestamptz, clock_timestamp()), 0) g
        ON CONFLICT (queue, rate_key) DO UPDATE
       SET (running, running_until, start_at, start_n, asked, granted, wait_until, next_room) = (
           SELECT g.*
             FROM queue q,
                  queue_flow_grant(f.running, f.running_until, f.start_at, f.start_n, excluded.asked,
                                   NULL, q.key_rate_limit, q.key_rate_period_seconds,
                                   $2, coalesce($4::timestamptz, clock_timestamp()), 0) g
            WHERE q.name = excluded.queue)
    RETURNING f.asked[1:f.granted] AS granted_ids
),
keyed AS (
    SELECT c.* FROM asking c
      JOIN open o ON o.name = c.queue
     WHERE c.rate_key IS NULL OR o.key_rate_limit IS NULL
        OR c.id IN (SELECT unnest(granted_ids) FROM key_grant)
),
queue_grant AS (
    INSERT INTO queue_flow AS f (queue, rate_key, running, running_until, start_at, start_n, asked, granted,
                                 wait_until, next_room)
    SELECT a.queue, '', g.*
      FROM (SELECT c.queue, array_agg(c.id ORDER BY c.priority, c.ready_at, c.id) AS ids,
                   o.max_concurrency, o.rate_limit, o.rate_period_seconds
              FROM keyed c
              JOIN open o ON o.name = c.queue
             WHERE o.max_concurrency IS NOT NULL OR o.rate_limit IS NOT NULL
             GROUP BY c.queue, o.max_concurrency, o.rate_limit, o.rate_period_seconds) a,
           queue_flow_grant('{}', '{}', '{}', '{}', a.ids, a.max_concurrency, a.rate_limit, a.rate_period_seconds,
                            $2, coalesce($4::timestamptz, clock_timestamp()), 0) g
        ON CONFLICT (queue, rate_key) DO UPDATE
       SET (running, running_until, start_at, start_n, asked, granted, wait_until, next_room) = (
           SELECT g.*
             FROM queue q,
                  queue_flow_grant(f.running, f.running_until, f.start_at, f.start_n, excluded.asked,
                                   q.max_concurrency, q.rate_limit, q.rate_period_seconds,
                                   $2, coalesce($4::timestamptz, clock_timestamp()),
                                   CASE WHEN q.key_rate_limit IS NULL THEN $7::float8 ELSE 0 END) g
            WHERE q.name = excluded.queue)
    RETURNING f.queue, f.asked[1:f.granted] AS granted_ids,
              CASE WHEN f.granted > 0 THEN f.start_at[cardinality(f.start_at)] END AS granted_at
),
granted AS (
    SELECT c.id FROM keyed c
      JOIN open o ON o.name = c.queue
     WHERE (o.max_concurrency IS NULL AND o.rate_limit IS NULL)
        OR c.id IN (SELECT unnest(granted_ids) FROM queue_grant)
),
decided AS (
    SELECT c.*,
           CASE
             WHEN c.drop_kind IS NOT NULL THEN c.drop_kind
             WHEN c.concurrency_key IS NOT NULL AND c.id NOT IN (SELECT due_work_id FROM slot)
             THEN CASE WHEN c.overlap = 'skip' THEN 'overlap_skipped' ELSE 'wait' END
             WHEN c.id IN (SELECT id FROM granted) THEN 'claim'
             ELSE 'flow_wait'
           END AS action
      FROM classified c
),
"#,
    claim_writes!(""),
    claim_answer!(
        "c.id IS NOT NULL AND (SELECT o.max_concurrency IS NOT NULL FROM open o WHERE o.name = c.queue)"
    ),
    r#"n.examined, true AS simple, false AS limited,
       (SELECT g.granted_at FROM queue_grant g WHERE g.queue = c.queue) AS not_before
  FROM (SELECT count(*) FILTER (WHERE action <> 'flow_wait') AS examined FROM decided) n
  LEFT JOIN (claimed c JOIN task t ON t.id = c.task_id) ON true
 ORDER BY c.priority, c.ready_at, c.id
"#
);

/// Which rows an external claim may take: the first `$3` unleased ready rows of each named queue (`$queues`) in
/// claim order, read from the `due_work_external_claim` index one queue at a time (a plain
/// `external_queue = ANY(..)` cannot use the index's order and sorts the whole queue), of tasks created by
/// `$owner` (NULL = any owner: an admin caller). The rows are locked with `SKIP LOCKED` already here, so that
/// concurrent claims of one queue take successive rows instead of all picking the same head and coming back
/// empty. The claim then orders, locks and decides on these candidates exactly as the built-in claim does.
macro_rules! external_filter {
    ($queues:literal, $owner:literal) => {
        concat!(
            "d.id IN (
           SELECT x.id FROM unnest(",
            $queues,
            "::text[]) AS q(name),
                LATERAL (SELECT e.id FROM due_work e
                          WHERE e.state = 'pending' AND e.external_queue = q.name
                            AND e.ready_at <= (SELECT now FROM clock)
                            AND (e.locked_until IS NULL OR e.locked_until < (SELECT now FROM clock))
                            AND (",
            $owner,
            "::uuid IS NULL OR EXISTS (SELECT 1 FROM task o WHERE o.id = e.task_id AND o.created_by = ",
            $owner,
            "::uuid))
                          ORDER BY e.priority, e.ready_at, e.id
                          LIMIT $3
                            FOR UPDATE OF e SKIP LOCKED) x)"
        )
    };
}

/// An external worker's claim (`POST /jobs/claim`), fast form: queues $5, owner $6; also stamps `leased_at`
/// (the started_at of the attempt).
pub const CLAIM_EXTERNAL_FAST_SQL: &str = claim_fast!(
    external_filter!("$5", "$6"),
    ",
           leased_at = (SELECT now FROM clock)",
    "",
    ""
);

/// An external worker's claim with every policy (misfire, overlap, concurrency keys, expired leases), exactly
/// as the built-in worker's: queues $6, owner $7.
pub const CLAIM_EXTERNAL_SQL: &str = claim_full!(
    external_filter!("$6", "$7"),
    ",
           leased_at = (SELECT now FROM clock)",
    "",
    ""
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
    /// A queue this worker serves is constrained and open (not paused; a concurrency or rate limit): the next
    /// claim tries [`CLAIM_FLOW_SQL`] first.
    pub limited: bool,
    /// [`CLAIM_FLOW_SQL`] ran in this claim, and how many rows it claimed.
    pub flow_ran: bool,
    pub flow_claimed: usize,
    /// The fast (or full) form ran in this claim; `plain_examined` is what it examined.
    pub plain_ran: bool,
    pub plain_examined: i64,
}

impl ClaimOutcome {
    fn add(&mut self, other: ClaimOutcome) {
        self.claimed.extend(other.claimed);
        self.examined += other.examined;
    }

    fn add_flow(&mut self, other: ClaimOutcome) {
        self.flow_ran = true;
        self.flow_claimed += other.claimed.len();
        self.add(other);
    }
}

/// Claims up to `limit` ready rows for `worker_id` with a lease of `lease_seconds`.
///
/// `queues`: the queues served (`WORKER_QUEUES`), `None` for all. `flow_first`: run [`CLAIM_FLOW_SQL`] first
/// (the claimer asks for it while an open constrained queue exists and the flow claim is getting rows, and at
/// most every 100 ms otherwise, so work of limited queues is not starved by a backlog elsewhere); without it,
/// the flow claim runs only when the fast or full form reports such a queue ([`ClaimOutcome::limited`]) and
/// did not fill the batch. `plain = false` (with `flow_first`) skips the fast and full forms: the claimer asks
/// for that while they find nothing and the flow claim is getting rows, at most for 100 ms at a time, because
/// they read past every waiting row of the constrained queues. With no constrained queue, one statement runs,
/// as before queues.
#[allow(clippy::too_many_arguments)]
pub async fn claim_batch(
    client: &impl GenericClient,
    worker_id: &str,
    lease_seconds: f64,
    limit: i64,
    clock: Option<DateTime<Utc>>,
    queues: Option<&[String]>,
    flow_first: bool,
    plain: bool,
) -> Result<ClaimOutcome, tokio_postgres::Error> {
    let catchup_limit = crate::model::CATCHUP_ALL_LIMIT as i64;
    let flow = |limit: i64| async move {
        let stmt = client.prepare_cached(CLAIM_FLOW_SQL).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &worker_id,
                    &lease_seconds,
                    &limit,
                    &clock,
                    &catchup_limit,
                    &queues,
                    &GRANT_AHEAD_SECONDS,
                ],
            )
            .await?;
        outcome(&rows)
    };
    let mut total = ClaimOutcome::default();
    if flow_first {
        total.add_flow(flow(limit).await?);
        total.limited = true;
    }
    let rest = limit - total.claimed.len() as i64;
    if rest <= 0 || (flow_first && !plain) {
        return Ok(total);
    }
    total.plain_ran = true;
    let rows = match queues {
        None => {
            let fast = client.prepare_cached(CLAIM_FAST_SQL).await?;
            client
                .query(&fast, &[&worker_id, &lease_seconds, &rest, &clock])
                .await?
        }
        Some(q) => {
            let fast = client.prepare_cached(CLAIM_FAST_SERVED_SQL).await?;
            client
                .query(&fast, &[&worker_id, &lease_seconds, &rest, &clock, &q])
                .await?
        }
    };
    let simple = rows
        .first()
        .map(|r| r.get::<_, bool>("simple"))
        .unwrap_or(true);
    let rows = if simple {
        rows
    } else {
        match queues {
            None => {
                let stmt = client.prepare_cached(CLAIM_SQL).await?;
                client
                    .query(
                        &stmt,
                        &[&worker_id, &lease_seconds, &rest, &clock, &catchup_limit],
                    )
                    .await?
            }
            Some(q) => {
                let stmt = client.prepare_cached(CLAIM_SERVED_SQL).await?;
                client
                    .query(
                        &stmt,
                        &[
                            &worker_id,
                            &lease_seconds,
                            &rest,
                            &clock,
                            &catchup_limit,
                            &q,
                        ],
                    )
                    .await?
            }
        }
    };
    let mut plain = outcome(&rows)?;
    total.plain_examined = plain.examined;
    let limited = plain.limited;
    let examined_all = plain.examined >= rest;
    total.add(plain);
    total.limited = limited;
    if limited && !flow_first && !examined_all {
        let more = limit - total.claimed.len() as i64;
        if more > 0 {
            plain = flow(more).await?;
            total.add_flow(plain);
        }
    }
    Ok(total)
}

/// Claims up to `limit` ready rows of the external `queues` for an external worker (`locked_by` names it),
/// restricted to the tasks of `owner` unless None. The same two-step claim as [`claim_batch`].
#[allow(clippy::too_many_arguments)]
pub async fn claim_external_batch(
    client: &impl GenericClient,
    locked_by: &str,
    lease_seconds: f64,
    limit: i64,
    queues: &[String],
    owner: Option<Uuid>,
    clock: Option<DateTime<Utc>>,
) -> Result<ClaimOutcome, tokio_postgres::Error> {
    let fast = client.prepare_cached(CLAIM_EXTERNAL_FAST_SQL).await?;
    let rows = client
        .query(
            &fast,
            &[&locked_by, &lease_seconds, &limit, &clock, &queues, &owner],
        )
        .await?;
    if rows
        .first()
        .map(|r| r.get::<_, bool>("simple"))
        .unwrap_or(true)
    {
        return outcome(&rows);
    }
    let stmt = client.prepare_cached(CLAIM_EXTERNAL_SQL).await?;
    let catchup_limit = crate::model::CATCHUP_ALL_LIMIT as i64;
    let rows = client
        .query(
            &stmt,
            &[
                &locked_by,
                &lease_seconds,
                &limit,
                &clock,
                &catchup_limit,
                &queues,
                &owner,
            ],
        )
        .await?;
    outcome(&rows)
}

/// Reads the answer of any claim statement (same columns).
fn outcome(rows: &[tokio_postgres::Row]) -> Result<ClaimOutcome, tokio_postgres::Error> {
    let examined = rows
        .first()
        .map(|r| r.get::<_, i64>("examined"))
        .unwrap_or(0);
    let limited = rows
        .first()
        .map(|r| r.get::<_, bool>("limited"))
        .unwrap_or(false);
    // Columns by name, resolved once per answer (by-name lookups per row cost a scan of the ~25 columns each).
    let Some(first) = rows.first() else {
        return Ok(ClaimOutcome::default());
    };
    let col = |name: &str| {
        first
            .columns()
            .iter()
            .position(|c| c.name() == name)
            .unwrap_or_else(|| panic!("claim answer without a {name} column"))
    };
    let c_id = col("id");
    let c_task_id = col("task_id");
    let c_run_at = col("run_at");
    let c_ready_at = col("ready_at");
    let c_priority = col("priority");
    let c_concurrency_key = col("concurrency_key");
    let c_trigger = col("trigger");
    let c_attempt = col("attempt");
    let c_fencing_token = col("fencing_token");
    let c_event_id = col("event_id");
    let c_event = col("event");
    let c_params = col("params");
    let c_task_title = col("task_title");
    let c_task_payload = col("task_payload");
    let c_timeout_seconds = col("timeout_seconds");
    let c_max_retries = col("max_retries");
    let c_backoff_strategy = col("backoff_strategy");
    let c_lease_expires_at = col("lease_expires_at");
    let c_claimed_at = col("claimed_at");
    let c_holds_place = col("holds_place");
    let c_not_before = col("not_before");
    let claimed = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(c_id).is_some())
        .map(|r| {
            Ok(ClaimedWork {
                id: r.try_get(c_id)?,
                task_id: r.try_get(c_task_id)?,
                run_at: r.try_get(c_run_at)?,
                ready_at: r.try_get(c_ready_at)?,
                priority: r.try_get(c_priority)?,
                concurrency_key: r.try_get(c_concurrency_key)?,
                trigger: r.try_get(c_trigger)?,
                attempt: r.try_get(c_attempt)?,
                fencing_token: r.try_get(c_fencing_token)?,
                event_id: r.try_get(c_event_id)?,
                event: r.try_get(c_event)?,
                params: r.try_get(c_params)?,
                task_title: r.try_get(c_task_title)?,
                task_payload: r.try_get(c_task_payload)?,
                timeout_seconds: r.try_get(c_timeout_seconds)?,
                max_retries: r.try_get(c_max_retries)?,
                backoff_strategy: r.try_get(c_backoff_strategy)?,
                lease_expires_at: r.try_get(c_lease_expires_at)?,
                claimed_at: r.try_get(c_claimed_at)?,
                limited: r
                    .try_get::<_, Option<bool>>(c_holds_place)?
                    .unwrap_or(false),
                not_before: r.try_get(c_not_before)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(ClaimOutcome {
        claimed,
        examined,
        limited,
        ..ClaimOutcome::default()
    })
}

/// Gives back the `max_concurrency` places of rows that finished (after their completion committed; a place
/// left behind by a crash expires with the row's lease).
pub const DROP_PLACES_SQL: &str = r#"
UPDATE queue_flow f
   SET (running, running_until) = (SELECT * FROM queue_flow_drop(f.running, f.running_until, $1::bigint[]))
 WHERE f.rate_key = '' AND f.running && $1::bigint[]
"#;

pub async fn drop_places(
    client: &impl GenericClient,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let stmt = client.prepare_cached(DROP_PLACES_SQL).await?;
    client.execute(&stmt, &[&ids]).await
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
-- One completion per (row, fencing token): a batch can hold the same row twice (a row claimed again by the same
-- worker after its earlier claim was lost), and a duplicate must not record a second run.
input AS (
    SELECT DISTINCT ON (id, fencing) *
      FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::float8[], $7::timestamptz[],
                  $8::timestamptz[], $9::text[], $10::text[], $11::jsonb[])
           AS i(id, fencing, outcome, delay, started_at, finished_at, error, error_kind, output)
),
finished AS (
    DELETE FROM due_work d
     USING input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'succeeded'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event,
              d.trace_id, d.params, d.fencing_token
),
retried AS (
    UPDATE due_work d
       SET ready_at = (SELECT now FROM clock) + make_interval(secs => i.delay),
           locked_by = NULL, locked_until = NULL, last_error = i.error, last_error_kind = i.error_kind
      FROM input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'retry' AND d.state = 'pending'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event,
              d.trace_id, d.params, d.fencing_token
),
buried AS (
    UPDATE due_work d
       SET state = 'dead', dead_at = (SELECT now FROM clock), locked_by = NULL, locked_until = NULL,
           last_error = i.error, last_error_kind = i.error_kind
      FROM input i
     WHERE d.id = i.id AND d.fencing_token = i.fencing AND i.outcome = 'dead' AND d.state = 'pending'
    RETURNING d.id, d.task_id, d.run_at, d.trigger, d.attempt, d.concurrency_key, d.event_id, d.event,
              d.trace_id, d.params, d.fencing_token
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
      JOIN input i ON i.id = x.id AND i.fencing = x.fencing_token
     WHERE EXISTS (SELECT 1 FROM task t WHERE t.id = x.task_id)
    RETURNING id, due_work_id
),
-- The run ids come from one aggregate of `recorded` (an init plan, evaluated only when a row has dependents): a join
-- with the CTE is planned as a nested loop (no statistics), quadratic in the batch.
parent_settled AS (
    SELECT x.id, x.task_id, x.trace_id, x.params, i.outcome, i.output,
           ((SELECT jsonb_object_agg(r.due_work_id::text, r.id) FROM recorded r) ->> x.id::text)::bigint AS run_id
      FROM settled x
      JOIN input i ON i.id = x.id AND i.fencing = x.fencing_token
     WHERE i.outcome IN ('succeeded', 'dead')
       AND EXISTS (SELECT 1 FROM task_dependency e WHERE e.parent_task_id = x.task_id)
),
"#,
    fire_dependents!(),
    r#"
SELECT id, (SELECT count(*) FROM dep_fired) AS dependents_fired, fencing_token,
       (SELECT coalesce(array_agg(DISTINCT queue), '{}') FROM dep_fired WHERE external_queue IS NULL)
           AS dependent_queues
  FROM settled
"#
);

/// What a completion statement did.
#[derive(Debug, Default)]
pub struct CompleteOutcome {
    /// The (id, fencing token) pairs that were accepted (the others lost their lease to a newer claim, or their
    /// task was deleted, and are discarded).
    pub accepted: Vec<(i64, i64)>,
    /// Dependent due_work rows this statement inserted (the caller wakes workers for them after it returns).
    pub dependents_fired: i64,
    /// The queues of the dependents that built-in workers run (not external): a worker that serves them all and
    /// has the runners to spare takes them itself without waking the others.
    pub dependent_queues: Vec<String>,
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
        accepted: rows
            .iter()
            .map(|r| (r.get("id"), r.get("fencing_token")))
            .collect(),
        dependents_fired: rows.first().map(|r| r.get("dependents_fired")).unwrap_or(0),
        dependent_queues: rows
            .first()
            .map(|r| r.get("dependent_queues"))
            .unwrap_or_default(),
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
            parent_task_id: r.get("parent_task_id"),
            parent_title: r.get("title"),
            parent_name: r.get("name"),
            outcome: r.get("outcome"),
            parent_due_work_id: r.get("parent_due_work_id"),
            parent_run_id: r.get("parent_run_id"),
            template: r.get("params_template"),
            parent_params: r.get("parent_params"),
            parent_output: r.get("parent_output"),
            error: r.get("error"),
            error_kind: r.get("error_kind"),
            trace_id: r.get("trace_id"),
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
),
places AS (
    UPDATE queue_flow f
       SET running_until = (SELECT array_agg(coalesce(r.locked_until, x.u) ORDER BY x.o)
                              FROM unnest(f.running, f.running_until) WITH ORDINALITY AS x(i, u, o)
                              LEFT JOIN renewed r ON r.id = x.i)
      FROM (SELECT array_agg(id) AS ids FROM renewed) n
     WHERE f.rate_key = '' AND f.running && n.ids
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
),
places AS (
    UPDATE queue_flow f
       SET (running, running_until) = (SELECT * FROM queue_flow_drop(f.running, f.running_until, x.ids))
      FROM (SELECT array_agg(id) AS ids FROM released) x
     WHERE f.rate_key = '' AND f.running && x.ids
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

/// Forgets the flow rows of rate keys whose newest start left its window (their log is empty, so a fresh row
/// decides the same). Safe against a concurrent grant: a row the grant just wrote has a recent start, which
/// the DELETE re-checks on the latest version; a grant after the delete inserts a fresh row.
pub const PRUNE_KEYS_SQL: &str = r#"
DELETE FROM queue_flow f
 USING queue q
 WHERE q.name = f.queue AND f.rate_key <> ''
   AND coalesce(f.start_at[cardinality(f.start_at)], '-infinity')
       < coalesce($1::timestamptz, now()) - make_interval(secs => coalesce(q.key_rate_period_seconds, 0))
"#;

pub async fn prune_rate_keys(
    client: &impl GenericClient,
    clock: Option<DateTime<Utc>>,
) -> Result<u64, tokio_postgres::Error> {
    let stmt = client.prepare_cached(PRUNE_KEYS_SQL).await?;
    client.execute(&stmt, &[&clock]).await
}

/// Seconds until the next future `ready_at` (one index probe per priority of the claim index), NULL when
/// nothing is scheduled; and until the rate window of a queue or key has more room (`queue_flow.next_room`,
/// [`GRANT_LEAD_SECONDS`] early for a queue's own window, which is granted ahead). Expired leases are not predicted here: an idle worker re-checks at least every few
/// seconds and the claim takes them.
pub const NEXT_WAKE_SQL: &str = r#"
WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now)
SELECT extract(epoch FROM (
    SELECT min(n.ready_at)
      FROM generate_series(1, 9) AS p(priority),
           LATERAL (SELECT d.ready_at FROM due_work d
                     WHERE d.state = 'pending' AND d.external_queue IS NULL AND d.priority = p.priority
                       AND d.ready_at > (SELECT now FROM clock)
                     ORDER BY d.ready_at LIMIT 1) n
) - (SELECT now FROM clock))::float8 AS seconds,
       extract(epoch FROM (
    SELECT least(
        -- A queue's own window (a few rows), granted ahead unless the queue has a per-key limit.
        (SELECT min(w.at)
           FROM queue_flow f
           LEFT JOIN queue q ON q.name = f.queue,
                LATERAL (SELECT f.next_room - CASE WHEN q.key_rate_limit IS NULL THEN make_interval(secs => $3)
                                                   ELSE interval '0' END AS at) w
          WHERE f.rate_key = '' AND f.next_room IS NOT NULL
            AND w.at > (SELECT now FROM clock) - make_interval(secs => $2)),
        -- The earliest key window (the `queue_flow_wait` index, in order).
        (SELECT f.next_room FROM queue_flow f
          WHERE f.rate_key <> '' AND f.next_room > (SELECT now FROM clock) - make_interval(secs => $2)
          ORDER BY f.next_room LIMIT 1))
) - (SELECT now FROM clock))::float8 AS room_seconds
"#;

/// When to claim again: seconds until the next future `ready_at`, and until the earliest `next_room` of a rate
/// window that is later than `since` seconds ago (the start of the claim that found nothing). A window that
/// opened between that claim and this query answers ≤ 0: claim again at once rather than sleep past it (the
/// race left both workers of the rate-limit bench asleep for the 5 s cap). An opening older than the claim is
/// not returned again, so an empty limited queue is not polled.
pub async fn seconds_until_next_wake(
    client: &impl GenericClient,
    clock: Option<DateTime<Utc>>,
    since: f64,
) -> Result<(Option<f64>, Option<f64>), tokio_postgres::Error> {
    let stmt = client.prepare_cached(NEXT_WAKE_SQL).await?;
    let row = client
        .query_one(&stmt, &[&clock, &since, &GRANT_LEAD_SECONDS])
        .await?;
    Ok((row.get("seconds"), row.get("room_seconds")))
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

// --- External jobs ------------------------------------------------------------------------------------------
//
// Work of tasks whose pipeline is one `external` step is claimed over HTTP (`POST /jobs/claim`) by programs
// outside Orrery, with the claim statements above (`claim_external_batch`), and settled with the same
// `complete_batch` as the built-in worker's: the fencing token decides, and everything downstream (retries,
// dead work, task_run) is the same.

/// An external job as a heartbeat, completion or failure finds it.
#[derive(Debug, Clone)]
pub struct ExternalJob {
    pub id: i64,
    pub task_id: Uuid,
    pub fencing_token: i64,
    pub attempt: i32,
    pub state: String,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub leased_at: Option<DateTime<Utc>>,
    pub max_retries: i16,
    pub backoff_strategy: crate::model::BackoffStrategy,
    /// The database clock when it was read.
    pub now: DateTime<Utc>,
    /// The id of the task's external step (its result is stored under `steps.<id>`).
    pub step_id: Option<String>,
}

/// How a failed attempt settles: retried after the task's backoff while it is retryable and
/// `attempt ≤ max_retries` (so at most `max_retries + 1` attempts), otherwise dead. `jitter` ∈ [0, 1).
pub fn failure_settlement(
    retryable: bool,
    attempt: i32,
    max_retries: i16,
    strategy: crate::model::BackoffStrategy,
    base: f64,
    max: f64,
    jitter: f64,
) -> Settlement {
    if retryable && attempt <= max_retries as i32 {
        Settlement::Retry {
            delay_seconds: crate::model::backoff_delay(
                strategy,
                attempt.max(1) as u32,
                base,
                max,
                jitter,
            ),
        }
    } else {
        Settlement::Dead
    }
}

/// $1 job id, $2 owner (NULL = any), $3 clock. Only rows of external queues; the row is locked so that the
/// decision taken on it (settle or refuse) cannot race a claim.
pub const EXTERNAL_JOB_SQL: &str = r#"
SELECT d.id, d.task_id, d.fencing_token, d.attempt, d.state, d.locked_by, d.locked_until, d.leased_at,
       t.max_retries, t.backoff_strategy, coalesce($3::timestamptz, clock_timestamp()) AS now,
       t.payload #>> '{pipeline,0,id}' AS step_id
  FROM due_work d
  JOIN task t ON t.id = d.task_id
 WHERE d.id = $1 AND d.external_queue IS NOT NULL AND ($2::uuid IS NULL OR t.created_by = $2::uuid)
   FOR UPDATE OF d
"#;

pub async fn external_job(
    client: &impl GenericClient,
    id: i64,
    owner: Option<Uuid>,
    clock: Option<DateTime<Utc>>,
) -> Result<Option<ExternalJob>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(EXTERNAL_JOB_SQL).await?;
    Ok(client
        .query_opt(&stmt, &[&id, &owner, &clock])
        .await?
        .map(|r| ExternalJob {
            id: r.get("id"),
            task_id: r.get("task_id"),
            fencing_token: r.get("fencing_token"),
            attempt: r.get("attempt"),
            state: r.get("state"),
            locked_by: r.get("locked_by"),
            locked_until: r.get("locked_until"),
            leased_at: r.get("leased_at"),
            max_retries: r.get("max_retries"),
            backoff_strategy: r.get("backoff_strategy"),
            now: r.get("now"),
            step_id: r.get("step_id"),
        }))
}

/// Extends the lease of one external job (and its concurrency slot) to now + $4 seconds while the fencing token
/// matches and the lease has not expired, like [`RENEW_SQL`]: an expired lease may already have been taken by
/// another claim, or its concurrency slot by another run. $1 clock, $2 id, $3 fencing token, $5 owner.
pub const RENEW_EXTERNAL_SQL: &str = r#"
WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
renewed AS (
    UPDATE due_work d
       SET locked_until = (SELECT now FROM clock) + make_interval(secs => $4)
     WHERE d.id = $2 AND d.fencing_token = $3 AND d.state = 'pending' AND d.external_queue IS NOT NULL
       AND d.locked_until >= (SELECT now FROM clock)
       AND ($5::uuid IS NULL OR EXISTS (SELECT 1 FROM task t WHERE t.id = d.task_id AND t.created_by = $5::uuid))
    RETURNING d.id, d.concurrency_key, d.locked_until
),
slots AS (
    UPDATE concurrency_slot s
       SET locked_until = r.locked_until
      FROM renewed r
     WHERE s.key = r.concurrency_key AND s.due_work_id = r.id
)
SELECT locked_until FROM renewed
"#;

/// The new `locked_until`, or None when the job is not held with this token (or its lease already expired).
pub async fn renew_external(
    client: &impl GenericClient,
    id: i64,
    fencing_token: i64,
    lease_seconds: f64,
    owner: Option<Uuid>,
    clock: Option<DateTime<Utc>>,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(RENEW_EXTERNAL_SQL).await?;
    Ok(client
        .query_opt(
            &stmt,
            &[&clock, &id, &fencing_token, &lease_seconds, &owner],
        )
        .await?
        .map(|r| r.get("locked_until")))
}
