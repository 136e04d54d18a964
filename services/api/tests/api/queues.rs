//! Named queues: a task's queue, GET/PUT/PATCH /queues/{name}, their figures and /metrics.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

async fn put(app: &TestApp, name: &str, body: Value) -> reqwest::Response {
    app.call(
        Method::PUT,
        &format!("/queues/{name}"),
        Some(ADMIN),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn a_task_names_its_queue_and_its_runs_wait_there() {
    let app = spawn_app().await;
    let mut body = cron_task("heavy one");
    body["queue"] = json!("heavy");
    let task = app.task(ADMIN, body).await;
    assert_eq!(task["queue"], "heavy");
    let plain = app.task(ADMIN, cron_task("plain")).await;
    assert_eq!(plain["queue"], "default");
    let id = task["id"].as_str().unwrap();
    expect(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        202,
    )
    .await;
    let q = expect(app.get("/queues/heavy", ADMIN).await, 200).await;
    assert_eq!(
        (q["ready"].as_i64(), q["paused"].as_bool()),
        (Some(1), Some(false)),
        "{q}"
    );
    assert!(q["lag_seconds"].as_f64().is_some(), "{q}");
    // Moving the task moves its waiting runs.
    let moved = expect(
        app.patch(&format!("/tasks/{id}"), ADMIN, json!({"queue": "mail"}))
            .await,
        200,
    )
    .await;
    assert_eq!(moved["queue"], "mail");
    let q = expect(app.get("/queues/mail", ADMIN).await, 200).await;
    assert_eq!(q["ready"], 1, "{q}");
    let q = expect(app.get("/queues/heavy", ADMIN).await, 200).await;
    assert_eq!(q["ready"], 0, "{q}");
    // Throughput: attempts of the queue's tasks finished in the last minute (one now, one two minutes ago).
    app.sql()
        .await
        .execute(
            "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, started_at, finished_at, success)
             SELECT $1::text::uuid, 1, 'manual', now(), now() - f, now() - f, true
               FROM unnest(ARRAY[interval '0 s', interval '2 min']) AS f",
            &[&id],
        )
        .await
        .unwrap();
    let q = expect(app.get("/queues/mail", ADMIN).await, 200).await;
    assert_eq!(
        (
            q["finished_last_minute"].as_i64(),
            q["running"].as_i64(),
            q["scheduled"].as_i64()
        ),
        (Some(1), Some(0), Some(0)),
        "{q}"
    );
    let all = expect(app.get("/queues", ADMIN).await, 200).await;
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "heavy", "mail"], "{all}");
}

#[tokio::test]
async fn put_creates_patch_changes_and_pause_resume_keep_the_work() {
    let app = spawn_app().await;
    let q = expect(
        put(
            &app,
            "partner-api",
            json!({"max_concurrency": 4, "rate_limit": {"limit": 100, "period_seconds": 1}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(q["max_concurrency"], 4);
    assert_eq!(
        q["rate_limit"],
        json!({"limit": 100, "period_seconds": 1.0})
    );
    assert_eq!(q["paused"], false);
    let q = expect(
        app.patch("/queues/partner-api", ADMIN, json!({"paused": true}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        (q["paused"].as_bool(), q["max_concurrency"].as_i64()),
        (Some(true), Some(4))
    );
    let q = expect(
        app.patch(
            "/queues/partner-api",
            ADMIN,
            json!({"paused": false, "rate_limit": null, "max_concurrency": null}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (
            q["paused"].clone(),
            q["rate_limit"].clone(),
            q["max_concurrency"].clone()
        ),
        (json!(false), Value::Null, Value::Null)
    );
    // PUT replaces: absent fields take their defaults.
    expect(put(&app, "partner-api", json!({"paused": true})).await, 200).await;
    let q = expect(put(&app, "partner-api", json!({})).await, 200).await;
    assert_eq!(q["paused"], false);
    expect_error(
        app.patch("/queues/nope", ADMIN, json!({"paused": true}))
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(app.get("/queues/nope", ADMIN).await, 404, "not_found").await;
    let audit = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM audit_log WHERE subject_type = 'queue' AND subject_id = 'partner-api'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(audit, 5);
}

#[tokio::test]
async fn bad_queue_input_names_the_field_and_changes_nothing() {
    let app = spawn_app().await;
    expect_field_error(
        put(&app, "ok", json!({"max_concurrency": 0})).await,
        "max_concurrency",
    )
    .await;
    expect_field_error(put(&app, "ok", json!({"paused": "yes"})).await, "paused").await;
    expect_field_error(
        put(&app, "ok", json!({"rate_limit": {"limit": 10}})).await,
        "rate_limit.period_seconds",
    )
    .await;
    expect_field_error(
        put(
            &app,
            "ok",
            json!({"rate_limit": {"limit": 0, "period_seconds": 1}}),
        )
        .await,
        "rate_limit.limit",
    )
    .await;
    expect_field_error(
        put(
            &app,
            "ok",
            json!({"rate_limit": {"limit": 1, "period_seconds": 1, "burst": 2}}),
        )
        .await,
        "rate_limit.burst",
    )
    .await;
    expect_field_error(
        put(&app, "ok", json!({"rate_limit": 5})).await,
        "rate_limit",
    )
    .await;
    expect_field_error(put(&app, "ok", json!({"colour": 5})).await, "colour").await;
    expect_field_error(put(&app, "bad%20name", json!({})).await, "name").await;
    let mut body = cron_task("t");
    body["queue"] = json!("no spaces");
    expect_field_error(app.post("/tasks", ADMIN, body).await, "queue").await;
    expect_error(app.get("/queues/ok", ADMIN).await, 404, "not_found").await;
}

#[tokio::test]
async fn metrics_show_each_queue() {
    let app = spawn_app().await;
    let mut body = cron_task("m");
    body["queue"] = json!("reports");
    let task = app.task(ADMIN, body).await;
    let id = task["id"].as_str().unwrap();
    expect(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        202,
    )
    .await;
    expect(
        app.patch("/queues/reports", ADMIN, json!({"paused": true}))
            .await,
        200,
    )
    .await;
    // The gauges are refreshed in the background of a scrape (at most every 10 s): scrape until they show.
    let text = orrery_testing::wait_for(
        "the queue's series",
        std::time::Duration::from_secs(30),
        || async {
            let text = app
                .call(Method::GET, "/metrics", None, None)
                .await
                .text()
                .await
                .unwrap();
            text.contains(r#"orrery_named_queue{measure="paused",queue="reports"} 1"#)
                .then_some(text)
        },
    )
    .await;
    assert!(
        text.contains(r#"orrery_named_queue{measure="ready",queue="reports"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"orrery_named_queue{measure="paused",queue="reports"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"orrery_named_queue_lag_seconds{queue="reports"}"#));
}

#[tokio::test]
async fn a_rate_key_template_is_validated_and_rendered_per_run() {
    let app = spawn_app().await;
    let q = expect(
        put(
            &app,
            "partners",
            json!({"key_rate_limit": {"limit": 5, "period_seconds": 2}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        q["key_rate_limit"],
        json!({"limit": 5, "period_seconds": 2.0})
    );
    assert_eq!(q["rate_limit"], Value::Null);
    let mut body = cron_task("per customer");
    body["queue"] = json!("partners");
    body["rate_key"] = json!("customer-${params.customer_id}");
    body["payload"]["params"] = json!({"customer_id": "default-co"});
    let task = app.task(ADMIN, body).await;
    assert_eq!(task["rate_key"], "customer-${params.customer_id}");
    let id = task["id"].as_str().unwrap();
    expect(
        app.post(
            &format!("/tasks/{id}/run_now"),
            ADMIN,
            json!({"params": {"customer_id": 42}}),
        )
        .await,
        202,
    )
    .await;
    expect(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        202,
    )
    .await;
    let keys: Vec<(String, Option<String>)> = app
        .sql()
        .await
        .query(
            "SELECT queue, rate_key FROM due_work WHERE task_id = $1::text::uuid AND trigger = 'manual' ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        keys,
        [
            ("partners".to_string(), Some("customer-42".to_string())),
            (
                "partners".to_string(),
                Some("customer-default-co".to_string())
            ),
        ]
    );
    // Changing the template re-renders the waiting runs; null removes it.
    expect(
        app.patch(&format!("/tasks/{id}"), ADMIN, json!({"rate_key": null}))
            .await,
        200,
    )
    .await;
    let keyed: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(rate_key) FROM due_work WHERE task_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keyed, 0);
    // Bad templates and limits name their field, and change nothing.
    for bad in [
        json!(""),
        json!("${secrets.token}"),
        json!("${params.a"),
        json!("${params..a}"),
        json!(5),
    ] {
        let mut body = cron_task("bad key");
        body["rate_key"] = bad;
        expect_field_error(app.post("/tasks", ADMIN, body).await, "rate_key").await;
    }
    expect_field_error(
        app.patch(
            "/queues/partners",
            ADMIN,
            json!({"key_rate_limit": {"limit": 5}}),
        )
        .await,
        "key_rate_limit.period_seconds",
    )
    .await;
    let q = expect(app.get("/queues/partners", ADMIN).await, 200).await;
    assert_eq!(q["key_rate_limit"]["limit"], 5);
}
