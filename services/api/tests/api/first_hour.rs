//! The first hour of a new user (issue #17): replaying dead work of a finished task, the payload default,
//! preview times in the rule's own zone, the bare-RRULE COUNT error, backfill and the audit log.

use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn db_now(app: &TestApp) -> DateTime<Utc> {
    app.sql()
        .await
        .query_one("SELECT now()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn dead_work(app: &TestApp, task: Uuid) -> i64 {
    app.sql()
        .await
        .query_one(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, state, attempt, dead_at, last_error)
             VALUES ($1, now() - interval '1 minute', now() - interval '1 minute', 5, 'schedule', 'dead', 4, now(),
                     'gave up') RETURNING id",
            &[&task],
        )
        .await
        .unwrap()
        .get(0)
}

async fn set_status(app: &TestApp, task: Uuid, status: &str) {
    app.sql()
        .await
        .execute(
            "UPDATE task SET status = $2 WHERE id = $1",
            &[&task, &status],
        )
        .await
        .unwrap();
}

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn dead_work_of_a_completed_once_task_can_be_replayed() {
    let app = spawn_app().await;
    let at = rfc(db_now(&app).await + Duration::hours(1));
    let task = app
        .task(
            ADMIN,
            json!({"title": "once", "schedule_kind": "once", "schedule_expr": at, "timezone": "UTC",
                   "payload": {"pipeline": [{"id": "n", "uses": "noop"}]}}),
        )
        .await;
    let id = id_of(&task);
    // What the scheduler does once the only fire went dead: the task is completed.
    set_status(&app, id, "completed").await;
    let dead = dead_work(&app, id).await;
    let body = expect(
        app.post_empty(&format!("/queue/dead/{dead}/replay"), ADMIN)
            .await,
        202,
    )
    .await;
    assert_eq!(body["due_work_id"], dead);
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT state, attempt, ready_at <= now() FROM due_work WHERE id = $1",
            &[&dead],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, bool>(2)
        ),
        ("pending".to_string(), 0, true)
    );
    let task = expect(app.get(&format!("/tasks/{id}"), ADMIN).await, 200).await;
    assert_eq!(
        task["status"], "completed",
        "replay does not revive the schedule"
    );
}

#[tokio::test]
async fn replaying_dead_work_of_a_paused_or_canceled_task_is_409_saying_why() {
    let app = spawn_app().await;
    for (status, hint) in [("paused", "resume it"), ("canceled", "never runs again")] {
        let id = id_of(&app.task(ADMIN, cron_task(status)).await);
        set_status(&app, id, status).await;
        let dead = dead_work(&app, id).await;
        let body = expect_error(
            app.post_empty(&format!("/queue/dead/{dead}/replay"), ADMIN)
                .await,
            409,
            "conflict",
        )
        .await;
        assert!(body["message"].as_str().unwrap().contains(hint), "{body}");
        let state: String = app
            .sql()
            .await
            .query_one("SELECT state FROM due_work WHERE id = $1", &[&dead])
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "dead", "a refused replay changes nothing");
    }
}

#[tokio::test]
async fn an_empty_or_partial_payload_takes_the_documented_defaults() {
    let app = spawn_app().await;
    for (payload, expected) in [
        (Some(json!({})), json!({"params": {}, "pipeline": []})),
        (None, json!({"params": {}, "pipeline": []})),
        (
            Some(json!({"params": {"a": 1}})),
            json!({"params": {"a": 1}, "pipeline": []}),
        ),
        (
            Some(json!({"pipeline": [{"id": "n", "uses": "noop"}]})),
            json!({"params": {}, "pipeline": [{"id": "n", "uses": "noop"}]}),
        ),
    ] {
        let mut body = cron_task("defaults");
        match payload {
            Some(p) => body["payload"] = p,
            None => {
                body.as_object_mut().unwrap().remove("payload");
            }
        }
        let task = app.task(ADMIN, body).await;
        assert_eq!(task["payload"], expected, "{task}");
    }
    // The schema says the same: payload is optional and its keys are optional.
    let doc = expect(
        app.call(reqwest::Method::GET, "/openapi.json", None, None)
            .await,
        200,
    )
    .await;
    let create = &doc["components"]["schemas"]["TaskCreate"];
    let required: Vec<&str> = create["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!required.contains(&"payload"), "{create}");
    assert!(
        create["properties"]["payload"]["description"]
            .as_str()
            .unwrap()
            .contains(r#"{"params": {}, "pipeline": []}"#),
        "{create}"
    );
}

#[tokio::test]
async fn preview_shows_local_times_in_the_zone_the_rule_is_written_in() {
    let app = spawn_app().await;
    // 2026-03-08 is the US spring-forward: the offset changes from -05:00 to -04:00 between the fires.
    let expr = "DTSTART;TZID=America/New_York:20260306T090000\nRRULE:FREQ=DAILY;COUNT=4";
    let body = expect(
        app.post(
            "/schedules/preview",
            ADMIN,
            json!({"schedule_kind": "rrule", "schedule_expr": expr, "timezone": "UTC", "count": 4,
                   "after": "2026-03-01T00:00:00Z"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(body["timezone"], "America/New_York", "{body}");
    let fires: Vec<(&str, &str)> = body["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["at"].as_str().unwrap(), f["local"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fires,
        [
            ("2026-03-06T14:00:00Z", "2026-03-06T09:00:00-05:00"),
            ("2026-03-07T14:00:00Z", "2026-03-07T09:00:00-05:00"),
            ("2026-03-08T13:00:00Z", "2026-03-08T09:00:00-04:00"),
            ("2026-03-09T13:00:00Z", "2026-03-09T09:00:00-04:00"),
        ]
    );
    // A DTSTART in UTC is shown in UTC; other kinds keep the request's zone.
    let utc = expect(
        app.post(
            "/schedules/preview",
            ADMIN,
            json!({"schedule_kind": "rrule", "schedule_expr": "DTSTART:20260306T090000Z\nRRULE:FREQ=DAILY;COUNT=1",
                   "timezone": "Europe/Berlin", "after": "2026-03-01T00:00:00Z"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(utc["timezone"], "UTC");
    assert_eq!(utc["fires"][0]["local"], "2026-03-06T09:00:00+00:00");
    let cron = expect(
        app.post(
            "/schedules/preview",
            ADMIN,
            json!({"schedule_kind": "cron", "schedule_expr": "0 9 * * *", "timezone": "Europe/Berlin", "count": 1,
                   "after": "2026-03-01T00:00:00Z"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(cron["timezone"], "Europe/Berlin");
    assert_eq!(cron["fires"][0]["local"], "2026-03-01T09:00:00+01:00");

    // The task's own schedule view agrees.
    let mut t = cron_task("ny");
    t["schedule_kind"] = json!("rrule");
    t["schedule_expr"] = json!("DTSTART;TZID=America/New_York:20260306T090000\nRRULE:FREQ=DAILY");
    let id = id_of(&app.task(ADMIN, t).await);
    let sched = expect(
        app.get(
            &format!("/tasks/{id}/schedule?count=1&after=2030-01-01T00:00:00Z"),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(sched["timezone"], "America/New_York");
    assert_eq!(sched["fires"][0]["local"], "2030-01-01T09:00:00-05:00");
}

#[tokio::test]
async fn a_bare_rrule_whose_count_is_used_up_says_why_and_what_to_write_instead() {
    let app = spawn_app().await;
    let now = db_now(&app).await;
    // Counting starts at local midnight; keep clear of it so two seconds later is still the same day.
    let zone = if now.time().signed_duration_since(chrono::NaiveTime::MIN) < Duration::minutes(1) {
        "Etc/GMT+6"
    } else {
        "UTC"
    };
    let mut t = cron_task("bare count");
    t["schedule_kind"] = json!("rrule");
    t["schedule_expr"] = json!("FREQ=SECONDLY;INTERVAL=2;COUNT=2");
    t["timezone"] = json!(zone);
    let body =
        expect_field_error(app.post("/tasks", ADMIN, t.clone()).await, "schedule_expr").await;
    let message = body["details"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("local midnight"), "{message}");
    assert!(message.contains("DTSTART:"), "{message}");
    // What the message suggests works.
    let start = (now + Duration::minutes(2))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    t["schedule_expr"] = json!(format!(
        "DTSTART:{}\nRRULE:FREQ=SECONDLY;INTERVAL=2;COUNT=2",
        start.format("%Y%m%dT%H%M%SZ")
    ));
    let task = app.task(ADMIN, t).await;
    assert_eq!(task["next_run_at"], json!(rfc(start)), "{task}");
}

async fn hourly_task(app: &TestApp, token: &str) -> Uuid {
    let mut t = cron_task("hourly");
    t["schedule_expr"] = json!("0 * * * *");
    id_of(&app.task(token, t).await)
}

async fn backfill(app: &TestApp, id: Uuid, body: Value) -> reqwest::Response {
    app.post(&format!("/tasks/{id}/backfill"), ADMIN, body)
        .await
}

async fn scheduled_rows(app: &TestApp, id: Uuid) -> Vec<DateTime<Utc>> {
    app.sql()
        .await
        .query(
            "SELECT run_at FROM due_work WHERE task_id = $1 AND trigger = 'schedule' AND run_at < now()
              ORDER BY run_at",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn backfill_materializes_each_past_fire_of_the_window_exactly_once() {
    let app = spawn_app().await;
    let id = hourly_task(&app, ADMIN).await;
    let now = db_now(&app).await;
    let from = now - Duration::hours(5);
    let window = json!({"from": rfc(from), "to": rfc(now)});
    let report = expect(backfill(&app, id, window.clone()).await, 200).await;
    // Whole hours in [from, to).
    let first = from.duration_trunc(Duration::hours(1)).unwrap();
    let expected: Vec<DateTime<Utc>> = (0..=6)
        .map(|k| first + Duration::hours(k))
        .filter(|t| *t >= from && *t < now)
        .collect();
    assert_eq!(report["fires"], expected.len() as i64, "{report}");
    assert_eq!(report["created"], expected.len() as i64, "{report}");
    assert_eq!(report["capped"], false);
    assert_eq!(scheduled_rows(&app, id).await, expected);
    let ready: bool = app
        .sql()
        .await
        .query_one(
            "SELECT bool_and(ready_at <= now() AND attempt = 0 AND state = 'pending') FROM due_work WHERE task_id = $1 AND run_at < now()",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ready, "backfilled fires are due now");

    // Again while they are pending: nothing new.
    let again = expect(backfill(&app, id, window.clone()).await, 200).await;
    assert_eq!(
        (again["created"].clone(), again["skipped"].clone()),
        (json!(0), json!(expected.len()))
    );

    // After they ran (rows gone, runs recorded) and even after their history is pruned: still nothing new.
    let c = app.sql().await;
    c.execute(
        "INSERT INTO task_run (task_id, due_work_id, attempt, trigger, scheduled_for, success)
         SELECT task_id, id, 1, 'schedule', run_at, true FROM due_work WHERE task_id = $1 AND run_at < now()",
        &[&id],
    )
    .await
    .unwrap();
    c.execute("DELETE FROM due_work WHERE task_id = $1", &[&id])
        .await
        .unwrap();
    let after_runs = expect(backfill(&app, id, window.clone()).await, 200).await;
    assert_eq!(after_runs["created"], 0, "{after_runs}");
    c.execute("DELETE FROM task_run WHERE task_id = $1", &[&id])
        .await
        .unwrap();
    let after_prune = expect(backfill(&app, id, window).await, 200).await;
    assert_eq!(after_prune["created"], 0, "{after_prune}");
    assert_eq!(app.audit_count("task.backfill").await, 4);
}

#[tokio::test]
async fn backfill_skips_fires_that_ran_and_runs_fires_that_were_skipped_as_misfires() {
    let app = spawn_app().await;
    let id = hourly_task(&app, ADMIN).await;
    let now = db_now(&app).await;
    let h0 = now.duration_trunc(Duration::hours(1)).unwrap();
    let h1 = h0 - Duration::hours(1);
    let h2 = h1 - Duration::hours(1);
    let h3 = h2 - Duration::hours(1);
    let c = app.sql().await;
    // h3 ran; h2 was dropped as a misfire (attempt 0); h1 is still pending.
    c.execute(
        "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, success, error_kind)
         VALUES ($1, 1, 'schedule', $2, true, NULL), ($1, 0, 'schedule', $3, false, 'misfired')",
        &[&id, &h3, &h2],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger) VALUES ($1, $2, $2, 5, 'schedule')",
        &[&id, &h1],
    )
    .await
    .unwrap();
    let report = expect(
        backfill(&app, id, json!({"from": rfc(h3), "to": rfc(now)})).await,
        200,
    )
    .await;
    assert_eq!(report["fires"], 4, "{report}");
    assert_eq!(
        report["created_fires"],
        json!([rfc(h2), rfc(h0)]),
        "{report}"
    );
    assert_eq!(report["skipped"], 2);
}

#[tokio::test]
async fn backfill_is_capped_and_says_where_to_continue() {
    let app = spawn_app().await;
    let id = hourly_task(&app, ADMIN).await;
    let now = db_now(&app).await;
    let from = (now - Duration::hours(10))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let mut next = json!(rfc(from));
    let mut created = Vec::new();
    let mut calls = 0;
    while let Some(f) = next.as_str().map(str::to_string) {
        let r = expect(
            backfill(&app, id, json!({"from": f, "to": rfc(now), "max_fires": 3})).await,
            200,
        )
        .await;
        calls += 1;
        assert!(r["created"].as_i64().unwrap() <= 3, "{r}");
        assert_eq!(r["capped"], !r["next_from"].is_null(), "{r}");
        created.extend(r["created_fires"].as_array().unwrap().iter().cloned());
        next = r["next_from"].clone();
    }
    // Whole hours from `from` (included) to now: 10 or 11 of them.
    let expected: Vec<Value> = (0..=11)
        .map(|h| from + Duration::hours(h))
        .filter(|t| *t < now)
        .map(|t| json!(rfc(t)))
        .collect();
    assert_eq!(calls, expected.len().div_ceil(3));
    assert_eq!(created, expected);
}

#[tokio::test]
async fn concurrent_backfills_of_one_window_create_each_fire_once() {
    let app = spawn_app().await;
    let id = hourly_task(&app, ADMIN).await;
    let now = db_now(&app).await;
    let window = json!({"from": rfc(now - Duration::hours(48)), "to": rfc(now)});
    let calls = (0..6).map(|_| backfill(&app, id, window.clone()));
    let mut created = 0;
    for r in futures::future::join_all(calls).await {
        created += expect(r, 200).await["created"].as_i64().unwrap();
    }
    assert_eq!(created, 48);
    assert_eq!(scheduled_rows(&app, id).await.len(), 48);
}

#[tokio::test]
async fn backfill_input_and_state_errors_name_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let id = hourly_task(&app, ADMIN).await;
    let now = db_now(&app).await;
    let past = rfc(now - Duration::hours(3));
    for (body, field) in [
        (json!({"to": rfc(now)}), "from"),
        (json!({"from": past}), "to"),
        (json!({"from": "yesterday", "to": rfc(now)}), "from"),
        (json!({"from": rfc(now), "to": past}), "to"),
        (
            json!({"from": past, "to": rfc(now + Duration::hours(1))}),
            "to",
        ),
        (
            json!({"from": past, "to": rfc(now), "max_fires": 0}),
            "max_fires",
        ),
        (
            json!({"from": past, "to": rfc(now), "max_fires": 1001}),
            "max_fires",
        ),
        (json!({"from": past, "to": rfc(now), "extra": 1}), "extra"),
    ] {
        expect_field_error(backfill(&app, id, body).await, field).await;
    }
    let window = json!({"from": past, "to": rfc(now)});
    expect_error(
        app.post(
            &format!("/tasks/{}/backfill", Uuid::new_v4()),
            ADMIN,
            window.clone(),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // Another agent cannot see the task.
    let (_, token) = app.agent("other", &["tasks:write", "tasks:read"]).await;
    expect_error(
        app.post(&format!("/tasks/{id}/backfill"), &token, window.clone())
            .await,
        404,
        "not_found",
    )
    .await;
    // Paused and event tasks: 409.
    expect(
        app.post_empty(&format!("/tasks/{id}/pause"), ADMIN).await,
        200,
    )
    .await;
    expect_error(backfill(&app, id, window.clone()).await, 409, "conflict").await;
    let mut ev = cron_task("ev");
    ev["schedule_kind"] = json!("event");
    ev["schedule_expr"] = json!("a.b");
    let ev = id_of(&app.task(ADMIN, ev).await);
    expect_error(backfill(&app, ev, window).await, 409, "conflict").await;
    assert!(scheduled_rows(&app, id).await.is_empty());
    assert_eq!(app.audit_count("task.backfill").await, 0);
}

#[tokio::test]
async fn the_audit_log_is_listed_newest_first_filtered_and_keyset_paginated() {
    let app = spawn_app().await;
    let (agent_id, token) = app
        .agent("auditor-subject", &["tasks:write", "tasks:read"])
        .await;
    let mine = id_of(&app.task(&token, cron_task("mine")).await);
    let admins = id_of(&app.task(ADMIN, cron_task("admins")).await);
    expect(
        app.post_empty(&format!("/tasks/{mine}/pause"), &token)
            .await,
        200,
    )
    .await;
    expect(
        app.post_empty(&format!("/tasks/{admins}/pause"), ADMIN)
            .await,
        200,
    )
    .await;
    expect(
        app.post_empty(&format!("/tasks/{admins}/resume"), ADMIN)
            .await,
        200,
    )
    .await;

    let all = expect(app.get("/audit?limit=200", ADMIN).await, 200).await;
    let items = all["items"].as_array().unwrap();
    let ids: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(items[0]["action"], "task.resume");
    assert_eq!(items[0]["subject_id"], admins.to_string());

    let by_actor = expect(
        app.get(&format!("/audit?actor={agent_id}"), ADMIN).await,
        200,
    )
    .await;
    let actions: Vec<&str> = by_actor["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["task.pause", "task.create"]);
    assert_eq!(by_actor["items"][0]["actor_name"], "auditor-subject");

    let pauses = expect(app.get("/audit?action=task.pause", ADMIN).await, 200).await;
    assert_eq!(pauses["items"].as_array().unwrap().len(), 2);
    let task_actions = expect(
        app.get(&format!("/audit?action=task.*&target={admins}"), ADMIN)
            .await,
        200,
    )
    .await;
    let actions: Vec<&str> = task_actions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["task.resume", "task.pause", "task.create"]);
    let future = rfc(db_now(&app).await + Duration::hours(1));
    let none = expect(app.get(&format!("/audit?since={future}"), ADMIN).await, 200).await;
    assert_eq!(none["items"], json!([]));

    // Pages of 2 walk every entry once, in order.
    let mut seen = Vec::new();
    let mut path = "/audit?limit=2".to_string();
    loop {
        let page = expect(app.get(&path, ADMIN).await, 200).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(b) => {
                assert_eq!(page["has_more"], true);
                path = format!("/audit?limit=2&before={b}");
            }
            None => {
                assert_eq!(page["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(seen, ids);

    expect_error(app.get("/audit", &token).await, 403, "forbidden").await;
    for (query, field) in [
        ("actor=nope", "actor"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("before=-1", "before"),
        ("subject_type=planet", "subject_type"),
    ] {
        expect_field_error(app.get(&format!("/audit?{query}"), ADMIN).await, field).await;
    }
}
