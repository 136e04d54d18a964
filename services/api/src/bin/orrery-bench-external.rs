//! External-worker benchmark (docs/benchmarks/external.md): the real release `orrery-api` process, driven over
//! HTTP by clients that speak the `/jobs` protocol.
//!
//!   orrery-bench-external roundtrip   # SAMPLES (2000) jobs, one client: claim (max_jobs 1) → complete, p50/p99
//!   orrery-bench-external drain       # JOBS (20000) jobs, CLIENTS (4) concurrent clients, BATCH (10) per claim
//!   orrery-bench-external idle        # CLIENTS long-polling an empty queue: database statements per second
//!   orrery-bench-external all
//!
//! Clients: Rust (reqwest, one keep-alive connection each) by default; `PY=1` drains with CLIENTS processes of
//! the reference Python client (clients/python/orrery_worker.py, `examples.handlers:noop`) instead.
//!
//! Environment: BENCH_DATABASE_URL (admin connection, default postgres://postgres@127.0.0.1:5432/postgres),
//! BENCH_DB (orrery_bench_external, dropped and recreated), REDIS_URL, API_BIN (default: next to this binary),
//! API_WORKERS (passed on), PYTHON (python3), CLIENT_DIR (clients/python).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const ADMIN: &str = "bench-external-admin-token-0123456789";
const QUEUE: &str = "bench";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{db}")
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

struct Bench {
    db: Client,
    db_name: String,
    task: Uuid,
    base: String,
    api: tokio::process::Child,
}

impl Bench {
    async fn setup() -> anyhow::Result<Bench> {
        let admin_url = env(
            "BENCH_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let db_name = env("BENCH_DB", "orrery_bench_external");
        let admin = connect(&admin_url).await?;
        admin
            .execute(
                &format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"),
                &[],
            )
            .await?;
        admin
            .execute(&format!("CREATE DATABASE {db_name}"), &[])
            .await?;
        let db_url = with_database(&admin_url, &db_name);
        orrery::db::migrate(&db_url)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let db = connect(&db_url).await?;
        let payload = json!({"params": {"n": 1},
                             "pipeline": [{"id": "work", "uses": "external", "with": {"queue": QUEUE}}]});
        let task: Uuid = db
            .query_one(
                "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, payload)
                 VALUES ('bench external', $1, 'event', 'bench.external', $2) RETURNING id",
                &[&orrery::model::SYSTEM_AGENT_ID, &payload],
            )
            .await?
            .get(0);

        let api_bin = match std::env::var("API_BIN") {
            Ok(p) => std::path::PathBuf::from(p),
            Err(_) => std::env::current_exe()?
                .parent()
                .context("exe dir")?
                .join("orrery-api"),
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut cmd = tokio::process::Command::new(&api_bin);
        cmd.env("DATABASE_URL", &db_url)
            .env("REDIS_URL", env("REDIS_URL", "redis://127.0.0.1:6379"))
            .env("REDIS_KEY_PREFIX", "bench-external:")
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", port.to_string())
            .env("ORRERY_ADMIN_TOKEN", ADMIN)
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Ok(w) = std::env::var("API_WORKERS") {
            cmd.env("API_WORKERS", w);
        }
        let api = cmd
            .spawn()
            .with_context(|| format!("starting {}", api_bin.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if http
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Bench {
            db,
            db_name,
            task,
            base,
            api,
        })
    }

    async fn fill(&self, n: i64) -> anyhow::Result<()> {
        self.db
            .execute(
                "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, external_queue)
                 SELECT $1, now(), now(), 5, 'manual', $3 FROM generate_series(1, $2::bigint)",
                &[&self.task, &n, &QUEUE],
            )
            .await?;
        self.db.execute("ANALYZE due_work", &[]).await?;
        Ok(())
    }

    async fn clear(&self) -> anyhow::Result<()> {
        self.db.execute("DELETE FROM due_work", &[]).await?;
        self.db.execute("DELETE FROM task_run", &[]).await?;
        self.db.execute("VACUUM ANALYZE due_work", &[]).await?;
        Ok(())
    }

    async fn commits(&self) -> anyhow::Result<i64> {
        Ok(self
            .db
            .query_one(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                &[&self.db_name],
            )
            .await?
            .get(0))
    }
}

struct Proto {
    http: reqwest::Client,
    base: String,
}

impl Proto {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            base: base.to_string(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
        Ok(v)
    }

    async fn claim(
        &self,
        max_jobs: i64,
        wait: i64,
        client: &str,
    ) -> anyhow::Result<Vec<(i64, i64)>> {
        let v = self
            .post(
                "/jobs/claim",
                json!({"queues": [QUEUE], "max_jobs": max_jobs, "wait_seconds": wait, "client_id": client}),
            )
            .await?;
        Ok(v["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|j| {
                        (
                            j["job_id"].as_i64().unwrap_or(0),
                            j["fencing_token"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn complete(&self, id: i64, token: i64) -> anyhow::Result<()> {
        self.post(
            &format!("/jobs/{id}/complete"),
            json!({"fencing_token": token, "output": {"ok": true}}),
        )
        .await?;
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    println!(
        "{name}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

async fn roundtrip(b: &Bench) -> anyhow::Result<()> {
    let samples: i64 = env("SAMPLES", "2000").parse()?;
    b.clear().await?;
    b.fill(samples + 100).await?;
    let p = Proto::new(&b.base);
    // Warm-up: connections, prepared statements.
    for _ in 0..100 {
        for (id, token) in p.claim(1, 0, "rt").await? {
            p.complete(id, token).await?;
        }
    }
    let (mut claim, mut complete, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        let t0 = Instant::now();
        let jobs = p.claim(1, 0, "rt").await?;
        let t1 = Instant::now();
        let (id, token) = *jobs.first().context("a ready job")?;
        p.complete(id, token).await?;
        let t2 = Instant::now();
        claim.push((t1 - t0).as_secs_f64() * 1e3);
        complete.push((t2 - t1).as_secs_f64() * 1e3);
        total.push((t2 - t0).as_secs_f64() * 1e3);
    }
    println!("## roundtrip (one Rust client, max_jobs 1, jobs ready)");
    summary("claim → complete (per job)", total);
    summary("  POST /jobs/claim", claim);
    summary("  POST /jobs/{id}/complete", complete);
    Ok(())
}

async fn drain(b: &Bench) -> anyhow::Result<()> {
    let jobs: i64 = env("JOBS", "20000").parse()?;
    let clients: usize = env("CLIENTS", "4").parse()?;
    let batch: i64 = env("BATCH", "10").parse()?;
    let python = env("PY", "0") == "1";
    b.clear().await?;
    b.fill(jobs).await?;
    let commits_before = b.commits().await?;
    let started = Instant::now();
    if python {
        let dir = env("CLIENT_DIR", "clients/python");
        let mut children = Vec::new();
        for i in 0..clients {
            children.push(
                tokio::process::Command::new(env("PYTHON", "python3"))
                    .args([
                        "orrery_worker.py",
                        "--url",
                        &b.base,
                        "--token",
                        ADMIN,
                        "--queue",
                        QUEUE,
                        "--handler",
                        "examples.handlers:noop",
                        "--max-jobs",
                        &batch.to_string(),
                        "--wait-seconds",
                        "0",
                        "--heartbeat-seconds",
                        "0",
                        "--until-empty",
                        "--quiet",
                        "--client-id",
                        &format!("py{i}"),
                    ])
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .with_context(|| format!("python client in {dir}"))?,
            );
        }
        for mut c in children {
            let status = c.wait().await?;
            anyhow::ensure!(status.success(), "a python client failed: {status}");
        }
    } else {
        let done = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for i in 0..clients {
            let p = Proto::new(&b.base);
            let done = done.clone();
            handles.push(tokio::spawn(async move {
                let name = format!("rs{i}");
                loop {
                    let claimed = p.claim(batch, 0, &name).await?;
                    if claimed.is_empty() {
                        return anyhow::Ok(());
                    }
                    for (id, token) in claimed {
                        p.complete(id, token).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for h in handles {
            h.await??;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let commits = b.commits().await? - commits_before;
    let (ok, distinct): (i64, i64) = {
        let r =
            b.db.query_one(
                "SELECT count(*) FILTER (WHERE success), count(DISTINCT due_work_id) FROM task_run",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    anyhow::ensure!(
        ok == jobs && distinct == jobs,
        "drain incomplete: {ok} successful runs for {distinct} jobs of {jobs}"
    );
    println!(
        "## drain ({} {} clients, max_jobs {batch}): {jobs} jobs in {elapsed:.2} s = {:.0} jobs/s, {:.2} commits/job",
        clients,
        if python { "Python" } else { "Rust" },
        jobs as f64 / elapsed,
        commits as f64 / jobs as f64
    );
    Ok(())
}

async fn idle(b: &Bench) -> anyhow::Result<()> {
    let clients: usize = env("CLIENTS", "4").parse()?;
    let seconds: u64 = env("IDLE_SECONDS", "10").parse()?;
    b.clear().await?;
    let mut handles = Vec::new();
    for i in 0..clients {
        let p = Proto::new(&b.base);
        handles.push(tokio::spawn(async move {
            loop {
                let _ = p.claim(10, 30, &format!("idle{i}")).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = b.commits().await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // One of these transactions is the reading of the counter itself.
    let statements = b.commits().await? - before - 1;
    for h in handles {
        h.abort();
    }
    println!(
        "## idle ({clients} clients long-polling an empty queue, {seconds} s): {:.1} transactions/s in total, {:.1} per client",
        statements as f64 / seconds as f64,
        statements as f64 / seconds as f64 / clients as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
        let mut b = Bench::setup().await?;
        println!(
            "orrery-bench-external {what}: API {} (release), database {}",
            b.base, b.db_name
        );
        match what.as_str() {
            "roundtrip" => roundtrip(&b).await?,
            "drain" => drain(&b).await?,
            "idle" => idle(&b).await?,
            "all" => {
                roundtrip(&b).await?;
                drain(&b).await?;
                idle(&b).await?;
            }
            other => anyhow::bail!("unknown mode {other}: roundtrip, drain, idle or all"),
        }
        let _ = b.api.kill().await;
        anyhow::Ok(())
    })
}
