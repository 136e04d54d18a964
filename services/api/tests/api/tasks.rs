//! Tasks: creation with defaults and validation, listing, editing, ownership and the lifecycle.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

fn uuid_of(v: &Value) -> Uuid {
    v["id"].as_str().unwrap().parse().unwrap()
}

async fn db_now(app: &TestApp) -> DateTime<Utc> {
    app.sql()
        .await
        .query_one("SELECT now()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn due_work(
    app: &TestApp,
    task: Uuid,
) -> Vec<(i64, String, DateTime<Utc>, DateTime<Utc>, Option<Value>)> {
    app.sql()
        .await
        .query(
            "SELECT id, trigger, run_at, ready_at, params FROM due_work WHERE task_id = $1 ORDER BY run_at, id",
            &[&task],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// A scheduled fire as the scheduler would have materialized it.
async fn materialize(app: &TestApp, task: Uuid, run_at: DateTime<Utc>) -> i64 {
    app.sql()
        .await
        .query_one(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger) VALUES ($1, $2, $2, 5, 'schedule') RETURNING id",
            &[&task, &run_at],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn creating_a_task_returns_it_with_defaults_and_its_next_run() {
    let app = spawn_app_with(&[
        ("TZ", "Europe/Berlin"),
        ("WORKER_MAX_RETRIES", "7"),
        ("SCHEDULER_MISFIRE_GRACE_TIME", "45"),
    ])
    .await;
    let mut body = cron_task("defaults");
    body.as_object_mut().unwrap().remove("timezone");
    let task = app.task(ADMIN, body).await;
    for key in [
        "id",
        "title",
        "description",
        "created_by",
        "schedule_kind",
        "schedule_expr",
        "timezone",
        "payload",
        "status",
        "priority",
        "dedupe_key",
        "dedupe_window_seconds",
        "max_retries",
        "backoff_strategy",
        "concurrency_key",
        "timeout_seconds",
        "misfire_grace_seconds",
        "catchup",
        "overlap",
        "next_run_at",
        "created_at",
        "updated_at",
    ] {
        assert!(task.get(key).is_some(), "missing {key}: {task}");
    }
    assert!(task.get("schedule_anchor").is_none() && task.get("materialized_until").is_none());
    assert_eq!(task["timezone"], "Europe/Berlin");
    assert_eq!(task["max_retries"], 7);
    assert_eq!(task["misfire_grace_seconds"], 45);
    assert_eq!(task["priority"], 5);
    assert_eq!(task["status"], "active");
    assert_eq!(task["description"], "");
    assert_eq!(task["backoff_strategy"], "exponential_jitter");
    assert_eq!(task["catchup"], "skip");
    assert_eq!(task["overlap"], "allow");
    assert_eq!(task["timeout_seconds"], 300);
    assert_eq!(
        task["created_by"],
        orrery::model::SYSTEM_AGENT_ID.to_string()
    );
    let next: DateTime<Utc> = task["next_run_at"].as_str().unwrap().parse().unwrap();
    let now = Utc::now();
    assert!(
        next > now - Duration::seconds(5) && next <= now + Duration::minutes(5),
        "{next}"
    );
    assert_eq!(next.timestamp() % 300, 0, "a */5 fire: {next}");
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT materialized_until, schedule_anchor, created_at FROM task WHERE id = $1",
            &[&uuid_of(&task)],
        )
        .await
        .unwrap();
    let (mu, anchor, created): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(mu, created, "materialized from now on");
    assert_eq!(anchor, created);
}

#[tokio::test]
async fn a_mutation_is_audited_and_announced_on_the_task_changes_stream() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("audited")).await;
    let id = task["id"].as_str().unwrap();
    let c = app.sql().await;
    let row = c
        .query_one("SELECT actor, subject_type, subject_id, details FROM audit_log WHERE action = 'task.create'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), orrery::model::SYSTEM_AGENT_ID);
    assert_eq!(row.get::<_, String>(1), "task");
    assert_eq!(row.get::<_, String>(2), id);
    assert_eq!(row.get::<_, Value>(3)["title"], "audited");
    let entries = orrery_testing::wait_for(
        "the task-changes hint",
        std::time::Duration::from_secs(5),
        || async {
            let e = app.stream(orrery::streams::TASK_CHANGES).await;
            (!e.is_empty()).then_some(e)
        },
    )
    .await;
    assert_eq!(entries[0]["task_id"], id);
    assert_eq!(entries[0]["action"], "created");
}

#[tokio::test]
async fn schedules_time_zones_pipelines_and_templates_are_validated_naming_the_field() {
    let app = spawn_app().await;
    let with = |k: &str, v: Value| {
        let mut b = cron_task("t");
        b[k] = v;
        b
    };
    for (body, field) in [
        (with("schedule_expr", json!("0 0 * * * *")), "schedule_expr"),
        (with("schedule_expr", json!("0 0 L * *")), "schedule_expr"),
        (with("timezone", json!("Not/AZone")), "timezone"),
        (
            with(
                "payload",
                json!({"pipeline": [{"id": "a", "uses": "shell.exec"}]}),
            ),
            "payload.pipeline[0].uses",
        ),
        (
            with(
                "payload",
                json!({"pipeline": [{"id": "a", "uses": "noop", "with": {"x": "${params.("}}]}),
            ),
            "payload.pipeline[0].with.x",
        ),
        (
            with("payload", json!({"pipeline": [], "extra": 1})),
            "payload.extra",
        ),
    ] {
        let r = app.post("/tasks", ADMIN, body.clone()).await;
        let got = expect_error(r, 422, "validation_failed").await;
        let fields: Vec<String> = got["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap().to_string())
            .collect();
        assert!(
            fields.iter().any(|f| f == field || f.starts_with(field)),
            "expected {field}, got {got}"
        );
    }
    let mut rrule = cron_task("rrule");
    rrule["schedule_kind"] = json!("rrule");
    rrule["schedule_expr"] = json!("FREQ=DAILY;BYHOUR=9;BYMINUTE=0;BYSECOND=0");
    app.task(ADMIN, rrule).await;
    let mut event = cron_task("event");
    event["schedule_kind"] = json!("event");
    event["schedule_expr"] = json!("email.*");
    let e = app.task(ADMIN, event).await;
    assert_eq!(e["next_run_at"], Value::Null);
    let mut bad_topic = cron_task("event");
    bad_topic["schedule_kind"] = json!("event");
    bad_topic["schedule_expr"] = json!("email..x");
    expect_field_error(app.post("/tasks", ADMIN, bad_topic).await, "schedule_expr").await;
}

#[tokio::test]
async fn a_once_task_in_the_past_is_422_unless_within_the_grace_window() {
    let app = spawn_app().await;
    let now = db_now(&app).await.trunc_subsecs(0);
    let once = |at: DateTime<Utc>| {
        json!({"title": "once", "schedule_kind": "once", "schedule_expr": at.to_rfc3339(), "timezone": "UTC",
               "misfire_grace_seconds": 30, "payload": {"pipeline": []}})
    };
    expect_field_error(
        app.post("/tasks", ADMIN, once(now - Duration::hours(1)))
            .await,
        "schedule_expr",
    )
    .await;
    let fire = now - Duration::seconds(5);
    let task = app.task(ADMIN, once(fire)).await;
    let mu: DateTime<Utc> = app
        .sql()
        .await
        .query_one(
            "SELECT materialized_until FROM task WHERE id = $1",
            &[&uuid_of(&task)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        mu,
        fire - Duration::seconds(1),
        "the scheduler materializes it at once"
    );
    let future = now + Duration::hours(2);
    let t = app.task(ADMIN, once(future)).await;
    assert_eq!(
        t["next_run_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        future
    );
}

#[tokio::test]
async fn a_second_task_with_the_same_dedupe_key_is_409_naming_the_first() {
    let app = spawn_app().await;
    let mut b = cron_task("deduped");
    b["dedupe_key"] = json!("nightly-report");
    let first = app.task(ADMIN, b.clone()).await;
    let body = expect_error(app.post("/tasks", ADMIN, b.clone()).await, 409, "conflict").await;
    assert_eq!(body["details"]["existing_task_id"], first["id"]);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(first["id"].as_str().unwrap()));
    // Another creator may use the same key.
    let (_, other) = app.agent("other", &["tasks:write", "tasks:read"]).await;
    app.task(&other, b.clone()).await;
    // Once the first is canceled (window 0: only non-terminal tasks hold the key) it is free again.
    expect(
        app.post_empty(
            &format!("/tasks/{}/cancel", first["id"].as_str().unwrap()),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    app.task(ADMIN, b.clone()).await;
    // With a window, any task created within it holds the key, whatever its status.
    let mut w = cron_task("windowed");
    w["dedupe_key"] = json!("w");
    w["dedupe_window_seconds"] = json!(3600);
    let wt = app.task(ADMIN, w.clone()).await;
    expect(
        app.post_empty(
            &format!("/tasks/{}/cancel", wt["id"].as_str().unwrap()),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    expect_error(app.post("/tasks", ADMIN, w).await, 409, "conflict").await;
}

#[tokio::test]
async fn concurrent_creates_with_one_dedupe_key_admit_exactly_one() {
    let app = spawn_app().await;
    let mut b = cron_task("race");
    b["dedupe_key"] = json!("race");
    let results =
        futures::future::join_all((0..8).map(|_| app.post("/tasks", ADMIN, b.clone()))).await;
    let created = results.iter().filter(|r| r.status() == 201).count();
    let conflicts = results.iter().filter(|r| r.status() == 409).count();
    assert_eq!((created, conflicts), (1, 7));
}

#[tokio::test]
async fn tasks_are_listed_newest_first_with_stable_pagination_and_filters() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.task(ADMIN, cron_task(&format!("t{i}"))).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Same created_at for two rows: the id breaks the tie.
    app.sql()
        .await
        .execute(
            "UPDATE task SET created_at = '2030-01-01T00:00:00Z' WHERE title IN ('t1', 't2')",
            &[],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let page = expect(
            app.get(&format!("/tasks?limit=2&offset={offset}"), ADMIN)
                .await,
            200,
        )
        .await;
        assert_eq!(page["total"], 5);
        assert_eq!(page["limit"], 2);
        assert_eq!(page["offset"], offset);
        assert_eq!(page["has_more"], offset + 2 < 5);
        for t in page["items"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_string());
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "every task exactly once across pages");
    let first_two: Vec<&str> = seen[..2].iter().map(String::as_str).collect();
    let mut tied = vec![ids[1].as_str(), ids[2].as_str()];
    tied.sort();
    tied.reverse();
    assert_eq!(first_two, tied, "the tie is broken by id, descending");
    assert_eq!(seen[2], ids[4], "then newest first");
    expect(
        app.post_empty(&format!("/tasks/{}/pause", ids[0]), ADMIN)
            .await,
        200,
    )
    .await;
    let paused = expect(app.get("/tasks?status=paused", ADMIN).await, 200).await;
    assert_eq!(paused["total"], 1);
    assert_eq!(paused["items"][0]["id"], ids[0].as_str());
    let crons = expect(
        app.get("/tasks?schedule_kind=cron&status=active", ADMIN)
            .await,
        200,
    )
    .await;
    assert_eq!(crons["total"], 4);
}

#[tokio::test]
async fn another_agents_task_is_a_404_and_never_listed() {
    let app = spawn_app().await;
    let (alice_id, alice) = app
        .agent("alice", &["tasks:read", "tasks:write", "runs:read"])
        .await;
    let (_, bob) = app
        .agent("bob", &["tasks:read", "tasks:write", "runs:read"])
        .await;
    let task = app.task(&alice, cron_task("alice's")).await;
    assert_eq!(task["created_by"], alice_id.as_str());
    let id = task["id"].as_str().unwrap();
    let path = format!("/tasks/{id}");
    expect_error(app.get(&path, &bob).await, 404, "not_found").await;
    expect_error(
        app.patch(&path, &bob, json!({"title": "mine"})).await,
        404,
        "not_found",
    )
    .await;
    expect_error(app.delete(&path, &bob).await, 404, "not_found").await;
    for action in ["pause", "resume", "cancel", "run_now"] {
        expect_error(
            app.post_empty(&format!("{path}/{action}"), &bob).await,
            404,
            "not_found",
        )
        .await;
    }
    expect_error(
        app.post(&format!("{path}/snooze"), &bob, json!({"delay_seconds": 5}))
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.get(&format!("{path}/schedule"), &bob).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.get(&format!("{path}/runs/latest"), &bob).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.get(&format!("{path}/runs/stats"), &bob).await,
        404,
        "not_found",
    )
    .await;
    let listed = expect(app.get("/tasks", &bob).await, 200).await;
    assert_eq!(listed["total"], 0);
    let listed = expect(
        app.get(&format!("/tasks?created_by={alice_id}"), &bob)
            .await,
        200,
    )
    .await;
    assert_eq!(
        listed["total"], 0,
        "a filter cannot widen what an agent sees"
    );
    expect(app.get(&path, &alice).await, 200).await;
    expect(app.get(&path, ADMIN).await, 200).await;
    let r = app
        .post("/tasks", &bob, {
            let mut b = cron_task("impersonation");
            b["created_by"] = json!(alice_id);
            b
        })
        .await;
    expect_field_error(r, "created_by").await;
    // Admins may create on behalf of an agent.
    let mut b = cron_task("on behalf");
    b["created_by"] = json!(alice_id);
    let t = app.task(ADMIN, b).await;
    assert_eq!(t["created_by"], alice_id.as_str());
}

#[tokio::test]
async fn patch_revalidates_the_merged_task_and_put_behaves_the_same() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("editable")).await;
    let path = format!("/tasks/{}", task["id"].as_str().unwrap());
    let updated = expect(
        app.patch(
            &path,
            ADMIN,
            json!({"title": "renamed", "priority": 2, "dedupe_key": "k"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(updated["title"], "renamed");
    assert_eq!(updated["priority"], 2);
    assert_eq!(
        updated["schedule_expr"], "*/5 * * * *",
        "untouched fields stay"
    );
    let cleared = expect(
        app.patch(&path, ADMIN, json!({"dedupe_key": null})).await,
        200,
    )
    .await;
    assert_eq!(cleared["dedupe_key"], Value::Null);
    // Switching the kind alone leaves an expression that is invalid for the new kind.
    expect_field_error(
        app.patch(&path, ADMIN, json!({"schedule_kind": "once"}))
            .await,
        "schedule_expr",
    )
    .await;
    expect_field_error(
        app.patch(&path, ADMIN, json!({"status": "paused"})).await,
        "status",
    )
    .await;
    expect_field_error(app.patch(&path, ADMIN, json!({"nope": 1})).await, "nope").await;
    let r = app
        .call(
            reqwest::Method::PUT,
            &path,
            Some(ADMIN),
            Some(json!({"description": "via put"})),
        )
        .await;
    assert_eq!(expect(r, 200).await["description"], "via put");
    assert_eq!(app.audit_count("task.update").await, 3);
}

#[tokio::test]
async fn changing_the_schedule_reanchors_and_drops_future_fires() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("reschedule")).await;
    let id = uuid_of(&task);
    let now = db_now(&app).await;
    let past = materialize(&app, id, now - Duration::seconds(30)).await;
    materialize(&app, id, now + Duration::minutes(5)).await;
    let manual = app
        .sql()
        .await
        .query_one(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger) VALUES ($1, now() + interval '1 hour', now() + interval '1 hour', 5, 'manual') RETURNING id",
            &[&id],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    app.sql().await.execute("UPDATE task SET schedule_anchor = '2020-01-01', materialized_until = now() + interval '10 minutes' WHERE id = $1", &[&id]).await.unwrap();
    let updated = expect(
        app.patch(
            &format!("/tasks/{id}"),
            ADMIN,
            json!({"schedule_expr": "0 9 * * *", "timezone": "Asia/Tokyo"}),
        )
        .await,
        200,
    )
    .await;
    let next: DateTime<Utc> = updated["next_run_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        next.with_timezone(&chrono_tz::Asia::Tokyo)
            .format("%H:%M:%S")
            .to_string(),
        "09:00:00"
    );
    let left: Vec<i64> = due_work(&app, id).await.iter().map(|w| w.0).collect();
    assert_eq!(
        left,
        vec![past, manual],
        "only the future scheduled fire is dropped"
    );
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT schedule_anchor, materialized_until, updated_at FROM task WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (anchor, mu, updated_at): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(anchor, updated_at, "re-anchored at the edit");
    assert_eq!(mu, updated_at, "materialized again from now");
}

#[tokio::test]
async fn pausing_a_task_removes_its_future_work_and_pausing_again_changes_nothing() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("pausable")).await;
    let id = uuid_of(&task);
    let now = db_now(&app).await;
    materialize(&app, id, now + Duration::minutes(5)).await;
    materialize(&app, id, now - Duration::minutes(5)).await;
    let leased = materialize(&app, id, now - Duration::minutes(10)).await;
    app.sql().await.execute("UPDATE due_work SET locked_by = 'w1', locked_until = now() + interval '1 minute' WHERE id = $1", &[&leased]).await.unwrap();
    let r = expect(
        app.post_empty(&format!("/tasks/{id}/pause"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(r["previous_status"], "active");
    assert_eq!(r["task"]["status"], "paused");
    let left: Vec<i64> = due_work(&app, id).await.iter().map(|w| w.0).collect();
    assert_eq!(
        left,
        vec![leased],
        "a run already leased finishes; the rest is removed"
    );
    let again = expect(
        app.post_empty(&format!("/tasks/{id}/pause"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(again["previous_status"], "paused");
    assert_eq!(
        again["task"]["updated_at"], r["task"]["updated_at"],
        "unchanged"
    );
    expect_error(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        app.post(
            &format!("/tasks/{id}/snooze"),
            ADMIN,
            json!({"delay_seconds": 60}),
        )
        .await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(app.audit_count("task.pause").await, 1);
    let hints = orrery_testing::wait_for(
        "the pause hint",
        std::time::Duration::from_secs(5),
        || async {
            let e = app.stream(orrery::streams::TASK_CHANGES).await;
            e.iter().any(|h| h["action"] == "paused").then_some(e)
        },
    )
    .await;
    assert!(hints.iter().all(|h| h["task_id"] == id.to_string()));
}

#[tokio::test]
async fn resuming_materializes_from_now_without_a_backlog_burst() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("resumable")).await;
    let id = uuid_of(&task);
    expect(
        app.post_empty(&format!("/tasks/{id}/pause"), ADMIN).await,
        200,
    )
    .await;
    app.sql()
        .await
        .execute(
            "UPDATE task SET materialized_until = now() - interval '3 days' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let r = expect(
        app.post_empty(&format!("/tasks/{id}/resume"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(r["previous_status"], "paused");
    assert_eq!(r["task"]["status"], "active");
    assert!(r["task"]["next_run_at"].is_string());
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT materialized_until, updated_at FROM task WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, DateTime<Utc>>(0),
        row.get::<_, DateTime<Utc>>(1),
        "cursor moved to now"
    );
    let again = expect(
        app.post_empty(&format!("/tasks/{id}/resume"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(again["previous_status"], "active");
}

#[tokio::test]
async fn resuming_a_task_whose_stored_schedule_no_longer_parses_fails_and_leaves_it_paused() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("damaged")).await;
    let id = uuid_of(&task);
    expect(
        app.post_empty(&format!("/tasks/{id}/pause"), ADMIN).await,
        200,
    )
    .await;
    // Damage only the database can do (the API validates every schedule it writes).
    app.sql()
        .await
        .execute(
            "UPDATE task SET timezone = 'Nowhere/Atlantis' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let r = app.post_empty(&format!("/tasks/{id}/resume"), ADMIN).await;
    assert_eq!(
        r.status().as_u16(),
        500,
        "not a silent resume without fires"
    );
    let after = expect(app.get(&format!("/tasks/{id}"), ADMIN).await, 200).await;
    assert_eq!(after["status"], "paused");
    assert_eq!(app.audit_count("task.resume").await, 0);
}

#[tokio::test]
async fn canceled_and_completed_tasks_are_terminal() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("cancelable")).await;
    let id = uuid_of(&task);
    let now = db_now(&app).await;
    materialize(&app, id, now + Duration::minutes(5)).await;
    let r = expect(
        app.post_empty(&format!("/tasks/{id}/cancel"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(r["task"]["status"], "canceled");
    assert!(
        due_work(&app, id).await.is_empty(),
        "canceling removes unleased work"
    );
    let again = expect(
        app.post_empty(&format!("/tasks/{id}/cancel"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(again["previous_status"], "canceled");
    for action in ["resume", "pause", "run_now"] {
        expect_error(
            app.post_empty(&format!("/tasks/{id}/{action}"), ADMIN)
                .await,
            409,
            "conflict",
        )
        .await;
    }
    expect_error(
        app.patch(&format!("/tasks/{id}"), ADMIN, json!({"title": "x"}))
            .await,
        409,
        "conflict",
    )
    .await;
    let done = app.task(ADMIN, cron_task("done")).await;
    let done_id = uuid_of(&done);
    app.sql()
        .await
        .execute(
            "UPDATE task SET status = 'completed' WHERE id = $1",
            &[&done_id],
        )
        .await
        .unwrap();
    for action in ["resume", "pause", "cancel", "run_now"] {
        expect_error(
            app.post_empty(&format!("/tasks/{done_id}/{action}"), ADMIN)
                .await,
            409,
            "conflict",
        )
        .await;
    }
}

#[tokio::test]
async fn run_now_queues_manual_work_due_now_with_the_params_and_wakes_workers() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("manual")).await;
    let id = uuid_of(&task);
    let r = expect(
        app.post(
            &format!("/tasks/{id}/run_now"),
            ADMIN,
            json!({"params": {"who": "now"}}),
        )
        .await,
        202,
    )
    .await;
    let work = due_work(&app, id).await;
    assert_eq!(work.len(), 1);
    let (wid, trigger, run_at, ready_at, params) = &work[0];
    assert_eq!(r["due_work_id"], *wid);
    assert_eq!(trigger, "manual");
    assert_eq!(run_at, ready_at);
    assert_eq!(
        r["run_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        *run_at
    );
    assert_eq!(params.as_ref().unwrap(), &json!({"who": "now"}));
    expect(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        202,
    )
    .await;
    expect_field_error(
        app.post(&format!("/tasks/{id}/run_now"), ADMIN, json!({"params": 3}))
            .await,
        "params",
    )
    .await;
    orrery_testing::wait_for(
        "the wake-up hint",
        std::time::Duration::from_secs(5),
        || async {
            let e = app.stream(orrery::streams::WAKEUP).await;
            (e.len() >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(app.audit_count("task.run_now").await, 2);
    let key: Option<String> = app
        .sql()
        .await
        .query_one("SELECT concurrency_key FROM due_work WHERE id = $1", &[wid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, None, "overlap allow: no guard key");
}

#[tokio::test]
async fn snooze_moves_the_next_fire_later_and_leaves_later_fires_and_manual_runs_alone() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("snoozy")).await;
    let id = uuid_of(&task);
    let now = db_now(&app).await.trunc_subsecs(0);
    let first = materialize(&app, id, now + Duration::minutes(1)).await;
    let second = materialize(&app, id, now + Duration::minutes(6)).await;
    let manual = expect(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        202,
    )
    .await["due_work_id"]
        .as_i64()
        .unwrap();
    let r = expect(
        app.post(
            &format!("/tasks/{id}/snooze"),
            ADMIN,
            json!({"delay_seconds": 120}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(r["due_work_id"], first);
    let work = due_work(&app, id).await;
    let by_id = |wid: i64| work.iter().find(|w| w.0 == wid).unwrap().clone();
    let f = by_id(first);
    assert_eq!(
        f.3 - f.2,
        Duration::seconds(120),
        "ready_at moved, run_at kept"
    );
    let s = by_id(second);
    assert_eq!(s.3, s.2, "later fires are unaffected");
    let m = by_id(manual);
    assert_eq!(m.3, m.2, "a manual run is not a fire and is not delayed");
    assert_eq!(app.audit_count("task.snooze").await, 1);
    for bad in [
        json!({"delay_seconds": 0}),
        json!({"delay_seconds": 604801}),
        json!({"delay_seconds": "1"}),
        json!({}),
    ] {
        expect_field_error(
            app.post(&format!("/tasks/{id}/snooze"), ADMIN, bad).await,
            "delay_seconds",
        )
        .await;
    }
}

#[tokio::test]
async fn snoozing_before_the_scheduler_materialized_the_fire_materializes_it_late() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("early snooze")).await;
    let id = uuid_of(&task);
    let next: DateTime<Utc> = task["next_run_at"].as_str().unwrap().parse().unwrap();
    let r = expect(
        app.post(
            &format!("/tasks/{id}/snooze"),
            ADMIN,
            json!({"delay_seconds": 30}),
        )
        .await,
        200,
    )
    .await;
    let work = due_work(&app, id).await;
    assert_eq!(work.len(), 1);
    assert_eq!(work[0].1, "schedule");
    assert_eq!(work[0].2, next, "the next fire, at its nominal instant");
    assert_eq!(work[0].3, next + Duration::seconds(30));
    assert_eq!(
        r["ready_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        next + Duration::seconds(30)
    );
    let mu: DateTime<Utc> = app
        .sql()
        .await
        .query_one("SELECT materialized_until FROM task WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mu, next, "the scheduler continues after it");
}

#[tokio::test]
async fn deleting_a_task_removes_it_with_its_work_and_runs() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("doomed")).await;
    let id = uuid_of(&task);
    expect(
        app.post_empty(&format!("/tasks/{id}/run_now"), ADMIN).await,
        202,
    )
    .await;
    app.sql().await.execute(
        "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, success) VALUES ($1, 1, 'manual', now(), true)", &[&id]).await.unwrap();
    expect(app.delete(&format!("/tasks/{id}"), ADMIN).await, 204).await;
    expect_error(
        app.get(&format!("/tasks/{id}"), ADMIN).await,
        404,
        "not_found",
    )
    .await;
    let c = app.sql().await;
    let left: i64 = c
        .query_one("SELECT (SELECT count(*) FROM due_work WHERE task_id = $1) + (SELECT count(*) FROM task_run WHERE task_id = $1)", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(app.audit_count("task.delete").await, 1);
    expect_error(
        app.delete(&format!("/tasks/{id}"), ADMIN).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_tasks_schedule_lists_its_next_fires_in_utc_and_local_time() {
    let app = spawn_app().await;
    let mut b = cron_task("berlin");
    b["schedule_expr"] = json!("30 2 * * *");
    b["timezone"] = json!("Europe/Berlin");
    let task = app.task(ADMIN, b).await;
    let id = task["id"].as_str().unwrap();
    let r = expect(
        app.get(
            &format!("/tasks/{id}/schedule?count=3&after=2026-03-28T00:00:00Z"),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    let fires = r["fires"].as_array().unwrap();
    let at: Vec<&str> = fires.iter().map(|f| f["at"].as_str().unwrap()).collect();
    assert_eq!(
        at,
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z"
        ],
        "the skipped 02:30 runs at 03:00"
    );
    assert_eq!(fires[0]["local"], "2026-03-28T02:30:00+01:00");
    assert_eq!(fires[2]["local"], "2026-03-30T02:30:00+02:00");
    let default = expect(app.get(&format!("/tasks/{id}/schedule"), ADMIN).await, 200).await;
    assert_eq!(default["fires"].as_array().unwrap().len(), 10);
    expect_field_error(
        app.get(&format!("/tasks/{id}/schedule?count=1001"), ADMIN)
            .await,
        "count",
    )
    .await;
    expect_field_error(
        app.get(&format!("/tasks/{id}/schedule?after=tomorrow"), ADMIN)
            .await,
        "after",
    )
    .await;
}
