//! Worker benchmark, driving real (release) `orrery-worker` processes as they run in production (run events,
//! heartbeats, metrics on).
//!
//!   orrery-bench-worker drain      # JOBS (100000) pre-inserted no-op rows, PROCS ("1 2 4") processes, REPS (3)
//!   orrery-bench-worker latency    # idle worker: commit that makes a row due → its first step starts
//!   orrery-bench-worker lateness   # rows due in the future: ready_at → first step starts
//!   orrery-bench-worker all
//!   orrery-bench-worker dependencies  # SHAPES ("fan chain"): root → 998 → 1 fan-in, and a 1,000-long chain; REPS (3)
//!                                     # runs of each with PROCS ("2") idle workers; edge overhead = a dependent's
//!                                     # start − the finish of the parent run that released it (the last of a
//!                                     # fan-in's parents). Not part of `all` (it adds tasks the drain would use).
//!
//! Environment: BENCH_DATABASE_URL (admin connection, default postgres://postgres@127.0.0.1:5432/postgres),
//! BENCH_DB (orrery_bench, dropped and recreated), REDIS_URL, WORKER_BIN (default: next to this binary),
//! SAMPLES (200), SPACING_MS (50). Every `WORKER_*` variable is passed on to the workers.
//!
//! Drain figure: jobs ÷ (spawn of the processes → queue empty with every task_run written), startup included,
//! like graphile-worker's raw figure. Latency uses task_run.started_at (the database clock at the claim plus
//! the worker's monotonic time since its rows arrived) against the bench's clock when the INSERT returned.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{db}")
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

struct Bench {
    db_url: String,
    db: Client,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    worker_bin: std::path::PathBuf,
    task: Uuid,
}

struct Worker {
    child: tokio::process::Child,
    port: u16,
}

impl Bench {
    async fn setup() -> Result<Bench> {
        let admin_url = env(
            "BENCH_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let name = env("BENCH_DB", "orrery_bench");
        let admin = connect(&admin_url).await?;
        admin
            .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
            .await?;
        admin
            .execute(&format!("CREATE DATABASE {name}"), &[])
            .await?;
        let db_url = with_database(&admin_url, &name);
        orrery::db::migrate(&db_url)
            .await
            .map_err(|e| e.to_string())?;
        let db = connect(&db_url).await?;
        let payload = serde_json::json!({"params": {}, "pipeline": [{"id": "n", "uses": "noop"}]});
        let task: Uuid = db
            .query_one(
                "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, payload)
                 VALUES ('bench', $1, 'cron', '0 0 1 1 *', $2) RETURNING id",
                &[&orrery::model::SYSTEM_AGENT_ID, &payload],
            )
            .await?
            .get(0);
        let redis = redis::Client::open(env("REDIS_URL", "redis://127.0.0.1:6379"))?
            .get_multiplexed_async_connection()
            .await?;
        let worker_bin = match std::env::var("WORKER_BIN") {
            Ok(p) => p.into(),
            Err(_) => std::env::current_exe()?
                .parent()
                .ok_or("no parent directory")?
                .join("orrery-worker"),
        };
        Ok(Bench {
            db_url,
            db,
            redis,
            prefix: format!("bench:{}:", Uuid::new_v4().simple()),
            worker_bin,
            task,
        })
    }

    async fn reset(&self) -> Result<()> {
        self.db
            .batch_execute(
                "TRUNCATE task_run, due_work, concurrency_slot, worker_heartbeat, queue_flow;
                 DELETE FROM queue WHERE name <> 'default'",
            )
            .await?;
        Ok(())
    }

    fn spawn_worker(&self) -> Result<Worker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = tokio::process::Command::new(&self.worker_bin);
        cmd.env_clear();
        for (k, v) in std::env::vars() {
            if k.starts_with("WORKER_") || k == "PATH" || k == "HOME" || k == "REDIS_URL" {
                cmd.env(k, v);
            }
        }
        cmd.env("DATABASE_URL", &self.db_url)
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("WORKER_HEALTH_PORT", port.to_string())
            .env("LOG_LEVEL", env("BENCH_WORKER_LOG", "warn"))
            .stdin(Stdio::null())
            .stdout(match std::env::var("BENCH_WORKER_LOG_DIR") {
                Ok(dir) => Stdio::from(std::fs::File::create(
                    std::path::Path::new(&dir).join(format!("orrery-worker-{port}.log")),
                )?),
                Err(_) => Stdio::null(),
            })
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        Ok(Worker {
            child: cmd.spawn()?,
            port,
        })
    }

    async fn hint(&mut self) -> Result<()> {
        let _: String = redis::cmd("XADD")
            .arg(format!("{}orrery:wakeup", self.prefix))
            .arg("MAXLEN")
            .arg("~")
            .arg(1000)
            .arg("*")
            .arg("reason")
            .arg("bench")
            .query_async(&mut self.redis)
            .await?;
        Ok(())
    }

    async fn stat(&self, sql: &str) -> Result<i64> {
        Ok(self.db.query_one(sql, &[]).await?.get(0))
    }
}

async fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /health/ready HTTP/1.0\r\nHost: x\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("worker on port {port} not ready");
}

async fn stop(mut workers: Vec<Worker>) {
    for w in &workers {
        if let Some(pid) = w.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-15")
                .arg(pid.to_string())
                .status();
        }
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn drain(b: &mut Bench) -> Result<()> {
    let jobs: i64 = env("JOBS", "100000").parse()?;
    let reps: usize = env("REPS", "3").parse()?;
    let procs: Vec<usize> = env("PROCS", "1 2 4")
        .split_whitespace()
        .map(|p| p.parse())
        .collect::<std::result::Result<_, _>>()?;
    // QUEUES=N spreads the rows over N named queues (round robin; no limits); unset, every row is in `default`
    // and the insert is the one of main before queues.
    let queues: i64 = env("QUEUES", "1").parse()?;
    println!(
        "## drain: {jobs} no-op rows (trigger manual) in {queues} queue(s), worker env: {}",
        worker_env_summary()
    );
    // (processes, jobs/s, WAL bytes/job, commits/job) per repetition.
    type Figures = (usize, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut results: Vec<Figures> = procs.iter().map(|p| (*p, vec![], vec![], vec![])).collect();
    for rep in 1..=reps {
        for (i, &p) in procs.iter().enumerate() {
            b.reset().await?;
            let t = Instant::now();
            if queues > 1 {
                b.db.execute(
                    "INSERT INTO queue (name) SELECT 'q' || g FROM generate_series(0, $1::bigint - 1) AS g",
                    &[&queues],
                )
                .await?;
                b.db.execute(
                    "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, queue)
                     SELECT t.ids[1 + g % cardinality(t.ids)], now(), now(), 5, 'manual', 'q' || (g % $2::bigint)
                       FROM generate_series(1, $1::bigint) AS g,
                            (SELECT array_agg(id ORDER BY created_at) AS ids FROM task) AS t",
                    &[&jobs, &queues],
                )
                .await?;
            } else {
                b.db.execute(
                    "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
                     SELECT t.ids[1 + g % cardinality(t.ids)], now(), now(), 5, 'manual'
                       FROM generate_series(1, $1::bigint) AS g,
                            (SELECT array_agg(id ORDER BY created_at) AS ids FROM task) AS t",
                    &[&jobs],
                )
                .await?;
            }
            let insert_ms = t.elapsed().as_secs_f64() * 1000.0;
            b.db.batch_execute("ANALYZE due_work").await?;
            let quiet = wait_quiet(0.15, Duration::from_secs(60)).await;
            let wal0: String =
                b.db.query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await?
                    .get(0);
            let xact0 = b
                .stat("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                .await?;
            let started = Instant::now();
            let mut workers = Vec::new();
            for _ in 0..p {
                workers.push(b.spawn_worker()?);
            }
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let left: bool =
                    b.db.query_one("SELECT EXISTS (SELECT 1 FROM due_work)", &[])
                        .await?
                        .get(0);
                if !left {
                    break;
                }
                if started.elapsed() > Duration::from_secs(600) {
                    return Err("drain did not finish in 10 minutes".into());
                }
            }
            let drain_s = started.elapsed().as_secs_f64();
            let wal: f64 =
                b.db.query_one(
                    "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::float8",
                    &[&wal0],
                )
                .await?
                .get(0);
            stop(workers).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            let xact1 = b
                .stat("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                .await?;
            let runs = b
                .stat("SELECT count(*) FROM task_run WHERE success")
                .await?;
            let distinct = b
                .stat("SELECT count(DISTINCT due_work_id) FROM task_run")
                .await?;
            if runs != jobs || distinct != jobs {
                return Err(
                    format!("expected {jobs} runs, found {runs} ({distinct} distinct)").into(),
                );
            }
            let jps = jobs as f64 / drain_s;
            let wal_per_job = wal / jobs as f64;
            let xacts_per_job = (xact1 - xact0) as f64 / jobs as f64;
            println!(
                "[rep {rep}] procs {p}: drain {:.0} ms  {:.0} jobs/s  WAL {:.0} B/job  commits {:.3}/job  (insert {:.0} ms, busy before {:.2})",
                drain_s * 1000.0,
                jps,
                wal_per_job,
                xacts_per_job,
                insert_ms,
                quiet
            );
            results[i].1.push(jps);
            results[i].2.push(wal_per_job);
            results[i].3.push(xacts_per_job);
        }
    }
    println!("\n| processes | jobs/s (median of {reps}) | WAL bytes/job | commits/job |");
    println!("|---|---|---|---|");
    for (p, mut jps, mut wal, mut x) in results {
        println!(
            "| {p} | {:.0} | {:.0} | {:.3} |",
            median(&mut jps),
            median(&mut wal),
            median(&mut x)
        );
    }
    Ok(())
}

/// Like the graphile bench: waits (at most `max_wait`) until the machine's CPUs are less than `threshold`
/// busy over a second, so another process's burst does not land in one measurement. Returns the busy share.
async fn wait_quiet(threshold: f64, max_wait: Duration) -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0);
        Some((cpu.iter().sum(), idle))
    }
    let deadline = Instant::now() + max_wait;
    loop {
        let Some((t0, i0)) = sample() else { return 0.0 };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((t1, i1)) = sample() else { return 0.0 };
        let busy = 1.0 - (i1 - i0) as f64 / (t1 - t0).max(1) as f64;
        if busy < threshold || Instant::now() > deadline {
            return busy;
        }
    }
}

fn worker_env_summary() -> String {
    let mut v: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("WORKER_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    if v.is_empty() {
        "defaults".into()
    } else {
        v.join(" ")
    }
}

fn summarize(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name}: n={} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  min {:.3} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0),
        ms[ms.len() - 1],
        ms[0]
    );
}

async fn latency(b: &mut Bench) -> Result<()> {
    let samples: usize = env("SAMPLES", "200").parse()?;
    let spacing = Duration::from_millis(env("SPACING_MS", "50").parse()?);
    b.reset().await?;
    let w = b.spawn_worker()?;
    wait_ready(w.port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let insert =
        b.db.prepare(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
             VALUES ($1, now(), now(), 5, 'manual') RETURNING id",
        )
        .await?;
    let mut committed: Vec<(i64, DateTime<Utc>)> = Vec::new();
    let mut hint_ms = Vec::new();
    let warmup = 20;
    for i in 0..samples + warmup {
        let id: i64 = b.db.query_one(&insert, &[&b.task]).await?.get(0);
        let at = Utc::now();
        let t = Instant::now();
        b.hint().await?;
        if i >= warmup {
            committed.push((id, at));
            hint_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(spacing).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ms = Vec::new();
    for (id, at) in &committed {
        let started: DateTime<Utc> =
            b.db.query_one(
                "SELECT started_at FROM task_run WHERE due_work_id = $1",
                &[id],
            )
            .await?
            .get(0);
        ms.push((started - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    stop(vec![w]).await;
    println!(
        "## pickup latency (idle worker, one row at a time every {} ms)",
        spacing.as_millis()
    );
    summarize("commit → first step starts", ms);
    summarize(
        "  of which the wake-up hint's XADD round trip (after the commit)",
        hint_ms,
    );
    Ok(())
}

async fn lateness(b: &mut Bench) -> Result<()> {
    let samples: i64 = env("SAMPLES", "200").parse()?;
    let spacing_ms: f64 = env("SPACING_MS", "50").parse()?;
    b.reset().await?;
    let w = b.spawn_worker()?;
    wait_ready(w.port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.db.execute(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
         SELECT $1, t, t, 5, 'manual'
           FROM (SELECT now() + interval '1 second' + make_interval(secs => i * $3::float8 / 1000.0) AS t
                   FROM generate_series(0, $2::bigint - 1) AS i) s",
        &[&b.task, &samples, &spacing_ms],
    )
    .await?;
    b.hint().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.stat("SELECT count(*) FROM task_run").await? < samples {
        if Instant::now() > deadline {
            return Err("lateness runs did not finish".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows =
        b.db.query(
            "SELECT extract(epoch FROM started_at - scheduled_for)::float8 * 1000 FROM task_run",
            &[],
        )
        .await?;
    stop(vec![w]).await;
    println!("## scheduled lateness (rows due every {spacing_ms} ms, inserted ahead of time)");
    summarize(
        "ready_at → first step starts",
        rows.iter().map(|r| r.get::<_, f64>(0)).collect(),
    );
    Ok(())
}

/// Creates the tasks of one dependency shape (noop pipelines) and a task with no dependents for the baseline;
/// returns (root, number of nodes, plain task).
async fn dependency_shape(b: &Bench, shape: &str) -> Result<(Uuid, usize, Uuid)> {
    let payload = serde_json::json!({"params": {}, "pipeline": [{"id": "n", "uses": "noop"}]});
    let new_task = |title: String, after: serde_json::Value| {
        let payload = payload.clone();
        async move {
            let id: Uuid = b
                .db
                .query_one(
                    "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, payload, after)
                     VALUES ($1, $2, 'event', 'bench.never', $3, $4) RETURNING id",
                    &[&title, &orrery::model::SYSTEM_AGENT_ID, &payload, &after],
                )
                .await?
                .get(0);
            Result::Ok(id)
        }
    };
    let edge = |id: Uuid| serde_json::json!({"task": id.to_string(), "task_id": id, "condition": "success"});
    let root = new_task(format!("{shape} root"), serde_json::json!([])).await?;
    let plain = new_task("no dependents".into(), serde_json::json!([])).await?;
    match shape {
        "fan" => {
            let mut middle = Vec::with_capacity(998);
            for i in 0..998 {
                middle.push(new_task(format!("fan {i}"), serde_json::json!([edge(root)])).await?);
            }
            let after: Vec<serde_json::Value> = middle.iter().map(|m| edge(*m)).collect();
            new_task("fan-in".into(), serde_json::Value::Array(after)).await?;
            Ok((root, 1000, plain))
        }
        "chain" => {
            let mut prev = root;
            for i in 1..1000 {
                prev = new_task(format!("chain {i}"), serde_json::json!([edge(prev)])).await?;
            }
            Ok((root, 1000, plain))
        }
        other => Err(format!("unknown shape {other} (fan, chain)").into()),
    }
}

async fn dependencies(b: &mut Bench) -> Result<()> {
    let reps: usize = env("REPS", "3").parse()?;
    let procs: usize = env("PROCS", "2").parse()?;
    let shapes = env("SHAPES", "fan chain");
    println!(
        "## dependencies: {procs} worker process(es), worker env: {}",
        worker_env_summary()
    );
    for shape in shapes.split_whitespace() {
        b.reset().await?;
        b.db.batch_execute("TRUNCATE task CASCADE").await?;
        let (root, nodes, plain) = dependency_shape(b, shape).await?;
        b.db.batch_execute("ANALYZE").await?;
        let mut workers = Vec::new();
        for _ in 0..procs {
            workers.push(b.spawn_worker()?);
        }
        for w in &workers {
            wait_ready(w.port).await;
        }
        let mut overhead = Vec::new();
        let mut totals = Vec::new();
        let (mut fan_firsts, mut fan_ins, mut amortized_all) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 1..=reps {
            let quiet = wait_quiet(0.15, Duration::from_secs(60)).await;
            let trace: Uuid =
                b.db.query_one(
                    "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
                     VALUES ($1, now(), now(), 5, 'manual') RETURNING trace_id",
                    &[&root],
                )
                .await?
                .get(0);
            b.hint().await?;
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let done =
                    b.db.query_one(
                        "SELECT count(*) FROM task_run WHERE trace_id = $1 AND success",
                        &[&trace],
                    )
                    .await?
                    .get::<_, i64>(0);
                if done as usize >= nodes {
                    break;
                }
                if started.elapsed() > Duration::from_secs(300) {
                    return Err(format!("{shape}: {done} of {nodes} runs after 5 minutes").into());
                }
            }
            let rows = b
                .db
                .query(
                    "WITH r AS (SELECT task_id, started_at, finished_at FROM task_run WHERE trace_id = $1 AND success),
                          released AS (SELECT e.task_id, max(p.finished_at) AS at, count(*) AS parents
                                         FROM task_dependency e JOIN r p ON p.task_id = e.parent_task_id
                                        GROUP BY e.task_id)
                     SELECT extract(epoch FROM c.started_at - x.at)::float8 * 1000, x.parents,
                            (SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 * 1000 FROM r)
                       FROM r c JOIN released x ON x.task_id = c.task_id",
                    &[&trace],
                )
                .await?;
            let dup = b
                .stat(&format!(
                    "SELECT count(*) - count(DISTINCT task_id) FROM task_run WHERE trace_id = '{trace}'"
                ))
                .await?;
            if dup != 0 || rows.len() != nodes - 1 {
                return Err(
                    format!("{shape}: {} dependent runs, {dup} duplicates", rows.len()).into(),
                );
            }
            let total_ms: f64 = rows[0].get(2);
            let mut edges: Vec<f64> = rows.iter().map(|r| r.get(0)).collect();
            let fan_in: Vec<f64> = rows
                .iter()
                .filter(|r| r.get::<_, i64>(1) > 1)
                .map(|r| r.get(0))
                .collect();
            summarize(
                &format!("[rep {rep}] {shape}: {nodes} runs in {total_ms:.0} ms (busy before {quiet:.2}); start − release"),
                edges.clone(),
            );
            if shape == "fan" {
                let first = rows
                    .iter()
                    .filter(|r| r.get::<_, i64>(1) == 1)
                    .map(|r| r.get::<_, f64>(0))
                    .fold(f64::MAX, f64::min);
                println!(
                    "[rep {rep}] fan: root finished → first child started {first:.3} ms; last of 998 parents finished → fan-in started {:.3} ms",
                    fan_in.first().copied().unwrap_or(f64::NAN)
                );
                fan_firsts.push(first);
                fan_ins.extend(fan_in);
                // The same 1,000 runs with no dependency between them (one statement inserts them all), on the
                // same workers: what the fan would cost if scheduling edges were free.
                b.db.execute(
                    "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
                     SELECT $1, now(), now(), 5, 'manual' FROM generate_series(1, $2::bigint)",
                    &[&plain, &(nodes as i64)],
                )
                .await?;
                b.hint().await?;
                let plain_started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let left: bool =
                        b.db.query_one("SELECT EXISTS (SELECT 1 FROM due_work)", &[])
                            .await?
                            .get(0);
                    if !left {
                        break;
                    }
                }
                let plain_ms: f64 = b
                    .db
                    .query_one(
                        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 * 1000
                           FROM task_run WHERE task_id = $1
                            AND finished_at > now() - make_interval(secs => $2)",
                        &[&plain, &(plain_started.elapsed().as_secs_f64() + 1.0)],
                    )
                    .await?
                    .get(0);
                let edges_n = 998.0 * 2.0;
                let amortized = (total_ms - plain_ms) / edges_n;
                println!(
                    "[rep {rep}] fan: the same 1000 runs without dependencies take {plain_ms:.0} ms: scheduling overhead {:.0} ms over {edges_n} edges = {amortized:.3} ms per edge",
                    total_ms - plain_ms
                );
                amortized_all.push(amortized);
            }
            totals.push(total_ms);
            overhead.append(&mut edges);
        }
        stop(workers).await;
        summarize(
            &format!(
                "{shape}, all reps (median total {:.0} ms); start − release",
                median(&mut totals)
            ),
            overhead,
        );
        if shape == "fan" {
            summarize("fan, all reps: root → first child", fan_firsts);
            summarize("fan, all reps: last parent → fan-in", fan_ins);
            summarize(
                "fan, all reps: amortized scheduling overhead per edge",
                amortized_all,
            );
        }
    }
    Ok(())
}

/// Commits in this database so far (every statement of the workers is its own transaction).
const COMMITS: &str = "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()";

/// A queue limited to RATE starts per second (default 1,000), with enough no-op rows for the whole measurement
/// waiting, drained by PROCS workers (default 2): starts are counted over MEASURE_S seconds (default 60) after a
/// WARMUP_S (5) second start, and every 1 s window of recorded starts is checked.
async fn ratelimit(b: &mut Bench) -> Result<()> {
    let rate: i64 = env("RATE", "1000").parse()?;
    let measure: f64 = env("MEASURE_S", "60").parse()?;
    let warmup: f64 = env("WARMUP_S", "5").parse()?;
    let procs: usize = env("PROCS", "2").trim().parse()?;
    let jobs = (rate as f64 * (measure + warmup + 10.0)) as i64;
    b.reset().await?;
    b.db.execute(
        "INSERT INTO queue (name, rate_limit, rate_period_seconds) VALUES ('limited', $1, 1)",
        &[&(rate as i32)],
    )
    .await?;
    b.db.execute(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, queue)
         SELECT $1, now(), now(), 5, 'manual', 'limited' FROM generate_series(1, $2::bigint)",
        &[&b.task, &jobs],
    )
    .await?;
    b.db.batch_execute("ANALYZE due_work").await?;
    println!(
        "## rate limit: {rate} starts/s on one queue, {jobs} rows waiting, {procs} worker process(es), worker env: {}",
        worker_env_summary()
    );
    let mut workers = Vec::new();
    for _ in 0..procs {
        workers.push(b.spawn_worker()?);
    }
    let c0 = b.stat(COMMITS).await?;
    let t0 = Instant::now();
    // Workers take about a second to start; the window is counted from the first start, so leave a margin.
    tokio::time::sleep(Duration::from_secs_f64(warmup + measure + 4.0)).await;
    let c1 = b.stat(COMMITS).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    stop(workers).await;
    let first: DateTime<Utc> =
        b.db.query_one("SELECT min(started_at) FROM task_run", &[])
            .await?
            .get(0);
    let from = first + chrono::Duration::milliseconds((warmup * 1000.0) as i64);
    let to = from + chrono::Duration::milliseconds((measure * 1000.0) as i64);
    let starts: Vec<DateTime<Utc>> = b
        .db
        .query(
            "SELECT started_at FROM task_run WHERE success AND started_at >= $1 AND started_at < $2 ORDER BY started_at",
            &[&from, &to],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let window = chrono::Duration::seconds(1);
    let mut worst = 0usize;
    let mut j = 0usize;
    for i in 0..starts.len() {
        while j < starts.len() && starts[j] - starts[i] < window {
            j += 1;
        }
        worst = worst.max(j - i);
    }
    // Starts per whole second of the window, to see the pattern (bursts, gaps).
    let mut per_second = vec![0usize; measure.ceil() as usize];
    for t in &starts {
        let i = ((*t - from).num_milliseconds() / 1000) as usize;
        if let Some(n) = per_second.get_mut(i) {
            *n += 1;
        }
    }
    println!(
        "starts per second of the window: min {} max {}; first ten {:?}",
        per_second.iter().min().unwrap_or(&0),
        per_second.iter().max().unwrap_or(&0),
        &per_second[..per_second.len().min(10)]
    );
    let expected = rate as f64 * measure;
    println!(
        "starts in {measure} s: {} (limit allows {expected:.0}: {:.2} %), {:.1} starts/s; busiest 1 s window of recorded starts: {worst} (limit {rate}); {:.0} commits/s",
        starts.len(),
        starts.len() as f64 / expected * 100.0,
        starts.len() as f64 / measure,
        (c1 - c0) as f64 / elapsed,
    );
    Ok(())
}

/// Statements per second while WAITING rows (default 10,000) wait on a limit that is full, with PROCS workers
/// (default 2) idle otherwise, against the same workers with nothing to do: KIND=queue (the queue's rate limit,
/// 1 per hour, used up) or KIND=key (one rate key's limit used up, the queue open).
async fn waiting(b: &mut Bench) -> Result<()> {
    let waiting: i64 = env("WAITING", "10000").parse()?;
    let procs: usize = env("PROCS", "2").trim().parse()?;
    let seconds: f64 = env("MEASURE_S", "20").parse()?;
    for kind in env("KIND", "idle queue key").split_whitespace() {
        b.reset().await?;
        match kind {
            "idle" => {}
            "queue" => {
                b.db.batch_execute(
                    "INSERT INTO queue (name, rate_limit, rate_period_seconds) VALUES ('limited', 1, 3600)",
                )
                .await?;
            }
            "key" => {
                b.db.batch_execute(
                    "INSERT INTO queue (name, key_rate_limit, key_rate_period_seconds) VALUES ('limited', 1, 3600)",
                )
                .await?;
            }
            other => return Err(format!("unknown KIND {other} (idle, queue, key)").into()),
        }
        if kind != "idle" {
            // One more row than waits: the first takes the hour's only start.
            b.db.execute(
                "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, queue, rate_key)
                 SELECT $1, now(), now(), 5, 'manual', 'limited', 'customer-1'
                   FROM generate_series(0, $2::bigint)",
                &[&b.task, &waiting],
            )
            .await?;
            b.db.batch_execute("ANALYZE due_work").await?;
        }
        let mut workers = Vec::new();
        for _ in 0..procs {
            workers.push(b.spawn_worker()?);
        }
        for w in &workers {
            wait_ready(w.port).await;
        }
        b.hint().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c0 = b.stat(COMMITS).await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let c1 = b.stat(COMMITS).await?;
        let elapsed = t0.elapsed().as_secs_f64();
        stop(workers).await;
        let runs = b.stat("SELECT count(*) FROM task_run").await?;
        let left = b
            .stat("SELECT count(*) FROM due_work WHERE locked_by IS NULL")
            .await?;
        println!(
            "{kind}: {:.1} statements/s over {seconds} s with {procs} idle worker(s); runs {runs}, rows still waiting {left}",
            (c1 - c0) as f64 / elapsed
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let mut b = Bench::setup().await?;
    println!(
        "nproc {}  worker {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        b.worker_bin.display()
    );
    match what.as_str() {
        "drain" => drain(&mut b).await?,
        "latency" => latency(&mut b).await?,
        "lateness" => lateness(&mut b).await?,
        "dependencies" => dependencies(&mut b).await?,
        "ratelimit" => ratelimit(&mut b).await?,
        "waiting" => waiting(&mut b).await?,
        "all" => {
            latency(&mut b).await?;
            lateness(&mut b).await?;
            drain(&mut b).await?;
        }
        other => {
            return Err(format!(
                "unknown step {other} (drain, latency, lateness, dependencies, ratelimit, waiting, all)"
            )
            .into())
        }
    }
    let admin = connect(&env(
        "BENCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    ))
    .await?;
    drop(b);
    let _ = admin
        .execute(
            &format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                env("BENCH_DB", "orrery_bench")
            ),
            &[],
        )
        .await;
    Ok(())
}
