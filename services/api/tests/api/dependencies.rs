//! Task dependencies over the API (docs/flow-control.md#dependencies): `after` by name or id, field-level 422s,
//! cycles, what pause, resume, cancel and delete do to a chain, and GET /runs/{id} with parents and children.
//! Parents are settled with the worker's own statements (`orrery::queue::claim_batch` / `complete_batch`).

use chrono::Utc;
use orrery::queue::{self, Completion, Settlement};
use serde_json::{json, Value};

use crate::common::{cron_task, expect, expect_field_error, spawn_app, TestApp, ADMIN};

fn named(name: &str, after: Value) -> Value {
    let mut t = cron_task(&format!("task {name}"));
    t["name"] = json!(name);
    if !after.is_null() {
        t["after"] = after;
    }
    t
}

fn id(t: &Value) -> String {
    t["id"].as_str().unwrap().to_string()
}

async fn task_count(app: &TestApp) -> i64 {
    app.sql()
        .await
        .query_one("SELECT count(*) FROM task", &[])
        .await
        .unwrap()
        .get(0)
}

/// Claims every ready row and settles each as `outcome` (for `task`, or any task), as a worker would.
async fn settle_ready(app: &TestApp, only: Option<&str>, settlement: Settlement) -> Vec<i64> {
    let pool = app.db.pool();
    let c = pool.get().await.unwrap();
    let claimed = queue::claim_batch(&c, "test-worker", 30.0, 100, None, None, false, true)
        .await
        .unwrap()
        .claimed;
    let mut done = Vec::new();
    let mut batch = Vec::new();
    for w in claimed {
        if only.is_some_and(|t| t != w.task_id.to_string()) {
            queue::release_unstarted(&c, &[(w.id, w.fencing_token)])
                .await
                .unwrap();
            continue;
        }
        done.push(w.id);
        batch.push(Completion {
            id: w.id,
            fencing_token: w.fencing_token,
            settlement,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            error: None,
            error_kind: None,
            output: Some(json!({"steps": {"n": {"x": "out"}}, "skipped": []})),
        });
    }
    queue::complete_batch(&c, "test-worker", &batch, None)
        .await
        .unwrap();
    done
}

async fn pending_of(app: &TestApp, task: &str) -> i64 {
    app.sql()
        .await
        .query_one(
            "SELECT count(*) FROM due_work WHERE task_id = $1::text::uuid AND state = 'pending'",
            &[&task],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn after_by_name_or_id_is_resolved_stored_and_returned() {
    let app = spawn_app().await;
    let extract = app.task(ADMIN, named("extract", Value::Null)).await;
    let clean = app.task(ADMIN, named("clean", Value::Null)).await;
    let load = app
        .task(
            ADMIN,
            named(
                "load",
                json!([
                    {"task": "extract", "params": {"file": "${steps.n.x}"}},
                    {"task": id(&clean), "condition": "any"}
                ]),
            ),
        )
        .await;
    assert_eq!(
        load["after"],
        json!([
            {"task": "extract", "task_id": extract["id"], "condition": "success", "params": {"file": "${steps.n.x}"}},
            {"task": id(&clean), "task_id": clean["id"], "condition": "any"}
        ])
    );
    let got = expect(app.get(&format!("/tasks/{}", id(&load)), ADMIN).await, 200).await;
    assert_eq!(got["after"], load["after"]);
    let edges: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM task_dependency WHERE task_id = $1::text::uuid",
            &[&id(&load)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(edges, 2);
    // PATCH replaces; null removes every dependency.
    let patched = expect(
        app.patch(
            &format!("/tasks/{}", id(&load)),
            ADMIN,
            json!({"after": [{"task": "clean", "condition": "failure"}]}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(patched["after"][0]["task_id"], clean["id"]);
    assert_eq!(patched["after"][0]["condition"], "failure");
    let cleared = expect(
        app.patch(
            &format!("/tasks/{}", id(&load)),
            ADMIN,
            json!({"after": null}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(cleared["after"], json!([]));
    let edges: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM task_dependency", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(edges, 0);
}

#[tokio::test]
async fn invalid_after_is_422_naming_the_entry_and_nothing_is_written() {
    let app = spawn_app().await;
    let parent = app.task(ADMIN, named("parent", Value::Null)).await;
    let canceled = app.task(ADMIN, named("gone", Value::Null)).await;
    expect(
        app.post_empty(&format!("/tasks/{}/cancel", id(&canceled)), ADMIN)
            .await,
        200,
    )
    .await;
    let (_, other) = app.agent("other", &["tasks:read", "tasks:write"]).await;
    let before = task_count(&app).await;
    let cases = [
        (json!("parent"), "after"),
        (json!([{"task": "nope"}]), "after[0].task"),
        (
            json!([{"task": "parent"}, {"task": "parent"}]),
            "after[1].task",
        ),
        (
            json!([{"task": "parent", "condition": "sometimes"}]),
            "after[0].condition",
        ),
        (
            json!([{"task": "parent", "params": [1]}]),
            "after[0].params",
        ),
        (
            json!([{"task": "parent", "params": {"x": "${steps.n"}}]),
            "after[0].params.x",
        ),
        (
            json!([{"task": "parent", "params": {"x": "${nothing.here}"}}]),
            "after[0].params.x",
        ),
        (json!([{"task": "parent", "when": "now"}]), "after[0].when"),
        (
            json!([{"task": "parent", "params": {"x": "a\u{0}b"}}]),
            "after[0].params.x",
        ),
        (json!([{"condition": "any"}]), "after[0].task"),
        (json!([{"task": 5}]), "after[0].task"),
        (json!([{"task": "bad name!"}]), "after[0].task"),
        (json!([{"task": "gone"}]), "after[0].task"),
        (json!([{"task": "me"}]), "after[0].task"),
        (
            json!([{"task": uuid::Uuid::new_v4().to_string()}]),
            "after[0].task",
        ),
        (json!(vec![json!({"task": "parent"}); 1001]), "after"),
    ];
    for (after, field) in cases {
        let body = expect_field_error(
            app.post("/tasks", ADMIN, named("me", after.clone())).await,
            field,
        )
        .await;
        if field == "after[0].task" && after[0]["task"] == "me" {
            assert!(
                body["message"].as_str().unwrap().contains("cycle: me → me"),
                "{body}"
            );
        }
    }
    // Another agent cannot depend on a task it cannot see, by id or by name.
    expect_field_error(
        app.post(
            "/tasks",
            &other,
            named("mine", json!([{"task": id(&parent)}])),
        )
        .await,
        "after[0].task",
    )
    .await;
    expect_field_error(
        app.post("/tasks", &other, named("mine", json!([{"task": "parent"}])))
            .await,
        "after[0].task",
    )
    .await;
    assert_eq!(task_count(&app).await, before, "nothing was written");
}

#[tokio::test]
async fn a_cycle_is_rejected_naming_the_entry_and_the_path() {
    let app = spawn_app().await;
    let a = app.task(ADMIN, named("a", Value::Null)).await;
    app.task(ADMIN, named("b", json!([{"task": "a"}]))).await;
    app.task(ADMIN, named("c", json!([{"task": "b"}]))).await;
    let x = app.task(ADMIN, named("x", Value::Null)).await;
    let body = expect_field_error(
        app.patch(
            &format!("/tasks/{}", id(&a)),
            ADMIN,
            json!({"after": [{"task": "x"}, {"task": "c"}]}),
        )
        .await,
        "after[1].task",
    )
    .await;
    let message = body["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("a → b → c → a"), "{message}");
    expect_field_error(
        app.patch(
            &format!("/tasks/{}", id(&a)),
            ADMIN,
            json!({"after": [{"task": "a"}]}),
        )
        .await,
        "after[0].task",
    )
    .await;
    let got = expect(app.get(&format!("/tasks/{}", id(&a)), ADMIN).await, 200).await;
    assert_eq!(got["after"], json!([]), "nothing changed");
    // A diamond is not a cycle.
    expect(
        app.patch(
            &format!("/tasks/{}", id(&x)),
            ADMIN,
            json!({"after": [{"task": "b"}, {"task": "c"}]}),
        )
        .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn two_concurrent_edits_cannot_close_a_cycle_between_them() {
    let app = spawn_app().await;
    for round in 0..10 {
        let p = app
            .task(ADMIN, named(&format!("p{round}"), Value::Null))
            .await;
        let q = app
            .task(ADMIN, named(&format!("q{round}"), Value::Null))
            .await;
        let (path_p, path_q) = (format!("/tasks/{}", id(&p)), format!("/tasks/{}", id(&q)));
        let (r1, r2) = tokio::join!(
            app.patch(&path_p, ADMIN, json!({"after": [{"task": id(&q)}]})),
            app.patch(&path_q, ADMIN, json!({"after": [{"task": id(&p)}]})),
        );
        let mut statuses = [r1.status().as_u16(), r2.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 422], "round {round}: exactly one edit wins");
    }
}

#[tokio::test]
async fn runs_show_their_trace_parents_and_children() {
    let app = spawn_app().await;
    let parent = app.task(ADMIN, named("parent", Value::Null)).await;
    let child = app
        .task(ADMIN, named("child", json!([{"task": "parent"}])))
        .await;
    expect(
        app.post_empty(&format!("/tasks/{}/run_now", id(&parent)), ADMIN)
            .await,
        202,
    )
    .await;
    settle_ready(&app, Some(&id(&parent)), Settlement::Succeeded).await;
    settle_ready(&app, Some(&id(&child)), Settlement::Succeeded).await;
    let runs = expect(app.get("/runs?limit=10", ADMIN).await, 200).await;
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let p = items.iter().find(|r| r["task_id"] == parent["id"]).unwrap();
    let c = items.iter().find(|r| r["task_id"] == child["id"]).unwrap();
    assert_eq!(p["trace_id"], c["trace_id"]);
    assert_eq!(c["trigger"], "dependency");
    let pr = expect(app.get(&format!("/runs/{}", p["id"]), ADMIN).await, 200).await;
    assert_eq!(pr["parents"], json!([]));
    assert_eq!(pr["children"][0]["task_id"], child["id"]);
    assert_eq!(pr["children"][0]["gate"], "fired");
    assert_eq!(pr["children"][0]["run_ids"], json!([c["id"]]));
    let cr = expect(app.get(&format!("/runs/{}", c["id"]), ADMIN).await, 200).await;
    assert_eq!(cr["parents"][0]["task_id"], parent["id"]);
    assert_eq!(cr["parents"][0]["task_name"], "parent");
    assert_eq!(cr["parents"][0]["outcome"], "succeeded");
    assert_eq!(cr["parents"][0]["condition"], "success");
    assert_eq!(cr["parents"][0]["run_id"], p["id"]);
    assert_eq!(cr["children"], json!([]));
}

#[tokio::test]
async fn a_paused_dependent_holds_its_work_until_resumed_and_a_canceled_one_drops_it() {
    let app = spawn_app().await;
    let parent = app.task(ADMIN, named("parent", Value::Null)).await;
    let child = app
        .task(ADMIN, named("child", json!([{"task": "parent"}])))
        .await;
    let child_path = format!("/tasks/{}", id(&child));
    // Released while paused: held at its gate, nothing pending.
    expect(
        app.post_empty(&format!("{child_path}/pause"), ADMIN).await,
        200,
    )
    .await;
    expect(
        app.post_empty(&format!("/tasks/{}/run_now", id(&parent)), ADMIN)
            .await,
        202,
    )
    .await;
    settle_ready(&app, Some(&id(&parent)), Settlement::Succeeded).await;
    assert_eq!(pending_of(&app, &id(&child)).await, 0);
    // Released while active, then paused before it ran: parked back at its gate.
    expect(
        app.post_empty(&format!("{child_path}/resume"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(
        pending_of(&app, &id(&child)).await,
        1,
        "resume releases the held run"
    );
    expect(
        app.post_empty(&format!("{child_path}/pause"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(pending_of(&app, &id(&child)).await, 0);
    let held: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM dependency_gate WHERE state = 'held'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1);
    expect(
        app.post_empty(&format!("{child_path}/resume"), ADMIN).await,
        200,
    )
    .await;
    let c = app.sql().await;
    let traces: Vec<(String, uuid::Uuid)> = c
        .query(
            "SELECT trigger, trace_id FROM due_work WHERE task_id = $1::text::uuid",
            &[&id(&child)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let parent_trace: uuid::Uuid = c
        .query_one(
            "SELECT trace_id FROM task_run WHERE task_id = $1::text::uuid",
            &[&id(&parent)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(traces, vec![("dependency".to_string(), parent_trace)]);
    settle_ready(&app, Some(&id(&child)), Settlement::Succeeded).await;
    // Canceled: the edge is dropped (and recorded); the parent's next run releases nothing.
    expect(
        app.post_empty(&format!("{child_path}/cancel"), ADMIN).await,
        200,
    )
    .await;
    let audit: Value = c
        .query_one(
            "SELECT details FROM audit_log WHERE action = 'task.cancel' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit["dependencies_dropped"], 1);
    expect(
        app.post_empty(&format!("/tasks/{}/run_now", id(&parent)), ADMIN)
            .await,
        202,
    )
    .await;
    settle_ready(&app, Some(&id(&parent)), Settlement::Succeeded).await;
    assert_eq!(pending_of(&app, &id(&child)).await, 0);
    let runs: i64 = c
        .query_one(
            "SELECT count(*) FROM task_run WHERE task_id = $1::text::uuid",
            &[&id(&child)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the child ran once, before it was canceled");
}

#[tokio::test]
async fn replaying_a_dead_parent_releases_the_success_dependents_once() {
    let app = spawn_app().await;
    let parent = app.task(ADMIN, named("parent", Value::Null)).await;
    let on_ok = app
        .task(ADMIN, named("ok", json!([{"task": "parent"}])))
        .await;
    let on_fail = app
        .task(
            ADMIN,
            named("fail", json!([{"task": "parent", "condition": "failure"}])),
        )
        .await;
    expect(
        app.post_empty(&format!("/tasks/{}/run_now", id(&parent)), ADMIN)
            .await,
        202,
    )
    .await;
    let dead = settle_ready(&app, Some(&id(&parent)), Settlement::Dead).await;
    assert_eq!(pending_of(&app, &id(&on_fail)).await, 1);
    assert_eq!(pending_of(&app, &id(&on_ok)).await, 0);
    settle_ready(&app, Some(&id(&on_fail)), Settlement::Succeeded).await;
    expect(
        app.post_empty(&format!("/queue/dead/{}/replay", dead[0]), ADMIN)
            .await,
        202,
    )
    .await;
    settle_ready(&app, Some(&id(&parent)), Settlement::Succeeded).await;
    assert_eq!(
        pending_of(&app, &id(&on_ok)).await,
        1,
        "the replayed success releases it"
    );
    assert_eq!(
        pending_of(&app, &id(&on_fail)).await,
        0,
        "the failure dependent ran once"
    );
}

#[tokio::test]
async fn deleting_a_parent_unlinks_its_dependents() {
    let app = spawn_app().await;
    let parent = app.task(ADMIN, named("parent", Value::Null)).await;
    let other = app.task(ADMIN, named("other", Value::Null)).await;
    let child = app
        .task(
            ADMIN,
            named("child", json!([{"task": "parent"}, {"task": "other"}])),
        )
        .await;
    expect(
        app.delete(&format!("/tasks/{}", id(&parent)), ADMIN).await,
        204,
    )
    .await;
    let got = expect(app.get(&format!("/tasks/{}", id(&child)), ADMIN).await, 200).await;
    assert_eq!(
        got["after"],
        json!([{"task": "other", "task_id": other["id"], "condition": "success"}])
    );
}
