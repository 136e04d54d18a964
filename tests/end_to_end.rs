//! The whole system as separate processes: a task created over REST is materialized by the scheduler on time
//! and run by a worker, and its run is recorded.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use orrery_testing::{base_env, free_port, redis_prefix, wait_for, Service, TestDb};
use serde_json::{json, Value};

const ADMIN: &str = "e2e-admin-token-0123456789";

#[tokio::test]
async fn a_task_created_over_rest_fires_exactly_once_on_time_and_its_run_is_recorded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let mut env = base_env(&db, &prefix);
    env.push(("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()));
    let api = Service::start("orrery-api", free_port(), &env).await;
    let scheduler = Service::start("orrery-scheduler", free_port(), &env).await;
    let worker = Service::start("orrery-worker", free_port(), &env).await;
    for s in [&api, &scheduler, &worker] {
        s.wait_ready(Duration::from_secs(30)).await;
    }
    let now: DateTime<Utc> = c.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let fire = (now + chrono::Duration::seconds(3)).trunc_subsecs(0);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", api.health_port);
    let resp = http
        .post(format!("{base}/tasks"))
        .bearer_auth(ADMIN)
        .json(&json!({
            "title": "e2e once",
            "schedule_kind": "once",
            "schedule_expr": fire.to_rfc3339(),
            "timezone": "UTC",
            "payload": {"params": {"who": "e2e"}, "pipeline": [{"id": "n", "uses": "noop", "with": {"hello": "${params.who}"}}]}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let task: Value = resp.json().await.unwrap();
    let id: uuid::Uuid = task["id"].as_str().unwrap().parse().unwrap();

    let run = wait_for("the run to be recorded", Duration::from_secs(30), || async {
        c.query_opt(
            "SELECT scheduled_for, started_at, success, output FROM task_run WHERE task_id = $1 AND attempt > 0",
            &[&id],
        )
        .await
        .unwrap()
    })
    .await;
    let scheduled_for: DateTime<Utc> = run.get(0);
    let started_at: DateTime<Utc> = run.get(1);
    let success: bool = run.get(2);
    let output: Value = run.get(3);
    assert_eq!(scheduled_for, fire, "the run carries the nominal instant");
    assert!(success, "output: {output}");
    assert!(started_at >= fire, "never early");
    assert!(
        started_at - fire < chrono::Duration::seconds(1),
        "on time: started {started_at} for {fire}"
    );
    assert_eq!(
        output["steps"]["n"]["hello"], "e2e",
        "templates rendered: {output}"
    );

    wait_for(
        "the once task to complete",
        Duration::from_secs(10),
        || async {
            let status: String = c
                .query_one("SELECT status FROM task WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            (status == "completed").then_some(())
        },
    )
    .await;
    let runs: i64 = c
        .query_one("SELECT count(*) FROM task_run WHERE task_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "exactly once");
}

async fn future_rows(c: &tokio_postgres::Client, id: uuid::Uuid) -> Vec<DateTime<Utc>> {
    c.query(
        "SELECT run_at FROM due_work WHERE task_id = $1 AND run_at > now() ORDER BY run_at",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn lifecycle_changes_over_rest_reach_the_scheduler_within_a_second() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut env = base_env(&db, &redis_prefix());
    env.push(("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()));
    env.push(("SCHEDULER_LOOKAHEAD_SECONDS".into(), "300".into()));
    let api = Service::start("orrery-api", free_port(), &env).await;
    let scheduler = Service::start("orrery-scheduler", free_port(), &env).await;
    api.wait_ready(Duration::from_secs(30)).await;
    scheduler.wait_ready(Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", api.health_port);
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, task) = call(
        reqwest::Method::POST,
        "/tasks".into(),
        Some(json!({
            "title": "yearly", "schedule_kind": "cron", "schedule_expr": "0 0 1 1 *", "timezone": "UTC",
            "payload": {"pipeline": [{"id": "n", "uses": "noop"}]}
        })),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let id: uuid::Uuid = task["id"].as_str().unwrap().parse().unwrap();

    // Edit to every minute: work appears within a second.
    let t0 = std::time::Instant::now();
    let (status, body) = call(
        reqwest::Method::PATCH,
        format!("/tasks/{id}"),
        Some(json!({"schedule_expr": "* * * * *"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        "edited schedule materialized",
        Duration::from_secs(5),
        || async { (!future_rows(&c, id).await.is_empty()).then_some(()) },
    )
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "edit took {:?}",
        t0.elapsed()
    );

    // Pause removes the future work at once and nothing comes back.
    let (status, body) = call(reqwest::Method::POST, format!("/tasks/{id}/pause"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        future_rows(&c, id).await.is_empty(),
        "pause removes unleased work in its transaction"
    );

    // Resume: from now, within a second.
    let t0 = std::time::Instant::now();
    let (status, body) = call(reqwest::Method::POST, format!("/tasks/{id}/resume"), None).await;
    assert_eq!(status, 200, "{body}");
    wait_for("resumed work", Duration::from_secs(5), || async {
        (!future_rows(&c, id).await.is_empty()).then_some(())
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "resume took {:?}",
        t0.elapsed()
    );

    // Cancel is terminal and leaves no work behind.
    let (status, body) = call(reqwest::Method::POST, format!("/tasks/{id}/cancel"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(future_rows(&c, id).await.is_empty());
    let (status, _) = call(reqwest::Method::POST, format!("/tasks/{id}/resume"), None).await;
    assert_eq!(status, 409);
    // A full scheduler tick later, still nothing (the scheduler never revives a canceled task).
    scheduler.scheduler_full_pass(Duration::from_secs(20)).await;
    assert!(future_rows(&c, id).await.is_empty());
}
