//! Task names (issue #12): optional, unique per owner among existing tasks, validated, filterable; and the
//! `dry_run` checks and `GET /agents/me` that `orrery apply` relies on.

use serde_json::json;

use crate::common::{cron_task, expect, expect_error, expect_field_error, spawn_app, ADMIN};

fn named(name: &str) -> serde_json::Value {
    let mut t = cron_task(&format!("task {name}"));
    t["name"] = json!(name);
    t
}

#[tokio::test]
async fn a_name_is_returned_and_found_by_the_name_filter() {
    let app = spawn_app().await;
    let t = app.task(ADMIN, named("nightly-report")).await;
    assert_eq!(t["name"], "nightly-report");
    let unnamed = app.task(ADMIN, cron_task("no name")).await;
    assert_eq!(unnamed["name"], serde_json::Value::Null);
    let page = expect(app.get("/tasks?name=nightly-report", ADMIN).await, 200).await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], t["id"]);
    let none = expect(app.get("/tasks?name=other", ADMIN).await, 200).await;
    assert_eq!(none["total"], 0);
    expect_field_error(app.get("/tasks?name=bad%20name", ADMIN).await, "name").await;
}

#[tokio::test]
async fn a_duplicate_name_of_the_same_owner_is_a_conflict_naming_the_existing_task() {
    let app = spawn_app().await;
    let first = app.task(ADMIN, named("backup")).await;
    let body = expect_error(
        app.post("/tasks", ADMIN, named("backup")).await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(body["details"]["existing_task_id"], first["id"]);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(first["id"].as_str().unwrap()));
    // Another owner may use the same name.
    let (_, other) = app.agent("other", &["tasks:read", "tasks:write"]).await;
    app.task(&other, named("backup")).await;
    // Deleting the task frees the name.
    let id = first["id"].as_str().unwrap();
    expect(app.delete(&format!("/tasks/{id}"), ADMIN).await, 204).await;
    app.task(ADMIN, named("backup")).await;
}

#[tokio::test]
async fn an_invalid_name_is_422_naming_the_field_and_the_rule() {
    let app = spawn_app().await;
    for bad in [
        json!(""),
        json!("has space"),
        json!("x".repeat(101)),
        json!("ümlaut"),
        json!(5),
    ] {
        let mut t = cron_task("t");
        t["name"] = bad;
        let body = expect_field_error(app.post("/tasks", ADMIN, t).await, "name").await;
        let _ = body;
    }
    let mut t = cron_task("t");
    t["name"] = json!("a b");
    let body = expect_field_error(app.post("/tasks", ADMIN, t).await, "name").await;
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("'.', '_' or '-'"),
        "{body}"
    );
    assert_eq!(app.audit_count("task.create").await, 0);
}

#[tokio::test]
async fn patch_renames_clears_and_refuses_a_taken_name() {
    let app = spawn_app().await;
    let a = app.task(ADMIN, named("a")).await;
    let b = app.task(ADMIN, named("b")).await;
    let a_path = format!("/tasks/{}", a["id"].as_str().unwrap());
    let renamed = expect(app.patch(&a_path, ADMIN, json!({"name": "a2"})).await, 200).await;
    assert_eq!(renamed["name"], "a2");
    let body = expect_error(
        app.patch(&a_path, ADMIN, json!({"name": "b"})).await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(body["details"]["existing_task_id"], b["id"]);
    let cleared = expect(app.patch(&a_path, ADMIN, json!({"name": null})).await, 200).await;
    assert_eq!(cleared["name"], serde_json::Value::Null);
}

#[tokio::test]
async fn dry_run_checks_everything_and_writes_nothing() {
    let app = spawn_app().await;
    let r = app.post("/tasks?dry_run=true", ADMIN, named("dry")).await;
    expect(r, 204).await;
    let page = expect(app.get("/tasks", ADMIN).await, 200).await;
    assert_eq!(page["total"], 0);
    assert_eq!(app.audit_count("task.create").await, 0);
    let mut bad = named("dry");
    bad["schedule_expr"] = json!("not cron");
    expect_field_error(
        app.post("/tasks?dry_run=true", ADMIN, bad).await,
        "schedule_expr",
    )
    .await;

    let t = app.task(ADMIN, named("taken")).await;
    expect_error(
        app.post("/tasks?dry_run=true", ADMIN, named("taken")).await,
        409,
        "conflict",
    )
    .await;
    let path = format!("/tasks/{}?dry_run=true", t["id"].as_str().unwrap());
    expect(app.patch(&path, ADMIN, json!({"priority": 9})).await, 204).await;
    expect_field_error(
        app.patch(&path, ADMIN, json!({"priority": 99})).await,
        "priority",
    )
    .await;
    let now = expect(
        app.get(&format!("/tasks/{}", t["id"].as_str().unwrap()), ADMIN)
            .await,
        200,
    )
    .await;
    assert_eq!(now["priority"], 5);
    assert_eq!(now["updated_at"], t["updated_at"]);
    assert_eq!(app.audit_count("task.update").await, 0);
}

#[tokio::test]
async fn agents_me_names_the_caller() {
    let app = spawn_app().await;
    let me = expect(app.get("/agents/me", ADMIN).await, 200).await;
    assert_eq!(me["id"], "00000000-0000-0000-0000-000000000001");
    let (id, token) = app.agent("reader", &["runs:read"]).await;
    let me = expect(app.get("/agents/me", &token).await, 200).await;
    assert_eq!(me["id"], id);
    assert_eq!(me["scopes"], json!(["runs:read"]));
    expect_error(
        app.get("/agents/me", "orr_wrong").await,
        401,
        "unauthorized",
    )
    .await;
}
