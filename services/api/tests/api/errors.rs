//! The error contract: every class with the envelope, and no input that yields a 500.

use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn requests_without_a_valid_token_are_401_with_the_envelope() {
    let app = spawn_app().await;
    let r = app.call(Method::GET, "/tasks", None, None).await;
    expect_error(r, 401, "unauthorized").await;
    expect_error(app.get("/tasks", "orr_nope").await, 401, "unauthorized").await;
    let fake = format!("orr_{}", "ab".repeat(32));
    expect_error(app.get("/tasks", &fake).await, 401, "unauthorized").await;
    let r = app
        .http
        .get(app.url("/tasks"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_missing_scope_is_403_naming_the_scope() {
    let app = spawn_app().await;
    let (_, reader) = app.agent("reader", &["tasks:read"]).await;
    let body = expect_error(
        app.post("/tasks", &reader, cron_task("x")).await,
        403,
        "forbidden",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("tasks:write"),
        "{body}"
    );
    let body = expect_error(app.get("/runs", &reader).await, 403, "forbidden").await;
    assert!(
        body["message"].as_str().unwrap().contains("runs:read"),
        "{body}"
    );
    let body = expect_error(app.get("/agents", &reader).await, 403, "forbidden").await;
    assert!(
        body["message"].as_str().unwrap().contains("admin"),
        "{body}"
    );
    expect_error(app.get("/queue", &reader).await, 403, "forbidden").await;
    expect_error(
        app.post("/events", &reader, json!({"topic": "a.b"})).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn malformed_json_is_400_and_a_wrong_content_type_is_415() {
    let app = spawn_app().await;
    let send = |ct: &'static str, body: &'static [u8]| {
        app.http
            .post(app.url("/tasks"))
            .bearer_auth(ADMIN)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    expect_error(
        send("application/json", b"{\"title\": ").await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        send("application/json", b"").await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        send("application/json", b"\xff\xfe\x00garbage")
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        send("text/plain", b"{}").await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        send("application/x-www-form-urlencoded", b"title=x")
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    let r = app
        .http
        .post(app.url("/tasks"))
        .bearer_auth(ADMIN)
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    // With a charset it is accepted (and then validated).
    let r = send("application/json; charset=utf-8", b"{}")
        .await
        .unwrap();
    expect_field_error(r, "title").await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(&[("API_BODY_LIMIT_BYTES", "1024")]).await;
    let mut body = cron_task("big");
    body["description"] = json!("x".repeat(2000));
    expect_error(
        app.post("/tasks", ADMIN, body).await,
        413,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn unknown_fields_wrong_types_and_out_of_range_values_are_422_naming_the_field() {
    let app = spawn_app().await;
    let with = |k: &str, v: serde_json::Value| {
        let mut b = cron_task("t");
        b[k] = v;
        b
    };
    for (field, value) in [
        ("bogus", json!(1)),
        ("priority", json!("high")),
        ("priority", json!(10)),
        ("priority", json!(0)),
        ("priority", json!(1.5)),
        ("priority", json!(99999999999999999999u128 as f64)),
        ("max_retries", json!(11)),
        ("timeout_seconds", json!(0)),
        ("dedupe_window_seconds", json!(-1)),
        ("catchup", json!("sometimes")),
        ("overlap", json!(3)),
        ("backoff_strategy", json!("random")),
        ("title", json!("")),
        ("title", json!("x".repeat(201))),
        ("title", json!(null)),
        ("description", json!("x".repeat(2001))),
        ("timezone", json!("Mars/Olympus")),
        ("schedule_kind", json!("hourly")),
        ("schedule_expr", json!("61 * * * *")),
        ("status", json!("paused")),
        ("created_by", json!("not-a-uuid")),
    ] {
        let r = app.post("/tasks", ADMIN, with(field, value.clone())).await;
        let body = expect_field_error(r, field).await;
        assert!(body["message"].is_string(), "{field}={value}: {body}");
    }
    let r = app.post("/tasks", ADMIN, json!([1, 2])).await;
    expect_field_error(r, "body").await;
    let r = app.post("/tasks", ADMIN, json!({})).await;
    let body = expect_error(r, 422, "validation_failed").await;
    assert_eq!(
        body["details"].as_array().unwrap().len(),
        3,
        "title, schedule_kind, schedule_expr: {body}"
    );
}

#[tokio::test]
async fn bad_path_and_query_values_are_422_and_unknown_ids_are_404() {
    let app = spawn_app().await;
    expect_field_error(app.get("/tasks/not-a-uuid", ADMIN).await, "id").await;
    expect_field_error(app.get("/runs/abc", ADMIN).await, "id").await;
    expect_field_error(app.get("/runs/99999999999999999999999", ADMIN).await, "id").await;
    let missing = uuid::Uuid::new_v4();
    let body = expect_error(
        app.get(&format!("/tasks/{missing}"), ADMIN).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(body["message"], format!("Task {missing} not found"));
    expect_error(app.get("/runs/42", ADMIN).await, 404, "not_found").await;
    expect_error(app.get("/no/such/route", ADMIN).await, 404, "not_found").await;
    expect_field_error(app.get("/tasks?limit=abc", ADMIN).await, "limit").await;
    expect_field_error(app.get("/tasks?limit=500", ADMIN).await, "limit").await;
    expect_field_error(app.get("/tasks?limit=0", ADMIN).await, "limit").await;
    expect_field_error(app.get("/tasks?offset=-1", ADMIN).await, "offset").await;
    expect_field_error(app.get("/tasks?status=sleeping", ADMIN).await, "status").await;
    expect_field_error(
        app.get("/tasks?schedule_kind=weekly", ADMIN).await,
        "schedule_kind",
    )
    .await;
    expect_field_error(app.get("/tasks?created_by=me", ADMIN).await, "created_by").await;
    expect_field_error(app.get("/runs?success=maybe", ADMIN).await, "success").await;
    expect_field_error(app.get("/runs?since=yesterday", ADMIN).await, "since").await;
    expect_field_error(app.get("/runs/stats?days=100000", ADMIN).await, "days").await;
    expect_field_error(app.get("/events/recent?count=5000", ADMIN).await, "count").await;
}

#[tokio::test]
async fn a_wrong_method_is_405_with_the_envelope() {
    let app = spawn_app().await;
    let r = app.call(Method::PUT, "/tasks", Some(ADMIN), None).await;
    expect_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn hostile_input_never_yields_a_server_error() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("target")).await;
    let id = task["id"].as_str().unwrap();
    let bodies = [
        json!({"title": "nul\u{0000}byte", "schedule_kind": "cron", "schedule_expr": "* * * * *"}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *", "payload": {"params": {"k": "a\u{0000}b"}, "pipeline": []}}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "\u{0000}"}),
        json!({"title": "t", "schedule_kind": "once", "schedule_expr": "+275760-09-13T00:00:00Z"}),
        json!({"title": "t", "schedule_kind": "once", "schedule_expr": "9999-12-31T23:59:59Z"}),
        json!({"title": "t", "schedule_kind": "rrule", "schedule_expr": "FREQ=SECONDLY;COUNT=999999999"}),
        json!({"title": "t", "schedule_kind": "rrule", "schedule_expr": "DTSTART:99991231T000000Z\nRRULE:FREQ=YEARLY"}),
        json!({"title": "t", "schedule_kind": "event", "schedule_expr": "a".repeat(5000)}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *", "priority": 1e300}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *", "priority": -9223372036854775808i64}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *", "dedupe_window_seconds": 18446744073709551615u64}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *", "payload": "nope"}),
        json!({"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *", "payload": {"pipeline": [{"id": "a", "uses": "http.request", "with": {"url": "${"}}]}}),
        json!(null),
        json!("string"),
        json!(12),
    ];
    for b in &bodies {
        let r = app.post("/tasks", ADMIN, b.clone()).await;
        assert!(
            r.status().as_u16() < 500,
            "POST /tasks {b} → {}",
            r.status()
        );
        let r = app.patch(&format!("/tasks/{id}"), ADMIN, b.clone()).await;
        assert!(r.status().as_u16() < 500, "PATCH {b} → {}", r.status());
        let r = app.post("/schedules/preview", ADMIN, b.clone()).await;
        assert!(r.status().as_u16() < 500, "preview {b} → {}", r.status());
        let r = app.post("/events", ADMIN, b.clone()).await;
        assert!(r.status().as_u16() < 500, "events {b} → {}", r.status());
    }
    for path in [
        "/tasks/%FF%FE",
        "/tasks/%00",
        "/runs/-1",
        "/runs/0",
        "/tasks?limit=99999999999999999999999999",
        "/tasks?offset=9223372036854775807",
        "/tasks?status=%FF",
        "/tasks?%%%%=&&&==",
        "/runs?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "/runs?since=-262143-01-01T00:00:00Z",
        &format!("/tasks/{id}/schedule?count=1000&after=9999-12-01T00:00:00Z"),
        &format!("/tasks/{id}/schedule?after=0001-01-01T00:00:00Z"),
        "/agents/%2e%2e",
        "/queue/dead/18446744073709551616/replay",
    ] {
        let r = app.get(path, ADMIN).await;
        assert!(r.status().as_u16() < 500, "GET {path} → {}", r.status());
        let r = app.post_empty(path, ADMIN).await;
        assert!(r.status().as_u16() < 500, "POST {path} → {}", r.status());
        let r = app.delete(path, ADMIN).await;
        assert!(r.status().as_u16() < 500, "DELETE {path} → {}", r.status());
    }
    let r = app
        .http
        .get(app.url("/tasks"))
        .header("Authorization", b"Bearer \xff\xfe".as_slice())
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_valid_request_id_is_echoed_and_an_invalid_one_replaced() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(app.url("/health/live"))
        .header("X-Request-ID", "abc-123.def_4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123.def_4");
    let r = app
        .http
        .get(app.url("/tasks"))
        .header("X-Request-ID", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
    let body = expect_error(r, 401, "unauthorized").await;
    assert_eq!(
        body["request_id"], header,
        "the envelope carries the same id"
    );
    let long = "a".repeat(201);
    let r = app
        .http
        .get(app.url("/health/live"))
        .header("X-Request-ID", &long)
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], long.as_str());
}

#[tokio::test]
async fn every_path_works_with_and_without_a_trailing_slash_without_redirect() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("slash")).await;
    let id = task["id"].as_str().unwrap();
    for path in [
        "/tasks",
        "/tasks/",
        "/health/live/",
        "/agents/",
        "/queue/",
        "/runs/",
    ] {
        expect(app.get(path, ADMIN).await, 200).await;
    }
    let got = expect(app.get(&format!("/tasks/{id}/"), ADMIN).await, 200).await;
    assert_eq!(got["id"], id);
    expect(
        app.post(&format!("/tasks/{id}/pause/"), ADMIN, json!({}))
            .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn one_422_names_every_bad_field_of_a_task_body_with_its_full_path() {
    let app = spawn_app().await;
    let mut body = cron_task("t");
    body["title"] = json!("");
    body["priority"] = json!("high");
    body["bogus"] = json!(1);
    body["status"] = json!("paused");
    body["payload"] = json!({"params": {"note": "a\u{0}b"}});
    body["after"] = json!([
        {"task": "fine-name"},
        {"task": "not a name", "when": "later"},
        {"condition": "sometimes"},
    ]);
    let r = app.post("/tasks", ADMIN, body).await;
    let body = expect_error(r, 422, "validation_failed").await;
    let mut fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "after[1].task",
            "after[1].when",
            "after[2].condition",
            "after[2].task",
            "bogus",
            "payload.params.note",
            "priority",
            "status",
            "title",
        ],
        "{body}"
    );
    assert_eq!(app.audit_count("task.create").await, 0);
    // The same body as an edit reports the same fields (none of them is required there).
    let task = expect(app.post("/tasks", ADMIN, cron_task("ok")).await, 201).await;
    let r = app
        .patch(
            &format!("/tasks/{}", task["id"].as_str().unwrap()),
            ADMIN,
            json!({"title": "", "max_retries": 11, "after": [{"task": 5}]}),
        )
        .await;
    let body = expect_error(r, 422, "validation_failed").await;
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["title", "max_retries", "after[0].task"], "{body}");
}
