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
use orrery::model::{Catchup, Trigger, CATCHUP_ALL_LIMIT};
use orrery::schedule::{parse_timezone, Schedule, ScheduleKind};
use orrery::store;
use orrery::store::materialize::{self, CursorMove};
use orrery::store::tasks::{self, MissedFire};
use orrery::store::work::{self, NewWork, Ready};
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
    key: (ScheduleKind, String, String, DateTime<Utc>),
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
        kind: ScheduleKind,
        expr: &str,
        tz: &str,
        anchor: DateTime<Utc>,
    ) -> Result<Schedule, String> {
        let key = (kind, expr.to_string(), tz.to_string(), anchor);
        let mut cache = self.cache.lock().expect("schedule cache");
        if let Some(c) = cache.get(&id) {
            if c.key == key {
                return Ok(c.schedule.clone());
            }
        }
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
        let now = store::now(&tx, &self.clock).await?;
        let horizon = now + self.lookahead;
        let due = materialize::lock_due_tasks(&tx, horizon, self.batch).await?;
        let mut stats = PassStats {
            tasks: due.len(),
            ..PassStats::default()
        };
        if due.is_empty() {
            tx.commit().await?;
            return Ok(stats);
        }

        // The work to enqueue, the cursor moves and the misfire records.
        let mut work: Vec<NewWork> = Vec::new();
        let mut moves: Vec<CursorMove> = Vec::with_capacity(due.len());
        let mut missed: Vec<MissedFire> = Vec::new();

        for task in &due {
            let id = task.id;
            let cursor = task.cursor;
            let catchup = task.catchup;
            let grace = task.misfire_grace_seconds;

            let schedule = match self.schedule_for(
                id,
                task.schedule_kind,
                &task.schedule_expr,
                &task.timezone,
                task.schedule_anchor,
            ) {
                Ok(s) => s,
                Err(e) => {
                    // Validated at write time, so this is a bug or a hand-edited row: park the task, loudly.
                    tracing::error!(task_id = %id, error = %e, "unparseable schedule; task parked until edited");
                    moves.push(CursorMove {
                        task_id: id,
                        materialized_until: cursor,
                        next_fire_at: None,
                        exhausted: true,
                        next_run_at: None,
                    });
                    continue;
                }
            };
            let p = plan(
                &schedule,
                cursor,
                now,
                horizon,
                Duration::seconds(grace.max(0) as i64),
                catchup,
            );
            for (run_at, ready_at) in &p.fires {
                work.push(
                    NewWork::new(id, Trigger::Schedule)
                        .at(*run_at)
                        .ready(Ready::At(*ready_at)),
                );
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
                missed.push(MissedFire {
                    task_id: id,
                    scheduled_for: *at,
                    message: format!(
                        "fire missed its grace window of {grace}s and the catch-up policy is {catchup}"
                    ),
                });
            }
            stats.misfires += p.misfire_count;
            moves.push(CursorMove {
                task_id: id,
                materialized_until: p.materialized_until,
                next_fire_at: p.next_fire,
                exhausted: p.exhausted,
                next_run_at: p.fires.first().map(|f| f.0).or(p.next_fire),
            });
        }

        stats.fires = work::enqueue(&tx, &work, &self.clock).await?.len() as u64;
        tasks::record_missed_fires(&tx, &missed, &self.clock).await?;
        materialize::advance_cursors(&tx, &moves).await?;
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
        Ok(orrery::store::tasks::complete_exhausted(&client, &self.clock).await?)
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
