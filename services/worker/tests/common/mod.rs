//! Helpers for the worker tests: tasks and due_work inserted with SQL (as the API and the scheduler would),
//! real worker processes, and a tiny local HTTP server for `http.request`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use orrery_testing::{base_env, free_port, redis_url, wait_for, Service, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct TaskSpec {
    pub pipeline: Value,
    pub params: Value,
    pub max_retries: i16,
    pub backoff: &'static str,
    pub timeout_seconds: i32,
    pub priority: i16,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            pipeline: json!([{"id": "n", "uses": "noop"}]),
            params: json!({}),
            max_retries: 3,
            backoff: "fixed",
            timeout_seconds: 300,
            priority: 5,
        }
    }
}

pub async fn insert_task(c: &tokio_postgres::Client, spec: TaskSpec) -> Uuid {
    let payload = json!({"params": spec.params, "pipeline": spec.pipeline});
    c.query_one(
        "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, payload, max_retries,
                           backoff_strategy, timeout_seconds, priority)
         VALUES ('worker test', $1, 'cron', '0 0 1 1 *', $2, $3, $4, $5, $6) RETURNING id",
        &[
            &orrery::model::SYSTEM_AGENT_ID,
            &payload,
            &spec.max_retries,
            &spec.backoff,
            &spec.timeout_seconds,
            &spec.priority,
        ],
    )
    .await
    .unwrap()
    .get(0)
}

pub struct WorkSpec<'a> {
    pub trigger: &'a str,
    pub priority: i16,
    pub concurrency_key: Option<&'a str>,
    pub overlap: &'a str,
    pub catchup: &'a str,
    /// Seconds relative to the database's now (negative = overdue).
    pub run_at_offset: f64,
    pub params: Option<Value>,
    pub event_id: Option<&'a str>,
    pub event: Option<Value>,
}

impl Default for WorkSpec<'_> {
    fn default() -> Self {
        Self {
            trigger: "manual",
            priority: 5,
            concurrency_key: None,
            overlap: "allow",
            catchup: "skip",
            run_at_offset: 0.0,
            params: None,
            event_id: None,
            event: None,
        }
    }
}

pub async fn insert_work(c: &tokio_postgres::Client, task: Uuid, w: WorkSpec<'_>) -> i64 {
    c.query_one(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, concurrency_key, overlap, catchup, trigger,
                               params, event_id, event)
         VALUES ($1, now() + make_interval(secs => $2), now() + make_interval(secs => $2), $3, $4, $5, $6, $7,
                 $8, $9, $10)
         RETURNING id",
        &[
            &task,
            &w.run_at_offset,
            &w.priority,
            &w.concurrency_key,
            &w.overlap,
            &w.catchup,
            &w.trigger,
            &w.params,
            &w.event_id,
            &w.event,
        ],
    )
    .await
    .unwrap()
    .get(0)
}

/// `n` manual rows due now, with the task's queue and rate key (as the API's and the scheduler's inserts).
pub async fn insert_many(c: &tokio_postgres::Client, task: Uuid, n: i64) {
    c.execute(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, queue, rate_key)
         SELECT $1, now(), now(), 5, 'manual', t.queue, orrery_rate_key(t.rate_key, t.payload->'params', NULL)
           FROM generate_series(1, $2::bigint), task t
          WHERE t.id = $1",
        &[&task, &n],
    )
    .await
    .unwrap();
}

/// What the scheduler and the API send after their inserts commit.
pub async fn hint(prefix: &str) {
    hint_at(&redis_url(), prefix).await
}

/// [`hint`] through the Redis at `url`.
pub async fn hint_at(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}orrery:wakeup"))
        .arg("*")
        .arg("reason")
        .arg("test")
        .query_async(&mut conn)
        .await
        .unwrap();
}

pub async fn start_worker(db: &TestDb, prefix: &str, extra: &[(&str, &str)]) -> Service {
    let mut env = base_env(db, prefix);
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    let s = Service::start("orrery-worker", free_port(), &env).await;
    s.wait_ready(WAIT).await;
    s
}

#[derive(Debug, Clone)]
pub struct Run {
    pub due_work_id: Option<i64>,
    pub task_id: Uuid,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub trigger: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub success: bool,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub output: Option<Value>,
}

pub async fn runs(c: &tokio_postgres::Client) -> Vec<Run> {
    c.query(
        "SELECT due_work_id, task_id, attempt, worker_id, trigger, started_at, finished_at, success, error,
                error_kind, output
           FROM task_run ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Run {
        due_work_id: r.get(0),
        task_id: r.get(1),
        attempt: r.get(2),
        worker_id: r.get(3),
        trigger: r.get(4),
        started_at: r.get(5),
        finished_at: r.get(6),
        success: r.get(7),
        error: r.get(8),
        error_kind: r.get(9),
        output: r.get(10),
    })
    .collect()
}

pub async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until `sql` (a count) reaches `n`.
pub async fn wait_count(c: &tokio_postgres::Client, what: &str, sql: &str, n: i64) {
    wait_for(what, WAIT, || async {
        (count(c, sql).await >= n).then_some(())
    })
    .await;
}

/// A small HTTP/1.1 server: `/ok` echoes the idempotency key as JSON, `/fail` answers 500, `/missing`
/// 404, `/slow` takes 10 s, `/flaky404` answers 404 once and then 200. Every request is recorded.
/// (path, Idempotency-Key header) of every request received.
pub type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub struct TestHttp {
    pub addr: std::net::SocketAddr,
    pub requests: RequestLog,
}

impl TestHttp {
    pub async fn start() -> TestHttp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: RequestLog = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let rec = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                let hits = hits.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let key = text.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("idempotency-key")
                            .then(|| v.trim().to_string())
                    });
                    rec.lock().unwrap().push((path.clone(), key.clone()));
                    let n = {
                        let mut h = hits.lock().unwrap();
                        let e = h.entry(path.clone()).or_insert(0);
                        *e += 1;
                        *e
                    };
                    let (status, body) = match path.as_str() {
                        "/ok" => ("200 OK", json!({"ok": true, "key": key}).to_string()),
                        "/fail" => ("500 Internal Server Error", "boom".to_string()),
                        "/missing" => ("404 Not Found", "nope".to_string()),
                        "/flaky404" if n == 1 => ("404 Not Found", "not yet".to_string()),
                        "/flaky404" => ("200 OK", json!({"ok": true}).to_string()),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            ("200 OK", "{}".to_string())
                        }
                        _ => ("404 Not Found", "unknown".to_string()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        TestHttp { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }
}

/// Waits until `worker` has finished a claim that it began after this call: its claims counter moves past the
/// value read now (a claim already under way when it is read counts once, so two are awaited), waking it with a
/// hint each time. The way to show that a worker looked at some work and left it alone, without sleeping.
pub async fn await_fresh_claim(worker: &Service, prefix: &str) {
    let before = worker
        .metric("orrery_worker_claims_total")
        .await
        .unwrap_or(0.0);
    for step in 1..=2 {
        hint(prefix).await;
        orrery_testing::wait_for("the worker to claim again", WAIT, || async {
            let now = worker.metric("orrery_worker_claims_total").await?;
            (now >= before + step as f64).then_some(())
        })
        .await;
    }
}
