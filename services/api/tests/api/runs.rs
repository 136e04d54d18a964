//! Run history, latest run and statistics.

use serde_json::Value;
use uuid::Uuid;

use crate::common::*;

async fn record_run(
    app: &TestApp,
    task: Uuid,
    success: bool,
    seconds: f64,
    error: Option<&str>,
) -> i64 {
    app.sql()
        .await
        .query_one(
            "INSERT INTO task_run (task_id, due_work_id, attempt, worker_id, trigger, scheduled_for, started_at, finished_at, success, error, error_kind, output)
             VALUES ($1, 7, 1, 'w-1', 'schedule', now() - interval '1 minute', now() - make_interval(secs => $2), now(), $3, $4,
                     CASE WHEN $3 THEN NULL ELSE 'http' END, '{\"steps\": {}}')
             RETURNING id",
            &[&task, &seconds, &success, &error],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn runs_are_listed_filtered_and_read_with_their_full_shape() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("with runs")).await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let ok = record_run(&app, id, true, 1.0, None).await;
    let failed = record_run(&app, id, false, 2.0, Some("boom: 500")).await;
    let page = expect(app.get("/runs", ADMIN).await, 200).await;
    assert_eq!(page["total"], 2);
    let first = &page["items"][0];
    assert_eq!(first["id"], failed, "newest first");
    for key in [
        "id",
        "task_id",
        "due_work_id",
        "attempt",
        "worker_id",
        "trigger",
        "scheduled_for",
        "started_at",
        "finished_at",
        "success",
        "error",
        "output",
    ] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
    assert_eq!(first["error"], "boom: 500");
    let quiet = expect(app.get("/runs?include_errors=false", ADMIN).await, 200).await;
    assert_eq!(quiet["items"][0]["error"], Value::Null);
    let only_ok = expect(
        app.get(&format!("/runs?task_id={id}&success=true"), ADMIN)
            .await,
        200,
    )
    .await;
    assert_eq!(only_ok["total"], 1);
    assert_eq!(only_ok["items"][0]["id"], ok);
    let none = expect(
        app.get("/runs?since=2999-01-01T00:00:00Z", ADMIN).await,
        200,
    )
    .await;
    assert_eq!(none["total"], 0);
    let one = expect(app.get(&format!("/runs/{ok}"), ADMIN).await, 200).await;
    assert_eq!(one["success"], true);
    let latest = expect(
        app.get(&format!("/tasks/{id}/runs/latest"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(latest["id"], failed);
}

#[tokio::test]
async fn a_task_that_never_ran_has_a_null_latest_run() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("fresh")).await;
    let r = expect(
        app.get(
            &format!("/tasks/{}/runs/latest", task["id"].as_str().unwrap()),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(r, Value::Null);
}

#[tokio::test]
async fn run_statistics_give_totals_rate_durations_and_last_outcomes() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("stats")).await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    for s in [1.0, 2.0, 3.0] {
        record_run(&app, id, true, s, None).await;
    }
    record_run(&app, id, false, 10.0, Some("x")).await;
    let stats = expect(
        app.get(&format!("/tasks/{id}/runs/stats?days=1"), ADMIN)
            .await,
        200,
    )
    .await;
    assert_eq!(stats["days"], 1);
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["succeeded"], 3);
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["success_rate"], 0.75);
    assert!(
        (stats["avg_duration_seconds"].as_f64().unwrap() - 4.0).abs() < 0.01,
        "{stats}"
    );
    assert!(
        stats["p95_duration_seconds"].as_f64().unwrap() > 8.0,
        "{stats}"
    );
    assert!(stats["last_success_at"].is_string() && stats["last_failure_at"].is_string());
    let global = expect(app.get("/runs/stats", ADMIN).await, 200).await;
    assert_eq!(global["total"], 4);
    let empty = app.task(ADMIN, cron_task("no runs")).await;
    let s = expect(
        app.get(
            &format!("/tasks/{}/runs/stats", empty["id"].as_str().unwrap()),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(s["total"], 0);
    assert_eq!(s["success_rate"], Value::Null);
}

#[tokio::test]
async fn an_agent_sees_only_the_runs_of_its_own_tasks() {
    let app = spawn_app().await;
    let (_, alice) = app.agent("alice", &["tasks:write", "runs:read"]).await;
    let (_, bob) = app.agent("bob", &["tasks:write", "runs:read"]).await;
    let a = app.task(&alice, cron_task("a")).await;
    let b = app.task(&bob, cron_task("b")).await;
    let ra = record_run(
        &app,
        a["id"].as_str().unwrap().parse().unwrap(),
        true,
        1.0,
        None,
    )
    .await;
    record_run(
        &app,
        b["id"].as_str().unwrap().parse().unwrap(),
        true,
        1.0,
        None,
    )
    .await;
    let mine = expect(app.get("/runs", &alice).await, 200).await;
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["items"][0]["id"], ra);
    expect_error(
        app.get(&format!("/runs/{ra}"), &bob).await,
        404,
        "not_found",
    )
    .await;
    expect_error(app.get("/runs/stats", &alice).await, 403, "forbidden").await;
}
