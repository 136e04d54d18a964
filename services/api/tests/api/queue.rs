//! Queue counts, dead work and workers (admin).

use serde_json::Value;
use uuid::Uuid;

use crate::common::*;

async fn insert_work(app: &TestApp, task: Uuid, sql_tail: &str) -> i64 {
    app.sql()
        .await
        .query_one(
            &format!(
                "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, state, locked_by, locked_until, attempt, dead_at, last_error)
                 {sql_tail} RETURNING id"
            ),
            &[&task],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_queue_counts_ready_scheduled_leased_and_dead_work() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("q")).await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    insert_work(&app, id, "VALUES ($1, now() - interval '10 seconds', now() - interval '10 seconds', 1, 'manual', 'pending', NULL, NULL, 0, NULL, NULL)").await;
    insert_work(&app, id, "VALUES ($1, now() - interval '5 seconds', now() - interval '5 seconds', 5, 'manual', 'pending', NULL, NULL, 0, NULL, NULL)").await;
    insert_work(&app, id, "VALUES ($1, now() + interval '1 hour', now() + interval '1 hour', 5, 'manual', 'pending', NULL, NULL, 0, NULL, NULL)").await;
    insert_work(&app, id, "VALUES ($1, now(), now(), 5, 'manual', 'pending', 'w', now() + interval '1 minute', 1, NULL, NULL)").await;
    insert_work(
        &app,
        id,
        "VALUES ($1, now(), now(), 5, 'manual', 'dead', NULL, NULL, 4, now(), 'gave up')",
    )
    .await;
    let q = expect(app.get("/queue", ADMIN).await, 200).await;
    assert_eq!(
        (
            q["ready"].as_i64(),
            q["scheduled"].as_i64(),
            q["leased"].as_i64(),
            q["dead"].as_i64()
        ),
        (Some(2), Some(1), Some(1), Some(1)),
        "{q}"
    );
    assert!(
        q["oldest_ready_age_seconds"].as_f64().unwrap() >= 9.0,
        "{q}"
    );
    let p1 = q["by_priority"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["priority"] == 1)
        .unwrap();
    assert_eq!(p1["ready"], 1);
}

#[tokio::test]
async fn dead_work_is_listed_replayed_and_deleted() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("dead")).await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let dead = insert_work(&app, id, "VALUES ($1, now() - interval '1 hour', now() - interval '1 hour', 5, 'manual', 'dead', NULL, NULL, 4, now(), 'gave up')").await;
    let other = insert_work(&app, id, "VALUES ($1, now() - interval '2 hour', now() - interval '2 hour', 5, 'manual', 'dead', NULL, NULL, 4, now() - interval '1 minute', 'no')").await;
    let live = insert_work(
        &app,
        id,
        "VALUES ($1, now(), now(), 5, 'manual', 'pending', NULL, NULL, 0, NULL, NULL)",
    )
    .await;
    let page = expect(app.get("/queue/dead", ADMIN).await, 200).await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"][0]["id"], dead, "most recently dead first");
    assert_eq!(page["items"][0]["last_error"], "gave up");
    let r = expect(
        app.post_empty(&format!("/queue/dead/{dead}/replay"), ADMIN)
            .await,
        202,
    )
    .await;
    assert_eq!(r["due_work_id"], dead);
    let row = app
        .sql()
        .await
        .query_one("SELECT state, attempt, ready_at <= now(), dead_at IS NULL, locked_until IS NULL FROM due_work WHERE id = $1", &[&dead])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3) && row.get::<_, bool>(4));
    expect_error(
        app.post_empty(&format!("/queue/dead/{dead}/replay"), ADMIN)
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.post_empty(&format!("/queue/dead/{live}/replay"), ADMIN)
            .await,
        404,
        "not_found",
    )
    .await;
    expect(
        app.delete(&format!("/queue/dead/{other}"), ADMIN).await,
        204,
    )
    .await;
    expect_error(
        app.delete(&format!("/queue/dead/{other}"), ADMIN).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(app.audit_count("due_work.replay").await, 1);
    assert_eq!(app.audit_count("due_work.delete").await, 1);
    orrery_testing::wait_for(
        "the wake-up hint",
        std::time::Duration::from_secs(5),
        || async { (!app.stream(orrery::streams::WAKEUP).await.is_empty()).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn workers_are_listed_with_a_derived_alive_flag() {
    let app = spawn_app().await;
    app.sql()
        .await
        .batch_execute(
            "INSERT INTO worker_heartbeat (worker_id, hostname, pid, last_seen, state) VALUES
               ('fresh', 'h', 1, now(), 'running'), ('stale', 'h', 2, now() - interval '1 minute', 'running')",
        )
        .await
        .unwrap();
    let w = expect(app.get("/workers", ADMIN).await, 200).await;
    let items = w["items"].as_array().unwrap();
    let alive = |id: &str| {
        items
            .iter()
            .find(|x| x["worker_id"] == id)
            .map(|x| x["alive"].clone())
    };
    assert_eq!(alive("fresh"), Some(Value::Bool(true)));
    assert_eq!(alive("stale"), Some(Value::Bool(false)));
}
