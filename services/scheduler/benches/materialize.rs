//! Scheduler benchmark: 100k active tasks firing every minute; is every fire of the next minutes materialized
//! before it is due, how fast, and with how much lead?
//!
//! `cargo bench -p orrery-scheduler --bench materialize` (release). TASKS and MINUTES override the defaults.
//! It runs the real `orrery-scheduler` binary (release, as built by cargo bench) against a fresh database.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orrery_testing::{base_env, free_port, redis_prefix, Service, TestDb};

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tasks = env_or("TASKS", 100_000);
    let minutes = env_or("MINUTES", 2);
    let db = TestDb::new().await;
    let c = db.client().await;
    let t0 = Instant::now();
    c.execute(
        "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, timezone, materialized_until)
         SELECT 'bench ' || g, '00000000-0000-0000-0000-000000000001', 'cron', '* * * * *',
                (ARRAY['UTC','Europe/Berlin','America/New_York','Asia/Kolkata','Australia/Lord_Howe'])[1 + g % 5],
                now()
           FROM generate_series(1, $1::bigint) g",
        &[&tasks],
    )
    .await
    .unwrap();
    println!(
        "inserted {tasks} tasks in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let started_at: DateTime<Utc> = c.query_one("SELECT now()", &[]).await.unwrap().get(0);

    let prefix = redis_prefix();
    let mut env = base_env(&db, &prefix);
    env.push(("LOG_LEVEL".into(), "warn".into()));
    env.push(("SCHEDULER_LOOKAHEAD_SECONDS".into(), "60".into()));
    std::env::set_var(
        "ORRERY_BIN_DIR",
        env!("CARGO_BIN_EXE_orrery-scheduler").trim_end_matches("/orrery-scheduler"),
    );
    let s = Service::start("orrery-scheduler", free_port(), &env).await;
    s.wait_ready(Duration::from_secs(30)).await;

    // Watch `minutes` full minute waves go by.
    let end = started_at + chrono::Duration::seconds(60 * (minutes + 1));
    loop {
        let now: DateTime<Utc> = c.query_one("SELECT now()", &[]).await.unwrap().get(0);
        if now >= end {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(s);

    let waves = c
        .query(
            "SELECT run_at, count(*), min(created_at), max(created_at),
                    extract(epoch FROM max(created_at) - min(created_at))::float8,
                    percentile_cont(ARRAY[0.0, 0.5, 0.99, 1.0]) WITHIN GROUP (ORDER BY extract(epoch FROM run_at - created_at))::float8[]
               FROM due_work WHERE run_at <= $1 GROUP BY run_at ORDER BY run_at",
            &[&end],
        )
        .await
        .unwrap();
    println!("| fire instant (UTC) | fires | materialized within | rate (fires/s) | lead min / p50 / p99 / max (s) |");
    println!("|---|---|---|---|---|");
    let mut leads_all = Vec::new();
    for w in &waves {
        let run_at: DateTime<Utc> = w.get(0);
        let n: i64 = w.get(1);
        let spread: f64 = w.get(4);
        let p: Vec<f64> = w.get(5);
        leads_all.push(p[0]);
        println!(
            "| {} | {n} | {spread:.2} s | {:.0} | {:.2} / {:.2} / {:.2} / {:.2} |",
            run_at.format("%H:%M:%S"),
            n as f64 / spread.max(0.001),
            p[0],
            p[1],
            p[2],
            p[3]
        );
    }
    let late: i64 = c
        .query_one(
            "SELECT count(*) FROM due_work WHERE created_at > run_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let missing: i64 = c
        .query_one(
            "SELECT count(*) FROM task t WHERE NOT EXISTS
               (SELECT 1 FROM due_work d WHERE d.task_id = t.id AND d.run_at = date_trunc('minute', $1::timestamptz))",
            &[&end],
        )
        .await
        .unwrap()
        .get(0);
    leads_all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "late fires: {late}; tasks missing the last wave: {missing}; smallest lead of any wave: {:.2} s",
        percentile(&leads_all, 0.0)
    );
}
