//! Health, metrics and the OpenAPI document (all unauthenticated).

use reqwest::Method;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn liveness_and_readiness_answer_without_a_token() {
    let app = spawn_app().await;
    let live = expect(app.call(Method::GET, "/health/live", None, None).await, 200).await;
    assert_eq!(live["status"], "alive");
    assert!(live["uptime_seconds"].is_f64());
    let ready = expect(
        app.call(Method::GET, "/health/ready", None, None).await,
        200,
    )
    .await;
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn health_is_degraded_without_scheduler_and_workers_and_healthy_with_them() {
    let app = spawn_app().await;
    let h = expect(app.call(Method::GET, "/health", None, None).await, 200).await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["checks"]["database"]["status"], "up");
    assert_eq!(h["checks"]["redis"]["status"], "up");
    assert_eq!(h["checks"]["scheduler"]["status"], "down");
    assert_eq!(h["checks"]["workers"]["status"], "down");
    app.sql()
        .await
        .batch_execute(
            "INSERT INTO scheduler_heartbeat (instance_id, hostname, pid) VALUES ('s', 'h', 1);
             INSERT INTO worker_heartbeat (worker_id, hostname, pid, state) VALUES ('w', 'h', 2, 'running');",
        )
        .await
        .unwrap();
    let h = expect(app.call(Method::GET, "/health", None, None).await, 200).await;
    assert_eq!(h["status"], "healthy", "{h}");
}

#[tokio::test]
async fn health_is_unhealthy_503_when_the_database_is_down() {
    let pg = orrery_testing::PrivatePostgres::start();
    let db = "orrery_api_health";
    pg.create_database(db).await;
    let url = pg.url(db);
    let app = spawn_app_with(&[("DATABASE_URL", &url)]).await;
    pg.stop_server();
    let r = app.call(Method::GET, "/health", None, None).await;
    let body = expect_error(r, 503, "unavailable").await;
    assert_eq!(body["details"]["status"], "unhealthy");
    assert_eq!(body["details"]["checks"]["database"]["status"], "down");
    expect_error(
        app.call(Method::GET, "/health/ready", None, None).await,
        503,
        "unavailable",
    )
    .await;
    expect_error(app.get("/tasks", ADMIN).await, 503, "unavailable").await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status_class_and_show_queue_depth() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, cron_task("metered")).await;
    let id = task["id"].as_str().unwrap();
    expect(app.get(&format!("/tasks/{id}"), ADMIN).await, 200).await;
    expect(app.get("/no/such/thing/12345", ADMIN).await, 404).await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "orrery_http_requests_total{method=\"GET\",route=\"/tasks/{id}\",status=\"2xx\"}"
        ),
        "{text}"
    );
    assert!(text.contains("orrery_http_request_duration_seconds_bucket{method=\"POST\",route=\"/tasks\",status=\"2xx\""), "{text}");
    assert!(
        text.contains("route=\"unmatched\",status=\"4xx\""),
        "{text}"
    );
    assert!(!text.contains(id), "no ids in labels");
    assert!(!text.contains("12345"), "no raw paths in labels");
    // Queue depth is refreshed in the background (at most every 10 s), never inside a scrape.
    orrery_testing::wait_for(
        "the queue depth gauges",
        std::time::Duration::from_secs(15),
        || async {
            let text = app
                .http
                .get(app.url("/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("orrery_queue_depth{state=\"ready\"}")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app().await;
    let doc: Value = expect(
        app.call(Method::GET, "/openapi.json", None, None).await,
        200,
    )
    .await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/agents",
        "/agents/{id}",
        "/agents/{id}/tokens",
        "/agents/{id}/tokens/{token_id}",
        "/tasks",
        "/tasks/{id}",
        "/tasks/{id}/pause",
        "/tasks/{id}/resume",
        "/tasks/{id}/cancel",
        "/tasks/{id}/run_now",
        "/tasks/{id}/snooze",
        "/tasks/{id}/schedule",
        "/schedules/preview",
        "/runs",
        "/runs/{id}",
        "/runs/stats",
        "/tasks/{id}/runs/latest",
        "/tasks/{id}/runs/stats",
        "/queue",
        "/queue/dead",
        "/queue/dead/{id}/replay",
        "/queue/dead/{id}",
        "/workers",
        "/events",
        "/events/recent",
        "/events/topics",
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The task body's schema is derived from the typed body the server reads: create and edit share its
    // fields and limits and differ only in what is required; nothing else is accepted.
    let schemas = &doc["components"]["schemas"];
    let (create, patch) = (&schemas["TaskCreate"], &schemas["TaskPatch"]);
    assert_eq!(
        create["required"],
        serde_json::json!(["title", "schedule_kind", "schedule_expr"])
    );
    assert!(
        patch
            .get("required")
            .is_none_or(|r| r == &serde_json::json!([])),
        "{patch}"
    );
    assert_eq!(create["properties"], patch["properties"]);
    assert_eq!(create["additionalProperties"], false);
    let props = &create["properties"];
    assert_eq!(props["title"]["maxLength"], 200);
    assert_eq!(props["priority"]["minimum"], 1);
    assert_eq!(props["priority"]["maximum"], 9);
    assert_eq!(
        props["overlap"]["enum"],
        serde_json::json!(["allow", "skip", "queue"])
    );
    assert_eq!(props["after"]["maxItems"], 1000);
    assert_eq!(
        props["after"]["items"]["required"],
        serde_json::json!(["task"])
    );
}
