//! The four scenarios. Each starts its own cluster, injects its fault while the system works, waits for the
//! system to settle (every accepted thing run, nothing relevant left pending) and counts from the database.

use std::time::{Duration, Instant};

use chrono::Utc;
use orrery_testing::Service;

use crate::kit::{self, Cluster, Counts, Feed, Feeder, Schedules, Subject};
use crate::{Mode, Row};

const WORKER_ENV: [(&str, &str); 1] = [("WORKER_LEASE_SECONDS", "3")];

/// Counts `subject` into `row`; in the self-test, then damages the results and checks that the counts move by
/// exactly the damage (the table keeps the counts from before). Returns the fires and the expected event deliveries for the notes.
async fn conclude(
    c: &tokio_postgres::Client,
    mode: Mode,
    subject: &Subject<'_>,
    row: &mut Row,
) -> (Option<kit::Fires>, Option<u64>) {
    let (counts, fires, deliveries) = kit::tally(c, subject).await;
    if !mode.sabotage {
        row.set(counts);
        return (fires, deliveries);
    }
    let injected = kit::sabotage(c, subject).await;
    let (after, _, _) = kit::tally(c, subject).await;
    let want = counts.plus(injected);
    let applicable = Counts {
        runs_lost: counts.runs_lost.map(|_| 1),
        runs_twice: counts.runs_twice.map(|_| 1),
        fires_missed: counts.fires_missed.map(|_| 1),
        fires_duplicated: counts.fires_duplicated.map(|_| 1),
        events_lost: counts.events_lost.map(|_| 1),
    };
    if injected != applicable {
        row.broken = Some(format!(
            "self-test: could not inject all damage ({injected:?})"
        ));
    } else if after != want {
        row.broken = Some(format!(
            "self-test: injected {injected:?} on top of {counts:?}, but the accounting reported {after:?}"
        ));
    } else {
        row.notes.push(
            "self-test: after the counting, one of each kind of damage was injected and counted exactly".into(),
        );
    }
    // The table shows what the system did, counted before the damage.
    row.set(counts);
    (fires, deliveries)
}

/// Each run of the drain sleeps this long, and each worker runs this many at once: ~3 × 8 / 0.1 = 240 runs/s
/// at best, so 10,000 runs take about 40 s and every kill cuts runs in the middle.
const NAP: f64 = 0.1;
const DRAIN_ENV: [(&str, &str); 2] = [("WORKER_LEASE_SECONDS", "3"), ("WORKER_CONCURRENCY", "8")];

/// Workers SIGKILLed every 2 s (the oldest one, replaced at once, as a supervisor would) while a backlog of
/// no-op runs drains. Time to recover: the last kill → the queue empty (the killed worker's leases expire
/// and its rows run elsewhere).
pub async fn workers(mode: Mode) -> Row {
    let n: i64 = mode.pick(10_000, 3_000);
    let fleet_size = 3;
    let mut row = Row {
        scenario: format!("workers SIGKILLed every 2 s while {n} runs drain"),
        ..Row::default()
    };
    let mut cl = Cluster::start().await;
    let c = cl.client().await;
    let task = kit::insert_task_with(&c, "cron", "0 0 1 1 *", 3, kit::nap_payload(NAP)).await;
    let ids: Vec<i64> = c
        .query(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
             SELECT $1, now(), now(), 5, 'manual' FROM generate_series(1, $2::bigint) RETURNING id",
            &[&task, &n],
        )
        .await
        .expect("backlog")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut fleet: std::collections::VecDeque<Service> = std::collections::VecDeque::new();
    for _ in 0..fleet_size {
        fleet.push_back(cl.spawn("orrery-worker", &DRAIN_ENV).await);
    }
    let began = Instant::now();
    let deadline = began + Duration::from_secs(mode.pick(600, 240));
    let mut kills = 0u32;
    let mut last_kill = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(2),
        Duration::from_secs(2),
    );
    let pending_sql = "SELECT count(*) FROM due_work WHERE state = 'pending'";
    // Kills continue for as long as work is left.
    let drained = loop {
        tick.tick().await;
        if kit::count(&c, pending_sql, &[]).await == 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        if let Some(mut victim) = fleet.pop_front() {
            victim.kill().await;
        }
        kills += 1;
        last_kill = Some(Utc::now());
        fleet.push_back(cl.spawn("orrery-worker", &DRAIN_ENV).await);
        // Stop killing once nothing is left but rows whose leases wait to expire or that are running now:
        // the last kill has then been made while work was still in flight.
        let left = kit::count(&c, pending_sql, &[]).await;
        if left == 0 {
            break true;
        }
    };
    let drained = drained
        && kit::settle(&cl, Duration::from_secs(60), |c| async move {
            kit::count(&c, pending_sql, &[]).await == 0
        })
        .await;
    let drain_secs = began.elapsed().as_secs_f64();
    // Drained = the last run finished (database clock), measured from the last kill.
    let last_finish: Option<chrono::DateTime<Utc>> = c
        .query_one(
            "SELECT max(finished_at) FROM task_run WHERE success AND task_id = $1",
            &[&task],
        )
        .await
        .expect("last finish")
        .get(0);
    let recover = last_kill
        .zip(last_finish)
        .map(|(k, f)| kit::secs(f - k).max(0.0));
    let subject = Subject {
        work: &ids,
        schedules: None,
        events: None,
    };
    conclude(&c, mode, &subject, &mut row).await;
    let dead = kit::count(
        &c,
        "SELECT count(*) FROM due_work WHERE state = 'dead'",
        &[],
    )
    .await;
    let rerun = kit::count(
        &c,
        "SELECT count(*) FROM task_run WHERE error_kind = 'lease_expired'",
        &[],
    )
    .await;
    row.recover = recover.filter(|_| drained);
    row.notes.push(format!(
        "{kills} SIGKILLs of {fleet_size} workers (8 runs of {NAP} s at once each, lease 3 s); {n} runs drained in {drain_secs:.0} s \
         ({:.0}/s); {rerun} attempts cut by a kill ran again, {dead} rows dead-lettered",
        n as f64 / drain_secs
    ));
    if !drained {
        row.broken = Some(format!(
            "queue not empty after {drain_secs:.0} s; logs in {}",
            cl.log_dir()
        ));
    } else if !row.failed_counts() {
        cl.forget_logs();
    }
    drop(fleet);
    row
}

/// Two schedulers over 50 two-second schedules, one of them SIGKILLed every 5 s (alternately, replaced at
/// once); two workers run the fires. Time to recover: the last kill → the next successful run.
pub async fn schedulers(mode: Mode) -> Row {
    let window = mode.pick(120, 30);
    let n = 50;
    let mut row = Row {
        scenario: format!(
            "2 schedulers, one SIGKILLed every 5 s, {n} two-second schedules for {window} s"
        ),
        ..Row::default()
    };
    let mut cl = Cluster::start().await;
    let c = cl.client().await;
    let s = Schedules::create(&c, n, chrono::Duration::seconds(3)).await;
    // A short look-ahead keeps both schedulers materializing all the time, so kills land mid-work.
    let sched_env = [("SCHEDULER_LOOKAHEAD_SECONDS", "4")];
    let mut schedulers = [
        cl.start_ready("orrery-scheduler", &sched_env).await,
        cl.start_ready("orrery-scheduler", &sched_env).await,
    ];
    let _workers = [
        cl.start_ready("orrery-worker", &WORKER_ENV).await,
        cl.start_ready("orrery-worker", &WORKER_ENV).await,
    ];
    let until = s.start + chrono::Duration::seconds(window);
    let mut kills = 0usize;
    let mut last_kill = Utc::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(5),
        Duration::from_secs(5),
    );
    loop {
        tick.tick().await;
        if Utc::now() >= until {
            break;
        }
        let i = kills % 2;
        schedulers[i].kill().await;
        last_kill = Utc::now();
        kills += 1;
        schedulers[i] = cl.spawn("orrery-scheduler", &sched_env).await;
    }
    let expected = s.expected(until).len() * n;
    let tasks = s.tasks.clone();
    let settled = kit::settle(&cl, Duration::from_secs(90), |c| {
        let tasks = tasks.clone();
        async move {
            let done = kit::count(
                &c,
                "SELECT count(DISTINCT (task_id, scheduled_for)) FROM task_run
                  WHERE success AND task_id = ANY($1) AND scheduled_for <= $2",
                &[&tasks, &until],
            )
            .await;
            let pending = kit::count(
                &c,
                "SELECT count(*) FROM due_work WHERE task_id = ANY($1) AND run_at <= $2 AND state = 'pending'",
                &[&tasks, &until],
            )
            .await;
            done >= expected as i64 && pending == 0
        }
    })
    .await;
    let c = cl.client().await;
    // Before the self-test's damage (which records one fire twice).
    let materialized_twice = kit::count(
        &c,
        "SELECT count(*) FROM (SELECT 1 FROM task_run WHERE task_id = ANY($1) AND attempt > 0
                                GROUP BY task_id, scheduled_for, attempt HAVING count(*) > 1) d",
        &[&s.tasks],
    )
    .await;
    let subject = Subject {
        work: &[],
        schedules: Some((&s, until)),
        events: None,
    };
    let (f, _) = conclude(&c, mode, &subject, &mut row).await;
    let f = f.expect("fires counted");
    let first = kit::first_success_after(&c, &s.tasks, last_kill, None).await;
    row.recover = first.map(|t| kit::secs(t - last_kill));
    row.notes.push(format!(
        "{kills} SIGKILLs; {} fires expected; max lateness {:.1} s; {} runs at instants that are not fires; \
         {materialized_twice} (fire, attempt) pairs run twice",
        f.expected,
        f.max_lateness.unwrap_or(0.0),
        f.unexpected
    ));
    if !settled {
        row.broken = Some(format!(
            "fires up to the end of the window not all run after 90 s; logs in {}",
            cl.log_dir()
        ));
    } else if !row.failed_counts() {
        cl.forget_logs();
    }
    row
}

/// Everything shared by the two infrastructure scenarios: api, scheduler and two workers over 20 two-second
/// schedules and a backlog, a run-now feeder (and in the Redis scenario an event feeder) while the fault lasts.
struct Load {
    cl: Cluster,
    schedules: Schedules,
    manual: kit::Feeder,
    manual_task: uuid::Uuid,
    backlog: Vec<i64>,
    events: Option<(Feeder, Vec<uuid::Uuid>)>,
    _services: Vec<Service>,
}

async fn load(backlog: i64, with_events: bool) -> Load {
    let mut cl = Cluster::start().await;
    let c = cl.client().await;
    let schedules = Schedules::create(&c, 20, chrono::Duration::seconds(4)).await;
    // The backlog and run-now work take 0.2 s each on two workers of 32 runners (at most 320 runs/s): the
    // backlog is still draining when the fault strikes and runs are cut in the middle, yet the workers have
    // the capacity to catch up within the fires' 30 s misfire grace once the fault is over. (With 8 runners
    // each, the backlog queued ahead of the fires, which are younger, held them past their grace, and the
    // catch-up policy rightly skipped them: an overload, not a fault.)
    let manual_task =
        kit::insert_task_with(&c, "cron", "0 0 1 1 *", 3, kit::nap_payload(0.2)).await;
    let mut event_tasks = Vec::new();
    if with_events {
        for _ in 0..2 {
            event_tasks.push(kit::insert_task(&c, "event", "chaos.redis", 3).await);
        }
    }
    let backlog: Vec<i64> = c
        .query(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
             SELECT $1, now(), now(), 5, 'manual' FROM generate_series(1, $2::bigint) RETURNING id",
            &[&manual_task, &backlog],
        )
        .await
        .expect("backlog")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let api = cl.start_ready("orrery-api", &[]).await;
    let services = vec![
        cl.start_ready("orrery-scheduler", &[("SCHEDULER_LOOKAHEAD_SECONDS", "4")])
            .await,
        cl.start_ready("orrery-worker", &WORKER_ENV).await,
        cl.start_ready("orrery-worker", &WORKER_ENV).await,
    ];
    let manual = Feeder::start(
        api.health_port,
        Feed::RunNow(manual_task),
        Duration::from_millis(50),
    );
    let events = with_events.then(|| {
        (
            Feeder::start(
                api.health_port,
                Feed::Events {
                    topic: "chaos.redis".into(),
                    tasks: event_tasks.clone(),
                },
                Duration::from_millis(100),
            ),
            event_tasks.clone(),
        )
    });
    let mut all = services;
    all.push(api);
    Load {
        cl,
        schedules,
        manual,
        manual_task,
        backlog,
        events,
        _services: all,
    }
}

/// Stops the feeders, waits until everything accepted ran and nothing relevant is pending, and fills the row.
async fn account(load: Load, until: chrono::DateTime<Utc>, mode: Mode, row: &mut Row) -> Cluster {
    let Load {
        cl,
        schedules,
        manual,
        manual_task,
        backlog,
        events,
        _services,
    } = load;
    let manual = manual.stop().await;
    let (events, event_tasks) = match events {
        Some((f, tasks)) => (Some(f.stop().await), tasks),
        None => (None, Vec::new()),
    };
    let mut ids = backlog.clone();
    ids.extend(
        manual
            .accepted
            .iter()
            .filter_map(|(_, id, _)| id.parse::<i64>().ok()),
    );
    let accepted_events: Vec<_> = events
        .as_ref()
        .map(|e| e.accepted.clone())
        .unwrap_or_default();
    let event_ids: Vec<String> = accepted_events
        .iter()
        .map(|(_, id, _)| id.clone())
        .collect();
    let expected_fires = (schedules.expected(until).len() * schedules.tasks.len()) as i64;
    let tasks = schedules.tasks.clone();
    let settled = kit::settle(&cl, Duration::from_secs(120), |c| {
        let (ids, tasks, event_ids, accepted_events) = (
            ids.clone(),
            tasks.clone(),
            event_ids.clone(),
            accepted_events.clone(),
        );
        async move {
            let by = kit::successes_by_work(&c, &ids).await;
            let (lost, _) = kit::lost_and_twice(&ids, &by);
            let fires_done = kit::count(
                &c,
                "SELECT count(DISTINCT (task_id, scheduled_for)) FROM task_run
                  WHERE success AND task_id = ANY($1) AND scheduled_for <= $2",
                &[&tasks, &until],
            )
            .await;
            let (_, events_lost, _) = kit::events(&c, &accepted_events).await;
            let pending = kit::count(
                &c,
                "SELECT count(*) FROM due_work WHERE state = 'pending'
                    AND (id = ANY($1) OR (task_id = ANY($2) AND run_at <= $3) OR event_id = ANY($4))",
                &[&ids, &tasks, &until, &event_ids],
            )
            .await;
            lost == 0 && fires_done >= expected_fires && events_lost == 0 && pending == 0
        }
    })
    .await;
    let c = cl.client().await;
    let subject = Subject {
        work: &ids,
        schedules: Some((&schedules, until)),
        events: events.as_ref().map(|e| e.accepted.as_slice()),
    };
    let (f, deliveries) = conclude(&c, mode, &subject, row).await;
    let f = f.expect("fires counted");
    row.notes.push(format!(
        "runs: {} backlog + {} run-now accepted (202, slowest {:.1} s), refused: {}; fires: {} expected, max \
         lateness {:.1} s, {} skipped as misfires",
        backlog.len(),
        manual.accepted.len(),
        manual.slowest_accepted,
        manual.refused_text(),
        f.expected,
        f.max_lateness.unwrap_or(0.0),
        f.misfired
    ));
    if let Some(e) = &events {
        row.notes.push(format!(
            "events: {} accepted (202, slowest {:.1} s) → {} deliveries to {} tasks; refused: {}",
            e.accepted.len(),
            e.slowest_accepted,
            deliveries.unwrap_or(0),
            event_tasks.len(),
            e.refused_text()
        ));
    }
    let _ = manual_task;
    if !settled {
        row.broken = Some(format!(
            "accepted work not all run after 120 s; logs in {}",
            cl.log_dir()
        ));
    }
    cl
}

/// PostgreSQL stopped with `pg_ctl -m immediate` (a crash: no shutdown checkpoint, unflushed asynchronous
/// commits gone) under load, down for a while, restarted. Time to recover: restart → the first successful run.
pub async fn postgres(mode: Mode) -> Row {
    let down = mode.pick(10, 5);
    let mut row = Row {
        scenario: format!("PostgreSQL stopped -m immediate for {down} s under load, restarted"),
        ..Row::default()
    };
    let load = load(mode.pick(2_000, 600), false).await;
    tokio::time::sleep(Duration::from_secs(mode.pick(6, 4))).await;
    let crashed = Utc::now();
    let pg_dir = load.cl.pg.dir.clone();
    let port = load.cl.pg.port;
    stop_pg(&load.cl).await;
    tokio::time::sleep(Duration::from_secs(down)).await;
    start_pg(&load.cl).await;
    let back = Utc::now();
    tokio::time::sleep(Duration::from_secs(mode.pick(10, 6))).await;
    let until = Utc::now();
    let api_back = {
        let log = load.manual.log.lock().unwrap();
        log.accepted.iter().map(|(t, _, _)| *t).find(|t| *t > back)
    };
    let during = load
        .manual
        .log
        .lock()
        .unwrap()
        .accepted_between(crashed, back);
    let sched = Schedules {
        tasks: load.schedules.tasks.clone(),
        start: load.schedules.start,
        every: load.schedules.every,
    };
    let all_tasks: Vec<uuid::Uuid> = load
        .schedules
        .tasks
        .iter()
        .copied()
        .chain([load.manual_task])
        .collect();
    let cl = account(load, until, mode, &mut row).await;
    let c = cl.client().await;
    let first = kit::first_success_after(&c, &all_tasks, back, None).await;
    row.recover = first.map(|t| kit::secs(t - back));
    let on_time = kit::fires_on_time_after(&c, &sched, back).await;
    row.notes.push(format!(
        "cluster on port {port} ({}); {during} run-now sent while PostgreSQL was stopping or down were \
         accepted; after the restart: API accepting again in {}, fires on time again in {}",
        pg_dir.display(),
        api_back.map_or("never".into(), |t| format!("{:.1} s", kit::secs(t - back))),
        on_time.map_or("never".into(), |s| format!("{s:.1} s"))
    ));
    if row.broken.is_none() && !row.failed_counts() {
        cl.forget_logs();
    }
    row
}

async fn stop_pg(cl: &Cluster) {
    tokio::task::block_in_place(|| cl.pg.stop_server());
}

async fn start_pg(cl: &Cluster) {
    tokio::task::block_in_place(|| cl.pg.start_server());
}

/// Redis killed (it keeps nothing on disk, as in the tests) for 15 s while events are published, run-now
/// requests arrive and schedules fire; then started again, empty. Events answered 202 must all be delivered;
/// 503s are refusals, counted apart. Time to recover: Redis back → the first successful event-triggered run.
pub async fn redis(mode: Mode) -> Row {
    let down = mode.pick(15, 15);
    let mut row = Row {
        scenario: format!("Redis stopped for {down} s under load (events, run-now, schedules)"),
        ..Row::default()
    };
    let mut load = load(mode.pick(1_000, 300), true).await;
    tokio::time::sleep(Duration::from_secs(mode.pick(6, 4))).await;
    let stopped = Utc::now();
    tokio::task::block_in_place(|| load.cl.redis.stop_server());
    tokio::time::sleep(Duration::from_secs(down)).await;
    tokio::task::block_in_place(|| load.cl.redis.start_server());
    let back = Utc::now();
    tokio::time::sleep(Duration::from_secs(mode.pick(10, 6))).await;
    let until = Utc::now();
    let (during, event_tasks) = match &load.events {
        Some((f, tasks)) => (
            f.log.lock().unwrap().accepted_between(stopped, back),
            tasks.clone(),
        ),
        None => (0, Vec::new()),
    };
    let runs_during = load
        .manual
        .log
        .lock()
        .unwrap()
        .accepted_between(stopped, back);
    let sched = Schedules {
        tasks: load.schedules.tasks.clone(),
        start: load.schedules.start,
        every: load.schedules.every,
    };
    let cl = account(load, until, mode, &mut row).await;
    let c = cl.client().await;
    let first = kit::first_success_after(&c, &event_tasks, back, Some("event")).await;
    row.recover = first.map(|t| kit::secs(t - back));
    let on_time = kit::fires_on_time_after(&c, &sched, stopped).await;
    row.notes.push(format!(
        "sent while Redis was down: {during} events and {runs_during} run-now accepted (202); first fire \
         due after Redis stopped that ran on time: {}",
        on_time.map_or("none".into(), |s| format!("{s:.1} s after the stop"))
    ));
    if row.broken.is_none() && !row.failed_counts() {
        cl.forget_logs();
    }
    row
}

impl Row {
    fn failed_counts(&self) -> bool {
        [
            self.runs_lost,
            self.runs_twice,
            self.fires_missed,
            self.fires_duplicated,
            self.events_lost,
        ]
        .iter()
        .any(|v| v.unwrap_or(0) > 0)
    }
}
