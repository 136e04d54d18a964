//! The reference Python client (clients/python/orrery_worker.py) against the real `orrery-api` binary: it claims,
//! runs a function and completes; killed mid-job, its job is run again by another client once the lease expires;
//! finishing after its lease was taken over, its result is refused with 409 and discarded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use orrery_testing::{base_env, free_port, redis_prefix, wait_for, Service, TestDb};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const ADMIN: &str = "python-client-admin-token-0123";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    _db: TestDb,
    sql: tokio_postgres::Client,
    _api: Service,
    base: String,
    http: reqwest::Client,
    token: String,
    tmp: PathBuf,
}

async fn setup() -> Setup {
    let db = TestDb::new().await;
    let mut env = base_env(&db, &redis_prefix());
    env.push(("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()));
    env.push(("API_WORKERS".into(), "2".into()));
    let port = free_port();
    let api = Service::start("orrery-api", port, &env).await;
    api.wait_ready(WAIT).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let agent: Value = http
        .post(format!("{base}/agents"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "py", "scopes": ["jobs:work", "tasks:write"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = agent["token"].as_str().expect("agent token").to_string();
    let tmp = std::env::temp_dir().join(format!("orrery-py-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    Setup {
        sql: db.client().await,
        _db: db,
        _api: api,
        base,
        http,
        token,
        tmp,
    }
}

impl Setup {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// An external task of `queue` with `params`; returns its id.
    async fn task(&self, queue: &str, params: Value) -> String {
        let (status, task) = self
            .post(
                "/tasks",
                json!({
                    "title": format!("python {queue}"),
                    "schedule_kind": "event",
                    "schedule_expr": format!("py.{queue}"),
                    "max_retries": 3,
                    "backoff_strategy": "fixed",
                    "payload": {"params": params,
                                "pipeline": [{"id": "work", "uses": "external", "with": {"queue": queue}}]}
                }),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        task["id"].as_str().unwrap().to_string()
    }

    async fn run_now(&self, task: &str, params: Value) -> i64 {
        let (status, r) = self
            .post(&format!("/tasks/{task}/run_now"), json!({"params": params}))
            .await;
        assert_eq!(status, 202, "{r}");
        r["due_work_id"].as_i64().unwrap()
    }

    /// The Python client as a separate process.
    fn client(&self, args: &[&str]) -> tokio::process::Child {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/python");
        tokio::process::Command::new("python3")
            .arg("orrery_worker.py")
            .arg("--url")
            .arg(&self.base)
            .args(args)
            .env("ORRERY_TOKEN", &self.token)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (the reference client needs it)")
    }

    async fn runs(
        &self,
        job: i64,
    ) -> Vec<(i32, bool, Option<String>, Option<String>, Option<Value>)> {
        self.sql
            .query(
                "SELECT attempt, success, worker_id, error_kind, output FROM task_run
                  WHERE due_work_id = $1 ORDER BY attempt",
                &[&job],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }
}

/// Waits for the process to exit; returns its stdout lines parsed as JSON, failing with its stderr otherwise.
async fn finish(mut child: tokio::process::Child) -> Vec<Value> {
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the client exits")
        .unwrap();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(status.success(), "client failed: {status}\n{out}\n{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}\n{err}")))
        .collect()
}

async fn wait_file(path: &Path) -> String {
    let path = path.to_path_buf();
    wait_for("the handler to start", WAIT, || {
        let path = path.clone();
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|s| s.ends_with('\n'))
        }
    })
    .await
}

#[tokio::test]
async fn a_python_client_claims_runs_its_function_and_completes() {
    let s = setup().await;
    let task = s.task("math", json!({"x": 1})).await;
    let mut jobs = Vec::new();
    for x in [2, 3, 4] {
        jobs.push(s.run_now(&task, json!({"x": x})).await);
    }
    let bad = s.run_now(&task, json!({"x": "two"})).await;
    let report = finish(s.client(&[
        "--queue",
        "math",
        "--handler",
        "examples.handlers:double",
        "--client-id",
        "py-1",
        "--max-jobs",
        "10",
        "--wait-seconds",
        "0",
        "--until-empty",
    ]))
    .await;
    assert_eq!(report.len(), 4, "{report:?}");
    for (job, x) in jobs.iter().zip([2, 3, 4]) {
        let runs = s.runs(*job).await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        let (attempt, success, worker, _, output) = &runs[0];
        assert_eq!((*attempt, *success), (1, true));
        assert_eq!(worker.as_deref(), Some("external:py:py-1"));
        assert_eq!(
            output.clone().unwrap(),
            json!({"steps": {"work": {"doubled": x * 2, "attempt": 1}}, "skipped": []})
        );
    }
    // PermanentError: dead at once, not retried.
    let runs = s.runs(bad).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].3.as_deref(), Some("external"));
    let state: String = s
        .sql
        .query_one("SELECT state FROM due_work WHERE id = $1", &[&bad])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "dead");
}

#[tokio::test]
async fn a_client_killed_mid_job_loses_the_job_to_another_client_after_its_lease_expires() {
    let s = setup().await;
    let marker = s.tmp.join("started");
    let task = s
        .task("slow", json!({"x": 5, "marker": marker.to_str().unwrap()}))
        .await;
    let job = s.run_now(&task, json!({})).await;
    // Heartbeats every 0.5 s keep a 2 s lease alive while the handler works...
    let mut doomed = s.client(&[
        "--queue",
        "slow",
        "--handler",
        "examples.handlers:hang",
        "--client-id",
        "doomed",
        "--lease-seconds",
        "2",
        "--heartbeat-seconds",
        "0.5",
        "--once",
    ]);
    wait_file(&marker).await;
    // ...until the process dies with them.
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let rescuer = s.client(&[
        "--queue",
        "slow",
        "--handler",
        "examples.handlers:double",
        "--client-id",
        "rescuer",
        "--wait-seconds",
        "20",
        "--once",
    ]);
    let report = finish(rescuer).await;
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0]["outcome"], "completed");
    assert_eq!(report[0]["attempt"], 2);
    let runs = s.runs(job).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].0, 1);
    assert!(!runs[0].1);
    assert_eq!(runs[0].2.as_deref(), Some("external:py:doomed"));
    assert_eq!(runs[0].3.as_deref(), Some("lease_expired"));
    assert_eq!(runs[1].0, 2);
    assert!(runs[1].1);
    assert_eq!(runs[1].2.as_deref(), Some("external:py:rescuer"));
}

#[tokio::test]
async fn a_client_finishing_after_its_lease_was_taken_over_is_refused_and_discards_its_result() {
    let s = setup().await;
    let marker = s.tmp.join("started");
    let gate = s.tmp.join("gate");
    let task = s
        .task(
            "gated",
            json!({"marker": marker.to_str().unwrap(), "gate": gate.to_str().unwrap()}),
        )
        .await;
    let job = s.run_now(&task, json!({})).await;
    // No heartbeats: a client stalled (a long pause, a partition) past its 1 s lease.
    let stale = s.client(&[
        "--queue",
        "gated",
        "--handler",
        "examples.handlers:gated",
        "--client-id",
        "stale",
        "--lease-seconds",
        "1",
        "--heartbeat-seconds",
        "0",
        "--once",
    ]);
    wait_file(&marker).await;
    let sql = &s.sql;
    wait_for("the stale lease to expire", WAIT, || async move {
        let expired: bool = sql
            .query_one(
                "SELECT locked_until < now() FROM due_work WHERE id = $1",
                &[&job],
            )
            .await
            .unwrap()
            .get(0);
        expired.then_some(())
    })
    .await;
    // Another worker takes the job over.
    let (status, claimed) = s
        .post(
            "/jobs/claim",
            json!({"queues": ["gated"], "client_id": "successor", "lease_seconds": 60}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(claimed["jobs"][0]["job_id"], job, "{claimed}");
    assert_eq!(claimed["jobs"][0]["attempt"], 2);
    let token = claimed["jobs"][0]["fencing_token"].as_i64().unwrap();
    // The stale client finishes now, and is refused.
    std::fs::write(&gate, "open").unwrap();
    let report = finish(stale).await;
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0]["outcome"], "discarded", "{report:?}");
    assert_eq!(report[0]["detail"]["status"], 409);
    assert_eq!(
        report[0]["detail"]["error"]["details"]["reason"],
        "fencing_token_mismatch"
    );
    // Its result counted nowhere: the successor still holds the job and completes it.
    let runs = s.runs(job).await;
    assert_eq!(runs.len(), 1, "only the lost attempt: {runs:?}");
    assert_eq!(runs[0].3.as_deref(), Some("lease_expired"));
    let (status, done) = s
        .post(
            &format!("/jobs/{job}/complete"),
            json!({"fencing_token": token, "output": {"by": "successor"}}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    let runs = s.runs(job).await;
    assert_eq!(runs.len(), 2);
    assert!(runs[1].1);
    assert_eq!(
        runs[1].4.clone().unwrap()["steps"]["work"],
        json!({"by": "successor"})
    );
}
