//! Turns active time-based tasks into `due_work` rows, exactly once.
//!
//! Each pass claims a batch of task rows with `FOR UPDATE SKIP LOCKED` (so any number of schedulers can run at
//! once without meeting), inserts every fire up to the look-ahead horizon with `run_at` = the nominal instant,
//! and advances the task's cursor (`materialized_until`, `next_fire_at`) in the same transaction. The partial
//! UNIQUE (task_id, run_at) index is the second guard. Fires already older than the task's grace window follow
//! its catch-up policy.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Pool;
use orrery::clock::Clock;
use orrery::lifecycle::{Action, PendingWork};
use orrery::model::{Catchup, Overlap, CATCHUP_ALL_LIMIT, SYSTEM_AGENT_ID};
use orrery::schedule::{parse_timezone, Schedule, ScheduleKind};
use uuid::Uuid;

/// More overdue fires than this in one catch-up are not enumerated one by one: the cursor jumps.
const MAX_CATCHUP_ITERATIONS: usize = 100_000;
/// Upper bound of fires inserted for one task in one pass (a SECONDLY rule with a long look-ahead).
const MAX_FIRES_PER_TASK: usize = 10_000;
/// Misfires recorded in `task_run` per task per pass (the metric counts all of them).
const MAX_MISFIRE_RECORDS: usize = 100;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub tasks: usize,
    pub fires: u64,
    pub misfires: usize,
    pub earliest: Option<DateTime<Utc>>,
}

struct Cached {
    key: (String, String, String, DateTime<Utc>),
    schedule: Schedule,
}

pub struct Materializer {
    pool: Pool,
    clock: Clock,
    lookahead: Duration,
    batch: i64,
    cache: Mutex<HashMap<Uuid, Cached>>,
}

/// What one task contributes to a pass.
#[derive(Debug, Default)]
struct TaskPlan {
    fires: Vec<(DateTime<Utc>, DateTime<Utc>)>, // (run_at, ready_at)
    misfires: Vec<DateTime<Utc>>,
    misfire_count: usize,
    materialized_until: DateTime<Utc>,
    next_fire: Option<DateTime<Utc>>,
    exhausted: bool,
}

/// Enumerates the fires of `schedule` in (cursor, horizon] and applies the catch-up policy to those older
/// than `now - grace`. Pure: the heart of the scheduler, tested without a database.
fn plan(
    schedule: &Schedule,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
    grace: Duration,
    catchup: Catchup,
) -> TaskPlan {
    let cutoff = now - grace;
    let keep = match catchup {
        Catchup::Skip => 0,
        Catchup::Latest => 1,
        Catchup::All => CATCHUP_ALL_LIMIT,
    };
    let mut overdue_kept: VecDeque<DateTime<Utc>> = VecDeque::new();
    let mut misfires = Vec::new();
    let mut misfire_count = 0usize;
    let mut fires = Vec::new();
    let mut t = cursor;
    let mut iterations = 0usize;
    let mut plan = TaskPlan {
        materialized_until: horizon.max(cursor),
        ..TaskPlan::default()
    };
    loop {
        match schedule.next_fire_after(t) {
            None => {
                plan.exhausted = true;
                break;
            }
            Some(f) if f > horizon => {
                plan.next_fire = Some(f);
                break;
            }
            Some(f) => {
                if f < cutoff {
                    iterations += 1;
                    if keep > 0 {
                        overdue_kept.push_back(f);
                        if overdue_kept.len() > keep {
                            let dropped = overdue_kept.pop_front().expect("non-empty");
                            misfire_count += 1;
                            if misfires.len() < MAX_MISFIRE_RECORDS {
                                misfires.push(dropped);
                            }
                        }
                    } else {
                        misfire_count += 1;
                        if misfires.len() < MAX_MISFIRE_RECORDS {
                            misfires.push(f);
                        }
                    }
                    if iterations >= MAX_CATCHUP_ITERATIONS {
                        // Years of overdue fires: stop enumerating and resume just before the grace window.
                        t = (cutoff - Duration::seconds(1)).max(f);
                        continue;
                    }
                } else {
                    fires.push(f);
                    if fires.len() >= MAX_FIRES_PER_TASK {
                        plan.materialized_until = f;
                        plan.next_fire = schedule.next_fire_after(f);
                        plan.exhausted = plan.next_fire.is_none();
                        break;
                    }
                }
                t = f;
            }
        }
    }
    plan.fires = overdue_kept
        .into_iter()
        .chain(fires)
        .map(|f| (f, f))
        .collect();
    plan.misfires = misfires;
    plan.misfire_count = misfire_count;
    plan
}

impl Materializer {
    pub fn new(pool: Pool, clock: Clock, lookahead: Duration, batch: i64) -> Self {
        Self {
            pool,
            clock,
            lookahead,
            batch,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.batch as usize
    }

    fn schedule_for(
        &self,
        id: Uuid,
        kind: &str,
        expr: &str,
        tz: &str,
        anchor: DateTime<Utc>,
    ) -> Result<Schedule, String> {
        let key = (kind.to_string(), expr.to_string(), tz.to_string(), anchor);
        let mut cache = self.cache.lock().expect("schedule cache");
        if let Some(c) = cache.get(&id) {
            if c.key == key {
                return Ok(c.schedule.clone());
            }
        }
        let kind: ScheduleKind = kind
            .parse()
            .map_err(|e: orrery::schedule::ScheduleError| e.message)?;
        let tz = parse_timezone(tz).map_err(|e| e.message)?;
        let schedule = Schedule::parse(kind, expr, tz, anchor).map_err(|e| e.message)?;
        if cache.len() > 500_000 {
            cache.clear();
        }
        cache.insert(
            id,
            Cached {
                key,
                schedule: schedule.clone(),
            },
        );
        Ok(schedule)
    }

    /// One transaction over at most `batch` tasks whose next fire is inside the look-ahead.
    pub async fn pass(&self) -> anyhow::Result<PassStats> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let now_stmt = tx
            .prepare_cached("SELECT coalesce($1::timestamptz, now())")
            .await?;
        let now: DateTime<Utc> = tx
            .query_one(&now_stmt, &[&self.clock.param()])
            .await?
            .get(0);
        let horizon = now + self.lookahead;
        let stmt = tx
            .prepare_cached(
                "SELECT id, schedule_kind, schedule_expr, timezone, schedule_anchor,
                        coalesce(materialized_until, created_at), priority, concurrency_key, overlap, catchup,
                        misfire_grace_seconds, external_queue
                   FROM task
                  WHERE status = 'active' AND schedule_kind <> 'event'
                    AND (next_fire_at IS NULL OR next_fire_at <= $1)
                  ORDER BY next_fire_at NULLS FIRST
                  LIMIT $2
                    FOR UPDATE SKIP LOCKED",
            )
            .await?;
        let rows = tx.query(&stmt, &[&horizon, &self.batch]).await?;
        let mut stats = PassStats {
            tasks: rows.len(),
            ..PassStats::default()
        };
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(stats);
        }

        // Columns of the due_work insert, the cursor update and the misfire records.
        let (mut w_task, mut w_run, mut w_ready, mut w_prio, mut w_key) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut w_overlap, mut w_catchup, mut w_grace, mut w_queue) =
            (vec![], vec![], vec![], vec![]);
        let (mut u_id, mut u_until, mut u_next, mut u_exhausted, mut u_run) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut m_task, mut m_at, mut m_msg) = (vec![], vec![], vec![]);

        for row in &rows {
            let id: Uuid = row.get(0);
            let kind: String = row.get(1);
            let expr: String = row.get(2);
            let tz: String = row.get(3);
            let anchor: DateTime<Utc> = row.get(4);
            let cursor: DateTime<Utc> = row.get(5);
            let priority: i16 = row.get(6);
            let concurrency_key: Option<String> = row.get(7);
            let overlap: String = row.get(8);
            let catchup: String = row.get(9);
            let grace: i32 = row.get(10);
            let external_queue: Option<String> = row.get(11);

            let schedule = match self.schedule_for(id, &kind, &expr, &tz, anchor) {
                Ok(s) => s,
                Err(e) => {
                    // Validated at write time, so this is a bug or a hand-edited row: park the task, loudly.
                    tracing::error!(task_id = %id, error = %e, "unparseable schedule; task parked until edited");
                    u_id.push(id);
                    u_until.push(cursor);
                    u_next.push(None);
                    u_exhausted.push(true);
                    u_run.push(None);
                    continue;
                }
            };
            let catchup_policy: Catchup = catchup.parse().unwrap_or(Catchup::Skip);
            let p = plan(
                &schedule,
                cursor,
                now,
                horizon,
                Duration::seconds(grace.max(0) as i64),
                catchup_policy,
            );
            let key = concurrency_key.or_else(|| {
                (overlap.parse::<Overlap>().ok() != Some(Overlap::Allow))
                    .then(|| format!("task:{id}"))
            });
            for (run_at, ready_at) in &p.fires {
                w_task.push(id);
                w_run.push(*run_at);
                w_ready.push(*ready_at);
                w_prio.push(priority);
                w_key.push(key.clone());
                w_overlap.push(overlap.clone());
                w_catchup.push(catchup.clone());
                w_grace.push(grace);
                w_queue.push(external_queue.clone());
                stats.earliest = Some(
                    stats
                        .earliest
                        .map_or(*run_at, |e: DateTime<Utc>| e.min(*run_at)),
                );
                let lead = (*run_at - now).num_milliseconds() as f64 / 1000.0;
                if lead >= 0.0 {
                    orrery::metrics::SCHEDULER_LAG
                        .with_label_values(&["materialization_lead"])
                        .observe(lead);
                } else {
                    orrery::metrics::SCHEDULER_LAG
                        .with_label_values(&["materialization_late"])
                        .observe(-lead);
                }
            }
            for at in &p.misfires {
                m_task.push(id);
                m_at.push(*at);
                m_msg.push(format!(
                    "fire missed its grace window of {grace}s and the catch-up policy is {catchup}"
                ));
            }
            stats.misfires += p.misfire_count;
            u_id.push(id);
            u_until.push(p.materialized_until);
            u_next.push(p.next_fire);
            u_exhausted.push(p.exhausted);
            u_run.push(p.fires.first().map(|f| f.0).or(p.next_fire));
        }

        if !w_task.is_empty() {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup,
                                           misfire_grace_seconds, trigger, queue, rate_key, external_queue)
                     SELECT t, r, rd, p, k, o, c, g, 'schedule', coalesce(tq.queue, 'default'),
                            orrery_rate_key(tq.rate_key, tq.payload->'params', NULL), q
                       FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::int2[], $5::text[],
                                   $6::text[], $7::text[], $8::int4[], $9::text[]) AS u(t, r, rd, p, k, o, c, g, q)
                       LEFT JOIN task tq ON tq.id = u.t
                     ON CONFLICT (task_id, run_at) WHERE trigger = 'schedule' DO NOTHING",
                )
                .await?;
            stats.fires = tx
                .execute(
                    &insert,
                    &[
                        &w_task, &w_run, &w_ready, &w_prio, &w_key, &w_overlap, &w_catchup,
                        &w_grace, &w_queue,
                    ],
                )
                .await?;
        }
        if !m_task.is_empty() {
            tx.execute(
                "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, finished_at, success, error, error_kind)
                 SELECT t, 0, 'schedule', a, coalesce($4::timestamptz, now()), false, m, 'misfired'
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(t, a, m)",
                &[&m_task, &m_at, &m_msg, &self.clock.param()],
            )
            .await?;
        }
        let update = tx
            .prepare_cached(
                "UPDATE task t
                    SET materialized_until = u.mu,
                        next_fire_at = CASE WHEN u.ex THEN 'infinity'::timestamptz ELSE u.nf END,
                        next_run_at = u.nr
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bool[], $5::timestamptz[])
                        AS u(id, mu, nf, ex, nr)
                  WHERE t.id = u.id",
            )
            .await?;
        tx.execute(&update, &[&u_id, &u_until, &u_next, &u_exhausted, &u_run])
            .await?;
        tx.commit().await?;

        orrery::metrics::FIRES_MATERIALIZED
            .with_label_values(&["schedule"])
            .inc_by(stats.fires);
        orrery::metrics::MISFIRES_SKIPPED.inc_by(stats.misfires as u64);
        Ok(stats)
    }

    /// Runs passes until a pass finds fewer tasks than a full batch.
    pub async fn catch_up(&self) -> anyhow::Result<PassStats> {
        let mut total = PassStats::default();
        loop {
            let s = self.pass().await?;
            total.tasks += s.tasks;
            total.fires += s.fires;
            total.misfires += s.misfires;
            total.earliest = match (total.earliest, s.earliest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if s.tasks < self.batch as usize {
                return Ok(total);
            }
        }
    }

    /// Exhausted schedules (`once` after its fire, COUNT/UNTIL reached) become `completed` once no pending work
    /// of theirs is left.
    pub async fn complete_exhausted(&self) -> anyhow::Result<Vec<Uuid>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH done AS (
                     UPDATE task t SET status = $3, updated_at = coalesce($1::timestamptz, now())
                      WHERE t.status = ANY($4) AND t.next_fire_at = 'infinity' AND t.schedule_kind <> 'event'
                        AND NOT EXISTS (SELECT 1 FROM due_work d WHERE d.task_id = t.id AND d.state = 'pending')
                     RETURNING t.id)
                 INSERT INTO audit_log (actor, action, subject_type, subject_id, details)
                 SELECT $2::uuid, $5, 'task', id::text, '{\"by\": \"scheduler\"}'::jsonb FROM done
                 RETURNING subject_id",
            )
            .await?;
        // The lifecycle state machine decides which statuses complete and into what.
        let complete = Action::Complete;
        let sources: Vec<&str> = complete.sources().iter().map(|s| s.as_str()).collect();
        debug_assert_eq!(complete.work(), PendingWork::Keep);
        let rows = client
            .query(
                &stmt,
                &[
                    &self.clock.param(),
                    &SYSTEM_AGENT_ID,
                    &complete.target().as_str(),
                    &sources,
                    &complete.audit_action(),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, String>(0).parse().ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cron(expr: &str) -> Schedule {
        Schedule::parse(ScheduleKind::Cron, expr, chrono_tz::UTC, Utc::now()).unwrap()
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, h, m, 0).unwrap()
    }

    #[test]
    fn fires_inside_the_lookahead_are_planned_with_their_nominal_instants() {
        let p = plan(
            &cron("*/5 * * * *"),
            at(10, 0),
            at(10, 0),
            at(10, 12),
            Duration::seconds(30),
            Catchup::Skip,
        );
        let runs: Vec<_> = p.fires.iter().map(|f| f.0).collect();
        assert_eq!(runs, vec![at(10, 5), at(10, 10)]);
        assert_eq!(p.next_fire, Some(at(10, 15)));
        assert_eq!(p.materialized_until, at(10, 12));
        assert!(!p.exhausted);
    }

    #[test]
    fn skip_catchup_runs_nothing_older_than_the_grace_window() {
        let p = plan(
            &cron("* * * * *"),
            at(9, 0),
            at(10, 0),
            at(10, 1),
            Duration::seconds(90),
            Catchup::Skip,
        );
        let runs: Vec<_> = p.fires.iter().map(|f| f.0).collect();
        // 09:01 .. 09:58 are older than 10:00 - 90 s; 09:59 and later are inside the window.
        assert_eq!(runs, vec![at(9, 59), at(10, 0), at(10, 1)]);
        assert_eq!(p.misfire_count, 58);
    }

    #[test]
    fn latest_catchup_runs_only_the_newest_overdue_fire() {
        let p = plan(
            &cron("* * * * *"),
            at(9, 0),
            at(10, 0),
            at(10, 0),
            Duration::seconds(0),
            Catchup::Latest,
        );
        let runs: Vec<_> = p.fires.iter().map(|f| f.0).collect();
        assert_eq!(runs, vec![at(9, 59), at(10, 0)]);
        assert_eq!(p.misfire_count, 58);
    }

    #[test]
    fn all_catchup_is_bounded_to_one_hundred_fires() {
        let start = at(0, 0);
        let p = plan(
            &cron("* * * * *"),
            start,
            at(10, 0),
            at(10, 0),
            Duration::seconds(0),
            Catchup::All,
        );
        assert_eq!(p.fires.len(), CATCHUP_ALL_LIMIT + 1);
        assert_eq!(p.fires.last().unwrap().0, at(10, 0));
        assert_eq!(p.misfire_count, 600 - 1 - CATCHUP_ALL_LIMIT);
    }

    #[test]
    fn a_once_schedule_is_exhausted_after_its_fire() {
        let s = Schedule::parse(
            ScheduleKind::Once,
            "2026-01-01T10:05:00Z",
            chrono_tz::UTC,
            Utc::now(),
        )
        .unwrap();
        let p = plan(
            &s,
            at(10, 0),
            at(10, 0),
            at(10, 10),
            Duration::seconds(30),
            Catchup::Skip,
        );
        assert_eq!(p.fires.len(), 1);
        assert!(p.exhausted);
    }
}
