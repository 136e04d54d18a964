//! What every scenario needs: a private cluster (PostgreSQL + Redis started for the scenario alone), the real
//! binaries as processes, feeders that talk to the API as a client would, and exact accounting from the
//! database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use orrery_testing::{free_port, PrivatePostgres, PrivateRedis, Service};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

pub const ADMIN: &str = "chaos-admin-token-0123456789";

pub fn noop_payload() -> Value {
    json!({"params": {}, "pipeline": [{"id": "n", "uses": "noop"}]})
}

/// A run that takes `seconds` (so that a kill finds runs in the middle of their work).
pub fn nap_payload(seconds: f64) -> Value {
    json!({"params": {}, "pipeline": [{"id": "nap", "uses": "sleep", "with": {"seconds": seconds}}]})
}

/// A PostgreSQL cluster and a Redis of the scenario's own (decision 19: never the shared services), plus every
/// process started against them.
pub struct Cluster {
    pub pg: PrivatePostgres,
    pub redis: PrivateRedis,
    pub url: String,
    logs: Vec<PathBuf>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
            .await
            .expect("initdb");
        pg.create_database("orrery").await;
        let url = pg.url("orrery");
        orrery::db::migrate(&url).await.expect("migrate");
        let redis = tokio::task::spawn_blocking(PrivateRedis::start)
            .await
            .expect("redis-server");
        Cluster {
            pg,
            redis,
            url,
            logs: Vec::new(),
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.url.clone()),
            ("REDIS_URL".into(), self.redis.url()),
            ("REDIS_KEY_PREFIX".into(), String::new()),
            (
                "LOG_LEVEL".into(),
                std::env::var("CHAOS_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            ),
            ("DATABASE_POOL_SIZE".into(), "4".into()),
            ("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()),
            ("WORKER_POLL_INTERVAL".into(), "0.2".into()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    /// Starts `binary` without waiting for it (a replacement after a kill starts as a supervisor would).
    pub async fn spawn(&mut self, binary: &str, extra: &[(&str, &str)]) -> Service {
        let s = Service::start(binary, free_port(), &self.env(extra)).await;
        self.logs.push(s.log.clone());
        s
    }

    /// Starts `binary` and waits for `/health/ready`.
    pub async fn start_ready(&mut self, binary: &str, extra: &[(&str, &str)]) -> Service {
        let s = self.spawn(binary, extra).await;
        s.wait_ready(Duration::from_secs(60)).await;
        s
    }

    /// A connection of the harness's own, retried while PostgreSQL comes back.
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio_postgres::connect(&self.url, NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    return client;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot connect to {}: {e}", self.url)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The log files of every process started, removed when the scenario passed (kept for a failure).
    pub fn forget_logs(&self) {
        for l in &self.logs {
            let _ = std::fs::remove_file(l);
        }
    }

    pub fn log_dir(&self) -> String {
        self.logs
            .first()
            .and_then(|l| l.parent())
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }
}

pub async fn insert_task(c: &Client, kind: &str, expr: &str, max_retries: i16) -> Uuid {
    insert_task_with(c, kind, expr, max_retries, noop_payload()).await
}

pub async fn insert_task_with(
    c: &Client,
    kind: &str,
    expr: &str,
    max_retries: i16,
    payload: Value,
) -> Uuid {
    c.query_one(
        "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, timezone, payload, max_retries,
                           backoff_strategy, materialized_until)
         VALUES ('chaos', $1, $2, $3, 'UTC', $4, $5, 'fixed', now()) RETURNING id",
        &[
            &orrery::model::SYSTEM_AGENT_ID,
            &kind,
            &expr,
            &payload,
            &max_retries,
        ],
    )
    .await
    .expect("insert task")
    .get(0)
}

/// Two-second schedules starting at `start` (a whole second): FREQ=SECONDLY;INTERVAL=2 from DTSTART.
pub struct Schedules {
    pub tasks: Vec<Uuid>,
    pub start: DateTime<Utc>,
    pub every: i64,
}

impl Schedules {
    pub async fn create(c: &Client, n: usize, lead: chrono::Duration) -> Schedules {
        let now: DateTime<Utc> = c.query_one("SELECT now()", &[]).await.unwrap().get(0);
        let start = (now + lead).trunc_subsecs(0);
        let expr = format!(
            "DTSTART:{}\nRRULE:FREQ=SECONDLY;INTERVAL=2",
            start.format("%Y%m%dT%H%M%SZ")
        );
        let mut tasks = Vec::new();
        for _ in 0..n {
            let id = insert_task(c, "rrule", &expr, 3).await;
            // The cursor just before DTSTART, as for a task created a moment ago.
            c.execute(
                "UPDATE task SET materialized_until = $2 WHERE id = $1",
                &[&id, &(start - chrono::Duration::seconds(1))],
            )
            .await
            .unwrap();
            tasks.push(id);
        }
        Schedules {
            tasks,
            start,
            every: 2,
        }
    }

    /// The nominal instants in [start, until], computed here (not by Orrery's schedule code).
    pub fn expected(&self, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = self.start;
        while t <= until {
            out.push(t);
            t += chrono::Duration::seconds(self.every);
        }
        out
    }
}

/// An accepted item: when its request was sent, its id (due_work id or event id), the tasks it must run.
pub type Accepted = (DateTime<Utc>, String, Vec<Uuid>);

/// What a feeder got back from the API.
#[derive(Default)]
pub struct FeedLog {
    /// 202s: (when the request was sent, the accepted id, the tasks it reaches).
    pub accepted: Vec<Accepted>,
    /// Everything else, by status code or error kind.
    pub refused: BTreeMap<String, u64>,
    /// The slowest answer of each kind, in seconds.
    pub slowest_accepted: f64,
    pub slowest_refused: f64,
}

impl FeedLog {
    pub fn refused_text(&self) -> String {
        if self.refused.is_empty() {
            return "none".into();
        }
        let kinds = self
            .refused
            .iter()
            .map(|(k, v)| format!("{v}×{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{kinds} (slowest {:.1} s)", self.slowest_refused)
    }

    pub fn accepted_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
        self.accepted
            .iter()
            .filter(|(t, _, _)| *t >= from && *t < to)
            .count()
    }
}

pub struct Feeder {
    pub log: Arc<Mutex<FeedLog>>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

pub enum Feed {
    /// POST /tasks/{id}/run_now: accepted = 202 with a due_work_id.
    RunNow(Uuid),
    /// POST /events on a topic: accepted = 202 with an event_id (and the matching tasks).
    Events { topic: String, tasks: Vec<Uuid> },
}

impl Feeder {
    /// One request every `every`, each bounded by a 10 s timeout, until stopped.
    pub fn start(api_port: u16, feed: Feed, every: Duration) -> Feeder {
        let log = Arc::new(Mutex::new(FeedLog::default()));
        let (stop, mut stopped) = watch::channel(false);
        let l = log.clone();
        let handle = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client");
            let base = format!("http://127.0.0.1:{api_port}");
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {},
                    _ = stopped.changed() => return,
                }
                seq += 1;
                let sent = Utc::now();
                let clock = Instant::now();
                let req = match &feed {
                    Feed::RunNow(task) => http.post(format!("{base}/tasks/{task}/run_now")),
                    Feed::Events { topic, .. } => http
                        .post(format!("{base}/events"))
                        .json(&json!({"topic": topic, "payload": {"seq": seq}})),
                };
                let outcome = match req.bearer_auth(ADMIN).send().await {
                    Ok(resp) if resp.status().as_u16() == 202 => match resp.json::<Value>().await {
                        Ok(body) => Ok(body),
                        Err(_) => Err("202 unreadable".to_string()),
                    },
                    Ok(resp) => Err(resp.status().as_u16().to_string()),
                    Err(e) if e.is_timeout() => Err("timeout".into()),
                    Err(_) => Err("connection error".into()),
                };
                let took = clock.elapsed().as_secs_f64();
                let mut log = l.lock().unwrap();
                if outcome.is_ok() {
                    log.slowest_accepted = log.slowest_accepted.max(took);
                } else {
                    log.slowest_refused = log.slowest_refused.max(took);
                }
                match outcome {
                    Ok(body) => {
                        let accepted = match &feed {
                            Feed::RunNow(task) => body["due_work_id"]
                                .as_i64()
                                .map(|id| (id.to_string(), vec![*task])),
                            // Every active task whose pattern matches must run once per event (the
                            // scheduler delivers to all of them): the harness's own list is the truth.
                            Feed::Events { tasks, .. } => body["event_id"]
                                .as_str()
                                .map(|id| (id.to_string(), tasks.clone())),
                        };
                        match accepted {
                            Some((id, tasks)) => log.accepted.push((sent, id, tasks)),
                            None => *log.refused.entry("202 without id".into()).or_default() += 1,
                        }
                    }
                    Err(kind) => *log.refused.entry(kind).or_default() += 1,
                }
            }
        });
        Feeder { log, stop, handle }
    }

    pub async fn stop(self) -> FeedLog {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
        Arc::try_unwrap(self.log)
            .ok()
            .expect("feeder finished")
            .into_inner()
            .unwrap()
    }
}

/// Successful task_run rows per due_work id, for the given ids.
pub async fn successes_by_work(c: &Client, ids: &[i64]) -> HashMap<i64, i64> {
    c.query(
        "SELECT due_work_id, count(*) FILTER (WHERE success) FROM task_run
          WHERE due_work_id = ANY($1) GROUP BY 1",
        &[&ids],
    )
    .await
    .expect("runs by due_work")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// (lost, succeeded more than once): ids with no successful run, ids with two or more.
pub fn lost_and_twice(ids: &[i64], by: &HashMap<i64, i64>) -> (u64, u64) {
    let lost = ids
        .iter()
        .filter(|id| by.get(id).copied().unwrap_or(0) == 0)
        .count();
    let twice = ids
        .iter()
        .filter(|id| by.get(id).copied().unwrap_or(0) > 1)
        .count();
    (lost as u64, twice as u64)
}

/// Fires accounting: every expected (task, instant) against the successful runs' scheduled_for.
pub struct Fires {
    pub expected: u64,
    pub missed: u64,
    /// Extra successful runs for an expected instant, plus successful runs at instants that are not fires.
    pub duplicated: u64,
    pub unexpected: u64,
    pub max_lateness: Option<f64>,
    /// Fires recorded as skipped by the catch-up policy (`error_kind = 'misfired'`): missed, and why.
    pub misfired: u64,
}

pub async fn fires(c: &Client, s: &Schedules, until: DateTime<Utc>) -> Fires {
    let rows = c
        .query(
            "SELECT task_id, scheduled_for, count(*) FILTER (WHERE success),
                    max(extract(epoch FROM started_at - scheduled_for)::float8) FILTER (WHERE success)
               FROM task_run WHERE task_id = ANY($1) AND scheduled_for <= $2 GROUP BY 1, 2",
            &[&s.tasks, &until],
        )
        .await
        .expect("fires");
    let misfired: i64 = c
        .query_one(
            "SELECT count(*) FROM task_run WHERE task_id = ANY($1) AND scheduled_for <= $2
                AND error_kind = 'misfired'",
            &[&s.tasks, &until],
        )
        .await
        .expect("misfires")
        .get(0);
    let mut got: HashMap<(Uuid, DateTime<Utc>), i64> = HashMap::new();
    let mut max_lateness: Option<f64> = None;
    for r in &rows {
        got.insert((r.get(0), r.get(1)), r.get(2));
        if let Some(l) = r.get::<_, Option<f64>>(3) {
            max_lateness = Some(max_lateness.map_or(l, |m: f64| m.max(l)));
        }
    }
    let instants = s.expected(until);
    let expected: HashSet<(Uuid, DateTime<Utc>)> = s
        .tasks
        .iter()
        .flat_map(|t| instants.iter().map(move |i| (*t, *i)))
        .collect();
    let mut f = Fires {
        expected: expected.len() as u64,
        missed: 0,
        duplicated: 0,
        unexpected: 0,
        max_lateness,
        misfired: misfired as u64,
    };
    for key in &expected {
        match got.get(key).copied().unwrap_or(0) {
            0 => f.missed += 1,
            1 => {}
            n => f.duplicated += (n - 1) as u64,
        }
    }
    for (key, n) in &got {
        if !expected.contains(key) && *n > 0 {
            f.unexpected += 1;
            f.duplicated += *n as u64;
        }
    }
    f
}

/// Events accounting: every (task, event id) an accepted event reaches, against successful runs.
/// Returns (expected deliveries, lost, delivered more than once).
pub async fn events(
    c: &Client,
    accepted: &[(DateTime<Utc>, String, Vec<Uuid>)],
) -> (u64, u64, u64) {
    let ids: Vec<&str> = accepted.iter().map(|(_, id, _)| id.as_str()).collect();
    let rows = c
        .query(
            "SELECT task_id, event_id, count(*) FILTER (WHERE success) FROM task_run
              WHERE event_id = ANY($1) GROUP BY 1, 2",
            &[&ids],
        )
        .await
        .expect("event runs");
    let got: HashMap<(Uuid, String), i64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let (mut expected, mut lost, mut twice) = (0, 0, 0);
    for (_, id, tasks) in accepted {
        for t in tasks {
            expected += 1;
            match got.get(&(*t, id.clone())).copied().unwrap_or(0) {
                0 => lost += 1,
                1 => {}
                _ => twice += 1,
            }
        }
    }
    (expected, lost, twice)
}

/// The start of the first successful run of `tasks` that started after `after` (optionally of one trigger).
pub async fn first_success_after(
    c: &Client,
    tasks: &[Uuid],
    after: DateTime<Utc>,
    trigger: Option<&str>,
) -> Option<DateTime<Utc>> {
    c.query_one(
        "SELECT min(started_at) FROM task_run
          WHERE success AND task_id = ANY($1) AND started_at > $2 AND ($3::text IS NULL OR trigger = $3)",
        &[&tasks, &after, &trigger],
    )
    .await
    .expect("first success")
    .get(0)
}

/// Seconds from `after` to the first fire due after it that ran on time (started within 1 s of its instant):
/// when the schedules were back to normal.
pub async fn fires_on_time_after(c: &Client, s: &Schedules, after: DateTime<Utc>) -> Option<f64> {
    let first: Option<DateTime<Utc>> = c
        .query_one(
            "SELECT min(scheduled_for) FROM task_run
              WHERE success AND task_id = ANY($1) AND scheduled_for > $2
                AND started_at - scheduled_for < interval '1 second'",
            &[&s.tasks, &after],
        )
        .await
        .expect("fires on time")
        .get(0);
    first.map(|t| secs(t - after))
}

/// Polls `check` (with a fresh connection each time, so that a restarted PostgreSQL is no obstacle) every
/// 250 ms until it holds; false after `timeout`.
pub async fn settle<F, Fut>(cl: &Cluster, timeout: Duration, mut check: F) -> bool
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check(cl.client().await).await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn count(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    c.query_one(sql, params).await.expect(sql).get(0)
}

pub fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// What a scenario accounts for.
pub struct Subject<'a> {
    /// Accepted due_work ids: each must succeed exactly once.
    pub work: &'a [i64],
    /// Schedules and the end of the observed window: each fire must succeed exactly once.
    pub schedules: Option<(&'a Schedules, DateTime<Utc>)>,
    /// Accepted events and the tasks each must reach: each (task, event) must succeed exactly once.
    pub events: Option<&'a [Accepted]>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Counts {
    pub runs_lost: Option<u64>,
    pub runs_twice: Option<u64>,
    pub fires_missed: Option<u64>,
    pub fires_duplicated: Option<u64>,
    pub events_lost: Option<u64>,
}

impl Counts {
    pub fn plus(self, o: Counts) -> Counts {
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Counts {
            runs_lost: add(self.runs_lost, o.runs_lost),
            runs_twice: add(self.runs_twice, o.runs_twice),
            fires_missed: add(self.fires_missed, o.fires_missed),
            fires_duplicated: add(self.fires_duplicated, o.fires_duplicated),
            events_lost: add(self.events_lost, o.events_lost),
        }
    }
}

/// The table's numbers for `s`, from the database. Duplicated event deliveries count as runs succeeded twice.
pub async fn tally(c: &Client, s: &Subject<'_>) -> (Counts, Option<Fires>, Option<u64>) {
    let mut out = Counts::default();
    if !s.work.is_empty() || s.schedules.is_none() {
        let by = successes_by_work(c, s.work).await;
        let (lost, twice) = lost_and_twice(s.work, &by);
        out.runs_lost = Some(lost);
        out.runs_twice = Some(twice);
    }
    let fires = match s.schedules {
        Some((sched, until)) => {
            let f = fires(c, sched, until).await;
            out.fires_missed = Some(f.missed);
            out.fires_duplicated = Some(f.duplicated);
            Some(f)
        }
        None => None,
    };
    let mut deliveries = None;
    if let Some(accepted) = s.events {
        let (expected, lost, twice) = events(c, accepted).await;
        out.events_lost = Some(lost);
        out.runs_twice = Some(out.runs_twice.unwrap_or(0) + twice);
        deliveries = Some(expected);
    }
    (out, fires, deliveries)
}

/// The id of a successful task_run that is the only success of its (due_work | fire | event delivery).
async fn single_success(
    c: &Client,
    sql_filter: &str,
    group: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    skip: i64,
) -> Option<i64> {
    let sql = format!(
        "SELECT min(id) FROM task_run WHERE success AND {sql_filter}
          GROUP BY {group} HAVING count(*) = 1
          ORDER BY 1 OFFSET {skip} LIMIT 1"
    );
    c.query_opt(&sql, params)
        .await
        .expect("sabotage pick")
        .map(|r| r.get(0))
}

async fn erase(c: &Client, run: i64) {
    c.execute("DELETE FROM task_run WHERE id = $1", &[&run])
        .await
        .expect("sabotage: delete");
}

async fn duplicate(c: &Client, run: i64) {
    c.execute(
        "INSERT INTO task_run (task_id, due_work_id, attempt, worker_id, trigger, scheduled_for, started_at,
                               finished_at, success, error, error_kind, output, event_id, event)
         SELECT task_id, due_work_id, attempt, 'sabotage', trigger, scheduled_for, started_at, finished_at,
                success, error, error_kind, output, event_id, event
           FROM task_run WHERE id = $1",
        &[&run],
    )
    .await
    .expect("sabotage: duplicate");
}

/// The self-test (`--sabotage`): damages the results the way a broken system would — one accepted run's
/// success erased, another's recorded twice, likewise for a fire, one event delivery erased — and returns the
/// damage done, which the accounting must then report exactly on top of what it found before.
pub async fn sabotage(c: &Client, s: &Subject<'_>) -> Counts {
    let mut done = Counts::default();
    if !s.work.is_empty() {
        let filter = "due_work_id = ANY($1)";
        if let Some(r) = single_success(c, filter, "due_work_id", &[&s.work], 0).await {
            erase(c, r).await;
            done.runs_lost = Some(1);
        }
        if let Some(r) = single_success(c, filter, "due_work_id", &[&s.work], 1).await {
            duplicate(c, r).await;
            done.runs_twice = Some(1);
        }
    }
    if let Some((sched, until)) = s.schedules {
        let filter = "task_id = ANY($1) AND scheduled_for >= $2 AND scheduled_for <= $3
                      AND extract(epoch FROM scheduled_for - $2) % 2 = 0";
        let p: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&sched.tasks, &sched.start, &until];
        if let Some(r) = single_success(c, filter, "task_id, scheduled_for", &p, 0).await {
            erase(c, r).await;
            done.fires_missed = Some(1);
        }
        if let Some(r) = single_success(c, filter, "task_id, scheduled_for", &p, 1).await {
            duplicate(c, r).await;
            done.fires_duplicated = Some(1);
        }
    }
    if let Some(accepted) = s.events {
        let ids: Vec<&str> = accepted.iter().map(|(_, id, _)| id.as_str()).collect();
        if let Some(r) =
            single_success(c, "event_id = ANY($1)", "task_id, event_id", &[&ids], 0).await
        {
            erase(c, r).await;
            done.events_lost = Some(1);
        }
    }
    done
}
