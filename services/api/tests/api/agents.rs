//! Agents and tokens (admin).

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::*;

#[tokio::test]
async fn creating_an_agent_returns_it_with_a_token_shown_once_and_stored_hashed() {
    let app = spawn_app().await;
    let r = app
        .post("/agents", ADMIN, json!({"name": "billing", "scopes": ["tasks:read", "tasks:write"], "webhook_url": "https://example.com/hook"}))
        .await;
    let body = expect(r, 201).await;
    let agent = &body["agent"];
    assert_eq!(agent["name"], "billing");
    assert_eq!(agent["scopes"], json!(["tasks:read", "tasks:write"]));
    assert_eq!(agent["webhook_url"], "https://example.com/hook");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("orr_") && token.len() == 68, "{token}");
    let c = app.sql().await;
    let stored: Vec<u8> = c
        .query_one(
            "SELECT token_hash FROM agent_token WHERE id = $1",
            &[&body["token_id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        Sha256::digest(token.as_bytes()).to_vec(),
        "only the SHA-256 digest is stored"
    );
    // The token works and carries the agent's scopes.
    expect(app.get("/tasks", token).await, 200).await;
    assert_eq!(app.audit_count("agent.create").await, 1);
}

#[tokio::test]
async fn a_duplicate_agent_name_is_409_and_bad_scopes_are_422() {
    let app = spawn_app().await;
    app.agent("dup", &[]).await;
    let r = app
        .post("/agents", ADMIN, json!({"name": "dup", "scopes": []}))
        .await;
    expect_error(r, 409, "conflict").await;
    let r = app
        .post("/agents", ADMIN, json!({"name": "x", "scopes": ["root"]}))
        .await;
    expect_field_error(r, "scopes[0]").await;
    let r = app
        .post("/agents", ADMIN, json!({"name": "x", "scopes": "admin"}))
        .await;
    expect_field_error(r, "scopes").await;
    let r = app
        .post(
            "/agents",
            ADMIN,
            json!({"name": "x", "scopes": [], "webhook_url": "ftp://x"}),
        )
        .await;
    expect_field_error(r, "webhook_url").await;
}

#[tokio::test]
async fn agents_are_listed_paginated_read_and_edited() {
    let app = spawn_app().await;
    let (a, _) = app.agent("a1", &["tasks:read"]).await;
    app.agent("a2", &[]).await;
    let page = expect(app.get("/agents?limit=2", ADMIN).await, 200).await;
    assert_eq!(page["total"], 3, "system + 2: {page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["items"][0]["name"], "a2", "newest first");
    let got = expect(app.get(&format!("/agents/{a}"), ADMIN).await, 200).await;
    assert_eq!(got["name"], "a1");
    let r = app
        .patch(
            &format!("/agents/{a}"),
            ADMIN,
            json!({"name": "a1-renamed", "scopes": ["tasks:read", "runs:read"]}),
        )
        .await;
    let updated = expect(r, 200).await;
    assert_eq!(updated["name"], "a1-renamed");
    assert_eq!(updated["scopes"], json!(["tasks:read", "runs:read"]));
    let r = app
        .patch(&format!("/agents/{a}"), ADMIN, json!({"name": "a2"}))
        .await;
    expect_error(r, 409, "conflict").await;
}

#[tokio::test]
async fn deleting_agents_refuses_the_system_agent_yourself_and_owners_of_tasks() {
    let app = spawn_app().await;
    let system = orrery::model::SYSTEM_AGENT_ID;
    expect_error(
        app.delete(&format!("/agents/{system}"), ADMIN).await,
        409,
        "conflict",
    )
    .await;
    let (admin2, admin2_token) = app.agent("second-admin", &["admin"]).await;
    expect_error(
        app.delete(&format!("/agents/{admin2}"), &admin2_token)
            .await,
        409,
        "conflict",
    )
    .await;
    let (owner, owner_token) = app.agent("owner", &["tasks:write"]).await;
    app.task(&owner_token, cron_task("owned")).await;
    let body = expect_error(
        app.delete(&format!("/agents/{owner}"), ADMIN).await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(body["details"]["owned_tasks"], 1);
    let (gone, gone_token) = app.agent("gone", &["tasks:read"]).await;
    expect(app.get("/tasks", &gone_token).await, 200).await;
    expect(app.delete(&format!("/agents/{gone}"), ADMIN).await, 204).await;
    expect_error(app.get("/tasks", &gone_token).await, 401, "unauthorized").await;
    expect_error(
        app.get(&format!("/agents/{gone}"), ADMIN).await,
        404,
        "not_found",
    )
    .await;
    let tokens: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM agent_token WHERE agent_id = $1",
            &[&gone.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tokens, 0, "the agent's tokens are removed");
    assert_eq!(app.audit_count("agent.delete").await, 1);
}

#[tokio::test]
async fn tokens_are_listed_added_and_revoked_and_a_revoked_token_is_401() {
    let app = spawn_app().await;
    let (a, first) = app.agent("tok", &["tasks:read"]).await;
    let r = app.post_empty(&format!("/agents/{a}/tokens"), ADMIN).await;
    let second = expect(r, 201).await;
    assert_eq!(second["agent_id"], a.as_str());
    let second_token = second["token"].as_str().unwrap().to_string();
    expect(app.get("/tasks", &second_token).await, 200).await;
    let list = expect(app.get(&format!("/agents/{a}/tokens"), ADMIN).await, 200).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for t in items {
        let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
        assert_eq!(
            keys.len(),
            5,
            "{{id, agent_id, created_at, last_used_at, expires_at}}: {t}"
        );
        assert!(t.get("token").is_none(), "secrets are never listed");
    }
    let tid = second["id"].as_str().unwrap();
    expect(
        app.delete(&format!("/agents/{a}/tokens/{tid}"), ADMIN)
            .await,
        204,
    )
    .await;
    expect_error(app.get("/tasks", &second_token).await, 401, "unauthorized").await;
    expect(app.get("/tasks", &first).await, 200).await;
    let list = expect(app.get(&format!("/agents/{a}/tokens"), ADMIN).await, 200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let other = uuid::Uuid::new_v4();
    expect_error(
        app.delete(&format!("/agents/{a}/tokens/{other}"), ADMIN)
            .await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(app.audit_count("token.revoke").await, 1);
}

#[tokio::test]
async fn using_a_token_records_last_used_at() {
    let app = spawn_app().await;
    let (a, token) = app.agent("used", &["tasks:read"]).await;
    expect(app.get("/tasks", &token).await, 200).await;
    let c = app.sql().await;
    let id: uuid::Uuid = a.parse().unwrap();
    orrery_testing::wait_for(
        "last_used_at",
        std::time::Duration::from_secs(5),
        || async {
            let r = c
                .query_one(
                    "SELECT last_used_at IS NOT NULL FROM agent_token WHERE agent_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            r.get::<_, bool>(0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn tokens_can_expire_and_show_when_they_were_last_used() {
    let app = spawn_app().await;
    let (agent, _) = app.agent("expiring", &["tasks:read"]).await;
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dated = expect(
        app.post(
            &format!("/agents/{agent}/tokens"),
            ADMIN,
            serde_json::json!({"expires_at": in_an_hour}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(dated["expires_at"], serde_json::json!(in_an_hour));
    let ttl = expect(
        app.post(
            &format!("/agents/{agent}/tokens"),
            ADMIN,
            serde_json::json!({"ttl_seconds": 3600}),
        )
        .await,
        201,
    )
    .await;
    assert!(ttl["expires_at"].is_string());
    // Usable before it expires, and its use is recorded.
    let token = ttl["token"].as_str().unwrap();
    expect(app.get("/tasks", token).await, 200).await;
    let listed = wait_for_last_used(&app, &agent, ttl["id"].as_str().unwrap()).await;
    assert!(listed["expires_at"].is_string());
    // Once past its expiry, refused like a revoked token.
    app.sql()
        .await
        .execute(
            "UPDATE agent_token SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&dated["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap();
    expect_error(
        app.get("/tasks", dated["token"].as_str().unwrap()).await,
        401,
        "unauthorized",
    )
    .await;
    for (body, field) in [
        (
            serde_json::json!({"expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (serde_json::json!({"expires_at": "soon"}), "expires_at"),
        (serde_json::json!({"ttl_seconds": 5}), "ttl_seconds"),
        (
            serde_json::json!({"ttl_seconds": 3600, "expires_at": in_an_hour}),
            "ttl_seconds",
        ),
        (serde_json::json!({"forever": true}), "forever"),
    ] {
        expect_field_error(
            app.post(&format!("/agents/{agent}/tokens"), ADMIN, body)
                .await,
            field,
        )
        .await;
    }
}

async fn wait_for_last_used(app: &TestApp, agent: &str, token_id: &str) -> serde_json::Value {
    orrery_testing::wait_for(
        "last_used_at to be recorded",
        std::time::Duration::from_secs(10),
        || async {
            let list = expect(
                app.get(&format!("/agents/{agent}/tokens"), ADMIN).await,
                200,
            )
            .await;
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["id"] == token_id && t["last_used_at"].is_string())
                .cloned()
        },
    )
    .await
}
