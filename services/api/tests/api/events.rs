//! Publishing events, reading them back, topics.

use serde_json::json;

use crate::common::*;

fn event_task(title: &str, topic: &str) -> serde_json::Value {
    json!({"title": title, "schedule_kind": "event", "schedule_expr": topic, "payload": {"pipeline": []}})
}

#[tokio::test]
async fn publishing_appends_to_the_events_stream_and_lists_the_visible_matching_tasks() {
    let app = spawn_app().await;
    let (alice_id, alice) = app
        .agent("alice", &["tasks:write", "tasks:read", "events:publish"])
        .await;
    let (_, bob) = app.agent("bob", &["tasks:write"]).await;
    let mine = app.task(&alice, event_task("mine", "email.*")).await;
    app.task(&bob, event_task("bob's", "email.sent")).await;
    app.task(&alice, event_task("other topic", "sms.*")).await;
    let paused = app.task(&alice, event_task("paused", "email.sent")).await;
    expect(
        app.post_empty(
            &format!("/tasks/{}/pause", paused["id"].as_str().unwrap()),
            &alice,
        )
        .await,
        200,
    )
    .await;
    let r = expect(
        app.post(
            "/events",
            &alice,
            json!({"topic": "email.sent", "payload": {"user": "u1"}}),
        )
        .await,
        202,
    )
    .await;
    assert_eq!(r["topic"], "email.sent");
    let matching = r["matching_tasks"].as_array().unwrap();
    assert_eq!(
        matching.len(),
        1,
        "only active tasks the caller may see: {r}"
    );
    assert_eq!(matching[0]["id"], mine["id"]);
    let admin_view = expect(
        app.post("/events", ADMIN, json!({"topic": "email.sent"}))
            .await,
        202,
    )
    .await;
    assert_eq!(admin_view["matching_tasks"].as_array().unwrap().len(), 2);
    let entries = app.stream(orrery::streams::EVENTS).await;
    assert_eq!(entries.len(), 2);
    let e = &entries[0];
    assert_eq!(e["event_id"], r["event_id"].as_str().unwrap());
    assert_eq!(e["topic"], "email.sent");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&e["payload"]).unwrap(),
        json!({"user": "u1"})
    );
    assert_eq!(e["published_by"], alice_id);
    assert!(chrono::DateTime::parse_from_rfc3339(&e["published_at"]).is_ok());
    assert_eq!(r["stream_id"].as_str().unwrap().split('-').count(), 2);
    assert_eq!(app.audit_count("event.publish").await, 2);
    // Stored in the outbox too, marked as on the stream so the relay leaves it alone.
    let relayed: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM event_outbox WHERE relayed_at IS NOT NULL AND stream_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(relayed, 2);
}

#[tokio::test]
async fn invalid_topics_are_422() {
    let app = spawn_app().await;
    for topic in [
        json!("email.*"),
        json!(""),
        json!("a..b"),
        json!("sp ace"),
        json!(5),
        json!("x".repeat(201)),
    ] {
        expect_field_error(
            app.post("/events", ADMIN, json!({"topic": topic})).await,
            "topic",
        )
        .await;
    }
    expect_field_error(
        app.post("/events", ADMIN, json!({"payload": {}})).await,
        "topic",
    )
    .await;
    expect_field_error(
        app.post("/events", ADMIN, json!({"topic": "a", "extra": 1}))
            .await,
        "extra",
    )
    .await;
}

#[tokio::test]
async fn with_redis_down_an_event_is_still_accepted_into_the_outbox_for_the_relay() {
    let port = orrery_testing::free_port();
    let app = spawn_app_with(&[("REDIS_URL", &format!("redis://127.0.0.1:{port}"))]).await;
    let t0 = std::time::Instant::now();
    let accepted = expect(
        app.post(
            "/events",
            ADMIN,
            json!({"topic": "a.b", "payload": {"n": 1}}),
        )
        .await,
        202,
    )
    .await;
    // The request's own attempt at the stream is bounded (500 ms), whatever the Redis client's retries.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(accepted["stream_id"], serde_json::Value::Null, "{accepted}");
    assert_eq!(app.audit_count("event.publish").await, 1);
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT topic, payload, relayed_at IS NULL, claimed_until IS NULL FROM event_outbox WHERE event_id = $1",
            &[&accepted["event_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a.b");
    assert_eq!(row.get::<_, serde_json::Value>(1), json!({"n": 1}));
    assert!(row.get::<_, bool>(2), "not on the stream yet");
    assert!(row.get::<_, bool>(3), "released to the relay at once");
    expect_error(app.get("/events/recent", ADMIN).await, 503, "unavailable").await;
    // Everything else keeps working without Redis.
    let task = app.task(ADMIN, cron_task("no redis")).await;
    expect(
        app.post_empty(
            &format!("/tasks/{}/run_now", task["id"].as_str().unwrap()),
            ADMIN,
        )
        .await,
        202,
    )
    .await;
    let h = expect(app.get("/health", ADMIN).await, 200).await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["checks"]["redis"]["status"], "down");
}

#[tokio::test]
async fn recent_events_come_newest_first_and_topics_group_event_tasks() {
    let app = spawn_app().await;
    for i in 0..3 {
        expect(
            app.post(
                "/events",
                ADMIN,
                json!({"topic": format!("t.{i}"), "payload": {"i": i}}),
            )
            .await,
            202,
        )
        .await;
    }
    let recent = expect(app.get("/events/recent?count=2", ADMIN).await, 200).await;
    let items = recent["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["topic"], "t.2");
    assert_eq!(items[0]["payload"], json!({"i": 2}));
    let a = app.task(ADMIN, event_task("a", "orders.*")).await;
    let b = app.task(ADMIN, event_task("b", "orders.*")).await;
    app.task(ADMIN, event_task("c", "users.created")).await;
    let topics = expect(app.get("/events/topics", ADMIN).await, 200).await;
    let groups = topics["items"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["topic"], "orders.*");
    let ids: Vec<&str> = groups[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a["id"].as_str().unwrap(), b["id"].as_str().unwrap()]);
}
