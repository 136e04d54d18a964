//! Console benchmark: loads 10,000 tasks and 1,000,000 task_run rows (plus due and dead work and workers)
//! into the database at DATABASE_URL (which must be empty: ops/bench-console.sh creates a scratch one),
//! starts the API in this process, and measures the console's endpoints over HTTP, one request at a time
//! (latency, not throughput): p50 / p95 / max of BENCH_SAMPLES requests after a warm-up. Then prints
//! EXPLAIN (ANALYZE, BUFFERS) of the overview's statements. Run it in release mode: ops/bench-console.sh.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::NoTls;

const ADMIN: &str = "bench-console-admin-token-0123456789";
const OPS_AGENT: &str = "00000000-0000-0000-0000-0000000000b1";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn load(db: &tokio_postgres::Client, tasks: i64, runs: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    db.batch_execute(&format!(
        "INSERT INTO agent (id, name, scopes) VALUES ('{OPS_AGENT}', 'bench-ops', ARRAY['tasks:read','tasks:write','runs:read']);
         INSERT INTO agent_token (agent_id, token_hash)
              VALUES ('{OPS_AGENT}', sha256('orr_{ops}'::bytea));
         INSERT INTO task (title, created_by, schedule_kind, schedule_expr, timezone, status, next_run_at, created_at)
         SELECT 'task ' || g,
                CASE WHEN g % 10 = 0 THEN '{OPS_AGENT}'::uuid ELSE '00000000-0000-0000-0000-000000000001'::uuid END,
                (ARRAY['cron','cron','cron','rrule','once','event'])[1 + g % 6],
                CASE g % 6 WHEN 3 THEN 'FREQ=DAILY;BYHOUR=9' WHEN 4 THEN '2030-01-01T00:00:00Z' WHEN 5 THEN 'orders.*'
                     ELSE '*/' || (1 + g % 30) || ' * * * *' END,
                (ARRAY['UTC','Europe/Berlin','America/New_York','Asia/Tokyo'])[1 + g % 4],
                CASE WHEN g % 20 = 1 THEN 'paused' WHEN g % 20 = 2 THEN 'canceled' WHEN g % 20 = 3 THEN 'completed'
                     ELSE 'active' END,
                CASE WHEN g % 6 = 5 THEN NULL ELSE now() + make_interval(secs => (g * 37) % 604800) END,
                now() - make_interval(secs => g * 60)
           FROM generate_series(1, {tasks}) g;
         CREATE TEMP TABLE ids AS SELECT row_number() OVER () AS n, id FROM task;
         INSERT INTO task_run (task_id, due_work_id, attempt, worker_id, trigger, scheduled_for, started_at,
                               finished_at, success, error, error_kind, output)
         SELECT i.id, g, 1, 'bench-worker', 'schedule', f - interval '2 seconds', f - interval '1 second', f,
                g % 20 <> 0, CASE WHEN g % 20 = 0 THEN 'step call: timed out' END,
                CASE WHEN g % 20 = 0 THEN 'timeout' END, '{{\"steps\": {{}}}}'::jsonb
           FROM (SELECT g, now() - make_interval(secs => (g * 2.592)::int) AS f,
                        1 + (g::bigint * 7919) % {tasks} AS n
                   FROM generate_series(1, {runs}) g) s
           JOIN ids i ON i.n = s.n;
         INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
         SELECT id, next_run_at, next_run_at, 5, 'schedule' FROM task
          WHERE status = 'active' AND next_run_at IS NOT NULL;
         INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, state, attempt, last_error,
                               last_error_kind, dead_at)
         SELECT id, now() - interval '1 day', now() - interval '1 day', 5, 'manual', 'dead', 4,
                'step call: timed out', 'timeout', now() - make_interval(secs => n::int)
           FROM ids WHERE n <= 500;
         INSERT INTO worker_heartbeat (worker_id, hostname, pid, state, processed, failed, in_flight)
         SELECT 'bench-' || g, 'host', g, 'running', 1000 * g, g, g FROM generate_series(1, 4) g;
         ANALYZE;",
        ops = "b".repeat(64),
    ))
    .await
    .context("loading the data set")?;
    println!(
        "loaded {tasks} tasks and {runs} task_run rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Summary {
    p50: f64,
    p95: f64,
    max: f64,
}

async fn measure(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    samples: usize,
) -> anyhow::Result<Summary> {
    for _ in 0..5 {
        let r = http.get(url).bearer_auth(token).send().await?;
        anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().await?;
    }
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let r = http.get(url).bearer_auth(token).send().await?;
        anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Ok(Summary {
        p50: at(0.5),
        p95: at(0.95),
        max: *ms.last().unwrap_or(&0.0),
    })
}

async fn explain(db: &tokio_postgres::Client, title: &str, sql: &str) -> anyhow::Result<()> {
    println!("\n#### {title}\n\n```");
    for row in db
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"), &[])
        .await?
    {
        let line: String = row.get(0);
        println!("{line}");
    }
    println!("```");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL (an empty scratch database)")?;
    let tasks: i64 = env("BENCH_TASKS", "10000").parse()?;
    let runs: i64 = env("BENCH_RUNS", "1000000").parse()?;
    let samples: usize = env("BENCH_SAMPLES", "200").parse()?;
    orrery::db::migrate(&url).await?;
    let (db, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    let existing: i64 = db.query_one("SELECT count(*) FROM task", &[]).await?.get(0);
    anyhow::ensure!(existing == 0, "the database must be empty");
    load(&db, tasks, runs).await?;

    let vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url.clone()),
        (
            "REDIS_URL".into(),
            env("REDIS_URL", "redis://127.0.0.1:6379"),
        ),
        ("REDIS_KEY_PREFIX".into(), "bench-console:".into()),
        ("API_PORT".into(), "0".into()),
        ("API_HOST".into(), "127.0.0.1".into()),
        ("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()),
        ("LOG_LEVEL".into(), "warn".into()),
    ];
    let settings = orrery::config::Settings::from_sources(&vars)?;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = orrery::runtime::build_context("orrery-api", settings, stop_rx)?;
    let app = orrery_api::startup::Application::build(ctx)?;
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ops = format!("orr_{}", "b".repeat(64));
    for _ in 0..200 {
        if http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let some_task: uuid::Uuid = db
        .query_one("SELECT task_id FROM task_run ORDER BY id DESC LIMIT 1", &[])
        .await?
        .get(0);
    let page: serde_json::Value = http
        .get(format!("{base}/console/tasks?limit=50"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .json()
        .await?;
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_string();
    // A cursor deep in the list: the 9,950th task.
    let deep: (chrono::DateTime<chrono::Utc>, uuid::Uuid) = {
        let r = db
            .query_one(
                "SELECT created_at, id FROM task ORDER BY created_at DESC, id DESC OFFSET 9950 LIMIT 1",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    let deep_cursor = format!("{}_{}", deep.0.timestamp_micros(), deep.1);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "GET /console/overview (admin)",
            "/console/overview".into(),
            ADMIN,
        ),
        (
            "GET /console/overview (agent, 1,000 own tasks)",
            "/console/overview".into(),
            &ops,
        ),
        (
            "GET /console/tasks (first page, 50)",
            "/console/tasks?limit=50".into(),
            ADMIN,
        ),
        (
            "GET /console/tasks (second page, by cursor)",
            format!("/console/tasks?limit=50&after={cursor}"),
            ADMIN,
        ),
        (
            "GET /console/tasks (page at task 9,950, by cursor)",
            format!("/console/tasks?limit=50&after={deep_cursor}"),
            ADMIN,
        ),
        (
            "GET /console/tasks?status=paused&timezone=Asia/Tokyo",
            "/console/tasks?status=paused&timezone=Asia/Tokyo".into(),
            ADMIN,
        ),
        (
            "GET /console/tasks?q=task 99 (search)",
            "/console/tasks?q=task%2099".into(),
            ADMIN,
        ),
        (
            "GET /console/tasks (agent)",
            "/console/tasks?limit=50".into(),
            &ops,
        ),
        (
            "GET /console/tasks/facets",
            "/console/tasks/facets".into(),
            ADMIN,
        ),
        (
            "GET /console/tasks/{id}/runs (50)",
            format!("/console/tasks/{some_task}/runs?limit=50"),
            ADMIN,
        ),
        (
            "GET /console/tasks/{id}/timeline (30 fires)",
            format!("/console/tasks/{some_task}/timeline"),
            ADMIN,
        ),
        (
            "GET /console/dead (50 of 500)",
            "/console/dead?limit=50".into(),
            ADMIN,
        ),
    ];
    println!("\n| endpoint | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|");
    for (name, path, token) in &cases {
        let s = measure(&http, &format!("{base}{path}"), token, samples).await?;
        println!("| {name} | {:.1} | {:.1} | {:.1} |", s.p50, s.p95, s.max);
    }

    let ops_owner = format!("'{OPS_AGENT}'::uuid");
    explain(&db, "Overview: tasks by status (admin)", "SELECT status, count(*) FROM task WHERE (NULL::uuid IS NULL OR created_by = NULL) GROUP BY status").await?;
    explain(&db, "Overview: runs of the last day by hour (admin)",
        "SELECT least(floor(extract(epoch FROM now() - r.finished_at) / 3600), 23)::int AS h,
                count(*) FILTER (WHERE r.success), count(*) FILTER (WHERE NOT r.success)
           FROM task_run r WHERE r.finished_at > now() - interval '1 day'
            AND (NULL::uuid IS NULL OR r.task_id IN (SELECT id FROM task WHERE created_by = NULL)) GROUP BY 1").await?;
    explain(&db, "Overview: runs of the last day by hour (agent)",
        &format!("SELECT least(floor(extract(epoch FROM now() - r.finished_at) / 3600), 23)::int AS h,
                count(*) FILTER (WHERE r.success), count(*) FILTER (WHERE NOT r.success)
           FROM task_run r WHERE r.finished_at > now() - interval '1 day'
            AND ({ops_owner} IS NULL OR r.task_id IN (SELECT id FROM task WHERE created_by = {ops_owner})) GROUP BY 1")).await?;
    explain(&db, "Overview: queue counts (admin)",
        "SELECT count(*) FILTER (WHERE d.state = 'pending' AND d.ready_at <= now() AND (d.locked_until IS NULL OR d.locked_until <= now())),
                count(*) FILTER (WHERE d.state = 'dead') FROM due_work d
          WHERE NULL::uuid IS NULL OR d.task_id IN (SELECT id FROM task WHERE created_by = NULL)").await?;
    explain(&db, "Overview: next fires (admin)",
        "SELECT id, title, next_run_at FROM task WHERE status = 'active' AND next_run_at IS NOT NULL
            AND next_run_at < 'infinity' AND (NULL::uuid IS NULL OR created_by = NULL) ORDER BY next_run_at, id LIMIT 10").await?;
    explain(&db, "Task list: a page deep in the list, by cursor",
        &format!("SELECT id, title FROM task WHERE (created_at, id) < ('{}', '{}') ORDER BY created_at DESC, id DESC LIMIT 51",
            deep.0.to_rfc3339(), deep.1)).await?;
    explain(
        &db,
        "Task runs: newest 50 of one task",
        &format!(
            "SELECT id FROM task_run r WHERE r.task_id = '{some_task}' ORDER BY r.id DESC LIMIT 51"
        ),
    )
    .await?;
    explain(&db, "Dead work: newest 50",
        "SELECT d.id FROM due_work d WHERE d.state = 'dead' ORDER BY d.dead_at DESC, d.id DESC LIMIT 51").await?;
    Ok(())
}
