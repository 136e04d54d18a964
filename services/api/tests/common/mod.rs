//! spawn_app(): the real API on a random port against a fresh database and an isolated Redis prefix.
#![allow(dead_code)]

use std::time::Duration;

use orrery::config::Settings;
use orrery_testing::{redis_prefix, redis_url, wait_for, TestDb};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub prefix: String,
    pub redis_url: String,
    _stop: watch::Sender<bool>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the app with extra settings (e.g. `("REDIS_URL", "redis://127.0.0.1:1")`).
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let db = TestDb::new().await;
    let prefix = redis_prefix();
    let mut vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_KEY_PREFIX".into(), prefix.clone()),
        ("API_PORT".into(), "0".into()),
        ("API_HOST".into(), "127.0.0.1".into()),
        ("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()),
        ("API_WORKERS".into(), "1".into()),
        ("DATABASE_POOL_SIZE".into(), "4".into()),
    ];
    for (k, v) in extra {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    let redis = vars
        .iter()
        .find(|(k, _)| k == "REDIS_URL")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let settings = Settings::from_sources(&vars).expect("settings");
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = orrery::runtime::build_context("orrery-api", settings, stop_rx).expect("context");
    let app = orrery_api::startup::Application::build(ctx).expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let probe = http.clone();
    let ready = format!("{base}/health/ready");
    wait_for("the API to be ready", Duration::from_secs(30), || {
        let probe = probe.clone();
        let ready = ready.clone();
        async move {
            let r = probe.get(&ready).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
    TestApp {
        base,
        http,
        db,
        prefix,
        redis_url: redis,
        _stop: stop_tx,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn post_empty(&self, path: &str, token: &str) -> Response {
        self.call(Method::POST, path, Some(token), None).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Creates an agent; returns (agent id, token).
    pub async fn agent(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let r = self
            .post("/agents", ADMIN, json!({"name": name, "scopes": scopes}))
            .await;
        let body = expect(r, 201).await;
        (
            body["agent"]["id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    /// Creates a task (201 expected) and returns it.
    pub async fn task(&self, token: &str, body: Value) -> Value {
        expect(self.post("/tasks", token, body).await, 201).await
    }

    pub async fn sql(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    /// Entries of a Redis stream of this app (prefixed), as field maps.
    pub async fn stream(&self, name: &str) -> Vec<std::collections::HashMap<String, String>> {
        let client = redis::Client::open(self.redis_url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{}{}", self.prefix, name))
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        reply
            .ids
            .into_iter()
            .map(|e| {
                e.map
                    .keys()
                    .map(|k| (k.clone(), e.get::<String>(k).unwrap_or_default()))
                    .collect()
            })
            .collect()
    }

    pub async fn audit_count(&self, action: &str) -> i64 {
        self.sql()
            .await
            .query_one(
                "SELECT count(*) FROM audit_log WHERE action = $1",
                &[&action],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// Asserts the status and returns the JSON body.
pub async fn expect(r: Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "unexpected status; body: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// Asserts an error envelope with this status and code; returns it.
pub async fn expect_error(r: Response, status: u16, code: &str) -> Value {
    assert!(
        r.headers().contains_key("x-request-id"),
        "every response carries X-Request-ID"
    );
    let body = expect(r, status).await;
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body.get("details").is_some(), "{body}");
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap_or("")).is_ok(),
        "{body}"
    );
    body
}

/// Asserts a 422 naming `field` among its details.
pub async fn expect_field_error(r: Response, field: &str) -> Value {
    let body = expect_error(r, 422, "validation_failed").await;
    let fields: Vec<&str> = body["details"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&field),
        "expected a field error on {field}: {body}"
    );
    body
}

/// A valid cron task body.
pub fn cron_task(title: &str) -> Value {
    json!({
        "title": title,
        "schedule_kind": "cron",
        "schedule_expr": "*/5 * * * *",
        "timezone": "UTC",
        "payload": {"params": {"who": "test"}, "pipeline": [{"id": "n", "uses": "noop", "with": {"x": "${params.who}"}}]}
    })
}
